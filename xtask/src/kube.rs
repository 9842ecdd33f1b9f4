//! `cargo xtask kube build|start|stop`: a real Kubernetes API server for the controller's tests
//! and for trying the controller by hand.
//!
//! `build` makes kube-apiserver v1.20.2 once from Debian's `kubernetes` source package, offline,
//! and caches it (`~/.cache/kube-test/kube-apiserver-v1.20.2`, about 4-5 minutes on 2 cores and
//! 2.5 GB of memory). Three fixes make that source work with Debian's Go 1.19:
//! 1. Kubernetes' own `make WHAT=cmd/kube-apiserver`, in GOPATH mode (`GO111MODULE=off`): module
//!    mode fails ("updates to go.mod needed, disabled by -mod=vendor").
//! 2. The vendored `modern-go/reflect2` 1.0.1 crashes under Go >= 1.18 on the first custom object
//!    (json-iterator map encoding); Debian's 1.0.2 (`golang-github-modern-go-reflect2-dev`)
//!    replaces it.
//! 3. The vendored kube-openapi validator treats every `""` as null under Go >= 1.16, so a custom
//!    resource with an empty string field (a condition's empty message) is refused with 422
//!    `must be of type string: "null"`; one line is patched as upstream did for Kubernetes 1.21.
//!
//! The source preparation ([`prepare_source`]) and [`make`] are shared with `cargo xtask node
//! build`, which makes this binary too (with kubelet, controller-manager and scheduler, in one
//! `make`); each build reuses the other's kube-apiserver.
//!
//! `start` runs etcd and the server detached on free loopback ports (the same code the tests
//! use) and prints the admin kubeconfig; `stop` stops them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use connectors_tests::kube::{self, APISERVER_VERSION, KubeApiServer, Lifetime};

use crate::cmd::{self, exec};
use crate::setup;

/// Debian packages the build needs.
pub const BUILD_PACKAGES: &[&str] = &[
    "golang-go",
    "dpkg-dev",
    "rsync",
    "golang-github-modern-go-reflect2-dev",
];

/// Debian packages running the server and driving it need.
pub const RUN_PACKAGES: &[&str] = &["etcd-server", "curl"];

const REFLECT2: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
const OPENAPI_TYPE_GO: &str = "vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go";
const OPENAPI_NULL_CHECK: &str = "\tif data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {";
const OPENAPI_NULL_FIXED: &str = "\tif data == nil {";

#[derive(Args)]
pub struct KubeArgs {
    #[command(subcommand)]
    what: KubeCommand,
}

