//! `cargo xtask image [--import | --no-import] [--no-build] [--profile dev] [--print]`: the
//! project's container images, built by hand as OCI archives (no registry, no docker) into
//! `target/images`, and imported into the node's containerd.
//!
//! - `ghcr.io/connectors-io/connectors-agent:<version>` and
//!   `ghcr.io/connectors-io/connectors-controller:<version>` (the workspace version; the names
//!   `deploy/` uses), from `cargo build --release -p connectors-agent -p connectors-controller`
//!   (`--profile dev` packs the debug build instead: seconds rather than a release build, for
//!   quick iterations; what ships is the release build).
//! - From scratch, one gzip layer: the binary at `/usr/local/bin/<name>` (debug info stripped,
//!   symbols kept for backtraces), exactly the shared libraries `ldd` names and the dynamic
//!   loader at the paths `ldd` gives, the host's Debian CA bundle at
//!   `/etc/ssl/certs/ca-certificates.crt` (the binaries read the system roots with
//!   rustls-native-certs), `/etc/passwd` and `/etc/group` (root, and nonroot 65532),
//!   `/etc/nsswitch.conf` (files, then DNS: glibc's resolver reads it), `/root` (0700) and an
//!   empty `/tmp` (1777). Entrypoint: the binary. The controller's config runs it as
//!   `65532:65532`; the agent runs as root (CAP_BPF, CAP_NET_ADMIN for its eBPF redirect).
//!   Labels `org.opencontainers.image.source`, `.version`, `.title`, `.licenses`.
//! - The layers are reproducible (sorted, mtime 0, owner 0:0, `gzip -n`): the same binaries
//!   give the same digests, so an import of an unchanged image is a no-op.
//! - Import (`--import`; the default when the node runs, per `cargo xtask node status`):
//!   `connectors_tests::node::import_project_images`, the function the tests call too, which
//!   runs `ctr -n k8s.io images import` on the node's containerd socket; a new build under the
//!   same tag replaces the previous image. Pods then run them with
//!   `imagePullPolicy: IfNotPresent`. On a node shared with running tests, the replacement is
//!   what their next pods get: `--no-import` leaves the node alone.
//! - `--no-build`: import the archives there are, without building (after `stop --wipe`).
//! - `--print`: the references and archive paths as `NAME=value` lines (shell-sourceable),
//!   building nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use connectors_tests::node::{
    self, IMAGE_REPOSITORY, IMAGE_VERSION, PROJECT_IMAGES, ProjectImage, project_images_dir,
    target_dir,
};
use serde_json::json;

use crate::cmd::{cargo, exec};
use crate::oci;

/// Debian packages the image build needs: `strip` and the CA bundle it copies.
pub const PACKAGES: &[&str] = &["binutils", "ca-certificates"];

/// The host's CA bundle (Debian's `ca-certificates`), copied into the images.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the project's sources are published (the `source` label).
const SOURCE: &str = "https://github.com/connectors-io/connectors";
const LICENSE: &str = "Apache-2.0";

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nhosts: files dns\n";

#[derive(Args)]
pub struct ImageArgs {
    /// Import the images into the node's containerd (default: when the node runs).
    #[arg(long, conflicts_with = "no_import")]
    import: bool,
    /// Do not import, even when the node runs.
    #[arg(long)]
    no_import: bool,
    /// Print the image references and archive paths (NAME=value lines); build nothing.
    #[arg(long, conflicts_with_all = ["import", "no_import", "no_build"])]
    print: bool,
    /// Do not build: import the archives target/images has (e.g. into a wiped node).
    #[arg(long, conflicts_with = "no_import")]
    no_build: bool,
    /// The cargo profile of the binaries: `release` (what ships) or `dev`.
    #[arg(long, default_value = "release", value_parser = ["release", "dev"])]
    profile: String,
    /// The node's state folder (default: $CONNECTORS_KUBE_NODE_DIR, else /tmp/kube-node).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    if args.print {
        print!("{}", refs());
        return Ok(());
    }
    let dir = args.dir.clone().unwrap_or_else(node::default_dir);
    let running = node::status(&dir).all_running();
    let import = args.import || (running && !args.no_import);
    if args.import && !running {
        bail!(
            "--import: the node in {} is not running: start it with `cargo xtask node start`",
            dir.display()
        );
    }
    if !args.no_build {
        build(&args.profile)?;
    }
    if import {
        self::import(&dir)?;
    } else {
        eprintln!(
            "image: not imported ({}); `cargo xtask image --import` imports them into a running node",
            if running {
                "--no-import"
            } else {
                "the node is not running"
            }
        );
    }
    Ok(())
}

