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
];

/// bpf-linker, built against the pinned toolchain's own LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
const TOOLCHAIN: &str = "1.95.0";

#[derive(Args, Default)]
pub struct SetupArgs {
    /// Skip Debian packages (for machines where they are installed by other means).
    #[arg(long)]
    pub no_apt: bool,
}

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    if !args.no_apt {
        apt(PACKAGES)?;
        apt(crate::kube::RUN_PACKAGES)?;
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
    bpf_linker()?;
    // The controller's tests run against a real kube-apiserver, built once and cached.
    crate::kube::build(false, None)?;
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
