//! `cargo xtask run`: the agent, standalone, on the example configuration in the repository.

use std::process::Command;

use clap::Args;

use crate::cmd::{cargo, exec, root};
use crate::setup;

#[derive(Args)]
pub struct RunArgs {
    /// The config folder (ConnectorClass, Connector and Secret YAML).
    #[arg(long, default_value = "deploy/standalone")]
    pub config_dir: String,
    /// Further arguments for connectors-agent (see `connectors-agent --help`).
    #[arg(last = true)]
    pub agent_args: Vec<String>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs {
        no_apt: true,
        no_kube: true,
    })?;
    exec(cargo().args(["build", "--release", "-p", "connectors-agent"]))?;
    let state = root().join("target/standalone");
    std::fs::create_dir_all(&state)?;
    let ca = state.join("ca.crt");
    eprintln!();
    eprintln!(
        "The agent's CA is {} (created at first start).",
        ca.display()
    );
    eprintln!("Use it from any client, with no credentials, e.g.:");
    eprintln!(
        "  HTTPS_PROXY=http://127.0.0.1:3128 GIT_SSL_CAINFO={} git clone https://github.com/my-org/repo.git",
        ca.display()
    );
    eprintln!("Status: curl -s http://127.0.0.1:15000/connectors | jq .   Stop: Ctrl-C");
    eprintln!();
    exec(
        Command::new(root().join("target/release/connectors-agent"))
            .current_dir(root())
            .arg("--config-dir")
            .arg(&args.config_dir)
            .arg("--ca-cert")
            .arg(&ca)
            .arg("--ca-key")
            .arg(state.join("ca.key"))
            .args(&args.agent_args),
    )
}
