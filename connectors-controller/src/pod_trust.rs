//! What the webhook adds to a labelled pod so that its usual TLS clients trust the cluster CA,
//! and nothing else: the ConfigMap [`crate::bundle::CONFIGMAP`] as a volume, mounted read-only
//! at [`MOUNT_PATH`] in every container and init container (the whole folder, not a subPath, so
//! a rotation reaches running pods), and the environment variables the usual clients read.
//! A variable a container sets itself is never overridden. The patch is computed against the
//! pod as received, so a pod that already has everything gets none (applying it twice changes
//! nothing).

use serde_json::{Value, json};

use crate::bundle::{BUNDLE_KEY, CONFIGMAP, ROOTS_KEY};

/// The volume's name in the pod.
pub const VOLUME: &str = "connectors-ca";
/// Where it is mounted.
pub const MOUNT_PATH: &str = "/etc/connectors/ca";

/// `(variable, file)`: OpenSSL (and Go, Python's ssl, Ruby...), git, Python requests, curl get
/// the system roots plus the cluster roots; Node.js adds the cluster roots to its own.
pub fn variables() -> [(&'static str, String); 5] {
    let bundle = format!("{MOUNT_PATH}/{BUNDLE_KEY}");
    let roots = format!("{MOUNT_PATH}/{ROOTS_KEY}");
    [
        ("SSL_CERT_FILE", bundle.clone()),
        ("GIT_SSL_CAINFO", bundle.clone()),
        ("REQUESTS_CA_BUNDLE", bundle.clone()),
        ("CURL_CA_BUNDLE", bundle),
        ("NODE_EXTRA_CA_CERTS", roots),
    ]
}

/// The JSONPatch operations (RFC 6902) that give `pod` the trust; empty when it has it.
pub fn patch(pod: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    let spec = &pod["spec"];
    let volume = json!({
        "name": VOLUME,
        "configMap": {"name": CONFIGMAP, "defaultMode": 0o444},
    });
    match spec["volumes"].as_array() {
        None => ops.push(add("/spec/volumes", json!([volume]))),
        Some(vs) if !vs.iter().any(|v| v["name"] == VOLUME) => {
            ops.push(add("/spec/volumes/-", volume));
        }
        Some(_) => {}
    }
    let mount = json!({"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": true});
    for kind in ["initContainers", "containers"] {
        let Some(containers) = spec[kind].as_array() else {
            continue;
        };
        for (i, c) in containers.iter().enumerate() {
            let base = format!("/spec/{kind}/{i}");
            match c["volumeMounts"].as_array() {
                None => ops.push(add(&format!("{base}/volumeMounts"), json!([mount]))),
                Some(ms)
                    if !ms
                        .iter()
                        .any(|m| m["name"] == VOLUME || m["mountPath"] == MOUNT_PATH) =>
                {
                    ops.push(add(&format!("{base}/volumeMounts/-"), mount.clone()));
                }
                Some(_) => {}
            }
            let set: Vec<&str> = c["env"]
                .as_array()
                .map(|env| env.iter().filter_map(|e| e["name"].as_str()).collect())
                .unwrap_or_default();
            let missing: Vec<Value> = variables()
                .into_iter()
                .filter(|(name, _)| !set.contains(name))
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            if missing.is_empty() {
                continue;
            }
            if c["env"].is_array() {
                for e in missing {
                    ops.push(add(&format!("{base}/env/-"), e));
                }
            } else {
                ops.push(add(&format!("{base}/env"), Value::Array(missing)));
            }
        }
    }
    ops
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Applies `add` operations (all this module makes) as the API server would.
    pub(crate) fn apply(doc: &mut Value, ops: &[Value]) {
        for op in ops {
            assert_eq!(op["op"], "add", "{op}");
            let path = op["path"].as_str().unwrap();
            let (parent, last) = path.rsplit_once('/').unwrap();
            let target = doc
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("no {parent}"));
            let value = op["value"].clone();
            match target {
                Value::Array(a) if last == "-" => a.push(value),
                Value::Object(o) => {
                    assert!(!o.contains_key(last), "add over {path}");
                    o.insert(last.to_owned(), value);
                }
                other => panic!("cannot add {path} to {other}"),
            }
        }
    }

    fn pod() -> Value {
        json!({
            "metadata": {"name": "build", "labels": {"connectors.io/inject": "true"}},
            "spec": {
                "initContainers": [{"name": "init", "image": "x"}],
                "containers": [
                    {"name": "main", "image": "x",
                     "env": [{"name": "SSL_CERT_FILE", "value": "/mine.pem"}],
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                    {"name": "side", "image": "x"}
                ],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }
        })
    }

    fn env(c: &Value, name: &str) -> Option<String> {
        c["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(str::to_owned))
    }

    #[test]
    fn a_labelled_pod_gets_the_volume_mounts_and_variables() {
        let mut p = pod();
        let ops = patch(&p);
        apply(&mut p, &ops);
        let spec = &p["spec"];
        let volumes = spec["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[1]["configMap"]["name"], CONFIGMAP);
        for c in spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(spec["containers"].as_array().unwrap())
        {
            let mounts = c["volumeMounts"].as_array().unwrap();
            let m = mounts.iter().find(|m| m["name"] == VOLUME).unwrap();
            assert_eq!(m["mountPath"], MOUNT_PATH);
            assert_eq!(m["readOnly"], true);
            assert!(m.get("subPath").is_none());
            for (name, value) in variables() {
                if c["name"] == "main" && name == "SSL_CERT_FILE" {
                    continue;
                }
                assert_eq!(
                    env(c, name).as_deref(),
                    Some(value.as_str()),
                    "{name} in {}",
                    c["name"]
                );
            }
        }
        // The container's own value stays.
        let main = &spec["containers"][0];
        assert_eq!(env(main, "SSL_CERT_FILE").as_deref(), Some("/mine.pem"));
        assert_eq!(
            main["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == "SSL_CERT_FILE")
                .count(),
            1
        );
        assert_eq!(
            env(main, "NODE_EXTRA_CA_CERTS").as_deref(),
            Some("/etc/connectors/ca/ca.crt")
        );
        assert_eq!(
            env(&spec["containers"][1], "GIT_SSL_CAINFO").as_deref(),
            Some("/etc/connectors/ca/ca-bundle.crt")
        );
    }

    #[test]
    fn mutating_twice_changes_nothing() {
        let mut p = pod();
        let ops = patch(&p);
        assert!(!ops.is_empty());
        apply(&mut p, &ops);
        let once = p.clone();
        let again = patch(&p);
        assert!(again.is_empty(), "second patch: {again:?}");
        apply(&mut p, &again);
        assert_eq!(p, once);
    }

    #[test]
    fn a_bare_pod_gets_arrays_created() {
        let mut p = json!({"spec": {"containers": [{"name": "c", "image": "x"}]}});
        let ops = patch(&p);
        apply(&mut p, &ops);
        assert_eq!(p["spec"]["volumes"][0]["name"], VOLUME);
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            MOUNT_PATH
        );
        assert_eq!(
            p["spec"]["containers"][0]["env"].as_array().unwrap().len(),
            5
        );
        assert!(patch(&p).is_empty());
    }
}
