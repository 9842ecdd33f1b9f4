//! The controller's agent API (`crd::node_api`) against a real kube-apiserver (v1.20, etcd,
//! RBAC): the controller binary runs under its own ServiceAccount (`deploy/rbac.yaml`), agents
//! are Pod objects bound to nodes (`spec.nodeName`; there is no kubelet) calling with tokens
//! bound to those pods (TokenRequest API), over HTTPS with the cluster roots as their only
//! trust, as a real agent does.
//!
//! One API server and one controller serve the binary; each test uses nodes and namespaces of
//! its own. The pod webhook is routed to the controller process (the bare API server has no
//! Service routing), so the labelled pods created here are mutated as in a cluster.

mod ca_check;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use connectors_tests::controller::{self, ControllerProcess};
use connectors_tests::controller_https::{self as ch, Http, HttpsCaller, Reply};
use connectors_tests::kube::{self as kt, KubeApiServer};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

const CREDENTIALS: &str = "/agent/v1/credentials";
const INTERMEDIATE: &str = "/agent/v1/intermediate";
const PASSWORD: &str = "s3cret-password-7c1";

struct Shared {
    controller: ControllerProcess,
    kube: KubeApiServer,
}

static SHARED: Mutex<Option<Shared>> = Mutex::new(None);
static ENV: OnceLock<Env> = OnceLock::new();

struct Env {
    admin_kubeconfig: PathBuf,
    /// The cluster roots, as the agents' namespace's connectors-ca-bundle holds them.
    roots_pem: String,
    https: std::net::SocketAddr,
}

extern "C" fn stop_shared() {
    if let Ok(mut shared) = SHARED.lock() {
        shared.take();
    }
}

fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let kube = KubeApiServer::start();
        let kubeconfig = controller::install(&kube);
        let c = ControllerProcess::start(
            &kubeconfig,
            "info,connectors_controller=debug",
            &["--tls-san", "127.0.0.1"],
        );
        assert!(
            connectors_tests::wait_until(Duration::from_secs(20), || c
                .metric("connectors_controller_leader")
                == Some(1.0)),
            "the controller did not lead; log:\n{}",
            c.log()
        );
        // The agents read the roots from the ConfigMap the leader writes in every namespace.
        let mut roots_pem = String::new();
        let found = connectors_tests::wait_until(Duration::from_secs(20), || {
            let out = connectors_tests::run(kube.kubectl().args([
                "get",
                "configmap",
                "-n",
                ch::AGENT_NAMESPACE,
                "connectors-ca-bundle",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ]));
            roots_pem = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success() && roots_pem.contains("BEGIN CERTIFICATE")
        });
        assert!(
            found,
            "no connectors-ca-bundle in {}; log:\n{}",
            ch::AGENT_NAMESPACE,
            c.log()
        );
        // Labelled pods are created below: the webhook must reach this controller.
        ch::route_webhook_to(&kube, c.https, &roots_pem);
        let env = Env {
            admin_kubeconfig: kube.admin_kubeconfig.clone(),
            roots_pem,
            https: c.https,
        };
        *SHARED.lock().expect("shared") = Some(Shared {
            controller: c,
            kube,
        });
        kt::at_exit(stop_shared);
        env
    })
}

fn with_kube<T>(f: impl FnOnce(&KubeApiServer) -> T) -> T {
    let shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    f(&shared.as_ref().expect("shared").kube)
}

fn controller_log() -> String {
    let shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    shared.as_ref().expect("shared").controller.log()
}

fn controller_metrics() -> String {
    let shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    shared.as_ref().expect("shared").controller.metrics_text()
}

async fn admin() -> Client {
    let kc = Kubeconfig::read_from(&env().admin_kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn caller() -> HttpsCaller {
    HttpsCaller::new(env().https, &env().roots_pem)
}

fn ask(caller: &HttpsCaller, token: &str, connectors: &[(&str, &str)]) -> Reply {
    let body = json!({"connectors": connectors
        .iter()
        .map(|(ns, name)| json!({"namespace": ns, "name": name}))
        .collect::<Vec<_>>()});
    caller.post(CREDENTIALS, Some(token), &body.to_string())
}

/// The item for `ns/name` of a credentials answer.
fn item<'a>(answer: &'a Value, ns: &str, name: &str) -> &'a Value {
    answer["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|i| i["namespace"] == ns && i["name"] == name)
        })
        .unwrap_or_else(|| panic!("no item {ns}/{name} in {answer}"))
}

