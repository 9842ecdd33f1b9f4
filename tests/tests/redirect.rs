//! The eBPF transparent redirect, end to end (privileged: run as root; never skipped).
//!
//! Each test builds simulated pods (network namespace + veth + cgroup v2, see
//! `connectors_tests::netns`), real git servers (nginx + git http-backend) on test addresses of
//! the node, and the real agent with `--redirect-cgroup`. Processes in a pod run plain `git` and
//! `curl` with no proxy settings and no credentials; the servers' access logs show whether the
//! agent injected the credentials.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use connectors_tests::git_server::git_in;
use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, Lab, PeerRecorder, Pod,
    TestCa, free_port, run, run_ok, target_bin, wait_until,
};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";

/// Node address `n` of the lab: tools at .10 (TLS git), .11 (plain git), .12 (another plain
/// git), .20 (a non-tool server); the proxy at .254.
const TLS_GIT: u8 = 10;
const PLAIN_GIT: u8 = 11;
const OTHER_GIT: u8 = 12;
const NON_TOOL: u8 = 20;
const PROXY: u8 = 254;

struct Fixture {
    // Dropped in this order: agent first, then servers, then pods, then the lab.
    agent: Option<AgentProcess>,
    tls: GitServer,
    plain: GitServer,
    other: GitServer,
    config: ConfigDir,
    hosts: PathBuf,
    proxy: SocketAddr,
    /// `--handoff-dir`, when the agent hands its redirect over on SIGTERM.
    handoff: Option<PathBuf>,
    work: tempfile::TempDir,
    pods: Vec<Pod>,
    lab: Lab,
}

impl Fixture {
    /// `pods` pods; a TLS git server `git.test` (port 443) and two plain ones `plain.test` and
    /// `other.test` (port 80), all needing alice's password, with Connectors for them; the agent
    /// redirecting the pods' cgroups.
    fn new(pods: u8) -> Self {
        let lab = Lab::new();
        let tool_ca = TestCa::new("test tools CA");
        let tls_ip = IpAddr::V4(lab.node_ip4(TLS_GIT));
        let plain_ip = IpAddr::V4(lab.node_ip4(PLAIN_GIT));
        let other_ip = IpAddr::V4(lab.node_ip4(OTHER_GIT));
        let tls = GitServer::start(GitServerOptions {
            listen: Some(SocketAddr::new(tls_ip, 443)),
            tls: Some((&tool_ca, vec!["git.test"])),
            ..Default::default()
        });
        tls.create_repo("repo.git", &[("README.md", b"hello over TLS\n")]);
        let plain = GitServer::start(GitServerOptions {
            listen: Some(SocketAddr::new(plain_ip, 80)),
            ..Default::default()
        });
        plain.create_repo("repo.git", &[("README.md", b"hello over plain HTTP\n")]);
        let other = GitServer::start(GitServerOptions {
            listen: Some(SocketAddr::new(other_ip, 80)),
            ..Default::default()
        });
        other.create_repo(
            "repo.git",
            &[("README.md", b"hello from the other server\n")],
        );

        let config = ConfigDir::new();
        config.git_connector(&GitConnector {
            name: "git",
            address: "https://git.test".into(),
            repository: None,
            secret: Some("git-creds"),
            ca_pem: Some(&tool_ca.cert_pem),
        });
        config.git_connector(&GitConnector {
            name: "plain",
            address: "http://plain.test".into(),
            repository: None,
            secret: Some("git-creds"),
            ca_pem: None,
        });
        config.git_connector(&GitConnector {
            name: "other",
            address: "http://other.test".into(),
            repository: None,
            secret: Some("git-creds"),
            ca_pem: None,
        });
        config.basic_auth_secret("git-creds", USER, PASSWORD);
        let names = [
            (tls_ip, "git.test"),
            (plain_ip, "plain.test"),
            (other_ip, "other.test"),
        ];
        let lines: Vec<(String, &str)> = names.iter().map(|(ip, n)| (ip.to_string(), *n)).collect();
        let lines: Vec<(&str, &str)> = lines.iter().map(|(ip, n)| (ip.as_str(), *n)).collect();
        let hosts = config.hosts_file(&lines);
        let pods: Vec<Pod> = (0..pods).map(|p| lab.pod(p)).collect();
        for pod in &pods {
            pod.hosts(&names);
        }
        let proxy = SocketAddr::new(IpAddr::V4(lab.node_ip4(PROXY)), free_port());
        let mut f = Self {
            agent: None,
            tls,
            plain,
            other,
            config,
            hosts,
            proxy,
            handoff: None,
            work: tempfile::tempdir().expect("tempdir"),
            pods,
            lab,
        };
        f.start_agent();
        f
    }

