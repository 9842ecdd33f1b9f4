//! `cargo xtask node smoke`: the node end to end, in a fresh namespace (etcd data outlives a
//! stop, and a namespace takes 30-90 s to delete): a BestEffort and a Burstable pod of the
//! tools image (timed from apply to Ready, `git --version` in their logs), a Job, a privileged
//! hostNetwork DaemonSet, the apiserver reached with a pod's ServiceAccount token (on the node
//! IP, and through the `kubernetes` Service's ClusterIP that kube-proxy routes, with the
//! environment the kubelet injects), then a pod's cgroup v2 folder (found from the `0::` line of
//! `/proc/<pid>/cgroup`, holding the container's pid) and network namespace (its own, with
//! `eth0` in the pod network). Every check prints PASS or FAIL; any FAIL fails the task.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use connectors_tests::node::{API_PORT, KubeNode, TOOLS_IMAGE, tools_pod_yaml};

const TIMEOUT: Duration = Duration::from_secs(120);

struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, what: &str, result: Result<String, String>) {
        match result {
            Ok(detail) if detail.is_empty() => println!("PASS: {what}"),
            Ok(detail) => println!("PASS: {what}: {detail}"),
            Err(e) => {
                println!("FAIL: {what}: {e}");
                self.failed.push(what.to_owned());
            }
        }
    }
}

pub fn run(node: &KubeNode, keep: bool) -> anyhow::Result<()> {
    let mut c = Checks { failed: Vec::new() };
    let nodes = node
        .kubectl_ok(&["get", "nodes", "-o", "wide"])
        .map_err(anyhow::Error::msg)?;
    print!("{nodes}");
    // Earlier smoke namespaces: let them go.
    if let Ok(names) = node.kubectl_ok(&["get", "namespaces", "-o", "name"]) {
        for n in names
            .lines()
            .filter(|n| n.starts_with("namespace/kn-smoke-"))
        {
            let _ = node.kubectl_ok(&["delete", n, "--wait=false"]);
        }
    }
    let ns = node
        .create_namespace("kn-smoke")
        .map_err(anyhow::Error::msg)?;
    println!("namespace {ns}");

    // Pods: BestEffort and Burstable, timed.
    for (pod, extra) in [
        ("tools", ""),
        ("tools2", "resources: {requests: {cpu: 10m, memory: 16Mi}}"),
    ] {
        let t = Instant::now();
        let r = node
            .apply(&tools_pod_yaml(
                &ns,
                pod,
                &format!("app: kn-smoke, role: client, instance: {pod}"),
                "git --version; curl --version | head -1; exec sleep 3600",
                extra,
            ))
            .and_then(|_| node.wait_pod_ready(&ns, pod, TIMEOUT))
            .map(|_| format!("apply -> Ready in {} ms", t.elapsed().as_millis()));
        c.check(&format!("pod {pod} Ready"), r);
    }
    c.check(
        "git runs in a kubelet-made pod",
        node.logs(&ns, "tools").and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("git version"))
                .map(str::to_owned)
                .ok_or(format!("no `git version` in the log:\n{l}"))
        }),
    );

    // A Job.
    let t = Instant::now();
    let job = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: git-version, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    metadata: {{labels: {{app: kn-smoke-job}}}}
    spec:
      restartPolicy: Never
      containers: [{{name: git, image: "{TOOLS_IMAGE}", imagePullPolicy: Never, command: [git, --version]}}]