#[derive(Subcommand)]
enum KubeCommand {
    /// Build kube-apiserver from Debian's source package, unless it is cached.
    Build {
        /// Build even if the cached binary works.
        #[arg(long)]
        force: bool,
        /// Where to put the binary (default: the cache the tests read).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start etcd and kube-apiserver in the background; prints the admin kubeconfig.
    Start {
        /// Folder for data, certificates, logs and pid files.
        #[arg(long, default_value = "/tmp/connectors-kube")]
        dir: PathBuf,
        /// Also install deploy/ (CRDs, RBAC, classes) and write a kubeconfig with a token of
        /// the controller's ServiceAccount.
        #[arg(long)]
        install: bool,
    },
    /// Stop what `start` started.
    Stop {
        #[arg(long, default_value = "/tmp/connectors-kube")]
        dir: PathBuf,
        /// Also delete the folder (etcd data included).
        #[arg(long)]
        wipe: bool,
    },
}

pub fn run(args: &KubeArgs) -> anyhow::Result<()> {
    match &args.what {
        KubeCommand::Build { force, out } => {
            let bin = build(*force, out.clone())?;
            println!("{}", bin.display());
            Ok(())
        }
        KubeCommand::Start { dir, install } => start(dir, *install),
        KubeCommand::Stop { dir, wipe } => {
            let stopped = kube::stop_detached(dir);
            if stopped.is_empty() {
                eprintln!("nothing running in {}", dir.display());
            } else {
                eprintln!("stopped {}", stopped.join(", "));
            }
            if *wipe && dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            Ok(())
        }
    }
}

fn start(dir: &Path, install: bool) -> anyhow::Result<()> {
    if dir.join("run/apiserver.pid").exists() || dir.join("run/etcd.pid").exists() {
        let stopped = kube::stop_detached(dir);
        if !stopped.is_empty() {
            eprintln!("stopped a previous run: {}", stopped.join(", "));
        }
    }
    std::fs::create_dir_all(dir)?;
    let server = KubeApiServer::try_start(dir, Lifetime::Detached).map_err(anyhow::Error::msg)?;
    eprintln!(
        "kube-apiserver {APISERVER_VERSION} at {} (logs in {}/run)",
        server.url,
        dir.display()
    );
    if install {
        let kubeconfig = connectors_tests::controller::install(&server);
        eprintln!(
            "deploy/ installed; the controller's ServiceAccount kubeconfig: {}",
            kubeconfig.display()
        );
    }
    eprintln!("stop with: cargo xtask kube stop --dir {}", dir.display());
    println!("export KUBECONFIG={}", server.admin_kubeconfig.display());
    Ok(())
}

/// Whether `bin` is a working Kubernetes binary of the expected version (the four server
/// binaries all print `Kubernetes v1.20.2` for `--version`).
pub fn works(bin: &Path) -> bool {
    bin.is_file()
        && cmd::output(Command::new(bin).arg("--version"))
            .is_ok_and(|v| v.contains(APISERVER_VERSION))
}

/// Builds kube-apiserver into `out` (default: the cache), unless a working one is there.
pub fn build(force: bool, out: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = out.unwrap_or_else(kube::apiserver_binary);
    if !force && works(&bin) {
        eprintln!(
            "kube-apiserver {APISERVER_VERSION}: {} (cached)",
            bin.display()
        );
        return Ok(bin);
    }
    // `cargo xtask node build` makes the same binary from the same source: reuse it.
    let node_bin = connectors_tests::node::bin_dir().join("kube-apiserver");
    if !force && works(&node_bin) {
        if let Some(dir) = bin.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&node_bin, &bin)
            .with_context(|| format!("copying {} to {}", node_bin.display(), bin.display()))?;
        eprintln!(
            "kube-apiserver {APISERVER_VERSION}: {} (from {})",
            bin.display(),
            node_bin.display()
        );
        return Ok(bin);
    }
    if !cmd::is_root() {
        bail!(
            "kube-apiserver is not built yet ({}), and building it needs root (apt-get source and packages): run `sudo cargo xtask kube build`",
            bin.display()
        );
    }
    eprintln!(
        "building kube-apiserver {APISERVER_VERSION} from Debian's source package (about 5 minutes, 2.5 GB of memory)"
    );
    let cache = bin
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&cache)?;
    let work = tempfile::Builder::new()
        .prefix("kube-apiserver-build")
        .tempdir_in(&cache)
        .context("creating the build folder")?;
    let src = prepare_source(work.path())?;
    make(&src, &["cmd/kube-apiserver"])?;

    let built = src.join("_output/bin/kube-apiserver");
    let tmp = cache.join(".kube-apiserver.partial");
    std::fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&tmp, &bin).with_context(|| format!("installing {}", bin.display()))?;
    drop(work);
    if !works(&bin) {
        bail!("the built {} does not run", bin.display());
    }
    eprintln!("kube-apiserver {APISERVER_VERSION}: {}", bin.display());
    Ok(bin)
}

/// The unpacked, patched `kubernetes` source tree in `work`: `apt-get source` (with deb-src
/// entries and the build packages added first) unless a tree prepared by an earlier, failed run
/// is there already, then fixes 2 and 3. Needs root.
pub fn prepare_source(work: &Path) -> anyhow::Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(work)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("kubernetes-1.20"))
            })
    };
    // Written once `apt-get source` has finished: a tree without it may be half unpacked.
    let marker = work.join(".source-complete");
    let src = match find() {
        Some(src) if marker.is_file() => {
            eprintln!("reusing the source tree {}", src.display());
            src
        }
        _ => {
            setup::apt(BUILD_PACKAGES)?;
            ensure_deb_src()?;
            if let Ok(dir) = std::fs::read_dir(work) {
                for e in dir.filter_map(Result::ok) {
                    let p = e.path();
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
            }
            std::fs::create_dir_all(work)?;
            exec(
                Command::new("apt-get")
                    .args(["source", "-qq", "kubernetes"])
                    .current_dir(work)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            let src = find().context("`apt-get source kubernetes` gave no kubernetes-1.20* folder (this needs Debian bookworm's sources)")?;
            std::fs::write(&marker, "")?;
            src
        }
    };
    if !Path::new(REFLECT2).join("go_above_118.go").is_file() {
        bail!(
            "{REFLECT2} lacks go_above_118.go: golang-github-modern-go-reflect2-dev 1.0.2 or newer is needed"
        );
    }
    swap_reflect2(&src)?;
    patch_openapi_validator(&src)?;
    Ok(src)
}

/// Kubernetes' own `make WHAT="..."` in GOPATH mode (fix 1), offline, stripped, at the lowest
/// CPU priority. One call runs the code generators once for all `targets`; Kubernetes' build
/// scripts link the server binaries statically and the kubelet with cgo, as upstream does.
pub fn make(src: &Path, targets: &[&str]) -> anyhow::Result<()> {
    exec(
        Command::new("nice")
            .args(["-n", "19", "make"])
            .arg(format!("WHAT={}", targets.join(" ")))
            .arg("GOLDFLAGS=-s -w")
            .current_dir(src)
            .env("GO111MODULE", "off")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env_remove("CGO_ENABLED"),
    )
}

/// `apt-get source` needs deb-src entries: adds them for the configured Debian mirror.
pub fn ensure_deb_src() -> anyhow::Result<()> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(Result::ok).map(|e| e.path()));
    }
    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter_map(|f| std::fs::read_to_string(&f).ok().map(|t| (f, t)))
        .collect();
    if let Some((path, text)) = deb_src_entries(&sources)? {
        std::fs::write(path, text).with_context(|| format!("writing {path}"))?;
        eprintln!("added source package entries: {path}");
    }
    crate::setup::apt_update()
}

