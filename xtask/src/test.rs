//! `cargo xtask test`: what CI runs. Setup (idempotent), lints, generated-file checks, a build of every binary, then
//! every test: unit tests, end-to-end tests against real tools, privileged tests (as root).

use clap::Args;

use crate::cmd::{cargo, exec};
use crate::setup;

#[derive(Args, Default)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (packages and tools are already there).
    #[arg(long)]
    pub no_setup: bool,
    /// Skip fmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Passed to `cargo test` (a test name filter, `--nocapture`...).
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    if !args.no_setup {
        setup::run(&setup::SetupArgs::default())?;
    }
    // Generated files: the CRDs in deploy/crds must match the Rust types.
    crate::crds::check()?;
    if !args.no_lint {
        exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
        exec(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // The end-to-end tests run the binaries, so build them first.
    exec(cargo().args(["build", "--workspace", "--bins"]))?;
    exec(
        cargo()
            .args(["test", "--workspace", "--no-fail-fast", "--"])
            .args(&args.cargo_test_args),
    )?;
    eprintln!("all checks and tests passed");
    Ok(())
}
