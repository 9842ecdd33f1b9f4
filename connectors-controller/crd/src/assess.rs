//! What can be known of a Connector without talking to its tool: does its class exist and hold,
//! does its spec fit the class, is its Secret there and right. The controller adds the probes;
//! the standalone agent uses this as is.

use k8s_openapi::api::core::v1::Secret;

use crate::class::ConnectorClass;
use crate::condition::{Condition, Status, types};
use crate::connector::Connector;
use crate::credentials::{self, Credential, SecretData};
use crate::inject::Injector;
use crate::validation::{self, CheckedConnector};

/// Condition reasons.
pub mod reasons {
    pub const CLASS_NOT_FOUND: &str = "ConnectorClassNotFound";
    pub const CLASS_INVALID: &str = "ConnectorClassInvalid";
    pub const CLASS_READY: &str = "ConnectorClassReady";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_INVALID: &str = "SecretInvalid";
    pub const SECRET_READY: &str = "SecretReady";
    pub const SECRET_OPTIONAL: &str = "SecretOptional";
    pub const NO_AUTH: &str = "NoAuth";
    pub const CA_CERT_INVALID: &str = "CACertInvalid";
    pub const READY: &str = "Ready";
    // Probes (set by the controller).
    pub const NO_LIVENESS_PROBE: &str = "NoLivenessProbe";
    pub const REACHABLE: &str = "Reachable";
    pub const NO_AUTH_PROBE: &str = "NoAuthProbe";
    pub const AUTHENTICATED: &str = "Authenticated";
    pub const ANONYMOUS_ACCESS: &str = "AnonymousAccess";
    pub const AUTH_FAILED: &str = "AuthenticationFailed";
    pub const UNEXPECTED_RESPONSE: &str = "UnexpectedResponse";
    pub const CONNECTION_FAILED: &str = "ConnectionFailed";
    pub const TLS_FAILED: &str = "TLSHandshakeFailed";
    pub const PROBE_TIMEOUT: &str = "ProbeTimeout";
    pub const PROBE_INVALID: &str = "ProbeInvalid";
    pub const NOT_CHECKED: &str = "NotChecked";
    /// The auth probe needs a parameter the Connector does not set: the credentials are served
    /// but not tried.
    pub const NOT_PROBED: &str = "NotProbed";
    // ConnectorClass status.
    pub const CLASS_VALID: &str = "Valid";
    pub const CLASS_SPEC_INVALID: &str = "Invalid";
}

/// The outcome of the checks.
#[derive(Debug)]
pub struct Assessment {
    /// `ConnectorClassReady` and, once the class holds, `SecretReady`.
    pub conditions: Vec<Condition>,
    /// The Connector's spec, checked against its class.
    pub checked: Option<CheckedConnector>,
    /// The static credential the proxy adds to requests (`None` also for the registry token
    /// flow and client certificates: see `injector`), or why it cannot serve.
    pub credential: Result<Option<Credential>, String>,
    /// What the proxy, the probes and the API relay put on requests (`None`: nothing), or why
    /// the Connector cannot be served.
    pub injector: Result<Option<Injector>, String>,
    /// PEM CA certificates from `caCertSecretRef`, or why they are unusable.
    pub ca_pem: Result<Vec<Vec<u8>>, String>,
    /// The secret data, for probes.
    pub secret: Option<SecretData>,
}

impl Assessment {
    /// True when every condition so far is True.
    pub fn all_true(&self) -> bool {
        self.conditions.iter().all(Condition::is_true)
    }
}

