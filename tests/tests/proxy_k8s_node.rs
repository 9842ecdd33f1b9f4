//! `kubectl exec` and `kubectl port-forward` through the injecting proxy against the real
//! single-node cluster (a kubelet behind the apiserver serves the streams): the kubeconfig holds
//! a placeholder token and trusts only the agent's CA, the agent sends the Connector's token and
//! splices the SPDY upgrade both ways. Needs root and `cargo xtask setup` (the node is started
//! when it does not run, as for `kube_node`).

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use connectors_tests::kube::kubectl_with;
use connectors_tests::node::{API_PORT, KubeNode, tools_pod_yaml};
use connectors_tests::{AgentProcess, ConfigDir, ca_secret_yaml, free_port, run};

const K8S_CLASS: &str = include_str!("../../deploy/classes/k8s.yaml");
const PLACEHOLDER: &str = "placeholder-not-a-token";

fn text(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A config folder with the k8s class and a Connector `cluster` for `https://kubernetes:PORT`
/// (a name on the node apiserver's certificate) with the node admin's token.
fn config_for(node: &KubeNode) -> (ConfigDir, PathBuf) {
    let config = ConfigDir::new();
    config.write("k8s-class.yaml", K8S_CLASS);
    let ca = std::fs::read_to_string(&node.ca_cert).expect("node CA");
    config.write(
        "cluster.yaml",
        &format!(
            "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {{name: cluster, namespace: default}}\nspec:\n  connectorClassName: k8s\n  address: https://kubernetes:{API_PORT}\n  auth: {{name: bearerTokenAuth, secretRef: {{name: cluster-login}}}}\n  caCertSecretRef: {{name: cluster-ca}}\n---\n{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: cluster-login, namespace: default}}\ntype: connectors.io/bearer-token\nstringData: {{token: \"{}\"}}\n",
            ca_secret_yaml("cluster-ca", "default", &ca),
            node.admin_token
        ),
    );
    let hosts = config.hosts_file(&[(node.node_ip.as_str(), "kubernetes")]);
    (config, hosts)
}

#[test]
fn kubectl_exec_and_port_forward_work_through_the_proxy_with_a_placeholder_token() {
    let node = KubeNode::shared();
    let ns = node
        .create_namespace("k8s-proxy")
        .unwrap_or_else(|e| panic!("{e}"));
    // A pod serving git:// on 9418, for port-forward.
    node.apply(&tools_pod_yaml(
        &ns,
        "served",
        "app: connectors-test",
        "git init -q --bare /tmp/r.git && git -C /tmp/r.git symbolic-ref HEAD refs/heads/main && exec git daemon --export-all --base-path=/tmp --reuseaddr --listen=0.0.0.0 --port=9418",
        "",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    node.wait_pod_ready(&ns, "served", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));

    let (config, hosts) = config_for(node);
    let agent = AgentProcess::start(
        config.path(),
        "debug",
        &["--hosts-file", hosts.to_str().expect("utf-8 path")],
    );
    let work = tempfile::tempdir().expect("tempdir");
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://kubernetes:{API_PORT}\", certificate-authority: \"{ca}\"}}}}]\nusers: [{{name: u, user: {{token: \"{PLACEHOLDER}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n",
            ca = agent.ca_path().display(),
        ),
    )
    .expect("kubeconfig");
    let kubectl = || {
        let mut c = kubectl_with(&kubeconfig, work.path());
        c.env("HTTPS_PROXY", agent.proxy_url())
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        c
    };

    // exec, with stdin carried up and stdout down through the spliced upgrade.
    let mut child = kubectl()
        .args(["-n", &ns, "exec", "-i", "served", "--", "sh", "-c"])
        .arg("read line; echo \"pod got: $line\"; echo to-stderr >&2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl exec");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"hello through the proxy\n")
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("kubectl exec output");
    assert!(out.status.success(), "kubectl exec: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pod got: hello through the proxy",
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("to-stderr"),
        "{}",
        text(&out)
    );

    // port-forward: a local port to the pod's git daemon, used by `git ls-remote`.
    let local = free_port();
    let mut forward = kubectl()
        .args(["-n", &ns, "port-forward", "pod/served"])
        .arg(format!("{local}:9418"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let mut lines = BufReader::new(forward.stdout.take().expect("stdout")).lines();
    let started = Instant::now();
    let forwarding = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("Forwarding from") => break true,
            Some(Ok(_)) => continue,
            _ => break false,
        }
    };
    if !forwarding {
        let _ = forward.kill();
        let out = forward.wait_with_output().expect("port-forward output");
        panic!("kubectl port-forward never forwarded: {}", text(&out));
    }
    eprintln!(
        "port-forward ready after {} ms",
        started.elapsed().as_millis()
    );
    let ls_remote = || {
        run(Command::new("git")
            .args(["ls-remote", "--symref"])
            .arg(format!("git://127.0.0.1:{local}/r.git"))
            .env("GIT_TERMINAL_PROMPT", "0"))
    };
    // The pod is Ready when its container starts; its daemon may listen a moment later.
    let served =
        connectors_tests::wait_until(Duration::from_secs(20), || ls_remote().status.success());
    assert!(served, "git ls-remote never worked: {}", text(&ls_remote()));
    // The tunnel carries one connection after another.
    for _ in 0..3 {
        let out = ls_remote();
        assert!(out.status.success(), "git ls-remote: {}", text(&out));
    }
    let _ = forward.kill();
    let _ = forward.wait();

    // `kubernetes` resolves nowhere but in the agent's hosts file, so these went through it;
    // and the apiserver refuses the placeholder, so it got the Connector's token instead.
    agent.assert_never_shows(&[&node.admin_token]);
    let _ = node.delete_namespace(&ns);
}
