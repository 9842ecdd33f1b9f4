//! Connectors installed on the real single-node cluster ([`crate::node`]) as an admin installs
//! it: the images imported into the node's containerd, then `kubectl apply -k` of `deploy/`
//! through a small overlay for what this test node lacks (cluster DNS: the agent gets the tool
//! names from a hosts file), and the controller and the agent Ready.
//!
//! The tools the tests use run on the node's address ([`TOOLS_IP`]), which pods reach; pods name
//! them through `hostAliases` (again: no cluster DNS here).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::node::KubeNode;

/// Where the test tools listen: the node's own address (pods reach it, nothing else is needed).
pub const TOOLS_IP: &str = crate::node::NODE_IP;
/// The namespace Connectors is installed in.
pub const SYSTEM_NAMESPACE: &str = "connectors-system";

/// The label that puts a pod under Connectors.
pub const INJECT_LABEL: &str = "connectors.io/inject: \"true\"";

/// A pod of the tools image that runs `script` once and names the tools through
/// `hostAliases` (this node has no cluster DNS).
pub struct ToolsPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// Whether it carries [`INJECT_LABEL`] (it always carries `app: connectors-test`).
    pub labelled: bool,
    pub service_account: &'a str,
    /// Names that resolve to [`TOOLS_IP`] in the pod.
    pub hosts: &'a [&'a str],
    pub script: &'a str,
    /// More lines, indented to follow the container (volume mounts, then pod-level fields).
    pub extra: &'a str,
}

impl ToolsPod<'_> {
    /// A labelled pod of the `default` ServiceAccount reaching `git.test`.
    pub fn labelled<'a>(namespace: &'a str, name: &'a str, script: &'a str) -> ToolsPod<'a> {
        ToolsPod {
            namespace,
            name,
            labelled: true,
            service_account: "default",
            hosts: &["git.test"],
            script,
            extra: "",
        }
    }

    pub fn yaml(&self) -> String {
        let ToolsPod {
            namespace,
            name,
            service_account,
            extra,
            ..
        } = self;
        let labels = if self.labelled {
            format!("app: connectors-test, {INJECT_LABEL}")
        } else {
            "app: connectors-test".to_owned()
        };
        let hosts = self.hosts.join(", ");
        let script = self.script.replace('\'', "''");
        let image = crate::node::TOOLS_IMAGE;
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}
spec:
  serviceAccountName: {service_account}
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  hostAliases: [{{ip: "{TOOLS_IP}", hostnames: [{hosts}]}}]
  containers:
    - name: main
      image: {image}
      imagePullPolicy: Never
      command: [sh, -c, '{script}']
{extra}
"#
        )
    }
}

/// The installation, once per test process.
pub struct Installed {
    pub node: &'static KubeNode,
    /// The overlay that was applied (kustomize folder).
    pub overlay: PathBuf,
}