    fn agent_args(&self) -> Vec<String> {
        let mut args = vec![
            "--hosts-file".to_owned(),
            self.hosts.display().to_string(),
            "--transparent-listen".to_owned(),
            self.proxy.to_string(),
        ];
        for pod in &self.pods {
            args.push("--redirect-cgroup".to_owned());
            args.push(pod.cgroup.display().to_string());
        }
        if let Some(dir) = &self.handoff {
            args.push("--handoff-dir".to_owned());
            args.push(dir.display().to_string());
        }
        args
    }

    fn start_agent(&mut self) {
        let args = self.agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agent = Some(AgentProcess::start(
            self.config.path(),
            "info,connectors_agent=debug,connectors_ebpf=debug",
            &args,
        ));
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("agent running")
    }

    /// The agent's CA: what the webhook would make pods trust.
    fn agent_ca(&self) -> PathBuf {
        self.config.path().join("ca.crt")
    }

    /// `git -C <work>` with the agent's CA trusted and nothing else: no proxy, no credentials.
    fn git(&self) -> Command {
        let mut c = git_in(self.work.path());
        let ca = self.agent_ca();
        c.env("SSL_CERT_FILE", &ca)
            .env("GIT_SSL_CAINFO", &ca)
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY");
        c
    }

    fn clone_in(&self, pod: &Pod, url: &str, into: &str) -> Output {
        run(&mut pod.wrap(self.git().args(["clone", "-q", url, into])))
    }

    fn readme(&self, clone: &str) -> String {
        std::fs::read_to_string(self.work.path().join(clone).join("README.md"))
            .unwrap_or_else(|e| panic!("{clone}/README.md: {e}"))
    }

    /// `curl` status code of a GET from inside the pod (in its cgroup).
    fn status_in(&self, pod: &Pod, url: &str) -> String {
        let out = run(&mut pod.wrap(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code}",
            url,
        ])));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn context(&self) -> String {
        format!(
            "agent log:\n{}\nTLS server access log:\n{}\nplain server access log:\n{}",
            self.agent
                .as_ref()
                .map(AgentProcess::log)
                .unwrap_or_default(),
            self.tls.access_log(),
            self.plain.access_log()
        )
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn injected(access_log: &str, what: &str) -> bool {
    access_log
        .lines()
        .any(|l| l.starts_with(&format!("{USER} ")) && l.contains(what) && l.contains(" 200 "))
}

#[test]
fn a_pod_clones_over_tls_with_no_proxy_settings_and_no_credentials() {
    let f = Fixture::new(1);
    let pod = &f.pods[0];
    let out = f.clone_in(pod, "https://git.test/repo.git", "tls");
    assert!(
        out.status.success(),
        "clone failed: {}\n{}",
        stderr(&out),
        f.context()
    );
    assert_eq!(f.readme("tls"), "hello over TLS\n");
    assert!(
        injected(&f.tls.access_log(), "git-upload-pack"),
        "the server did not see the injected user:\n{}",
        f.context()
    );
    let log = f.agent().log();
    assert!(log.contains("connect4"), "no eBPF log record:\n{log}");
    assert!(!log.contains(PASSWORD), "the agent logged the password");
}

#[test]
fn a_pod_clones_a_plain_http_tool_with_no_configuration() {
    let f = Fixture::new(1);
    let out = f.clone_in(&f.pods[0], "http://plain.test/repo.git", "plain");
    assert!(
        out.status.success(),
        "clone failed: {}\n{}",
        stderr(&out),
        f.context()
    );
    assert_eq!(f.readme("plain"), "hello over plain HTTP\n");
    assert!(
        injected(&f.plain.access_log(), "git-upload-pack"),
        "the server did not see the injected user:\n{}",
        f.context()
    );
}

#[test]
fn a_process_outside_the_cgroup_goes_direct_and_gets_401() {
    let f = Fixture::new(1);
    let pod = &f.pods[0];
    let url = "http://plain.test/repo.git/info/refs?service=git-upload-pack";
    let out = run(&mut pod.wrap_outside_cgroup(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ])));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "401",
        "{}",
        f.context()
    );
    let out = run(&mut pod.wrap_outside_cgroup(f.git().args([
        "clone",
        "-q",
        "http://plain.test/repo.git",
        "direct",
    ])));
    assert!(
        !out.status.success(),
        "a clone outside the cgroup succeeded"
    );
    // The server saw the pod's own address (direct), without a user, and answered 401.
    assert!(
        f.plain
            .access_log()
            .lines()
            .any(|l| l.starts_with("- ") && l.contains("info/refs") && l.contains(" 401 ")),
        "{}",
        f.context()
    );
    // The same request from inside the cgroup is redirected and authorised.
    assert_eq!(f.status_in(pod, url), "200", "{}", f.context());
}