fn yaml_namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

fn connector_yaml(ns: &str, name: &str, secret: &str, annotations: &str) -> String {
    format!(
        r#"apiVersion: connectors.io/v1alpha1
kind: Connector
metadata:
  name: {name}
  namespace: {ns}
  annotations: {{{annotations}}}
spec:
  connectorClassName: git
  address: https://git-{name}.example
  auth: {{secretRef: {{name: {secret}}}}}
  caCertSecretRef: {{name: {name}-ca}}
"#
    )
}

fn basic_secret_yaml(ns: &str, name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: {ns}}}
type: kubernetes.io/basic-auth
stringData: {{username: builder, password: "{PASSWORD}"}}
"#
    )
}

/// A Role allowing `get` on the named Connectors of `ns`, bound to ServiceAccount `sa_ns/sa`.
fn grant_yaml(ns: &str, role: &str, connectors: &[&str], sa_ns: &str, sa: &str) -> String {
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {role}, namespace: {ns}}}
rules:
  - apiGroups: [connectors.io]
    resources: [connectors]
    resourceNames: [{names}]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {role}, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {role}}}
subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {sa_ns}}}]
"#,
        names = connectors.join(", ")
    )
}

/// Waits (the controller's pod cache follows a watch) until `check` holds for the answer.
fn ask_until(
    caller: &HttpsCaller,
    token: &str,
    connectors: &[(&str, &str)],
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let reply = ask(caller, token, connectors);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let answer = reply.json();
        if check(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not as expected within 10 s: {answer:#}\nlog:\n{}",
            controller_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const INJECT: (&str, &str) = ("connectors.io/inject", "true");

#[tokio::test]
async fn a_bound_token_review_names_the_pod_on_this_api_server() {
    env();
    let (uid, token) = with_kube(|k| ch::agent(k, "agent-extras", "n0"));
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            audiences: Some(vec![ch::AGENT_AUDIENCE.to_owned()]),
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(admin().await)
        .create(&PostParams::default(), &review)
        .await
        .expect("TokenReview");
    let status = answer.status.expect("status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:connectors-system:connectors-agent")
    );
    let extra = user.extra.expect("extras of a bound token");
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        ["agent-extras"]
    );
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], [uid]);
}

