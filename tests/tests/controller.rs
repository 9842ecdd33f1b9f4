//! connectors-controller against a real kube-apiserver (v1.20, etcd, RBAC) and real git servers
//! (nginx + git http-backend) on loopback.
//!
//! One API server and one controller serve the whole binary: `deploy/` is installed as an admin
//! would (`kubectl apply`), and the controller runs under its own ServiceAccount token (minted
//! with the TokenRequest API) bound to the ClusterRole of `deploy/rbac.yaml`, never as an admin.
//! Each test works in its own namespace. The leader-election test has a server of its own.
//!
//! Without the kube-apiserver binary or etcd, every test fails naming `cargo xtask setup`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use connectors_crd::condition::{Condition, types};
use connectors_crd::{Connector, ConnectorClass};
use connectors_tests::controller::{self, ControllerProcess};
use connectors_tests::kube::{self as kt, KubeApiServer};
use connectors_tests::{GitServer, GitServerOptions, TestCa, free_port, run, run_ok};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";
const WRONG: &str = "wrong-battery";
/// The acceptance bar for a good Connector to turn Ready.
const READY_WITHIN: Duration = Duration::from_secs(5);
/// Probe timeout given to the controllers under test.
const PROBE_TIMEOUT: &str = "2";

// ---------------------------------------------------------------------------------------------
// The shared server and controller

struct Shared {
    // Dropped first: the controller stops before its API server.
    controller: ControllerProcess,
    _kube: KubeApiServer,
}

static SHARED: Mutex<Option<Shared>> = Mutex::new(None);
static ENV: OnceLock<Env> = OnceLock::new();

#[derive(Clone)]
struct Env {
    admin_kubeconfig: PathBuf,
    controller_kubeconfig: PathBuf,
    kube_dir: PathBuf,
    url: String,
    ca_pem: String,
    controller_pid: u32,
}

extern "C" fn stop_shared() {
    if let Ok(mut shared) = SHARED.lock() {
        shared.take();
    }
}

/// The shared server with `deploy/` installed and the controller leading.
fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let started = Instant::now();
        let kube = KubeApiServer::start();
        let controller_kubeconfig = controller::install(&kube);
        let c = ControllerProcess::start(
            &controller_kubeconfig,
            "info,connectors_controller=debug",
            &["--probe-timeout", PROBE_TIMEOUT],
        );
        assert!(
            connectors_tests::wait_until(Duration::from_secs(20), || c
                .metric("connectors_controller_leader")
                == Some(1.0)),
            "the controller did not take the lead; log:\n{}",
            c.log()
        );
        eprintln!(
            "API server and controller up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let env = Env {
            admin_kubeconfig: kube.admin_kubeconfig.clone(),
            controller_kubeconfig,
            kube_dir: kube.dir.clone(),
            url: kube.url.clone(),
            ca_pem: std::fs::read_to_string(&kube.ca_cert).expect("CA"),
            controller_pid: c.pid(),
        };
        *SHARED.lock().expect("shared") = Some(Shared {
            controller: c,
            _kube: kube,
        });
        kt::at_exit(stop_shared);
        env
    })
}

fn with_controller<T>(f: impl FnOnce(&mut ControllerProcess) -> T) -> T {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut shared.as_mut().expect("shared controller").controller)
}

fn controller_log() -> String {
    with_controller(|c| c.log())
}

fn kubectl(e: &Env) -> Command {
    kt::kubectl_with(&e.admin_kubeconfig, &e.kube_dir)
}

async fn client_for(kubeconfig: &PathBuf) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

async fn admin() -> Client {
    client_for(&env().admin_kubeconfig).await
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn connector_resource() -> ApiResource {
    ApiResource::erase::<Connector>(&())
}

/// Creates an object from JSON (typed structs cannot express the malformed ones).
async fn create(
    client: &Client,
    ns: Option<&str>,
    ar: &ApiResource,
    obj: Value,
) -> Result<(), kube::Error> {
    let obj: DynamicObject = serde_json::from_value(obj).expect("object");
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    api.create(&PostParams::default(), &obj).await.map(|_| ())
}

fn connector_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "connectors.io/v1alpha1", "kind": "Connector",
           "metadata": {"name": name}, "spec": spec})
}

/// A git Connector for `address` with the Secret `secret` and the repository `repo.git`.
fn git_spec(address: &str, secret: &str) -> Value {
    json!({"connectorClassName": "git", "address": address,
           "auth": {"secretRef": {"name": secret},
                    "params": [{"name": "repository", "value": "repo.git"}]}})
}

async fn create_connector(client: &Client, ns: &str, name: &str, spec: Value) {
    create(
        client,
        Some(ns),
        &connector_resource(),
        connector_json(name, spec),
    )
    .await
    .unwrap_or_else(|e| panic!("create Connector {ns}/{name}: {e}"));
}

async fn basic_secret(client: &Client, ns: &str, name: &str, password: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name}, "type": "kubernetes.io/basic-auth",
        "stringData": {"username": USER, "password": password}}))
    .expect("secret");
    api.create(&PostParams::default(), &s)
        .await
        .expect("create Secret");
}

async fn set_password(client: &Client, ns: &str, name: &str, password: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"stringData": {"password": password}})),
    )
    .await
    .expect("patch Secret");
}

fn condition<'a>(c: &'a Connector, type_: &str) -> Option<&'a Condition> {
    c.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|x| x.type_ == type_))
}

fn show(c: &Connector) -> String {
    c.status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| format!("  {} {} {}: {}", c.type_, c.status, c.reason, c.message))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|| "  (no status)".into())
}

