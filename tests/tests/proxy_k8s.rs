//! The injecting proxy against the real kube-apiserver: `kubectl` through `HTTPS_PROXY` with a
//! placeholder token in its kubeconfig (the Connector's bearer token goes instead), a watch
//! that outlives the agent's response timeout, and client-certificate auth.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use connectors_tests::kube::kubectl_with;
use connectors_tests::{
    AgentProcess, ConfigDir, KubeApiServer, TestCa, ca_secret_yaml, indent, run,
};

const K8S_CLASS: &str = include_str!("../../deploy/classes/k8s.yaml");
const PLACEHOLDER: &str = "placeholder-not-a-token";

struct Fixture {
    server: KubeApiServer,
    config: ConfigDir,
    hosts: PathBuf,
    work: tempfile::TempDir,
}

impl Fixture {
    /// A kube-apiserver and a config folder with the k8s class and a Connector `cluster` for
    /// `https://kubernetes:PORT` (a name on the server's certificate), authenticating with
    /// `auth` (`(auth type, Secret YAML)`).
    fn new(auth: &str, secret_yaml: impl FnOnce(&KubeApiServer) -> String) -> Self {
        Self::on(KubeApiServer::start(), auth, secret_yaml)
    }

    /// As [`Fixture::new`], against `server`.
    fn on(
        server: KubeApiServer,
        auth: &str,
        secret_yaml: impl FnOnce(&KubeApiServer) -> String,
    ) -> Self {
        let config = ConfigDir::new();
        config.write("k8s-class.yaml", K8S_CLASS);
        let ca = std::fs::read_to_string(&server.ca_cert).expect("server CA");
        config.write(
            "cluster.yaml",
            &format!(
                "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {{name: cluster, namespace: default}}\nspec:\n  connectorClassName: k8s\n  address: https://kubernetes:{port}\n  auth: {{name: {auth}, secretRef: {{name: cluster-login}}}}\n  caCertSecretRef: {{name: cluster-ca}}\n---\n{secret}",
                port = server.port,
                secret = ca_secret_yaml("cluster-ca", "default", &ca),
            ),
        );
        config.write("cluster-login.yaml", &secret_yaml(&server));
        let hosts = config.hosts_file(&[("127.0.0.1", "kubernetes")]);
        Self {
            server,
            config,
            hosts,
            work: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn agent(&self, extra: &[&str]) -> AgentProcess {
        let mut args = vec!["--hosts-file", self.hosts.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        AgentProcess::start(self.config.path(), "debug", &args)
    }

    /// A kubeconfig for `https://kubernetes:PORT` with the placeholder token, trusting only the
    /// agent's CA.
    fn kubeconfig(&self, agent: &AgentProcess) -> PathBuf {
        let path = self.work.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://kubernetes:{port}\", certificate-authority: \"{ca}\"}}}}]\nusers: [{{name: u, user: {{token: \"{PLACEHOLDER}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n",
                port = self.server.port,
                ca = agent.ca_path().display(),
            ),
        )
        .expect("kubeconfig");
        path
    }

    /// `kubectl` through the agent.
    fn kubectl_via(&self, agent: &AgentProcess) -> Command {
        let mut c = kubectl_with(&self.kubeconfig(agent), self.work.path());
        c.env("HTTPS_PROXY", agent.proxy_url())
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        c
    }
}

fn bearer_secret(server: &KubeApiServer) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: cluster-login, namespace: default}}\ntype: connectors.io/bearer-token\nstringData:\n  token: {}\n",
        server.admin_token
    )
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn kubectl_with_a_placeholder_token_gets_the_connectors_token() {
    let f = Fixture::new("bearerTokenAuth", bearer_secret);
    let agent = f.agent(&[]);
    let out = run(f.kubectl_via(&agent).args(["get", "ns", "-o", "name"]));
    assert!(out.status.success(), "kubectl get ns: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("namespace/default"),
        "{}",
        text(&out)
    );
    // Without the proxy, the placeholder is what it is.
    let direct = f.work.path().join("direct");
    f.server
        .write_kubeconfig("u", PLACEHOLDER, &direct)
        .expect("kubeconfig");
    let out = run(kubectl_with(&direct, f.work.path()).args(["get", "ns"]));
    assert!(
        !out.status.success(),
        "the placeholder token worked directly"
    );
    assert!(
        text(&out).contains("Unauthorized") || text(&out).contains("must be logged in"),
        "{}",
        text(&out)
    );
    agent.assert_never_shows(&[&f.server.admin_token]);
}