impl Installed {
    /// Connectors on the node for this test process: installed (or updated) once. Fails the
    /// test, naming what to run, when it cannot be had.
    pub fn shared(host_names: &[&str]) -> &'static Installed {
        match Self::try_shared(host_names) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        }
    }

    /// As [`Installed::shared`], with the failure as an error (for tools other than tests).
    pub fn try_shared(host_names: &[&str]) -> Result<&'static Installed, String> {
        static INSTALLED: OnceLock<Result<Installed, String>> = OnceLock::new();
        let names: Vec<String> = host_names.iter().map(|s| (*s).to_owned()).collect();
        INSTALLED
            .get_or_init(|| install(&names))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// `kubectl` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.node.kubectl_ok(args)
    }

    /// The running agent pod's name.
    pub fn agent_pod(&self) -> Result<String, String> {
        self.kubectl(&[
            "-n",
            SYSTEM_NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=connectors-agent",
            "--field-selector",
            "status.phase=Running",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
    }

    /// The agent's log (its current container).
    pub fn agent_log(&self) -> String {
        match self.agent_pod() {
            Ok(pod) => self
                .kubectl(&["-n", SYSTEM_NAMESPACE, "logs", &pod, "--tail=400"])
                .unwrap_or_else(|e| e),
            Err(e) => e,
        }
    }

    /// Follows the running agent pod's log into a file for as long as the pod lives (its log
    /// goes with it): for a test that restarts the agent and needs the log of the one it stopped.
    pub fn follow_agent_log(&self) -> Result<FollowedLog, String> {
        let pod = self.agent_pod()?;
        let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        let out = file.reopen().map_err(|e| e.to_string())?;
        let child = self
            .node
            .kubectl()
            .args(["-n", SYSTEM_NAMESPACE, "logs", "-f", &pod])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("kubectl logs -f: {e}"))?;
        Ok(FollowedLog { pod, child, file })
    }

    /// The controller replicas' logs.
    pub fn controller_log(&self) -> String {
        self.kubectl(&[
            "-n",
            SYSTEM_NAMESPACE,
            "logs",
            "-l",
            "app.kubernetes.io/name=connectors-controller",
            "--tail=200",
            "--prefix",
        ])
        .unwrap_or_else(|e| e)
    }

    /// The agent's `/metrics` (on the node's address, hostNetwork).
    pub fn agent_metrics(&self) -> String {
        let addr = format!("{}:15020", self.node.node_ip);
        crate::agent::http_get(addr.parse().expect("address"), "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

/// An agent pod's log, followed into a file (see [`Installed::follow_agent_log`]).
pub struct FollowedLog {
    pub pod: String,
    child: std::process::Child,
    file: tempfile::NamedTempFile,
}

impl FollowedLog {
    /// What the pod has logged so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(self.file.path()).unwrap_or_default()
    }
}

impl Drop for FollowedLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs again, whatever was installed before (an uninstall-then-install test).
pub fn install_again(host_names: &[&str]) -> Result<Installed, String> {
    let names: Vec<String> = host_names.iter().map(|s| (*s).to_owned()).collect();
    install(&names)
}

fn install(host_names: &[String]) -> Result<Installed, String> {
    let node = KubeNode::shared();
    crate::node::import_project_images(&node.paths)
        .map_err(|e| format!("{e} (build the images with `cargo xtask image`)"))?;
    let overlay = write_overlay(host_names)?;
    let started = Instant::now();
    node.kubectl_ok(&["apply", "-k", &overlay.display().to_string()])
        .map_err(|e| format!("kubectl apply -k {}: {e}", overlay.display()))?;
    // A fresh image under the same tag: restart what runs (a no-op on a first install).
    for what in [
        "deployment/connectors-controller",
        "daemonset/connectors-agent",
    ] {
        node.kubectl_ok(&["-n", SYSTEM_NAMESPACE, "rollout", "restart", what])
            .map_err(|e| format!("rollout restart {what}: {e}"))?;
    }
    for what in [
        "deployment/connectors-controller",
        "daemonset/connectors-agent",
    ] {
        node.kubectl_ok(&[
            "-n",
            SYSTEM_NAMESPACE,
            "rollout",
            "status",
            what,
            "--timeout=180s",
        ])
        .map_err(|e| {
            format!(
                "{what} did not become ready: {e}\n{}",
                node.kubectl_ok(&["-n", SYSTEM_NAMESPACE, "get", "pods", "-o", "wide"])
                    .unwrap_or_default()
            )
        })?;
    }
    eprintln!("Connectors installed in {:?}", started.elapsed());
    let installed = Installed { node, overlay };
    // The agent is ready once its redirect is attached; the controller has installed the
    // built-in classes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while installed
        .kubectl(&["get", "connectorclass", "git"])
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!(
                "the controller did not install the built-in classes:\n{}",
                installed.controller_log()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(installed)
}

/// The overlay: `deploy/` plus, since this node has no cluster DNS, the tool names for the agent
/// (a hosts file) and for the controller's probes (`hostAliases`).
fn write_overlay(host_names: &[String]) -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .ok_or("no workspace root")?;
    let dir = root.join("target/kube-install");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let hosts = format!("{TOOLS_IP} {}\n", host_names.join(" "));
    let aliases = host_names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let kustomization = format!(
        r#"# Written by the tests: deploy/ as an admin applies it, plus a hosts file for the agent
# (the test node has no cluster DNS).
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../deploy
configMapGenerator:
  - name: connectors-test-hosts
    namespace: {SYSTEM_NAMESPACE}
    options:
      disableNameSuffixHash: true
    literals:
      - hosts={hosts}
patches:
  - target:
      kind: DaemonSet
      name: connectors-agent
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --hosts-file=/etc/connectors/hosts/hosts
      - op: add
        path: /spec/template/spec/volumes/-
        value:
          name: test-hosts
          configMap:
            name: connectors-test-hosts
      - op: add
        path: /spec/template/spec/containers/0/volumeMounts/-
        value:
          name: test-hosts
          mountPath: /etc/connectors/hosts
          readOnly: true
  - target:
      kind: Deployment
      name: connectors-controller
    patch: |-
      - op: add
        path: /spec/template/spec/hostAliases
        value: [{{ip: "{TOOLS_IP}", hostnames: [{aliases}]}}]
"#
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