/// Polls a Connector until `check` holds; returns it and the time it took.
async fn wait_connector(
    client: &Client,
    ns: &str,
    name: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&Connector) -> bool,
) -> (Connector, Duration) {
    let api: Api<Connector> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let last = api.get_opt(name).await.expect("get Connector");
        if let Some(c) = &last
            && check(c)
        {
            return (c.clone(), started.elapsed());
        }
        if started.elapsed() > within {
            panic!(
                "{ns}/{name}: not {what} within {within:?}; conditions:\n{}\ncontroller log (tail):\n{}",
                last.as_ref().map(show).unwrap_or_else(|| "  (gone)".into()),
                tail(&controller_log(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn is(c: &Connector, type_: &str, status: &str, reason: &str) -> bool {
    condition(c, type_).is_some_and(|x| x.status == status && x.reason == reason)
}

fn ready(c: &Connector) -> bool {
    is(c, types::READY, "True", "Ready")
        && c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation
}

async fn wait_ready(client: &Client, ns: &str, name: &str) -> (Connector, Duration) {
    wait_connector(client, ns, name, READY_WITHIN, "Ready", ready).await
}

/// The Events about `name` in `ns`: (type, reason).
async fn events_about(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<Event> = api
        .list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
        })
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list.into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

/// The Events about `name` once there are `n` of them (Events follow the status write), and
/// after a pause that would let an extra one show.
async fn events_settled(client: &Client, ns: &str, name: &str, n: usize) -> Vec<(String, String)> {
    let started = Instant::now();
    while events_about(client, ns, name).await.len() < n
        && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    events_about(client, ns, name).await
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn git_server() -> GitServer {
    let s = GitServer::start(GitServerOptions::default());
    s.create_repo("repo.git", &[("README.md", b"hello\n")]);
    s
}

/// A namespace with a git server, a basic-auth Secret `git-creds` holding `password`, and a
/// Connector `git` for that server.
async fn git_connector(client: &Client, ns: &str, password: &str) -> GitServer {
    namespace(client, ns).await;
    let server = git_server();
    basic_secret(client, ns, "git-creds", password).await;
    create_connector(client, ns, "git", git_spec(&http_url(&server), "git-creds")).await;
    server
}

fn http_url(s: &GitServer) -> String {
    format!("http://127.0.0.1:{}", s.addr.port())
}

// ---------------------------------------------------------------------------------------------
// Acceptance

#[tokio::test]
async fn good_credentials_turn_ready_and_kubectl_shows_it() {
    let e = env();
    let client = admin().await;
    let ns = "good";
    let server = git_connector(&client, ns, PASSWORD).await;
    let (c, took) = wait_ready(&client, ns, "git").await;
    eprintln!("Ready after {} ms", took.as_millis());

    for (t, reason) in [
        (types::CONNECTOR_CLASS_READY, "ConnectorClassReady"),
        (types::SECRET_READY, "SecretReady"),
        (types::LIVENESS_READY, "Reachable"),
        (types::AUTH_READY, "Authenticated"),
        (types::READY, "Ready"),
    ] {
        let x = condition(&c, t).unwrap_or_else(|| panic!("no {t}:\n{}", show(&c)));
        assert_eq!(
            (x.status.as_str(), x.reason.as_str()),
            ("True", reason),
            "{}",
            show(&c)
        );
        assert!(
            x.last_transition_time.is_some(),
            "{t} has no lastTransitionTime"
        );
        assert_eq!(x.observed_generation, c.metadata.generation);
    }
    let auth = condition(&c, types::AUTH_READY).expect("AuthReady");
    assert!(
        auth.message.contains("HTTP 200 OK")
            && auth
                .message
                .contains("/repo.git/info/refs?service=git-upload-pack")
            && auth.message.contains("Secret 'good/git-creds'"),
        "{}",
        auth.message
    );
    assert!(
        condition(&c, types::LIVENESS_READY)
            .expect("live")
            .last_probe_time
            .is_some()
    );
    let status = c.status.as_ref().expect("status");
    assert_eq!(
        status.api.as_ref().map(|a| a.path.as_str()),
        Some("/connectors/v1alpha1/good/git/path")
    );
    assert_eq!(
        status.endpoints,
        vec![format!("127.0.0.1:{}", server.addr.port())]
    );

    // The tool saw the probes: without credentials (401), then as alice (200).
    let log = server.access_log();
    assert!(
        log.contains("- \"GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1\" 401"),
        "{log}"
    );
    assert!(
        log.contains("alice \"GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1\" 200"),
        "{log}"
    );

    // kubectl shows READY and REASON.
    let out = run_ok(kubectl(e).args(["get", "connectors", "-n", ns]));
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "CLASS", "ADDRESS", "READY", "REASON", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["git", "git", http_url(&server).as_str(), "True", "Ready"],
        "{out}"
    );

    // One Event: the transition to Ready.
    assert_eq!(
        events_settled(&client, ns, "git", 1).await,
        vec![("Normal".to_owned(), "Ready".to_owned())]
    );
    assert!(
        !controller_log().contains(PASSWORD),
        "the password reached the log"
    );
}

#[tokio::test]
async fn a_git_connector_written_as_a_user_writes_it_is_ready_and_says_what_is_not_probed() {
    env();
    let client = admin().await;
    let ns = "plain";
    namespace(&client, ns).await;
    let server = git_server();
    basic_secret(&client, ns, "git-creds", PASSWORD).await;
    // Address and Secret only: no `repository` parameter, which only the auth probe needs.
    create_connector(
        &client,
        ns,
        "git",
        json!({
            "connectorClassName": "git",
            "address": format!("http://127.0.0.1:{}", server.addr.port()),
            "auth": {"secretRef": {"name": "git-creds"}},
        }),
    )
    .await;
    let (c, _) = wait_ready(&client, ns, "git").await;
    let auth = condition(&c, types::AUTH_READY).expect("AuthReady");
    assert_eq!(
        (auth.status.as_str(), auth.reason.as_str()),
        ("True", "NotProbed"),
        "{}",
        show(&c)
    );
    assert!(
        auth.message.contains("parameter 'repository'"),
        "{}",
        auth.message
    );
    let live = condition(&c, types::LIVENESS_READY).expect("LivenessReady");
    assert_eq!(live.reason, "Reachable", "{}", show(&c));
    assert!(
        live.message.contains("only reachability was checked"),
        "{}",
        live.message
    );
    let spec = condition(&c, types::CONNECTOR_CLASS_READY).expect("ConnectorClassReady");
    assert!(spec.is_true(), "{}", show(&c));
}

#[tokio::test]
async fn wrong_password_quotes_the_tool_and_a_fixed_secret_is_picked_up() {
    let e = env();
    let client = admin().await;
    let ns = "wrong-password";
    let _server = git_connector(&client, ns, WRONG).await;
    let (c, _) = wait_connector(&client, ns, "git", READY_WITHIN, "AuthReady=False", |c| {
        is(c, types::AUTH_READY, "False", "AuthenticationFailed")
    })
    .await;
    let auth = condition(&c, types::AUTH_READY).expect("AuthReady");
    assert!(
        auth.message.contains("HTTP 401 Unauthorized"),
        "{}",
        auth.message
    );
    assert!(
        auth.message
            .contains("WWW-Authenticate: Basic realm=\"git\""),
        "{}",
        auth.message
    );
    assert!(
        auth.message.contains("check the credentials"),
        "{}",
        auth.message
    );
    assert!(!auth.message.contains(WRONG));
    assert!(
        is(&c, types::LIVENESS_READY, "True", "Reachable"),
        "{}",
        show(&c)
    );
    assert!(
        is(&c, types::READY, "False", "AuthenticationFailed"),
        "{}",
        show(&c)
    );

    let out = run_ok(kubectl(e).args(["get", "connectors", "-n", ns, "--no-headers"]));
    let row: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&row[3..5], ["False", "AuthenticationFailed"], "{out}");

    // Fixing the Secret is enough: the controller watches it.
    set_password(&client, ns, "git-creds", PASSWORD).await;
    let (_, took) = wait_ready(&client, ns, "git").await;
    eprintln!("Ready {} ms after the Secret was fixed", took.as_millis());
    assert_eq!(
        events_settled(&client, ns, "git", 2).await,
        vec![
            ("Warning".to_owned(), "AuthenticationFailed".to_owned()),
            ("Normal".to_owned(), "Ready".to_owned())
        ]
    );
    let log = controller_log();
    assert!(
        !log.contains(WRONG) && !log.contains(PASSWORD),
        "a password reached the log"
    );
}

#[tokio::test]
async fn unreachable_and_slow_tools_fail_alone() {
    env();
    let client = admin().await;
    let ns = "unreachable";
    namespace(&client, ns).await;
    let server = git_server();
    basic_secret(&client, ns, "git-creds", PASSWORD).await;

    // Nothing listens on this port.
    let closed = free_port();
    create_connector(
        &client,
        ns,
        "closed",
        git_spec(&format!("http://127.0.0.1:{closed}"), "git-creds"),
    )
    .await;
    // This one accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().take(4) {
            held.push(conn);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    create_connector(
        &client,
        ns,
        "silent",
        git_spec(&format!("http://127.0.0.1:{silent_port}"), "git-creds"),
    )
    .await;
    // Created after the slow one: it must not wait for it.
    create_connector(
        &client,
        ns,
        "good",
        git_spec(&http_url(&server), "git-creds"),
    )
    .await;
    wait_ready(&client, ns, "good").await;

    let (c, _) = wait_connector(
        &client,
        ns,
        "closed",
        READY_WITHIN,
        "LivenessReady=False",
        |c| is(c, types::LIVENESS_READY, "False", "ConnectionFailed"),
    )
    .await;
    let live = condition(&c, types::LIVENESS_READY).expect("LivenessReady");
    assert!(
        live.message.contains("Connection refused"),
        "{}",
        live.message
    );
    assert!(
        live.message.contains("check spec.address"),
        "{}",
        live.message
    );
    assert!(
        is(&c, types::AUTH_READY, "Unknown", "NotChecked"),
        "{}",
        show(&c)
    );
    assert!(
        is(&c, types::READY, "False", "ConnectionFailed"),
        "{}",
        show(&c)
    );

    let (c, _) = wait_connector(&client, ns, "silent", READY_WITHIN, "ProbeTimeout", |c| {
        is(c, types::LIVENESS_READY, "False", "ProbeTimeout")
    })
    .await;
    let live = condition(&c, types::LIVENESS_READY).expect("LivenessReady");
    assert!(
        live.message.contains("no answer within 2s"),
        "{}",
        live.message
    );
    drop(hold);
}

#[tokio::test]
async fn secret_deleted_then_restored_without_restart() {
    env();
    let client = admin().await;
    let ns = "secret-lifecycle";
    let _server = git_connector(&client, ns, PASSWORD).await;
    wait_ready(&client, ns, "git").await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .delete("git-creds", &DeleteParams::default())
        .await
        .expect("delete Secret");
    let (c, took) = wait_connector(&client, ns, "git", READY_WITHIN, "SecretReady=False", |c| {
        is(c, types::SECRET_READY, "False", "SecretNotFound")
    })
    .await;
    eprintln!(
        "SecretReady=False {} ms after the deletion",
        took.as_millis()
    );
    let s = condition(&c, types::SECRET_READY).expect("SecretReady");
    assert_eq!(s.message, "Secret 'secret-lifecycle/git-creds' not found");
    assert!(
        is(&c, types::READY, "False", "SecretNotFound"),
        "{}",
        show(&c)
    );
    assert!(
        is(&c, types::AUTH_READY, "Unknown", "NotChecked"),
        "{}",
        show(&c)
    );

    basic_secret(&client, ns, "git-creds", PASSWORD).await;
    let (_, took) = wait_ready(&client, ns, "git").await;
    eprintln!("Ready {} ms after the Secret came back", took.as_millis());
    with_controller(|c| {
        assert!(c.running(), "the controller exited");
        assert_eq!(c.pid(), env().controller_pid, "the controller restarted");
    });
    // Events on transitions only: Ready, SecretNotFound, Ready.
    let events = events_settled(&client, ns, "git", 3).await;
    let reasons: Vec<&str> = events.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons, ["Ready", "SecretNotFound", "Ready"], "{events:?}");
}

#[tokio::test]
async fn tls_tool_is_trusted_through_its_ca_secret() {
    env();
    let client = admin().await;
    let ns = "tls";
    namespace(&client, ns).await;
    let ca = TestCa::new("tools CA");
    let server = GitServer::start(GitServerOptions {
        tls: Some((&ca, vec!["127.0.0.1"])),
        ..Default::default()
    });
    server.create_repo("repo.git", &[("README.md", b"hello\n")]);
    basic_secret(&client, ns, "git-creds", PASSWORD).await;
    let address = format!("https://127.0.0.1:{}", server.addr.port());
    create_connector(&client, ns, "git", git_spec(&address, "git-creds")).await;
    let (c, _) = wait_connector(
        &client,
        ns,
        "git",
        READY_WITHIN,
        "TLSHandshakeFailed",
        |c| is(c, types::LIVENESS_READY, "False", "TLSHandshakeFailed"),
    )
    .await;
    let live = condition(&c, types::LIVENESS_READY).expect("LivenessReady");
    assert!(
        live.message.contains("UnknownIssuer") && live.message.contains("spec.caCertSecretRef"),
        "{}",
        live.message
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tools-ca"}, "stringData": {"ca.crt": ca.cert_pem}}))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &ca_secret)
        .await
        .expect("create CA Secret");
    let api: Api<Connector> = Api::namespaced(client.clone(), ns);
    api.patch(
        "git",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"caCertSecretRef": {"name": "tools-ca"}}})),
    )
    .await
    .expect("patch Connector");
    wait_ready(&client, ns, "git").await;
}

