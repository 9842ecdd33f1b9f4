//! The built-in ConnectorClasses (`deploy/classes/*.yaml`, embedded at build time): the leader
//! creates those that are missing when it starts leading, so `kubectl apply -k deploy/` needs
//! no second pass. It only ever creates: a class that exists, edited by an admin or not, is
//! left as it is.

use std::time::Duration;

use connectors_crd::ConnectorClass;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;

/// `(file, YAML)` of each built-in class.
pub const CLASSES: [(&str, &str); 3] = [
    ("git.yaml", include_str!("../../deploy/classes/git.yaml")),
    ("oci.yaml", include_str!("../../deploy/classes/oci.yaml")),
    ("k8s.yaml", include_str!("../../deploy/classes/k8s.yaml")),
];

/// The classes, parsed.
pub fn classes() -> Result<Vec<ConnectorClass>, String> {
    CLASSES
        .iter()
        .map(|(file, yaml)| {
            serde_yaml_ng::from_str::<ConnectorClass>(yaml).map_err(|e| format!("{file}: {e}"))
        })
        .collect()
}

/// Creates every missing built-in class; retries until each is there (or `stop`).
pub async fn install(client: Client, stop: CancellationToken) {
    let classes = match classes() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "a built-in class does not parse");
            return;
        }
    };
    let api: Api<ConnectorClass> = Api::all(client);
    let mut pending = classes;
    let mut delay = Duration::from_secs(1);
    while !pending.is_empty() {
        let mut failed = Vec::new();
        for class in pending {
            let name = class.name_any();
            let mut object = class.clone();
            object.metadata.labels.get_or_insert_default().insert(
                "app.kubernetes.io/managed-by".to_owned(),
                "connectors-controller".to_owned(),
            );
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => tracing::info!(class = %name, "created the built-in ConnectorClass"),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(class = %name, "built-in ConnectorClass exists; left as it is");
                }
                Err(e) => {
                    tracing::warn!(class = %name, error = %e, "cannot create the built-in ConnectorClass; retrying");
                    failed.push(class);
                }
            }
        }
        pending = failed;
        if pending.is_empty() {
            break;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_file_is_embedded_and_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/classes");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        files.sort();
        let mut embedded: Vec<String> = CLASSES.iter().map(|(f, _)| (*f).to_owned()).collect();
        embedded.sort();
        assert_eq!(files, embedded, "deploy/classes and CLASSES differ");
        let names: Vec<String> = classes().unwrap().iter().map(|c| c.name_any()).collect();
        assert_eq!(names, ["git", "oci", "k8s"]);
    }
}
