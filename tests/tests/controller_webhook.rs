//! The pod webhook against a real kube-apiserver (v1.20): `deploy/webhook.yaml` installed with
//! its `clientConfig` pointing at the controller process on loopback (the bare API server has
//! no Service routing) and the cluster roots as caBundle. The API server calls the controller
//! over HTTPS for every labelled pod it admits; what comes back is what a kubelet would run.

use std::time::{Duration, Instant};

use connectors_tests::TestCa;
use connectors_tests::controller::{self, ControllerProcess};
use connectors_tests::controller_https as ch;
use connectors_tests::kube::KubeApiServer;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

const BUNDLE: &str = "/etc/connectors/ca/ca-bundle.crt";
const ROOTS: &str = "/etc/connectors/ca/ca.crt";

async fn admin(kube: &KubeApiServer) -> Client {
    let kc = Kubeconfig::read_from(&kube.admin_kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn pod(name: &str, labelled: bool) -> Pod {
    let labels = if labelled {
        json!({"connectors.io/inject": "true", "app": "build"})
    } else {
        json!({"app": "build"})
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "automountServiceAccountToken": false,
            "initContainers": [{"name": "fetch", "image": "kn.local/tools:1"}],
            "containers": [
                {"name": "build", "image": "kn.local/tools:1",
                 "env": [{"name": "SSL_CERT_FILE", "value": "/my/own.pem"}]},
                {"name": "push", "image": "kn.local/tools:1",
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
            ],
            "volumes": [{"name": "work", "emptyDir": {}}]
        }
    }))
    .expect("pod")
}