/// `NAME=value` lines: each image's reference and archive, and the version.
pub fn refs() -> String {
    let mut out = format!("IMAGE_VERSION={IMAGE_VERSION}\nIMAGE_REPOSITORY={IMAGE_REPOSITORY}\n");
    for image in &PROJECT_IMAGES {
        let var = var_name(image);
        out.push_str(&format!("{var}_IMAGE={}\n", image.reference));
        out.push_str(&format!("{var}_ARCHIVE={}\n", image.archive().display()));
    }
    out
}

/// `connectors-agent` -> `AGENT`.
fn var_name(image: &ProjectImage) -> String {
    image
        .binary
        .trim_start_matches("connectors-")
        .replace('-', "_")
        .to_uppercase()
}

/// Builds the binaries with cargo profile `profile` (`release` or `dev`), then both archives.
pub fn build(profile: &str) -> anyhow::Result<()> {
    crate::setup::apt(PACKAGES)?;
    let t = Instant::now();
    let mut build = cargo();
    build.args(["build", "--profile", profile]);
    for image in &PROJECT_IMAGES {
        build.args(["-p", image.binary]);
    }
    exec(&mut build)?;
    eprintln!(
        "image: {profile} build took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // The dev profile's folder is `debug`.
    let bins = target_dir().join(if profile == "dev" { "debug" } else { profile });
    let out = project_images_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for image in &PROJECT_IMAGES {
        let t = Instant::now();
        let written = build_one(image, &bins.join(image.binary), &out)?;
        eprintln!(
            "image: {} -> {} in {:.1} s: archive {}, layer {} (tar {}), binary {} stripped; {}",
            image.reference,
            image.archive().display(),
            t.elapsed().as_secs_f64(),
            mb(written.archive_size),
            mb(written.layer_blob_size),
            mb(written.layer_tar_size),
            mb(written.binary_size),
            written.manifest_digest,
        );
    }
    Ok(())
}

/// Imports both archives into the node in `dir` and says what changed.
pub fn import(dir: &Path) -> anyhow::Result<()> {
    let node = node::KubeNode::at(dir).map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    for i in node.import_images().map_err(anyhow::Error::msg)? {
        let what = match (&i.previous, i.imported) {
            (_, false) => "unchanged".to_owned(),
            (None, true) => "imported".to_owned(),
            (Some(p), true) => format!("imported, replacing {p}"),
        };
        eprintln!(
            "image: {} {what} ({}, {:.1} s)",
            i.reference,
            i.digest,
            i.took.as_secs_f64()
        );
    }
    eprintln!(
        "image: import done in {:.1} s (containerd {}, namespace k8s.io)",
        t.elapsed().as_secs_f64(),
        node.paths.containerd_socket().display()
    );
    Ok(())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

struct Built {
    manifest_digest: String,
    archive_size: u64,
    layer_blob_size: u64,
    layer_tar_size: u64,
    binary_size: u64,
}

fn build_one(image: &ProjectImage, binary: &Path, out: &Path) -> anyhow::Result<Built> {
    if !binary.is_file() {
        bail!("{} is missing after the build", binary.display());
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}-rootfs", image.binary))
        .tempdir_in(out)?;
    let root = staging.path();
    set_mode(root, 0o755)?;
    for (d, mode) in [
        ("etc", 0o755),
        ("etc/ssl", 0o755),
        ("etc/ssl/certs", 0o755),
        ("usr", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
    ] {
        std::fs::create_dir(root.join(d)).with_context(|| format!("creating /{d}"))?;
        set_mode(&root.join(d), mode)?;
    }
    let bin = root.join("usr/local/bin").join(image.binary);
    exec(
        Command::new("strip")
            .args(["--strip-debug", "-o"])
            .arg(&bin)
            .arg(binary),
    )?;
    set_mode(&bin, 0o755)?;
    let binary_size = std::fs::metadata(&bin)?.len();
    for lib in shared_libraries(binary)? {
        let rel = lib
            .strip_prefix("/")
            .with_context(|| format!("ldd gave a relative path {}", lib.display()))?;
        let to = root.join(rel);
        if let Some(parent) = to.parent() {
            mkdirs(root, parent)?;
        }
        // The file itself, not the symlink chain Debian has (/lib64 -> usr/lib64 ...).
        std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
        set_mode(&to, 0o755)?;
    }
    if !Path::new(CA_BUNDLE).is_file() {
        bail!("{CA_BUNDLE} is missing: run `cargo xtask setup` (it installs ca-certificates)");
    }
    std::fs::copy(CA_BUNDLE, root.join(CA_BUNDLE.trim_start_matches('/')))?;
    for (path, text) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/nsswitch.conf", NSSWITCH),
    ] {
        std::fs::write(root.join(path), text)?;
    }
    for f in [
        "etc/passwd",
        "etc/group",
        "etc/nsswitch.conf",
        CA_BUNDLE.trim_start_matches('/'),
    ] {
        set_mode(&root.join(f), 0o644)?;
    }
    let user = format!("{0}:{0}", image.uid);
    let labels = [
        ("org.opencontainers.image.source", SOURCE.to_owned()),
        ("org.opencontainers.image.version", IMAGE_VERSION.to_owned()),
        ("org.opencontainers.image.title", image.binary.to_owned()),
        ("org.opencontainers.image.licenses", LICENSE.to_owned()),
    ];
    let written = oci::write(
        root,
        &oci::Image {
            reference: image.reference,
            entrypoint: json!([format!("/usr/local/bin/{}", image.binary)]),
            cmd: serde_json::Value::Null,
            user: Some(&user),
            labels: &labels,
            gzip: true,
            root_owned: true,
            created_by: "cargo xtask image",
        },
        &image.archive(),
    )?;
    Ok(Built {
        manifest_digest: written.manifest_digest,
        archive_size: written.archive_size,
        layer_blob_size: written.layer_blob_size,
        layer_tar_size: written.layer_tar_size,
        binary_size,
    })
}

/// The shared libraries and the loader `ldd` names for `binary` (absolute paths; the vDSO,
/// which is no file, left out). Fails when one is not found.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: "not a dynamic executable", nothing to copy.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)` give paths; `linux-vdso.so.1 (0x...)` gives none; `=> not found` fails.
fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} is not found", name.trim());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `mkdir -p` below `root`, each new folder 0755.
fn mkdirs(root: &Path, dir: &Path) -> anyhow::Result<()> {
    let rel = dir.strip_prefix(root).context("outside the root")?;
    let mut p = root.to_path_buf();
    for part in rel.components() {
        p.push(part);
        if !p.is_dir() {
            std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
            set_mode(&p, 0o755)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f7b)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7a)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f7c)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn print_names_both_images() {
        let r = refs();
        assert!(r.contains("AGENT_IMAGE=ghcr.io/connectors-io/connectors-agent:"));
        assert!(r.contains("CONTROLLER_IMAGE=ghcr.io/connectors-io/connectors-controller:"));
        assert!(r.contains("CONTROLLER_ARCHIVE=/"));
    }
}
