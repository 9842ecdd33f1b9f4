//! Calls to the controller's HTTPS server (the agent API, the pod webhook) made as an agent
//! makes them: curl, the cluster roots as the only trust, the Service's name resolved to the
//! controller process on loopback, a bearer token from a file (never on a command line). And the
//! objects such a call needs: an agent pod (a Pod object with `spec.nodeName`; the bare API
//! server has no kubelet) and a token bound to it (TokenRequest API).

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use crate::kube::KubeApiServer;
use crate::process::{run, run_ok};

/// The name the controller's certificate carries (the Service in `deploy/`).
pub const SERVICE_HOST: &str = "connectors-controller.connectors-system.svc";
/// The agents' ServiceAccount the controller trusts by default.
pub const AGENT_NAMESPACE: &str = "connectors-system";
pub const AGENT_SERVICE_ACCOUNT: &str = "connectors-agent";
pub const AGENT_AUDIENCE: &str = "connectors.io/agent";

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// `1.1` or `2`.
    pub http_version: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// HTTP versions to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    V1,
    V2,
}

pub struct HttpsCaller {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    host: String,
}

impl HttpsCaller {
    /// Calls `addr` as [`SERVICE_HOST`], trusting only `roots_pem`.
    pub fn new(addr: SocketAddr, roots_pem: &str) -> Self {
        let c = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            addr,
            host: SERVICE_HOST.to_owned(),
        };
        c.set_roots(roots_pem);
        c
    }

    /// Trusts `roots_pem` only, from now on.
    pub fn set_roots(&self, roots_pem: &str) {
        std::fs::write(self.roots_file(), roots_pem).expect("roots");
    }

    fn roots_file(&self) -> PathBuf {
        self.dir.path().join("roots.pem")
    }

    /// `POST path` with a JSON body, over HTTP/2.
    pub fn post(&self, path: &str, token: Option<&str>, body: &str) -> Reply {
        self.post_with(Http::V2, path, token, body)
    }

    /// Whether a TLS handshake with the controller succeeds with the roots trusted now.
    pub fn handshake_ok(&self) -> bool {
        let out = run(std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "10", "--cacert"])
            .arg(self.roots_file())
            .arg("--resolve")
            .arg(format!("{}:{}:127.0.0.1", self.host, self.addr.port()))
            .arg(format!("https://{}:{}/", self.host, self.addr.port())));
        out.status.success()
    }

    pub fn post_with(&self, http: Http, path: &str, token: Option<&str>, body: &str) -> Reply {
        let body_file = self.dir.path().join("body.json");
        std::fs::write(&body_file, body).expect("body");
        let out_file = self.dir.path().join("out");
        let _ = std::fs::remove_file(&out_file);
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(self.roots_file())
            .arg("--resolve")
            .arg(format!("{}:{}:127.0.0.1", self.host, self.addr.port()))
            .arg(match http {
                Http::V1 => "--http1.1",
                Http::V2 => "--http2",
            })
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", body_file.display()))
            .arg("-o")
            .arg(&out_file)
            .args(["-w", "%{http_code} %{http_version}"]);
        if let Some(token) = token {
            let header = self.dir.path().join("auth-header");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&header)
                .expect("header file");
            std::io::Write::write_all(&mut f, format!("Authorization: Bearer {token}").as_bytes())
                .expect("header file");
            cmd.arg("-H").arg(format!("@{}", header.display()));
        }
        cmd.arg(format!("https://{}:{}{path}", self.host, self.addr.port()));
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "curl {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, version) = meta.split_once(' ').unwrap_or((meta.as_str(), ""));
        Reply {
            status: status.trim().parse().unwrap_or(0),
            body: std::fs::read_to_string(&out_file).unwrap_or_default(),
            http_version: version.trim().to_owned(),
        }
    }
}

/// Applies a YAML document as the admin.
pub fn apply(kube: &KubeApiServer, yaml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("object.yaml");
    std::fs::write(&file, yaml).expect("yaml");
    run_ok(kube.kubectl().arg("apply").arg("-f").arg(&file));
}

