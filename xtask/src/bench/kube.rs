//! `cargo xtask bench kube`: Kubernetes mode on the real node (as root), figures from one run:
//!
//! - **labelled pod start to redirect active**: N labelled pods are created at once; for each,
//!   the agent logs the time from its cgroup appearing (the directory's creation event) to its
//!   id being in the redirect's workload map (p50/p99 over the pods). As a check that this is
//!   before the pod's first process runs, every pod's very first connection to the tool must
//!   carry the credentials (the server answers 200 only then).
//! - **clone**: `git clone` of a repository of incompressible files in a labelled pod with no
//!   credentials (through the redirect and the agent) against the same clone in an unlabelled
//!   pod given the credentials directly (median of rounds, modes interleaved), and the ratio.
//!
//! It installs Connectors with `kubectl apply -k deploy/` (the images must be built: `cargo
//! xtask image`) and leaves the node running.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use connectors_tests::cluster::{Installed, TOOLS_IP};
use connectors_tests::{GitServer, GitServerOptions, TestCa};

use super::stats::{median, percentile, ratio};

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

#[derive(Args)]
pub struct KubeBenchArgs {
    /// Labelled pods started at once.
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Size of the repository to clone, in MB.
    #[arg(long, default_value_t = 50)]
    pub repo_mb: u64,
    /// Clone rounds (each clones once per mode).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

pub fn run(args: &KubeBenchArgs) -> anyhow::Result<()> {
    let installed = Installed::try_shared(&["git.test"]).map_err(anyhow::Error::msg)?;
    let node = installed.node;
    let ca = TestCa::new("bench tools CA");
    let server = GitServer::start(GitServerOptions {
        listen: Some(SocketAddr::new(TOOLS_IP.parse()?, 443)),
        tls: Some((&ca, vec!["git.test"])),
        users: vec![(USER, PASSWORD)],
        ..Default::default()
    });
    eprintln!("creating a {} MB repository...", args.repo_mb);
    super::proxy::create_big_repo(&server, args.repo_mb)?;
    let ns = node.create_namespace("bench").map_err(anyhow::Error::msg)?;
    let pem = connectors_tests::indent(&ca.cert_pem, 4);
    node.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: {ns}}}
type: kubernetes.io/basic-auth
stringData: {{username: {USER}, password: {PASSWORD}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: ca, namespace: {ns}}}
stringData:
  ca.crt: |
{pem}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: tools-ca, namespace: {ns}}}
data:
  ca.crt: |
{pem}
---
apiVersion: connectors.io/v1alpha1
kind: Connector
metadata: {{name: git, namespace: {ns}}}
spec:
  connectorClassName: git
  address: https://git.test
  auth: {{secretRef: {{name: creds}}}}
  caCertSecretRef: {{name: ca}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: use-git, namespace: {ns}}}
