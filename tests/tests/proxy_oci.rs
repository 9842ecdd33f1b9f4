//! The injecting proxy against a real OCI registry (Debian's `docker-registry`, distribution
//! 2.8) in token mode (tokens from the harness's issuer, JWTs the registry verifies) and in
//! htpasswd mode, driven by real `skopeo` and `buildah` through `HTTPS_PROXY` with no
//! credentials in the client and only the agent's CA trusted.

use std::process::Output;

use connectors_tests::oci_image::{ImageClient, Layout};
use connectors_tests::registry::{
    OciConnector, Registry, RegistryAuth, RegistryOptions, login_secret_yaml,
};
use connectors_tests::token_issuer::{Grant, IssuerOptions, TokenIssuer};
use connectors_tests::{AgentProcess, ConfigDir, TestCa, run};

const USER: &str = "alice";
const PASSWORD: &str = "registry-horse-battery";
const WRONG: &str = "wrong-staple-battery";
const SERVICE: &str = "registry.test";
const OCI_CLASS: &str = include_str!("../../deploy/classes/oci.yaml");

/// How the fixture's registry checks clients, and where its realm is.
enum Mode {
    /// Token mode; the realm on `registry.test` (declared as the `tokenRealm` extension).
    Token,
    /// Token mode; the realm on `auth.test`, which the Connector does not declare.
    UndeclaredRealm,
    /// htpasswd (Basic).
    Htpasswd,
}

struct Fixture {
    ca: TestCa,
    issuer: Option<TokenIssuer>,
    registry: Registry,
    config: ConfigDir,
    hosts: std::path::PathBuf,
    work: tempfile::TempDir,
}

impl Fixture {
    /// A registry and, in token mode, its issuer (tokens live `expires_in` seconds); a config
    /// folder with the oci class and a Connector `reg` for `https://registry.test:PORT` whose
    /// Secret holds `password`.
    fn new(mode: Mode, password: &str, expires_in: u64) -> Self {
        Self::with_grant(mode, password, expires_in, Grant::All)
    }