#[test]
fn traffic_to_other_destinations_is_untouched() {
    let f = Fixture::new(1);
    let pod = &f.pods[0];
    // A server no Connector covers, and one on a tool's address but another port.
    let other = PeerRecorder::start(SocketAddr::new(IpAddr::V4(f.lab.node_ip4(NON_TOOL)), 8080));
    let same_host =
        PeerRecorder::start(SocketAddr::new(IpAddr::V4(f.lab.node_ip4(PLAIN_GIT)), 8080));
    for rec in [&other, &same_host] {
        let out = run_ok(&mut pod.wrap(Command::new("curl").args([
            "-s",
            "--max-time",
            "5",
            &format!("http://{}/", rec.addr),
        ])));
        assert_eq!(out, pod.ip4.to_string(), "{} saw another source", rec.addr);
        assert_eq!(
            rec.peers().iter().map(SocketAddr::ip).collect::<Vec<_>>(),
            vec![IpAddr::V4(pod.ip4)],
            "{}",
            f.context()
        );
    }
    assert!(
        !f.agent().log().contains(&other.addr.to_string()),
        "the agent saw a connection to a non-tool address:\n{}",
        f.context()
    );
}

#[test]
fn two_pods_with_the_same_source_port_reach_their_own_destinations() {
    let f = Fixture::new(2);
    // Two files of different sizes tell the answers apart; a rate limit keeps both connections
    // open at the same time.
    const SIZE_A: u64 = 1_500_000;
    const SIZE_B: u64 = 2_000_000;
    f.plain.create_file("who.bin", SIZE_A);
    f.other.create_file("who.bin", SIZE_B);

    let port = free_port().to_string();
    let fetch = |pod: &Pod, url: &str| {
        pod.wrap(Command::new("curl").args([
            "-s",
            "--fail",
            "--local-port",
            &port,
            "--limit-rate",
            "1M",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{local_port}",
            url,
        ]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl")
    };
    let started = Instant::now();
    let a = fetch(&f.pods[0], "http://plain.test/files/who.bin");
    let b = fetch(&f.pods[1], "http://other.test/files/who.bin");
    let a = a.wait_with_output().expect("curl a");
    let b = b.wait_with_output().expect("curl b");
    let took = started.elapsed();
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout).into_owned(),
        String::from_utf8_lossy(&b.stdout).into_owned(),
    );
    assert_eq!(a, format!("{SIZE_A} {port}"), "pod 0\n{}", f.context());
    assert_eq!(b, format!("{SIZE_B} {port}"), "pod 1\n{}", f.context());
    // At 1 MB/s each transfer takes over a second: they overlapped if both ended within
    // the time of the longer one plus a margin.
    assert!(
        took < Duration::from_millis(3500),
        "the transfers did not overlap: {took:?}"
    );
    assert!(
        injected(&f.plain.access_log(), "/files/who.bin"),
        "{}",
        f.context()
    );
    assert!(
        injected(&f.other.access_log(), "/files/who.bin"),
        "other server:\n{}\n{}",
        f.other.access_log(),
        f.context()
    );
}

