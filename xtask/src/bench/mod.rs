//! `cargo xtask bench <what>`.
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: Bench,
}

#[derive(Subcommand)]
pub enum Bench {
    /// Clone time and keep-alive latency: direct, through the proxy, through nginx.
    Proxy,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match args.what {
        Bench::Proxy => anyhow::bail!("not written yet"),
    }
}