#[tokio::test]
async fn k8s_class_checks_an_api_server_with_a_token() {
    let e = env();
    let client = admin().await;
    let ns = "k8s-class";
    namespace(&client, ns).await;
    run_ok(kubectl(e).args(["-n", ns, "create", "serviceaccount", "reader"]));
    let token = sa_token(e, ns, "reader");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for s in [
        json!({"metadata": {"name": "token"}, "type": "connectors.io/bearer-token",
               "stringData": {"token": token}}),
        json!({"metadata": {"name": "bad-token"}, "type": "connectors.io/bearer-token",
               "stringData": {"token": "not-a-token"}}),
        json!({"metadata": {"name": "cluster-ca"}, "stringData": {"ca.crt": e.ca_pem}}),
    ] {
        let s: Secret = serde_json::from_value(s).expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("create Secret");
    }
    let spec = |secret: &str| {
        json!({"connectorClassName": "k8s", "address": e.url,
               "auth": {"secretRef": {"name": secret}}, "caCertSecretRef": {"name": "cluster-ca"}})
    };
    create_connector(&client, ns, "cluster", spec("token")).await;
    create_connector(&client, ns, "bad", spec("bad-token")).await;
    let (c, _) = wait_ready(&client, ns, "cluster").await;
    assert!(
        condition(&c, types::AUTH_READY)
            .is_some_and(|a| a.message.contains("GET ") && a.message.contains("/api ")),
        "{}",
        show(&c)
    );
    let (c, _) = wait_connector(
        &client,
        ns,
        "bad",
        READY_WITHIN,
        "AuthenticationFailed",
        |c| is(c, types::AUTH_READY, "False", "AuthenticationFailed"),
    )
    .await;
    assert!(
        condition(&c, types::AUTH_READY)
            .is_some_and(|a| a.message.contains("HTTP 401 Unauthorized")),
        "{}",
        show(&c)
    );
    assert!(
        !controller_log().contains(&token),
        "a token reached the log"
    );
}

