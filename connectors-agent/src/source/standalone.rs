//! Standalone mode: ConnectorClass, Connector and Secret YAML read from a folder and watched.
//!
//! Each document stands alone: one that does not parse is reported with its file and the field at
//! fault, and everything else keeps working. A file that stops parsing (say, half-saved by an
//! editor) keeps serving its last good content until it parses again or is deleted.
//!
//! The agent usually runs as root, so the folder is read defensively: only regular files whose
//! real path is inside the folder (symlinks within it, as a mounted ConfigMap has, are fine), each
//! opened without blocking (a FIFO is refused, not waited on) and read up to a hard size cap, and
//! no message ever quotes a file's content.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use connectors_crd::{Connector, ConnectorClass, ConnectorId};
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use std::sync::Arc;

use tokio::sync::watch as tokio_watch;
use tokio_util::sync::CancellationToken;

use super::{Snapshot, SourceHealth, retry_delay};
use crate::catalog::{Objects, Problem, Source};

/// The built-in classes, as shipped in deploy/classes. A class of the same name in the folder
/// replaces one of these.
const BUILT_IN_CLASSES: &[(&str, &str)] = &[
    ("git", include_str!("../../../deploy/classes/git.yaml")),
    ("oci", include_str!("../../../deploy/classes/oci.yaml")),
    ("k8s", include_str!("../../../deploy/classes/k8s.yaml")),
];

