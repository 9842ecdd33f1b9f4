//! OCI images written by hand (nothing can be pulled here): an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/...`) of gzip layers of random bytes, and the
//! image clients (`skopeo`, `buildah`) set up with no credentials and a chosen CA only.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::process::{require_tool, run_ok};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// A blob of a layout: `sha256:...` and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// An image written into a layout.
#[derive(Clone, Debug)]
pub struct Image {
    pub tag: String,
    pub manifest: Blob,
    /// The manifest's bytes as written (registries must hand them back unchanged).
    pub manifest_bytes: Vec<u8>,
    pub layers: Vec<Blob>,
}

/// An OCI image layout folder.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// An empty layout at `dir` (created).
    pub fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout folder");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        std::fs::write(
            dir.join("index.json"),
            json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": []}).to_string(),
        )
        .expect("index.json");
        Self {
            dir: dir.to_owned(),
        }
    }

    /// `oci:<dir>:<tag>`, for skopeo.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    /// Writes an image `tag` with one layer per entry of `layer_bytes` (a file of that many
    /// random bytes each, tarred and gzipped), `platform` in its config.
    pub fn add_image(&self, tag: &str, layer_bytes: &[u64], arch: &str) -> Image {
        let (manifest, bytes, layers) = self.write_manifest(layer_bytes, arch);
        self.add_to_index(json!({
            "mediaType": MANIFEST_TYPE,
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        Image {
            tag: tag.to_owned(),
            manifest,
            manifest_bytes: bytes,
            layers,
        }
    }

    /// Writes an image index `tag` of one small image per architecture in `arches`.
    pub fn add_index(&self, tag: &str, arches: &[&str]) -> Image {
        let mut manifests = Vec::new();
        let mut layers = Vec::new();
        for arch in arches {
            let (m, _, l) = self.write_manifest(&[4096], arch);
            manifests.push(json!({
                "mediaType": MANIFEST_TYPE,
                "digest": m.digest,
                "size": m.size,
                "platform": {"architecture": arch, "os": "linux"},
            }));
            layers.extend(l);
        }
        let index = json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests});
        let bytes = serde_json::to_vec_pretty(&index).expect("index JSON");
        let blob = self.write_blob(&bytes);
        self.add_to_index(json!({
            "mediaType": INDEX_TYPE,
            "digest": blob.digest,
            "size": blob.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        Image {
            tag: tag.to_owned(),
            manifest: blob,
            manifest_bytes: bytes,
            layers,
        }
    }

    /// Whether the layout holds this blob, with its content matching its digest.
    pub fn holds(&self, blob: &Blob) -> bool {
        let path = self.blob_path(&blob.digest);
        path.is_file() && sha256_file(&path) == blob.digest
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn write_manifest(&self, layer_bytes: &[u64], arch: &str) -> (Blob, Vec<u8>, Vec<Blob>) {
        for tool in ["tar", "gzip", "head"] {
            require_tool(tool);
        }
        let work = tempfile::tempdir_in(&self.dir).expect("work folder");
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, n) in layer_bytes.iter().enumerate() {
            let files = work.path().join(format!("files-{i}"));
            std::fs::create_dir_all(&files).expect("mkdir");
            run_ok(Command::new("sh").arg("-c").arg(format!(
                "head -c {n} /dev/urandom > '{}'",
                files.join(format!("data-{i}.bin")).display()
            )));
            let tar = work.path().join(format!("layer-{i}.tar"));
            run_ok(
                Command::new("tar")
                    .args([
                        "--sort=name",
                        "--mtime=@0",
                        "--owner=0",
                        "--group=0",
                        "--numeric-owner",
                        "-C",
                    ])
                    .arg(&files)
                    .arg("-cf")
                    .arg(&tar)
                    .arg("."),
            );
            diff_ids.push(sha256_file(&tar));
            run_ok(Command::new("gzip").args(["-1", "-n"]).arg(&tar));
            let gz = work.path().join(format!("layer-{i}.tar.gz"));
            let blob = Blob {
                digest: sha256_file(&gz),
                size: std::fs::metadata(&gz).expect("layer").len(),
            };
            std::fs::rename(&gz, self.blob_path(&blob.digest)).expect("move layer");
            layers.push(blob);
        }
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layer_bytes.iter().map(|n| json!({"created_by": format!("{n} random bytes")})).collect::<Vec<_>>(),
        });
        let config = self.write_blob(&serde_json::to_vec(&config).expect("config JSON"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|l| json!({"mediaType": LAYER_TYPE, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest JSON");
        let blob = self.write_blob(&bytes);
        (blob, bytes, layers)
    }

    fn write_blob(&self, bytes: &[u8]) -> Blob {
        let digest = format!(
            "sha256:{}",
            hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
        );
        std::fs::write(self.blob_path(&digest), bytes).expect("blob");
        Blob {
            digest,
            size: bytes.len() as u64,
        }
    }

    fn add_to_index(&self, entry: Value) {
        let path = self.dir.join("index.json");
        let mut index: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("index.json")).expect("JSON");
        if let Some(list) = index["manifests"].as_array_mut() {
            list.push(entry);
        }
        std::fs::write(&path, index.to_string()).expect("index.json");
    }
}

/// `sha256:<hex>` of a file.
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    format!("sha256:{}", hex(ctx.finish().as_ref()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What an image client gets: a home of its own with no credentials anywhere, a policy that
/// accepts any image, and one CA it trusts (the agent's, or the registry's for a direct call).
pub struct ImageClient {
    dir: tempfile::TempDir,
    /// `HTTPS_PROXY` to set, if any.
    pub proxy: Option<String>,
}

impl ImageClient {
    pub fn new(trusted_ca: &Path, proxy: Option<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("image-client")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for sub in ["home", "certs", "empty-certs", "run"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        std::fs::copy(trusted_ca, d.join("certs/ca.crt")).expect("CA");
        std::fs::write(d.join("auth.json"), "{\"auths\":{}}").expect("auth.json");
        std::fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("policy.json");
        std::fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .expect("registries.conf");
        Self { dir, proxy }
    }

    /// The folder holding only the trusted CA (`ca.crt`).
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn env(&self, c: &mut Command) {
        let d = self.dir.path();
        for k in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "NO_PROXY",
            "no_proxy",
            "ALL_PROXY",
            "all_proxy",
            "DOCKER_CONFIG",
        ] {
            c.env_remove(k);
        }
        c.env("HOME", d.join("home"))
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .env("XDG_CONFIG_HOME", d.join("home"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            // Go reads its roots from here: the one CA, nothing else.
            .env("SSL_CERT_FILE", d.join("certs/ca.crt"))
            .env("SSL_CERT_DIR", d.join("empty-certs"));
        if let Some(p) = &self.proxy {
            c.env("HTTPS_PROXY", p).env("https_proxy", p);
        }
    }

    /// `skopeo copy SRC DEST` with no credentials and the one CA.
    pub fn copy(&self, src: &str, dest: &str, extra: &[&str]) -> Command {
        self.copy_as(src, dest, None, extra)
    }

    /// `skopeo copy SRC DEST` with `user:password` for both ends (`None`: no credentials), and
    /// the one CA: what a client given the credentials runs.
    pub fn copy_as(&self, src: &str, dest: &str, login: Option<&str>, extra: &[&str]) -> Command {
        require_tool("skopeo");
        let d = self.dir.path();
        let mut c = Command::new("skopeo");
        self.env(&mut c);
        c.arg("--policy").arg(d.join("policy.json")).arg("copy");
        match login {
            Some(l) => c.args(["--src-creds", l, "--dest-creds", l]),
            None => c.args(["--src-no-creds", "--dest-no-creds"]),
        };
        c.arg("--src-cert-dir")
            .arg(self.cert_dir())
            .arg("--dest-cert-dir")
            .arg(self.cert_dir())
            .args(extra)
            .arg(src)
            .arg(dest);
        c
    }

    /// `skopeo inspect [--raw] REF` with no credentials and the one CA.
    pub fn inspect(&self, reference: &str, raw: bool) -> Command {
        require_tool("skopeo");
        let mut c = Command::new("skopeo");
        self.env(&mut c);
        c.arg("inspect")
            .arg("--no-creds")
            .arg("--cert-dir")
            .arg(self.cert_dir());
        if raw {
            c.arg("--raw");
        }
        c.arg(reference);
        c
    }

    /// `buildah ARGS`, with its own storage (vfs) under this client's folder.
    pub fn buildah(&self, args: &[&str]) -> Command {
        require_tool("buildah");
        let d = self.dir.path();
        let mut c = Command::new("buildah");
        self.env(&mut c);
        c.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run/storage"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    }

    /// Flags buildah's pull and push take: the policy, no credentials file, the one CA.
    pub fn buildah_flags(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "--signature-policy".into(),
            d.join("policy.json").display().to_string(),
            "--authfile".into(),
            d.join("auth.json").display().to_string(),
            "--cert-dir".into(),
            self.cert_dir().display().to_string(),
        ]
    }
}