#[tokio::test]
async fn an_agent_gets_only_what_a_labelled_pod_on_its_node_may_use() {
    env();
    let client = admin().await;
    let (token_n1, token_n2, token_n3) = with_kube(|k| {
        for ns in ["cred-a", "cred-b"] {
            ch::apply(k, &yaml_namespace(ns));
        }
        for (ns, sa) in [
            ("cred-a", "builder"),
            ("cred-a", "nobody"),
            ("cred-b", "builder"),
        ] {
            ch::service_account(k, ns, sa);
        }
        ch::apply(k, &basic_secret_yaml("cred-a", "git-creds"));
        ch::apply(
            k,
            "apiVersion: v1\nkind: Secret\nmetadata: {name: git-ca, namespace: cred-a}\nstringData: {ca.crt: not-checked-here}\n",
        );
        ch::apply(k, &basic_secret_yaml("cred-b", "other-creds"));
        ch::apply(k, &connector_yaml("cred-a", "git", "git-creds", ""));
        ch::apply(
            k,
            &connector_yaml(
                "cred-a",
                "shared",
                "git-creds",
                "connectors.io/shared-with: cred-b",
            ),
        );
        ch::apply(k, &connector_yaml("cred-b", "other", "other-creds", ""));
        // cred-a/builder may get cred-a/git; cred-b/builder may get cred-a/shared and
        // cred-a/git (the namespace rule still keeps it from git, which is not shared).
        ch::apply(
            k,
            &grant_yaml("cred-a", "use-git", &["git"], "cred-a", "builder"),
        );
        ch::apply(
            k,
            &grant_yaml(
                "cred-a",
                "b-uses-shared",
                &["shared", "git"],
                "cred-b",
                "builder",
            ),
        );
        // n1: a labelled pod that may use git, a labelled one that may use nothing, and an
        // unlabelled one with every right (it does not count).
        ch::create_pod(k, "cred-a", "w1", "builder", "n1", &[INJECT]);
        ch::create_pod(k, "cred-a", "w2", "nobody", "n1", &[INJECT]);
        // n2: a labelled pod of cred-b.
        ch::create_pod(k, "cred-b", "w3", "builder", "n2", &[INJECT]);
        // n3: unlabelled only, and a labelled pod that has finished.
        ch::create_pod(k, "cred-a", "w4", "builder", "n3", &[]);
        ch::create_pod(k, "cred-a", "w5", "builder", "n3", &[INJECT]);
        let (_, t1) = ch::agent(k, "agent-n1", "n1");
        let (_, t2) = ch::agent(k, "agent-n2", "n2");
        let (_, t3) = ch::agent(k, "agent-n3", "n3");
        (t1, t2, t3)
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), "cred-a");
    pods.patch_status(
        "w5",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .expect("finish w5");

    let caller = caller();
    let all = [
        ("cred-a", "git"),
        ("cred-a", "shared"),
        ("cred-b", "other"),
        ("cred-a", "missing"),
    ];
    // n1: git (w1 may), not shared (w1 may not get it, w2 neither), not cred-b's (namespace).
    let answer = ask_until(&caller, &token_n1, &all, |a| {
        item(a, "cred-a", "git")["allowed"] == true
    });
    let git = item(&answer, "cred-a", "git");
    let secrets = git["secrets"].as_array().expect("secrets");
    let names: Vec<&str> = secrets.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["git-creds", "git-ca"], "{git:#}");
    let creds = &secrets[0];
    assert_eq!(creds["type"], "kubernetes.io/basic-auth");
    assert!(
        !creds["resourceVersion"].as_str().unwrap_or("").is_empty(),
        "{creds}"
    );
    let password: k8s_openapi::ByteString =
        serde_json::from_value(creds["data"]["password"].clone()).expect("base64 data");
    assert_eq!(password.0, PASSWORD.as_bytes());
    assert!(
        answer["caGeneration"]
            .as_str()
            .is_some_and(|g| !g.is_empty())
    );

    let shared = item(&answer, "cred-a", "shared");
    assert_eq!(shared["allowed"], false);
    assert!(shared.get("secrets").is_none(), "{shared}");
    let reason = shared["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("ServiceAccount cred-a/builder may not get Connector cred-a/shared")
            && reason.contains("bind a Role with verbs [get]"),
        "{reason}"
    );
    let other = item(&answer, "cred-b", "other");
    assert_eq!(other["allowed"], false);
    let reason = other["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("not shared with namespace 'cred-a'")
            && reason.contains("connectors.io/shared-with: \"cred-a\""),
        "{reason}"
    );
    let missing = item(&answer, "cred-a", "missing");
    assert_eq!(missing["reason"], "Connector cred-a/missing does not exist");
    assert_eq!(
        answer["items"].as_array().map(Vec::len),
        Some(4),
        "one item per Connector asked, in order"
    );
    assert_eq!(answer["items"][0]["name"], "git");
    assert_eq!(answer["items"][3]["name"], "missing");

    // n2: shared by annotation and allowed by RBAC; git is refused by the namespace rule even
    // though RBAC would allow it.
    let answer = ask_until(&caller, &token_n2, &all, |a| {
        item(a, "cred-a", "shared")["allowed"] == true
    });
    let names: Vec<&str> = item(&answer, "cred-a", "shared")["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["git-creds"],
        "a Secret that does not exist is left out"
    );
    let git = item(&answer, "cred-a", "git");
    assert_eq!(git["allowed"], false);
    assert!(
        git["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not shared with namespace 'cred-b'")),
        "{git}"
    );
    assert_eq!(item(&answer, "cred-b", "other")["allowed"], false);

    // n3: an unlabelled pod and a finished one give nothing.
    let answer = ask_until(&caller, &token_n3, &all, |a| {
        item(a, "cred-a", "git")["reason"]
            .as_str()
            .is_some_and(|r| {
                r.contains("no pod labelled connectors.io/inject: \"true\" runs on node n3")
            })
    });
    assert!(
        answer["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["allowed"] == false),
        "{answer:#}"
    );

    // When the only labelled pod leaves n2, its agent loses the Connector.
    Api::<Pod>::namespaced(client.clone(), "cred-b")
        .delete("w3", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete w3");
    ask_until(&caller, &token_n2, &[("cred-a", "shared")], |a| {
        item(a, "cred-a", "shared")["allowed"] == false
    });

    // HTTP/1.1 answers the same as h2.
    let h1 = caller.post_with(
        Http::V1,
        CREDENTIALS,
        Some(&token_n1),
        &json!({"connectors": [{"namespace": "cred-a", "name": "git"}]}).to_string(),
    );
    assert_eq!(
        (h1.status, h1.http_version.as_str()),
        (200, "1.1"),
        "{}",
        h1.body
    );
    assert_eq!(item(&h1.json(), "cred-a", "git")["allowed"], true);
    let h2 = ask(&caller, &token_n1, &[("cred-a", "git")]);
    assert_eq!(h2.http_version, "2");

    // Decisions are counted; credentials never reach the log.
    let metrics = controller_metrics();
    for rule in ["access", "rbac", "namespace", "no-pod", "not-found"] {
        assert!(
            metrics.lines().any(|l| l
                .starts_with("connectors_controller_credential_decisions_total")
                && l.contains(&format!("rule=\"{rule}\""))),
            "no decision counted for {rule}:\n{metrics}"
        );
    }
    let log = controller_log();
    assert!(!log.contains(PASSWORD), "the password is in the log");
    assert!(!log.contains(&token_n1), "a token is in the log");
}

#[tokio::test]
async fn only_a_pod_bound_agent_token_is_accepted() {
    env();
    let (agent_token, unbound, wrong_audience, other_sa, unscheduled) = with_kube(|k| {
        let (uid, agent_token) = ch::agent(k, "agent-n4", "n4");
        let _ = &uid;
        let unbound = ch::token(
            k,
            ch::AGENT_NAMESPACE,
            ch::AGENT_SERVICE_ACCOUNT,
            &[ch::AGENT_AUDIENCE],
            None,
        );
        let wrong_audience = ch::token(
            k,
            ch::AGENT_NAMESPACE,
            ch::AGENT_SERVICE_ACCOUNT,
            &["https://kubernetes.default.svc"],
            Some(("agent-n4", &uid)),
        );
        ch::service_account(k, ch::AGENT_NAMESPACE, "impostor");
        let impostor_uid =
            ch::create_pod(k, ch::AGENT_NAMESPACE, "impostor-n4", "impostor", "n4", &[]);
        let other_sa = ch::token(
            k,
            ch::AGENT_NAMESPACE,
            "impostor",
            &[ch::AGENT_AUDIENCE],
            Some(("impostor-n4", &impostor_uid)),
        );
        // An agent pod that no node runs (created without spec.nodeName).
        ch::apply(
            k,
            r#"apiVersion: v1
kind: Pod
metadata: {name: agent-nowhere, namespace: connectors-system}
spec:
  serviceAccountName: connectors-agent
  automountServiceAccountToken: false
  containers: [{name: main, image: "kn.local/tools:1"}]
"#,
        );
        let nowhere_uid = ch::pod_uid(k, ch::AGENT_NAMESPACE, "agent-nowhere");
        let unscheduled = ch::token(
            k,
            ch::AGENT_NAMESPACE,
            ch::AGENT_SERVICE_ACCOUNT,
            &[ch::AGENT_AUDIENCE],
            Some(("agent-nowhere", &nowhere_uid)),
        );
        (agent_token, unbound, wrong_audience, other_sa, unscheduled)
    });
    let caller = caller();
    let body = json!({"connectors": []}).to_string();
    let mut replies = Vec::new();
    for path in [CREDENTIALS, INTERMEDIATE] {
        let r = caller.post(path, None, &body);
        assert_eq!(r.status, 401, "{path} without a token: {}", r.body);
        assert!(
            r.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("no bearer token")),
            "{}",
            r.body
        );
    }
    let r = caller.post(CREDENTIALS, Some("not-a-token"), &body);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = caller.post(CREDENTIALS, Some(&wrong_audience), &body);
    assert_eq!(r.status, 401, "another audience: {}", r.body);
    assert!(r.body.contains("connectors.io/agent"), "{}", r.body);
    replies.push(r);
    let r = caller.post(CREDENTIALS, Some(&unbound), &body);
    assert_eq!(r.status, 403, "not bound to a pod: {}", r.body);
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("not bound to a pod")),
        "{}",
        r.body
    );
    replies.push(r);
    let r = caller.post(INTERMEDIATE, Some(&other_sa), &body);
    assert_eq!(r.status, 403, "another ServiceAccount: {}", r.body);
    assert!(
        r.body
            .contains("system:serviceaccount:connectors-system:impostor")
            && r.body.contains("not the agents' ServiceAccount"),
        "{}",
        r.body
    );
    replies.push(r);
    let r = caller.post(CREDENTIALS, Some(&unscheduled), &body);
    assert_eq!(r.status, 403, "an agent pod on no node: {}", r.body);
    assert!(r.body.contains("is not running on a node"), "{}", r.body);
    replies.push(r);
    for r in &replies {
        for t in [&unbound, &other_sa, &wrong_audience, &unscheduled] {
            assert!(
                !r.body.contains(t.as_str()),
                "an answer quotes a token: {}",
                r.status
            );
        }
    }
    let r = caller.post(CREDENTIALS, Some(&agent_token), &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["items"], json!([]));
    let r = caller.post(CREDENTIALS, Some(&agent_token), "{not json");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["message"].is_string());
    let metrics = controller_metrics();
    assert!(
        metrics.contains("connectors_controller_token_reviews_total{result=\"rejected\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_intermediate_is_a_path_length_zero_ca_for_the_node_that_chains_to_the_root() {
    env();
    let (_, token) = with_kube(|k| ch::agent(k, "agent-n5", "n5"));
    let (key, csr) = ca_check::agent_csr();
    let caller = caller();
    let r = caller.post(
        INTERMEDIATE,
        Some(&token),
        &json!({"csrPem": csr}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    let pem = answer["certificatePem"].as_str().expect("certificatePem");
    let inter = ca_check::certs(pem).remove(0);
    let roots = ca_check::certs(answer["rootsPem"].as_str().expect("rootsPem"));
    assert_eq!(
        roots,
        ca_check::certs(&env().roots_pem),
        "the roots are those of the bundle"
    );
    assert_eq!(ca_check::basic_constraints(&inter), (true, Some(0)));
    assert_eq!(ca_check::ca_key_usages(&inter), (true, true, true));
    let subject = ca_check::subject(&inter);
    assert!(subject.contains("node n5"), "{subject}");
    assert!(
        !subject.contains("own idea"),
        "the CSR's subject is ignored: {subject}"
    );
    assert!(
        answer["caGeneration"]
            .as_str()
            .is_some_and(|g| !g.is_empty())
    );
    let not_after: k8s_openapi::jiff::Timestamp = answer["notAfter"]
        .as_str()
        .expect("notAfter")
        .parse()
        .expect("RFC 3339");
    let left = not_after.as_second() - i64::try_from(ca_check::unix_now()).expect("now");
    assert!(
        (86_000..=86_400).contains(&left),
        "valid {left} s, not 24 h"
    );

    // A leaf the agent signs chains to the root through it; a CA under it does not.
    let leaf = ca_check::leaf_signed_by(pem, &key, "git.corp");
    ca_check::verify(&roots, &leaf, std::slice::from_ref(&inter)).expect("chain to the root");
    assert!(
        ca_check::verify(&roots, &leaf, &[]).is_err(),
        "the leaf verified without its intermediate"
    );
    let sub_key = rcgen::KeyPair::generate().expect("key");
    let mut sub = rcgen::CertificateParams::default();
    sub.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    sub.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let agent_issuer = rcgen::Issuer::from_ca_cert_pem(pem, &key).expect("issuer");
    let sub = sub.signed_by(&sub_key, &agent_issuer).expect("sub CA");
    let deep = ca_check::leaf_signed_by(&sub.pem(), &sub_key, "git.corp");
    assert!(
        ca_check::verify(&roots, &deep, &[sub.der().clone(), inter.clone()]).is_err(),
        "a CA under the intermediate verified (path length 0 not enforced)"
    );

    // A bad CSR is the agent's fault.
    let r = caller.post(
        INTERMEDIATE,
        Some(&token),
        &json!({"csrPem": "garbage"}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // The controller's own certificate (the one curl just checked) names the Service.
    let bundle: ConfigMap = Api::namespaced(admin().await, "default")
        .get("connectors-ca-bundle")
        .await
        .expect("the bundle in another namespace too");
    let data = bundle.data.expect("data");
    assert_eq!(ca_check::certs(&data["ca.crt"]), roots);
    assert!(data["ca-bundle.crt"].ends_with(&data["ca.crt"]));
}
