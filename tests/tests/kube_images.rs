//! The project's container images (`cargo xtask image`): what the archives hold, that the
//! binaries run from them alone (in a chroot of the layer), and that the real node runs them
//! from its containerd with `imagePullPolicy: IfNotPresent`, each as the user its image config
//! names: the agent as root, the controller as 65532 (so `runAsNonRoot` admits it, and refuses
//! the agent). Needs root, `cargo xtask setup` (the node) and `cargo xtask image` (the
//! archives in `target/images`); fails naming them when something is missing, never skips.
//! The node is started when it is not running, and left running for other tests.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use connectors_tests::node::{
    AGENT_IMAGE, CONTROLLER_IMAGE, IMAGE_VERSION, KubeNode, PROJECT_IMAGES, ProjectImage,
    archive_digest, image_digest, is_root, workspace_root,
};
use connectors_tests::run_ok;

const TIMEOUT: Duration = Duration::from_secs(120);

fn require_archive(image: &ProjectImage) -> PathBuf {
    let archive = image.archive();
    assert!(
        archive.is_file(),
        "{} is missing: run `cargo xtask image` (after `cargo xtask setup`), which builds the images",
        archive.display()
    );
    archive
}

fn json_blob(archive: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.trim_start_matches("sha256:");
    let text = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg(format!("blobs/sha256/{hex}")),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("blob {digest}: {e}"))
}

/// The image's config and its layer unpacked (as root, so modes and owners are kept).
fn unpack(image: &ProjectImage, into: &Path) -> serde_json::Value {
    let archive = require_archive(image);
    let manifest = json_blob(
        &archive,
        &archive_digest(&archive, image.reference).unwrap_or_else(|e| panic!("{e}")),
    );
    let config = json_blob(
        &archive,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    let layer = layers[0]["digest"]
        .as_str()
        .expect("layer digest")
        .trim_start_matches("sha256:");
    let gz = into.join("layer.tar.gz");
    let blob = Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg(format!("blobs/sha256/{layer}"))
        .output()
        .expect("tar");
    assert!(blob.status.success(), "reading the layer of {archive:?}");
    std::fs::write(&gz, &blob.stdout).expect("write the layer");
    let root = into.join("root");
    std::fs::create_dir(&root).expect("mkdir");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-xzpf"])
            .arg(&gz)
            .arg("-C")
            .arg(&root),
    );
    config
}

fn files_under(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(Result::ok)
    {
        let t = e.file_type().expect("file type");
        if t.is_dir() {
            files_under(root, &e.path(), out);
        } else {
            let rel = e.path().strip_prefix(root).expect("under root").to_owned();
            out.insert(format!("/{}", rel.display()));
        }
    }
}

/// Paths ldd prints for `binary` (the vDSO left out).
fn ldd_paths(binary: &Path) -> BTreeSet<String> {
    run_ok(Command::new("ldd").arg(binary))
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| p.to_owned())
        })
        .collect()
}

#[test]
fn archives_hold_the_binary_its_libraries_and_the_system_files() {
    assert!(
        is_root(),
        "this test unpacks image layers with their owners and chroots into them: run it as root"
    );
    for image in &PROJECT_IMAGES {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = unpack(image, tmp.path());
        let root = tmp.path().join("root");
        let c = &config["config"];
        let entry = format!("/usr/local/bin/{}", image.binary);
        assert_eq!(c["Entrypoint"], serde_json::json!([entry]), "{config}");
        assert_eq!(
            c["User"],
            format!("{0}:{0}", image.uid),
            "{}: {config}",
            image.reference
        );
        assert_eq!(
            c["Labels"]["org.opencontainers.image.version"], IMAGE_VERSION,
            "{config}"
        );
        assert!(
            c["Labels"]["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://github.com/")),
            "{config}"
        );

        // Exactly: the binary, what ldd names for it, the CA bundle, passwd, group, nsswitch.
        let bin = root.join(entry.trim_start_matches('/'));
        let mut expected: BTreeSet<String> = ldd_paths(&bin);
        assert!(
            expected.iter().any(|p| p.contains("ld-linux")),
            "no loader among {expected:?}"
        );
        for f in [
            entry.as_str(),
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/passwd",
            "/etc/group",
            "/etc/nsswitch.conf",
        ] {
            expected.insert(f.to_owned());
        }
        let mut files = BTreeSet::new();
        files_under(&root, &root, &mut files);
        assert_eq!(
            files, expected,
            "{}: the files of the image",
            image.reference
        );

        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("tmp"), 0o1777, "/tmp");
        assert_eq!(
            std::fs::read_dir(root.join("tmp")).expect("tmp").count(),
            0,
            "/tmp is empty"
        );
        assert_eq!(mode(entry.trim_start_matches('/')), 0o755);
        assert_eq!(mode(""), 0o755, "/ must be traversable by nonroot");
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
        assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
        assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
        let group = std::fs::read_to_string(root.join("etc/group")).expect("group");
        assert!(group.contains("nonroot:x:65532:"), "{group}");
        let bundle = std::fs::read(root.join("etc/ssl/certs/ca-certificates.crt")).expect("ca");
        assert_eq!(
            bundle,
            std::fs::read("/etc/ssl/certs/ca-certificates.crt").expect("host bundle"),
            "the host's Debian CA bundle"
        );

        // The binary runs from the layer alone: its libraries and loader are there.
        let out = run_ok(
            Command::new("chroot")
                .arg(&root)
                .arg(&entry)
                .arg("--version"),
        );
        assert_eq!(out.trim(), format!("{} {IMAGE_VERSION}", image.binary));
        let size = std::fs::metadata(image.archive()).expect("archive").len();
        eprintln!(
            "{}: {} files, archive {:.1} MB",
            image.reference,
            files.len(),
            size as f64 / 1e6
        );
    }
}

