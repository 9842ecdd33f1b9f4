//! `cargo xtask bench redirect`: the cost of getting a workload's new connection into the proxy.
//!
//! One run, on simulated pods (network namespace + veth + cgroup, as in the privileged tests),
//! against one plain-HTTP tool (nginx) and one agent (release build):
//!
//! - **direct**: the pod connects to the tool itself (and sends the credentials itself);
//! - **eBPF**: the pod's cgroup is redirected by the agent's connect4/sockops programs into the
//!   agent's transparent listener, which injects the credentials;
//! - **nftables REDIRECT**: the classic path, a `redirect` rule on the pod's veth (host side)
//!   into the same listener, which reads `SO_ORIGINAL_DST`. The nat table exists only during
//!   these runs, so connection tracking does not tax the other modes.
//!
//! A client inside the pod (`connbench`, several workers) opens new connections, each carrying
//! either one small request (`Connection: close`), or nothing (setup and teardown only, which
//! isolates the redirect and the accept from the HTTP work). Modes are interleaved over rounds.
//! Printed per load: new connections per second (median of rounds), connection latency
//! (`connect()` to the end of the answer) p50/p99, `connect()` p50, and the ratios.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Args;
use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, Lab, Pod,
};

use super::stats::{median, percentile, ratio, us};
use crate::cmd::{cargo, exec, output, root};

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";
const TOOL: u8 = 11;
const PROXY: u8 = 254;
const PROXY_PORT: u16 = 15001;

#[derive(Args)]
pub struct RedirectBenchArgs {
    /// New connections per mode and round.
    #[arg(long, default_value_t = 3000)]
    pub connections: usize,
    /// Concurrent client workers in the pod.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Rounds (each runs every mode once, interleaved).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Ebpf,
    Nftables,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Direct, Mode::Ebpf, Mode::Nftables];

    fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct (pod has the credentials)",
            Mode::Ebpf => "eBPF redirect -> proxy",
            Mode::Nftables => "nftables REDIRECT -> proxy",
        }
    }
}

/// What each connection carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// One small authenticated GET (`Connection: close`): what a workload's connection costs.
    Request,
    /// Nothing: connect, close, wait for the other side's close. Redirect and accept only.
    SetupOnly,
}

impl Load {
    const ALL: [Load; 2] = [Load::Request, Load::SetupOnly];

    fn label(self) -> &'static str {
        match self {
            Load::Request => "one request",
            Load::SetupOnly => "setup only",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Load::Request => "new connections, one small request each (Connection: close):",
            Load::SetupOnly => "connection setup only (connect, accept, close; no request):",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Load::Request => "/files/small.txt",
            Load::SetupOnly => "-",
        }
    }
}

#[derive(Default)]
struct Results {
    rates: Vec<f64>,
    total: Vec<Duration>,
    connect: Vec<Duration>,
}

