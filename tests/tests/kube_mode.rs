//! Kubernetes mode on a real node (privileged: the node needs root; never skipped): Connectors
//! installed with `kubectl apply -k deploy/`, real kubelet-created pods, the real agent
//! (DaemonSet) and controller (Deployment), a real git server (nginx + git http-backend) on the
//! node's address for two names (`git.test`, served by a Connector, and `other.test`, not).
//!
//! Pods carry only the label (and `hostAliases`, since this node has no cluster DNS); they hold no
//! credentials and trust nothing but what the webhook mounts.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use connectors_tests::cluster::{INJECT_LABEL as LABEL, Installed, TOOLS_IP, ToolsPod};
use connectors_tests::node::{KubeNode, TOOLS_IMAGE};
use connectors_tests::{GitServer, GitServerOptions, TestCa, indent};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";

/// The tools and the Connectors, once per test process; tests take turns (they share a node).
struct World {
    installed: &'static Installed,
    server: GitServer,
    _tools_ca: TestCa,
    /// Namespace of the Connector `git` (for `https://git.test/team`).
    team_a: String,
    team_b: String,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// At exit: the shared git server goes with the test process (a `static` is never dropped).
extern "C" fn stop_world() {
    if let Some(w) = WORLD.get() {
        w.server.stop_now();
    }
}

fn world() -> (MutexGuard<'static, ()>, &'static World) {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let w = WORLD.get_or_init(|| {
        connectors_tests::netns::require_privileges();
        let installed = Installed::shared(&["git.test", "other.test"]);
        let tools_ca = TestCa::new("test tools CA");
        let server = GitServer::start(GitServerOptions {
            listen: Some(SocketAddr::new(TOOLS_IP.parse().expect("ip"), 443)),
            tls: Some((&tools_ca, vec!["git.test", "other.test"])),
            ..Default::default()
        });
        server.create_repo("team/app.git", &[("README.md", b"team app\n")]);
        server.create_repo("other/secret.git", &[("README.md", b"not for team\n")]);
        server.create_file("hello.txt", 5);
        connectors_tests::kube::at_exit(stop_world);
        let node = installed.node;
        let team_a = node.create_namespace("team-a").expect("namespace");
        let team_b = node.create_namespace("team-b").expect("namespace");
        let ca_pem = indent(&tools_ca.cert_pem, 4);
        // A Connector as the README tells a user to write it: class, address, Secret, CA.
        node.apply(&format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: git-creds, namespace: {team_a}}}
type: kubernetes.io/basic-auth
stringData: {{username: {USER}, password: {PASSWORD}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: git-ca, namespace: {team_a}}}
stringData:
  ca.crt: |
{ca_pem}
---
apiVersion: connectors.io/v1alpha1
kind: Connector
metadata: {{name: git, namespace: {team_a}}}
spec:
  connectorClassName: git
  address: https://git.test/team
  auth: {{secretRef: {{name: git-creds}}}}
  caCertSecretRef: {{name: git-ca}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: builder, namespace: {team_a}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: nobody, namespace: {team_a}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: use-git, namespace: {team_a}}}
rules:
  - apiGroups: [connectors.io]
    resources: [connectors]
    resourceNames: [git]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: builder-uses-git, namespace: {team_a}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: use-git}}
subjects: [{{kind: ServiceAccount, name: builder, namespace: {team_a}}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: tools-ca, namespace: {team_a}}}
data:
  ca.crt: |
{ca_pem}
"#
        ))
        .expect("apply the Connector");
        World {
            installed,
            server,
            _tools_ca: tools_ca,
            team_a,
            team_b,
        }
    });
    (turn, w)
}

impl World {
    fn node(&self) -> &KubeNode {
        self.installed.node
    }