/// Checks a Connector. `secret` looks a Secret up by name in the Connector's namespace.
pub fn assess<'a>(
    connector: &Connector,
    class: Option<&ConnectorClass>,
    secret: impl Fn(&str) -> Option<&'a Secret>,
) -> Assessment {
    let ns = connector.metadata.namespace.as_deref().unwrap_or("default");
    let class_name = &connector.spec.connector_class_name;
    let mut a = Assessment {
        conditions: Vec::new(),
        checked: None,
        credential: Err(String::new()),
        injector: Err(String::new()),
        ca_pem: Ok(Vec::new()),
        secret: None,
    };
    let Some(class) = class else {
        let msg = format!("ConnectorClass '{class_name}' does not exist");
        a.conditions.push(Condition::new(
            types::CONNECTOR_CLASS_READY,
            Status::False,
            reasons::CLASS_NOT_FOUND,
            msg.clone(),
        ));
        a.credential = Err(msg.clone());
        a.injector = Err(msg);
        return a;
    };
    let class_errors = validation::validate_class(&class.spec);
    if !class_errors.is_empty() {
        let msg = format!(
            "ConnectorClass '{class_name}' is invalid: {}",
            validation::describe(&class_errors)
        );
        a.conditions.push(Condition::new(
            types::CONNECTOR_CLASS_READY,
            Status::False,
            reasons::CLASS_INVALID,
            msg.clone(),
        ));
        a.credential = Err(msg.clone());
        a.injector = Err(msg);
        return a;
    }
    let checked = match validation::validate_connector(connector, &class.spec) {
        Ok(c) => c,
        Err(errs) => {
            let msg = validation::describe(&errs);
            a.conditions.push(Condition::new(
                types::CONNECTOR_CLASS_READY,
                Status::False,
                reasons::INVALID_SPEC,
                format!("the Connector does not fit class '{class_name}': {msg}"),
            ));
            a.credential = Err(format!("invalid spec: {msg}"));
            a.injector = Err(format!("invalid spec: {msg}"));
            // The Secret and the CA are still checked, so that every problem shows at once.
            if let Some((t, name)) = validation::auth_in_use(connector, &class.spec) {
                let (status, reason, message, _) =
                    secret_check(ns, &t, name, &Default::default(), &secret);
                a.conditions
                    .push(Condition::new(types::SECRET_READY, status, reason, message));
            }
            check_ca(connector, ns, &secret, &mut a);
            return a;
        }
    };
    a.conditions.push(Condition::new(
        types::CONNECTOR_CLASS_READY,
        Status::True,
        reasons::CLASS_READY,
        format!("class '{class_name}' found and the Connector fits it"),
    ));

    let (status, reason, message, credential) = match (&checked.auth_type, &checked.secret_name) {
        (None, _) => (
            Status::True,
            reasons::NO_AUTH,
            format!("class '{class_name}' has no auth types; requests pass unchanged"),
            Ok(None),
        ),
        (Some(t), None) => match credentials::render_rule(t, None, &checked.params) {
            // The registry token flow goes on without a Secret: anonymous tokens.
            Ok(Some(r)) => (
                Status::True,
                reasons::SECRET_OPTIONAL,
                format!(
                    "auth type '{}' is optional and no Secret is set; registry tokens are asked for anonymously",
                    t.name
                ),
                Ok(Some(r)),
            ),
            _ => (
                Status::True,
                reasons::SECRET_OPTIONAL,
                format!(
                    "auth type '{}' is optional and no Secret is set; requests pass unchanged",
                    t.name
                ),
                Ok(None),
            ),
        },
        (Some(t), Some(name)) => {
            let (status, reason, message, outcome) =
                secret_check(ns, t, name, &checked.params, &secret);
            match outcome {
                Ok((data, r)) => {
                    a.secret = Some(data);
                    (status, reason, message, Ok(Some(r)))
                }
                Err((data, m)) => {
                    a.secret = data;
                    (status, reason, message, Err(m))
                }
            }
        }
    };
    a.conditions
        .push(Condition::new(types::SECRET_READY, status, reason, message));
    let id = connector.id();
    a.credential = credential.clone().map(|r| match r {
        Some(credentials::Rendered::Static(c)) => Some(c),
        _ => None,
    });
    a.injector = credential.map(|r| r.map(|r| Injector::new(&id, &checked, r)));

    check_ca(connector, ns, &secret, &mut a);
    a.checked = Some(checked);
    a
}