    /// As [`Fixture::new`], the issuer granting the Connector's user `grant`.
    fn with_grant(mode: Mode, password: &str, expires_in: u64, grant: Grant) -> Self {
        let ca = TestCa::new("test tools CA");
        let names = vec!["registry.test", "auth.test", "127.0.0.1"];
        let issuer = match mode {
            Mode::Htpasswd => None,
            Mode::Token | Mode::UndeclaredRealm => Some(TokenIssuer::start(IssuerOptions {
                listen: None,
                tls: (&ca, names.clone()),
                service: SERVICE,
                users: vec![(USER, PASSWORD, grant)],
                anonymous: None,
                expires_in,
            })),
        };
        let realm_host = match mode {
            Mode::UndeclaredRealm => "auth.test",
            _ => "registry.test",
        };
        let root_cert = issuer.as_ref().map(TokenIssuer::root_cert);
        let auth = match (&issuer, &root_cert) {
            (Some(i), Some(root_cert)) => RegistryAuth::Token {
                realm: format!("https://{realm_host}:{}/token", i.addr.port()),
                service: SERVICE,
                root_cert,
            },
            _ => RegistryAuth::Htpasswd(vec![(USER, PASSWORD)]),
        };
        let registry = Registry::start(RegistryOptions {
            listen: None,
            tls: (&ca, names),
            auth,
        });
        let config = ConfigDir::new();
        config.write("oci-class.yaml", OCI_CLASS);
        let (auth, secret_type) = match mode {
            Mode::Htpasswd => ("basicAuth", "kubernetes.io/basic-auth"),
            _ => ("tokenAuth", "connectors.io/registry-token"),
        };
        let realm = match (&mode, &issuer) {
            (Mode::Token, Some(i)) => Some(format!("https://registry.test:{}", i.addr.port())),
            _ => None,
        };
        config.write(
            "reg.yaml",
            &OciConnector {
                name: "reg",
                address: registry.url("registry.test"),
                realm,
                auth: Some((auth, "reg-login")),
                ca_pem: &ca.cert_pem,
            }
            .yaml(),
        );
        config.write(
            "reg-login.yaml",
            &login_secret_yaml("reg-login", secret_type, USER, password),
        );
        let hosts = config.hosts_file(&[("127.0.0.1", "registry.test auth.test")]);
        Self {
            ca,
            issuer,
            registry,
            config,
            hosts,
            work: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn agent(&self, log_level: &str) -> AgentProcess {
        AgentProcess::start(
            self.config.path(),
            log_level,
            &["--hosts-file", self.hosts.to_str().expect("utf-8 path")],
        )
    }

    /// An image client through the agent, trusting only the agent's CA.
    fn client_via(&self, agent: &AgentProcess) -> ImageClient {
        ImageClient::new(&agent.ca_path(), Some(agent.proxy_url()))
    }

    /// An image client straight to the registry (by IP), trusting the registry's CA.
    fn direct_client(&self) -> ImageClient {
        ImageClient::new(&self.ca.write_cert(self.work.path()), None)
    }

    fn layout(&self, name: &str) -> Layout {
        Layout::create(&self.work.path().join(name))
    }

    /// `docker://registry.test:PORT/<repo>`.
    fn remote(&self, repo: &str) -> String {
        format!(
            "docker://{}/{repo}",
            self.registry.reference_host("registry.test")
        )
    }

    fn issuer(&self) -> &TokenIssuer {
        self.issuer.as_ref().expect("token mode")
    }

    /// Every secret the agent must never show: the passwords, their Basic forms, the tokens.
    fn assert_no_secrets_shown(&self, agent: &AgentProcess) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut needles = vec![
            PASSWORD.to_owned(),
            WRONG.to_owned(),
            b64.encode(format!("{USER}:{PASSWORD}")),
            b64.encode(format!("{USER}:{WRONG}")),
        ];
        if let Some(i) = &self.issuer {
            // A token's signature is its unguessable part.
            needles.extend(
                i.tokens()
                    .iter()
                    .filter_map(|t| t.rsplit('.').next().map(str::to_owned)),
            );
        }
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        agent.assert_never_shows(&needles);
    }
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(what: &str, o: &Output) {
    assert!(o.status.success(), "{what} failed:\n{}", output_text(o));
}

/// Every layer of `image` is in `layout` with the right digest.
fn assert_holds(layout: &Layout, image: &connectors_tests::oci_image::Image) {
    for l in &image.layers {
        assert!(
            layout.holds(l),
            "pulled layout lacks layer {} ({} bytes)",
            l.digest,
            l.size
        );
    }
    assert!(
        layout.holds(&image.manifest),
        "pulled layout lacks the manifest"
    );
}

fn push(client: &ImageClient, src: &Layout, tag: &str, dest: &str) -> Output {
    run(&mut client.copy(&src.reference(tag), dest, &[]))
}

#[test]
fn token_registry_push_and_pull_of_a_large_image_with_no_credentials_in_the_client() {
    const MIB: u64 = 1 << 20;
    let f = Fixture::new(Mode::Token, PASSWORD, 300);
    let src = f.layout("src");
    let image = src.add_image("v1", &[200 * MIB, 3 * MIB, 4096], "amd64");
    assert!(
        image.layers[0].size >= 200 * MIB,
        "the big layer is too small"
    );
    let agent = f.agent("debug");
    let client = f.client_via(&agent);

    let dest = format!("{}:v1", f.remote("team/app"));
    ok("push through the proxy", &push(&client, &src, "v1", &dest));
    let pulled = f.layout("pulled");
    ok(
        "pull through the proxy",
        &run(&mut client.copy(&dest, &pulled.reference("v1"), &[])),
    );
    assert_holds(&pulled, &image);
    // The manifest comes back byte for byte.
    let raw = run(&mut client.inspect(&dest, true));
    ok("inspect --raw", &raw);
    assert_eq!(
        raw.stdout, image.manifest_bytes,
        "manifest changed on the way"
    );

    // Every token came from the Connector's login, for the one service.
    let issued = f.issuer().issued();
    assert!(!issued.is_empty(), "the issuer saw no token request");
    for i in &issued {
        assert_eq!(i.user.as_deref(), Some(USER), "token request {i:?}");
        assert_eq!(i.service, SERVICE, "token request {i:?}");
        assert_eq!(i.status, 200, "token request {i:?}");
    }
    assert!(
        f.issuer().count(&["repository:team/app:pull,push"]).eq(&1),
        "push tokens: {issued:#?}"
    );

    let peak = agent.peak_rss_kib();
    eprintln!("agent peak RSS through a 200 MiB layer push and pull (token mode): {peak} KiB");
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB");

    // Straight to the registry with no credentials: refused (curl, told where the name is,
    // so nothing is looked up).
    let ca = f.ca.write_cert(f.work.path());
    let port = f.registry.addr.port();
    let code = connectors_tests::run_ok(std::process::Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        ca.to_str().expect("utf-8"),
        "--resolve",
        &format!("registry.test:{port}:127.0.0.1"),
        "-H",
        &format!("Accept: {}", connectors_tests::oci_image::MANIFEST_TYPE),
        &format!("https://registry.test:{port}/v2/team/app/manifests/v1"),
    ]));
    assert_eq!(code, "401", "direct pull without credentials");
    f.assert_no_secrets_shown(&agent);
}