    /// Runs `script` in a new pod (tools image) and returns its exit status and log. The pod is
    /// labelled when `labelled`; `sa` is its ServiceAccount; `extra` more spec lines.
    fn run_pod(
        &self,
        ns: &str,
        name: &str,
        labelled: bool,
        sa: &str,
        script: &str,
        extra: &str,
    ) -> (bool, String, serde_json::Value) {
        let yaml = ToolsPod {
            namespace: ns,
            name,
            labelled,
            service_account: sa,
            hosts: &["git.test", "other.test"],
            script,
            extra,
        }
        .yaml();
        self.node().apply(&yaml).expect("create the pod");
        let deadline = Instant::now() + Duration::from_secs(120);
        let phase = loop {
            let json = self.node().pod_json(ns, name).unwrap_or_default();
            let phase = json["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if phase == "Succeeded" || phase == "Failed" {
                break (phase, json);
            }
            assert!(
                Instant::now() < deadline,
                "pod {ns}/{name} did not finish: {phase}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let log = self.node().logs(ns, name).unwrap_or_default();
        (phase.0 == "Succeeded", log, phase.1)
    }

    fn context(&self) -> String {
        let access = self.server.access_log();
        let lines: Vec<&str> = access.lines().collect();
        format!(
            "git server access log (last 40 lines):\n{}\nagent log:\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n"),
            self.installed.agent_log()
        )
    }
}

/// Each failed pod matching `selector`: its name, when its container started, and its log.
fn failed_pods(node: &KubeNode, ns: &str, selector: &str) -> String {
    let list = node
        .kubectl_ok(&[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            selector,
            "--field-selector",
            "status.phase=Failed",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].state.terminated.startedAt}{\"\\n\"}{end}",
        ])
        .unwrap_or_else(|e| e);
    let mut out = String::new();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let log = node.logs(ns, name).unwrap_or_else(|e| e);
        out.push_str(&format!("pod {line}:\n{log}\n"));
    }
    out
}

/// `git clone` with no credentials, then print the README.
const CLONE: &str = "git clone -q https://git.test/team/app.git /tmp/app && cat /tmp/app/README.md";

#[test]
fn a_labelled_pod_clones_with_no_credentials_and_an_unlabelled_one_is_refused_by_the_tool() {
    let (_turn, w) = world();
    let ns = &w.team_a;
    let (ok, log, pod) = w.run_pod(ns, "labelled-clone", true, "builder", CLONE, "");
    assert!(ok, "clone failed: {log}\n{}", w.context());
    assert!(log.contains("team app"), "{log}");
    // The pod as stored shows the webhook's CA trust, and no credential.
    let env = pod["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("GIT_SSL_CAINFO"), "{env}");
    assert!(!pod.to_string().contains(PASSWORD));
    // The tool saw the injected user.
    assert!(
        w.server
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some(USER)
                && r.uri.starts_with("/team/app.git")
                && r.status == 200),
        "{}",
        w.context()
    );

    // The same clone from a pod without the label goes direct: the tool asks for credentials.
    let direct =
        "GIT_SSL_CAINFO=/tools-ca/ca.crt git clone -q https://git.test/team/app.git /tmp/app";
    let mount = "      volumeMounts: [{name: ca, mountPath: /tools-ca}]\n  volumes: [{name: ca, configMap: {name: tools-ca}}]";
    let (ok, log, pod) = w.run_pod(ns, "unlabelled-clone", false, "builder", direct, mount);
    assert!(!ok, "an unlabelled pod cloned: {log}");
    assert!(
        log.contains("401")
            || log.contains("Authentication failed")
            || log.contains("could not read Username"),
        "{log}"
    );
    assert!(
        pod["spec"]["containers"][0]["env"].is_null(),
        "the webhook touched an unlabelled pod: {}",
        pod["spec"]
    );
}

