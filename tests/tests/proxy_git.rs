//! The injecting proxy against a real git server (git http-backend behind nginx, basic auth,
//! TLS with a test CA), driven by real `git` and `curl` through `HTTPS_PROXY`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use connectors_tests::git_server::git_in;
use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, TestCa, free_port,
    require_tool, run, run_ok,
};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";
const WRONG: &str = "wrong-battery";

struct Fixture {
    ca: TestCa,
    server: GitServer,
    config: ConfigDir,
    hosts: PathBuf,
    work: tempfile::TempDir,
}

impl Fixture {
    /// A TLS git server with `repo.git`, and a config folder with the git class, a Connector for
    /// `https://git.test:PORT`, its CA Secret and a credentials Secret holding `password`.
    fn new(password: &str) -> Self {
        let ca = TestCa::new("test tools CA");
        let server = GitServer::start(GitServerOptions {
            tls: Some((&ca, vec!["git.test", "other.test", "127.0.0.1"])),
            ..Default::default()
        });
        server.create_repo("repo.git", &[("README.md", b"hello from the git server\n")]);
        let config = ConfigDir::new();
        config.git_connector(&GitConnector {
            name: "git",
            address: server.url("git.test"),
            repository: None,
            secret: Some("git-creds"),
            ca_pem: Some(&ca.cert_pem),
        });
        let hosts = config.hosts_file(&[("127.0.0.1", "git.test other.test")]);
        let f = Self {
            ca,
            server,
            config,
            hosts,
            work: tempfile::tempdir().expect("tempdir"),
        };
        f.write_secret(password);
        f
    }

    fn write_secret(&self, password: &str) {
        self.config.basic_auth_secret("git-creds", USER, password);
    }

    fn agent(&self, log_level: &str) -> AgentProcess {
        AgentProcess::start(
            self.config.path(),
            log_level,
            &["--hosts-file", self.hosts.to_str().expect("utf-8 path")],
        )
    }

    fn repo_url(&self) -> String {
        format!("{}/repo.git", self.server.url("git.test"))
    }

    /// `git` with no credentials, going through the agent.
    fn git_via(&self, agent: &AgentProcess, dir: &Path) -> Command {
        let mut c = git_in(dir);
        c.env("HTTPS_PROXY", agent.proxy_url())
            .env("GIT_SSL_CAINFO", agent.ca_path());
        c
    }

    fn clone_via(&self, agent: &AgentProcess, name: &str) -> std::process::Output {
        run(self
            .git_via(agent, self.work.path())
            .args(["clone", "-q", &self.repo_url(), name]))
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The password never reaches the agent's log, plain or inside a Basic header.
fn assert_no_secret_in_log(agent: &AgentProcess) {
    let log = agent.log();
    assert!(!log.is_empty(), "empty agent log");
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in [PASSWORD, WRONG] {
        let basic = b64.encode(format!("{USER}:{secret}"));
        assert!(!log.contains(secret), "agent log contains a password");
        assert!(!log.contains(&basic), "agent log contains a Basic header");
    }
}

#[test]
fn clone_and_push_with_no_credentials_in_the_client() {
    let f = Fixture::new(PASSWORD);
    let agent = f.agent("debug");

    let out = f.clone_via(&agent, "clone");
    assert!(out.status.success(), "clone failed: {}", stderr(&out));
    let readme = std::fs::read_to_string(f.work.path().join("clone/README.md")).expect("README");
    assert_eq!(readme, "hello from the git server\n");
    assert!(
        f.server
            .access_log()
            .lines()
            .any(|l| l.starts_with("alice ") && l.contains("git-upload-pack")),
        "the server did not see the injected user:\n{}",
        f.server.access_log()
    );

    let clone = f.work.path().join("clone");
    std::fs::write(clone.join("pushed.txt"), "pushed through the proxy\n").expect("write");
    run_ok(git_in(&clone).args(["add", "pushed.txt"]));
    run_ok(git_in(&clone).args(["commit", "-q", "-m", "push test"]));
    let out = run(f
        .git_via(&agent, &clone)
        .args(["push", "-q", "origin", "main"]));
    assert!(out.status.success(), "push failed: {}", stderr(&out));
    let log = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(f.server.dir().join("repos/repo.git"))
            .args(["log", "--format=%s", "main"]),
    );
    assert!(log.starts_with("push test\n"), "server history: {log}");
    assert!(
        f.server
            .access_log()
            .lines()
            .any(|l| l.starts_with("alice ")
                && l.contains("git-receive-pack")
                && l.contains(" 200 ")),
        "no authenticated receive-pack:\n{}",
        f.server.access_log()
    );

    // The same clone without the proxy is refused by the server.
    let ca = f.ca.write_cert(f.work.path());
    let resolve = format!(
        "http.curloptResolve=git.test:{}:127.0.0.1",
        f.server.addr.port()
    );
    let out = run(git_in(f.work.path()).env("GIT_SSL_CAINFO", &ca).args([
        "-c",
        &resolve,
        "clone",
        "-q",
        &f.repo_url(),
        "direct",
    ]));
    assert!(
        !out.status.success(),
        "direct clone without credentials succeeded"
    );
    assert!(
        f.server
            .access_log()
            .lines()
            .any(|l| l.starts_with("- ") && l.contains("info/refs") && l.contains(" 401 ")),
        "the direct clone was not answered 401:\n{}",
        f.server.access_log()
    );
    assert_no_secret_in_log(&agent);
}

#[test]
fn wrong_password_is_reported_naming_the_connector() {
    let f = Fixture::new(WRONG);
    let agent = f.agent("debug");
    let out = f.clone_via(&agent, "clone");
    assert!(
        !out.status.success(),
        "clone with a wrong password succeeded"
    );
    let err = stderr(&out);
    assert!(err.contains("default/git"), "no Connector named: {err}");
    assert!(
        err.contains("refused the credentials"),
        "no cause given: {err}"
    );
    assert_no_secret_in_log(&agent);
}

/// Counts connections accepted on a loopback port, in the background.
fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            if s.is_ok() {
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (addr, count)
}

#[test]
fn a_host_no_connector_covers_is_refused_without_contacting_it() {
    require_tool("curl");
    let f = Fixture::new(PASSWORD);
    let agent = f.agent("debug");
    let (other, accepted) = counting_listener();

    // CONNECT to a host no Connector covers: 403 naming it.
    let mut s = std::net::TcpStream::connect(agent.proxy).expect("connect to proxy");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "CONNECT other.test:{0} HTTP/1.1\r\nHost: other.test:{0}\r\n\r\n",
        other.port()
    )
    .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains(&format!("other.test:{}", other.port())),
        "host not named: {answer}"
    );

    // A plain request to it: 403 naming it.
    let url = format!("http://other.test:{}/", other.port());
    let body = run_ok(Command::new("curl").args([
        "-s",
        "-x",
        &agent.proxy_url(),
        &url,
        "-w",
        "\n%{http_code}",
    ]));
    assert!(body.ends_with("\n403"), "{body}");
    assert!(
        body.contains(&format!("other.test:{}", other.port())),
        "{body}"
    );

    // The Connector's own host on another port is not covered either.
    let url = format!("https://git.test:{}/", free_port());
    let out = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-x",
        &agent.proxy_url(),
        &url,
        "-w",
        "%{http_connect}",
    ]));
    assert!(!out.status.success(), "the tunnel was opened");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the proxy connected to a host no Connector covers"
    );
    assert_no_secret_in_log(&agent);
}