/// Files larger than this are refused (a config file is a few kilobytes).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// At most this many YAML files are read from the folder.
const MAX_FILES: usize = 10_000;
/// Sub-folders deeper than this are not read.
const MAX_DEPTH: usize = 16;
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
    #[error("config folder {path}: a read did not finish within {}s", READ_TIMEOUT.as_secs())]
    Stuck { path: PathBuf },
    #[error("config folder: the read task failed: {0}")]
    Task(String),
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
    /// The folder's real path: every file read must resolve under it.
    real: PathBuf,
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
        let real = std::fs::canonicalize(dir).map_err(|e| FolderError::Read {
            path: dir.to_owned(),
            source: e,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            real,
            last_good: HashMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every YAML file under the folder. Problems are returned beside the objects.
    pub fn load(&mut self) -> Result<(Objects, Vec<Problem>), FolderError> {
        let mut files = Vec::new();
        let mut problems = Vec::new();
        collect_yaml_files(&self.dir, 0, &mut files, &mut problems).map_err(|e| {
            FolderError::Read {
                path: self.dir.clone(),
                source: e,
            }
        })?;
        files.sort();
        if files.len() > MAX_FILES {
            problems.push(Problem {
                source: file_source(&self.dir, 0),
                object: None,
                message: format!(
                    "the folder holds {} YAML files; only the first {MAX_FILES} are read",
                    files.len()
                ),
            });
            files.truncate(MAX_FILES);
        }
        let mut objects = Objects::default();
        let mut seen_files = Vec::new();
        for path in files {
            let docs = match read_file(&self.real, &path) {
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

/// The `*.yaml` / `*.yml` entries under `dir` (files or symlinks; hidden names skipped).
/// Sub-folders are walked, symlinked ones are not (they could loop or leave the folder).
fn collect_yaml_files(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `file_type` does not follow symlinks.
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if depth >= MAX_DEPTH {
                problems.push(Problem {
                    source: file_source(&path, 0),
                    object: None,
                    message: format!("nested deeper than {MAX_DEPTH} folders; not read"),
                });
                continue;
            }
            // A sub-folder that cannot be listed is reported; the rest is read.
            if let Err(e) = collect_yaml_files(&path, depth + 1, out, problems) {
                problems.push(Problem {
                    source: file_source(&path, 0),
                    object: None,
                    message: format!("cannot list this folder: {e}"),
                });
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
        if out.len() > MAX_FILES {
            break;
        }
    }
    Ok(())
}

/// Reads one file: a regular file whose real path is under `real_dir`, at most
/// [`MAX_FILE_BYTES`], UTF-8. The error never quotes the content.
fn read_file(real_dir: &Path, path: &Path) -> Result<String, String> {
    let resolved = std::fs::canonicalize(path).map_err(|e| format!("cannot read: {e}"))?;
    if !resolved.starts_with(real_dir) {
        return Err(format!(
            "resolves to {}, outside the config folder; not read",
            resolved.display()
        ));
    }
    // Never blocks: a FIFO opens at once (and is refused below), as does a device.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&resolved)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file (a FIFO, socket or device); not read".into());
    }
    // The path could have been swapped between the check and the open: check what was opened.
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        && !opened.starts_with(real_dir)
    {
        return Err(format!(
            "resolves to {}, outside the config folder; not read",
            opened.display()
        ));
    }
    let mut buf = Vec::new();
    // The cap holds however the file grows while it is read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("is over the {MAX_FILE_BYTES}-byte limit; not read"));
    }
    String::from_utf8(buf).map_err(|_| "is not UTF-8 text; not read".to_owned())
}

/// A parser's message with every value it quotes masked: messages may quote the input (`invalid
/// type: string "..."`, ``unknown field `...` ``), and the input may be a password or a key.
fn masked(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let close = match c {
            '"' => Some('"'),
            '`' => Some('`'),
            _ => None,
        };
        match close.and_then(|cl| message[i + 1..].find(cl).map(|len| (cl, len))) {
            Some((cl, len)) => {
                // Backquoted names after "expected" are the schema's own (`a`, `b`): keep them.
                let schema = message[..i].contains("expected") && cl == '`';
                if schema {
                    out.push_str(&message[i..i + len + 2]);
                } else {
                    out.push(cl);
                    out.push('…');
                    out.push(cl);
                }
                while chars.peek().is_some_and(|(j, _)| *j < i + len + 2) {
                    chars.next();
                }
            }
            None => out.push(c),
        }
    }
    out
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
                    message: format!("not valid YAML: {}", masked(&e.to_string())),
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
    let tm: TypeMeta = serde_yaml_ng::from_value(value.clone()).map_err(|_| {
        "not a Kubernetes object (a mapping with apiVersion and kind was expected)".to_owned()
    })?;
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
        let field = masked(&e.path().to_string());
        let inner = masked(&e.inner().to_string());
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

/// A read of the folder that takes longer than this is reported as failing (and retried).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The standalone source: reads the folder now (an error fails the start, with the reason), then
/// on every change to it. A read that fails is retried, 1 s doubling to 30 s, and reported in
/// `health` until one succeeds; the folder's watch is renewed then (it may have been replaced).
/// Returns the first snapshot and the channel of later ones.
pub async fn start(
    dir: &Path,
    health: Arc<SourceHealth>,
    shutdown: CancellationToken,
) -> Result<(Arc<Snapshot>, tokio_watch::Receiver<Arc<Snapshot>>), FolderError> {
    let folder = Arc::new(std::sync::Mutex::new(ConfigFolder::new(dir)?));
    let watcher = watch(dir)?;
    let first = Arc::new(read(&folder).await?);
    let (tx, rx) = tokio_watch::channel(first.clone());
    let dir = dir.to_owned();
    tokio::spawn(async move {
        let mut watcher = Some(watcher);
        let mut attempts = 0u32;
        loop {
            let retry = async {
                match attempts {
                    0 => std::future::pending::<()>().await,
                    n => tokio::time::sleep(retry_delay(n)).await,
                }
            };
            let changes = async {
                match watcher.as_mut() {
                    Some((_, rx)) => {
                        if rx.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                        settle(rx).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = changes => {}
                () = retry => {}
                () = shutdown.cancelled() => break,
            }
            if watcher.is_none() {
                match watch(&dir) {
                    Ok(w) => watcher = Some(w),
                    Err(e) => {
                        attempts += 1;
                        health.failed(e.to_string());
                        tracing::error!(error = %e, attempts, "config folder cannot be watched; retrying");
                        continue;
                    }
                }
            }
            match read(&folder).await {
                Ok(snapshot) => {
                    if attempts > 0 {
                        tracing::info!(attempts, "config folder readable again");
                    }
                    attempts = 0;
                    health.ok();
                    if tx.send(Arc::new(snapshot)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    attempts += 1;
                    health.failed(e.to_string());
                    // The folder may be gone or replaced: watch it anew once it reads again.
                    watcher = None;
                    tracing::error!(error = %e, attempts, retry_in = ?retry_delay(attempts), "config folder unreadable; the last good configuration stays in use");
                }
            }
        }
    });
    Ok((first, rx))
}

/// Reads the folder on a blocking thread, within [`READ_TIMEOUT`].
async fn read(folder: &Arc<std::sync::Mutex<ConfigFolder>>) -> Result<Snapshot, FolderError> {
    let f = folder.clone();
    let dir = folder
        .lock()
        .map(|g| g.dir().to_owned())
        .unwrap_or_default();
    let job = tokio::task::spawn_blocking(move || {
        // A read still running from a timed-out attempt holds the lock: report it.
        let mut guard = f.try_lock().map_err(|_| FolderError::Stuck {
            path: Default::default(),
        })?;
        guard.load()
    });
    match tokio::time::timeout(READ_TIMEOUT, job).await {
        Ok(Ok(Ok((objects, problems)))) => Ok(Snapshot { objects, problems }),
        Ok(Ok(Err(FolderError::Stuck { .. }))) | Err(_) => Err(FolderError::Stuck { path: dir }),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(e)) => Err(FolderError::Task(e.to_string())),
    }
}

/// Watches the folder: each change sends one `()` (a full channel already holds a pending
/// reload, which will see the change). Dropping the returned watcher stops it. Batching edits
/// that come together is the reader's job ([`settle`]); the watcher itself never wakes up on
/// its own.
fn watch(dir: &Path) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), FolderError> {
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
async fn settle(changes: &mut mpsc::Receiver<()>) {
    loop {
        tokio::time::sleep(DEBOUNCE).await;
        if changes.try_recv().is_err() {
            return;
        }
    }
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

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn special_files_and_links_out_are_refused_without_blocking_or_quoting() {
        let outside = tempfile::tempdir().unwrap();
        let key = outside.path().join("id_rsa");
        std::fs::write(
            &key,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        mkfifo(&dir.path().join("fifo.yaml"));
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
        std::os::unix::fs::symlink(&key, dir.path().join("key.yaml")).unwrap();
        // A link to a folder outside is not walked.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        // A link inside the folder (as a mounted ConfigMap has) is read.
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(
            dir.path().join("..data/b.yaml"),
            GOOD.replace("name: git}", "name: git2}")
                .replace("name: creds}", "name: creds2}"),
        )
        .unwrap();
        std::os::unix::fs::symlink("..data/b.yaml", dir.path().join("b.yaml")).unwrap();
        // A key copied into the folder is read, and refused without being quoted.
        std::fs::copy(&key, dir.path().join("copied.yaml")).unwrap();
        // Over the size cap, whatever its metadata says while it is read.
        let big = std::fs::File::create(dir.path().join("big.yaml")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();

        let mut f = ConfigFolder::new(dir.path()).unwrap();
        let started = std::time::Instant::now();
        let (objects, problems) = f.load().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(objects.connectors.len(), 2, "{problems:?}");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        for (file, says) in [
            ("fifo.yaml", "not a regular file"),
            ("zero.yaml", "outside the config folder"),
            ("key.yaml", "outside the config folder"),
            ("copied.yaml", "not a Kubernetes object"),
            ("big.yaml", "byte limit"),
        ] {
            assert!(
                text.iter().any(|t| t.contains(file) && t.contains(says)),
                "{file}: {all}"
            );
        }
        assert!(!all.contains("BEGIN"), "{all}");
        assert!(!all.contains("b3Blbn"), "{all}");
    }

    #[test]
    fn parser_messages_never_quote_values() {
        assert_eq!(
            masked("invalid type: string \"hunter2\", expected a sequence"),
            "invalid type: string \"…\", expected a sequence"
        );
        assert_eq!(
            masked("unknown field `hunter2`, expected one of `a`, `b`"),
            "unknown field `…`, expected one of `a`, `b`"
        );
        assert_eq!(masked("no quotes \" here"), "no quotes \" here");
    }
}
