//! The node's two images, as single-layer OCI archives made by hand (tar, sha256sum and JSON:
//! [`crate::oci`]), cached in `~/.cache/kube-node/images`; nothing can be pulled on this
//! machine.
//!
//! - `kn.local/pause:3.4` (`pause.tar`): the sandbox image, Kubernetes' own
//!   `build/pause/linux/pause.c` linked statically with `musl-gcc` (the build keeps pause.c in
//!   the cache; without it the source package is downloaded again for that one file).
//! - `kn.local/tools:1` (`tools.tar`, ~184 MB): Debian bookworm minbase from debootstrap plus
//!   git, curl, ca-certificates, iproute2 and procps; docs, man pages, locales and apt lists
//!   removed.
//!
//! `cargo xtask node start` imports them into containerd when it lacks them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use connectors_tests::node::{PAUSE_IMAGE, TOOLS_IMAGE, cache_dir, images_dir};
use serde_json::{Value, json};

use crate::cmd::{self, exec};

const TOOLS_PACKAGES: &str = "git,curl,ca-certificates,iproute2,procps";
const SUITE: &str = "bookworm";

fn pause_source() -> PathBuf {
    cache_dir().join("src/pause.c")
}

/// Keeps `build/pause/linux/pause.c` of the source tree `src` in the cache.
pub fn keep_pause_source(src: &Path) -> anyhow::Result<()> {
    let from = src.join("build/pause/linux/pause.c");
    let to = pause_source();
    std::fs::create_dir_all(to.parent().context("no parent")?)?;
    std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// Builds the archives that are missing (both with `force`).
pub fn build(force: bool) -> anyhow::Result<()> {
    let dir = images_dir();
    std::fs::create_dir_all(&dir)?;
    if force || !dir.join("pause.tar").is_file() {
        pause(&dir)?;
    }
    if force || !dir.join("tools.tar").is_file() {
        tools(&dir)?;
    }
    Ok(())
}

fn pause(dir: &Path) -> anyhow::Result<()> {
    crate::setup::apt(&["musl-tools", "binutils"])?;
    if !pause_source().is_file() {
        fetch_pause_source()?;
    }
    let rootfs = tempfile::Builder::new()
        .prefix("pause-rootfs")
        .tempdir_in(dir)?;
    let bin = rootfs.path().join("pause");
    exec(
        Command::new("musl-gcc")
            .args([
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                "-DVERSION=v3.4-kn",
                "-o",
            ])
            .arg(&bin)
            .arg(pause_source()),
    )?;
    exec(Command::new("strip").arg(&bin))?;
    oci_archive(
        rootfs.path(),
        PAUSE_IMAGE,
        json!(["/pause"]),
        Value::Null,
        &dir.join("pause.tar"),
    )?;
    eprintln!("kube-node: image {PAUSE_IMAGE} built");
    Ok(())
}

/// pause.c from the source package's upstream tarball, without unpacking the whole tree.
fn fetch_pause_source() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("pause.c is not cached and fetching it needs root: run `cargo xtask setup` as root");
    }
    crate::setup::apt(&["dpkg-dev"])?;
    crate::kube::ensure_deb_src()?;
    let tmp = tempfile::Builder::new()
        .prefix("pause-src")
        .tempdir_in(cache_dir())?;
    exec(
        Command::new("apt-get")
            .args(["source", "--download-only", "-qq", "kubernetes"])
            .current_dir(tmp.path()),
    )?;
    let orig = std::fs::read_dir(tmp.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kubernetes_") && n.contains(".orig.tar"))
        })
        .context("`apt-get source --download-only kubernetes` gave no orig tarball")?;
    exec(
        Command::new("tar")
            .arg("-xf")
            .arg(&orig)
            .arg("-C")
            .arg(tmp.path())
            .args(["--wildcards", "*/build/pause/linux/pause.c"]),
    )?;
    let found = std::fs::read_dir(tmp.path())?
        .filter_map(Result::ok)
        .map(|e| e.path().join("build/pause/linux/pause.c"))
        .find(|p| p.is_file())
        .context("no build/pause/linux/pause.c in the orig tarball")?;
    std::fs::create_dir_all(pause_source().parent().context("no parent")?)?;
    std::fs::copy(&found, pause_source())?;
    Ok(())
}

