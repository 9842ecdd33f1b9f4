//! `cargo xtask bench proxy`: the injecting proxy against a direct connection (client holding
//! the credentials) and against nginx injecting the same header, in one run, on one git server.
//!
//! - `git clone` of a repository of incompressible files (default 200 MB), median of N rounds,
//!   the three modes interleaved so drift hits them alike.
//! - keep-alive latency: `curl` fetching a small file N times over one connection (through the
//!   proxy: one CONNECT tunnel), per-request times, p50 and p99.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Args;
use connectors_tests::git_server::git_in;
use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, TestCa, free_port,
};

use super::stats::{median, percentile, ratio, us};
use crate::cmd::{cargo, exec, output};

const USER: &str = "bench";
/// Keep-alive requests are made in this many runs per mode, the modes taking turns, so that
/// drift in the machine's load hits every mode alike.
const CHUNKS: usize = 10;
const PASSWORD: &str = "bench-password";

#[derive(Args)]
pub struct ProxyBenchArgs {
    /// Size of the repository to clone, in MB.
    #[arg(long, default_value_t = 200)]
    pub repo_mb: u64,
    /// Clone rounds (each round clones once per mode).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Keep-alive requests per mode.
    #[arg(long, default_value_t = 20000)]
    pub requests: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Proxy,
    Nginx,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Direct, Mode::Proxy, Mode::Nginx];

    fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct (client has the credentials)",
            Mode::Proxy => "connectors proxy (no credentials)",
            Mode::Nginx => "nginx injecting the header",
        }
    }
}

struct Setup {
    server: GitServer,
    agent: AgentProcess,
    nginx: NginxInjector,
    work: tempfile::TempDir,
    test_ca: PathBuf,
    basic: String,
}

pub fn run(args: &ProxyBenchArgs) -> anyhow::Result<()> {
    exec(cargo().args(["build", "--release", "-p", "connectors-agent"]))?;
    let bin = crate::cmd::root().join("target/release/connectors-agent");

    let ca = TestCa::new("bench tools CA");
    let server = GitServer::start(GitServerOptions {
        tls: Some((&ca, vec!["git.test", "127.0.0.1"])),
        users: vec![(USER, PASSWORD)],
        ..Default::default()
    });
    eprintln!("creating a {} MB repository...", args.repo_mb);
    create_big_repo(&server, args.repo_mb)?;
    server.create_file("small.txt", 100);

    let config = ConfigDir::new();
    config.git_connector(&GitConnector {
        name: "git",
        address: server.url("git.test"),
        repository: None,
        secret: Some("creds"),
        ca_pem: Some(&ca.cert_pem),
    });
    config.basic_auth_secret("creds", USER, PASSWORD);
    let hosts = config.hosts_file(&[("127.0.0.1", "git.test")]);
    let agent = AgentProcess::start_bin(
        &bin,
        config.path(),
        "warn",
        &["--hosts-file", &hosts.to_string_lossy()],
    );
    let idle_rss = agent.rss_kib();
    let work = tempfile::tempdir()?;
    let test_ca = ca.write_cert(work.path());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let nginx = NginxInjector::start(&ca, &test_ca, server.addr.port(), &basic)?;
    let s = Setup {
        server,
        agent,
        nginx,
        work,
        test_ca,
        basic,
    };

    eprintln!("cloning, {} rounds...", args.rounds);
    let mut clones: Vec<(Mode, Vec<Duration>)> = Mode::ALL.iter().map(|m| (*m, vec![])).collect();
    for round in 0..args.rounds {
        for (mode, times) in clones.iter_mut() {
            times.push(clone(&s, *mode, round)?);
        }
    }
    let peak_after_clones = s.agent.peak_rss_kib();

    eprintln!(
        "keep-alive requests, {} per mode in {CHUNKS} interleaved chunks...",
        args.requests
    );
    let mut latencies: Vec<(Mode, Vec<Duration>)> =
        Mode::ALL.iter().map(|m| (*m, vec![])).collect();
    // CPU time of the agent during its runs, and of the nginx injector during its runs.
    let mut proxy_cpu = Duration::ZERO;
    let mut nginx_cpu = Duration::ZERO;
    for _ in 0..CHUNKS {
        for (mode, samples) in latencies.iter_mut() {
            let cpu_pids = match mode {
                Mode::Proxy => vec![s.agent.pid()],
                Mode::Nginx => process_tree(s.nginx.child.id()),
                Mode::Direct => vec![],
            };
            let cpu_before = cpu_time(&cpu_pids);
            let chunk = keep_alive(&s, *mode, args.requests.div_ceil(CHUNKS))?;
            let used = cpu_time(&cpu_pids).saturating_sub(cpu_before);
            match mode {
                Mode::Proxy => proxy_cpu += used,
                Mode::Nginx => nginx_cpu += used,
                Mode::Direct => {}
            }
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                eprintln!(
                    "  {:<40} chunk p50 {:>6.0} us",
                    mode.label(),
                    us(percentile(&chunk, 50.0))
                );
            }
            samples.extend(chunk);
        }
    }

    println!();
    println!(
        "Connectors proxy benchmark (release agent, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "git clone of a {} MB repository over HTTPS, median of {} (min):",
        args.repo_mb, args.rounds
    );
    let direct = median(&clones[0].1);
    let nginx = median(&clones[2].1);
    for (mode, times) in &clones {
        let m = median(times);
        let min = times.iter().min().copied().unwrap_or_default();
        let mut line = format!(
            "  {:<40} {:>8.3} s ({:.3} s)",
            mode.label(),
            m.as_secs_f64(),
            min.as_secs_f64()
        );
        if *mode != Mode::Direct {
            line.push_str(&format!("   {:.2}x direct", ratio(m, direct)));
        }
        if *mode == Mode::Proxy {
            line.push_str(&format!(", {:.2}x nginx", ratio(m, nginx)));
        }
        println!("{line}");
    }
    println!();
    println!(
        "keep-alive GET of 100 bytes, {} sequential requests per mode ({CHUNKS} runs of one connection each, first 20 of each dropped):",
        args.requests
    );
    println!("  {:<40} {:>9} {:>9}", "", "p50", "p99");
    let (d50, d99) = (
        percentile(&latencies[0].1, 50.0),
        percentile(&latencies[0].1, 99.0),
    );
    for (mode, l) in &latencies {
        let (p50, p99) = (percentile(l, 50.0), percentile(l, 99.0));
        let mut line = format!(
            "  {:<40} {:>6.0} us {:>6.0} us",
            mode.label(),
            us(p50),
            us(p99)
        );
        if *mode != Mode::Direct {
            line.push_str(&format!(
                "   {:+.0} us p50, {:+.0} us p99 vs direct",
                us(p50) - us(d50),
                us(p99) - us(d99)
            ));
        }
        println!("{line}");
    }
    let per_request = |cpu: Duration| us(cpu) / (CHUNKS * args.requests.div_ceil(CHUNKS)) as f64;
    println!(
        "  CPU per request: connectors proxy {:.1} us, nginx injecting the header {:.1} us",
        per_request(proxy_cpu),
        per_request(nginx_cpu)
    );
    println!();
    println!(
        "agent memory: {:.1} MB resident idle, {:.1} MB peak after the clones, {:.1} MB peak at the end",
        idle_rss as f64 / 1024.0,
        peak_after_clones as f64 / 1024.0,
        s.agent.peak_rss_kib() as f64 / 1024.0
    );
    Ok(())
}