/// What a Secret check gives: the rendered injection rule and the Secret's data, or the data
/// (if the Secret was found) and why there is none.
type SecretOutcome = Result<(SecretData, credentials::Rendered), (Option<SecretData>, String)>;

/// The Secret's condition (status, reason, message) for an auth type, and its outcome.
fn secret_check<'a>(
    ns: &str,
    t: &crate::class::AuthType,
    name: &str,
    params: &std::collections::BTreeMap<String, String>,
    secret: &impl Fn(&str) -> Option<&'a Secret>,
) -> (Status, &'static str, String, SecretOutcome) {
    match secret(name) {
        None => {
            let m = format!("Secret '{ns}/{name}' not found");
            (
                Status::False,
                reasons::SECRET_NOT_FOUND,
                m.clone(),
                Err((None, m)),
            )
        }
        Some(s) => {
            let data = SecretData::from_secret(s);
            let rendered = credentials::check_secret(t, &data)
                .and_then(|()| credentials::render_rule(t, Some(&data), params))
                .and_then(|r| r.ok_or(credentials::CredentialError::InjectionShape(0)));
            match rendered {
                Ok(c) => (
                    Status::True,
                    reasons::SECRET_READY,
                    format!("Secret '{ns}/{name}' fits auth type '{}'", t.name),
                    Ok((data, c)),
                ),
                Err(e) => {
                    let m = format!("Secret '{ns}/{name}': {e}");
                    (
                        Status::False,
                        reasons::SECRET_INVALID,
                        m.clone(),
                        Err((Some(data), m)),
                    )
                }
            }
        }
    }
}

/// Reads the CA certificates of `caCertSecretRef` into `a.ca_pem`, reporting a problem in the
/// `SecretReady` condition.
fn check_ca<'a>(
    connector: &Connector,
    ns: &str,
    secret: &impl Fn(&str) -> Option<&'a Secret>,
    a: &mut Assessment,
) {
    if let Some(r) = &connector.spec.ca_cert_secret_ref {
        a.ca_pem = match secret(&r.name) {
            None => Err(format!(
                "caCertSecretRef: Secret '{ns}/{}' not found",
                r.name
            )),
            Some(s) => ca_certificates(s)
                .ok_or_else(|| format!("caCertSecretRef: Secret '{ns}/{}' holds no PEM certificate (keys ca.crt, *.crt or *.pem)", r.name)),
        };
        if let Err(m) = &a.ca_pem {
            set_ca_problem(&mut a.conditions, m.clone());
        }
    }
}

/// Reports a problem with the CA certificates of `caCertSecretRef` in the one `SecretReady`
/// condition: it replaces a True one, and a credentials problem found first stays.
pub fn set_ca_problem(conditions: &mut Vec<Condition>, message: String) {
    let ca = Condition::new(
        types::SECRET_READY,
        Status::False,
        reasons::CA_CERT_INVALID,
        message,
    );
    match conditions
        .iter_mut()
        .find(|c| c.type_ == types::SECRET_READY)
    {
        Some(c) if c.is_true() => *c = ca,
        Some(_) => {}
        None => conditions.push(ca),
    }
}

