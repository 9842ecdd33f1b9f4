//! `cargo xtask bench <what>`: figures from one run, each beside a baseline run in the same
//! command.

mod api;
mod kube;
mod oci;
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
    /// The unified REST API listing 5000 image tags (cold and cached) beside `skopeo list-tags`
    /// and a direct paginated fetch, and 600 git refs beside `git ls-remote`.
    Api(api::ApiBenchArgs),
    /// git clone time and keep-alive request latency: direct, through the proxy, and through
    /// nginx injecting the same header.
    Proxy(proxy::ProxyBenchArgs),
    /// New connections per second and connection latency: direct, eBPF redirect into the
    /// proxy, and nftables REDIRECT into the same proxy (as root).
    Redirect(redirect::RedirectBenchArgs),
    /// Kubernetes mode on the real node: labelled pod start to redirect active (p50/p99), and a
    /// labelled pod's clone against the same clone with credentials given directly (as root).
    Kube(kube::KubeBenchArgs),
    /// Push and pull time of a 500+ MB image with skopeo: through the proxy (registry token
    /// flow in the agent, no credentials in the client) and direct (client given them), as root.
    Oci(oci::OciBenchArgs),
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        Bench::Api(a) => api::run(a),
        Bench::Proxy(a) => proxy::run(a),
        Bench::Redirect(a) => redirect::run(a),
        Bench::Kube(a) => kube::run(a),
        Bench::Oci(a) => oci::run(a),
    }
}