#[test]
fn htpasswd_registry_push_and_pull_with_manifests_of_every_kind() {
    let f = Fixture::new(Mode::Htpasswd, PASSWORD, 0);
    let src = f.layout("src");
    let image = src.add_image("v1", &[2 << 20, 8192], "amd64");
    let index = src.add_index("multi", &["amd64", "arm64"]);
    let agent = f.agent("debug");
    let client = f.client_via(&agent);

    let dest = format!("{}:v1", f.remote("team/basic"));
    ok("push through the proxy", &push(&client, &src, "v1", &dest));
    let multi = format!("{}:multi", f.remote("team/basic"));
    ok(
        "push of an index through the proxy",
        &run(&mut client.copy(&src.reference("multi"), &multi, &["--all"])),
    );
    let pulled = f.layout("pulled");
    ok(
        "pull through the proxy",
        &run(&mut client.copy(&dest, &pulled.reference("v1"), &[])),
    );
    assert_holds(&pulled, &image);
    ok(
        "pull of an index through the proxy",
        &run(&mut client.copy(&multi, &pulled.reference("multi"), &["--all"])),
    );
    assert_holds(&pulled, &index);
    let raw = run(&mut client.inspect(&multi, true));
    ok("inspect --raw of the index", &raw);
    assert_eq!(raw.stdout, index.manifest_bytes, "index changed on the way");

    // Cross-repository mount: the same layers into another repository of the registry.
    let other = format!("{}:v1", f.remote("team/other"));
    ok(
        "copy between repositories",
        &run(&mut client.copy(&dest, &other, &[])),
    );

    let log = f.registry.log();
    assert!(
        log.contains("auth.user.name=alice") || log.contains("auth.user.name=\"alice\""),
        "the registry never saw the injected user:\n{log}"
    );

    let direct = f.direct_client();
    let out = push(
        &direct,
        &src,
        "v1",
        &format!(
            "docker://{}/team/direct:v1",
            f.registry.reference_host("127.0.0.1")
        ),
    );
    assert!(
        !out.status.success() && output_text(&out).to_lowercase().contains("unauthorized"),
        "a direct push without credentials was not refused by the registry: {}",
        output_text(&out)
    );
    f.assert_no_secrets_shown(&agent);
}

#[test]
fn twenty_images_to_one_repository_take_one_token_per_scope() {
    let f = Fixture::new(Mode::Token, PASSWORD, 600);
    let src = f.layout("src");
    let tags: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    for t in &tags {
        src.add_image(t, &[4096, 1024], "amd64");
    }
    let agent = f.agent("info");
    let client = f.client_via(&agent);
    for t in &tags {
        let dest = format!("{}:{t}", f.remote("team/many"));
        ok(&format!("push of {t}"), &push(&client, &src, t, &dest));
    }
    let issued = f.issuer().issued();
    let mut per_scope: std::collections::BTreeMap<Vec<String>, usize> = Default::default();
    for i in &issued {
        assert_eq!(i.status, 200, "token request {i:?}");
        *per_scope.entry(i.scopes.clone()).or_default() += 1;
    }
    eprintln!(
        "token requests for 20 pushes: {} ({per_scope:?})",
        issued.len()
    );
    assert_eq!(
        per_scope.get(&vec!["repository:team/many:pull,push".to_owned()]),
        Some(&1),
        "push tokens: {per_scope:?}"
    );
    for (scopes, n) in &per_scope {
        assert_eq!(*n, 1, "{scopes:?} fetched {n} times: {per_scope:?}");
    }
    f.assert_no_secrets_shown(&agent);
}

