//! OCI image archives made by hand, with tar, sha256sum, gzip and JSON: nothing can be pulled
//! on this machine, and no image builder is needed. An archive is an OCI image layout in a tar
//! file (`oci-layout`, `index.json`, `blobs/sha256/...`) holding one image of one layer, with
//! `io.containerd.image.name` set so that `ctr images import` names it. Layers are
//! reproducible (sorted, mtime 0, numeric owners), so the same files give the same digest and a
//! re-import changes nothing.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

use crate::cmd::{self, exec};

/// The image: what the config and the layer say.
pub struct Image<'a> {
    /// `name:tag`, the name `ctr images import` gives it.
    pub reference: &'a str,
    pub entrypoint: Value,
    pub cmd: Value,
    /// `uid:gid` the container runs as (unset: root, the runtime's default).
    pub user: Option<&'a str>,
    /// Config labels (and manifest annotations).
    pub labels: &'a [(&'a str, String)],
    /// A gzip layer (`tar+gzip`), else an uncompressed one.
    pub gzip: bool,
    /// Every entry owned by 0:0 whoever made the files, else their own numeric owners and
    /// extended attributes (a debootstrap root file system).
    pub root_owned: bool,
    /// The history entry's `created_by`.
    pub created_by: &'a str,
}

/// What [`write`] made.
#[derive(Debug)]
pub struct Written {
    /// `sha256:...` of the manifest: what containerd lists for the image.
    pub manifest_digest: String,
    /// The layer as a tar, uncompressed.
    pub layer_tar_size: u64,
    /// The layer blob (gzip when asked).
    pub layer_blob_size: u64,
    /// The archive file.
    pub archive_size: u64,
}

/// Writes `out`: `rootfs` as the image's only layer, `image` as its config.
pub fn write(rootfs: &Path, image: &Image<'_>, out: &Path) -> anyhow::Result<Written> {
    let parent = out.parent().context("no parent folder")?;
    std::fs::create_dir_all(parent)?;
    let w = tempfile::Builder::new().prefix(".oci").tempdir_in(parent)?;
    let blobs = w.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer = w.path().join("layer.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(rootfs)
        .args(["--sort=name", "--mtime=@0", "--numeric-owner"]);
    if image.root_owned {
        tar.args(["--owner=0", "--group=0"]);
    } else {
        tar.arg("--xattrs");
    }
    exec(tar.arg("-cf").arg(&layer).arg("."))?;
    let (diff_id, layer_tar_size) = digest(&layer)?;
    let (layer_digest, layer_blob_size, media_type) = if image.gzip {
        let gz = w.path().join("layer.tar.gz");
        gzip(&layer, &gz)?;
        std::fs::remove_file(&layer)?;
        let (d, size) = digest(&gz)?;
        std::fs::rename(&gz, blobs.join(&d))?;
        (d, size, "application/vnd.oci.image.layer.v1.tar+gzip")
    } else {
        std::fs::rename(&layer, blobs.join(&diff_id))?;
        (
            diff_id.clone(),
            layer_tar_size,
            "application/vnd.oci.image.layer.v1.tar",
        )
    };
    let mut config = Map::new();
    config.insert("Entrypoint".into(), image.entrypoint.clone());
    config.insert("Cmd".into(), image.cmd.clone());
    config.insert(
        "Env".into(),
        json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
    );
    config.insert("WorkingDir".into(), json!("/"));
    if let Some(user) = image.user {
        config.insert("User".into(), json!(user));
    }
    let labels: Map<String, Value> = image
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    if !labels.is_empty() {
        config.insert("Labels".into(), Value::Object(labels.clone()));
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": image.created_by}]
    });
    let (config_digest, config_size) = blob(&blobs, &config)?;
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_size
        },
        "layers": [{
            "mediaType": media_type,
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_blob_size
        }]
    });
    if !labels.is_empty() {
        manifest["annotations"] = Value::Object(labels);
    }
    let (manifest_digest, manifest_size) = blob(&blobs, &manifest)?;
    let tag = image
        .reference
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": image.reference,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    });
    std::fs::write(w.path().join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        w.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let tmp = parent.join(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("image")
    ));
    exec(
        Command::new("tar")
            .arg("-C")
            .arg(w.path())
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
            ])
            .arg(&tmp)
            .args(["oci-layout", "index.json", "blobs"]),
    )?;
    std::fs::rename(&tmp, out)?;
    Ok(Written {
        manifest_digest: format!("sha256:{manifest_digest}"),
        layer_tar_size,
        layer_blob_size,
        archive_size: std::fs::metadata(out)?.len(),
    })
}

/// `gzip -n -9`: no name or time in the header, so the same tar gives the same blob.
fn gzip(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let status = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .arg(from)
        .stdout(out)
        .stderr(Stdio::inherit())
        .status()
        .context("cannot run gzip")?;
    if !status.success() {
        bail!("gzip {} failed ({status})", from.display());
    }
    Ok(())
}

/// sha256 (hex) and size of a file.
pub fn digest(path: &Path) -> anyhow::Result<(String, u64)> {
    let out = cmd::output(Command::new("sha256sum").arg(path))?;
    let hex = out
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .with_context(|| format!("sha256sum of {}: {out}", path.display()))?
        .to_owned();
    Ok((hex, std::fs::metadata(path)?.len()))
}

/// Writes `value` (compact JSON) as a blob; its digest and size.
fn blob(blobs: &Path, value: &Value) -> anyhow::Result<(String, u64)> {
    let tmp = blobs.join("tmp.json");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    let (hex, size) = digest(&tmp)?;
    std::fs::rename(&tmp, blobs.join(&hex))?;
    Ok((hex, size))
}