#[test]
fn other_names_and_paths_on_the_tool_pass_through_untouched() {
    let (_turn, w) = world();
    let ns = &w.team_a;
    // A name on the same address that no Connector serves: the server's own certificate (only
    // the tools CA is trusted here) and its own answer.
    let other = "curl -sS --cacert /tools-ca/ca.crt -o /tmp/f -w '%{http_code}' https://other.test/files/hello.txt";
    let mount = "      volumeMounts: [{name: ca, mountPath: /tools-ca}]\n  volumes: [{name: ca, configMap: {name: tools-ca}}]";
    let (ok, log, _) = w.run_pod(ns, "other-name", true, "builder", other, mount);
    assert!(ok, "{log}\n{}", w.context());
    // nginx asks for credentials everywhere: 401 is its answer, untouched by the agent.
    assert!(log.ends_with("401"), "{log}");
    assert!(
        w.server
            .requests()
            .iter()
            .any(|r| r.uri == "/files/hello.txt" && r.user.is_none()),
        "{}",
        w.context()
    );
    // A path of the tool host outside the Connector's prefix: forwarded, without credentials.
    let outside = "curl -sS -o /dev/null -w '%{http_code}' https://git.test/other/secret.git/info/refs?service=git-upload-pack";
    let (ok, log, _) = w.run_pod(ns, "outside-prefix", true, "builder", outside, "");
    assert!(ok, "{log}\n{}", w.context());
    assert!(
        log.trim() == "401",
        "curl printed {log:?}, not 401\n{}",
        w.context()
    );
    for r in w.server.requests() {
        if r.user.is_some() {
            assert!(
                r.uri.starts_with("/team/"),
                "credentials outside the prefix: {r:?}"
            );
        }
    }
}

#[test]
fn a_pod_of_another_namespace_is_refused_until_the_connector_is_shared_with_it() {
    let (_turn, w) = world();
    let (a, b) = (&w.team_a, &w.team_b);
    let probe = "curl -sS -o /tmp/body -w '%{http_code}' https://git.test/team/app.git/info/refs?service=git-upload-pack; echo; cat /tmp/body";
    let (_, log, _) = w.run_pod(b, "b-before", true, "default", probe, "");
    assert!(log.starts_with("403"), "{log}\n{}", w.context());
    assert!(log.contains("not shared with namespace"), "{log}");
    assert!(log.contains("connectors.io/shared-with"), "{log}");
    // Shared, and b's ServiceAccount allowed to get it.
    w.node()
        .kubectl_ok(&[
            "-n",
            a,
            "annotate",
            "--overwrite",
            "connector",
            "git",
            &format!("connectors.io/shared-with={b}"),
        ])
        .expect("annotate");
    w.node()
        .apply(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: b-uses-git, namespace: {a}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: use-git}}\nsubjects: [{{kind: ServiceAccount, name: default, namespace: {b}}}]\n"
        ))
        .expect("bind");
    let (ok, log, _) = w.run_pod(b, "b-after", true, "default", CLONE, "");
    assert!(
        ok,
        "clone from b after sharing failed: {log}\n{}",
        w.context()
    );
}

#[test]
fn a_service_account_without_rbac_is_refused_until_a_role_binding_is_added() {
    let (_turn, w) = world();
    let a = &w.team_a;
    let probe = "curl -sS -o /tmp/body -w '%{http_code}' https://git.test/team/app.git/info/refs?service=git-upload-pack; echo; cat /tmp/body";
    let (_, log, _) = w.run_pod(a, "nobody-before", true, "nobody", probe, "");
    assert!(log.starts_with("403"), "{log}\n{}", w.context());
    assert!(log.contains("may not get Connector"), "{log}");
    assert!(log.contains("bind a Role"), "{log}");
    w.node()
        .apply(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: nobody-uses-git, namespace: {a}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: use-git}}\nsubjects: [{{kind: ServiceAccount, name: nobody, namespace: {a}}}]\n"
        ))
        .expect("bind");
    let bound = Instant::now();
    // Within the agent's cache TTL (10 s by default), the new binding counts.
    let retry = format!(
        "for i in $(seq 1 30); do {CLONE} && exit 0; rm -rf /tmp/app; sleep 1; done; exit 1"
    );
    let (ok, log, _) = w.run_pod(a, "nobody-after", true, "nobody", &retry, "");
    assert!(
        ok,
        "still refused after the RoleBinding: {log}\n{}",
        w.context()
    );
    assert!(
        bound.elapsed() < Duration::from_secs(40),
        "{:?}",
        bound.elapsed()
    );
}

