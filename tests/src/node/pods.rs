//! Driving the node from a test: kubectl as the admin, apply, wait for a pod, exec, logs, and a
//! pod's container process as the host sees it: its pid, its cgroup v2 folders (from the `0::`
//! line of `/proc/<pid>/cgroup`, never built by hand) and its network namespace.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::KubeNode;
use super::host;
use super::start::ctr;

/// A pod's container as the host sees it.
#[derive(Debug, Clone)]
pub struct PodCgroup {
    /// The pod's uid.
    pub uid: String,
    /// `BestEffort`, `Burstable` or `Guaranteed`.
    pub qos: String,
    /// The container's id in containerd.
    pub container_id: String,
    /// The container's main process.
    pub pid: u32,
    /// The path of the `0::` line, e.g. `/kubepods/besteffort/pod<uid>/<container id>`.
    pub cgroup_path: String,
    /// The container's cgroup v2 folder (its pid is in `cgroup.procs` there).
    pub container_dir: PathBuf,
    /// The pod's cgroup v2 folder (the parent: the sandbox and every container of the pod are
    /// below it); the place to attach per-pod cgroup eBPF programs.
    pub pod_dir: PathBuf,
    /// `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
}

impl KubeNode {
    /// `kubectl` as the admin, with a discovery cache in the state folder.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.paths.dir.join("kubectl-cache"))
            .stdin(Stdio::null());
        c
    }

    /// Runs `kubectl ARGS`; its stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, String> {
        host::run(self.kubectl().args(args))
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run kubectl: {e}; run `cargo xtask setup`"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(yaml.as_bytes())
                .map_err(|e| format!("kubectl apply: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl apply: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kubectl apply failed: {}\n{yaml}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new namespace `<prefix>-<random>` (namespaces take 30-90 s to delete, and etcd data
    /// outlives a stop: each run takes a fresh one), once its default ServiceAccount exists.
    pub fn create_namespace(&self, prefix: &str) -> Result<String, String> {
        let name = format!("{prefix}-{}", host::random_hex(4)?);
        self.kubectl_ok(&["create", "namespace", &name])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .kubectl_ok(&["-n", &name, "get", "serviceaccount", "default"])
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(format!("namespace {name} got no default ServiceAccount"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(name)
    }

    /// Deletes a namespace without waiting for it to go.
    pub fn delete_namespace(&self, name: &str) -> Result<(), String> {
        self.kubectl_ok(&["delete", "namespace", name, "--wait=false"])
            .map(drop)
    }

    /// Waits until pod `ns/name` is Ready; how long that took from the call. On timeout the
    /// error holds the end of `kubectl describe`.
    pub fn wait_pod_ready(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let t = Instant::now();
        let r = self.kubectl_ok(&[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            &format!("--timeout={}s", timeout.as_secs().max(1)),
        ]);
        match r {
            Ok(_) => Ok(t.elapsed()),
            Err(e) => {
                let describe = self
                    .kubectl_ok(&["-n", ns, "describe", "pod", name])
                    .unwrap_or_default();
                let lines: Vec<&str> = describe.lines().collect();
                Err(format!(
                    "pod {ns}/{name} not Ready after {} s ({e}):\n{}",
                    timeout.as_secs(),
                    lines[lines.len().saturating_sub(25)..].join("\n")
                ))
            }
        }
    }

    /// Waits until pod `ns/name` is in one of `phases` (e.g. `Succeeded`, `Failed` for a pod
    /// that runs to its end); the phase. On timeout the error holds the end of
    /// `kubectl describe`.
    pub fn wait_pod_phase(
        &self,
        ns: &str,
        name: &str,
        phases: &[&str],
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(pod) = self.pod_json(ns, name) {
                last = pod["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if phases.contains(&last.as_str()) {
                    return Ok(last);
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let describe = self
            .kubectl_ok(&["-n", ns, "describe", "pod", name])
            .unwrap_or_default();
        let lines: Vec<&str> = describe.lines().collect();
        Err(format!(
            "pod {ns}/{name} is {last:?}, not one of {phases:?}, after {} s:\n{}",
            timeout.as_secs(),
            lines[lines.len().saturating_sub(25)..].join("\n")
        ))
    }

    /// containerd's record of a container (`ctr containers info`): its OCI runtime spec under
    /// `Spec` (`Spec.process.user.uid` is the uid it runs as), image, labels.
    pub fn container_info(&self, container_id: &str) -> Result<serde_json::Value, String> {
        let text = ctr(&self.paths, &["containers", "info", container_id])?;
        serde_json::from_str(&text).map_err(|e| format!("container {container_id}: {e}"))
    }

    /// The container id (in containerd) of the pod's first container, once it has one.
    pub fn container_id(&self, ns: &str, pod: &str) -> Result<String, String> {
        let json = self.pod_json(ns, pod)?;
        json["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|c| c.strip_prefix("containerd://"))
            .map(str::to_owned)
            .ok_or_else(|| format!("pod {ns}/{pod} has no container yet"))
    }

    /// The pod object as JSON.
    pub fn pod_json(&self, ns: &str, name: &str) -> Result<serde_json::Value, String> {
        let text = self.kubectl_ok(&["-n", ns, "get", "pod", name, "-o", "json"])?;
        serde_json::from_str(&text).map_err(|e| format!("pod {ns}/{name}: {e}"))
    }

    /// `kubectl exec` in the pod's first container; its stdout.
    pub fn exec(&self, ns: &str, pod: &str, command: &[&str]) -> Result<String, String> {
        let mut args = vec!["-n", ns, "exec", pod, "--"];
        args.extend_from_slice(command);
        self.kubectl_ok(&args)
    }

    /// The pod's logs (first container).
    pub fn logs(&self, ns: &str, pod: &str) -> Result<String, String> {
        self.kubectl_ok(&["-n", ns, "logs", pod])
    }

    /// The pid, cgroup v2 folders and network namespace of the pod's first container, which
    /// must be running.
    pub fn pod_cgroup(&self, ns: &str, pod: &str) -> Result<PodCgroup, String> {
        let json = self.pod_json(ns, pod)?;
        let uid = json["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let qos = json["status"]["qosClass"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let container_id = json["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|c| c.strip_prefix("containerd://"))
            .ok_or_else(|| format!("pod {ns}/{pod} has no running container yet"))?
            .to_owned();
        let pid = self.container_pid(&container_id)?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| format!("/proc/{pid}/cgroup: {e}"))?;
        let cgroup_path = cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| {
                format!("/proc/{pid}/cgroup has no 0:: line (no cgroup v2 hierarchy?):\n{cgroup}")
            })?
            .to_owned();
        let root = host::cgroup2_root().ok_or("no cgroup2 file system is mounted")?;
        let container_dir = root.join(cgroup_path.trim_start_matches('/'));
        let pod_dir = container_dir
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} has no parent", container_dir.display()))?;
        Ok(PodCgroup {
            uid,
            qos,
            container_id,
            pid,
            cgroup_path,
            container_dir,
            pod_dir,
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
        })
    }

    /// The main process of a container, from containerd's task list.
    pub fn container_pid(&self, container_id: &str) -> Result<u32, String> {
        let tasks = ctr(&self.paths, &["tasks", "ls"])?;
        // TASK  PID  STATUS
        tasks
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?, f.next()?))
            })
            .find(|(task, _)| *task == container_id)
            .and_then(|(_, pid)| pid.parse().ok())
            .ok_or_else(|| format!("containerd has no task {container_id}:\n{tasks}"))
    }
}

/// A Pod of [`super::TOOLS_IMAGE`] running `sh -c SCRIPT` (one container `main`, grace 1 s,
/// never pulled), as YAML. `labels` is flow-mapping content (`app: x, role: y`); `extra` is one
/// more field of the container (e.g. `resources: {requests: {cpu: 10m}}`), or empty.
pub fn tools_pod_yaml(ns: &str, name: &str, labels: &str, script: &str, extra: &str) -> String {
    let script = script.replace('\'', "''");
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("\n    {extra}")
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: [sh, -c, '{script}']{extra}
"#,
        image = super::TOOLS_IMAGE,
    )
}
