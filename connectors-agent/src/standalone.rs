//! Standalone mode: ConnectorClass, Connector and Secret YAML read from a folder and watched.
//!
//! Each document stands alone: one that does not parse is reported with its file and the field at
//! fault, and everything else keeps working. A file that stops parsing (say, half-saved by an
//! editor) keeps serving its last good content until it parses again or is deleted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use connectors_crd::{Connector, ConnectorClass, ConnectorId};
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::catalog::{Objects, Problem, Source};

/// The built-in classes, as shipped in deploy/classes. A class of the same name in the folder
/// replaces one of these.
const BUILT_IN_CLASSES: &[(&str, &str)] = &[
    ("git", include_str!("../../deploy/classes/git.yaml")),
    ("oci", include_str!("../../deploy/classes/oci.yaml")),
    ("k8s", include_str!("../../deploy/classes/k8s.yaml")),
];

/// Files larger than this are refused (a config file is a few kilobytes).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Edits arriving closer together than this are applied together.
const DEBOUNCE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("config folder {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// One parsed document.
#[derive(Clone, Debug)]
enum Object {
    Class(Box<ConnectorClass>),
    Connector(Box<Connector>),
    Secret(Box<Secret>),
}

/// The folder and the last good content of each file.
#[derive(Debug)]
pub struct ConfigFolder {
    dir: PathBuf,
    last_good: HashMap<PathBuf, Vec<Object>>,
}

impl ConfigFolder {
    pub fn new(dir: &Path) -> Result<Self, FolderError> {
        let meta = std::fs::metadata(dir).map_err(|e| FolderError::Read {
            path: dir.to_owned(),
            source: e,
        })?;
        if !meta.is_dir() {
            return Err(FolderError::Read {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a folder"),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            last_good: HashMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every YAML file under the folder. Problems are returned beside the objects.
    pub fn load(&mut self) -> Result<(Objects, Vec<Problem>), FolderError> {
        let mut files = Vec::new();
        collect_yaml_files(&self.dir, &mut files).map_err(|e| FolderError::Read {
            path: self.dir.clone(),
            source: e,
        })?;
        files.sort();
        let mut problems = Vec::new();
        let mut objects = Objects::default();
        let mut seen_files = Vec::new();
        for path in files {
            let docs = match read_file(&path) {
                Ok(text) => parse_documents(&path, &text, &mut problems),
                Err(message) => {
                    problems.push(Problem {
                        source: file_source(&path, 0),
                        object: None,
                        message,
                    });
                    None
                }
            };
            let docs = match docs {
                Some(d) => {
                    self.last_good.insert(path.clone(), d.clone());
                    d
                }
                None => match self.last_good.get(&path) {
                    Some(prev) => {
                        problems.push(Problem {
                            source: file_source(&path, 0),
                            object: None,
                            message: "keeping this file's last good content until it is fixed"
                                .into(),
                        });
                        prev.clone()
                    }
                    None => Vec::new(),
                },
            };
            seen_files.push(path.clone());
            for (i, obj) in docs.into_iter().enumerate() {
                add_object(&mut objects, obj, file_source(&path, i), &mut problems);
            }
        }
        self.last_good.retain(|p, _| seen_files.contains(p));
        add_built_in_classes(&mut objects, &mut problems);
        Ok((objects, problems))
    }
}

fn add_built_in_classes(objects: &mut Objects, problems: &mut Vec<Problem>) {
    for (name, yaml) in BUILT_IN_CLASSES {
        if objects.classes.contains_key(*name) {
            continue;
        }
        let source = Source::BuiltIn((*name).to_owned());
        match serde_yaml_ng::from_str::<ConnectorClass>(yaml) {
            Ok(class) => {
                objects.classes.insert((*name).to_owned(), (class, source));
            }
            Err(e) => problems.push(Problem {
                source,
                object: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
}

fn file_source(path: &Path, document: usize) -> Source {
    Source::File {
        path: path.to_owned(),
        document,
    }
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, over the {MAX_FILE_BYTES}-byte limit; not read",
            meta.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses the documents of a file. `None` when the file is not YAML at all (so the last good
/// content is kept); otherwise the documents that parse, each bad one reported.
fn parse_documents(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<Vec<Object>> {
    let mut values = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        match serde_yaml_ng::Value::deserialize(doc) {
            Ok(v) => values.push(v),
            Err(e) => {
                problems.push(Problem {
                    source: file_source(path, values.len()),
                    object: None,
                    message: format!("not valid YAML: {e}"),
                });
                return None;
            }
        }
    }
    let mut out = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let source = file_source(path, i);
        match parse_object(value) {
            Ok(obj) => out.push(obj),
            Err(message) => problems.push(Problem {
                source,
                object: None,
                message,
            }),
        }
    }
    Some(out)
}

fn parse_object(value: serde_yaml_ng::Value) -> Result<Object, String> {
    let tm: TypeMeta = serde_yaml_ng::from_value(value.clone())
        .map_err(|e| format!("not a Kubernetes object: {e}"))?;
    match (tm.api_version.as_str(), tm.kind.as_str()) {
        (connectors_crd::API_VERSION, "ConnectorClass") => {
            typed::<ConnectorClass>(value, "ConnectorClass").map(|o| Object::Class(Box::new(o)))
        }
        (connectors_crd::API_VERSION, "Connector") => {
            typed::<Connector>(value, "Connector").map(|o| Object::Connector(Box::new(o)))
        }
        ("v1", "Secret") => typed::<Secret>(value, "Secret").map(|o| Object::Secret(Box::new(o))),
        ("", _) | (_, "") => Err("apiVersion and kind must be set".into()),
        (api, kind) => Err(format!(
            "{api} {kind} is not read here (only {} ConnectorClass and Connector, and v1 Secret)",
            connectors_crd::API_VERSION
        )),
    }
}

/// Deserializes with the path of the field at fault in the error. Values never appear in it.
fn typed<T: DeserializeOwned>(value: serde_yaml_ng::Value, kind: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.inner().to_string();
        // serde_yaml_ng's messages quote the offending value for some errors ("invalid value:
        // string \"...\""); keep only the expectation, since a Secret's field could be a password.
        let reason = match inner.split_once(", expected") {
            Some((_, expected)) => format!("expected{expected}"),
            None => inner,
        };
        if field == "." {
            format!("{kind}: {reason}")
        } else {
            format!("{kind}: field '{field}': {reason}")
        }
    })
}

fn add_object(objects: &mut Objects, obj: Object, source: Source, problems: &mut Vec<Problem>) {
    let mut duplicate = |what: String, first: &Source| {
        problems.push(Problem {
            source: source.clone(),
            object: Some(what),
            message: format!("already defined in {first}; this one is ignored"),
        })
    };
    let nameless = |kind: &str| Problem {
        source: source.clone(),
        object: Some(kind.to_owned()),
        message: "field 'metadata.name' must be set".into(),
    };
    match obj {
        Object::Class(c) => {
            let Some(name) = c.metadata.name.clone().filter(|n| !n.is_empty()) else {
                problems.push(nameless("ConnectorClass"));
                return;
            };
            if let Some((_, first)) = objects.classes.get(&name) {
                duplicate(format!("ConnectorClass {name}"), first);
                return;
            }
            objects.classes.insert(name, (*c, source));
        }
        Object::Connector(mut c) => {
            if c.metadata.name.as_deref().unwrap_or_default().is_empty() {
                problems.push(nameless("Connector"));
                return;
            }
            c.metadata
                .namespace
                .get_or_insert_with(|| "default".to_owned());
            let id: ConnectorId = c.id();
            if let Some((_, first)) = objects.connectors.get(&id) {
                duplicate(format!("Connector {id}"), first);
                return;
            }
            objects.connectors.insert(id, (*c, source));
        }
        Object::Secret(s) => {
            let Some(name) = s.metadata.name.clone().filter(|n| !n.is_empty()) else {
                problems.push(nameless("Secret"));
                return;
            };
            let ns = s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            let key = (ns.clone(), name.clone());
            if let Some((_, first)) = objects.secrets.get(&key) {
                duplicate(format!("Secret {ns}/{name}"), first);
                return;
            }
            objects.secrets.insert(key, (*s, source));
        }
    }
}

/// Watches the folder: each change sends one `()` (a full channel already holds a pending
/// reload, which will see the change). Dropping the returned watcher stops it. Batching edits
/// that come together is the reader's job ([`settle`]); the watcher itself never wakes up on
/// its own.
pub fn watch(dir: &Path) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), FolderError> {
    use notify::Watcher as _;
    let (tx, rx) = mpsc::channel(1);
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(e) if e.kind.is_access() => {}
            Ok(_) => {
                let _ = tx.try_send(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "config folder watch error");
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| FolderError::Watch {
            path: dir.to_owned(),
            source: e,
        })?;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .map_err(|e| FolderError::Watch {
            path: dir.to_owned(),
            source: e,
        })?;
    Ok((watcher, rx))
}

/// After a change, waits until the folder has been quiet for [`DEBOUNCE`], so that a burst of
/// edits (an editor's write and rename, `kubectl`-style tools writing several files) applies
/// once.
pub async fn settle(changes: &mut mpsc::Receiver<()>) {
    loop {
        tokio::time::sleep(DEBOUNCE).await;
        if changes.try_recv().is_err() {
            return;
        }
    }
}

/// Counts of what a load found, for the log.
pub fn summary(objects: &Objects) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("classes", objects.classes.len()),
        ("connectors", objects.connectors.len()),
        ("secrets", objects.secrets.len()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: connectors.io/v1alpha1
kind: Connector
metadata: {name: git}
spec:
  connectorClassName: git
  address: https://git.test
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
type: kubernetes.io/basic-auth
stringData: {username: u, password: hunter2}
"#;

    #[test]
    fn reads_documents_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {name: bad}\nspec:\n  connectorClassName: 7\n  address: [1]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "junk").unwrap();
        let mut f = ConfigFolder::new(dir.path()).unwrap();
        let (objects, problems) = f.load().unwrap();
        assert_eq!(objects.connectors.len(), 1);
        assert_eq!(objects.secrets.len(), 1);
        for class in ["git", "oci", "k8s"] {
            assert!(matches!(objects.classes[class].1, Source::BuiltIn(_)));
        }
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = problems[0].to_string();
        assert!(p.contains("b.yaml"), "{p}");
        assert!(p.contains("spec.connectorClassName"), "{p}");
    }

    #[test]
    fn keeps_last_good_content_of_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let mut f = ConfigFolder::new(dir.path()).unwrap();
        f.load().unwrap();
        std::fs::write(&file, "apiVersion: [unclosed\n").unwrap();
        let (objects, problems) = f.load().unwrap();
        assert_eq!(objects.connectors.len(), 1);
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("not valid YAML"))
        );
        std::fs::remove_file(&file).unwrap();
        let (objects, _) = f.load().unwrap();
        assert!(objects.connectors.is_empty());
    }

    #[test]
    fn secret_values_never_appear_in_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/basic-auth\nstringData:\n  password: [hunter2]\ndata:\n  x: hunter3\n",
        )
        .unwrap();
        let mut f = ConfigFolder::new(dir.path()).unwrap();
        let (_, problems) = f.load().unwrap();
        assert_eq!(problems.len(), 1);
        let text = problems[0].to_string();
        assert!(!text.contains("hunter"), "{text}");
    }

    #[test]
    fn duplicates_and_unknown_kinds_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("c.yaml"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
        )
        .unwrap();
        let mut f = ConfigFolder::new(dir.path()).unwrap();
        let (objects, problems) = f.load().unwrap();
        assert_eq!(objects.connectors.len(), 1);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
