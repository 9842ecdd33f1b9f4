//! The standalone config folder, abused: a FIFO, a link to `/dev/zero`, a link to a root-only
//! key outside the folder, a folder that disappears, credentials written into a Connector's
//! address. Reloads keep working (revocation and rotation apply), memory stays small, and nothing
//! the agent shows quotes a credential or a file's content.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use connectors_tests::agent::http_get;
use connectors_tests::git_server::git_in;
use connectors_tests::{AgentProcess, ConfigDir, GitServer, TestCa, TlsGitSetup, run, wait_until};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";
const KEY_MATERIAL: &str = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ";

struct Fixture {
    server: GitServer,
    config: ConfigDir,
    hosts: std::path::PathBuf,
    work: tempfile::TempDir,
}

impl Fixture {
    fn new() -> (Self, TestCa) {
        let TlsGitSetup {
            ca,
            server,
            config,
            hosts,
        } = TlsGitSetup::start(USER, PASSWORD);
        (
            Self {
                server,
                config,
                hosts,
                work: tempfile::tempdir().expect("tempdir"),
            },
            ca,
        )
    }

    fn agent(&self) -> AgentProcess {
        AgentProcess::start(
            self.config.path(),
            "debug",
            &["--hosts-file", self.hosts.to_str().expect("utf-8")],
        )
    }

