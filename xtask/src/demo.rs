//! `cargo xtask demo`: the product at work on one machine. A git server that requires a
//! password, the agent with a Connector for it, and `git clone` through the agent with no
//! credentials in git. Every step is printed.

use std::process::{Command, Output};

use anyhow::bail;
use clap::Args;
use connectors_tests::git_server::git_in;
use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, TestCa, free_port,
};

use crate::cmd::{cargo, exec, root};
use crate::setup;

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the git server and the agent running after the demo, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

fn step(n: u32, title: &str) {
    println!();
    println!("== {n}. {title}");
}

fn show(cmd: &str, out: &Output) {
    println!("   $ {cmd}");
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("   | {line}");
    }
    println!("   (exit status {})", out.status.code().unwrap_or(-1));
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs {
        no_kube: true,
        ..Default::default()
    })?;
    exec(cargo().args(["build", "-p", "connectors-agent"]))?;
    let agent_bin = root().join("target/debug/connectors-agent");

    step(1, "A git server that requires a password");
    let ca = TestCa::new("demo tools CA");
    let server = GitServer::start(GitServerOptions {
        tls: Some((&ca, vec!["git.test"])),
        users: vec![("alice", "demo-password")],
        ..Default::default()
    });
    server.create_repo(
        "demo.git",
        &[(
            "README.md",
            b"Cloned through Connectors, with no credentials in git.\n",
        )],
    );
    let url = format!("{}/demo.git", server.url("git.test"));
    println!(
        "   nginx + git http-backend at {url} (TLS, basic auth: user alice); git.test is {}",
        server.addr.ip()
    );

    step(2, "Without credentials, git is refused");
    let work = tempfile::tempdir()?;
    let test_ca = ca.write_cert(work.path());
    let resolve = format!(
        "http.curloptResolve=git.test:{}:127.0.0.1",
        server.addr.port()
    );
    let out = git_in(work.path())
        .env("GIT_SSL_CAINFO", &test_ca)
        .args(["-c", &resolve, "clone", &url, "direct"])
        .output()?;
    show(&format!("git clone {url}"), &out);
    if out.status.success() {
        bail!("the server let an anonymous clone through: the demo is not showing anything");
    }

    step(3, "A Connector and its Secret, in a config folder");
    let config = ConfigDir::new();
    config.git_connector(&GitConnector {
        name: "demo-git",
        address: server.url("git.test"),
        repository: None,
        secret: Some("demo-git-credentials"),
        ca_pem: Some(&ca.cert_pem),
    });
    config.basic_auth_secret("demo-git-credentials", "alice", "demo-password");
    let hosts = config.hosts_file(&[("127.0.0.1", "git.test")]);
    for file in ["demo-git.yaml", "demo-git-credentials.yaml"] {
        println!("   --- {file}");
        let text = std::fs::read_to_string(config.path().join(file))?;
        for line in text.lines().take_while(|l| !l.contains("ca.crt")) {
            println!("   {line}");
        }
    }
    println!("   (the class `git` is built in: deploy/classes/git.yaml)");

    step(4, "The agent, standalone on that folder");
    let agent = AgentProcess::start_bin(
        &agent_bin,
        config.path(),
        "info",
        &["--hosts-file", &hosts.to_string_lossy()],
    );
    println!(
        "   $ connectors-agent --config-dir {} --proxy-listen {}",
        config.path().display(),
        agent.proxy
    );
    println!(
        "   ready: forward proxy on {}, CA created at {}",
        agent.proxy,
        agent.ca_path().display()
    );

    step(5, "git clone through the agent: no credentials in git");
    let out = git_in(work.path())
        .env("HTTPS_PROXY", agent.proxy_url())
        .env("GIT_SSL_CAINFO", agent.ca_path())
        .args(["clone", &url, "via-agent"])
        .output()?;
    show(
        &format!(
            "HTTPS_PROXY={} GIT_SSL_CAINFO={} git clone {url}",
            agent.proxy_url(),
            agent.ca_path().display()
        ),
        &out,
    );
    if !out.status.success() {
        bail!(
            "the clone through the agent failed; agent log:\n{}",
            agent.log()
        );
    }
    let readme = std::fs::read_to_string(work.path().join("via-agent/README.md"))?;
    println!("   README.md: {}", readme.trim());
    if let Some(line) = server
        .access_log()
        .lines()
        .find(|l| l.starts_with("alice ") && l.contains("upload-pack"))
    {
        println!("   the server saw user alice: {line}");
    }

    step(
        6,
        "A host no Connector covers is refused, and never contacted",
    );
    let other = format!("https://elsewhere.test:{}/", free_port());
    let out = Command::new("curl")
        .args(["-sS", "-x", &agent.proxy_url(), &other])
        .output()?;
    show(&format!("curl -x {} {other}", agent.proxy_url()), &out);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-x",
            &agent.proxy_url(),
            &format!("http://elsewhere.test:{}/", free_port()),
        ])
        .output()?;
    show(
        "curl -x ... http://elsewhere.test/ (plain HTTP: the body says why)",
        &out,
    );

    step(7, "What the agent reports (no credential in it)");
    println!("   $ curl http://{}/connectors", agent.admin);
    let status = agent.admin_json("/connectors");
    for line in serde_json_pretty(&status).lines() {
        println!("   {line}");
    }

    if args.keep {
        println!();
        println!("Running until Ctrl-C. Try:");
        println!(
            "  HTTPS_PROXY={} GIT_SSL_CAINFO={} git clone {url}",
            agent.proxy_url(),
            agent.ca_path().display()
        );
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    println!();
    println!("Demo done: everything it started is stopped now.");
    Ok(())
}

fn serde_json_pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}