#[test]
fn the_agent_cannot_read_secrets() {
    let (_turn, w) = world();
    let sa = "system:serviceaccount:connectors-system:connectors-agent";
    for ns in [w.team_a.as_str(), "connectors-system", "default"] {
        let out = w
            .node()
            .kubectl()
            .args(["auth", "can-i", "get", "secrets", "-n", ns, "--as", sa])
            .output()
            .expect("kubectl");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{ns}");
    }
    let out = w
        .node()
        .kubectl()
        .args([
            "auth",
            "can-i",
            "list",
            "secrets",
            "--all-namespaces",
            "--as",
            sa,
        ])
        .output()
        .expect("kubectl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
}

/// The cgroup ids in the redirect's workload map, read with bpftool.
fn workload_map_ids() -> Vec<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "name", "WORKLOADS"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    json.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let key = e["key"].as_array()?;
            let bytes: Vec<u8> = key
                .iter()
                .filter_map(|b| {
                    b.as_str()
                        .and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                        .or_else(|| b.as_u64().and_then(|v| u8::try_from(v).ok()))
                })
                .collect();
            Some(u64::from_ne_bytes(bytes.try_into().ok()?))
        })
        .collect()
}

#[test]
fn deleting_a_pod_takes_it_out_of_the_redirect_within_a_second() {
    let (_turn, w) = world();
    let ns = &w.team_a;
    let node = w.node();
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: sleeper, namespace: {ns}, labels: {{{LABEL}}}}}
spec:
  serviceAccountName: builder
  terminationGracePeriodSeconds: 1
  containers: [{{name: main, image: {TOOLS_IMAGE}, imagePullPolicy: Never, command: [sleep, "600"]}}]
"#
    ))
    .expect("pod");
    node.wait_pod_ready(ns, "sleeper", Duration::from_secs(60))
        .expect("ready");
    let cgroup = node.pod_cgroup(ns, "sleeper").expect("cgroup");
    let id = std::fs::metadata(&cgroup.pod_dir)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("pod cgroup");
    assert!(
        workload_map_ids().contains(&id),
        "the running pod's cgroup {id} is not in the workload map: {:?}\n{}",
        workload_map_ids(),
        w.context()
    );
    node.kubectl_ok(&["-n", ns, "delete", "pod", "sleeper", "--wait=true"])
        .expect("delete");
    let gone = Instant::now();
    while workload_map_ids().contains(&id) {
        assert!(
            gone.elapsed() < Duration::from_secs(1),
            "the deleted pod's cgroup is still under the redirect after {:?}",
            gone.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "out of the redirect {:?} after the pod was gone",
        gone.elapsed()
    );
}

#[test]
fn a_hundred_labelled_pods_come_up_under_redirect_and_each_clones() {
    let (_turn, w) = world();
    let ns = &w.team_a;
    let node = w.node();
    let script = CLONE.replace('\'', "''");
    node.apply(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: hundred, namespace: {ns}}}
spec:
  completions: 100
  parallelism: 100
  backoffLimit: 0
  template:
    metadata: {{labels: {{{LABEL}}}}}
    spec:
      serviceAccountName: builder
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      hostAliases: [{{ip: "{TOOLS_IP}", hostnames: [git.test]}}]
      containers:
        - name: main
          image: {TOOLS_IMAGE}
          imagePullPolicy: Never
          command: [sh, -c, '{script}']
"#
    ))
    .expect("job");
    let started = Instant::now();
    loop {
        let json: serde_json::Value = serde_json::from_str(
            &node
                .kubectl_ok(&["-n", ns, "get", "job", "hundred", "-o", "json"])
                .expect("job"),
        )
        .expect("json");
        let ok = json["status"]["succeeded"].as_u64().unwrap_or(0);
        let failed = json["status"]["failed"].as_u64().unwrap_or(0);
        if failed > 0 {
            panic!(
                "a pod of the hundred failed:\n{}\n{}",
                failed_pods(node, ns, "job-name=hundred"),
                w.context()
            );
        }
        if ok == 100 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{ok}/100 done after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("100 labelled pods cloned in {:?}", started.elapsed());
    let metrics = w.installed.agent_metrics();
    assert!(
        metrics.contains("connectors_agent_redirect_activation_seconds_count"),
        "{metrics}"
    );
}