fn env_of(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

async fn bundle(client: &Client, ns: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt("connectors-ca-bundle")
        .await
        .expect("get the bundle")
}

async fn webhook_ca_bundle(client: &Client) -> String {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("connectors-ca-trust")
        .await
        .expect("webhook configuration");
    config.webhooks.unwrap_or_default()[0]
        .client_config
        .ca_bundle
        .clone()
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_pods_get_the_cluster_ca_trust_and_nothing_else_changes() {
    let kube = KubeApiServer::start();
    let kubeconfig = controller::install(&kube);
    let client = admin(&kube).await;
    let mut c = ControllerProcess::start(
        &kubeconfig,
        "info,connectors_controller=debug",
        &["--tls-san", "127.0.0.1"],
    );
    let secret: Secret = Api::namespaced(client.clone(), "connectors-system")
        .get("connectors-ca")
        .await
        .expect("the CA Secret");
    let roots = String::from_utf8(secret.data.expect("data")["tls.crt"].0.clone()).expect("PEM");

    // The shipped webhook, routed to the controller process.
    ch::route_webhook_to(&kube, c.https, &roots);
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("connectors-ca-trust")
        .await
        .expect("webhook configuration");
    let w = &config.webhooks.clone().expect("webhooks")[0];
    assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(w.side_effects, "None");
    assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(w.timeout_seconds, Some(5));
    assert_eq!(w.admission_review_versions, ["v1"]);
    let selector = w.object_selector.clone().expect("objectSelector");
    assert_eq!(
        selector.match_labels.expect("matchLabels")["connectors.io/inject"],
        "true"
    );

    // A namespace whose ConfigMap is gone (the leader writes it, then someone deletes it): the
    // webhook creates it before it answers, so the pod never waits for its volume.
    let ns = "builds";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace"),
        )
        .await
        .expect("create namespace");
    // No controller-manager: the ServiceAccount pods default to must be made by hand.
    ch::service_account(&kube, ns, "default");
    let mut written = false;
    let started = Instant::now();
    while !written && started.elapsed() < Duration::from_secs(10) {
        written = bundle(&client, ns).await.is_some();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        written,
        "the leader did not write the bundle into a new namespace:\n{}",
        c.log()
    );
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .delete("connectors-ca-bundle", &DeleteParams::default())
        .await
        .expect("delete the bundle");
    assert!(bundle(&client, ns).await.is_none());

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = Instant::now();
    let labelled = pods
        .create(&PostParams::default(), &pod("labelled", true))
        .await
        .unwrap_or_else(|e| panic!("labelled pod refused: {e}\n{}", c.log()));
    eprintln!(
        "labelled pod admitted in {} ms",
        created.elapsed().as_millis()
    );
    let cm = bundle(&client, ns)
        .await
        .expect("the webhook created the ConfigMap before it answered");
    let data = cm.data.expect("data");
    assert_eq!(data["ca.crt"], roots, "ca.crt holds the cluster roots only");
    let system =
        std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").expect("system roots");
    assert!(
        data["ca-bundle.crt"].starts_with(system.trim_end()),
        "ca-bundle.crt starts with the system roots"
    );
    assert!(
        data["ca-bundle.crt"].ends_with(&roots),
        "ca-bundle.crt ends with the cluster roots"
    );

    let spec = labelled.spec.expect("spec");
    let volumes = spec.volumes.clone().unwrap_or_default();
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    let v = volumes
        .iter()
        .find(|v| v.name == "connectors-ca")
        .expect("the CA volume");
    assert_eq!(
        v.config_map.as_ref().map(|c| c.name.as_str()),
        Some("connectors-ca-bundle")
    );
    let containers: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    assert_eq!(containers.len(), 3);
    for c in &containers {
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        let m = mounts
            .iter()
            .find(|m| m.name == "connectors-ca")
            .unwrap_or_else(|| panic!("no CA mount in {}", c.name));
        assert_eq!(m.mount_path, "/etc/connectors/ca");
        assert_eq!(m.read_only, Some(true));
        assert!(m.sub_path.is_none(), "a subPath would stop updates");
        for var in ["GIT_SSL_CAINFO", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
            assert_eq!(
                env_of(c, var).as_deref(),
                Some(BUNDLE),
                "{var} in {}",
                c.name
            );
        }
        assert_eq!(env_of(c, "NODE_EXTRA_CA_CERTS").as_deref(), Some(ROOTS));
    }
    let build = &spec.containers[0];
    assert_eq!(
        env_of(build, "SSL_CERT_FILE").as_deref(),
        Some("/my/own.pem"),
        "overridden"
    );
    assert_eq!(
        build
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == "SSL_CERT_FILE")
            .count(),
        1
    );
    assert_eq!(
        env_of(&spec.containers[1], "SSL_CERT_FILE").as_deref(),
        Some(BUNDLE)
    );
    assert_eq!(
        spec.containers[1].volume_mounts.as_ref().map(Vec::len),
        Some(2),
        "the container's own mount stays"
    );

    // An unlabelled pod is not touched (the objectSelector keeps it away from the webhook).
    let plain = pods
        .create(&PostParams::default(), &pod("plain", false))
        .await
        .expect("unlabelled pod");
    let spec = plain.spec.expect("spec");
    assert_eq!(spec.volumes.as_ref().map(Vec::len), Some(1));
    assert!(spec.containers[1].env.is_none());
    assert_eq!(
        spec.containers[1].volume_mounts.as_ref().map(Vec::len),
        Some(1)
    );
    assert!(
        c.metrics_text()
            .contains("connectors_controller_webhook_admissions_total{result=\"mutated\"} 1"),
        "{}",
        c.metrics_text()
    );

    // The leader puts the cluster roots back into a caBundle someone changed.
    let stranger = TestCa::new("someone else's CA");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut config = webhooks
        .get("connectors-ca-trust")
        .await
        .expect("webhook configuration");
    if let Some(ws) = config.webhooks.as_mut() {
        ws[0].client_config.ca_bundle = Some(ByteString(stranger.cert_pem.clone().into_bytes()));
    }
    webhooks
        .replace("connectors-ca-trust", &PostParams::default(), &config)
        .await
        .expect("change the caBundle");
    assert_ne!(webhook_ca_bundle(&client).await, roots);
    let repaired = Instant::now();
    loop {
        if webhook_ca_bundle(&client).await == roots {
            break;
        }
        assert!(
            repaired.elapsed() < Duration::from_secs(40),
            "the caBundle was not repaired:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("caBundle repaired in {} ms", repaired.elapsed().as_millis());

    // failurePolicy Fail: with the controller down, a labelled pod is refused (it would not
    // trust the agent), and an unlabelled pod is admitted as ever.
    let status = c.terminate(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", c.log());
    let refused = pods
        .create(&PostParams::default(), &pod("labelled-2", true))
        .await
        .expect_err("a labelled pod admitted without the webhook");
    assert!(
        refused.to_string().contains("ca-trust.connectors.io"),
        "{refused}"
    );
    pods.create(&PostParams::default(), &pod("plain-2", false))
        .await
        .expect("an unlabelled pod is admitted while the controller is down");
}