pub fn run(args: &RedirectBenchArgs) -> anyhow::Result<()> {
    if !crate::cmd::is_root() {
        bail!(
            "the redirect benchmark creates network namespaces, cgroups, nftables rules and loads eBPF: run it as root"
        );
    }
    exec(cargo().args([
        "build",
        "--release",
        "-p",
        "connectors-agent",
        "--bin",
        "connectors-agent",
    ]))?;
    exec(cargo().args([
        "build",
        "--release",
        "-p",
        "connectors-tests",
        "--bin",
        "connbench",
    ]))?;
    let release = root().join("target/release");
    let agent_bin = release.join("connectors-agent");
    let client = release.join("connbench");

    let lab = Lab::new();
    let tool_ip = IpAddr::V4(lab.node_ip4(TOOL));
    let proxy_ip = IpAddr::V4(lab.node_ip4(PROXY));
    let server = GitServer::start(GitServerOptions {
        listen: Some(SocketAddr::new(tool_ip, 80)),
        users: vec![(USER, PASSWORD)],
        ..Default::default()
    });
    server.create_repo("repo.git", &[("README.md", b"bench\n")]);
    server.create_file("small.txt", 128);

    let config = ConfigDir::new();
    config.git_connector(&GitConnector {
        name: "tool",
        address: "http://tool.test".into(),
        repository: None,
        secret: Some("creds"),
        ca_pem: None,
    });
    config.basic_auth_secret("creds", USER, PASSWORD);
    let hosts = config.hosts_file(&[(&tool_ip.to_string(), "tool.test")]);
    // Pod 0 is redirected by eBPF; pod 1 goes direct, or through the nftables rule.
    let ebpf_pod = lab.pod(0);
    let plain_pod = lab.pod(1);
    for pod in [&ebpf_pod, &plain_pod] {
        // Setup-only connections are closed by the client first, leaving TIME_WAIT on its
        // ports: let it reuse them (as with any client opening thousands of connections a
        // second). Everything else keeps Linux defaults, port range included.
        pod.sysctl("net.ipv4.tcp_tw_reuse", "1");
    }
    let redirect_to = SocketAddr::new(proxy_ip, PROXY_PORT).to_string();
    let agent = AgentProcess::start_bin(
        &agent_bin,
        config.path(),
        "warn",
        &[
            "--hosts-file",
            hosts.to_str().context("utf-8 path")?,
            // One listener for both paths: eBPF sends connections to the node address,
            // nftables REDIRECT to the address of the veth they arrive on.
            "--transparent-listen",
            &format!("0.0.0.0:{PROXY_PORT}"),
            "--redirect-to",
            &redirect_to,
            "--redirect-cgroup",
            ebpf_pod.cgroup.to_str().context("utf-8 path")?,
        ],
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let tool = SocketAddr::new(tool_ip, 80);
    let nft = Nft {
        table: format!("cxbench{}", lab.k),
        iface: plain_pod.host_link(),
    };
    let bench = |mode: Mode, load: Load, n: usize| -> anyhow::Result<Sample> {
        let c = args.concurrency;
        match mode {
            Mode::Direct => connbench(&client, &plain_pod, tool, load, n, c, Some(&basic)),
            Mode::Ebpf => connbench(&client, &ebpf_pod, tool, load, n, c, None),
            Mode::Nftables => {
                let _rule = nft.redirect(tool, PROXY_PORT)?;
                connbench(&client, &plain_pod, tool, load, n, c, None)
            }
        }
    };

    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("warming up...");
    for load in Load::ALL {
        for mode in Mode::ALL {
            bench(mode, load, 500).with_context(|| format!("warm-up of {}", mode.label()))?;
        }
    }
    // results[load][mode]
    let mut results: Vec<Vec<Results>> = Load::ALL
        .iter()
        .map(|_| Mode::ALL.iter().map(|_| Results::default()).collect())
        .collect();
    for round in 1..=args.rounds {
        for (l, load) in Load::ALL.into_iter().enumerate() {
            for (m, mode) in Mode::ALL.into_iter().enumerate() {
                let s = bench(mode, load, args.connections).with_context(|| mode.label())?;
                eprintln!(
                    "round {round}/{} {:<16} {:<34} {:>8.0} conn/s",
                    args.rounds,
                    load.label(),
                    mode.label(),
                    s.rate()
                );
                let r = &mut results[l][m];
                r.rates.push(s.rate());
                r.total.extend(s.total);
                r.connect.extend(s.connect);
            }
        }
    }
    if agent.log().contains("ERROR") {
        eprintln!("agent log has errors:\n{}", agent.log());
    }

    println!();
    println!(
        "{} new connections per mode x {} rounds (interleaved), {} client workers in the pod; \
         latency: connect() to the end of the answer",
        args.connections, args.rounds, args.concurrency
    );
    for (l, load) in Load::ALL.into_iter().enumerate() {
        report(load, &results[l]);
    }
    // Other work on the machine shows in the per-round spread; say how busy it was.
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "load average before: {}, after: {} ({} CPUs)",
        load_before.split_whitespace().next().unwrap_or("?"),
        load_after.split_whitespace().next().unwrap_or("?"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

fn report(load: Load, results: &[Results]) {
    println!();
    println!("{}", load.title());
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "mode", "conn/s", "p50 us", "p99 us", "connect p50", "vs direct"
    );
    let rate = |i: usize| median_f64(&results[i].rates);
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        let r = &results[i];
        println!(
            "{:<36} {:>10.0} {:>10.0} {:>10.0} {:>12.0} {:>9.2}x",
            mode.label(),
            rate(i),
            us(median(&r.total)),
            us(percentile(&r.total, 99.0)),
            us(median(&r.connect)),
            rate(i) / rate(0)
        );
    }
    let (e, n) = (&results[1], &results[2]);
    // Rounds are interleaved: the per-round ratio cancels drift in what else the machine does.
    let per_round: Vec<f64> = e.rates.iter().zip(&n.rates).map(|(a, b)| a / b).collect();
    println!(
        "eBPF vs nftables REDIRECT: {:.2}x the new connections per second (median of rounds: \
         {:.2}x; per round: {}); latency p50 {:.2}x, p99 {:.2}x (lower is better)",
        rate(1) / rate(2),
        median_f64(&per_round),
        per_round
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        ratio(median(&e.total), median(&n.total)),
        ratio(percentile(&e.total, 99.0), percentile(&n.total, 99.0)),
    );
}

fn median_f64(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Sample {
    wall: Duration,
    total: Vec<Duration>,
    connect: Vec<Duration>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.total.len() as f64 / self.wall.as_secs_f64()
    }
}

/// Runs the client in `pod` (its cgroup and network namespace).
fn connbench(
    client: &Path,
    pod: &Pod,
    tool: SocketAddr,
    load: Load,
    n: usize,
    concurrency: usize,
    auth: Option<&str>,
) -> anyhow::Result<Sample> {
    let mut cmd = Command::new(client);
    cmd.arg(tool.to_string())
        .arg("tool.test")
        .arg(load.path())
        .arg(n.to_string())
        .arg(concurrency.to_string());
    if let Some(a) = auth {
        cmd.arg(a);
    }
    let text = output(&mut pod.wrap(&cmd))?;
    let mut lines = text.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let (wall, errors) = match head.as_slice() {
        ["wall_ns", w, "errors", e] => (w.parse::<u64>()?, e.parse::<u64>()?),
        _ => bail!("unexpected connbench output: {text:.200}"),
    };
    if errors > 0 {
        bail!("{errors} of {n} connections failed (see connbench's first error above)");
    }
    let mut total = Vec::with_capacity(n);
    let mut connect = Vec::with_capacity(n);
    for line in lines {
        let mut w = line.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(c)), Some(Ok(t))) = (w.next(), w.next()) {
            connect.push(Duration::from_nanos(c));
            total.push(Duration::from_nanos(t));
        }
    }
    Ok(Sample {
        wall: Duration::from_nanos(wall),
        total,
        connect,
    })
}