#[test]
fn editing_the_secret_applies_without_a_restart() {
    let f = Fixture::new(PASSWORD);
    let agent = f.agent("debug");
    let pid = agent.pid();
    assert!(f.clone_via(&agent, "one").status.success());

    let generation = agent.generation();
    f.write_secret(WRONG);
    agent.wait_generation_after(generation);
    let out = f.clone_via(&agent, "two");
    assert!(!out.status.success(), "the old password is still in use");
    assert!(
        stderr(&out).contains("refused the credentials"),
        "{}",
        stderr(&out)
    );

    // A broken file is reported by path and field; everything else keeps working.
    let generation = agent.generation();
    std::fs::write(
        f.config.path().join("broken.yaml"),
        "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {name: broken}\nspec:\n  connectorClassName: git\n  address: [not, a, string]\n",
    )
    .expect("write");
    f.write_secret(PASSWORD);
    agent.wait_generation_after(generation);
    let problems = agent.admin_json("/problems").to_string();
    assert!(problems.contains("broken.yaml"), "{problems}");
    assert!(problems.contains("spec.address"), "{problems}");
    let out = f.clone_via(&agent, "three");
    assert!(
        out.status.success(),
        "new password not applied: {}",
        stderr(&out)
    );
    assert_eq!(agent.pid(), pid);
    assert_no_secret_in_log(&agent);
}

#[test]
fn a_gigabyte_streams_each_way_in_bounded_memory() {
    require_tool("curl");
    const GIB: u64 = 1 << 30;
    let f = Fixture::new(PASSWORD);
    f.server.create_file("big.bin", GIB);
    let agent = f.agent("info");
    let ca = agent.ca_path();
    let ca = ca.to_str().expect("utf-8");

    let url = format!("{}/files/big.bin", f.server.url("git.test"));
    let size = run_ok(Command::new("curl").args([
        "-sS",
        "--fail",
        "--cacert",
        ca,
        "-x",
        &agent.proxy_url(),
        &url,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
    ]));
    assert_eq!(size, GIB.to_string(), "download size");

    let upload = f.work.path().join("upload.bin");
    std::fs::File::create(&upload)
        .and_then(|file| file.set_len(GIB))
        .expect("upload file");
    let url = format!("{}/put/upload.bin", f.server.url("git.test"));
    let code = run_ok(Command::new("curl").args([
        "-sS",
        "--cacert",
        ca,
        "-x",
        &agent.proxy_url(),
        "-T",
        upload.to_str().expect("utf-8"),
        &url,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ]));
    assert_eq!(code, "201", "upload answer");
    assert_eq!(
        f.server.uploaded_size("upload.bin"),
        Some(GIB),
        "bytes stored by the server"
    );

    let peak = agent.peak_rss_kib();
    eprintln!("agent peak RSS after streaming 1 GiB each way: {peak} KiB");
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB");
}

#[test]
fn http2_through_the_proxy() {
    require_tool("curl");
    let f = Fixture::new(PASSWORD);
    let agent = f.agent("debug");
    let url = format!("{}/info/refs?service=git-upload-pack", f.repo_url());
    let out = run_ok(Command::new("curl").args([
        "-sS",
        "--http2",
        "--cacert",
        agent.ca_path().to_str().expect("utf-8"),
        "-x",
        &agent.proxy_url(),
        &url,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
    ]));
    assert_eq!(out, "200 2");
    assert_no_secret_in_log(&agent);
}

#[test]
fn trace_level_log_never_contains_the_password() {
    let f = Fixture::new(PASSWORD);
    let agent = f.agent("trace");
    assert!(f.clone_via(&agent, "clone").status.success());
    let generation = agent.generation();
    f.write_secret(WRONG);
    agent.wait_generation_after(generation);
    assert!(!f.clone_via(&agent, "clone2").status.success());
    assert!(agent.log().contains("TRACE"), "not a trace log");
    assert_no_secret_in_log(&agent);
}
