//! A real Kubernetes API server on loopback: etcd (Debian's `etcd-server`) and kube-apiserver
//! v1.20 (built from Debian's source package by `cargo xtask kube build`, which `cargo xtask
//! setup` runs), with RBAC, a static admin token and the TokenRequest API for ServiceAccounts.
//!
//! A test binary starts one server (a few seconds) and shares it. Processes are started from a
//! thread that lives as long as the test process and carry `PR_SET_PDEATHSIG`, so they die with
//! it whatever happens; [`at_exit`] lets them stop gracefully and their folder be removed.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::pki::TestCa;
use crate::process::{free_port, terminate};

/// The kube-apiserver version `cargo xtask kube build` produces.
pub const APISERVER_VERSION: &str = "v1.20.2";

/// Where the kube-apiserver binary is: `$CONNECTORS_KUBE_APISERVER`, else the cache
/// `~/.cache/kube-test/kube-apiserver-v1.20.2` that `cargo xtask kube build` fills.
pub fn apiserver_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CONNECTORS_KUBE_APISERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/kube-test")
        .join(format!("kube-apiserver-{APISERVER_VERSION}"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// How the processes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// They die with this process and stop when the value is dropped.
    Owned,
    /// They outlive this process (`cargo xtask kube start`); pid files in `DIR/run` stop them.
    Detached,
}

/// etcd + kube-apiserver.
pub struct KubeApiServer {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    pub dir: PathBuf,
    pub admin_token: String,
    /// The CA certificate that signed the server's certificate.
    pub ca_cert: PathBuf,
    /// A kubeconfig with the admin token (`system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// The CA that signed the server's certificate, which it also trusts for client
    /// certificates.
    ca: TestCa,
    lifetime: Lifetime,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl KubeApiServer {
    /// Starts a server in a fresh temporary folder, or fails the test saying how to get what is
    /// missing.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`KubeApiServer::start`], with more kube-apiserver flags (e.g.
    /// `--anonymous-auth=false`).
    pub fn start_with(flags: &[&str]) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("kube-apiserver")
            .tempdir()
            .expect("tempdir");
        let mut s = Self::try_start_with(tmp.path(), Lifetime::Owned, flags)
            .unwrap_or_else(|e| panic!("{e}"));
        s._tmp = Some(tmp);
        s
    }

    /// Starts etcd and kube-apiserver with their data, certificates and logs in `dir`.
    pub fn try_start(dir: &Path, lifetime: Lifetime) -> Result<Self, String> {
        Self::try_start_with(dir, lifetime, &[])
    }

    fn try_start_with(dir: &Path, lifetime: Lifetime, flags: &[&str]) -> Result<Self, String> {
        let bin = apiserver_binary();
        if !bin.is_file() {
            return Err(format!(
                "kube-apiserver {APISERVER_VERSION} is missing at {}: run `cargo xtask setup` (or `cargo xtask kube build`), which builds it once from Debian's source package",
                bin.display()
            ));
        }
        if !on_path("etcd") {
            return Err(
                "`etcd` is not installed: run `cargo xtask setup`, which installs etcd-server"
                    .into(),
            );
        }
        let run = dir.join("run");
        let pki = dir.join("pki");
        for d in [&run, &pki] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let write = |name: &str, content: &str| -> Result<PathBuf, String> {
            let p = pki.join(name);
            std::fs::write(&p, content).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        };
        let ca = TestCa::new("kube-test-ca");
        let ca_cert = write("ca.crt", &ca.cert_pem)?;
        let (cert, key) = ca.server_cert(&[
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "10.0.0.1",
        ]);
        let cert = write("apiserver.crt", &cert)?;
        let key = write("apiserver.key", &key)?;
        let sa = rcgen::KeyPair::generate().map_err(|e| format!("service account key: {e}"))?;
        let sa_key = write("sa.key", &sa.serialize_pem())?;
        let sa_pub = write("sa.pub", &sa.public_key_pem())?;
        let admin_token = format!("admin-{}", random_hex(16)?);
        let tokens = write(
            "tokens.csv",
            &format!("{admin_token},admin,1,\"system:masters\"\n"),
        )?;

        let api_port = free_port();
        let etcd_port = free_port();
        let (peer_port, etcd_metrics_port) = (free_port(), free_port());
        let log = |name: &str| -> Result<(Stdio, Stdio), String> {
            let f = File::create(run.join(name)).map_err(|e| format!("{name}: {e}"))?;
            let g = f.try_clone().map_err(|e| format!("{name}: {e}"))?;
            Ok((Stdio::from(f), Stdio::from(g)))
        };

        let mut etcd = Command::new("etcd");
        let (out, err) = log("etcd.log")?;
        etcd.args(["--name", "kube-test", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=kube-test=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{etcd_metrics_port}"
            ))
            .arg("--quota-backend-bytes=1073741824")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let etcd = spawn(etcd, lifetime, &run.join("etcd.pid"))?;

        let mut server = Self {
            url: format!("https://127.0.0.1:{api_port}"),
            port: api_port,
            dir: dir.to_owned(),
            admin_token,
            ca_cert,
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            ca,
            lifetime,
            etcd: Some(etcd),
            apiserver: None,
            _tmp: None,
        };
        let etcd_up = wait(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_ok()
        });
        if !etcd_up {
            return Err(format!(
                "etcd did not start; its log:\n{}",
                tail(&run.join("etcd.log"))
            ));
        }

        let mut api = Command::new(&bin);
        let (out, err) = log("apiserver.log")?;
        api.args([
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--insecure-port=0",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--api-audiences=https://kubernetes.default.svc",
            "--profiling=false",
        ])
        .arg(format!("--secure-port={api_port}"))
        .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg(format!("--tls-cert-file={}", cert.display()))
        .arg(format!("--tls-private-key-file={}", key.display()))
        .arg(format!("--client-ca-file={}", server.ca_cert.display()))
        .arg(format!("--service-account-key-file={}", sa_pub.display()))
        .arg(format!(
            "--service-account-signing-key-file={}",
            sa_key.display()
        ))
        .arg(format!("--token-auth-file={}", tokens.display()))
        .arg(format!("--cert-dir={}", run.join("certs").display()))
        .args(flags)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        server.apiserver = Some(spawn(api, lifetime, &run.join("apiserver.pid"))?);
        server.write_kubeconfig(
            "admin",
            &server.admin_token.clone(),
            &server.admin_kubeconfig,
        )?;

        let token_header = pki.join("admin-header");
        std::fs::write(
            &token_header,
            format!("Authorization: Bearer {}", server.admin_token),
        )
        .map_err(|e| format!("{e}"))?;
        let started = Instant::now();
        loop {
            let ready = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "2", "--cacert"])
                .arg(&server.ca_cert)
                .arg("-H")
                .arg(format!("@{}", token_header.display()))
                .arg(format!("{}/readyz", server.url))
                .status()
                .map_err(|e| format!("cannot run curl ({e}): run `cargo xtask setup`"))?;
            if ready.success() {
                break;
            }
            if let Some(child) = server.apiserver.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "kube-apiserver exited ({status}); its log:\n{}",
                    tail(&run.join("apiserver.log"))
                ));
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "kube-apiserver not ready after 120 s; its log:\n{}",
                    tail(&run.join("apiserver.log"))
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }

    /// Writes a kubeconfig for this server with `token`.
    pub fn write_kubeconfig(&self, user: &str, token: &str, path: &Path) -> Result<(), String> {
        let config = format!(
            r#"apiVersion: v1
kind: Config
clusters: [{{name: kube-test, cluster: {{server: "{url}", certificate-authority: "{ca}"}}}}]
users: [{{name: {user}, user: {{token: "{token}"}}}}]
contexts: [{{name: {user}, context: {{cluster: kube-test, user: {user}}}}}]
current-context: {user}
"#,
            url = self.url,
            ca = self.ca_cert.display(),
        );
        std::fs::write(path, config).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A client certificate the server accepts, for `user` in `groups`: (cert PEM, key PEM).
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> (String, String) {
        self.ca.client_cert(user, groups)
    }

    /// `kubectl` as the admin, with a discovery cache inside the server's folder.
    pub fn kubectl(&self) -> Command {
        kubectl_with(&self.admin_kubeconfig, &self.dir)
    }

    /// The API server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("run/apiserver.log")).unwrap_or_default()
    }

    /// Stops the server and etcd (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            terminate(&mut child);
        }
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Owned {
            self.stop();
        }
    }
}