#[test]
fn a_realm_on_an_undeclared_host_is_refused_and_never_sees_the_credentials() {
    let f = Fixture::new(Mode::UndeclaredRealm, PASSWORD, 300);
    let src = f.layout("src");
    src.add_image("v1", &[4096], "amd64");
    let agent = f.agent("debug");
    let client = f.client_via(&agent);
    let out = push(&client, &src, "v1", &format!("{}:v1", f.remote("team/app")));
    assert!(
        !out.status.success(),
        "push with an undeclared realm worked"
    );
    // A pull's first request shows the registry's error body: the cause, naming the Connector.
    let out = run(&mut client.inspect(&format!("{}:v1", f.remote("team/app")), true));
    assert!(
        !out.status.success(),
        "inspect with an undeclared realm worked"
    );
    let text = output_text(&out);
    assert!(text.contains("default/reg"), "no Connector named: {text}");
    assert!(
        text.contains("auth.test") && text.contains("addressExtensions"),
        "no cause given: {text}"
    );
    assert!(
        f.issuer().issued().is_empty(),
        "the undeclared realm was asked: {:?}",
        f.issuer().issued()
    );
    assert!(
        agent.log().contains("realm-not-allowed"),
        "the agent did not log the refusal"
    );
    f.assert_no_secrets_shown(&agent);
}

#[test]
fn a_wrong_password_is_reported_naming_the_connector() {
    let f = Fixture::new(Mode::Token, WRONG, 300);
    let src = f.layout("src");
    src.add_image("v1", &[4096], "amd64");
    let agent = f.agent("debug");
    let client = f.client_via(&agent);
    let out = push(&client, &src, "v1", &format!("{}:v1", f.remote("team/app")));
    assert!(!out.status.success(), "push with a wrong password worked");
    let text = output_text(&out);
    assert!(
        text.contains("default/reg") && text.contains("refused the credentials"),
        "the push failed without naming the Connector and the cause: {text}"
    );
    let out = run(&mut client.inspect(&format!("{}:v1", f.remote("team/app")), true));
    assert!(
        !out.status.success(),
        "inspect with a wrong password worked"
    );
    let text = output_text(&out);
    assert!(text.contains("default/reg"), "no Connector named: {text}");
    assert!(
        text.contains("refused the credentials") && text.contains("Secret"),
        "no cause given: {text}"
    );
    let issued = f.issuer().issued();
    assert!(
        !issued.is_empty() && issued.iter().all(|i| i.status == 401),
        "{issued:?}"
    );
    f.assert_no_secrets_shown(&agent);
}

#[test]
fn buildah_pushes_and_pulls_through_the_proxy() {
    let f = Fixture::new(Mode::Token, PASSWORD, 300);
    // buildah names an image pulled from a layout after its folder: keep it lowercase.
    let lower = std::env::temp_dir().join(format!("connectors-buildah-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(lower.clone());
    let src = Layout::create(&lower);
    let image = src.add_image("v1", &[1 << 20, 4096], "amd64");
    let agent = f.agent("debug");
    let client = f.client_via(&agent);
    let flags = client.buildah_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let local = src.reference("v1");
    let pulled_id = run(&mut client.buildah(&[&["pull", "-q"], &flags[..], &[&local]].concat()));
    ok("buildah pull of the local layout", &pulled_id);
    let id = String::from_utf8_lossy(&pulled_id.stdout).trim().to_owned();
    let dest = format!("{}:v1", f.remote("team/built"));
    let out = run(&mut client.buildah(&[&["push"], &flags[..], &[&id, &dest]].concat()));
    ok("buildah push through the proxy", &out);
    let raw = run(&mut client.inspect(&dest, true));
    ok("inspect of what buildah pushed", &raw);
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("manifest JSON");
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(image.layers.len()),
        "pushed manifest: {manifest}"
    );
    let pulled = f.layout("pulled");
    ok(
        "pull of what buildah pushed",
        &run(&mut client.copy(&dest, &pulled.reference("v1"), &[])),
    );
    f.assert_no_secrets_shown(&agent);
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_scope_not_granted_is_reported_naming_the_connector() {
    let f = Fixture::with_grant(Mode::Token, PASSWORD, 300, Grant::PullOnly);
    let src = f.layout("src");
    src.add_image("v1", &[4096], "amd64");
    let agent = f.agent("debug");
    let client = f.client_via(&agent);
    let out = push(&client, &src, "v1", &format!("{}:v1", f.remote("team/app")));
    assert!(!out.status.success(), "push without push access worked");
    let text = output_text(&out);
    assert!(
        text.contains("default/reg") && text.contains("did not grant"),
        "no Connector or cause named: {text}"
    );
    assert!(
        agent.log().contains("scope-not-granted"),
        "the agent did not log the refusal"
    );
    f.assert_no_secrets_shown(&agent);
}
