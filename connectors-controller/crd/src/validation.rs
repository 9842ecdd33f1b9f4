//! Checks of a class and of a Connector against its class, each problem named by its field.
//!
//! The agent (standalone folder) and the controller (status conditions) report the same problems
//! in the same words.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::address::ToolAddress;
use crate::class::{AuthType, ConnectorClassSpec, Probe};
use crate::connector::{Connector, ConnectorSpec};
use crate::credentials;
use crate::template;

/// Longest name accepted anywhere a Kubernetes name is expected.
const MAX_NAME: usize = 253;

/// One problem, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.auth.types[1].injection`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins problems into one message for a condition or a log line.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks a class on its own.
pub fn validate_class(spec: &ConnectorClassSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, s) in spec.address.schemes.iter().enumerate() {
        if !matches!(s.to_ascii_lowercase().as_str(), "http" | "https") {
            errs.push(FieldError::new(
                format!("spec.address.schemes[{i}]"),
                format!("'{s}' is not supported (use http or https)"),
            ));
        }
    }
    for (i, h) in spec.address.hosts.iter().enumerate() {
        let body = h.strip_prefix("*.").unwrap_or(h);
        if body.is_empty() || body.contains(['*', '/', ' ', ':']) {
            errs.push(FieldError::new(
                format!("spec.address.hosts[{i}]"),
                format!("'{h}' is not a host or a '*.suffix' pattern"),
            ));
        }
    }
    check_unique_names(
        spec.address_extensions.iter().map(|p| p.name.as_str()),
        "spec.addressExtensions",
        &mut errs,
    );
    check_unique_names(
        spec.params.iter().map(|p| p.name.as_str()),
        "spec.params",
        &mut errs,
    );
    check_unique_names(
        spec.auth.types.iter().map(|t| t.name.as_str()),
        "spec.auth.types",
        &mut errs,
    );
    if spec.auth.types.iter().filter(|t| t.default).count() > 1 {
        errs.push(FieldError::new(
            "spec.auth.types",
            "more than one auth type sets default: true",
        ));
    }
    for (i, t) in spec.auth.types.iter().enumerate() {
        let f = format!("spec.auth.types[{i}]");
        if t.secret_type.trim().is_empty() {
            errs.push(FieldError::new(format!("{f}.secretType"), "must be set"));
        }
        if let Err(e) = credentials::check_injection(&credentials::effective_injection(t)) {
            errs.push(FieldError::new(format!("{f}.injection"), e.to_string()));
        }
    }
    if let Some(p) = &spec.liveness_probe {
        check_probe(p, "spec.livenessProbe", &mut errs);
    }
    for (i, ap) in spec.auth_probes.iter().enumerate() {
        let f = format!("spec.authProbes[{i}]");
        if spec.auth_type(&ap.auth_name).is_none() {
            errs.push(FieldError::new(
                format!("{f}.authName"),
                format!("no auth type named '{}' in spec.auth.types", ap.auth_name),
            ));
        }
        check_probe(&ap.probe, &format!("{f}.probe"), &mut errs);
    }
    errs
}

fn check_probe(p: &Probe, field: &str, errs: &mut Vec<FieldError>) {
    if !p.http.path.starts_with('/') {
        errs.push(FieldError::new(
            format!("{field}.http.path"),
            "must start with '/'",
        ));
    }
    if let Err(e) = template::placeholders(&p.http.path) {
        errs.push(FieldError::new(format!("{field}.http.path"), e.to_string()));
    }
    if let Some(m) = &p.http.method
        && !matches!(m.as_str(), "GET" | "HEAD" | "POST")
    {
        errs.push(FieldError::new(
            format!("{field}.http.method"),
            format!("'{m}' is not one of GET, HEAD, POST"),
        ));
    }
    for (i, h) in p.http.http_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            errs.push(FieldError::new(
                format!("{field}.http.httpHeaders[{i}].name"),
                format!("'{}' is not a valid header name", h.name),
            ));
        }
        if let Err(e) = template::placeholders(&h.value) {
            errs.push(FieldError::new(
                format!("{field}.http.httpHeaders[{i}].value"),
                e.to_string(),
            ));
        }
    }
    for (i, c) in p.http.success_codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            errs.push(FieldError::new(
                format!("{field}.http.successCodes[{i}]"),
                format!("{c} is not an HTTP status code"),
            ));
        }
    }
}

