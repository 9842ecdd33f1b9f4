//! The controller binary, run as its own process under its own ServiceAccount, and the install of
//! `deploy/` into a test API server as an admin would do it (`kubectl apply`).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::agent::http_get;
use crate::kube::{KubeApiServer, spawn_tied};
use crate::process::{free_port, run_ok, target_bin, wait_until};

/// The controller's namespace and ServiceAccount in `deploy/`.
pub const NAMESPACE: &str = "connectors-system";
pub const SERVICE_ACCOUNT: &str = "connectors-controller";

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("deploy"))
        .expect("workspace root")
}

/// Installs `deploy/` (CRDs first, then the kustomization: namespace, RBAC, built-in classes,
/// the Deployment), and returns a kubeconfig holding a token of the controller's ServiceAccount,
/// minted with the TokenRequest API.
pub fn install(kube: &KubeApiServer) -> PathBuf {
    let deploy = deploy_dir();
    run_ok(
        kube.kubectl()
            .arg("apply")
            .arg("-f")
            .arg(deploy.join("crds")),
    );
    // Polled, not `kubectl wait`: kubectl 1.20 fails outright ("status.conditions accessor
    // error") when it reads a CRD before the API server has written any condition.
    for crd in ["connectors.connectors.io", "connectorclasses.connectors.io"] {
        let established = wait_until(Duration::from_secs(60), || {
            let out = crate::process::run(kube.kubectl().args([
                "get",
                "crd",
                crd,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ]));
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True"
        });
        assert!(established, "CRD {crd} was not Established within 60 s");
    }
    run_ok(kube.kubectl().arg("apply").arg("-k").arg(&deploy));
    // The bare API server has no Service routing: a webhook reached through the controller's
    // Service would dial a ClusterIP that goes nowhere on this machine. It is removed here;
    // a test that needs it registers it on loopback (`controller_https::route_webhook_to`).
    run_ok(kube.kubectl().args([
        "delete",
        "mutatingwebhookconfiguration",
        "connectors-ca-trust",
        "--ignore-not-found",
    ]));
    let token = service_account_token(kube, NAMESPACE, SERVICE_ACCOUNT);
    let path = kube.dir.join("controller.kubeconfig");
    kube.write_kubeconfig("connectors-controller", &token, &path)
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

/// A token for a ServiceAccount (TokenRequest API, one hour).
pub fn service_account_token(kube: &KubeApiServer, namespace: &str, name: &str) -> String {
    service_account_token_via(&kube.admin_kubeconfig, &kube.dir, namespace, name)
}

/// As [`service_account_token`], asked with `kubeconfig` (an admin's), with the request and
/// kubectl's cache in `dir`.
pub fn service_account_token_via(
    kubeconfig: &Path,
    dir: &Path,
    namespace: &str,
    name: &str,
) -> String {
    let request = dir.join(format!("token-request-{namespace}-{name}.json"));
    std::fs::write(
        &request,
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}"#,
    )
    .expect("token request");
    let out = run_ok(
        crate::kube::kubectl_with(kubeconfig, dir)
            .args(["create", "--raw"])
            .arg(format!(
                "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
            ))
            .arg("-f")
            .arg(&request),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("TokenRequest answer");
    v["status"]["token"]
        .as_str()
        .expect("a token in the TokenRequest answer")
        .to_owned()
}

pub struct ControllerProcess {
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    /// The HTTPS server (agent API, pod webhook).
    pub https: SocketAddr,
    log: PathBuf,
    child: Child,
    _log_dir: tempfile::TempDir,
}

impl ControllerProcess {
    /// Starts `connectors-controller` with `KUBECONFIG=kubeconfig`, `extra` arguments and
    /// `RUST_LOG=log_level`, and waits until it is ready.
    pub fn start(kubeconfig: &Path, log_level: &str, extra: &[&str]) -> Self {
        let c = Self::spawn(kubeconfig, log_level, extra);
        c.wait_ready();
        c
    }

    /// Starts it without waiting.
    pub fn spawn(kubeconfig: &Path, log_level: &str, extra: &[&str]) -> Self {
        let log_dir = tempfile::tempdir().expect("tempdir");
        let log = log_dir.path().join("controller.log");
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(target_bin("connectors-controller"));
        cmd.arg("--health-listen")
            .arg(health.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--https-listen")
            .arg(https.to_string())
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", log_level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = spawn_tied(cmd).expect("start connectors-controller");
        Self {
            health,
            metrics,
            https,
            log,
            child,
            _log_dir: log_dir,
        }
    }

    /// Waits until `/readyz` answers 200; fails the test with the log otherwise.
    pub fn wait_ready(&self) {
        let ready = wait_until(Duration::from_secs(30), || {
            http_get(self.health, "/readyz").is_some_and(|(code, _)| code == 200)
        });
        assert!(
            ready,
            "controller did not become ready; log:\n{}",
            self.log()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics` text.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of an unlabelled metric (e.g. `connectors_controller_leader`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics_text().lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok())?
        })
    }

    /// `/readyz` status code.
    pub fn readyz(&self) -> Option<u16> {
        http_get(self.health, "/readyz").map(|(code, _)| code)
    }

    /// SIGTERM, then waits up to `timeout` for it to exit; returns how it exited (None: it did
    /// not, and was killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: a signal to a process this harness started; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }

    /// SIGKILL: a crash, with no chance to release anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if self.running() {
            self.terminate(Duration::from_secs(5));
        }
    }
}