/// A pod object of ServiceAccount `sa` in `namespace`, "running" on `node` (no kubelet: it
/// stays Pending, which is not finished), with `labels` (`key: value` YAML lines). Returns its
/// uid.
pub fn create_pod(
    kube: &KubeApiServer,
    namespace: &str,
    name: &str,
    sa: &str,
    node: &str,
    labels: &[(&str, &str)],
) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("\n    {k}: \"{v}\""))
        .collect();
    let labels = if labels.is_empty() {
        " {}".to_owned()
    } else {
        labels
    };
    apply(
        kube,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels:{labels}
spec:
  nodeName: {node}
  serviceAccountName: {sa}
  automountServiceAccountToken: false
  containers: [{{name: main, image: "kn.local/tools:1"}}]
"#
        ),
    );
    pod_uid(kube, namespace, name)
}

pub fn pod_uid(kube: &KubeApiServer, namespace: &str, name: &str) -> String {
    run_ok(kube.kubectl().args([
        "get",
        "pod",
        "-n",
        namespace,
        name,
        "-o",
        "jsonpath={.metadata.uid}",
    ]))
    .trim()
    .to_owned()
}

/// Creates ServiceAccount `namespace/name` if it is missing.
pub fn service_account(kube: &KubeApiServer, namespace: &str, name: &str) {
    apply(
        kube,
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        ),
    );
}

/// A token of ServiceAccount `namespace/sa` for `audiences`, bound to pod `pod` (uid `uid`)
/// when given (TokenRequest API, one hour).
pub fn token(
    kube: &KubeApiServer,
    namespace: &str,
    sa: &str,
    audiences: &[&str],
    pod: Option<(&str, &str)>,
) -> String {
    let mut spec = serde_json::json!({"audiences": audiences, "expirationSeconds": 3600});
    if let Some((name, uid)) = pod {
        spec["boundObjectRef"] =
            serde_json::json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid});
    }
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token-request.json");
    std::fs::write(&file, request.to_string()).expect("request");
    let out = run_ok(
        kube.kubectl()
            .args(["create", "--raw"])
            .arg(format!(
                "/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token"
            ))
            .arg("-f")
            .arg(&file),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("TokenRequest answer");
    v["status"]["token"].as_str().expect("a token").to_owned()
}

/// An agent pod on `node` (the agents' ServiceAccount, created if missing) and a token bound to
/// it for the agent audience: what a real agent presents.
pub fn agent(kube: &KubeApiServer, name: &str, node: &str) -> (String, String) {
    service_account(kube, AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT);
    let uid = create_pod(
        kube,
        AGENT_NAMESPACE,
        name,
        AGENT_SERVICE_ACCOUNT,
        node,
        &[("app.kubernetes.io/name", "connectors-agent")],
    );
    let token = token(
        kube,
        AGENT_NAMESPACE,
        AGENT_SERVICE_ACCOUNT,
        &[AGENT_AUDIENCE],
        Some((name, &uid)),
    );
    (uid, token)
}

/// Installs the pod webhook of `deploy/webhook.yaml` (`connectors-ca-trust`) with its
/// `clientConfig` pointing at the controller process on loopback (`https://127.0.0.1:PORT`,
/// the controller needs `--tls-san 127.0.0.1`) and `roots_pem` as its caBundle: the bare API
/// server has no Service routing (a Service's ClusterIP goes nowhere), so a webhook reached
/// through the Service would refuse every labelled pod. Call it before creating labelled pods.
pub fn route_webhook_to(kube: &KubeApiServer, https: SocketAddr, roots_pem: &str) {
    use base64::Engine as _;
    let file = crate::controller::deploy_dir().join("webhook.yaml");
    let json = run_ok(
        kube.kubectl()
            .args(["create", "--dry-run=client", "-o", "json", "-f"])
            .arg(&file),
    );
    let mut config: serde_json::Value = serde_json::from_str(&json).expect("webhook JSON");
    for w in config["webhooks"].as_array_mut().expect("webhooks") {
        let path = w["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or("/webhook/v1/pods")
            .to_owned();
        w["clientConfig"] = serde_json::json!({
            "url": format!("https://127.0.0.1:{}{path}", https.port()),
            "caBundle": base64::engine::general_purpose::STANDARD.encode(roots_pem),
        });
    }
    run_ok(kube.kubectl().args([
        "delete",
        "mutatingwebhookconfiguration",
        "connectors-ca-trust",
        "--ignore-not-found",
    ]));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("webhook.json");
    std::fs::write(&out, config.to_string()).expect("webhook JSON");
    run_ok(kube.kubectl().arg("create").arg("-f").arg(&out));
}
