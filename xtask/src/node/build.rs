//! `cargo xtask node build`: the five binaries and the two images, once, into
//! `~/.cache/kube-node`.
//!
//! When any of kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy
//! is missing from the cache (or does not run), this takes ONE `apt-get source kubernetes` and
//! ONE `make WHAT="cmd/..."` for just the missing ones, so Kubernetes' code generators run once
//! (they are about 2.5 of the ~16 CPU-minutes; `hack/lib/golang.sh` links the servers and
//! kube-proxy statically and kubelet with cgo, as upstream does). kube-proxy alone, added to a
//! cache that has the other four, took 376 s here (make 282 s, of which the generators 83 s;
//! 3.75 CPU-minutes). The images are built meanwhile on
//! another thread (debootstrap is mostly download and dpkg). kube-apiserver is shared both
//! ways with `cargo xtask kube build`'s cache, the one the controller's tests read
//! (`connectors_tests::kube::apiserver_binary()`). The source tree (GBs with Go's build cache)
//! is deleted after a successful build; a failed build leaves it in `~/.cache/kube-node/work`
//! for the next try to reuse.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use connectors_tests::node::{BINARIES, bin_dir, cache_dir};

use super::images;
use crate::cmd;
use crate::kube;

/// Debian packages the build needs beyond `kube::BUILD_PACKAGES` (Go, `apt-get source`): the
/// musl compiler and `strip` for `pause`, debootstrap for the tools image.
pub const PACKAGES: &[&str] = &["musl-tools", "debootstrap", "binutils"];

/// Builds what is missing (everything with `force`); returns the binaries' folder.
pub fn build(force: bool) -> anyhow::Result<PathBuf> {
    let t0 = Instant::now();
    let bin = bin_dir();
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let shared_apiserver = connectors_tests::kube::apiserver_binary();
    let node_apiserver = bin.join("kube-apiserver");
    if !force && !kube::works(&node_apiserver) && kube::works(&shared_apiserver) {
        install(&shared_apiserver, &node_apiserver)?;
        eprintln!(
            "kube-node: kube-apiserver from {}",
            shared_apiserver.display()
        );
    }
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| force || !kube::works(&bin.join(b)))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "kube-node: {} cached in {}",
            BINARIES.join(", "),
            bin.display()
        );
    } else {
        if !cmd::is_root() {
            bail!(
                "{} not built yet ({}), and building needs root (apt-get source and packages): run `cargo xtask setup` as root",
                missing.join(", "),
                bin.display()
            );
        }
        crate::setup::apt(kube::BUILD_PACKAGES)?;
        crate::setup::apt(PACKAGES)?;
        let work = cache_dir().join("work");
        std::fs::create_dir_all(&work)?;
        eprintln!(
            "kube-node: building {} {} from Debian's source package (about 10-16 CPU-minutes, 2.5 GB of memory)",
            missing.join(", "),
            connectors_tests::node::VERSION
        );
        let src = kube::prepare_source(&work)?;
        images::keep_pause_source(&src)?;
        // The images meanwhile: pause needs only pause.c, tools only debootstrap.
        let images = std::thread::spawn(move || images::build(force));
        let targets: Vec<String> = missing.iter().map(|b| format!("cmd/{b}")).collect();
        let t_make = Instant::now();
        let made = kube::make(
            &src,
            &targets.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let images = images
            .join()
            .map_err(|_| anyhow::anyhow!("the image build thread panicked"))?;
        made?;
        eprintln!(
            "kube-node: make took {:.0} s",
            t_make.elapsed().as_secs_f64()
        );
        for b in &missing {
            install(&src.join("_output/bin").join(b), &bin.join(b))?;
            if !kube::works(&bin.join(b)) {
                bail!("the built {} does not run", bin.join(b).display());
            }
        }
        images?;
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("removing the build tree {}", work.display()))?;
    }
    if !kube::works(&shared_apiserver) {
        install(&node_apiserver, &shared_apiserver)?;
        eprintln!(
            "kube-node: kube-apiserver also in {}",
            shared_apiserver.display()
        );
    }
    images::build(false)?;
    if !missing.is_empty() {
        eprintln!(
            "kube-node: built and cached in {:.0} s: {} and {}",
            t0.elapsed().as_secs_f64(),
            bin.display(),
            connectors_tests::node::images_dir().display()
        );
    }
    Ok(bin)
}

/// Copies `from` to `to` through a temporary name, so `to` is never half written.
fn install(from: &Path, to: &Path) -> anyhow::Result<()> {
    let dir = to.parent().context("no parent folder")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.partial",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("bin")
    ));
    std::fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    Ok(())
}
