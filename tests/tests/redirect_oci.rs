//! OCI images pushed and pulled from a simulated pod through the eBPF transparent redirect
//! (privileged: run as root; never skipped): `skopeo` in the pod has no proxy settings, no
//! credentials and only the agent's CA; the registry is Debian's `docker-registry` in token mode
//! on a node address, its tokens from the harness's issuer.

use std::net::{IpAddr, SocketAddr};
use std::process::Output;

use connectors_tests::oci_image::{ImageClient, Layout};
use connectors_tests::registry::{
    OciConnector, Registry, RegistryAuth, RegistryOptions, login_secret_yaml,
};
use connectors_tests::token_issuer::{Grant, IssuerOptions, TokenIssuer};
use connectors_tests::{AgentProcess, ConfigDir, Lab, TestCa, free_port, run};

const USER: &str = "alice";
const PASSWORD: &str = "registry-horse-battery";
const SERVICE: &str = "registry.test";
const OCI_CLASS: &str = include_str!("../../deploy/classes/oci.yaml");
/// Node addresses of the lab: the registry and its token service at .30, the proxy at .254.
const REGISTRY: u8 = 30;
const PROXY: u8 = 254;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_pod_pushes_and_pulls_a_large_image_with_no_proxy_settings_and_no_credentials() {
    const MIB: u64 = 1 << 20;
    let lab = Lab::new();
    let ip = IpAddr::V4(lab.node_ip4(REGISTRY));
    let ca = TestCa::new("test tools CA");
    let issuer = TokenIssuer::start(IssuerOptions {
        listen: Some(SocketAddr::new(ip, 8443)),
        tls: (&ca, vec!["registry.test"]),
        service: SERVICE,
        users: vec![(USER, PASSWORD, Grant::All)],
        anonymous: None,
        expires_in: 300,
    });
    let root_cert = issuer.root_cert();
    let registry = Registry::start(RegistryOptions {
        listen: Some(SocketAddr::new(ip, 443)),
        tls: (&ca, vec!["registry.test"]),
        auth: RegistryAuth::Token {
            realm: "https://registry.test:8443/token".into(),
            service: SERVICE,
            root_cert: &root_cert,
        },
    });
    let config = ConfigDir::new();
    config.write("oci-class.yaml", OCI_CLASS);
    config.write(
        "reg.yaml",
        &OciConnector {
            name: "reg",
            address: "https://registry.test".into(),
            realm: Some("https://registry.test:8443".into()),
            auth: Some(("tokenAuth", "reg-login")),
            ca_pem: &ca.cert_pem,
        }
        .yaml(),
    );
    config.write(
        "reg-login.yaml",
        &login_secret_yaml("reg-login", "connectors.io/registry-token", USER, PASSWORD),
    );
    let ip_text = ip.to_string();
    let hosts = config.hosts_file(&[(ip_text.as_str(), "registry.test")]);
    let pod = lab.pod(0);
    pod.hosts(&[(ip, "registry.test")]);
    let proxy = SocketAddr::new(IpAddr::V4(lab.node_ip4(PROXY)), free_port());
    let agent = AgentProcess::start(
        config.path(),
        "info,connectors_agent=debug",
        &[
            "--hosts-file",
            hosts.to_str().expect("utf-8"),
            "--transparent-listen",
            &proxy.to_string(),
            "--redirect-cgroup",
            pod.cgroup.to_str().expect("utf-8"),
        ],
    );

    let work = tempfile::tempdir().expect("tempdir");
    let src = Layout::create(&work.path().join("src"));
    let image = src.add_image("v1", &[200 * MIB, 2 * MIB, 4096], "amd64");
    let client = ImageClient::new(&agent.ca_path(), None);
    let dest = "docker://registry.test/team/app:v1";
    let out = run(&mut pod.wrap(&client.copy(&src.reference("v1"), dest, &[])));
    assert!(
        out.status.success(),
        "push from the pod: {}\nagent log:\n{}",
        text(&out),
        agent.log()
    );
    let pulled = Layout::create(&work.path().join("pulled"));
    let out = run(&mut pod.wrap(&client.copy(dest, &pulled.reference("v1"), &[])));
    assert!(out.status.success(), "pull in the pod: {}", text(&out));
    for l in &image.layers {
        assert!(pulled.holds(l), "layer {} not pulled whole", l.digest);
    }
    assert!(
        issuer
            .issued()
            .iter()
            .all(|i| i.user.as_deref() == Some(USER) && i.status == 200),
        "{:?}",
        issuer.issued()
    );
    let peak = agent.peak_rss_kib();
    eprintln!("agent peak RSS through a 200 MiB layer push and pull (eBPF redirect): {peak} KiB");
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB");
    assert!(
        registry.log().contains("/v2/team/app/blobs/uploads/"),
        "the registry saw no upload"
    );

    // The same pod, outside the redirected cgroup: refused by the registry.
    let out = run(&mut pod.wrap_outside_cgroup(
        &ImageClient::new(&ca.write_cert(work.path()), None).inspect(dest, true),
    ));
    assert!(!out.status.success(), "inspect without the redirect worked");
    assert!(
        text(&out).to_lowercase().contains("unauthorized")
            || text(&out).contains("authentication required"),
        "{}",
        text(&out)
    );
    agent.assert_never_shows(&[PASSWORD]);
}