/// `kubectl` with `kubeconfig` (fails the test, naming the setup command, when missing).
pub fn kubectl_with(kubeconfig: &Path, cache_parent: &Path) -> Command {
    assert!(
        on_path("kubectl"),
        "`kubectl` is not installed: run `cargo xtask setup`, which installs it (Debian package kubernetes-client)"
    );
    let mut c = Command::new("kubectl");
    c.env("KUBECONFIG", kubeconfig)
        .arg("--cache-dir")
        .arg(cache_parent.join("kubectl-cache"));
    c
}

/// Stops a detached server started in `dir` (by its pid files). Returns what was stopped.
pub fn stop_detached(dir: &Path) -> Vec<String> {
    let mut stopped = Vec::new();
    for name in ["apiserver", "etcd"] {
        let pid_file = dir.join("run").join(format!("{name}.pid"));
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        if let Ok(pid) = text.trim().parse::<i32>() {
            // SAFETY: signals to a process this tool started (its pid file); no memory involved.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            if alive {
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
                let gone = wait(
                    Duration::from_secs(10),
                    || unsafe { libc::kill(pid, 0) } != 0,
                );
                if !gone {
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                stopped.push(format!("{name} (pid {pid})"));
            }
        }
        let _ = std::fs::remove_file(&pid_file);
    }
    stopped
}

/// Registers `f` to run when the process exits normally (as the test harness does at its end):
/// the place to stop shared servers gracefully and remove their folders.
pub fn at_exit(f: extern "C" fn()) {
    // SAFETY: registers a plain function with the C runtime; it runs once, at exit.
    unsafe {
        libc::atexit(f);
    }
}

/// Spawns `cmd` so that it dies with this process (Owned), or on its own (Detached, with a pid
/// file).
fn spawn(cmd: Command, lifetime: Lifetime, pid_file: &Path) -> Result<Child, String> {
    let what = format!("{:?}", cmd.get_program());
    let child = match lifetime {
        Lifetime::Owned => spawn_tied(cmd),
        Lifetime::Detached => {
            let mut cmd = cmd;
            cmd.process_group(0);
            cmd.spawn()
        }
    }
    .map_err(|e| format!("cannot start {what}: {e}"))?;
    std::fs::write(pid_file, child.id().to_string())
        .map_err(|e| format!("{}: {e}", pid_file.display()))?;
    Ok(child)
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as this process, with `PR_SET_PDEATHSIG` set:
/// the child gets SIGKILL when this process ends, even if it is killed. (The death signal follows
/// the thread that forked, hence the long-lived thread: test threads come and go.)
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("process-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the process-keeper thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .map_err(|_| std::io::Error::other("process keeper poisoned"))?
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("process keeper gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("process keeper gone"))?
}

fn wait(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ok()
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
