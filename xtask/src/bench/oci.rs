//! `cargo xtask bench oci`: push and pull time of a large image (one big layer) with `skopeo`,
//! through the proxy (no credentials in the client, the registry token flow in the agent) and
//! directly (the client given the credentials), against Debian's `docker-registry` in token
//! mode with the harness's token issuer. Root: the registry listens on a lab address
//! (198.18.0.0/15), which Go's proxy settings do not exempt as they exempt loopback.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use connectors_tests::oci_image::{ImageClient, Layout};
use connectors_tests::registry::{
    OciConnector, Registry, RegistryAuth, RegistryOptions, login_secret_yaml,
};
use connectors_tests::token_issuer::{Grant, IssuerOptions, TokenIssuer};
use connectors_tests::{AgentProcess, ConfigDir, Lab, TestCa};

use crate::cmd::{cargo, exec};

const USER: &str = "bench";
const PASSWORD: &str = "bench-registry-password";
const SERVICE: &str = "registry.bench";

#[derive(Args)]
pub struct OciBenchArgs {
    /// Size of the image's big layer, in MB (random bytes, so it does not compress).
    #[arg(long, default_value_t = 512)]
    pub layer_mb: u64,
}

pub fn run(args: &OciBenchArgs) -> anyhow::Result<()> {
    if args.layer_mb < 500 {
        bail!("--layer-mb must be at least 500");
    }
    exec(cargo().args(["build", "--release", "-p", "connectors-agent"]))?;
    let bin = crate::cmd::root().join("target/release/connectors-agent");
    let lab = Lab::new();
    let ip = IpAddr::V4(lab.node_ip4(40));
    let ip_text = ip.to_string();
    let ca = TestCa::new("bench registry CA");
    let issuer = TokenIssuer::start(IssuerOptions {
        listen: Some(SocketAddr::new(ip, 0)),
        tls: (&ca, vec![ip_text.as_str()]),
        service: SERVICE,
        users: vec![(USER, PASSWORD, Grant::All)],
        anonymous: None,
        expires_in: 3600,
    });
    let root_cert = issuer.root_cert();
    let realm = format!("https://{ip_text}:{}", issuer.addr.port());
    let registry = Registry::start(RegistryOptions {
        listen: Some(SocketAddr::new(ip, connectors_tests::free_port())),
        tls: (&ca, vec![ip_text.as_str()]),
        auth: RegistryAuth::Token {
            realm: format!("{realm}/token"),
            service: SERVICE,
            root_cert: &root_cert,
        },
    });
    let config = ConfigDir::new();
    config.write(
        "oci-class.yaml",
        include_str!("../../../deploy/classes/oci.yaml"),
    );
    config.write(
        "reg.yaml",
        &OciConnector {
            name: "reg",
            address: registry.url(&ip_text),
            realm: Some(realm),
            auth: Some(("tokenAuth", "reg-login")),
            ca_pem: &ca.cert_pem,
        }
        .yaml(),
    );
    config.write(
        "reg-login.yaml",
        &login_secret_yaml("reg-login", "connectors.io/registry-token", USER, PASSWORD),
    );
    let agent = AgentProcess::start_bin(&bin, config.path(), "warn", &[]);

    let work = tempfile::tempdir()?;
    let proxied = ImageClient::new(&agent.ca_path(), Some(agent.proxy_url()));
    let direct = ImageClient::new(&ca.write_cert(work.path()), None);
    let host = registry.reference_host(&ip_text);
    let login = format!("{USER}:{PASSWORD}");

    let mut rows = Vec::new();
    let mut total = 0u64;
    for (label, client, creds, repo) in [
        (
            "direct (client has the credentials)",
            &direct,
            Some(login.as_str()),
            "bench/direct",
        ),
        (
            "connectors proxy (no credentials)",
            &proxied,
            None,
            "bench/proxy",
        ),
    ] {
        // An image of its own per mode: blobs the registry already holds would be mounted, not
        // sent.
        eprintln!("writing an image with a {} MB layer...", args.layer_mb);
        let src = Layout::create(&work.path().join(format!("src-{}", repo.replace('/', "-"))));
        let image = src.add_image("v1", &[args.layer_mb << 20, 1 << 20, 4096], "amd64");
        total = image.layers.iter().map(|l| l.size).sum();
        let dest = format!("docker://{host}/{repo}:v1");
        let push = timed(client.copy_as(&src.reference("v1"), &dest, creds, &[]))
            .with_context(|| format!("push, {label}"))?;
        let pulled = Layout::create(&work.path().join(repo.replace('/', "-")));
        let pull = timed(client.copy_as(&dest, &pulled.reference("v1"), creds, &[]))
            .with_context(|| format!("pull, {label}"))?;
        if !image.layers.iter().all(|l| pulled.holds(l)) {
            bail!("{label}: the pulled image differs from the pushed one");
        }
        std::fs::remove_dir_all(&pulled.dir)?;
        std::fs::remove_dir_all(&src.dir)?;
        rows.push((label, push, pull));
    }
    let mb = total as f64 / 1e6;
    println!("image: {mb:.0} MB in 3 layers (a fresh one per mode)");
    println!("{:<40} {:>10} {:>10}", "", "push", "pull");
    for (label, push, pull) in &rows {
        println!(
            "{label:<40} {:>8.2} s {:>8.2} s   ({:.0} / {:.0} MB/s)",
            push.as_secs_f64(),
            pull.as_secs_f64(),
            mb / push.as_secs_f64(),
            mb / pull.as_secs_f64()
        );
    }
    let (_, dpush, dpull) = rows[0];
    let (_, ppush, ppull) = rows[1];
    println!(
        "ratio proxy / direct: push {:.2}, pull {:.2}",
        ppush.as_secs_f64() / dpush.as_secs_f64(),
        ppull.as_secs_f64() / dpull.as_secs_f64()
    );
    println!(
        "agent peak RSS: {} KiB; tokens issued: {}",
        agent.peak_rss_kib(),
        issuer.tokens().len()
    );
    Ok(())
}

fn timed(mut c: Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = c.output().context("running skopeo")?;
    if !out.status.success() {
        bail!(
            "skopeo failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(started.elapsed())
}
