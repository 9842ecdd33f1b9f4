//! The node's processes: their command lines and configuration files (containerd's own config,
//! the CNI bridge network, the kubelet configuration), all under the state folder; the
//! settings and why are in the comments.

use std::process::Command;

use super::{
    API_PORT, BRIDGE, ETCD_PORT, NODE_IP, NODE_NAME, PAUSE_IMAGE, POD_CIDR, POD_GATEWAY, Paths,
    SERVICE_CIDR, bin_dir,
};

/// Where Debian's containernetworking-plugins are.
pub(super) const CNI_BIN: &str = "/usr/lib/cni";

pub(super) fn etcd_command(paths: &Paths) -> Command {
    let mut c = Command::new("etcd");
    let (client, peer, metrics) = (ETCD_PORT, ETCD_PORT + 1, ETCD_PORT + 2);
    c.args(["--name", "kn", "--data-dir"])
        .arg(paths.dir.join("etcd-data"))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=kn=http://127.0.0.1:{peer}"))
        .arg(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"))
        .arg("--quota-backend-bytes=1073741824");
    c
}

pub(super) fn apiserver_command(paths: &Paths) -> Command {
    let pki = paths.pki();
    let p = |f: &str| pki.join(f).display().to_string();
    let mut c = Command::new(bin_dir().join("kube-apiserver"));
    c.arg(format!("--bind-address={NODE_IP}"))
        .arg(format!("--advertise-address={NODE_IP}"))
        .arg(format!("--secure-port={API_PORT}"))
        .arg("--insecure-port=0")
        .arg(format!("--etcd-servers=http://127.0.0.1:{ETCD_PORT}"))
        .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
        .arg(format!("--client-ca-file={}", p("ca.crt")))
        .arg(format!(
            "--kubelet-client-certificate={}",
            p("apiserver-kubelet-client.crt")
        ))
        .arg(format!(
            "--kubelet-client-key={}",
            p("apiserver-kubelet-client.key")
        ))
        .arg("--kubelet-preferred-address-types=InternalIP,Hostname")
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", p("sa.pub")))
        .arg(format!("--service-account-signing-key-file={}", p("sa.key")))
        .arg("--api-audiences=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--token-auth-file={}", p("tokens.csv")))
        .arg("--authorization-mode=Node,RBAC")
        .arg("--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook")
        // Webhook and aggregated-API calls go to a Service's endpoints: no kube-proxy needed.
        .arg("--enable-aggregator-routing=true")
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--allow-privileged=true")
        .arg(format!(
            "--cert-dir={}",
            paths.run().join("apiserver-certs").display()
        ));
    c
}

pub(super) fn containerd_command(paths: &Paths) -> Command {
    let mut c = Command::new("containerd");
    c.arg("--config")
        .arg(paths.dir.join("containerd/config.toml"));
    c
}

/// containerd's own config, root, state and socket under the state folder (the system's
/// /etc/containerd is not read).
pub(super) fn write_containerd_config(paths: &Paths) -> Result<(), String> {
    let cd = paths.dir.join("containerd");
    let run_dir = paths.run();
    let text = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # No CAP_SYS_RESOURCE on this machine: a negative oom_score_adj (kubelet asks -998 for every
  # sandbox) makes runc init fail ("can't get final child's PID from pipe: EOF"). Clamp it to
  # containerd's own (0) instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{netd}"
    max_conf_num = 1
"#,
        root = cd.join("root").display(),
        state = run_dir.join("containerd").display(),
        sock = paths.containerd_socket().display(),
        opt = cd.join("opt").display(),
        runc = run_dir.join("runc").display(),
        netd = paths.dir.join("cni/net.d").display(),
    );
    let p = cd.join("config.toml");
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
}

/// The pod network: bridge [`BRIDGE`] (made by start, not by the plugin), host-local IPAM from .10 up.
pub(super) fn write_cni_config(paths: &Paths) -> Result<(), String> {
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "kn-pods",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": false,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": paths.dir.join("cni/ipam"),
                "ranges": [[{"subnet": POD_CIDR, "rangeStart": "198.19.0.10", "gateway": POD_GATEWAY}]],
                "routes": [{"dst": "0.0.0.0/0", "gw": POD_GATEWAY}]
            }
        }]
    });
    let p = paths.dir.join("cni/net.d/10-kn.conflist");
    std::fs::write(&p, format!("{conf:#}\n")).map_err(|e| format!("{}: {e}", p.display()))
}

pub(super) fn controller_manager_command(paths: &Paths) -> Command {
    let kc = paths.kubeconfig("controller-manager").display().to_string();
    let pki = paths.pki();
    let mut c = Command::new(bin_dir().join("kube-controller-manager"));
    c.arg(format!("--kubeconfig={kc}"))
        .arg(format!("--authentication-kubeconfig={kc}"))
        .arg(format!("--authorization-kubeconfig={kc}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", API_PORT + 1))
        .arg("--port=0")
        .arg("--leader-elect=false")
        .arg("--use-service-account-credentials=true")
        .arg(format!(
            "--service-account-private-key-file={}",
            pki.join("sa.key").display()
        ))
        .arg(format!("--root-ca-file={}", paths.ca_cert().display()))
        .arg(format!(
            "--cluster-signing-cert-file={}",
            paths.ca_cert().display()
        ))
        .arg(format!(
            "--cluster-signing-key-file={}",
            pki.join("ca.key").display()
        ))
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg(format!(
            "--cert-dir={}",
            paths.run().join("cm-certs").display()
        ))
        // Not the fixed /usr/libexec/kubernetes default.
        .arg(format!(
            "--flex-volume-plugin-dir={}",
            paths.dir.join("kubelet/volume-plugins").display()
        ));
    c
}

