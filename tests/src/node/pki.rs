//! The node's PKI (made once with openssl, kept by stop even with `--wipe`): a CA, the
//! apiserver's serving certificate, client certificates for the apiserver towards kubelet,
//! for kubelet, the controller-manager, the scheduler and kube-proxy, kubelet's serving
//! certificate, the ServiceAccount key pair; static tokens for `admin` (system:masters) and
//! `alice` (no rights); and a kubeconfig for each.

use std::path::Path;
use std::process::Command;

use super::host::{self, run};
use super::{API_PORT, NODE_IP, NODE_NAME, Paths, SERVICE_IP};

/// Client certificates added after the first PKI: made when missing, in a PKI of any age.
/// kube-proxy's user is bound to `system:node-proxier` by the default RBAC policy.
const LATER_CLIENTS: [(&str, &str); 1] = [("kube-proxy", "/CN=system:kube-proxy")];

/// A CA and the certificates of the node, once (kept by stop, even with `--wipe`).
pub(super) fn make_pki(pki: &Path) -> Result<(), String> {
    if !pki.join("sa.key").is_file() {
        make_first_pki(pki)?;
    }
    for (name, subject) in LATER_CLIENTS {
        if !pki.join(format!("{name}.crt")).is_file() {
            signed_cert(pki, name, subject, CLIENT_EXT)?;
        }
    }
    Ok(())
}

const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\n";

fn openssl(pki: &Path, args: &[&str]) -> Result<String, String> {
    run(Command::new("openssl").args(args).current_dir(pki))
}

/// `<name>.key` and `<name>.crt` for `subject`, signed by the CA, with extensions `ext`.
fn signed_cert(pki: &Path, name: &str, subject: &str, ext: &str) -> Result<(), String> {
    let (key, csr, crt, extf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    openssl(
        pki,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ],
    )?;
    std::fs::write(pki.join(&extf), ext).map_err(|e| format!("{extf}: {e}"))?;
    // The certificate through a temporary name: its presence says key and certificate are whole.
    let tmp = format!("{crt}.tmp");
    openssl(
        pki,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &tmp,
            "-days",
            "3650",
            "-extfile",
            &extf,
        ],
    )?;
    std::fs::rename(pki.join(&tmp), pki.join(&crt)).map_err(|e| format!("{crt}: {e}"))?;
    let _ = std::fs::remove_file(pki.join(&csr));
    let _ = std::fs::remove_file(pki.join(&extf));
    Ok(())
}

fn make_first_pki(pki: &Path) -> Result<(), String> {
    let openssl = |args: &[&str]| openssl(pki, args);
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=kube-node-ca",
    ])?;
    let cert = |name: &str, subject: &str, ext: &str| signed_cert(pki, name, subject, ext);
    cert(
        "apiserver",
        "/CN=kube-apiserver",
        &format!(
            "subjectAltName=IP:127.0.0.1,IP:{NODE_IP},IP:{SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    let client = CLIENT_EXT;
    cert(
        "apiserver-kubelet-client",
        "/CN=kube-apiserver-kubelet-client/O=system:masters",
        client,
    )?;
    cert(
        "kubelet",
        &format!("/CN=system:node:{NODE_NAME}/O=system:nodes"),
        client,
    )?;
    cert(
        "kubelet-serving",
        &format!("/CN={NODE_NAME}"),
        &format!("subjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth\n"),
    )?;
    cert(
        "controller-manager",
        "/CN=system:kube-controller-manager",
        client,
    )?;
    cert("scheduler", "/CN=system:kube-scheduler", client)?;
    // The ServiceAccount signing key, written last: its presence says the PKI is complete.
    openssl(&["genrsa", "-out", "sa.key.tmp", "2048"])?;
    openssl(&["rsa", "-in", "sa.key.tmp", "-pubout", "-out", "sa.pub"])?;
    std::fs::rename(pki.join("sa.key.tmp"), pki.join("sa.key")).map_err(|e| format!("sa.key: {e}"))
}

/// The static tokens (admin in `system:masters`, alice in `devs` with no rights), once;
/// returns the admin's.
pub(super) fn tokens(pki: &Path) -> Result<String, String> {
    let file = pki.join("tokens.csv");
    if !file.is_file() {
        let text = format!(
            "admin-token-{},admin,1,\"system:masters\"\nalice-token-{},alice,2,\"devs\"\n",
            host::random_hex(8)?,
            host::random_hex(8)?
        );
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let token = |user: &str| {
        text.lines()
            .find(|l| l.contains(&format!(",{user},")))
            .and_then(|l| l.split(',').next())
            .map(str::to_owned)
            .ok_or_else(|| format!("{} has no {user} token", file.display()))
    };
    // curl reads the header from a file, so the token is not on a command line.
    std::fs::write(
        pki.join("admin-header"),
        format!("Authorization: Bearer {}", token("admin")?),
    )
    .map_err(|e| format!("admin-header: {e}"))?;
    token("admin")
}

pub(super) fn write_kubeconfigs(paths: &Paths, admin_token: &str) -> Result<(), String> {
    let pki = paths.pki();
    let text = std::fs::read_to_string(pki.join("tokens.csv")).map_err(|e| format!("{e}"))?;
    let alice = text
        .lines()
        .find(|l| l.contains(",alice,"))
        .and_then(|l| l.split(',').next())
        .unwrap_or_default()
        .to_owned();
    let server = format!("https://{NODE_IP}:{API_PORT}");
    let ca = paths.ca_cert();
    let write = |name: &str, user: String| -> Result<(), String> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: kube-node, cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: {name}, user: {user}}}]\ncontexts: [{{name: {name}, context: {{cluster: kube-node, user: {name}}}}}]\ncurrent-context: {name}\n",
            ca.display()
        );
        let p = paths.kubeconfig(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let cert = |name: &str| {
        format!(
            "{{client-certificate: \"{}\", client-key: \"{}\"}}",
            pki.join(format!("{name}.crt")).display(),
            pki.join(format!("{name}.key")).display()
        )
    };
    write("admin", format!("{{token: \"{admin_token}\"}}"))?;
    write("alice", format!("{{token: \"{alice}\"}}"))?;
    for name in ["kubelet", "controller-manager", "scheduler", "kube-proxy"] {
        write(name, cert(name))?;
    }
    Ok(())
}