rules: [{{apiGroups: [connectors.io], resources: [connectors], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: default-uses-git, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: use-git}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {ns}}}]
"#
    ))
    .map_err(anyhow::Error::msg)?;

    // Activation: N labelled pods at once, each trying the tool at once.
    eprintln!("starting {} labelled pods...", args.pods);
    let first = "curl -s -o /dev/null -w '%{http_code}' --max-time 20 https://git.test/big.git/info/refs?service=git-upload-pack";
    let mut yaml = String::new();
    for i in 0..args.pods {
        yaml.push_str(&pod_yaml(&ns, &format!("start-{i}"), true, first, ""));
        yaml.push_str("---\n");
    }
    let since = chrono_now();
    node.apply(&yaml).map_err(anyhow::Error::msg)?;
    let mut first_ok = 0;
    for i in 0..args.pods {
        let (ok, log) = wait_pod(node, &ns, &format!("start-{i}"), Duration::from_secs(300))?;
        if ok && log.trim() == "200" {
            first_ok += 1;
        }
    }
    let activations = activation_times(installed, &since);
    // Clones, interleaved.
    eprintln!("cloning, {} rounds...", args.rounds);
    let timed = |script: &str| {
        format!("s=$(date +%s%N); {script} && e=$(date +%s%N) && echo $(( (e - s) / 1000 ))")
    };
    let through = timed("git clone -q https://git.test/big.git /tmp/c");
    let direct = timed(&format!(
        "GIT_SSL_CAINFO=/tools-ca/ca.crt git clone -q https://{USER}:{PASSWORD}@git.test/big.git /tmp/c"
    ));
    let mount = "      volumeMounts: [{name: ca, mountPath: /tools-ca}]\n  volumes: [{name: ca, configMap: {name: tools-ca}}]";
    let (mut proxied, mut plain) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for labelled in [true, false] {
            let name = format!(
                "clone-{round}-{}",
                if labelled { "agent" } else { "direct" }
            );
            let (script, extra) = if labelled {
                (&through, "")
            } else {
                (&direct, mount)
            };
            node.apply(&pod_yaml(&ns, &name, labelled, script, extra))
                .map_err(anyhow::Error::msg)?;
            let (ok, log) = wait_pod(node, &ns, &name, Duration::from_secs(600))?;
            if !ok {
                bail!("clone in {name} failed: {log}");
            }
            let us: u64 = log
                .trim()
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .with_context(|| format!("{name} printed no time: {log}"))?;
            let d = Duration::from_micros(us);
            if labelled {
                proxied.push(d);
            } else {
                plain.push(d);
            }
        }
    }
    let _ = node.delete_namespace(&ns);

    println!();
    println!(
        "Kubernetes mode benchmark (real node, the images `cargo xtask image` imported, 2 cores)"
    );
    println!();
    println!(
        "labelled pod start to redirect active ({} pods started at once; from the pod's cgroup appearing to its id in the redirect's map):",
        args.pods
    );
    if activations.is_empty() {
        println!("  no activation was logged by the agent");
    } else {
        println!(
            "  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   ({} measured)",
            ms(percentile(&activations, 50.0)),
            ms(percentile(&activations, 99.0)),
            ms(percentile(&activations, 100.0)),
            activations.len()
        );
    }
    println!(
        "  first connection of each pod redirected with credentials: {first_ok}/{}",
        args.pods
    );
    println!();
    println!(
        "git clone of a {} MB repository in a pod, median of {} (min):",
        args.repo_mb, args.rounds
    );
    let (p, d) = (median(&proxied), median(&plain));
    println!(
        "  unlabelled pod, credentials given directly   {:.3} s ({:.3} s)",
        d.as_secs_f64(),
        plain
            .iter()
            .min()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
    );
    println!(
        "  labelled pod, no credentials (agent)         {:.3} s ({:.3} s)   {:.2}x direct",
        p.as_secs_f64(),
        proxied
            .iter()
            .min()
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
        ratio(p, d)
    );
    drop(server);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Now, as RFC 3339 (for `kubectl logs --since-time`).
fn chrono_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The agent's "pod under redirect" times since `since`, from its JSON log.
fn activation_times(installed: &Installed, since: &str) -> Vec<Duration> {
    let Ok(pod) = installed.agent_pod() else {
        return Vec::new();
    };
    let log = installed
        .kubectl(&[
            "-n",
            connectors_tests::cluster::SYSTEM_NAMESPACE,
            "logs",
            &pod,
            &format!("--since-time={since}"),
        ])
        .unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "pod under redirect")
        .filter_map(|v| v["fields"]["after_ms"].as_f64())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect()
}

fn pod_yaml(ns: &str, name: &str, labelled: bool, script: &str, extra: &str) -> String {
    connectors_tests::cluster::ToolsPod {
        labelled,
        extra,
        ..connectors_tests::cluster::ToolsPod::labelled(ns, name, script)
    }
    .yaml()
}

/// Waits for a pod to finish: whether it succeeded, and its log.
fn wait_pod(
    node: &connectors_tests::node::KubeNode,
    ns: &str,
    name: &str,
    within: Duration,
) -> anyhow::Result<(bool, String)> {
    let started = Instant::now();
    loop {
        let json = node.pod_json(ns, name).unwrap_or_default();
        match json["status"]["phase"].as_str() {
            Some("Succeeded") => return Ok((true, node.logs(ns, name).unwrap_or_default())),
            Some("Failed") => return Ok((false, node.logs(ns, name).unwrap_or_default())),
            _ => {}
        }
        if started.elapsed() > within {
            bail!("pod {ns}/{name} did not finish in {within:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