/// PEM blocks of a CA Secret: `ca.crt`, keys ending `.crt` or `.pem`, or any value holding a PEM
/// certificate header.
pub fn ca_certificates(secret: &Secret) -> Option<Vec<Vec<u8>>> {
    const HEADER: &[u8] = b"-----BEGIN CERTIFICATE-----";
    let mut out = Vec::new();
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.0.as_slice()));
    let string_data = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.as_bytes()));
    for (_k, v) in data.chain(string_data) {
        if v.windows(HEADER.len()).any(|w| w == HEADER) {
            out.push(v.to_vec());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The `Ready` condition summing up `conditions`: the first False (or Unknown) one decides.
pub fn ready_condition(conditions: &[Condition]) -> Condition {
    for status in [Status::False, Status::Unknown] {
        if let Some(c) = conditions.iter().find(|c| c.status == status.as_str()) {
            return Condition::new(types::READY, status, &c.reason, c.message.clone());
        }
    }
    Condition::new(
        types::READY,
        Status::True,
        reasons::READY,
        "all checks passed",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::{ConnectorAuth, ConnectorSpec, SecretReference};
    use std::collections::BTreeMap;

    fn class() -> ConnectorClass {
        serde_yaml_ng::from_str(include_str!("../../../deploy/classes/git.yaml")).unwrap()
    }

    fn connector() -> Connector {
        let mut c = Connector::new(
            "git",
            ConnectorSpec {
                connector_class_name: "git".into(),
                address: "https://git.test".into(),
                auth: Some(ConnectorAuth {
                    secret_ref: Some(SecretReference {
                        name: "creds".into(),
                        namespace: None,
                    }),
                    params: vec![crate::connector::NamedValue {
                        name: "repository".into(),
                        value: "r.git".into(),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("ns".into());
        c
    }

    fn secret(kv: &[(&str, &str)], type_: &str) -> Secret {
        Secret {
            type_: Some(type_.into()),
            string_data: Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn missing_class() {
        let a = assess(&connector(), None, |_| None);
        assert_eq!(a.conditions[0].reason, reasons::CLASS_NOT_FOUND);
        assert_eq!(ready_condition(&a.conditions).status, "False");
    }

    #[test]
    fn missing_and_wrong_secret() {
        let cls = class();
        let a = assess(&connector(), Some(&cls), |_| None);
        assert_eq!(a.conditions[1].reason, reasons::SECRET_NOT_FOUND);
        assert!(a.credential.unwrap_err().contains("ns/creds"));

        let s = secret(&[("token", "x")], "Opaque");
        let a = assess(&connector(), Some(&cls), |_| Some(&s));
        assert_eq!(a.conditions[1].reason, reasons::SECRET_INVALID);
        assert!(a.conditions[1].message.contains("kubernetes.io/basic-auth"));
    }

    #[test]
    fn ca_problem_replaces_a_true_secret_condition() {
        let mut c = connector();
        c.spec.ca_cert_secret_ref = Some(crate::connector::LocalObjectRef { name: "ca".into() });
        let cls = class();
        let s = secret(
            &[("username", "u"), ("password", "p")],
            "kubernetes.io/basic-auth",
        );
        let a = assess(&c, Some(&cls), |n| (n == "creds").then_some(&s));
        let secret_conditions: Vec<_> = a
            .conditions
            .iter()
            .filter(|c| c.type_ == types::SECRET_READY)
            .collect();
        assert_eq!(secret_conditions.len(), 1, "{:?}", a.conditions);
        assert_eq!(secret_conditions[0].reason, reasons::CA_CERT_INVALID);
        assert!(secret_conditions[0].message.contains("ns/ca"));
    }

    #[test]
    fn an_invalid_spec_does_not_hide_a_missing_secret_or_ca() {
        let mut c = connector();
        c.spec.address = "ftp://nope".into();
        c.spec.ca_cert_secret_ref = Some(crate::connector::LocalObjectRef { name: "ca".into() });
        let cls = class();
        let a = assess(&c, Some(&cls), |_| None);
        let reasons: Vec<&str> = a.conditions.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(reasons[0], reasons::INVALID_SPEC, "{reasons:?}");
        assert!(a.conditions[0].message.contains("spec.address"));
        let secret = a
            .conditions
            .iter()
            .find(|c| c.type_ == types::SECRET_READY)
            .expect("SecretReady");
        assert_eq!(
            secret.reason,
            reasons::SECRET_NOT_FOUND,
            "{:?}",
            a.conditions
        );
    }

    #[test]
    fn good_secret() {
        let cls = class();
        let s = secret(
            &[("username", "u"), ("password", "p")],
            "kubernetes.io/basic-auth",
        );
        let a = assess(&connector(), Some(&cls), |_| Some(&s));
        assert!(a.all_true(), "{:?}", a.conditions);
        assert!(matches!(a.credential, Ok(Some(_))));
        assert_eq!(ready_condition(&a.conditions).status, "True");
    }
}
