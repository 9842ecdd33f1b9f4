//! `cargo xtask test`: what CI runs. Setup (idempotent), lints, generated-file checks, a build of
//! every binary and of the project's images (`cargo xtask image --no-import`: the release
//! binaries in OCI archives, which `tests/tests/kube_images.rs` imports into the node), then
//! every test: unit tests, end-to-end tests against real tools, privileged tests (as root), and
//! the Kubernetes-mode tests on a real node, which is stopped at the end when this run started it.

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
    // Generated files: the CRDs in deploy/crds must match the Rust types, and the API's OpenAPI
    // document (docs/openapi.json) the API crate and the built-in classes.
    crate::crds::check()?;
    crate::openapi::check()?;
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
    // The end-to-end tests run the binaries, so build them first, and the images the
    // Kubernetes-mode tests import.
    exec(cargo().args(["build", "--workspace", "--bins"]))?;
    crate::image::build("release")?;
    // The Kubernetes-mode tests share one node (`KubeNode::shared()` starts it detached when
    // it is not running). Stop it afterwards if it was this run that started it, so a node
    // started by hand keeps running; its state stays for a quicker start next time.
    let node_dir = connectors_tests::node::default_dir();
    let node_was_running = connectors_tests::node::status(&node_dir).any_running();
    let tested = exec(
        cargo()
            .args(["test", "--workspace", "--no-fail-fast", "--"])
            .args(&args.cargo_test_args),
    );
    if !node_was_running && connectors_tests::node::status(&node_dir).any_running() {
        eprintln!("stopping the Kubernetes node the tests started");
        crate::node::stop(&node_dir, false)?;
    }
    tested?;
    eprintln!("all checks and tests passed");
    Ok(())
}