/// An nftables table of our own in the host's namespace.
struct Nft {
    table: String,
    iface: String,
}

/// Deletes the table when dropped.
struct NftRule<'a>(&'a Nft);

impl Nft {
    /// `redirect` of the pod's TCP connections to `tool` into the proxy's port, arriving on the
    /// pod's veth.
    fn redirect(&self, tool: SocketAddr, port: u16) -> anyhow::Result<NftRule<'_>> {
        let _ = output(Command::new("nft").args(["delete", "table", "ip", &self.table]));
        let IpAddr::V4(ip) = tool.ip() else {
            bail!("IPv4 only");
        };
        let script = format!(
            "table ip {t} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    iifname \"{i}\" ip daddr {ip} tcp dport {p} redirect to :{port}\n  }}\n}}\n",
            t = self.table,
            i = self.iface,
            p = tool.port(),
        );
        let file = std::env::temp_dir().join(format!("{}.nft", self.table));
        std::fs::write(&file, script)?;
        let r = output(Command::new("nft").arg("-f").arg(&file));
        let _ = std::fs::remove_file(&file);
        r.context("adding the nftables redirect rule")?;
        Ok(NftRule(self))
    }
}

impl Drop for NftRule<'_> {
    fn drop(&mut self) {
        let _ = output(Command::new("nft").args(["delete", "table", "ip", &self.0.table]));
    }
}