fn tools(dir: &Path) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("building {TOOLS_IMAGE} needs root (debootstrap): run `cargo xtask setup` as root");
    }
    crate::setup::apt(&["debootstrap"])?;
    let t = Instant::now();
    let rootfs = dir.join("tools-rootfs");
    remove_rootfs(&rootfs)?;
    let log = dir.join("debootstrap.log");
    let log_file = std::fs::File::create(&log)?;
    eprintln!(
        "kube-node: debootstrap {SUITE} minbase + {TOOLS_PACKAGES} (log: {})",
        log.display()
    );
    let status = Command::new("nice")
        .args(["-n", "19", "debootstrap", "--variant=minbase"])
        .arg(format!("--include={TOOLS_PACKAGES}"))
        .arg(SUITE)
        .arg(&rootfs)
        .arg(mirror())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("cannot run debootstrap")?;
    // debootstrap mounts proc and sys in the target (and may bind /dev nodes): never leave them.
    connectors_tests::node::unmount_under(&rootfs);
    if !status.success() {
        bail!("debootstrap failed ({status}); see {}", log.display());
    }
    for (sub, pred) in [
        (
            "var/cache/apt/archives",
            (|n: &str| n.ends_with(".deb")) as fn(&str) -> bool,
        ),
        ("var/lib/apt/lists", |_| true),
        ("proc", |_| true),
        ("sys", |_| true),
        ("dev", |_| true),
        ("usr/share/doc", |_| true),
        ("usr/share/man", |_| true),
        ("usr/share/info", |_| true),
        ("usr/share/locale", |_| true),
        ("var/log", |n| n.ends_with(".log")),
        ("var/cache/debconf", |n| n.ends_with("-old")),
        ("var/lib/dpkg", |n| n.ends_with("-old")),
    ] {
        remove_children(&rootfs.join(sub), pred)?;
    }
    oci_archive(
        &rootfs,
        TOOLS_IMAGE,
        Value::Null,
        json!(["/bin/bash"]),
        &dir.join("tools.tar"),
    )?;
    remove_rootfs(&rootfs)?;
    eprintln!(
        "kube-node: image {TOOLS_IMAGE} built in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The Debian mirror apt uses (deb822 `URIs:`), else deb.debian.org.
fn mirror() -> String {
    std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("URIs:"))
                .and_then(|u| u.split_whitespace().next())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

fn remove_rootfs(rootfs: &Path) -> anyhow::Result<()> {
    if rootfs.exists() {
        connectors_tests::node::unmount_under(rootfs);
        if !connectors_tests::node::mounts_under(rootfs).is_empty() {
            bail!("{} still has mounts: not removing it", rootfs.display());
        }
        std::fs::remove_dir_all(rootfs)
            .with_context(|| format!("removing {}", rootfs.display()))?;
    }
    Ok(())
}

fn remove_children(dir: &Path, pred: fn(&str) -> bool) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        if !pred(&name.to_string_lossy()) {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Writes `out`: an OCI image layout in a tar file, one uncompressed layer holding `rootfs`
/// (sorted, mtime 0, numeric owners, xattrs), named `reference` for `ctr images import`.
fn oci_archive(
    rootfs: &Path,
    reference: &str,
    entrypoint: Value,
    cmd_: Value,
    out: &Path,
) -> anyhow::Result<()> {
    crate::oci::write(
        rootfs,
        &crate::oci::Image {
            reference,
            entrypoint,
            cmd: cmd_,
            user: None,
            labels: &[],
            gzip: false,
            root_owned: false,
            created_by: "cargo xtask node build",
        },
        out,
    )
    .map(drop)
}