fn check_unique_names<'a>(
    names: impl Iterator<Item = &'a str>,
    field: &str,
    errs: &mut Vec<FieldError>,
) {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if n.trim().is_empty() {
            errs.push(FieldError::new(
                format!("{field}[{i}].name"),
                "must not be empty",
            ));
        } else if !seen.insert(n) {
            errs.push(FieldError::new(
                format!("{field}[{i}].name"),
                format!("'{n}' appears twice"),
            ));
        }
    }
}

/// A Connector whose spec agrees with its class.
#[derive(Clone, Debug)]
pub struct CheckedConnector {
    pub address: ToolAddress,
    /// Extension name and address.
    pub extensions: Vec<(String, ToolAddress)>,
    /// The auth type in use, if the class has any.
    pub auth_type: Option<AuthType>,
    /// The Secret holding the credentials (same namespace), if any.
    pub secret_name: Option<String>,
    /// Class defaults, then Connector params, then auth params.
    pub params: BTreeMap<String, String>,
}

impl CheckedConnector {
    /// Every address (main first) this Connector serves.
    pub fn addresses(&self) -> impl Iterator<Item = &ToolAddress> {
        std::iter::once(&self.address).chain(self.extensions.iter().map(|(_, a)| a))
    }
}

/// Checks a Connector against its class.
pub fn validate_connector(
    connector: &Connector,
    class: &ConnectorClassSpec,
) -> Result<CheckedConnector, Vec<FieldError>> {
    let mut errs = Vec::new();
    let namespace = connector.metadata.namespace.as_deref().unwrap_or("default");
    let name = connector.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::new("metadata.name", "must be set"));
    } else if name.len() > MAX_NAME {
        errs.push(FieldError::new(
            "metadata.name",
            format!("longer than {MAX_NAME} characters"),
        ));
    }
    let spec: &ConnectorSpec = &connector.spec;

    let address = match ToolAddress::parse(&spec.address) {
        Ok(a) => match a.check_rules(&class.address) {
            Ok(()) => Some(a),
            Err(e) => {
                errs.push(FieldError::new("spec.address", e.to_string()));
                None
            }
        },
        Err(e) => {
            errs.push(FieldError::new("spec.address", e.to_string()));
            None
        }
    };

    let mut extensions = Vec::new();
    let mut seen = HashSet::new();
    for (i, ext) in spec.address_extensions.iter().enumerate() {
        let f = format!("spec.addressExtensions[{i}]");
        if !class.address_extensions.iter().any(|p| p.name == ext.name) {
            errs.push(FieldError::new(
                format!("{f}.name"),
                format!("class has no address extension '{}'", ext.name),
            ));
            continue;
        }
        if !seen.insert(ext.name.as_str()) {
            errs.push(FieldError::new(
                format!("{f}.name"),
                format!("'{}' appears twice", ext.name),
            ));
            continue;
        }
        match ToolAddress::parse(&ext.value) {
            Ok(a) if address.as_ref() == Some(&a) => errs.push(FieldError::new(
                format!("{f}.value"),
                "is the same as spec.address",
            )),
            Ok(a) => extensions.push((ext.name.clone(), a)),
            Err(e) => errs.push(FieldError::new(format!("{f}.value"), e.to_string())),
        }
    }
    for p in &class.address_extensions {
        if seen.contains(p.name.as_str()) {
            continue;
        }
        match &p.default {
            Some(d) => match ToolAddress::parse(d) {
                Ok(a) => extensions.push((p.name.clone(), a)),
                Err(e) => errs.push(FieldError::new(
                    "spec.addressExtensions",
                    format!("class default for '{}': {e}", p.name),
                )),
            },
            None if p.optional => {}
            None => errs.push(FieldError::new(
                "spec.addressExtensions",
                format!("the class requires an address extension named '{}'", p.name),
            )),
        }
    }

    let mut params: BTreeMap<String, String> = class
        .params
        .iter()
        .filter_map(|p| p.default.clone().map(|d| (p.name.clone(), d)))
        .collect();
    for (i, p) in spec.params.iter().enumerate() {
        if !class.params.iter().any(|c| c.name == p.name) {
            errs.push(FieldError::new(
                format!("spec.params[{i}].name"),
                format!("class has no parameter '{}'", p.name),
            ));
        } else {
            params.insert(p.name.clone(), p.value.clone());
        }
    }
    for p in &class.params {
        if !params.contains_key(&p.name) && !p.optional {
            errs.push(FieldError::new(
                "spec.params",
                format!("the class requires a parameter named '{}'", p.name),
            ));
        }
    }

    let (auth_type, secret_name) = check_auth(connector, class, namespace, &mut params, &mut errs);

    match (errs.is_empty(), address) {
        (true, Some(address)) => Ok(CheckedConnector {
            address,
            extensions,
            auth_type,
            secret_name,
            params,
        }),
        _ => Err(errs),
    }
}