/// A token of a ServiceAccount of the shared server (TokenRequest API).
fn sa_token(e: &Env, ns: &str, sa: &str) -> String {
    let request = e.kube_dir.join(format!("token-{ns}-{sa}.json"));
    std::fs::write(
        &request,
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}"#,
    )
    .expect("request");
    let out = run_ok(
        kubectl(e)
            .args(["create", "--raw"])
            .arg(format!(
                "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
            ))
            .arg("-f")
            .arg(&request),
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    v["status"]["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn the_controller_runs_under_its_own_least_privilege_service_account() {
    let e = env();
    let can_i = |args: &[&str]| -> bool {
        let out = run(kt::kubectl_with(&e.controller_kubeconfig, &e.kube_dir)
            .args(["auth", "can-i"])
            .args(args));
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    // What it needs.
    for args in [
        &["watch", "connectors.connectors.io", "--all-namespaces"][..],
        &[
            "patch",
            "connectors.connectors.io",
            "--subresource=status",
            "--all-namespaces",
        ],
        &[
            "patch",
            "connectorclasses.connectors.io",
            "--subresource=status",
        ],
        &["get", "secrets", "--all-namespaces"],
        &["create", "events.events.k8s.io", "-n", "good"],
        &[
            "update",
            "leases.coordination.k8s.io/connectors-controller",
            "-n",
            "connectors-system",
        ],
        // The agents' API (which pods run where, who may use what), the webhook's CA bundle,
        // the cluster CA.
        &["list", "pods", "--all-namespaces"],
        &["create", "tokenreviews.authentication.k8s.io"],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
        &["list", "namespaces"],
        &["update", "configmaps/connectors-ca-bundle", "-n", "good"],
        &["update", "secrets/connectors-ca", "-n", "connectors-system"],
        &["create", "connectorclasses.connectors.io"],
    ] {
        assert!(
            can_i(args),
            "the controller's ServiceAccount cannot: {args:?}"
        );
    }
    // Nothing more.
    for args in [
        &["create", "connectors.connectors.io", "--all-namespaces"][..],
        &["update", "connectors.connectors.io", "--all-namespaces"],
        &["delete", "connectors.connectors.io", "--all-namespaces"],
        &["update", "connectorclasses.connectors.io"],
        &["create", "secrets", "--all-namespaces"],
        &["update", "secrets", "--all-namespaces"],
        &["delete", "secrets", "--all-namespaces"],
        &["create", "pods", "--all-namespaces"],
        &["delete", "pods", "--all-namespaces"],
        &["list", "configmaps", "--all-namespaces"],
        &["update", "configmaps/someone-elses", "-n", "good"],
        &["delete", "configmaps", "--all-namespaces"],
        &["update", "secrets/someone-elses", "-n", "connectors-system"],
        &["patch", "mutatingwebhookconfigurations/someone-elses"],
        &["create", "clusterrolebindings"],
        &[
            "update",
            "leases.coordination.k8s.io/someone-else",
            "-n",
            "connectors-system",
        ],
        &["create", "leases.coordination.k8s.io", "-n", "default"],
        &["*", "*", "--all-namespaces"],
    ] {
        assert!(
            !can_i(args),
            "the controller's ServiceAccount can: {args:?}"
        );
    }
    // The token it runs with is a ServiceAccount token, not the admin's.
    let kc = std::fs::read_to_string(&e.controller_kubeconfig).expect("kubeconfig");
    let admin_kc = std::fs::read_to_string(&e.admin_kubeconfig).expect("kubeconfig");
    assert!(!kc.contains("admin-") && admin_kc.contains("admin-"));
    // And it holds the Lease.
    let client = admin().await;
    let leases: Api<Lease> = Api::namespaced(client, "connectors-system");
    let lease = leases.get("connectors-controller").await.expect("lease");
    assert!(
        lease.spec.and_then(|s| s.holder_identity).is_some(),
        "nobody holds the Lease"
    );
}

// ---------------------------------------------------------------------------------------------
// Fifty malformed or contradictory objects

enum Expect {
    /// The API server refuses the object; its answer contains this.
    Rejected(&'static str),
    /// The Connector gets this condition (type, status, reason) with a message containing this.
    Condition(&'static str, &'static str, &'static str, &'static str),
    /// The class's Ready condition is False with a message containing this.
    ClassInvalid(&'static str),
}

struct Case {
    name: &'static str,
    /// `Connector` or `ConnectorClass` JSON (name filled in from `name`).
    object: Value,
    /// Secrets created before the object.
    secrets: Vec<Value>,
    expect: Expect,
}

fn class_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "connectors.io/v1alpha1", "kind": "ConnectorClass",
           "metadata": {"name": name}, "spec": spec})
}

fn basic_class_spec() -> Value {
    json!({"auth": {"types": [{"name": "basicAuth", "secretType": "kubernetes.io/basic-auth"}]},
           "livenessProbe": {"http": {"path": "/", "successCodes": [200, 401, 404]}}})
}

fn secret_json(name: &str, type_: &str, data: Value) -> Value {
    json!({"metadata": {"name": name}, "type": type_, "stringData": data})
}

#[tokio::test]
async fn fifty_malformed_objects_are_refused_or_named_and_the_controller_keeps_up() {
    env();
    let client = admin().await;
    let ns = "malformed";
    namespace(&client, ns).await;
    let server = git_server();
    // A server without users and without repositories.
    let anonymous = GitServer::start(GitServerOptions {
        users: vec![],
        ..Default::default()
    });
    let addr = http_url(&server);
    let good_auth = json!({"secretRef": {"name": "good"}, "params": [{"name": "repository", "value": "repo.git"}]});
    let git = |patch: Value| {
        let mut spec = json!({"connectorClassName": "git", "address": addr, "auth": good_auth});
        merge(&mut spec, patch);
        spec
    };
    let long = |n: usize| "x".repeat(n);
    use Expect::{ClassInvalid, Condition as Cond, Rejected};

    let mut cases: Vec<Case> = Vec::new();
    let mut connector = |name: &'static str, spec: Value, secrets: Vec<Value>, expect: Expect| {
        cases.push(Case {
            name,
            object: connector_json(name, spec),
            secrets,
            expect,
        });
    };
    // Refused by the schema.
    connector(
        "empty-address",
        git(json!({"address": ""})),
        vec![],
        Rejected("spec.address"),
    );
    connector(
        "ftp-address",
        git(json!({"address": "ftp://x.test"})),
        vec![],
        Rejected("spec.address"),
    );
    connector(
        "huge-address",
        git(json!({"address": format!("http://{}", long(3000))})),
        vec![],
        Rejected("spec.address"),
    );
    connector(
        "no-address",
        json!({"connectorClassName": "git"}),
        vec![],
        Rejected("spec.address"),
    );
    connector(
        "no-class",
        json!({"address": addr}),
        vec![],
        Rejected("spec.connectorClassName"),
    );
    connector(
        "empty-class",
        git(json!({"connectorClassName": ""})),
        vec![],
        Rejected("spec.connectorClassName"),
    );
    connector(
        "bad-class-name",
        git(json!({"connectorClassName": "Git_Class"})),
        vec![],
        Rejected("spec.connectorClassName"),
    );
    connector("spec-not-object", json!("git"), vec![], Rejected("spec"));
    connector(
        "address-number",
        git(json!({"address": 42})),
        vec![],
        Rejected("spec.address"),
    );
    connector(
        "secret-ref-empty",
        git(json!({"auth": {"secretRef": {"name": ""}}})),
        vec![],
        Rejected("spec.auth.secretRef.name"),
    );
    connector(
        "secret-ref-upper",
        git(json!({"auth": {"secretRef": {"name": "Creds"}}})),
        vec![],
        Rejected("spec.auth.secretRef.name"),
    );
    connector(
        "secret-ref-no-name",
        json!({"connectorClassName": "git", "address": addr, "auth": {"secretRef": {}}}),
        vec![],
        Rejected("spec.auth.secretRef.name"),
    );
    connector(
        "huge-param",
        git(json!({"params": [{"name": "p", "value": long(5000)}]})),
        vec![],
        Rejected("spec.params.value"),
    );
    connector(
        "too-many-params",
        git(
            json!({"params": (0..100).map(|i| json!({"name": format!("p{i}"), "value": "v"})).collect::<Vec<_>>()}),
        ),
        vec![],
        Rejected("spec.params"),
    );
    connector(
        "too-many-extensions",
        git(
            json!({"addressExtensions": (0..20).map(|i| json!({"name": format!("e{i}"), "value": "http://e.test"})).collect::<Vec<_>>()}),
        ),
        vec![],
        Rejected("spec.addressExtensions"),
    );
    connector(
        "empty-param-name",
        git(json!({"auth": {"params": [{"name": "", "value": "x"}]}})),
        vec![],
        Rejected("spec.auth.params.name"),
    );
    connector(
        "long-auth-name",
        git(json!({"auth": {"name": long(64)}})),
        vec![],
        Rejected("spec.auth.name"),
    );
    connector(
        "ca-ref-empty",
        git(json!({"caCertSecretRef": {"name": ""}})),
        vec![],
        Rejected("spec.caCertSecretRef.name"),
    );
    // Refused by the API server's own rules.
    cases.push(Case {
        name: "huge-annotation",
        object: json!({"apiVersion": "connectors.io/v1alpha1", "kind": "Connector",
            "metadata": {"name": "huge-annotation", "annotations": {"a": long(300_000)}}, "spec": git(json!({}))}),
        secrets: vec![],
        expect: Rejected("metadata.annotations"),
    });
    let mut connector = |name: &'static str, spec: Value, secrets: Vec<Value>, expect: Expect| {
        cases.push(Case {
            name,
            object: connector_json(name, spec),
            secrets,
            expect,
        });
    };
    let basic = |name: &str, user: &str, pass: &str| {
        secret_json(
            name,
            "kubernetes.io/basic-auth",
            json!({"username": user, "password": pass}),
        )
    };
    // Named in a condition.
    connector(
        "unknown-class",
        git(json!({"connectorClassName": "nope"})),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "ConnectorClassNotFound",
            "ConnectorClass 'nope' does not exist",
        ),
    );
    connector(
        "host-outside-rules",
        json!({"connectorClassName": "m-corp-hosts", "address": addr}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.address: host '127.0.0.1' does not match the class's host patterns (*.corp)",
        ),
    );
    connector(
        "scheme-outside-rules",
        json!({"connectorClassName": "m-https-only", "address": addr}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.address: scheme 'http' is not allowed by the class (allowed: https)",
        ),
    );
    connector(
        "userinfo-in-address",
        git(json!({"address": "http://bob:hunter2@127.0.0.1:1"})),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "must not contain user info; credentials belong in the Secret",
        ),
    );
    connector(
        "query-in-address",
        git(json!({"address": format!("{addr}/?a=b")})),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "must not contain a query or fragment",
        ),
    );
    connector(
        "space-in-address",
        git(json!({"address": "http://exa mple.test"})),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "is not a URL",
        ),
    );
    connector(
        "unknown-auth-type",
        git(json!({"auth": {"name": "token"}})),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.auth.name: class has no auth type 'token' (it has: basicAuth)",
        ),
    );
    connector(
        "secret-in-other-namespace",
        git(json!({"auth": {"secretRef": {"name": "good", "namespace": "default"}}})),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.auth.secretRef.namespace: must be the Connector's namespace 'malformed', not 'default'",
        ),
    );
    connector(
        "unknown-param",
        git(json!({"params": [{"name": "colour", "value": "red"}]})),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.params[0].name: class has no parameter 'colour'",
        ),
    );
    connector(
        "unknown-extension",
        git(json!({"addressExtensions": [{"name": "realm", "value": "http://r.test"}]})),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.addressExtensions[0].name: class has no address extension 'realm'",
        ),
    );
    connector(
        "missing-required-extension",
        json!({"connectorClassName": "m-ext", "address": addr, "params": [{"name": "org", "value": "o"}]}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "the class requires an address extension named 'realm'",
        ),
    );
    connector(
        "extension-same-as-address",
        json!({"connectorClassName": "m-ext", "address": addr, "params": [{"name": "org", "value": "o"}], "addressExtensions": [{"name": "realm", "value": addr}]}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.addressExtensions[0].value: is the same as spec.address",
        ),
    );
    connector(
        "missing-required-param",
        json!({"connectorClassName": "m-ext", "address": addr, "addressExtensions": [{"name": "realm", "value": "http://r.test"}]}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "the class requires a parameter named 'org'",
        ),
    );
    connector(
        "secret-for-class-without-auth",
        json!({"connectorClassName": "m-noauth", "address": addr, "auth": {"secretRef": {"name": "good"}}}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.auth.secretRef: the class has no auth types, so a Secret cannot be used",
        ),
    );
    connector(
        "unnamed-auth-of-several",
        json!({"connectorClassName": "m-multi", "address": addr, "auth": {"secretRef": {"name": "good"}}}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.auth.name: the class has several auth types; name one",
        ),
    );
    connector(
        "required-secret-missing-ref",
        json!({"connectorClassName": "m-multi", "address": addr, "auth": {"name": "basicAuth"}}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "InvalidSpec",
            "spec.auth.secretRef: auth type 'basicAuth' needs a Secret of type 'kubernetes.io/basic-auth'",
        ),
    );
    connector(
        "secret-missing",
        git(json!({"auth": {"secretRef": {"name": "absent"}}})),
        vec![],
        Cond(
            "SecretReady",
            "False",
            "SecretNotFound",
            "Secret 'malformed/absent' not found",
        ),
    );
    connector(
        "secret-wrong-type",
        git(json!({"auth": {"secretRef": {"name": "opaque"}}})),
        vec![secret_json(
            "opaque",
            "Opaque",
            json!({"username": USER, "password": PASSWORD}),
        )],
        Cond(
            "SecretReady",
            "False",
            "SecretInvalid",
            "Secret is of type 'Opaque' but auth type 'basicAuth' needs 'kubernetes.io/basic-auth'",
        ),
    );
    connector(
        "secret-missing-key",
        git(json!({"auth": {"secretRef": {"name": "no-password"}}})),
        vec![secret_json(
            "no-password",
            "kubernetes.io/basic-auth",
            json!({"username": USER}),
        )],
        Cond(
            "SecretReady",
            "False",
            "SecretInvalid",
            "Secret 'malformed/no-password': Secret has no key 'password'",
        ),
    );
    connector(
        "secret-empty-password",
        git(json!({"auth": {"secretRef": {"name": "empty-password"}}})),
        vec![basic("empty-password", USER, "")],
        Cond(
            "SecretReady",
            "False",
            "SecretInvalid",
            "Secret key 'password' is empty",
        ),
    );
    connector(
        "secret-binary-password",
        git(json!({"auth": {"secretRef": {"name": "binary"}}})),
        vec![
            json!({"metadata": {"name": "binary"}, "type": "kubernetes.io/basic-auth", "data": {"username": "YWxpY2U=", "password": "//79"}}),
        ],
        Cond(
            "SecretReady",
            "False",
            "SecretInvalid",
            "Secret key 'password' is not UTF-8 text",
        ),
    );
    connector(
        "secret-control-characters",
        json!({"connectorClassName": "k8s", "address": "https://127.0.0.1:1",
               "auth": {"secretRef": {"name": "crlf"}}}),
        vec![secret_json(
            "crlf",
            "connectors.io/bearer-token",
            json!({"token": "t\r\nX-Evil: 1"}),
        )],
        Cond(
            "SecretReady",
            "False",
            "SecretInvalid",
            "the rendered value of 'Authorization' is not a valid header value",
        ),
    );
    connector(
        "ca-secret-missing",
        git(json!({"caCertSecretRef": {"name": "no-ca"}})),
        vec![],
        Cond(
            "SecretReady",
            "False",
            "CACertInvalid",
            "caCertSecretRef: Secret 'malformed/no-ca' not found",
        ),
    );
    connector(
        "ca-secret-without-pem",
        git(json!({"caCertSecretRef": {"name": "not-pem"}})),
        vec![secret_json("not-pem", "Opaque", json!({"ca.crt": "hello"}))],
        Cond(
            "SecretReady",
            "False",
            "CACertInvalid",
            "holds no PEM certificate",
        ),
    );
    connector(
        "ca-secret-broken-pem",
        git(json!({"caCertSecretRef": {"name": "broken-pem"}})),
        vec![secret_json(
            "broken-pem",
            "Opaque",
            json!({"ca.crt": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}),
        )],
        Cond(
            "SecretReady",
            "False",
            "CACertInvalid",
            "no PEM certificate found",
        ),
    );
    connector(
        "repository-with-space",
        git(json!({"auth": {"params": [{"name": "repository", "value": "a b.git"}]}})),
        vec![],
        Cond(
            "LivenessReady",
            "False",
            "ProbeInvalid",
            "spec.livenessProbe.http.path: the rendered URL",
        ),
    );
    connector(
        "missing-repository-on-tool",
        git(json!({"auth": {"params": [{"name": "repository", "value": "nope.git"}]}})),
        vec![],
        Cond(
            "AuthReady",
            "False",
            "UnexpectedResponse",
            "HTTP 404 Not Found",
        ),
    );
    connector(
        "huge-password",
        git(json!({"auth": {"secretRef": {"name": "huge"}}})),
        vec![basic("huge", USER, &long(30_000))],
        Cond(
            "AuthReady",
            "False",
            "UnexpectedResponse",
            "HTTP 400 Bad Request",
        ),
    );
    connector(
        "probe-param-undeclared",
        json!({"connectorClassName": "m-probe-param", "address": addr}),
        vec![],
        Cond(
            "LivenessReady",
            "False",
            "ProbeInvalid",
            "uses parameter 'undeclared', which the class declares nowhere",
        ),
    );
    connector(
        "no-repository-there",
        json!({"connectorClassName": "git", "address": http_url(&anonymous), "auth": good_auth}),
        vec![],
        Cond(
            "LivenessReady",
            "False",
            "UnexpectedResponse",
            "HTTP 404 Not Found, expected 200, 401, 403",
        ),
    );
    connector(
        "anonymous-refused",
        json!({"connectorClassName": "git", "address": addr, "auth": {"params": [{"name": "repository", "value": "repo.git"}]}}),
        vec![],
        Cond(
            "AuthReady",
            "False",
            "AuthenticationFailed",
            "the tool wants credentials: set spec.auth.secretRef",
        ),
    );
    connector(
        "class-invalid-duplicate",
        json!({"connectorClassName": "m-dup", "address": addr}),
        vec![],
        Cond(
            "ConnectorClassReady",
            "False",
            "ConnectorClassInvalid",
            "spec.auth.types[1].name: 'basicAuth' appears twice",
        ),
    );

    // Classes: refused by the schema, or Ready=False naming the field.
    let mut class = |name: &'static str, spec: Value, expect: Expect| {
        cases.push(Case {
            name,
            object: class_json(name, spec),
            secrets: vec![],
            expect,
        });
    };
    let with = |patch: Value| {
        let mut s = basic_class_spec();
        merge(&mut s, patch);
        s
    };
    class(
        "m-bad-method",
        with(json!({"livenessProbe": {"http": {"path": "/", "method": "DELETE"}}})),
        Rejected("spec.livenessProbe.http.method"),
    );
    class(
        "m-bad-code",
        with(json!({"livenessProbe": {"http": {"path": "/", "successCodes": [42]}}})),
        Rejected("spec.livenessProbe.http.successCodes"),
    );
    class(
        "m-relative-path",
        with(json!({"livenessProbe": {"http": {"path": "healthz"}}})),
        Rejected("spec.livenessProbe.http.path"),
    );
    class(
        "m-ftp-scheme",
        with(json!({"address": {"schemes": ["ftp"]}})),
        Rejected("spec.address.schemes"),
    );
    class(
        "m-no-secret-type",
        json!({"auth": {"types": [{"name": "t"}]}}),
        Rejected("spec.auth.types.secretType"),
    );
    class(
        "m-huge-description",
        with(json!({"address": {"description": long(2000)}})),
        Rejected("spec.address.description"),
    );
    class(
        "m-dup",
        json!({"auth": {"types": [
            {"name": "basicAuth", "secretType": "kubernetes.io/basic-auth", "optional": true},
            {"name": "basicAuth", "secretType": "kubernetes.io/basic-auth", "optional": true}]}}),
        ClassInvalid("spec.auth.types[1].name: 'basicAuth' appears twice"),
    );
    class(
        "m-probe-for-unknown-auth",
        with(json!({"authProbes": [{"authName": "token", "probe": {"http": {"path": "/"}}}]})),
        ClassInvalid("spec.authProbes[0].authName: no auth type named 'token' in spec.auth.types"),
    );
    class(
        "m-two-injections",
        json!({"auth": {"types": [{"name": "t", "secretType": "Opaque", "injection": {"basic": {}, "bearer": {}}}]}}),
        ClassInvalid(
            "spec.auth.types[0].injection: injection rule must set exactly one of basic, bearer, header, query, registryToken, clientCertificate (it sets 2)",
        ),
    );
    class(
        "m-bad-header",
        json!({"auth": {"types": [{"name": "t", "secretType": "Opaque", "injection": {"header": {"name": "bad header", "value": "${secret.token}"}}}]}}),
        ClassInvalid(
            "spec.auth.types[0].injection: injection rule: 'bad header' is not a valid header name",
        ),
    );
    class(
        "m-bad-placeholder",
        with(json!({"livenessProbe": {"http": {"path": "/${oops}"}}})),
        ClassInvalid("spec.livenessProbe.http.path: placeholder '${oops}' must be scope.key"),
    );
    class(
        "m-bad-host-pattern",
        with(json!({"address": {"hosts": ["*.*.corp"]}})),
        ClassInvalid("spec.address.hosts[0]: '*.*.corp' is not a host or a '*.suffix' pattern"),
    );
    // Valid classes the Connectors above contradict.
    class(
        "m-corp-hosts",
        with(json!({"address": {"hosts": ["*.corp"]}})),
        ClassInvalid(""),
    );
    class(
        "m-https-only",
        with(json!({"address": {"schemes": ["https"]}})),
        ClassInvalid(""),
    );
    class(
        "m-noauth",
        json!({"livenessProbe": {"http": {"path": "/"}}}),
        ClassInvalid(""),
    );
    class(
        "m-multi",
        json!({"auth": {"types": [
            {"name": "basicAuth", "secretType": "kubernetes.io/basic-auth"},
            {"name": "token", "secretType": "Opaque", "params": [{"name": "token"}]}]}}),
        ClassInvalid(""),
    );
    class(
        "m-ext",
        json!({"addressExtensions": [{"name": "realm"}], "params": [{"name": "org"}]}),
        ClassInvalid(""),
    );
    class(
        "m-probe-param",
        json!({"livenessProbe": {"http": {"path": "/${params.undeclared}"}}}),
        ClassInvalid(""),
    );

    // The valid helpers must not count as malformed.
    let malformed = cases
        .iter()
        .filter(|c| !matches!(c.expect, ClassInvalid("")))
        .count();
    assert!(malformed >= 50, "only {malformed} malformed objects");

    // Every object at once, classes first; the shared good Secret too.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut all_secrets: Vec<Value> = vec![basic("good", USER, PASSWORD)];
    all_secrets.extend(cases.iter().flat_map(|c| c.secrets.clone()));
    for s in all_secrets {
        let s: Secret = serde_json::from_value(s).expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("create Secret");
    }
    let class_ar = ApiResource::erase::<ConnectorClass>(&());
    let connector_ar = connector_resource();
    let mut rejected = 0;
    cases.sort_by_key(|c| c.object["kind"] != "ConnectorClass");
    for case in &cases {
        let is_class = case.object["kind"] == "ConnectorClass";
        let result = if is_class {
            create(&client, None, &class_ar, case.object.clone()).await
        } else {
            create(&client, Some(ns), &connector_ar, case.object.clone()).await
        };
        match (&case.expect, result) {
            (Rejected(field), Err(kube::Error::Api(e))) => {
                assert!(
                    (e.code == 422 || e.code == 400) && e.message.contains(field),
                    "{}: refused, but the answer does not name {field}: {} {}",
                    case.name,
                    e.code,
                    e.message
                );
                rejected += 1;
            }
            (Rejected(field), other) => {
                panic!(
                    "{}: expected a refusal naming {field}, got {other:?}",
                    case.name
                )
            }
            (_, Err(e)) => panic!("{}: refused: {e}", case.name),
            (_, Ok(())) => {}
        }
    }
    // And the good one, after all the others.
    create_connector(&client, ns, "good-after-fifty", git(json!({}))).await;
    let (_, took) = wait_ready(&client, ns, "good-after-fifty").await;
    eprintln!(
        "{malformed} malformed objects ({rejected} refused by the API server); the good Connector was Ready after {} ms",
        took.as_millis()
    );

    let classes: Api<ConnectorClass> = Api::all(client.clone());
    for case in &cases {
        match &case.expect {
            Rejected(_) => {}
            Cond(type_, status, reason, text) => {
                wait_connector(
                    &client,
                    ns,
                    case.name,
                    READY_WITHIN,
                    &format!("{type_}={status} {reason}"),
                    |c| {
                        condition(c, type_).is_some_and(|x| {
                            x.status == *status && x.reason == *reason && x.message.contains(text)
                        }) && condition(c, types::READY).is_some_and(|r| !r.is_true())
                    },
                )
                .await;
            }
            ClassInvalid(text) => {
                let started = Instant::now();
                loop {
                    let class = classes.get(case.name).await.expect("class");
                    let ready = class
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                        .cloned();
                    let ok = match (text.is_empty(), &ready) {
                        (true, Some(r)) => r.is_true(),
                        (false, Some(r)) => {
                            r.status == "False" && r.reason == "Invalid" && r.message.contains(text)
                        }
                        _ => false,
                    };
                    if ok {
                        break;
                    }
                    assert!(
                        started.elapsed() < READY_WITHIN,
                        "class {}: expected {}, got {ready:?}",
                        case.name,
                        if text.is_empty() {
                            "Ready=True".to_owned()
                        } else {
                            format!("Ready=False naming '{text}'")
                        }
                    );
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }
    with_controller(|c| {
        assert!(c.running(), "the controller exited; log:\n{}", c.log());
        assert_eq!(c.pid(), env().controller_pid, "the controller restarted");
        assert_eq!(c.readyz(), Some(200));
        let log = c.log();
        assert!(!log.contains("panicked"), "the controller panicked:\n{log}");
        assert!(
            !log.contains("hunter2"),
            "a password from an address reached the log"
        );
    });
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

// ---------------------------------------------------------------------------------------------
// Two replicas, leader election, deletion and shutdown (a server of their own: they stop and
// kill controllers, and count what the controller keeps)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_failover_deletion_and_shutdown() {
    let kube = KubeApiServer::start();
    let kubeconfig = controller::install(&kube);
    let args = [
        "--probe-timeout",
        PROBE_TIMEOUT,
        "--lease-duration",
        "3",
        "--lease-retry",
        "0.5",
        "--retry-interval",
        "1",
    ];
    let mut first = ControllerProcess::start(&kubeconfig, "info", &args);
    let lead = |c: &ControllerProcess| c.metric("connectors_controller_leader") == Some(1.0);
    assert!(
        connectors_tests::wait_until(Duration::from_secs(10), || lead(&first)),
        "the first replica did not lead:\n{}",
        first.log()
    );
    let mut second = ControllerProcess::start(&kubeconfig, "info", &args);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lead(&first) && !lead(&second), "both or neither lead");
    assert_eq!(
        second.readyz(),
        Some(200),
        "a standby replica is ready to take over"
    );

    let client = client_for(&kube.admin_kubeconfig).await;
    let ns = "replicas";
    namespace(&client, ns).await;
    let server = git_server();
    basic_secret(&client, ns, "git-creds", PASSWORD).await;
    create_connector(
        &client,
        ns,
        "one",
        git_spec(&http_url(&server), "git-creds"),
    )
    .await;
    wait_ready_on(&client, ns, "one", &first).await;
    let reconciles = |c: &ControllerProcess| {
        c.metrics_text()
            .lines()
            .filter(|l| l.starts_with("connectors_controller_reconciles_total{kind=\"connector\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let tracked = |c: &ControllerProcess| c.metric("connectors_controller_tracked_connectors");
    assert_eq!(tracked(&first), Some(1.0));
    assert_eq!(reconciles(&second), 0.0, "the standby reconciled");

    // Deleting a Connector leaves nothing behind: no object, no state, no more Events or
    // reconciles. A second Connector, never Ready, keeps being retried every second meanwhile.
    create_connector(
        &client,
        ns,
        "down",
        git_spec(&format!("http://127.0.0.1:{}", free_port()), "git-creds"),
    )
    .await;
    let api: Api<Connector> = Api::namespaced(client.clone(), ns);
    wait_on(&client, ns, "down", &first, |c| {
        is(c, types::LIVENESS_READY, "False", "ConnectionFailed")
    })
    .await;
    // A Connector that is not Ready is checked again periodically (here every second).
    let (probe_time, checked) = {
        let c = api.get("down").await.expect("get");
        let t = condition(&c, types::LIVENESS_READY).and_then(|x| x.last_probe_time.clone());
        (t, reconciles(&first))
    };
    wait_on(&client, ns, "down", &first, |c| {
        condition(c, types::LIVENESS_READY).and_then(|x| x.last_probe_time.clone()) != probe_time
    })
    .await;
    assert!(reconciles(&first) > checked, "no periodic re-check");
    let events_before: BTreeMap<&str, usize> = [
        ("one", events_settled(&client, ns, "one", 1).await.len()),
        ("down", events_settled(&client, ns, "down", 1).await.len()),
    ]
    .into();
    for name in ["one", "down"] {
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    assert!(
        connectors_tests::wait_until(Duration::from_secs(5), || tracked(&first) == Some(0.0)),
        "the controller still tracks deleted Connectors: {:?}",
        tracked(&first)
    );
    // A check that was running at the deletion may still finish (within the probe timeout).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after_delete = reconciles(&first);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        reconciles(&first),
        after_delete,
        "deleted Connectors are still reconciled"
    );
    for name in ["one", "down"] {
        assert!(
            api.get_opt(name).await.expect("get").is_none(),
            "{name} came back"
        );
        assert_eq!(
            events_about(&client, ns, name).await.len(),
            events_before[name],
            "Events about the deleted {name} keep coming"
        );
    }

    // Failover: the leader dies without releasing the Lease; the standby takes over once the
    // Lease expires, and reconciles.
    let killed_at = Instant::now();
    first.kill();
    assert!(
        connectors_tests::wait_until(Duration::from_secs(10), || lead(&second)),
        "the standby did not take over:\n{}",
        second.log()
    );
    eprintln!("failover took {} ms", killed_at.elapsed().as_millis());
    create_connector(
        &client,
        ns,
        "two",
        git_spec(&http_url(&server), "git-creds"),
    )
    .await;
    wait_ready_on(&client, ns, "two", &second).await;

    // Graceful shutdown: SIGTERM, running checks finish, the Lease is released, exit 0.
    let status = second.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean exit ({status:?}):\n{}",
        second.log()
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "connectors-system");
    let lease = leases.get("connectors-controller").await.expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "the Lease was not released"
    );
    assert!(second.log().contains("Lease released"), "{}", second.log());
}

async fn wait_ready_on(client: &Client, ns: &str, name: &str, c: &ControllerProcess) {
    wait_on(client, ns, name, c, ready).await;
}

/// Like [`wait_connector`], with a given controller's log in the failure message.
async fn wait_on(
    client: &Client,
    ns: &str,
    name: &str,
    c: &ControllerProcess,
    check: impl Fn(&Connector) -> bool,
) {
    let api: Api<Connector> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let obj = api.get_opt(name).await.expect("get");
        if obj.as_ref().is_some_and(&check) {
            return;
        }
        assert!(
            started.elapsed() < READY_WITHIN,
            "{ns}/{name}: not as expected within {READY_WITHIN:?}:\n{}\nlog:\n{}",
            obj.as_ref().map(show).unwrap_or_default(),
            tail(&c.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn oci_token_registry_auth_probe_does_the_token_exchange() {
    use connectors_tests::registry::{Registry, RegistryAuth, RegistryOptions};
    use connectors_tests::token_issuer::{Grant, IssuerOptions, TokenIssuer};
    env();
    let client = admin().await;
    let ns = "oci-token";
    namespace(&client, ns).await;
    let ca = TestCa::new("registry CA");
    let issuer = TokenIssuer::start(IssuerOptions {
        listen: None,
        tls: (&ca, vec!["127.0.0.1"]),
        service: "registry.test",
        users: vec![(USER, PASSWORD, Grant::All)],
        anonymous: None,
        expires_in: 300,
    });
    let realm = format!("https://127.0.0.1:{}", issuer.addr.port());
    let root_cert = issuer.root_cert();
    let registry = Registry::start(RegistryOptions {
        listen: None,
        tls: (&ca, vec!["127.0.0.1"]),
        auth: RegistryAuth::Token {
            realm: format!("{realm}/token"),
            service: "registry.test",
            root_cert: &root_cert,
        },
    });
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for s in [
        json!({"metadata": {"name": "login"}, "type": "cpaas.io/distribution-registry-token",
               "stringData": {"username": USER, "password": PASSWORD}}),
        json!({"metadata": {"name": "bad-login"}, "type": "connectors.io/registry-token",
               "stringData": {"username": USER, "password": WRONG}}),
        json!({"metadata": {"name": "registry-ca"}, "stringData": {"ca.crt": ca.cert_pem}}),
    ] {
        let s: Secret = serde_json::from_value(s).expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("create Secret");
    }
    let spec = |secret: &str| {
        json!({"connectorClassName": "oci", "address": registry.url("127.0.0.1"),
               "addressExtensions": [{"name": "tokenRealm", "value": realm}],
               "auth": {"name": "tokenAuth", "secretRef": {"name": secret}},
               "caCertSecretRef": {"name": "registry-ca"}})
    };
    create_connector(&client, ns, "registry", spec("login")).await;
    create_connector(&client, ns, "bad", spec("bad-login")).await;
    wait_ready(&client, ns, "registry").await;
    assert!(
        issuer
            .issued()
            .iter()
            .any(|i| i.user.as_deref() == Some(USER) && i.status == 200),
        "the probe got no token: {:?}",
        issuer.issued()
    );
    let (c, _) = wait_connector(&client, ns, "bad", READY_WITHIN, "AuthReady=False", |c| {
        condition(c, types::AUTH_READY).is_some_and(|a| a.status == "False")
    })
    .await;
    let auth = condition(&c, types::AUTH_READY).expect("AuthReady");
    assert!(
        auth.message.contains("refused the credentials") && !auth.reason.is_empty(),
        "{}",
        show(&c)
    );
    assert!(
        !controller_log().contains(WRONG),
        "a password reached the log"
    );
}