#[test]
fn a_pod_clones_over_ipv6_through_connect6() {
    let lab = Lab::new();
    let ca = TestCa::new("test tools CA");
    let ip6 = IpAddr::V6(lab.node_ip6(TLS_GIT));
    let server = GitServer::start(GitServerOptions {
        listen: Some(SocketAddr::new(ip6, 443)),
        tls: Some((&ca, vec!["git6.test"])),
        ..Default::default()
    });
    server.create_repo("repo.git", &[("README.md", b"hello over IPv6\n")]);
    let config = ConfigDir::new();
    config.git_connector(&GitConnector {
        name: "git6",
        address: "https://git6.test".into(),
        repository: None,
        secret: Some("git-creds"),
        ca_pem: Some(&ca.cert_pem),
    });
    config.basic_auth_secret("git-creds", USER, PASSWORD);
    let hosts = config.hosts_file(&[(&ip6.to_string(), "git6.test")]);
    let pod = lab.pod(0);
    pod.hosts(&[(ip6, "git6.test")]);
    let port = free_port();
    let v4 = SocketAddr::new(IpAddr::V4(lab.node_ip4(PROXY)), port);
    let v6 = SocketAddr::new(IpAddr::V6(lab.node_ip6(PROXY)), port);
    let agent = AgentProcess::start(
        config.path(),
        "info,connectors_agent=debug,connectors_ebpf=debug",
        &[
            "--hosts-file",
            hosts.to_str().expect("utf-8"),
            // One dual-stack listener, reached at one address per family.
            "--transparent-listen",
            &format!("[::]:{port}"),
            "--redirect-to",
            &v4.to_string(),
            "--redirect-to",
            &v6.to_string(),
            "--redirect-cgroup",
            pod.cgroup.to_str().expect("utf-8"),
        ],
    );
    let work = tempfile::tempdir().expect("tempdir");
    let mut git = git_in(work.path());
    git.env("SSL_CERT_FILE", agent.ca_path())
        .env("GIT_SSL_CAINFO", agent.ca_path())
        .args(["clone", "-q", "https://git6.test/repo.git", "six"]);
    let out = run(&mut pod.wrap(&git));
    assert!(
        out.status.success(),
        "clone failed: {}\nagent log:\n{}\naccess log:\n{}",
        stderr(&out),
        agent.log(),
        server.access_log()
    );
    let readme = std::fs::read_to_string(work.path().join("six/README.md")).expect("README");
    assert_eq!(readme, "hello over IPv6\n");
    assert!(
        injected(&server.access_log(), "git-upload-pack"),
        "{}",
        server.access_log()
    );
    assert!(
        agent.log().contains("connect6 port 443 redirected"),
        "not redirected by connect6:\n{}",
        agent.log()
    );
}

/// Whether the process has exited (gone or a zombie: either way its file descriptors, and so
/// its eBPF links, are closed).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Polls `check` every few milliseconds; returns how long it took to hold, if it did within
/// `limit`.
fn time_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn a_killed_agent_lets_traffic_go_direct_and_a_restart_redirects_again_within_a_second() {
    let mut f = Fixture::new(1);
    let url = "http://plain.test/repo.git/info/refs?service=git-upload-pack";
    assert_eq!(f.status_in(&f.pods[0], url), "200", "{}", f.context());

    let pid = f.agent().pid();
    let killed = Instant::now();
    // SAFETY: SIGKILL to the agent this test started.
    unsafe {
        libc::kill(i32::try_from(pid).expect("pid"), libc::SIGKILL);
    }
    let direct = time_until(Duration::from_secs(3), || {
        exited(pid) && f.status_in(&f.pods[0], url) == "401"
    });
    let since_kill = killed.elapsed();
    assert!(
        direct.is_some() && since_kill < Duration::from_secs(1),
        "after the agent was killed, connections did not go direct within 1 s (took \
         {since_kill:?})\n{}",
        f.context()
    );

    let restarted = Instant::now();
    f.agent = None;
    f.start_agent();
    let redirected = time_until(Duration::from_secs(5), || {
        f.status_in(&f.pods[0], url) == "200"
    });
    let took = restarted.elapsed();
    assert!(
        redirected.is_some() && took < Duration::from_secs(1),
        "after a restart the redirect came back after {took:?} (limit 1 s)\n{}",
        f.context()
    );
    eprintln!("direct {since_kill:?} after SIGKILL; redirected {took:?} after restart");
}