/// A bare repository `big.git` of `mb` MB of random (incompressible) files.
pub(super) fn create_big_repo(server: &GitServer, mb: u64) -> anyhow::Result<()> {
    let bare = server.create_repo("big.git", &[("README.md", b"benchmark repository\n")]);
    let work = tempfile::tempdir()?;
    let w = work.path();
    exec(git_in(w).arg("clone").arg("-q").arg(&bare).arg("."))?;
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..mb {
        urandom.read_exact(&mut buf)?;
        let dir = w.join(format!("d{}", i / 32));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("f{i}.bin")), &buf)?;
    }
    exec(git_in(w).args(["add", "-A"]))?;
    exec(git_in(w).args(["commit", "-q", "-m", "data"]))?;
    exec(git_in(w).args(["push", "-q", "origin", "main"]))?;
    exec(
        Command::new("git")
            .arg("-C")
            .arg(&bare)
            .args(["repack", "-a", "-d", "-q"]),
    )?;
    Ok(())
}

fn clone(s: &Setup, mode: Mode, round: usize) -> anyhow::Result<Duration> {
    let dest = s.work.path().join(format!("clone-{round}"));
    let _ = std::fs::remove_dir_all(&dest);
    let mut cmd = git_in(s.work.path());
    let url = match mode {
        Mode::Direct => {
            let resolve = format!(
                "http.curloptResolve=git.test:{}:127.0.0.1",
                s.server.addr.port()
            );
            let header = format!("http.extraHeader=Authorization: Basic {}", s.basic);
            cmd.env("GIT_SSL_CAINFO", &s.test_ca)
                .args(["-c", &resolve, "-c", &header]);
            format!("{}/big.git", s.server.url("git.test"))
        }
        Mode::Proxy => {
            cmd.env("HTTPS_PROXY", s.agent.proxy_url())
                .env("GIT_SSL_CAINFO", s.agent.ca_path());
            format!("{}/big.git", s.server.url("git.test"))
        }
        Mode::Nginx => {
            let resolve = format!("http.curloptResolve=git.test:{}:127.0.0.1", s.nginx.port);
            cmd.env("GIT_SSL_CAINFO", &s.test_ca).args(["-c", &resolve]);
            format!("https://git.test:{}/big.git", s.nginx.port)
        }
    };
    cmd.args(["clone", "-q", &url]).arg(&dest);
    let start = Instant::now();
    let out = cmd.output().context("running git clone")?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} clone failed: {}",
            mode.label(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dest);
    Ok(took)
}

