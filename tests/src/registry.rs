//! A real OCI registry: Debian's `docker-registry` (distribution 2.8) over TLS from a test CA,
//! in token mode (tokens from a [`crate::token_issuer::TokenIssuer`]) or htpasswd mode (Basic).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::pki::TestCa;
use crate::process::{free_port, require_tool, run_ok, wait_until};

/// How the registry checks clients.
pub enum RegistryAuth<'a> {
    /// Bearer tokens from `realm`, for `service`, signed by the key in `root_cert`.
    Token {
        realm: String,
        service: &'a str,
        root_cert: &'a Path,
    },
    /// Basic, against these users (bcrypt htpasswd).
    Htpasswd(Vec<(&'a str, &'a str)>),
}

pub struct RegistryOptions<'a> {
    /// Listen address; default 127.0.0.1 on a free port.
    pub listen: Option<SocketAddr>,
    /// TLS with a certificate from this CA for these names.
    pub tls: (&'a TestCa, Vec<&'a str>),
    pub auth: RegistryAuth<'a>,
}

pub struct Registry {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    pub fn start(opts: RegistryOptions<'_>) -> Self {
        require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("registry")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let (cert, key) = opts.tls.0.server_cert(&opts.tls.1);
        std::fs::write(d.join("server.crt"), cert).expect("cert");
        std::fs::write(d.join("server.key"), key).expect("key");
        let addr = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        if opts.listen.is_some()
            && let Err(e) = std::net::TcpListener::bind(addr)
        {
            panic!("{addr} is taken ({e}): a registry of an earlier run may still hold it");
        }
        let auth = match &opts.auth {
            RegistryAuth::Token {
                realm,
                service,
                root_cert,
            } => format!(
                "  token:\n    realm: \"{realm}\"\n    service: \"{service}\"\n    issuer: \"{}\"\n    rootcertbundle: {}\n",
                crate::token_issuer::ISSUER,
                root_cert.display()
            ),
            RegistryAuth::Htpasswd(users) => {
                require_tool("htpasswd");
                let mut lines = String::new();
                for (u, p) in users {
                    lines.push_str(&run_ok(Command::new("htpasswd").args(["-nbB", u, p])));
                }
                std::fs::write(d.join("htpasswd"), lines.trim_end().to_owned() + "\n")
                    .expect("htpasswd");
                format!(
                    "  htpasswd:\n    realm: connectors-test\n    path: {}\n",
                    d.join("htpasswd").display()
                )
            }
        };
        let listen = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: \"{listen}\"\n  secret: connectors-test-secret\n  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\nauth:\n{auth}",
            data = d.join("data").display(),
            d = d.display(),
        );
        std::fs::write(d.join("config.yml"), config).expect("config.yml");
        let log = std::fs::File::create(d.join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .process_group(0)
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Self { addr, dir, child };
        let up = wait_until(Duration::from_secs(15), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "docker-registry did not start:\n{}", registry.log());
        registry
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://host:port` for a name that resolves (for the client) to this registry.
    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.addr.port())
    }

    /// `host:port`, as image references name a registry.
    pub fn reference_host(&self, host: &str) -> String {
        format!("{host}:{}", self.addr.port())
    }

    /// The registry's log (its access log included: method, URI, status of each request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps blobs (to check what it stored).
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        crate::process::terminate_group(&mut self.child);
    }
}

/// Pushes one small image (one layer of `layer_bytes` random bytes) to `repo` with Basic
/// `user:password`, then tags that manifest with every name of `tags`, a curl URL glob such as
/// `v[0001-5000]` or `latest`: one curl, one connection, one manifest PUT per tag. `ca_file`
/// is the CA the registry's certificate is signed by; the registry answers as `127.0.0.1`.
pub fn push_tags(
    registry: &Registry,
    ca_file: &Path,
    (user, password): (&str, &str),
    repo: &str,
    tags: &str,
) {
    use crate::oci_image::{Layout, MANIFEST_TYPE};
    require_tool("curl");
    let layout_dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::create(layout_dir.path());
    let image = layout.add_image("v1", &[512], "amd64");
    let manifest: serde_json::Value =
        serde_json::from_slice(&image.manifest_bytes).expect("manifest");
    let base = registry.url("127.0.0.1");
    let creds = format!("{user}:{password}");
    let curl = |args: &[&str]| {
        let mut c = Command::new("curl");
        c.args(["-sSf", "-o", "/dev/null", "--cacert"])
            .arg(ca_file)
            .args(["-u", &creds])
            .args(args);
        run_ok(&mut c)
    };
    let mut digests = vec![
        manifest["config"]["digest"]
            .as_str()
            .expect("config")
            .to_owned(),
    ];
    for l in manifest["layers"].as_array().expect("layers") {
        digests.push(l["digest"].as_str().expect("layer").to_owned());
    }
    for d in &digests {
        // Distribution has no single-POST upload: start one, then PUT the blob to it.
        let location = run_ok(
            Command::new("curl")
                .args(["-sSf", "-o", "/dev/null", "--cacert"])
                .arg(ca_file)
                .args(["-u", &creds, "-X", "POST", "-w", "%header{location}"])
                .arg(format!("{base}/v2/{repo}/blobs/uploads/")),
        );
        let location = location.trim();
        let url = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location.to_owned()
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let blob = layout.blob_path(d);
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", blob.display()),
            &format!("{url}{sep}digest={d}"),
        ]);
    }
    let manifest_file = layout_dir.path().join("manifest.json");
    std::fs::write(&manifest_file, &image.manifest_bytes).expect("manifest");
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {MANIFEST_TYPE}"),
        "--data-binary",
        &format!("@{}", manifest_file.display()),
        &format!("{base}/v2/{repo}/manifests/{tags}"),
    ]);
}

/// A Connector of the built-in `oci` class, as standalone YAML (namespace `default`), with its
/// CA Secret `<name>-ca`.
pub struct OciConnector<'a> {
    pub name: &'a str,
    pub address: String,
    /// The `tokenRealm` address extension.
    pub realm: Option<String>,
    /// `(auth type, Secret name)`; `None`: anonymous (the default auth type, no Secret).
    pub auth: Option<(&'a str, &'a str)>,
    pub ca_pem: &'a str,
}

impl OciConnector<'_> {
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {{name: {}, namespace: default}}\nspec:\n  connectorClassName: oci\n  address: {}\n  caCertSecretRef: {{name: {}-ca}}\n",
            self.name, self.address, self.name
        );
        if let Some(r) = &self.realm {
            y.push_str(&format!(
                "  addressExtensions: [{{name: tokenRealm, value: \"{r}\"}}]\n"
            ));
        }
        if let Some((auth, secret)) = self.auth {
            y.push_str(&format!(
                "  auth: {{name: {auth}, secretRef: {{name: {secret}}}}}\n"
            ));
        }
        y.push_str("---\n");
        y.push_str(&crate::config_dir::ca_secret_yaml(
            &format!("{}-ca", self.name),
            "default",
            self.ca_pem,
        ));
        y
    }
}

/// A login Secret (namespace `default`) of type `type_`.
pub fn login_secret_yaml(name: &str, type_: &str, username: &str, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: {type_}\nstringData:\n  username: {username}\n  password: {password}\n"
    )
}
