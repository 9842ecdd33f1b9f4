//! The project's own images on the node: `connectors-agent` and `connectors-controller`, built
//! by `cargo xtask image` as OCI archives in `target/images` (from scratch: the release binary,
//! the shared libraries `ldd` names, the CA bundle, `/etc/passwd` and `/etc/group`, `/tmp`), and
//! imported here into the node's containerd (namespace `k8s.io`, so CRI and the kubelet see
//! them). Pods use them with `imagePullPolicy: IfNotPresent` (or `Never`): nothing is pulled.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::host::run;
use super::start::ctr;
use super::{KubeNode, Paths};

/// The workspace version, the images' tag.
pub const IMAGE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the images are published (the names `deploy/` uses).
pub const IMAGE_REPOSITORY: &str = "ghcr.io/connectors-io";
/// The agent's image: runs as root (it loads eBPF programs: CAP_BPF, CAP_NET_ADMIN).
pub const AGENT_IMAGE: &str = concat!(
    "ghcr.io/connectors-io/connectors-agent:",
    env!("CARGO_PKG_VERSION")
);
/// The controller's image: runs as `nonroot` (65532:65532).
pub const CONTROLLER_IMAGE: &str = concat!(
    "ghcr.io/connectors-io/connectors-controller:",
    env!("CARGO_PKG_VERSION")
);

/// One of the project's images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjectImage {
    /// The binary (a workspace `[[bin]]`), at `/usr/local/bin/<binary>`: the entrypoint.
    pub binary: &'static str,
    /// The image reference, e.g. [`AGENT_IMAGE`].
    pub reference: &'static str,
    /// The uid and gid the image's config runs it as.
    pub uid: u32,
}

impl ProjectImage {
    /// The archive's file name in [`project_images_dir`].
    pub fn archive_name(&self) -> String {
        format!("{}.tar", self.binary)
    }

    /// The archive's path.
    pub fn archive(&self) -> PathBuf {
        project_images_dir().join(self.archive_name())
    }
}

/// The agent and the controller.
pub const PROJECT_IMAGES: [ProjectImage; 2] = [
    ProjectImage {
        binary: "connectors-agent",
        reference: AGENT_IMAGE,
        uid: 0,
    },
    ProjectImage {
        binary: "connectors-controller",
        reference: CONTROLLER_IMAGE,
        uid: 65532,
    },
];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` (relative to the workspace root when relative),
/// else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if PathBuf::from(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// Where `cargo xtask image` writes the archives: `$CONNECTORS_IMAGES_DIR`, else
/// `<target>/images`.
pub fn project_images_dir() -> PathBuf {
    std::env::var_os("CONNECTORS_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("images"))
}

/// What an import did for one image.
#[derive(Clone, Debug)]
pub struct ImportedImage {
    pub reference: &'static str,
    /// The manifest digest (`sha256:...`) containerd now has under the reference.
    pub digest: String,
    /// The digest it had before, when it had one.
    pub previous: Option<String>,
    /// False when containerd had this very digest already (nothing was done).
    pub imported: bool,
    pub took: Duration,
}

impl KubeNode {
    /// Imports the project's images ([`PROJECT_IMAGES`], from [`project_images_dir`]) into the
    /// node's containerd, as `cargo xtask image --import` does: an image whose digest containerd
    /// has already is left alone, another one under the same reference replaces it. Fails,
    /// naming `cargo xtask image`, when an archive is missing.
    pub fn import_images(&self) -> Result<Vec<ImportedImage>, String> {
        import_project_images(&self.paths)
    }
}

/// [`KubeNode::import_images`] as a function.
pub fn import_images(node: &KubeNode) -> Result<Vec<ImportedImage>, String> {
    import_project_images(&node.paths)
}

/// [`KubeNode::import_images`] for the node whose state folder is `paths`.
pub fn import_project_images(paths: &Paths) -> Result<Vec<ImportedImage>, String> {
    let missing: Vec<String> = PROJECT_IMAGES
        .iter()
        .map(ProjectImage::archive)
        .filter(|a| !a.is_file())
        .map(|a| a.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the project's images are not built ({} missing): run `cargo xtask image` (after `cargo xtask setup`)",
            missing.join(", ")
        ));
    }
    PROJECT_IMAGES
        .iter()
        .map(|image| import_one(paths, image))
        .collect()
}

fn import_one(paths: &Paths, image: &ProjectImage) -> Result<ImportedImage, String> {
    let t = Instant::now();
    let archive = image.archive();
    let digest = archive_digest(&archive, image.reference)?;
    let previous = image_digest(paths, image.reference)?;
    if previous.as_deref() == Some(digest.as_str()) {
        return Ok(ImportedImage {
            reference: image.reference,
            digest,
            previous,
            imported: false,
            took: t.elapsed(),
        });
    }
    ctr(
        paths,
        &[
            "images",
            "import",
            "--all-platforms",
            &archive.display().to_string(),
        ],
    )?;
    let now = image_digest(paths, image.reference)?;
    if now.as_deref() != Some(digest.as_str()) {
        return Err(format!(
            "after importing {}, containerd has {} as {now:?}, not {digest}",
            archive.display(),
            image.reference
        ));
    }
    Ok(ImportedImage {
        reference: image.reference,
        digest,
        previous,
        imported: true,
        took: t.elapsed(),
    })
}

/// The manifest digest an archive's `index.json` gives `reference`.
pub fn archive_digest(archive: &std::path::Path, reference: &str) -> Result<String, String> {
    let index = run(Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("index.json"))?;
    let index: serde_json::Value = serde_json::from_str(&index)
        .map_err(|e| format!("{}: index.json: {e}", archive.display()))?;
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["io.containerd.image.name"] == reference)
        .and_then(|m| m["digest"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} does not hold {reference}", archive.display()))
}

/// The digest containerd has under `reference`, if any.
pub fn image_digest(paths: &Paths, reference: &str) -> Result<Option<String>, String> {
    // REF  TYPE  DIGEST  SIZE  PLATFORMS  LABELS
    let list = ctr(paths, &["images", "ls", &format!("name=={reference}")])?;
    Ok(list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&reference))
        .and_then(|f| f.get(2).map(|d| (*d).to_owned())))
}