/// Per-request times of `n` GETs of `/files/small.txt` over one kept-alive connection.
fn keep_alive(s: &Setup, mode: Mode, n: usize) -> anyhow::Result<Vec<Duration>> {
    const WARMUP: usize = 20;
    let (host_port, extra): (u16, Vec<String>) = match mode {
        Mode::Direct => (
            s.server.addr.port(),
            vec![
                "--cacert".into(),
                s.test_ca.display().to_string(),
                "-H".into(),
                format!("Authorization: Basic {}", s.basic),
                "--resolve".into(),
                format!("git.test:{}:127.0.0.1", s.server.addr.port()),
            ],
        ),
        Mode::Proxy => (
            s.server.addr.port(),
            vec![
                "--cacert".into(),
                s.agent.ca_path().display().to_string(),
                "-x".into(),
                s.agent.proxy_url(),
            ],
        ),
        Mode::Nginx => (
            s.nginx.port,
            vec![
                "--cacert".into(),
                s.test_ca.display().to_string(),
                "--resolve".into(),
                format!("git.test:{}:127.0.0.1", s.nginx.port),
            ],
        ),
    };
    let url = format!("https://git.test:{host_port}/files/small.txt");
    let list = s.work.path().join("urls.txt");
    let lines: String = (0..n + WARMUP)
        .map(|_| format!("url = \"{url}\"\noutput = \"/dev/null\"\n"))
        .collect();
    std::fs::write(&list, lines)?;
    let out = output(
        Command::new("curl")
            .args([
                "-s",
                "--http1.1",
                "--fail",
                "-w",
                "%{time_total}\\n",
                "--config",
            ])
            .arg(&list)
            .args(&extra),
    )?;
    let times: Vec<Duration> = out
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    if times.len() != n + WARMUP {
        bail!(
            "{}: expected {} timings, got {}",
            mode.label(),
            n + WARMUP,
            times.len()
        );
    }
    Ok(times[WARMUP..].to_vec())
}

/// User plus system CPU time of these processes so far (from /proc, 10 ms resolution).
fn cpu_time(pids: &[u32]) -> Duration {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start at ") ".
            let rest = stat.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    Duration::from_millis(ticks * 10)
}

/// A process and its children (nginx's master and workers).
fn process_tree(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.to_owned()))
                .and_then(|r| {
                    r.split_whitespace()
                        .nth(1)
                        .and_then(|p| p.parse::<u32>().ok())
                });
            if ppid == Some(root) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// nginx as a TLS reverse proxy that adds the same `Authorization` header: the classic way.
struct NginxInjector {
    port: u16,
    _dir: tempfile::TempDir,
    child: std::process::Child,
}

impl NginxInjector {
    fn start(ca: &TestCa, ca_file: &Path, upstream_port: u16, basic: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("tmp"))?;
        let (cert, key) = ca.server_cert(&["git.test"]);
        std::fs::write(d.join("server.crt"), cert)?;
        std::fs::write(d.join("server.key"), key)?;
        let port = free_port();
        let conf = format!(
            r#"
worker_processes auto;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  upstream git {{ server 127.0.0.1:{upstream_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {d}/server.crt;
    ssl_certificate_key {d}/server.key;
    client_max_body_size 0;
    location / {{
      proxy_pass https://git;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host git.test:{upstream_port};
      proxy_set_header Authorization "Basic {basic}";
      proxy_ssl_server_name on;
      proxy_ssl_name git.test;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca_file};
      proxy_ssl_session_reuse on;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"#,
            d = d.display(),
            ca_file = ca_file.display()
        );
        std::fs::write(d.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .spawn()
            .context("starting nginx")?;
        let up = connectors_tests::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            bail!(
                "nginx injector did not start: {}",
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
        }
        Ok(Self {
            port,
            _dir: dir,
            child,
        })
    }
}

impl Drop for NginxInjector {
    fn drop(&mut self) {
        connectors_tests::process::terminate(&mut self.child);
    }
}
