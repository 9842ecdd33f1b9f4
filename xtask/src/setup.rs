//! `cargo xtask setup`: everything the build and the tests need, on a fresh Debian machine.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::cmd::{self, exec};

/// Debian packages: tool servers and clients the tests drive, and the benchmarks' peers.
const PACKAGES: &[&str] = &[
    "nginx-light",
    "fcgiwrap",
    "git",
    "curl",
    "ca-certificates",
    "openssl",
    "iproute2",
    "iptables",
    "nftables",
    "bpftool",
    "procps",
    "psmisc",
    "hyperfine",
    "wrk",
    "jq",
    // tests/tests/api_page.rs: the UI developers' page in a real headless browser
    "chromium",
    // OCI registry tests and benchmarks: the distribution registry, its htpasswd, the clients.
    "docker-registry",
    "apache2-utils",
    "skopeo",
    "buildah",
];

/// bpf-linker, built against the pinned toolchain's own LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
const TOOLCHAIN: &str = "1.95.0";

#[derive(Args, Default)]
pub struct SetupArgs {
    /// Skip Debian packages (for machines where they are installed by other means).
    #[arg(long)]
    pub no_apt: bool,
    /// Skip building the Kubernetes node: binaries and images (the standalone agent does not
    /// need them; the controller and Kubernetes-mode tests do).
    #[arg(long)]
    pub no_kube: bool,
}

/// Components the build needs. rust-toolchain.toml lists them too, but rustup does not add them
/// when the pinned toolchain is a link to another one (as on a fresh machine of this kind), so
/// they are added explicitly. rust-src: the eBPF programs build `core` from source.
const COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    if !args.no_apt {
        // One list, so one `apt-get update` at most.
        let mut packages: Vec<&str> = PACKAGES.to_vec();
        packages.extend(crate::kube::RUN_PACKAGES);
        packages.extend(crate::node::PACKAGES);
        packages.extend(crate::image::PACKAGES);
        if !args.no_kube {
            packages.extend(crate::kube::BUILD_PACKAGES);
            packages.extend(crate::node::build::PACKAGES);
        }
        apt(&packages)?;
        // kubectl: Debian's (v1.20, like the test API server) unless one is installed already.
        if Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .is_err()
        {
            apt(&["kubernetes-client"])?;
        }
    }
    rust_components()?;
    bpf_linker()?;
    if !args.no_kube {
        // The controller's tests run against a real kube-apiserver, the Kubernetes-mode tests
        // against a real node: one build makes the apiserver for both, and the node's kubelet,
        // controller-manager, scheduler and images, cached (`~/.cache/kube-node`,
        // `~/.cache/kube-test`).
        crate::node::build::build(false)?;
    }
    eprintln!("setup complete");
    Ok(())
}

/// Installs the Debian packages not yet installed.
pub fn apt(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages: {}; run this as root or install them",
            missing.join(" ")
        );
    }
    apt_update()?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Adds the toolchain components that are missing.
fn rust_components() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        TOOLCHAIN,
    ]))
    .with_context(|| {
        format!("listing the components of toolchain {TOOLCHAIN}; is rustup installed?")
    })?;
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l.starts_with(&format!("{c}-")) || l == *c)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    exec(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", TOOLCHAIN])
            .args(&missing),
    )
}

/// Where the project's own tools live (a cache: rebuilt when missing).
pub fn tools_dir() -> PathBuf {
    home().join(".cache/connectors")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// The bpf-linker binary `setup` installs.
pub fn bpf_linker_path() -> PathBuf {
    tools_dir().join(format!("tools-{TOOLCHAIN}/bin/bpf-linker"))
}

/// Builds bpf-linker against the toolchain's libLLVM, once.
fn bpf_linker() -> anyhow::Result<()> {
    let bin = bpf_linker_path();
    if bin.is_file()
        && Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let sysroot =
        cmd::output(Command::new("rustc").args([&format!("+{TOOLCHAIN}"), "--print", "sysroot"]))?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("the toolchain has no libLLVM.so.*; is it a rustup toolchain?")?;
    // bpf-linker links the toolchain's own LLVM: a prefix whose lib/ holds it under both names.
    let prefix = tools_dir().join(format!("llvm-{TOOLCHAIN}"));
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in [
        "libLLVM.so".to_owned(),
        lib.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned(),
    ] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    let root = tools_dir().join(format!("tools-{TOOLCHAIN}"));
    exec(
        Command::new("cargo")
            .arg(format!("+{TOOLCHAIN}"))
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
            .args([
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
            ])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )
}

/// `apt-get update`. A third-party source failing must not stop the Debian ones, so its
/// failure is reported and setup goes on.
pub fn apt_update() -> anyhow::Result<()> {
    if let Err(e) = exec(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    ) {
        eprintln!("apt-get update reported a problem ({e}); continuing");
    }
    Ok(())
}
