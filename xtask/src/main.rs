//! Project tasks: `cargo xtask <task>`.
//!
//! - `run`: set up, build, and run the agent standalone on `deploy/standalone`.
//! - `setup`: install what the build and the tests need (Debian packages, bpf-linker).
//! - `test`: lints, generated-file checks, then every test (unit, end-to-end, privileged).
//! - `demo`: a git server that needs credentials, the agent, and a clone through it.
//! - `bench api`: the unified REST API listing tags and refs, beside skopeo and git ls-remote.
//! - `bench proxy`: clone and request latency, direct vs proxy vs nginx injecting the header.
//! - `gen-crds`: write deploy/crds/*.yaml from the Rust types (`test` checks they are fresh).
//! - `gen-openapi`: write docs/openapi.json, the unified REST API's document (`test` checks it).
//! - `kube build|start|stop`: a real kube-apiserver (v1.20, from Debian's source) for the
//!   controller's tests.
//! - `node build|start|stop|status|smoke`: a real single-node Kubernetes (kubelet, containerd,
//!   runc, bridge CNI, kube-proxy, the control plane) for the Kubernetes-mode tests.
//! - `image [--import] [--print]`: the agent's and the controller's container images, built by
//!   hand as OCI archives in `target/images`, imported into the node's containerd.

mod bench;
mod cmd;
mod crds;
mod demo;
mod image;
mod kube;
mod node;
mod oci;
mod openapi;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Connectors project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Set up what is missing, build, and run the agent standalone on deploy/standalone.
    Run(run::RunArgs),
    /// Install the Debian packages and tools the build and tests need (idempotent).
    Setup(setup::SetupArgs),
    /// Run the lints and every test, as CI does.
    Test(test::TestArgs),
    /// Show the product working: a git server requiring auth, the agent, a clone through it.
    Demo(demo::DemoArgs),
    /// Benchmarks that print figures beside a baseline.
    Bench(bench::BenchArgs),
    /// Write deploy/crds/*.yaml from the Rust types.
    GenCrds {
        /// Only check that the files are up to date (as `test` does).
        #[arg(long)]
        check: bool,
    },
    /// Write docs/openapi.json (the unified REST API's OpenAPI document).
    GenOpenapi {
        /// Only check that the file is up to date (as `test` does).
        #[arg(long)]
        check: bool,
    },
    /// Build (once), start or stop a real kube-apiserver with etcd on loopback.
    Kube(kube::KubeArgs),
    /// Build (once), start, stop or check a real single-node Kubernetes (kubelet, containerd).
    Node(node::NodeArgs),
    /// Build the agent's and the controller's images (OCI archives in target/images) and
    /// import them into the node when it runs.
    Image(image::ImageArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Run(a) => run::run(&a),
        Task::Setup(a) => setup::run(&a),
        Task::Test(a) => test::run(&a),
        Task::Demo(a) => demo::run(&a),
        Task::Bench(a) => bench::run(&a),
        Task::GenCrds { check: false } => crds::generate(),
        Task::GenCrds { check: true } => crds::check(),
        Task::GenOpenapi { check: false } => openapi::generate(),
        Task::GenOpenapi { check: true } => openapi::check(),
        Task::Kube(a) => kube::run(&a),
        Task::Node(a) => node::run(&a),
        Task::Image(a) => image::run(&a),
    }
}
