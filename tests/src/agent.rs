//! The agent binary, run as its own process.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, target_bin, terminate, wait_until};

pub struct AgentProcess {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    pub config_dir: PathBuf,
    log: PathBuf,
    child: Child,
    _log_dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts `connectors-agent --config-dir DIR` with `extra` arguments and `RUST_LOG=log_level`,
    /// and waits until it is ready.
    pub fn start(config_dir: &Path, log_level: &str, extra: &[&str]) -> Self {
        Self::start_bin(
            &target_bin("connectors-agent"),
            config_dir,
            log_level,
            extra,
        )
    }

    /// As [`AgentProcess::start`], with the agent binary at `bin` (e.g. a release build).
    pub fn start_bin(bin: &Path, config_dir: &Path, log_level: &str, extra: &[&str]) -> Self {
        let log_dir = tempfile::tempdir().expect("tempdir");
        let log = log_dir.path().join("agent.log");
        let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (proxy, admin, health, metrics) = (port(0), port(1), port(2), port(3));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin)
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--proxy-listen")
            .arg(proxy.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--health-listen")
            .arg(health.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .args(extra)
            .env("RUST_LOG", log_level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start connectors-agent");
        let mut agent = Self {
            proxy,
            admin,
            health,
            metrics,
            config_dir: config_dir.to_owned(),
            log,
            child,
            _log_dir: log_dir,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(_)) = agent.child.try_wait() {
                return true;
            }
            http_get(health, "/readyz").is_some_and(|(code, _)| code == 200)
        });
        assert!(
            ready && matches!(agent.child.try_wait(), Ok(None)),
            "agent did not become ready; log:\n{}",
            agent.log()
        );
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`, for HTTPS_PROXY.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// Everything the agent wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The CA certificate the agent signs with (created in the config folder).
    pub fn ca_path(&self) -> PathBuf {
        self.config_dir.join("ca.crt")
    }

    /// GET on the admin port: JSON.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.admin, path).expect("admin endpoint answers");
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Fails the test if any of `needles` (credentials, key material, file content) appears in
    /// what the agent shows: `/connectors`, `/problems`, `/config`, `/metrics`, its log.
    pub fn assert_never_shows(&self, needles: &[&str]) {
        let mut shown = vec![("log".to_owned(), self.log())];
        for path in ["/connectors", "/problems", "/config"] {
            let (_, body) = http_get(self.admin, path).unwrap_or_default();
            shown.push((path.to_owned(), body));
        }
        let (_, body) = http_get(self.metrics, "/metrics").unwrap_or_default();
        shown.push(("/metrics".to_owned(), body));
        for (what, text) in &shown {
            assert!(!text.is_empty() || what == "log", "{what} answered nothing");
            for n in needles {
                assert!(!text.contains(n), "{what} shows {n:?}:\n{text}");
            }
        }
    }

    /// `/metrics`, as text.
    pub fn metrics_text(&self) -> String {
        let (code, body) = http_get(self.metrics, "/metrics").expect("metrics endpoint answers");
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// The configuration generation in use.
    pub fn generation(&self) -> u64 {
        self.admin_json("/config")["generation"]
            .as_u64()
            .expect("generation")
    }

    /// Waits until a generation newer than `than` is applied.
    pub fn wait_generation_after(&self, than: u64) {
        assert!(
            wait_until(Duration::from_secs(10), || self.generation() > than),
            "configuration was not reloaded; log:\n{}",
            self.log()
        );
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Stops the agent with SIGTERM.
    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("status field")
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}