#[test]
fn a_stopping_agent_detaches_first_then_drains() {
    let f = Fixture::new(1);
    let pod = &f.pods[0];
    let url = "http://plain.test/repo.git/info/refs?service=git-upload-pack";
    assert_eq!(f.status_in(pod, url), "200", "{}", f.context());
    // A transfer through the agent that lasts a few seconds, larger than what socket buffers
    // hold, so that the agent must keep forwarding it while it drains.
    const SIZE: u64 = 16_000_000;
    f.plain.create_file("slow.bin", SIZE);
    // Small receive buffers in the pod: the data stays with the agent, not in the pod's kernel.
    pod.sysctl("net.ipv4.tcp_rmem", "4096 65536 262144");
    let slow = pod
        .wrap(Command::new("curl").args([
            "-s",
            "--fail",
            "--limit-rate",
            "4M",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "http://plain.test/files/slow.bin",
        ]))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    assert!(
        wait_until(Duration::from_secs(5), || f
            .agent()
            .log()
            .contains("connect4 198.18")),
        "the slow transfer was not redirected\n{}",
        f.context()
    );
    std::thread::sleep(Duration::from_millis(300));

    let pid = f.agent().pid();
    let stopping = Instant::now();
    // SAFETY: SIGTERM to the agent this test started.
    unsafe {
        libc::kill(i32::try_from(pid).expect("pid"), libc::SIGTERM);
    }
    let direct = time_until(Duration::from_secs(3), || f.status_in(pod, url) == "401");
    let took = stopping.elapsed();
    assert!(
        direct.is_some() && took < Duration::from_secs(1),
        "new connections did not go direct within 1 s of SIGTERM (took {took:?})\n{}",
        f.context()
    );
    let still_draining = !exited(pid);
    // The open transfer finishes through the draining agent.
    let out = slow.wait_with_output().expect("curl");
    assert!(
        still_draining,
        "the agent had already exited: this shows nothing about draining (curl: {:?})\n{}",
        String::from_utf8_lossy(&out.stdout),
        f.context()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        SIZE.to_string(),
        "the transfer in flight was cut\n{}",
        f.context()
    );
}

/// A bpf file system of the test's own (pins live nowhere else), unmounted when dropped.
struct BpfFs(tempfile::TempDir);

impl BpfFs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        run_ok(
            Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(dir.path()),
        );
        Self(dir)
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A restart with a hand-over (a rolling restart of the DaemonSet, here by hand): the stopping
/// agent leaves its redirect attached and parks new connections (their SYNs dropped in the pod:
/// a local drop, retried by the client's kernel every half second) until the next agent
/// listens; a connection opened while no agent runs is served by the next one, soon after it
/// starts, with the credentials.
#[test]
fn a_connection_opened_while_no_agent_runs_is_parked_and_served_by_the_next_agent() {
    let mut f = Fixture::new(1);
    let bpffs = BpfFs::mount();
    f.handoff = Some(bpffs.0.path().join("connectors"));
    f.agent = None;
    f.start_agent();
    let pod = &f.pods[0];
    let url = "http://plain.test/repo.git/info/refs?service=git-upload-pack";
    assert_eq!(f.status_in(pod, url), "200", "{}", f.context());

    let mut previous = f.agent.take().expect("agent");
    previous.stop();
    let previous_log = previous.log();
    assert!(
        previous_log.contains("redirect handed over"),
        "the stopping agent did not hand its redirect over:\n{previous_log}"
    );
    let parked = Instant::now();
    let client = pod
        .wrap(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "60",
            "-w",
            "%{http_code}",
            url,
        ]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_secs(10));
    let restarted = Instant::now();
    f.start_agent();
    let out = client.wait_with_output().expect("curl");
    let after_restart = restarted.elapsed();
    let log = f.agent().log();
    assert!(
        log.contains("took the redirect over"),
        "the next agent did not take the redirect over\n{}",
        f.context()
    );
    // A 200: the server asks for alice's password, so it went through the next agent.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the connection parked for {:?} was not served (curl: {})\nprevious agent:\n{previous_log}\n{}",
        parked.elapsed(),
        String::from_utf8_lossy(&out.stderr),
        f.context()
    );
    assert!(
        after_restart < Duration::from_secs(5),
        "the parked connection came in {after_restart:?} after the next agent started"
    );
    eprintln!(
        "parked for {:?}, served {after_restart:?} after the next agent started",
        parked.elapsed()
    );
}

#[test]
fn connectors_added_or_removed_at_runtime_change_what_is_redirected() {
    let f = Fixture::new(1);
    let pod = &f.pods[0];
    let url = "http://other.test/repo.git/info/refs?service=git-upload-pack";
    assert_eq!(f.status_in(pod, url), "200", "{}", f.context());

    let other = f.config.path().join("other.yaml");
    let yaml = std::fs::read_to_string(&other).expect("other.yaml");
    let generation = f.agent().generation();
    std::fs::remove_file(&other).expect("remove other.yaml");
    f.agent().wait_generation_after(generation);
    assert!(
        wait_until(Duration::from_secs(2), || f.status_in(pod, url) == "401"),
        "a removed Connector's endpoint is still redirected\n{}",
        f.context()
    );

    let generation = f.agent().generation();
    f.config.write("other.yaml", &yaml);
    f.agent().wait_generation_after(generation);
    assert!(
        wait_until(Duration::from_secs(2), || f.status_in(pod, url) == "200"),
        "a new Connector's endpoint is not redirected\n{}",
        f.context()
    );
}