#[test]
fn a_watch_outlives_the_response_timeout() {
    let f = Fixture::new("bearerTokenAuth", bearer_secret);
    let agent = f.agent(&["--response-timeout", "10"]);
    let admin = || f.server.kubectl();
    let out = run(admin().args(["create", "serviceaccount", "default"]));
    assert!(
        out.status.success() || text(&out).contains("AlreadyExists"),
        "{}",
        text(&out)
    );
    let pod = |name: &str| {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  automountServiceAccountToken: false\n  containers: [{{name: c, image: busybox}}]\n"
        );
        let file = f.work.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).expect("pod yaml");
        let out = run(admin().arg("create").arg("-f").arg(&file));
        assert!(out.status.success(), "create {name}: {}", text(&out));
    };
    pod("first");
    let out_path = f.work.path().join("watch.out");
    let mut watch = f
        .kubectl_via(&agent)
        .args(["get", "pods", "-w", "-o", "name", "--request-timeout=0"])
        .stdout(std::fs::File::create(&out_path).expect("watch out"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl watch");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(35));
    pod("second");
    let seen = connectors_tests::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&out_path).is_ok_and(|o| o.contains("pod/second"))
    });
    let still_running = matches!(watch.try_wait(), Ok(None));
    let _ = watch.kill();
    let _ = watch.wait();
    let mut err = String::new();
    if let Some(mut e) = watch.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        still_running,
        "the watch ended early: {output}\n{err}\nagent log:\n{}",
        agent.log()
    );
    assert!(
        output.contains("pod/first") && seen,
        "the watch missed an event {}s in: {output}\n{err}",
        started.elapsed().as_secs()
    );
    agent.assert_never_shows(&[&f.server.admin_token]);
}

/// A `kubernetes.io/tls` Secret `cluster-login` holding `cert` and `key`.
fn tls_secret(cert: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: cluster-login, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(cert, 4),
        indent(key, 4)
    )
}

#[test]
fn a_client_certificate_the_server_rejects_is_reported_naming_the_connector() {
    // An API server that refuses unauthenticated requests (no anonymous user), and a
    // certificate from a CA it does not trust.
    let server = KubeApiServer::start_with(&["--anonymous-auth=false"]);
    let f = Fixture::on(server, "clientCertificateAuth", |_| {
        let (cert, key) = TestCa::new("not-the-cluster-ca").client_cert("stranger", &[]);
        tls_secret(&cert, &key)
    });
    let agent = f.agent(&[]);
    for args in [&["get", "ns"][..], &["get", "pods", "-A"][..]] {
        let out = run(f.kubectl_via(&agent).args(args));
        assert!(
            !out.status.success(),
            "kubectl {args:?} worked: {}",
            text(&out)
        );
        let shown = text(&out);
        assert!(
            shown.contains("default/cluster") && shown.contains("refused the client certificate"),
            "kubectl {args:?} does not say which Connector and why: {shown}"
        );
    }
    agent.assert_never_shows(&["PRIVATE KEY"]);
}

#[test]
fn a_client_certificate_is_presented_for_the_workload() {
    let f = Fixture::new("clientCertificateAuth", |server| {
        let (cert, key) = server.client_cert("cert-admin", &["system:masters"]);
        tls_secret(&cert, &key)
    });
    let agent = f.agent(&[]);
    let out = run(f.kubectl_via(&agent).args(["get", "ns", "-o", "name"]));
    assert!(out.status.success(), "kubectl get ns: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("namespace/default"),
        "{}",
        text(&out)
    );
    // The server saw the certificate's user (in system:masters, so it may impersonate), not
    // the placeholder (which may not): the impersonated user is the one refused.
    let out = run(f
        .kubectl_via(&agent)
        .args(["--as", "nobody-in-particular", "get", "ns"]));
    assert!(
        !out.status.success()
            && text(&out)
                .contains("User \"nobody-in-particular\" cannot list resource \"namespaces\""),
        "impersonation by the certificate's user did not happen: {}",
        text(&out)
    );
    agent.assert_never_shows(&["PRIVATE KEY"]);
}
