//! A standalone config folder for the agent: classes, Connectors, Secrets, and a hosts file.

use std::path::{Path, PathBuf};

/// The built-in git class, as shipped.
pub const GIT_CLASS: &str = include_str!("../../deploy/classes/git.yaml");

pub struct ConfigDir {
    dir: tempfile::TempDir,
}

/// A Connector of the git class.
pub struct GitConnector<'a> {
    pub name: &'a str,
    pub address: String,
    /// A repository path for the class's probes (`spec.auth.params`); users usually leave it
    /// out, and the tests do too unless a probe is the point.
    pub repository: Option<&'a str>,
    /// Name of the basic-auth Secret (`None`: anonymous).
    pub secret: Option<&'a str>,
    /// PEM of the CA that signed the tool's certificate (written as a Secret `<name>-ca`).
    pub ca_pem: Option<&'a str>,
}

/// A git server over TLS for `git.test` holding `repo.git` behind a password, and a config
/// folder with a Connector `git` for it as the README tells a user to write one (address,
/// basic-auth Secret `creds`, the tool's CA), with a hosts file naming `git.test`.
pub struct TlsGitSetup {
    pub ca: crate::TestCa,
    pub server: crate::GitServer,
    pub config: ConfigDir,
    /// For the agent's `--hosts-file`.
    pub hosts: PathBuf,
}

impl TlsGitSetup {
    pub fn start(user: &str, password: &str) -> Self {
        let ca = crate::TestCa::new("tools CA");
        let server = crate::GitServer::start(crate::GitServerOptions {
            tls: Some((&ca, vec!["git.test"])),
            ..Default::default()
        });
        server.create_repo("repo.git", &[("README.md", b"hello\n")]);
        let config = ConfigDir::new();
        config.git_connector(&GitConnector {
            name: "git",
            address: server.url("git.test"),
            repository: None,
            secret: Some("creds"),
            ca_pem: Some(&ca.cert_pem),
        });
        config.basic_auth_secret("creds", user, password);
        let hosts = config.hosts_file(&[("127.0.0.1", "git.test")]);
        Self {
            ca,
            server,
            config,
            hosts,
        }
    }
}

impl Default for ConfigDir {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigDir {
    /// An empty folder holding the git class.
    pub fn new() -> Self {
        let c = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        c.write("git-class.yaml", GIT_CLASS);
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file atomically (write, then rename), as editors and config tools do.
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, self.path().join(name)).expect("rename");
    }

    /// A hosts file (`ip name...` lines) for the agent's `--hosts-file`, kept out of the YAML.
    pub fn hosts_file(&self, entries: &[(&str, &str)]) -> PathBuf {
        let text: String = entries
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect();
        let p = self.path().join(".hosts");
        std::fs::write(&p, text).expect("hosts");
        p
    }

    /// Writes `<name>.yaml` with the Connector (namespace `default`) and its CA Secret.
    pub fn git_connector(&self, c: &GitConnector<'_>) {
        let mut yaml = format!(
            "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  connectorClassName: git\n  address: {address}\n  auth:\n",
            name = c.name,
            address = c.address,
        );
        if let Some(repo) = c.repository {
            yaml.push_str(&format!(
                "    params: [{{name: repository, value: {repo}}}]\n"
            ));
        }
        if let Some(s) = c.secret {
            yaml.push_str(&format!("    secretRef: {{name: {s}}}\n"));
        }
        if let Some(pem) = c.ca_pem {
            yaml.push_str(&format!(
                "  caCertSecretRef: {{name: {name}-ca}}\n---\n{secret}",
                name = c.name,
                secret = ca_secret_yaml(&format!("{}-ca", c.name), "default", pem)
            ));
        }
        self.write(&format!("{}.yaml", c.name), &yaml);
    }

    /// Writes `<name>.yaml`: a `kubernetes.io/basic-auth` Secret in namespace `default`.
    pub fn basic_auth_secret(&self, name: &str, username: &str, password: &str) {
        self.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/basic-auth\nstringData:\n  username: {username}\n  password: {password}\n"
            ),
        );
    }
}

/// A Secret `name` in `namespace` holding a CA certificate as `ca.crt`, for a Connector's
/// `caCertSecretRef`.
pub fn ca_secret_yaml(name: &str, namespace: &str, pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\nstringData:\n  ca.crt: |\n{}\n",
        indent(pem, 4)
    )
}

/// `text` with every line indented by `n` spaces, for a YAML block scalar (`ca.crt: |`).
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
