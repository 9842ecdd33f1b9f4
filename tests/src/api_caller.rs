//! Calls to the unified REST API as a UI's backend makes them: curl, over HTTPS with only the
//! cluster roots trusted (the controller) or plain HTTP on loopback (the standalone agent), a
//! bearer token read from a file (never on a command line). Every answer (status, headers,
//! body) is kept, so that a test can check that none of them ever showed a credential.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::process::run;

/// One answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub took: Duration,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The names of a list envelope's items.
    pub fn names(&self) -> Vec<String> {
        self.json()["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {} {}", self.status, self.body))
            .iter()
            .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `listMeta.totalItems`.
    pub fn total(&self) -> u64 {
        self.json()["listMeta"]["totalItems"]
            .as_u64()
            .unwrap_or_else(|| panic!("no totalItems: {} {}", self.status, self.body))
    }

    /// Asserts a Kubernetes `Status` with `code` and `reason`; returns its message.
    pub fn assert_status(&self, code: u16, reason: &str) -> String {
        assert_eq!(self.status, code, "answer: {}", self.body);
        let v = self.json();
        assert_eq!(v["kind"], "Status", "{}", self.body);
        assert_eq!(v["apiVersion"], "v1", "{}", self.body);
        assert_eq!(v["status"], "Failure", "{}", self.body);
        assert_eq!(v["code"], code, "{}", self.body);
        assert_eq!(v["reason"], reason, "{}", self.body);
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            self.headers
        );
        v["message"].as_str().unwrap_or_default().to_owned()
    }
}

pub struct ApiCaller {
    dir: tempfile::TempDir,
    base: String,
    curl_args: Vec<String>,
    seq: AtomicUsize,
    seen: Mutex<Vec<String>>,
    never: Mutex<Vec<String>>,
}

impl ApiCaller {
    /// HTTPS to `addr` as `host`, trusting only `roots_pem`.
    pub fn https(addr: std::net::SocketAddr, host: &str, roots_pem: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, roots_pem).expect("roots");
        Self {
            base: format!("https://{host}:{}", addr.port()),
            curl_args: vec![
                "--cacert".into(),
                roots.display().to_string(),
                "--resolve".into(),
                format!("{host}:{}:{}", addr.port(), addr.ip()),
            ],
            dir,
            seq: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            never: Mutex::new(Vec::new()),
        }
    }

    /// Plain HTTP to `addr` (the standalone agent's API).
    pub fn http(addr: std::net::SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            curl_args: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            seq: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            never: Mutex::new(Vec::new()),
        }
    }

    /// `scheme://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call("GET", path, token, &[])
    }

    /// `method path` with `headers` (`Name: value`) and the token, if any, as a bearer.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, headers: &[&str]) -> Answer {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let file = |s: &str| -> PathBuf { self.dir.path().join(format!("{n}.{s}")) };
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60"])
            .args(&self.curl_args)
            .arg("-D")
            .arg(file("headers"))
            .arg("-o")
            .arg(file("body"))
            .args(["-w", "%{http_code}"]);
        if method == "HEAD" {
            cmd.arg("--head");
        } else {
            cmd.args(["-X", method]);
        }
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        if let Some(token) = token {
            let header = file("auth");
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
        cmd.arg(format!("{}{path}", self.base));
        let started = Instant::now();
        let out = run(&mut cmd);
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "curl {method} {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let head = std::fs::read_to_string(file("headers")).unwrap_or_default();
        let headers = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = std::fs::read_to_string(file("body")).unwrap_or_default();
        if method == "HEAD" {
            // curl --head writes the headers where the body would go.
            body = body.strip_prefix(head.as_str()).unwrap_or(&body).to_owned();
        }
        for f in ["headers", "body", "auth"] {
            let _ = std::fs::remove_file(file(f));
        }
        let whole = format!("{method} {path}\n{head}\n{body}");
        for needle in self.never.lock().map(|n| n.clone()).unwrap_or_default() {
            assert!(
                !whole.contains(&needle),
                "an answer showed a credential:\n{whole}"
            );
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(whole);
        }
        Answer {
            status,
            headers,
            body,
            took,
        }
    }

    /// From now on, every answer is checked (headers and body) not to contain any of
    /// `needles`, as it arrives.
    pub fn never_show(&self, needles: &[&str]) {
        if let Ok(mut n) = self.never.lock() {
            n.extend(needles.iter().map(|s| (*s).to_owned()));
        }
    }

    /// Asserts that no answer so far, headers or body, contained any of `needles`.
    pub fn assert_never_shows<S: AsRef<str>>(&self, needles: &[S]) {
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert!(!seen.is_empty(), "no answers to check");
        for answer in &seen {
            for needle in needles {
                assert!(
                    !answer.contains(needle.as_ref()),
                    "an answer showed a credential:\n{answer}"
                );
            }
        }
    }

    /// How many answers were kept.
    pub fn answers(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or_default()
    }
}
