//! The real-node harness works: a pod of the tools image runs `git --version` under a real
//! kubelet, and the host finds that pod's cgroup v2 folder (from the `0::` line of the
//! container's `/proc/<pid>/cgroup`) with the container's pid in it, and its own network
//! namespace. kube-proxy routes ClusterIPs: a Service in front of a pod serving HTTP answers on
//! its ClusterIP from another pod, from the serving pod itself and from the host (as a
//! hostNetwork process would), and a pod reaches the apiserver through the `kubernetes` Service
//! with only what the kubelet gives it (the injected `KUBERNETES_SERVICE_HOST`/`_PORT`, its
//! ServiceAccount token and CA). Needs root and `cargo xtask setup` (the node is built once and
//! cached); the node is started if it is not running, and left running for other tests (`cargo
//! xtask test` stops it at the end when it started it, or `cargo xtask node stop`).

use std::process::Command;
use std::time::{Duration, Instant};

use connectors_tests::node::{API_PORT, KubeNode, SERVICE_CIDR, SERVICE_IP, tools_pod_yaml};

#[test]
fn tools_pod_runs_git_and_its_cgroup_holds_the_container() {
    let node = KubeNode::shared();
    let ns = node
        .create_namespace("kn-test")
        .unwrap_or_else(|e| panic!("{e}"));
    node.apply(&tools_pod_yaml(
        &ns,
        "git",
        "app: kube-node-test",
        "git --version; exec sleep 3600",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let ready = node
        .wait_pod_ready(&ns, "git", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("pod apply -> Ready: {} ms", ready.as_millis());

    let logs = node.logs(&ns, "git").unwrap_or_else(|e| panic!("{e}"));
    assert!(logs.starts_with("git version "), "pod log: {logs}");

    let cg = node
        .pod_cgroup(&ns, "git")
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "container {} pid {}: 0::{} (pod folder {})",
        cg.container_id,
        cg.pid,
        cg.cgroup_path,
        cg.pod_dir.display()
    );
    let procs = std::fs::read_to_string(cg.container_dir.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("{}: {e}", cg.container_dir.display()));
    assert!(
        procs.lines().any(|l| l.trim() == cg.pid.to_string()),
        "pid {} not in {}/cgroup.procs: {procs}",
        cg.pid,
        cg.container_dir.display()
    );
    assert_eq!(cg.qos, "BestEffort");
    assert!(
        cg.pod_dir.ends_with(format!("besteffort/pod{}", cg.uid)),
        "pod folder {}",
        cg.pod_dir.display()
    );
    assert!(
        cg.container_dir.ends_with(&cg.container_id),
        "container folder {}",
        cg.container_dir.display()
    );
    let host_netns = std::fs::read_link("/proc/self/ns/net").expect("host netns");
    let pod_netns = std::fs::read_link(&cg.netns).expect("pod netns");
    assert_ne!(pod_netns, host_netns, "the pod runs in the host's netns");

    node.delete_namespace(&ns).unwrap_or_else(|e| panic!("{e}"));
}

/// A tiny HTTP server in the tools image (perl-base's IO::Socket::INET): every request gets
/// `hello from <hostname>`.
const HTTP_SERVER: &str = r#"export H=$(hostname); exec perl -MIO::Socket::INET -e '
$s = IO::Socket::INET->new(LocalPort => 8080, Listen => 64, ReuseAddr => 1) or die "listen: $!";
while ($c = $s->accept) {
  while (defined($l = <$c>)) { last if $l =~ /^\r?$/ }
  $b = "hello from $ENV{H}\n";
  print $c "HTTP/1.1 200 OK\r\nContent-Length: " . length($b) . "\r\nConnection: close\r\n\r\n$b";
  close $c;
}'"#;

fn in_service_cidr(ip: &str) -> bool {
    let prefix = SERVICE_CIDR.trim_end_matches("0/24");
    ip.starts_with(prefix)
}

#[test]
fn cluster_ips_route_from_pods_and_the_host() {
    let node = KubeNode::shared();
    let ns = node
        .create_namespace("kn-svc")
        .unwrap_or_else(|e| panic!("{e}"));
    node.apply(&tools_pod_yaml(&ns, "web", "app: web", HTTP_SERVER, ""))
        .unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    node.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let ip = node
        .kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        in_service_cidr(&ip),
        "ClusterIP {ip} outside {SERVICE_CIDR}"
    );
    // Created after the Service: the kubelet gives it WEB_SERVICE_HOST and _PORT.
    node.apply(&tools_pod_yaml(
        &ns,
        "client",
        "app: client",
        "exec sleep 3600",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    for pod in ["web", "client"] {
        node.wait_pod_ready(&ns, pod, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // From the host (the network namespace of every hostNetwork pod), once kube-proxy has the
    // endpoint: that is the time from Service creation to a routed ClusterIP.
    let url = format!("http://{ip}/");
    let host_get = || {
        Command::new("curl")
            .args(["-sS", "-m", "3", &url])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some(body) = host_get() {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the host never reached {url}: iptables-save:\n{}",
            connectors_tests::run(&mut Command::new("iptables-save"))
                .stdout
                .iter()
                .map(|b| *b as char)
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(body, "hello from web\n");
    eprintln!(
        "Service apply -> ClusterIP {ip} answering the host: {} ms",
        t.elapsed().as_millis()
    );

    // From another pod, by the ClusterIP and by the injected variables.
    let out = node
        .exec(
            &ns,
            "client",
            &[
                "sh",
                "-c",
                "echo $WEB_SERVICE_HOST:$WEB_SERVICE_PORT; curl -sS -m 5 http://$WEB_SERVICE_HOST:$WEB_SERVICE_PORT/",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, format!("{ip}:80\nhello from web\n"));
    let out = node
        .exec(&ns, "client", &["curl", "-sS", "-m", "5", &url])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "hello from web\n");
    // From the serving pod itself (hairpin: kube-proxy masquerades it).
    let out = node
        .exec(&ns, "web", &["curl", "-sS", "-m", "5", &url])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "hello from web\n");

    node.delete_namespace(&ns).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn pods_reach_the_apiserver_through_the_kubernetes_service() {
    let node = KubeNode::shared();
    let ns = node
        .create_namespace("kn-incluster")
        .unwrap_or_else(|e| panic!("{e}"));
    node.apply(&tools_pod_yaml(
        &ns,
        "client",
        "app: client",
        "exec sleep 3600",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    node.wait_pod_ready(&ns, "client", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    // Only what the kubelet gives every pod: no KUBERNETES_SERVICE_HOST override.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let get = |path: &str| {
        format!(
            "curl -sS -m 5 --cacert {sa}/ca.crt -H \"Authorization: Bearer $(cat {sa}/token)\" https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT{path}"
        )
    };
    let out = node
        .exec(
            &ns,
            "client",
            &[
                "sh",
                "-c",
                &format!(
                    "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; {}",
                    get("/version")
                ),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let (addr, version) = out.split_once('\n').expect("two parts");
    assert_eq!(addr, format!("{SERVICE_IP}:443"));
    let version: serde_json::Value =
        serde_json::from_str(version).unwrap_or_else(|e| panic!("{e}: {version}"));
    assert_eq!(version["gitVersion"], "v1.20.2");
    // The token authenticates (the default ServiceAccount may not list anything: the refusal
    // names it).
    let out = node
        .exec(
            &ns,
            "client",
            &[
                "sh",
                "-c",
                &get(&format!("/api/v1/namespaces/{ns}/secrets")),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.contains(&format!("system:serviceaccount:{ns}:default")) && out.contains("Forbidden"),
        "{out}"
    );
    // And from the host, on the ClusterIP, as the admin (the node's own CA).
    let out = connectors_tests::run_ok(
        Command::new("curl")
            .args(["-sS", "-m", "5", "--cacert"])
            .arg(&node.ca_cert)
            .arg("-H")
            .arg(format!(
                "@{}",
                node.paths.pki().join("admin-header").display()
            ))
            .arg(format!(
                "https://{SERVICE_IP}:443/api/v1/namespaces/{ns}/pods"
            )),
    );
    assert!(out.contains("\"client\""), "{out}");
    // in_cluster_env still points at the apiserver directly.
    assert_eq!(
        node.in_cluster_env()[1],
        ("KUBERNETES_SERVICE_PORT", API_PORT.to_string())
    );
    node.delete_namespace(&ns).unwrap_or_else(|e| panic!("{e}"));
}