#[test]
fn deploy_uses_the_controller_image() {
    let path = workspace_root().join("deploy/controller.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert!(
        text.contains(&format!("image: {CONTROLLER_IMAGE}")),
        "{} does not run {CONTROLLER_IMAGE}, the image `cargo xtask image` builds",
        path.display()
    );
}

/// The shared node, with the project's images imported (once per test process).
fn node_with_images() -> &'static KubeNode {
    static IMPORTED: OnceLock<Result<(), String>> = OnceLock::new();
    let node = KubeNode::shared();
    let r = IMPORTED.get_or_init(|| {
        let t = Instant::now();
        let imported = node.import_images()?;
        for i in &imported {
            eprintln!(
                "{}: {} ({}, {} ms)",
                i.reference,
                if i.imported { "imported" } else { "unchanged" },
                i.digest,
                i.took.as_millis()
            );
        }
        eprintln!("import: {} ms", t.elapsed().as_millis());
        // Importing again changes nothing.
        for i in node.import_images()? {
            if i.imported {
                return Err(format!("a second import of {} imported again", i.reference));
            }
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
    node
}

/// A pod of `image` that runs to its end (`restartPolicy: Never`), pulled only if absent.
fn image_pod(ns: &str, name: &str, image: &str, run: &str, security: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    {run}
    securityContext: {{{security}}}
"#
    )
}

/// The uid and gid the runtime started the pod's container with (its OCI spec in containerd).
fn container_user(node: &KubeNode, ns: &str, pod: &str) -> (u64, u64) {
    let id = node.container_id(ns, pod).unwrap_or_else(|e| panic!("{e}"));
    let info = node.container_info(&id).unwrap_or_else(|e| panic!("{e}"));
    let user = &info["Spec"]["process"]["user"];
    (
        user["uid"].as_u64().expect("uid"),
        user["gid"].as_u64().expect("gid"),
    )
}

#[test]
fn node_runs_both_images_as_their_users() {
    let node = node_with_images();
    for image in &PROJECT_IMAGES {
        let archive = require_archive(image);
        let want = archive_digest(&archive, image.reference).unwrap_or_else(|e| panic!("{e}"));
        let have = image_digest(&node.paths, image.reference).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(have.as_deref(), Some(want.as_str()), "{}", image.reference);
    }
    let ns = node
        .create_namespace("kn-images")
        .unwrap_or_else(|e| panic!("{e}"));
    let pods = [
        (
            "agent-version",
            AGENT_IMAGE,
            "args: [--version]",
            "",
            "connectors-agent",
            (0, 0),
        ),
        (
            "controller-version",
            CONTROLLER_IMAGE,
            "command: [/usr/local/bin/connectors-controller, --version]",
            "runAsNonRoot: true",
            "connectors-controller",
            (65532, 65532),
        ),
    ];
    let t = Instant::now();
    for (name, image, run, security, ..) in &pods {
        node.apply(&image_pod(&ns, name, image, run, security))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for (name, _, _, _, binary, user) in &pods {
        let phase = node
            .wait_pod_phase(&ns, name, &["Succeeded", "Failed"], TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let logs = node.logs(&ns, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(phase, "Succeeded", "pod {name}: {logs}");
        assert_eq!(
            logs.trim(),
            format!("{binary} {IMAGE_VERSION}"),
            "pod {name}"
        );
        assert_eq!(container_user(node, &ns, name), *user, "pod {name}'s user");
    }
    eprintln!(
        "both pods ran to Succeeded in {} ms",
        t.elapsed().as_millis()
    );

    // runAsNonRoot refuses the agent's image: its config says root.
    node.apply(&image_pod(
        &ns,
        "agent-nonroot",
        AGENT_IMAGE,
        "args: [--version]",
        "runAsNonRoot: true",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let pod = node
            .pod_json(&ns, "agent-nonroot")
            .unwrap_or_else(|e| panic!("{e}"));
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        if waiting["reason"] == "CreateContainerConfigError" {
            let message = waiting["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("runAsNonRoot") && message.contains("root"),
                "{message}"
            );
            break;
        }
        assert_ne!(
            pod["status"]["phase"], "Succeeded",
            "the agent's image ran under runAsNonRoot"
        );
        assert!(
            Instant::now() < deadline,
            "agent-nonroot was not refused: {}",
            pod["status"]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    node.delete_namespace(&ns).unwrap_or_else(|e| panic!("{e}"));
}