pub(super) fn scheduler_command(paths: &Paths) -> Command {
    let kc = paths.kubeconfig("scheduler").display().to_string();
    let mut c = Command::new(bin_dir().join("kube-scheduler"));
    c.arg(format!("--kubeconfig={kc}"))
        .arg(format!("--authentication-kubeconfig={kc}"))
        .arg(format!("--authorization-kubeconfig={kc}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", API_PORT + 2))
        .arg("--port=0")
        .arg("--leader-elect=false")
        .arg(format!(
            "--cert-dir={}",
            paths.run().join("sched-certs").display()
        ));
    c
}

/// kube-proxy in iptables mode, with its own client certificate. Traffic to a ClusterIP from
/// outside [`POD_CIDR`] (the host, hostNetwork pods) is masqueraded to the bridge address.
/// NodePorts only on the node IP, not on every address of the host. Host settings left alone
/// where a flag allows: no oom_score_adj (no CAP_SYS_RESOURCE here), no conntrack table size or
/// timeouts (`0` keeps the kernel's). It still sets `net.ipv4.conf.all.route_localnet=1`
/// (saved and restored: see `host::SYSCTLS`); stop runs `kube-proxy --cleanup`.
pub(super) fn kube_proxy_command(paths: &Paths) -> Command {
    let mut c = Command::new(bin_dir().join("kube-proxy"));
    c.arg(format!(
        "--kubeconfig={}",
        paths.kubeconfig("kube-proxy").display()
    ))
    .arg("--proxy-mode=iptables")
    .arg(format!("--cluster-cidr={POD_CIDR}"))
    .arg(format!("--hostname-override={NODE_NAME}"))
    // Also the node IP kube-proxy assumes (no Node lookup before the kubelet registers it).
    .arg(format!("--bind-address={NODE_IP}"))
    .arg(format!("--nodeport-addresses={NODE_IP}/32"))
    .arg(format!("--healthz-bind-address=127.0.0.1:{}", API_PORT + 5))
    .arg(format!("--metrics-bind-address=127.0.0.1:{}", API_PORT + 6))
    .arg("--oom-score-adj=0")
    .arg("--conntrack-max-per-core=0")
    .arg("--conntrack-tcp-timeout-established=0s")
    .arg("--conntrack-tcp-timeout-close-wait=0s")
    .arg("--v=1");
    c
}

/// `kube-proxy --cleanup`: removes its iptables rules and exits. `--cleanup-ipvs=false`: this
/// node never used IPVS, so the host's IPVS table (anyone's) is not flushed. It still tries to
/// destroy the IPVS mode's ipsets and, without the `ipset` tool, exits 1 for that alone: stop
/// checks the outcome with `iptables-save` instead of trusting the exit status.
pub(super) fn kube_proxy_cleanup_command() -> Command {
    let mut c = Command::new(bin_dir().join("kube-proxy"));
    c.args(["--cleanup", "--cleanup-ipvs=false"]);
    c
}

/// cgroupfs driver, no iptables rules, no swap check, evictions only at 1 % disk, the
/// flexvolume folder moved under the state folder.
pub(super) fn write_kubelet_config(paths: &Paths) -> Result<(), String> {
    let pki = paths.pki();
    let text = format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
tlsCertFile: {serving_crt}
tlsPrivateKeyFile: {serving_key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failSwapOn: false
makeIPTablesUtilChains: false
protectKernelDefaults: false
serializeImagePulls: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 10s
volumePluginDir: {plugins}
"#,
        port = API_PORT + 3,
        healthz = API_PORT + 4,
        serving_crt = pki.join("kubelet-serving.crt").display(),
        serving_key = pki.join("kubelet-serving.key").display(),
        ca = paths.ca_cert().display(),
        plugins = paths.dir.join("kubelet/volume-plugins").display(),
    );
    let p = paths.dir.join("kubelet-config.yaml");
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
}

pub(super) fn kubelet_command(paths: &Paths) -> Command {
    let mut c = Command::new(bin_dir().join("kubelet"));
    c.arg(format!(
        "--config={}",
        paths.dir.join("kubelet-config.yaml").display()
    ))
    .arg(format!(
        "--kubeconfig={}",
        paths.kubeconfig("kubelet").display()
    ))
    .arg("--container-runtime=remote")
    .arg(format!(
        "--container-runtime-endpoint=unix://{}",
        paths.containerd_socket().display()
    ))
    .arg("--runtime-request-timeout=2m")
    .arg(format!("--pod-infra-container-image={PAUSE_IMAGE}"))
    .arg(format!(
        "--root-dir={}",
        paths.dir.join("kubelet").display()
    ))
    .arg(format!(
        "--cert-dir={}",
        paths.dir.join("kubelet/pki").display()
    ))
    .arg(format!("--hostname-override={NODE_NAME}"))
    .arg(format!("--node-ip={NODE_IP}"))
    .arg("--v=1");
    c
}
