//! `cargo xtask bench <what>`: figures from one run, each beside a baseline run in the same
//! command.

mod proxy;
mod redirect;
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
    /// New connections per second and connection latency: direct, eBPF redirect into the
    /// proxy, and nftables REDIRECT into the same proxy (as root).
    Redirect(redirect::RedirectBenchArgs),
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        Bench::Proxy(a) => proxy::run(a),
        Bench::Redirect(a) => redirect::run(a),
    }
}
