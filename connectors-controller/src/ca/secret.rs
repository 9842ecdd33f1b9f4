//! The CA's Secret: `kubernetes.io/tls` with the current root (`tls.crt`, `tls.key`), the
//! previous root while it is published (`previous.crt`, `previous.key`), and annotations that
//! say where a rotation stands, so every replica reads the same schedule.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::root::RootError;
use super::{ClusterCa, Previous, Root, rfc3339};

pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const PREVIOUS_CERT_KEY: &str = "previous.crt";
pub const PREVIOUS_KEY_KEY: &str = "previous.key";
/// Change its value (to anything) to have the leader rotate the root.
pub const ROTATE_ANNOTATION: &str = "connectors.io/rotate";
/// The value of [`ROTATE_ANNOTATION`] the leader last acted on.
pub const ROTATE_HANDLED_ANNOTATION: &str = "connectors.io/rotate-handled";
/// RFC 3339: until then the previous root signs.
pub const PREVIOUS_SIGNS_UNTIL_ANNOTATION: &str = "connectors.io/previous-signs-until";
/// RFC 3339: no certificate the previous root signed is valid after then.
pub const PREVIOUS_VALID_UNTIL_ANNOTATION: &str = "connectors.io/previous-valid-until";
pub const TLS_TYPE: &str = "kubernetes.io/tls";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("key {0} is missing")]
    Missing(&'static str),
    #[error("key {0} is not UTF-8")]
    NotText(&'static str),
    #[error("{which}: {source}")]
    Root {
        which: &'static str,
        source: RootError,
    },
    #[error("annotation {0} is not an RFC 3339 time")]
    BadTime(&'static str),
}

/// Reads the CA from its Secret.
pub fn decode(secret: &Secret) -> Result<ClusterCa, SecretError> {
    let data = secret.data.as_ref();
    let text = |key: &'static str| -> Result<Option<&str>, SecretError> {
        match data.and_then(|d| d.get(key)) {
            None => Ok(None),
            Some(v) => std::str::from_utf8(&v.0)
                .map(Some)
                .map_err(|_| SecretError::NotText(key)),
        }
    };
    let required = |key: &'static str| text(key)?.ok_or(SecretError::Missing(key));
    let current = Root::from_pem(required(CERT_KEY)?, required(KEY_KEY)?).map_err(|source| {
        SecretError::Root {
            which: "the current root (tls.crt, tls.key)",
            source,
        }
    })?;
    let annotations = secret.metadata.annotations.as_ref();
    let annotation = |k: &str| annotations.and_then(|a| a.get(k)).cloned();
    let time = |k: &'static str| -> Result<Option<i64>, SecretError> {
        annotation(k)
            .map(|v| {
                v.parse::<k8s_openapi::jiff::Timestamp>()
                    .map(|t| t.as_second())
                    .map_err(|_| SecretError::BadTime(k))
            })
            .transpose()
    };
    let previous = match (text(PREVIOUS_CERT_KEY)?, text(PREVIOUS_KEY_KEY)?) {
        (Some(cert), Some(key)) => {
            let root = Root::from_pem(cert, key).map_err(|source| SecretError::Root {
                which: "the previous root (previous.crt, previous.key)",
                source,
            })?;
            // Without a schedule (edited by hand), the previous root signs no more and stays
            // published for as long as it could have signed.
            let sign_until = time(PREVIOUS_SIGNS_UNTIL_ANNOTATION)?.unwrap_or(0);
            let valid_until = time(PREVIOUS_VALID_UNTIL_ANNOTATION)?.unwrap_or(root.not_after);
            Some(Previous {
                root,
                sign_until,
                valid_until,
            })
        }
        _ => None,
    };
    Ok(ClusterCa {
        current,
        previous,
        rotate_handled: annotation(ROTATE_HANDLED_ANNOTATION),
        rotate_requested: annotation(ROTATE_ANNOTATION),
        resource_version: secret.metadata.resource_version.clone(),
    })
}