/// The file to write (path, text) so that apt knows Debian's source packages, derived from the
/// binary entries in `sources`; None when deb-src entries exist already.
fn deb_src_entries(
    sources: &[(PathBuf, String)],
) -> anyhow::Result<Option<(&'static str, String)>> {
    let has_src = sources.iter().any(|(_, t)| {
        t.lines().any(|l| {
            let l = l.trim();
            l.starts_with("deb-src ")
                || (l.starts_with("Types:") && l.split_whitespace().any(|w| w == "deb-src"))
        })
    });
    if has_src {
        return Ok(None);
    }
    // deb822 (`*.sources`, Debian 12's default).
    let deb822: Vec<String> = sources
        .iter()
        .filter(|(f, t)| f.extension().is_some_and(|e| e == "sources") && t.contains("debian.org"))
        .map(|(_, t)| {
            t.lines()
                .map(|l| {
                    if l.trim() == "Types: deb" {
                        "Types: deb-src"
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    if !deb822.is_empty() {
        return Ok(Some((
            "/etc/apt/sources.list.d/connectors-debsrc.sources",
            deb822.join("\n\n") + "\n",
        )));
    }
    // One-line style (`sources.list`).
    let lines: Vec<String> = sources
        .iter()
        .flat_map(|(_, t)| t.lines())
        .filter(|l| l.trim_start().starts_with("deb ") && l.contains("debian"))
        .map(|l| l.trim_start().replacen("deb ", "deb-src ", 1))
        .collect();
    if lines.is_empty() {
        bail!("no Debian apt source found to derive a deb-src entry from");
    }
    Ok(Some((
        "/etc/apt/sources.list.d/connectors-debsrc.list",
        lines.join("\n") + "\n",
    )))
}

/// Fix 2: Debian's reflect2 in place of the vendored one.
fn swap_reflect2(src: &Path) -> anyhow::Result<()> {
    let vendored = src.join("vendor/github.com/modern-go/reflect2");
    if vendored.join("go_above_118.go").is_file() {
        return Ok(());
    }
    for entry in
        std::fs::read_dir(&vendored).with_context(|| format!("reading {}", vendored.display()))?
    {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "go" || e == "s") {
            std::fs::remove_file(&p)?;
        }
    }
    for entry in std::fs::read_dir(REFLECT2)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "go" || e == "s")
            && let Some(name) = p.file_name()
        {
            std::fs::copy(&p, vendored.join(name))?;
        }
    }
    eprintln!("swapped in Debian's modern-go/reflect2");
    Ok(())
}

/// Fix 3: only a real nil is null in the vendored kube-openapi validator.
fn patch_openapi_validator(src: &Path) -> anyhow::Result<()> {
    let path = src.join(OPENAPI_TYPE_GO);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if text.contains(OPENAPI_NULL_CHECK) {
        std::fs::write(&path, text.replace(OPENAPI_NULL_CHECK, OPENAPI_NULL_FIXED))?;
        eprintln!("patched {OPENAPI_TYPE_GO}");
    } else if !text.contains(OPENAPI_NULL_FIXED) {
        bail!("{OPENAPI_TYPE_GO} has neither the line to patch nor the fix: a different source?");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn derives_deb822_source_entries() {
        let sources = vec![(
            PathBuf::from("/etc/apt/sources.list.d/debian.sources"),
            DEB822.to_owned(),
        )];
        let (path, text) = deb_src_entries(&sources).unwrap().unwrap();
        assert!(path.ends_with(".sources"));
        assert_eq!(text.matches("Types: deb-src").count(), 2, "{text}");
        assert!(!text.contains("Types: deb\n"), "{text}");
        // Once there, nothing more.
        let again = vec![(PathBuf::from(path), text)];
        assert!(deb_src_entries(&again).unwrap().is_none());
    }

    #[test]
    fn derives_one_line_entries() {
        let sources = vec![(
            PathBuf::from("/etc/apt/sources.list"),
            "# comment\ndeb http://deb.debian.org/debian bookworm main\n".to_owned(),
        )];
        let (path, text) = deb_src_entries(&sources).unwrap().unwrap();
        assert!(path.ends_with(".list"));
        assert_eq!(text, "deb-src http://deb.debian.org/debian bookworm main\n");
        assert!(deb_src_entries(&[]).is_err());
    }
}
