//! The cluster CA against a real kube-apiserver (v1.20, etcd, RBAC), with the controller
//! binary under its own ServiceAccount (`deploy/rbac.yaml`): two replicas racing at first
//! start make one CA; a rotation asked for with the Secret's annotation publishes the new root
//! first, keeps signing with the old one for the propagation delay, then signs with the new one
//! (the generation agents follow changes then), and drops the old root once nothing it signed is
//! valid; a root is rotated by itself when a third of its life is left. Each test has a server
//! of its own (each starts from no CA).

mod ca_check;

use std::path::Path;
use std::time::{Duration, Instant};

use connectors_tests::controller::{self, ControllerProcess};
use connectors_tests::controller_https::{self as ch, HttpsCaller};
use connectors_tests::kube::KubeApiServer;
use connectors_tests::{run_ok, wait_until};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

const NS: &str = "connectors-system";
const INTERMEDIATE: &str = "/agent/v1/intermediate";

async fn admin(kube: &KubeApiServer) -> Client {
    let kc = Kubeconfig::read_from(&kube.admin_kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// `(tls.crt, previous.crt, annotations)` of the CA Secret.
async fn ca_secret(client: &Client) -> Option<(String, Option<String>, Value)> {
    let s: Secret = Api::namespaced(client.clone(), NS)
        .get_opt("connectors-ca")
        .await
        .expect("get the CA Secret")?;
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = s.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    assert!(text("tls.key").is_some(), "no tls.key");
    Some((
        text("tls.crt").expect("tls.crt"),
        text("previous.crt"),
        serde_json::to_value(s.metadata.annotations.unwrap_or_default()).expect("annotations"),
    ))
}

async fn bundle_roots(client: &Client, ns: &str) -> Option<String> {
    let cm: ConfigMap = Api::namespaced(client.clone(), ns)
        .get_opt("connectors-ca-bundle")
        .await
        .expect("get the bundle")?;
    cm.data.and_then(|d| d.get("ca.crt").cloned())
}

/// Asks for an intermediate: `(certificate, roots, generation, notAfter as Unix seconds)`.
fn intermediate(
    caller: &HttpsCaller,
    token: &str,
    csr: &str,
) -> (
    CertificateDer<'static>,
    Vec<CertificateDer<'static>>,
    String,
    i64,
) {
    let r = caller.post(
        INTERMEDIATE,
        Some(token),
        &json!({"csrPem": csr}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let cert = ca_check::certs(v["certificatePem"].as_str().expect("certificatePem")).remove(0);
    let roots = ca_check::certs(v["rootsPem"].as_str().expect("rootsPem"));
    let not_after: k8s_openapi::jiff::Timestamp = v["notAfter"]
        .as_str()
        .expect("notAfter")
        .parse()
        .expect("RFC 3339");
    (
        cert,
        roots,
        v["caGeneration"].as_str().expect("caGeneration").to_owned(),
        not_after.as_second(),
    )
}

fn one(pem: &str) -> CertificateDer<'static> {
    let mut c = ca_check::certs(pem);
    assert_eq!(c.len(), 1, "{pem}");
    c.remove(0)
}

fn metric_sum(c: &ControllerProcess, prefix: &str) -> f64 {
    c.metrics_text()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn logs(cs: &[&ControllerProcess]) -> String {
    cs.iter()
        .enumerate()
        .map(|(i, c)| format!("--- replica {i}:\n{}", c.log()))
        .collect()
}

fn class_yaml_with_admin_edit(deploy: &Path) -> String {
    let git = std::fs::read_to_string(deploy.join("classes/git.yaml")).expect("git class");
    git.replacen(
        "  annotations:\n",
        "  annotations:\n    admin.example/edited: \"yes\"\n",
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_make_one_ca_and_a_forced_rotation_never_breaks_trust() {
    let kube = KubeApiServer::start();
    let kubeconfig = controller::install(&kube);
    // `install` drops the webhook configuration (no Service routing on a bare API server);
    // registered again on loopback, with an empty caBundle the leader must fill in. No pod is
    // created here, so the address is never called.
    ch::route_webhook_to(&kube, std::net::SocketAddr::from(([127, 0, 0, 1], 9)), "");
    let client = admin(&kube).await;
    // An admin's own version of a built-in class must survive the controller's start.
    ch::apply(
        &kube,
        &class_yaml_with_admin_edit(&controller::deploy_dir()),
    );
    let delay = 6;
    let validity = 20;
    let args = [
        "--lease-duration",
        "3",
        "--lease-retry",
        "0.5",
        "--ca-propagation-delay",
        &format!("{delay}s"),
        "--intermediate-validity",
        &format!("{validity}s"),
        "--serving-cert-validity",
        &format!("{validity}s"),
        "--ca-retire-margin",
        "1s",
    ];
    assert!(
        ca_secret(&client).await.is_none(),
        "a CA before any controller"
    );
    // Both at once: they race for the Lease and for the CA Secret.
    let a = ControllerProcess::spawn(&kubeconfig, "info,connectors_controller=debug", &args);
    let b = ControllerProcess::spawn(&kubeconfig, "info,connectors_controller=debug", &args);
    a.wait_ready();
    b.wait_ready();
    let (root1_pem, previous, _) = ca_secret(&client).await.expect("the CA Secret");
    assert!(previous.is_none(), "a new CA has no previous root");
    let root1 = one(&root1_pem);
    let created = logs(&[&a, &b]).matches("created the cluster CA").count();
    assert_eq!(
        created,
        1,
        "the CA was created {created} times:\n{}",
        logs(&[&a, &b])
    );

    // The built-in classes are there, and the admin's edit of git is kept.
    let ok = wait_until(Duration::from_secs(10), || {
        ["git", "oci", "k8s"].iter().all(|c| {
            connectors_tests::run(kube.kubectl().args(["get", "connectorclass", c]))
                .status
                .success()
        })
    });
    assert!(
        ok,
        "the built-in classes were not created:\n{}",
        logs(&[&a, &b])
    );
    let git = run_ok(kube.kubectl().args([
        "get",
        "connectorclass",
        "git",
        "-o",
        "jsonpath={.metadata.annotations.admin\\.example/edited}",
    ]));
    assert_eq!(git, "yes", "the admin's class was overwritten");

    // Both replicas serve with a certificate of that root, and sign with it.
    let (_, token) = ch::agent(&kube, "agent-rot", "n1");
    let (_, csr) = ca_check::agent_csr();
    let callers = [
        HttpsCaller::new(a.https, &root1_pem),
        HttpsCaller::new(b.https, &root1_pem),
    ];
    let mut generation1 = None;
    for caller in &callers {
        let (cert, roots, generation, _) = intermediate(caller, &token, &csr);
        assert_eq!(roots, std::slice::from_ref(&root1));
        assert_eq!(ca_check::basic_constraints(&cert), (true, Some(0)));
        assert_eq!(ca_check::issuer(&cert), ca_check::subject(&root1));
        assert!(
            generation1.get_or_insert(generation.clone()) == &generation,
            "replicas disagree"
        );
    }
    let generation1 = generation1.expect("a generation");

    // Rotation, asked for by changing the annotation.
    run_ok(kube.kubectl().args([
        "annotate",
        "secret",
        "-n",
        NS,
        "connectors-ca",
        "connectors.io/rotate=2024-01",
        "--overwrite",
    ]));
    let asked = Instant::now();
    let mut rotated = None;
    let started = Instant::now();
    while rotated.is_none() && started.elapsed() < Duration::from_secs(5) {
        if let Some((current, Some(previous), annotations)) = ca_secret(&client).await
            && current != root1_pem
        {
            rotated = Some((current, previous, annotations));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (root2_pem, previous_pem, annotations) =
        rotated.unwrap_or_else(|| panic!("no rotation within 5 s:\n{}", logs(&[&a, &b])));
    let seen_after = asked.elapsed();
    assert_eq!(previous_pem, root1_pem, "the previous root is the old one");
    assert_eq!(annotations["connectors.io/rotate-handled"], "2024-01");
    let root2 = one(&root2_pem);

    // During the propagation delay: both replicas still sign with the old root (what they
    // sign verifies with the old root alone), the generation is unchanged, and both roots are
    // handed out, the signing one first.
    for caller in &callers {
        let (cert, roots, generation, not_after) = intermediate(caller, &token, &csr);
        assert!(
            asked.elapsed() < Duration::from_secs(delay),
            "too slow to see the delay ({:?}; rotation seen after {seen_after:?})",
            asked.elapsed()
        );
        assert_eq!(
            generation, generation1,
            "the generation moved before the delay ended"
        );
        assert_eq!(roots, [root1.clone(), root2.clone()]);
        assert_eq!(ca_check::issuer(&cert), ca_check::subject(&root1));
        let until: k8s_openapi::jiff::Timestamp = annotations["connectors.io/previous-valid-until"]
            .as_str()
            .expect("previous-valid-until")
            .parse()
            .expect("RFC 3339");
        assert!(
            not_after <= until.as_second(),
            "an old-root intermediate outlives the schedule"
        );
    }
    // The new root is published at once: the bundles hold both.
    let published = Instant::now();
    loop {
        let roots = bundle_roots(&client, "default").await.unwrap_or_default();
        if ca_check::certs(&roots) == [root2.clone(), root1.clone()] {
            break;
        }
        assert!(
            published.elapsed() < Duration::from_secs(5),
            "the bundle does not hold both roots: {roots}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "rotation: Secret rotated {:?} after the annotation, both roots in the bundles {:?} after it",
        seen_after,
        asked.elapsed()
    );

    // Callers now trust what the bundle holds (both roots), as agents and workloads do.
    let both = format!("{root2_pem}{root1_pem}");
    for caller in &callers {
        caller.set_roots(&both);
    }

    // After the delay: the new root signs, the generation changes, and the HTTPS certificate
    // moves to the new root too.
    let mut generation2 = None;
    for caller in &callers {
        let switched = Instant::now();
        let (cert, roots) = loop {
            let (cert, roots, generation, _) = intermediate(caller, &token, &csr);
            if generation != generation1 {
                generation2.get_or_insert(generation.clone());
                assert_eq!(generation2.as_ref(), Some(&generation), "replicas disagree");
                break (cert, roots);
            }
            assert!(
                switched.elapsed() < Duration::from_secs(delay + 3),
                "still signing with the old root {:?} after the rotation",
                asked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            asked.elapsed() >= Duration::from_secs(delay - 1),
            "switched to the new root before the delay: {:?}",
            asked.elapsed()
        );
        assert_eq!(
            roots,
            [root2.clone(), root1.clone()],
            "the signing root first"
        );
        assert_eq!(ca_check::issuer(&cert), ca_check::subject(&root2));
        let (key, csr2) = ca_check::agent_csr();
        let r = caller.post(
            INTERMEDIATE,
            Some(&token),
            &json!({"csrPem": csr2}).to_string(),
        );
        let pem = r.json()["certificatePem"].as_str().expect("pem").to_owned();
        let inter = one(&pem);
        let leaf = ca_check::leaf_signed_by(&pem, &key, "git.corp");
        ca_check::verify(
            std::slice::from_ref(&root2),
            &leaf,
            std::slice::from_ref(&inter),
        )
        .expect("a leaf under the new intermediate verifies with the new root");
        assert!(
            ca_check::verify(
                std::slice::from_ref(&root1),
                &leaf,
                std::slice::from_ref(&inter)
            )
            .is_err(),
            "verifies with the old root"
        );
        caller.set_roots(&root2_pem);
        assert!(
            wait_until(Duration::from_secs(3), || caller.handshake_ok()),
            "the HTTPS certificate is not from the new root"
        );
    }
    eprintln!(
        "rotation: signing moved to the new root {:?} after the annotation",
        asked.elapsed()
    );

    // The webhook's caBundle follows (the leader keeps it equal to the bundle).
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let followed = Instant::now();
    loop {
        let config = webhooks
            .get("connectors-ca-trust")
            .await
            .expect("webhook configuration");
        let bundle = config.webhooks.unwrap_or_default()[0]
            .client_config
            .ca_bundle
            .clone()
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default();
        if ca_check::certs(&bundle) == [root2.clone(), root1.clone()] {
            break;
        }
        assert!(
            followed.elapsed() < Duration::from_secs(35),
            "the webhook's caBundle does not hold both roots: {bundle}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Once nothing the old root signed can be valid, it leaves the Secret and the bundles.
    let retire_by = Duration::from_secs(delay + validity + 1 + 10);
    loop {
        let (current, previous, _) = ca_secret(&client).await.expect("the CA Secret");
        let roots = bundle_roots(&client, "default").await.unwrap_or_default();
        if previous.is_none() && ca_check::certs(&roots) == std::slice::from_ref(&root2) {
            assert_eq!(current, root2_pem);
            break;
        }
        assert!(
            asked.elapsed() < retire_by,
            "the old root is still published {:?} after the rotation:\n{}",
            asked.elapsed(),
            logs(&[&a, &b])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        asked.elapsed() >= Duration::from_secs(delay + validity),
        "the old root left before what it signed expired: {:?}",
        asked.elapsed()
    );
    eprintln!(
        "rotation: the old root retired {:?} after the annotation",
        asked.elapsed()
    );
    let rotations = metric_sum(&a, "connectors_controller_ca_rotations_total")
        + metric_sum(&b, "connectors_controller_ca_rotations_total");
    assert_eq!(rotations, 1.0, "one rotation:\n{}", logs(&[&a, &b]));
    let log = logs(&[&a, &b]);
    assert!(
        !log.contains("BEGIN PRIVATE KEY") && !log.contains(&token),
        "a key or token in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_is_rotated_by_itself_when_a_third_of_its_life_is_left() {
    let kube = KubeApiServer::start();
    let kubeconfig = controller::install(&kube);
    let client = admin(&kube).await;
    let c = ControllerProcess::start(
        &kubeconfig,
        "info",
        &[
            "--ca-validity",
            "30s",
            "--intermediate-validity",
            "5s",
            "--serving-cert-validity",
            "5s",
            "--ca-propagation-delay",
            "2s",
            "--ca-retire-margin",
            "1s",
        ],
    );
    let (root1_pem, _, _) = ca_secret(&client).await.expect("the CA Secret");
    let root1 = one(&root1_pem);
    let (_, x) = x509_parser::parse_x509_certificate(&root1).expect("root");
    let (not_before, not_after) = (
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    );
    assert!(
        (30..=40).contains(&(not_after - not_before)),
        "root validity {}",
        not_after - not_before
    );
    // Intermediates never outlive the root that signs them.
    let (_, token) = ch::agent(&kube, "agent-exp", "n1");
    let caller = HttpsCaller::new(c.https, &root1_pem);
    let (_, csr) = ca_check::agent_csr();
    let (_, _, _, inter_end) = intermediate(&caller, &token, &csr);
    assert!(inter_end <= not_after);
    let due = not_after - (not_after - not_before) / 3;
    let started = Instant::now();
    let root2_pem = loop {
        if let Some((current, Some(previous), _)) = ca_secret(&client).await
            && current != root1_pem
        {
            assert_eq!(previous, root1_pem);
            break current;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the root was not rotated before it expired:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let at = i64::try_from(ca_check::unix_now()).expect("now");
    assert!(at >= due - 1, "rotated {} s before it was due", due - at);
    assert!(at < not_after, "rotated only after the root expired");
    assert_ne!(root2_pem, root1_pem);
    assert!(
        c.log().contains("a third of its validity is left"),
        "{}",
        c.log()
    );
    assert!(
        metric_sum(
            &c,
            "connectors_controller_ca_rotations_total{result=\"expiring\"}"
        ) >= 1.0
    );
}