/// The Secret holding `ca`, named `name`. With `base` (the Secret's metadata as last read), its
/// labels, others' annotations and resourceVersion (the replace is conditional) are kept and
/// only the CA's keys and annotations change.
pub fn encode(ca: &ClusterCa, base: Option<&ObjectMeta>, name: &str, namespace: &str) -> Secret {
    let mut data = BTreeMap::new();
    let bytes = |s: String| ByteString(s.into_bytes());
    data.insert(CERT_KEY.to_owned(), bytes(ca.current.cert_pem.clone()));
    data.insert(KEY_KEY.to_owned(), bytes(ca.current.key_pem()));
    let mut metadata = base.cloned().unwrap_or_else(|| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(
            [
                ("app.kubernetes.io/part-of", "connectors"),
                ("app.kubernetes.io/managed-by", "connectors-controller"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        ),
        ..Default::default()
    });
    metadata.managed_fields = None;
    let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
    for key in [
        ROTATE_HANDLED_ANNOTATION,
        PREVIOUS_SIGNS_UNTIL_ANNOTATION,
        PREVIOUS_VALID_UNTIL_ANNOTATION,
    ] {
        annotations.remove(key);
    }
    if let Some(v) = &ca.rotate_handled {
        annotations.insert(ROTATE_HANDLED_ANNOTATION.to_owned(), v.clone());
    }
    if let Some(p) = &ca.previous {
        data.insert(PREVIOUS_CERT_KEY.to_owned(), bytes(p.root.cert_pem.clone()));
        data.insert(PREVIOUS_KEY_KEY.to_owned(), bytes(p.root.key_pem()));
        annotations.insert(
            PREVIOUS_SIGNS_UNTIL_ANNOTATION.to_owned(),
            rfc3339(p.sign_until),
        );
        annotations.insert(
            PREVIOUS_VALID_UNTIL_ANNOTATION.to_owned(),
            rfc3339(p.valid_until),
        );
    }
    Secret {
        metadata,
        type_: Some(TLS_TYPE.to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::tests::root;

    #[test]
    fn a_rotating_ca_round_trips_through_its_secret() {
        let now = 1_700_000_000;
        let mut ca = ClusterCa::new(root(now));
        ca.rotate_handled = Some("2".into());
        ca.previous = Some(Previous {
            root: root(now),
            sign_until: now + 120,
            valid_until: now + 120 + 86_400,
        });
        let base = ObjectMeta {
            name: Some("connectors-ca".into()),
            resource_version: Some("7".into()),
            annotations: Some(
                [
                    (ROTATE_ANNOTATION.to_owned(), "2".to_owned()),
                    ("someone/else".to_owned(), "kept".to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let secret = encode(&ca, Some(&base), "connectors-ca", "connectors-system");
        assert_eq!(secret.type_.as_deref(), Some(TLS_TYPE));
        let annotations = secret.metadata.annotations.clone().unwrap();
        assert_eq!(annotations["someone/else"], "kept");
        let back = decode(&secret).unwrap();
        assert_eq!(back.rotate_requested.as_deref(), Some("2"));
        assert_eq!(back.current.fingerprint, ca.current.fingerprint);
        let (p, q) = (back.previous.unwrap(), ca.previous.unwrap());
        assert_eq!(p.root.fingerprint, q.root.fingerprint);
        assert_eq!((p.sign_until, p.valid_until), (q.sign_until, q.valid_until));
        // Once the previous root retires, its keys and schedule go.
        let single = ClusterCa::new(root(now));
        let after = encode(
            &single,
            Some(&secret.metadata),
            "connectors-ca",
            "connectors-system",
        );
        assert!(!after.data.as_ref().unwrap().contains_key(PREVIOUS_CERT_KEY));
        let annotations = after.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(PREVIOUS_SIGNS_UNTIL_ANNOTATION));
        assert_eq!(annotations[ROTATE_ANNOTATION], "2");
        assert_eq!(back.rotate_handled.as_deref(), Some("2"));
        assert_eq!(back.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn a_broken_secret_says_which_part() {
        let ca = ClusterCa::new(root(1_700_000_000));
        let mut secret = encode(&ca, None, "connectors-ca", "connectors-system");
        assert!(secret.metadata.resource_version.is_none());
        secret
            .data
            .as_mut()
            .unwrap()
            .insert(KEY_KEY.into(), ByteString(b"junk".to_vec()));
        let err = decode(&secret).unwrap_err().to_string();
        assert!(err.contains("tls.key"), "{err}");
        assert!(!err.contains("junk"), "{err}");
        secret.data.as_mut().unwrap().remove(CERT_KEY);
        assert!(matches!(
            decode(&secret),
            Err(SecretError::Missing(CERT_KEY))
        ));
    }
}