    /// `git ls-remote` through the agent: its exit status and stderr.
    fn ls_remote(&self, agent: &AgentProcess) -> (bool, String) {
        // A copy of the agent's CA, so that clients keep it while the folder is moved away.
        let ca = self.work.path().join("agent-ca.crt");
        if !ca.exists() {
            std::fs::copy(agent.ca_path(), &ca).expect("copy the agent CA");
        }
        let out = run(git_in(self.work.path())
            .env("HTTPS_PROXY", agent.proxy_url())
            .env("GIT_SSL_CAINFO", &ca)
            .args([
                "ls-remote",
                &format!("{}/repo.git", self.server.url("git.test")),
            ]));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn mkfifo(path: &Path) {
    let out = run(Command::new("mkfifo").arg(path));
    assert!(out.status.success(), "mkfifo failed");
}

fn problems(agent: &AgentProcess) -> String {
    agent.admin_json("/problems").to_string()
}

#[test]
fn special_files_and_links_out_never_stop_reloads_or_leak() {
    let (f, _ca) = Fixture::new();
    // A root-only private key outside the folder, linked in.
    let outside = tempfile::tempdir().expect("tempdir");
    let key = outside.path().join("id_ed25519");
    std::fs::write(
        &key,
        format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END OPENSSH PRIVATE KEY-----\n"),
    )
    .expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let dir = f.config.path();
    mkfifo(&dir.join("x.yaml"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).expect("symlink");
    std::os::unix::fs::symlink(&key, dir.join("key.yaml")).expect("symlink");
    // The same key copied into the folder is read, and refused without being quoted.
    std::fs::copy(&key, dir.join("copied-key.yaml")).expect("copy");

    let agent = f.agent();
    let (ok, err) = f.ls_remote(&agent);
    assert!(ok, "{err}\n{}", agent.log());
    let p = problems(&agent);
    for (file, says) in [
        ("x.yaml", "not a regular file"),
        ("zero.yaml", "outside the config folder"),
        ("key.yaml", "outside the config folder"),
        ("copied-key.yaml", "not a Kubernetes object"),
    ] {
        assert!(p.contains(file) && p.contains(says), "{file}: {p}");
    }

    // Revocation still applies: the Secret goes, the Connector stops serving.
    let generation = agent.generation();
    std::fs::remove_file(dir.join("creds.yaml")).expect("rm");
    agent.wait_generation_after(generation);
    let (ok, err) = f.ls_remote(&agent);
    assert!(!ok, "served after the Secret was deleted");
    assert!(err.contains("not found"), "{err}");
    // Rotation too: the Secret comes back (say, with a new password) and is used at once.
    let generation = agent.generation();
    f.config.basic_auth_secret("creds", USER, PASSWORD);
    agent.wait_generation_after(generation);
    let (ok, err) = f.ls_remote(&agent);
    assert!(ok, "{err}");

    let rss = agent.peak_rss_kib();
    assert!(rss < 64 * 1024, "agent peak RSS {rss} KiB");
    agent.assert_never_shows(&[KEY_MATERIAL, "BEGIN OPENSSH", PASSWORD]);
}

#[test]
fn a_folder_that_cannot_be_read_is_retried_and_reported() {
    let (f, _ca) = Fixture::new();
    let agent = f.agent();
    assert!(f.ls_remote(&agent).0);
    let dir = f.config.path().to_owned();
    let moved = dir.with_extension("moved");
    std::fs::rename(&dir, &moved).expect("move the folder away");
    let not_ready = wait_until(Duration::from_secs(10), || {
        http_get(agent.health, "/readyz").is_some_and(|(c, _)| c == 503)
    });
    let (_, body) = http_get(agent.health, "/readyz").unwrap_or_default();
    assert!(not_ready, "/readyz stayed ready: {body}");
    assert!(body.contains("cannot be read"), "{body}");
    assert!(body.contains(&dir.display().to_string()), "{body}");
    let p = problems(&agent);
    assert!(p.contains("configuration source"), "{p}");
    // The last good configuration goes on serving meanwhile.
    let (ok, err) = f.ls_remote(&agent);
    assert!(ok, "{err}");

    std::fs::rename(&moved, &dir).expect("move it back");
    assert!(
        wait_until(Duration::from_secs(40), || {
            http_get(agent.health, "/readyz").is_some_and(|(c, _)| c == 200)
        }),
        "not ready again after the folder came back:\n{}",
        agent.log()
    );
    // And the folder is watched again: a change applies.
    let generation = agent.generation();
    std::fs::remove_file(dir.join("creds.yaml")).expect("rm");
    agent.wait_generation_after(generation);
    let (ok, _) = f.ls_remote(&agent);
    assert!(!ok, "the change after the folder came back was not applied");
}

#[test]
fn credentials_in_an_address_are_refused_and_never_shown() {
    let (f, _ca) = Fixture::new();
    let port = f.server.addr.port();
    let connector = |name: &str, address: &str| {
        format!(
            "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  connectorClassName: git\n  address: \"{address}\"\n  auth: {{secretRef: {{name: creds}}}}\n"
        )
    };
    f.config.write(
        "userinfo.yaml",
        &connector(
            "userinfo",
            &format!("https://bob:t0k3n-in-userinfo@git.test:{port}"),
        ),
    );
    f.config.write(
        "query.yaml",
        &connector(
            "query",
            &format!("https://git.test:{port}/?private_token=t0k3n-in-query"),
        ),
    );
    f.config.write(
        "crlf.yaml",
        &connector(
            "crlf",
            &format!("https://git.test:{port}/\\r\\nX-Injected: 1"),
        ),
    );
    let agent = f.agent();
    let items = agent.admin_json("/connectors")["items"].clone();
    let items = items.as_array().expect("items");
    for (name, says) in [
        ("userinfo", "must not contain user info"),
        ("query", "must not contain a query"),
        ("crlf", "control character"),
    ] {
        let c = items
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} not reported: {items:?}"));
        let cond = &c["conditions"][0];
        assert_eq!(cond["reason"], "InvalidSpec", "{name}: {c}");
        let msg = cond["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("spec.address") && msg.contains(says),
            "{name}: {msg}"
        );
    }
    // The good Connector is unaffected.
    let (ok, err) = f.ls_remote(&agent);
    assert!(ok, "{err}");
    agent.assert_never_shows(&["t0k3n-in-userinfo", "t0k3n-in-query", PASSWORD]);
}