/// The auth type and Secret a Connector names, as far as they can be made out even when its spec
/// has other problems (so the Secret can still be checked and reported).
pub fn auth_in_use<'c>(
    connector: &'c Connector,
    class: &ConnectorClassSpec,
) -> Option<(AuthType, &'c str)> {
    let auth = connector.spec.auth.as_ref()?;
    let secret = auth.secret_ref.as_ref()?.name.as_str();
    if secret.trim().is_empty() {
        return None;
    }
    let t = match (&auth.name, class.auth.types.as_slice()) {
        (Some(n), types) => types.iter().find(|t| &t.name == n)?,
        (None, [only]) => only,
        (None, types) => types.iter().find(|t| t.default)?,
    };
    Some((t.clone(), secret))
}

fn check_auth(
    connector: &Connector,
    class: &ConnectorClassSpec,
    namespace: &str,
    params: &mut BTreeMap<String, String>,
    errs: &mut Vec<FieldError>,
) -> (Option<AuthType>, Option<String>) {
    let auth = connector.spec.auth.as_ref();
    let type_name = auth.and_then(|a| a.name.clone());
    let auth_type = match (&type_name, class.auth.types.as_slice()) {
        (Some(n), types) => match types.iter().find(|t| &t.name == n) {
            Some(t) => Some(t.clone()),
            None => {
                let known: Vec<_> = types.iter().map(|t| t.name.as_str()).collect();
                errs.push(FieldError::new(
                    "spec.auth.name",
                    format!(
                        "class has no auth type '{n}' (it has: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
                return (None, None);
            }
        },
        (None, [only]) => Some(only.clone()),
        (None, []) => None,
        (None, types) if types.iter().any(|t| t.default) => {
            types.iter().find(|t| t.default).cloned()
        }
        (None, _) => {
            errs.push(FieldError::new(
                "spec.auth.name",
                "the class has several auth types; name one",
            ));
            return (None, None);
        }
    };
    let Some(auth_type) = auth_type else {
        if auth.and_then(|a| a.secret_ref.as_ref()).is_some() {
            errs.push(FieldError::new(
                "spec.auth.secretRef",
                "the class has no auth types, so a Secret cannot be used",
            ));
        }
        return (None, None);
    };
    let secret_ref = auth.and_then(|a| a.secret_ref.as_ref());
    let secret_name = match secret_ref {
        Some(r) => {
            if let Some(ns) = &r.namespace
                && ns != namespace
            {
                errs.push(FieldError::new(
                    "spec.auth.secretRef.namespace",
                    format!("must be the Connector's namespace '{namespace}', not '{ns}'"),
                ));
            }
            if r.name.trim().is_empty() {
                errs.push(FieldError::new("spec.auth.secretRef.name", "must be set"));
            }
            Some(r.name.clone())
        }
        None if auth_type.optional => None,
        None => {
            errs.push(FieldError::new(
                "spec.auth.secretRef",
                format!(
                    "auth type '{}' needs a Secret of type '{}'",
                    auth_type.name, auth_type.secret_type
                ),
            ));
            None
        }
    };
    for p in auth.map(|a| a.params.as_slice()).unwrap_or_default() {
        params.insert(p.name.clone(), p.value.clone());
    }
    // A parameter only the auth probe needs does not make the Connector invalid: the proxy
    // serves it all the same, and the controller skips that probe and says which parameter
    // would enable it. Probe parameters with defaults get them.
    for probe in class
        .auth_probes
        .iter()
        .filter(|p| p.auth_name == auth_type.name)
    {
        for p in &probe.params {
            if !params.contains_key(&p.name)
                && let Some(d) = &p.default
            {
                params.insert(p.name.clone(), d.clone());
            }
        }
    }
    (Some(auth_type), secret_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::{AuthProbe, HttpProbe, ParamSpec};
    use crate::connector::{ConnectorAuth, NamedValue, SecretReference};

    fn git_class() -> ConnectorClassSpec {
        serde_yaml_ng::from_str(include_str!("../../../deploy/classes/git.yaml"))
            .map(|c: crate::ConnectorClass| c.spec)
            .unwrap()
    }

    fn connector(spec: ConnectorSpec) -> Connector {
        let mut c = Connector::new("git", spec);
        c.metadata.namespace = Some("team".into());
        c
    }

    fn good_spec() -> ConnectorSpec {
        ConnectorSpec {
            connector_class_name: "git".into(),
            address: "https://git.test".into(),
            auth: Some(ConnectorAuth {
                name: None,
                secret_ref: Some(SecretReference {
                    name: "creds".into(),
                    namespace: None,
                }),
                params: vec![NamedValue {
                    name: "repository".into(),
                    value: "org/app.git".into(),
                }],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn builtin_git_class_is_valid() {
        assert_eq!(validate_class(&git_class()), vec![]);
    }

    #[test]
    fn good_connector() {
        let c = validate_connector(&connector(good_spec()), &git_class()).unwrap();
        assert_eq!(c.address.authority(), "git.test:443");
        assert_eq!(c.secret_name.as_deref(), Some("creds"));
        assert_eq!(c.auth_type.unwrap().name, "basicAuth");
        assert_eq!(c.params["repository"], "org/app.git");
    }

    #[test]
    fn a_parameter_only_the_probe_needs_is_optional() {
        let mut spec = good_spec();
        spec.auth.as_mut().unwrap().params.clear();
        let c = validate_connector(&connector(spec), &git_class()).unwrap();
        assert!(!c.params.contains_key("repository"));
        assert_eq!(c.secret_name.as_deref(), Some("creds"));
    }

    #[test]
    fn problems_name_their_fields() {
        let mut spec = good_spec();
        spec.address = "ftp://x".into();
        spec.address_extensions = vec![NamedValue {
            name: "nope".into(),
            value: "https://y".into(),
        }];
        spec.auth
            .as_mut()
            .unwrap()
            .secret_ref
            .as_mut()
            .unwrap()
            .namespace = Some("other".into());
        let errs = validate_connector(&connector(spec), &git_class()).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"spec.address"), "{errs:?}");
        assert!(
            fields.contains(&"spec.addressExtensions[0].name"),
            "{errs:?}"
        );
        assert!(
            fields.contains(&"spec.auth.secretRef.namespace"),
            "{errs:?}"
        );
    }

    #[test]
    fn class_problems_name_their_fields() {
        let mut class = git_class();
        class.auth.types.push(class.auth.types[0].clone());
        class.auth_probes.push(AuthProbe {
            auth_name: "missing".into(),
            params: vec![ParamSpec::default()],
            probe: Probe {
                http: HttpProbe {
                    path: "no-slash/${oops}".into(),
                    ..Default::default()
                },
            },
        });
        let errs = validate_class(&class);
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"spec.auth.types[1].name"), "{errs:?}");
        assert!(fields.contains(&"spec.authProbes[1].authName"), "{errs:?}");
        assert!(
            fields.contains(&"spec.authProbes[1].probe.http.path"),
            "{errs:?}"
        );
    }
}
