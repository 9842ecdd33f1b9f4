//! The install's life on a real node (privileged; never skipped), as an admin lives it, in one
//! ordered test (each step needs the one before): uninstall leaves no eBPF program behind and no
//! pod broken; a fresh `kubectl apply -k deploy/` on a cluster without Connectors works; a pod
//! started while the agent is down is put under redirect when it comes back; a forced rotation of
//! the cluster CA keeps running and new pods cloning with no pod restart; a rolling restart of
//! the agent during a loop of clones.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use connectors_tests::cluster::{self, SYSTEM_NAMESPACE, TOOLS_IP, ToolsPod};
use connectors_tests::node::KubeNode;
use connectors_tests::{GitServer, GitServerOptions, TestCa};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";

/// Names of our programs as bpftool shows them (the kernel keeps 15 characters).
const OURS: [&str; 5] = [
    "connect4",
    "connect6",
    "sockops_establi",
    "sockops_established",
    "park",
];

fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Our eBPF programs attached to a cgroup or still loaded anywhere (held by a pin, a link or a
/// process), per bpftool.
fn our_programs() -> Vec<String> {
    let mut found = Vec::new();
    for entry in bpftool_json(&["cgroup", "tree"])
        .as_array()
        .into_iter()
        .flatten()
    {
        for p in entry["programs"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or_default();
            if OURS.contains(&name) {
                found.push(format!(
                    "{name} on {}",
                    entry["cgroup"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    for p in bpftool_json(&["prog", "show"])
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = p["name"].as_str().unwrap_or_default();
        if OURS.contains(&name) {
            found.push(format!("{name} loaded (id {})", p["id"]));
        }
    }
    found
}

fn kubectl(node: &KubeNode, args: &[&str]) -> String {
    node.kubectl_ok(args)
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

/// `kubectl delete -k` of the install, then waits for its namespace to go.
fn uninstall(node: &KubeNode, overlay: &std::path::Path) {
    let _ = node.kubectl_ok(&[
        "delete",
        "-k",
        &overlay.display().to_string(),
        "--ignore-not-found",
        "--wait=false",
    ]);
    let deadline = Instant::now() + Duration::from_secs(180);
    while node
        .kubectl_ok(&["get", "namespace", SYSTEM_NAMESPACE])
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "namespace {SYSTEM_NAMESPACE} still there after the uninstall"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn pod_yaml(ns: &str, name: &str, script: &str) -> String {
    ToolsPod::labelled(ns, name, script).yaml()
}

const CLONE: &str = "git clone -q https://git.test/repo.git /tmp/c && rm -rf /tmp/c";

/// A pod cloning every `every` seconds, printing `ok` or `FAIL <error>` per try.
fn looper(ns: &str, name: &str, every: u32, tries: u32) -> String {
    pod_yaml(
        ns,
        name,
        &format!(
            "for i in $(seq 1 {tries}); do if out=$( ({CLONE}) 2>&1); then echo ok; else echo \"FAIL $(echo $out | tr '\\n' ' ')\"; fi; sleep {every}; done"
        ),
    )
}

fn tally(log: &str) -> (usize, Vec<String>) {
    let ok = log.lines().filter(|l| *l == "ok").count();
    let failed = log
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .map(str::to_owned)
        .collect();
    (ok, failed)
}

fn wait_finished(node: &KubeNode, ns: &str, name: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let json = node.pod_json(ns, name).unwrap_or_default();
        if matches!(
            json["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        ) {
            return node.logs(ns, name).unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "pod {ns}/{name} did not finish");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Deletes a namespace when dropped, the test passed or not.
struct DeleteNamespace(&'static KubeNode, String);

impl Drop for DeleteNamespace {
    fn drop(&mut self) {
        if let Err(e) = self.0.delete_namespace(&self.1) {
            eprintln!("cannot delete namespace {}: {e}", self.1);
        }
    }
}

#[test]
fn the_install_lifecycle() {
    connectors_tests::netns::require_privileges();
    let installed = cluster::Installed::shared(&["git.test"]);
    let node = installed.node;
    let overlay = installed.overlay.clone();

    // 1. Uninstall: no eBPF program of ours left, and a labelled pod still runs.
    let ns = node.create_namespace("life").expect("namespace");
    // Its Connector (the whole of git.test) must not outlive this test: the next test process
    // on the node installs its own.
    let _cleanup = DeleteNamespace(node, ns.clone());
    node.apply(&pod_yaml(&ns, "survivor", "sleep 3600"))
        .expect("pod");
    node.wait_pod_ready(&ns, "survivor", Duration::from_secs(60))
        .expect("ready");
    assert!(
        !our_programs().is_empty(),
        "the installed agent has no program attached"
    );
    uninstall(node, &overlay);
    let left = our_programs();
    assert!(left.is_empty(), "left after uninstall: {left:?}");
    let phase = node.pod_json(&ns, "survivor").expect("pod")["status"]["phase"].clone();
    assert_eq!(phase, "Running", "a labelled pod broke with the uninstall");

    // 2. A fresh install on a cluster without Connectors (CRDs and classes included).
    let started = Instant::now();
    let reinstalled = cluster::install_again(&["git.test"]).expect("fresh install");
    println!("fresh install ready in {:?}", started.elapsed());
    for class in ["git", "oci", "k8s"] {
        kubectl(node, &["get", "connectorclass", class]);
    }

    // The tool and its Connector.
    let ca = TestCa::new("lifecycle tools CA");
    let server = GitServer::start(GitServerOptions {
        listen: Some(SocketAddr::new(TOOLS_IP.parse().expect("ip"), 443)),
        tls: Some((&ca, vec!["git.test"])),
        ..Default::default()
    });
    server.create_repo("repo.git", &[("README.md", b"hello\n")]);
    let pem = connectors_tests::indent(&ca.cert_pem, 4);
    // As an admin would: the permission first, then the Connector (a decision made before the
    // RoleBinding existed is cached for the authorization TTL, 10 s).
    node.apply(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: use-git, namespace: {ns}}}
rules: [{{apiGroups: [connectors.io], resources: [connectors], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: default-uses-git, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: use-git}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {ns}}}]
"#
    ))
    .expect("RBAC");
    node.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: {ns}}}
type: kubernetes.io/basic-auth
stringData: {{username: {USER}, password: {PASSWORD}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: tool-ca, namespace: {ns}}}
stringData:
  ca.crt: |
{pem}
---
apiVersion: connectors.io/v1alpha1
kind: Connector
metadata: {{name: git, namespace: {ns}}}
spec:
  connectorClassName: git
  address: https://git.test
  auth: {{secretRef: {{name: creds}}}}
  caCertSecretRef: {{name: tool-ca}}

"#
    ))
    .expect("Connector");
    // The Connector becomes Ready (the controller probes the tool).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = node
            .kubectl_ok(&[
                "-n",
                &ns,
                "get",
                "connector",
                "git",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .unwrap_or_default();
        if ready == "True" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Connector did not become Ready:\n{}",
            kubectl(node, &["-n", &ns, "get", "connector", "git", "-o", "yaml"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    node.apply(&pod_yaml(&ns, "first", CLONE)).expect("pod");
    let log = wait_finished(node, &ns, "first", Duration::from_secs(120));
    assert!(
        node.pod_json(&ns, "first").expect("pod")["status"]["phase"] == "Succeeded",
        "clone after the fresh install failed: {log}\n{}",
        reinstalled.agent_log()
    );

    // 3. A pod started while the agent is down is put under redirect when it comes back.
    kubectl(
        node,
        &[
            "-n",
            SYSTEM_NAMESPACE,
            "patch",
            "daemonset",
            "connectors-agent",
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"spec":{"nodeSelector":{"connectors-test/no-such-node":"x"}}}}}"#,
        ],
    );
    // The kubelet kills it within its 30 s grace period; the pod object's removal can take
    // longer on a loaded node (etcd).
    let deadline = Instant::now() + Duration::from_secs(120);
    while reinstalled.agent_pod().is_ok_and(|p| !p.is_empty()) {
        assert!(Instant::now() < deadline, "the agent did not go away");
        std::thread::sleep(Duration::from_millis(500));
    }
    node.apply(&pod_yaml(
        &ns,
        "early",
        &format!("sleep 20; {CLONE} && echo cloned"),
    ))
    .expect("pod");
    node.wait_pod_ready(&ns, "early", Duration::from_secs(60))
        .expect("ready");
    kubectl(
        node,
        &[
            "-n",
            SYSTEM_NAMESPACE,
            "patch",
            "daemonset",
            "connectors-agent",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#,
        ],
    );
    kubectl(
        node,
        &[
            "-n",
            SYSTEM_NAMESPACE,
            "rollout",
            "status",
            "daemonset/connectors-agent",
            "--timeout=120s",
        ],
    );
    let log = wait_finished(node, &ns, "early", Duration::from_secs(120));
    assert!(
        log.contains("cloned"),
        "the pod started while the agent was down did not clone: {log}\n{}",
        reinstalled.agent_log()
    );

    // 4. CA rotation: a pod cloning in a loop keeps cloning through it, and new pods clone.
    node.apply(&looper(&ns, "rotation-loop", 5, 60))
        .expect("pod");
    node.wait_pod_ready(&ns, "rotation-loop", Duration::from_secs(60))
        .expect("ready");
    let generation_before = kubectl(
        node,
        &[
            "-n",
            SYSTEM_NAMESPACE,
            "get",
            "secret",
            "connectors-ca",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    kubectl(
        node,
        &[
            "-n",
            SYSTEM_NAMESPACE,
            "annotate",
            "--overwrite",
            "secret",
            "connectors-ca",
            &format!(
                "connectors.io/rotate={}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ),
        ],
    );
    let rotated = Instant::now();
    // Past the propagation delay (120 s by default) the agent signs under the new root.
    let log = wait_finished(node, &ns, "rotation-loop", Duration::from_secs(420));
    let (ok, failed) = tally(&log);
    assert!(
        failed.is_empty(),
        "clones failed across the CA rotation ({ok} ok): {failed:?}\n{}",
        reinstalled.agent_log()
    );
    assert!(ok >= 50, "only {ok} clones in the loop: {log}");
    let generation_after = kubectl(
        node,
        &[
            "-n",
            SYSTEM_NAMESPACE,
            "get",
            "secret",
            "connectors-ca",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    assert_ne!(
        generation_before, generation_after,
        "the CA Secret did not change"
    );
    let agent_log = reinstalled.agent_log();
    assert!(
        agent_log.contains("the cluster CA changed: renewing the intermediate"),
        "the agent never moved to the new root:\n{agent_log}"
    );
    node.apply(&pod_yaml(&ns, "after-rotation", CLONE))
        .expect("pod");
    let log = wait_finished(node, &ns, "after-rotation", Duration::from_secs(120));
    assert!(
        node.pod_json(&ns, "after-rotation").expect("pod")["status"]["phase"] == "Succeeded",
        "a new pod failed to clone after the rotation: {log}"
    );
    println!(
        "CA rotation: {ok} clones through it, none failed ({:?})",
        rotated.elapsed()
    );

    // 5. A rolling restart of the agent during a loop of clones.
    node.apply(&looper(&ns, "restart-loop", 1, 60))
        .expect("pod");
    node.wait_pod_ready(&ns, "restart-loop", Duration::from_secs(60))
        .expect("ready");
    std::thread::sleep(Duration::from_secs(5));
    let stopped_agent = reinstalled.follow_agent_log().expect("agent log");
    kubectl(
        node,
        &[
            "-n",
            SYSTEM_NAMESPACE,
            "rollout",
            "restart",
            "daemonset/connectors-agent",
        ],
    );
    let log = wait_finished(node, &ns, "restart-loop", Duration::from_secs(300));
    let (ok, failed) = tally(&log);
    let agents = || {
        format!(
            "stopped agent {}:\n{}\nnext agent:\n{}",
            stopped_agent.pod,
            stopped_agent.text(),
            reinstalled.agent_log()
        )
    };
    println!(
        "rolling restart during a clone loop: {ok} ok, {} failed: {failed:?}",
        failed.len()
    );
    // Never a connection to a dead proxy: a clone in the gap goes to the tool directly (and
    // is asked for credentials), it is never refused or reset by a proxy that is gone.
    for f in &failed {
        assert!(
            !f.contains("Connection refused")
                && !f.contains("reset by peer")
                && !f.contains("Empty reply"),
            "a clone was sent to a dead proxy: {f}\n{}",
            agents()
        );
    }
    assert!(
        ok >= 40,
        "clones did not resume after the restart: {log}\n{}",
        agents()
    );
    assert!(
        failed.is_empty(),
        "{} of {} clones failed during the rolling restart: {failed:?}\n{}",
        failed.len(),
        ok + failed.len(),
        agents()
    );
    let pod = reinstalled.agent_pod().expect("agent pod");
    let agent_log = kubectl(node, &["-n", SYSTEM_NAMESPACE, "logs", &pod]);
    assert!(
        agent_log.contains("took the redirect over from the previous agent"),
        "the new agent did not take the redirect over:\n{agent_log}"
    );
    let _ = node.delete_namespace(&ns);
}
