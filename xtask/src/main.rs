//! Project tasks: `cargo xtask <task>`.
//!
//! - `setup`: install what the build and the tests need (Debian packages, bpf-linker).
//! - `test`: lints, generated-file checks, then every test (unit, end-to-end, privileged).
//! - `demo`: a git server that needs credentials, the agent, and a clone through it.
//! - `bench proxy`: clone and request latency, direct vs proxy vs nginx injecting the header.

mod bench;
mod cmd;
mod demo;
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
    /// Install the Debian packages and tools the build and tests need (idempotent).
    Setup(setup::SetupArgs),
    /// Run the lints and every test, as CI does.
    Test(test::TestArgs),
    /// Show the product working: a git server requiring auth, the agent, a clone through it.
    Demo(demo::DemoArgs),
    /// Benchmarks that print figures beside a baseline.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup(a) => setup::run(&a),
        Task::Test(a) => test::run(&a),
        Task::Demo(a) => demo::run(&a),
        Task::Bench(a) => bench::run(&a),
    }
}