/// eBPF links on the cgroup with id `cgroup_id`, per `bpftool link` (only the agent attaches to
/// the test's cgroups).
fn cgroup_links(cgroup_id: u64) -> usize {
    let out = run_ok(Command::new("bpftool").args(["-j", "link", "show"]));
    let links: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
    links
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup_id))
                .count()
        })
        .unwrap_or(0)
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).expect("cgroup").ino()
}

#[test]
fn removing_the_cgroup_releases_the_redirect_and_a_new_one_is_attached() {
    connectors_tests::require_tool("bpftool");
    let f = Fixture::new(1);
    let pod = &f.pods[0];
    let url = "http://plain.test/repo.git/info/refs?service=git-upload-pack";
    assert_eq!(f.status_in(pod, url), "200", "{}", f.context());
    let id = inode(&pod.cgroup);
    assert_eq!(cgroup_links(id), 3, "connect4, connect6 and sockops links");

    pod.remove_cgroup();
    assert!(
        wait_until(Duration::from_secs(1), || f
            .agent()
            .log()
            .contains("cgroup removed; redirect detached")),
        "the agent did not notice the cgroup going\n{}",
        f.context()
    );
    assert_eq!(cgroup_links(id), 0, "links left on a removed cgroup");

    pod.recreate_cgroup();
    let new_id = inode(&pod.cgroup);
    assert!(
        wait_until(Duration::from_secs(1), || cgroup_links(new_id) == 3),
        "the agent did not attach to the new cgroup\n{}",
        f.context()
    );
    assert_eq!(f.status_in(pod, url), "200", "{}", f.context());
}

#[test]
fn without_bpf_privileges_the_agent_exits_saying_what_is_missing() {
    connectors_tests::require_tool("setpriv");
    let lab = Lab::new();
    let pod = lab.pod(0);
    let config = ConfigDir::new();
    let proxy = SocketAddr::new(IpAddr::V4(lab.node_ip4(PROXY)), free_port());
    let port = |_| format!("127.0.0.1:{}", free_port());
    let mut child = Command::new("setpriv")
        // Root without CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN.
        .arg("--bounding-set=-bpf,-perfmon,-net_admin,-sys_admin")
        .arg(target_bin("connectors-agent"))
        .arg("--config-dir")
        .arg(config.path())
        .args(["--proxy-listen", &port(0)])
        .args(["--admin-listen", &port(1)])
        .args(["--health-listen", &port(2)])
        .args(["--metrics-listen", &port(3)])
        .args(["--transparent-listen", &proxy.to_string()])
        .arg("--redirect-cgroup")
        .arg(&pod.cgroup)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");
    let exited = wait_until(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("agent output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(exited, "the agent kept running without privileges:\n{text}");
    assert!(!out.status.success(), "exit status {}:\n{text}", out.status);
    assert!(
        text.contains("CAP_BPF"),
        "the error does not name CAP_BPF:\n{text}"
    );
    assert!(text.contains("was refused"), "{text}");
}

#[test]
fn the_redirect_coexists_with_other_programs_on_the_same_cgroup() {
    // Another owner of cgroup programs on the node (a CNI, a mesh, a second agent) attaches to
    // the same cgroup: neither attachment is exclusive, both stay, and workloads keep working.
    connectors_tests::require_tool("bpftool");
    let f = Fixture::new(1);
    let pod = &f.pods[0];
    let id = inode(&pod.cgroup);
    let before = cgroup_links(id);
    assert_eq!(before, 3, "connect4, connect6, sockops of the first agent");
    let other_proxy = SocketAddr::new(IpAddr::V4(f.lab.node_ip4(PROXY)), free_port());
    let other_config = ConfigDir::new();
    let other = AgentProcess::start(
        other_config.path(),
        "info",
        &[
            "--transparent-listen",
            &other_proxy.to_string(),
            "--redirect-cgroup",
            pod.cgroup.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(
        cgroup_links(id),
        6,
        "the second set of programs was not attached beside the first:\n{}",
        other.log()
    );
    // The first agent's redirect still serves the pod.
    let out = f.clone_in(pod, "https://git.test/repo.git", "coexist");
    assert!(
        out.status.success(),
        "clone failed with two attachments: {}\n{}",
        stderr(&out),
        f.context()
    );
    assert_eq!(f.readme("coexist"), "hello over TLS\n");
    drop(other);
    assert!(
        wait_until(Duration::from_secs(2), || cgroup_links(id) == 3),
        "the second agent's links did not go with it"
    );
}