"#
    );
    c.check(
        "Job completes",
        node.apply(&job)
            .and_then(|_| {
                node.kubectl_ok(&[
                    "-n",
                    &ns,
                    "wait",
                    "--for=condition=complete",
                    "job/git-version",
                    &format!("--timeout={}s", TIMEOUT.as_secs()),
                ])
            })
            .and_then(|_| node.kubectl_ok(&["-n", &ns, "logs", "job/git-version"]))
            .map(|l| format!("{} ms: {}", t.elapsed().as_millis(), l.trim())),
    );

    // A hostNetwork DaemonSet, privileged, with the in-cluster apiserver address overridden.
    let t = Instant::now();
    let env: Vec<String> = node
        .in_cluster_env()
        .iter()
        .map(|(k, v)| format!("{{name: {k}, value: \"{v}\"}}"))
        .collect();
    let ds = format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: kn-agent}}}}
  template:
    metadata: {{labels: {{app: kn-agent}}}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      tolerations: [{{operator: Exists}}]
      containers:
      - name: agent
        image: {TOOLS_IMAGE}
        imagePullPolicy: Never
        securityContext: {{privileged: true}}
        command: [sh, -c, 'ip -4 -o addr show dev lo; exec sleep 3600']
        env: [{env}]
"#,
        env = env.join(", ")
    );
    c.check(
        "hostNetwork DaemonSet rolled out",
        node.apply(&ds)
            .and_then(|_| {
                node.kubectl_ok(&[
                    "-n",
                    &ns,
                    "rollout",
                    "status",
                    "ds/agent",
                    &format!("--timeout={}s", TIMEOUT.as_secs()),
                ])
            })
            .map(|_| format!("{} ms", t.elapsed().as_millis())),
    );
    let agent = node
        .kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "pods",
            "-l",
            "app=kn-agent",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .unwrap_or_default();

    // Pods reach the apiserver with their ServiceAccount token, on the node IP.
    let curl_sa = format!(
        "curl -sS -m 5 --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt -H \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" https://{}:{API_PORT}/version",
        node.node_ip
    );
    for (what, pod) in [
        ("pod reaches the apiserver with its SA token", "tools"),
        ("hostNetwork pod reaches the apiserver", agent.as_str()),
    ] {
        c.check(
            what,
            node.exec(&ns, pod, &["sh", "-c", &curl_sa])
                .and_then(|out| {
                    out.contains("gitVersion")
                        .then(String::new)
                        .ok_or(format!("no version in: {out}"))
                }),
        );
    }

    // The same through the `kubernetes` Service: the ClusterIP the kubelet injects (kube-proxy).
    let curl_svc = "curl -sS -m 5 --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt -H \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version";
    c.check(
        "pod reaches the apiserver through the kubernetes Service (kube-proxy)",
        node.exec(&ns, "tools", &["sh", "-c", curl_svc])
            .and_then(|out| {
                out.contains("gitVersion")
                    .then(String::new)
                    .ok_or(format!("no version in: {out}"))
            }),
    );

    // The pod's cgroup v2 folder and network namespace.
    match node.pod_cgroup(&ns, "tools") {
        Err(e) => c.check("pod cgroup v2 folder", Err(e)),
        Ok(cg) => {
            println!(
                "pod tools: uid {} qos {} container {} pid {}\n  0::{}\n  pod folder {}",
                cg.uid,
                cg.qos,
                cg.container_id,
                cg.pid,
                cg.cgroup_path,
                cg.pod_dir.display()
            );
            let procs =
                std::fs::read_to_string(cg.container_dir.join("cgroup.procs")).unwrap_or_default();
            c.check(
                "container pid in its cgroup v2 folder",
                if procs.lines().any(|l| l.trim() == cg.pid.to_string()) {
                    Ok(cg.container_dir.display().to_string())
                } else {
                    Err(format!(
                        "pid {} not in {}/cgroup.procs",
                        cg.pid,
                        cg.container_dir.display()
                    ))
                },
            );
            c.check(
                "pod folder is kubepods/besteffort/pod<uid>",
                if cg
                    .pod_dir
                    .ends_with(format!("kubepods/besteffort/pod{}", cg.uid))
                {
                    Ok(String::new())
                } else {
                    Err(cg.pod_dir.display().to_string())
                },
            );
            let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap_or_default();
            let pod_ns = std::fs::read_link(&cg.netns).unwrap_or_default();
            c.check(
                "pod has its own network namespace",
                if pod_ns != host_ns && !pod_ns.as_os_str().is_empty() {
                    Ok(format!("{} (host {})", pod_ns.display(), host_ns.display()))
                } else {
                    Err(format!("{} is the host's", pod_ns.display()))
                },
            );
            c.check(
                "pod netns has eth0 in the pod network",
                crate::cmd::output(
                    Command::new("nsenter")
                        .arg("-t")
                        .arg(cg.pid.to_string())
                        .args(["-n", "ip", "-4", "-o", "addr", "show", "dev", "eth0"]),
                )
                .map_err(|e| e.to_string())
                .and_then(|out| {
                    out.split_whitespace()
                        .find(|w| w.starts_with("198.19.0."))
                        .map(str::to_owned)
                        .ok_or(format!("no 198.19.0.x address: {out}"))
                }),
            );
        }
    }
    match node.pod_cgroup(&ns, "tools2") {
        Err(e) => c.check("Burstable pod cgroup v2 folder", Err(e)),
        Ok(cg) => c.check(
            "Burstable pod folder is kubepods/burstable/pod<uid>",
            if cg
                .pod_dir
                .ends_with(format!("kubepods/burstable/pod{}", cg.uid))
                && cg.pod_dir.is_dir()
            {
                Ok(cg.pod_dir.display().to_string())
            } else {
                Err(cg.pod_dir.display().to_string())
            },
        ),
    }

    if c.failed.is_empty() {
        if !keep {
            let _ = node.delete_namespace(&ns);
        }
        println!("SMOKE OK");
        Ok(())
    } else {
        bail!(
            "SMOKE FAILED ({} of the checks: {}); namespace {ns} is kept",
            c.failed.len(),
            c.failed.join("; ")
        )
    }
}
