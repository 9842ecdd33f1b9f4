//! `cargo xtask bench <what>`: figures from one run, each beside a baseline run in the same
//! command.

mod proxy;
mod stats;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: Bench,
}

#[derive(Subcommand)]
pub enum Bench {
    /// git clone time and keep-alive request latency: direct, through the proxy, and through
    /// nginx injecting the same header.
    Proxy(proxy::ProxyBenchArgs),
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        Bench::Proxy(a) => proxy::run(a),
    }
}
