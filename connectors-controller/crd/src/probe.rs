//! Probes: from a class's HTTP probe and a checked Connector to the request to send, and from
//! the tool's answer to a verdict. Nothing here does I/O: the controller sends the request.
//!
//! A probe's path and headers are templates. Secret values may appear in them (a class may put a
//! token in a query parameter), so the request keeps two forms of its URL: the real one, for the
//! wire only, and [`ProbeRequest::display`] with every secret replaced by `***`, for messages.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use secrecy::{ExposeSecret as _, SecretString};

use crate::class::HttpProbe;
use crate::credentials::{Credential, CredentialError, SecretData};
use crate::path::{Coverage, RequestPath};
use crate::template::{self, Scope, TemplateError};
use crate::validation::CheckedConnector;

/// Which check a probe makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Reachable, without credentials.
    Liveness,
    /// The credentials are accepted.
    Auth,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Auth => "auth",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("{field}: {source}")]
    Template {
        field: String,
        source: TemplateError,
    },
    #[error("{field}: {source}")]
    Secret {
        field: String,
        source: CredentialError,
    },
    #[error(
        "{field}: the probe needs parameter '{param}', which the Connector does not set (spec.auth.params or spec.params)"
    )]
    MissingParam { field: String, param: String },
    #[error("{field}: '{method}' is not an HTTP method the probe can send (GET, HEAD, POST)")]
    Method { field: String, method: String },
    #[error("{field}: the rendered URL '{display}' is not valid (characters that need escaping?)")]
    Url { field: String, display: String },
    #[error(
        "{field}: the probe's URL '{display}' resolves outside the Connector's address {prefix}, so it is not sent (check the parameters the probe uses)"
    )]
    OutsidePrefix {
        field: String,
        display: String,
        prefix: String,
    },
    #[error("{field}: '{name}' is not a valid header name")]
    HeaderName { field: String, name: String },
    #[error("{field}: the rendered value is not a valid header value (control characters?)")]
    HeaderValue { field: String },
}

/// What a Connector's probe renders from.
pub struct ProbeInput<'a> {
    pub checked: &'a CheckedConnector,
    /// `spec.address` as written, for `${connector.address}`.
    pub address: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    /// The Connector's Secret, for `${secret.KEY}` placeholders.
    pub secret: Option<&'a SecretData>,
    /// What the proxy would add; set for an auth probe that has credentials.
    pub credential: Option<&'a Credential>,
}

/// One request to send, and what a good answer looks like.
pub struct ProbeRequest {
    pub kind: ProbeKind,
    pub method: Method,
    uri: Uri,
    /// The URL with secret values masked: safe in messages, logs and events.
    pub display: String,
    /// Request headers; those rendered from secrets or credentials are marked sensitive.
    pub headers: HeaderMap,
    /// Status codes that mean success.
    pub success_codes: Vec<u16>,
    /// The request carries credentials.
    pub with_credentials: bool,
}

impl fmt::Debug for ProbeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeRequest")
            .field("kind", &self.kind)
            .field("method", &self.method)
            .field("url", &self.display)
            .field("headers", &self.headers)
            .field("success_codes", &self.success_codes)
            .finish()
    }
}

impl ProbeRequest {
    /// The URL to send: it may hold secret values, so it must not be shown.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Whether the tool's status code is a success for this probe.
    pub fn succeeded(&self, status: StatusCode) -> bool {
        if self.success_codes.is_empty() {
            status == StatusCode::OK
        } else {
            self.success_codes.contains(&status.as_u16())
        }
    }

    /// `200`, or `200, 401`: the codes this probe accepts, for messages.
    pub fn expected(&self) -> String {
        if self.success_codes.is_empty() {
            return "200".to_owned();
        }
        self.success_codes
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `HTTP 401 Unauthorized`: a status line as people know it.
pub fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Renders a probe. `field` names the probe in the class (e.g. `spec.livenessProbe`) so that a
/// problem points at what to fix.
pub fn build(
    kind: ProbeKind,
    probe: &HttpProbe,
    field: &str,
    input: &ProbeInput<'_>,
) -> Result<ProbeRequest, ProbeError> {
    let method_field = format!("{field}.http.method");
    let method = match probe.method.as_deref().unwrap_or("GET") {
        m @ ("GET" | "HEAD" | "POST") => {
            Method::from_bytes(m.as_bytes()).map_err(|_| ProbeError::Method {
                field: method_field.clone(),
                method: m.to_owned(),
            })?
        }
        other => {
            return Err(ProbeError::Method {
                field: method_field,
                method: other.to_owned(),
            });
        }
    };

    let path_field = format!("{field}.http.path");
    let (path, path_display) = expand(&probe.path, &path_field, input)?;
    let address = &input.checked.address;
    let base = format!("{}://{}", address.scheme, address.authority());
    // The probe's path is under the Connector's address, resolved as the tool will resolve it:
    // a parameter like `../other` must not take the credentials outside the prefix.
    let joined = SecretString::from(format!("{}{}", address.path_prefix, path.expose_secret()));
    let (raw_path, query) = match joined.expose_secret().split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (joined.expose_secret().to_owned(), None),
    };
    let shown_path = format!("{}{}", address.path_prefix, path_display);
    let outside = || ProbeError::OutsidePrefix {
        field: path_field.clone(),
        display: format!("{base}{shown_path}"),
        prefix: address.to_string(),
    };
    let resolved = RequestPath::parse(&raw_path).map_err(|_| outside())?;
    if address.coverage(&resolved) != Coverage::Inside {
        return Err(outside());
    }
    let path_and_query = match &query {
        Some(q) => SecretString::from(format!("{resolved}?{q}")),
        None => SecretString::from(resolved.to_string()),
    };
    // Shown normalized, unless secret values went into the path: then as the template made it,
    // with them masked.
    let mut display = if path_display == path.expose_secret() {
        format!("{base}{}", path_and_query.expose_secret())
    } else {
        format!("{base}{shown_path}")
    };

    let mut headers = HeaderMap::new();
    for (i, h) in probe.http_headers.iter().enumerate() {
        let f = format!("{field}.http.httpHeaders[{i}]");
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ProbeError::HeaderName {
                field: format!("{f}.name"),
                name: h.name.clone(),
            })?;
        let (value, shown) = expand(&h.value, &format!("{f}.value"), input)?;
        let mut value =
            HeaderValue::from_str(value.expose_secret()).map_err(|_| ProbeError::HeaderValue {
                field: format!("{f}.value"),
            })?;
        if shown != value.to_str().unwrap_or_default() {
            value.set_sensitive(true);
        }
        headers.insert(name, value);
    }

    let with_credentials = input.credential.is_some();
    let url = match input.credential {
        Some(c) => {
            let sent = c.apply(&mut headers, path_and_query.expose_secret());
            if let Credential::Query { name, .. } = c {
                let sep = if display.contains('?') { '&' } else { '?' };
                display = format!("{display}{sep}{name}=***");
            }
            SecretString::from(format!("{base}{sent}"))
        }
        None => SecretString::from(format!("{base}{}", path_and_query.expose_secret())),
    };
    if let Some(Credential::Header { name, .. }) = input.credential
        && let Some(v) = headers.get_mut(name)
    {
        v.set_sensitive(true);
    }

    let uri = Uri::try_from(url.expose_secret()).map_err(|_| ProbeError::Url {
        field: path_field,
        display: display.clone(),
    })?;
    Ok(ProbeRequest {
        kind,
        method,
        uri,
        display,
        headers,
        success_codes: probe.success_codes.clone(),
        with_credentials,
    })
}

/// Expands a template: the real value, and the value with secrets masked.
fn expand(
    template: &str,
    field: &str,
    input: &ProbeInput<'_>,
) -> Result<(SecretString, String), ProbeError> {
    let mut secret_error = None;
    let real = template::render(template, |scope, key| {
        lookup(scope, key, input, &mut secret_error)
    });
    if let Some(e) = secret_error {
        return Err(ProbeError::Secret {
            field: field.to_owned(),
            source: e,
        });
    }
    let real = real.map_err(|source| match source {
        TemplateError::Missing(p) if p.starts_with("params.") => ProbeError::MissingParam {
            field: field.to_owned(),
            param: p.trim_start_matches("params.").to_owned(),
        },
        source => ProbeError::Template {
            field: field.to_owned(),
            source,
        },
    })?;
    let shown = template::render(template, |scope, key| match scope {
        Scope::Secret => Some("***".to_owned()),
        _ => lookup(scope, key, input, &mut None),
    })
    .map_err(|source| ProbeError::Template {
        field: field.to_owned(),
        source,
    })?;
    Ok((SecretString::from(real), shown))
}

fn lookup(
    scope: Scope,
    key: &str,
    input: &ProbeInput<'_>,
    secret_error: &mut Option<CredentialError>,
) -> Option<String> {
    match scope {
        Scope::Params => input.checked.params.get(key).cloned(),
        Scope::Connector => match key {
            "address" => Some(input.address.to_owned()),
            "name" => Some(input.name.to_owned()),
            "namespace" => Some(input.namespace.to_owned()),
            _ => None,
        },
        Scope::Secret => match input.secret.map(|s| s.get(key)) {
            Some(Ok(v)) => Some(v.to_owned()),
            Some(Err(e)) => {
                *secret_error = Some(e);
                None
            }
            None => {
                *secret_error = Some(CredentialError::MissingKey(key.to_owned()));
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ToolAddress;
    use crate::class::NamedTemplate;
    use crate::credentials::SECRET_TYPE_OPAQUE;

    fn checked(address: &str, params: &[(&str, &str)]) -> CheckedConnector {
        CheckedConnector {
            address: ToolAddress::parse(address).unwrap(),
            extensions: Vec::new(),
            auth_type: None,
            secret_name: None,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn input<'a>(
        c: &'a CheckedConnector,
        secret: Option<&'a SecretData>,
        credential: Option<&'a Credential>,
    ) -> ProbeInput<'a> {
        ProbeInput {
            checked: c,
            address: "https://git.test/team",
            name: "git",
            namespace: "ns",
            secret,
            credential,
        }
    }

    fn probe(path: &str) -> HttpProbe {
        HttpProbe {
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn joins_prefix_and_params() {
        let c = checked("https://git.test/team", &[("repository", "app.git")]);
        let r = build(
            ProbeKind::Liveness,
            &probe("/${params.repository}/info/refs?service=git-upload-pack"),
            "spec.livenessProbe",
            &input(&c, None, None),
        )
        .unwrap();
        assert_eq!(
            r.uri().to_string(),
            "https://git.test:443/team/app.git/info/refs?service=git-upload-pack"
        );
        assert_eq!(r.display, r.uri().to_string());
        assert_eq!(r.method, Method::GET);
        assert!(r.succeeded(StatusCode::OK));
        assert!(!r.succeeded(StatusCode::UNAUTHORIZED));
        assert!(!r.with_credentials);
    }

    #[test]
    fn secrets_are_masked_in_display_and_headers() {
        let c = checked("http://127.0.0.1:8080", &[]);
        let s = SecretData::from_values(SECRET_TYPE_OPAQUE, [("token", "t0p-s3cret")]);
        let mut p = probe("/api?key=${secret.token}");
        p.http_headers = vec![NamedTemplate {
            name: "X-Token".into(),
            value: "${secret.token}".into(),
        }];
        let cred = Credential::Query {
            name: "access_token".into(),
            value: SecretString::from("t0p-s3cret".to_owned()),
        };
        let r = build(
            ProbeKind::Auth,
            &p,
            "spec.authProbes[0].probe",
            &input(&c, Some(&s), Some(&cred)),
        )
        .unwrap();
        assert!(r.uri().to_string().contains("key=t0p-s3cret"));
        assert!(r.uri().to_string().ends_with("&access_token=t0p-s3cret"));
        assert_eq!(
            r.display,
            "http://127.0.0.1:8080/api?key=***&access_token=***"
        );
        assert!(r.headers["x-token"].is_sensitive());
        assert!(!format!("{r:?}").contains("t0p-s3cret"), "{r:?}");
        assert!(r.with_credentials);
    }

    #[test]
    fn problems_name_the_field() {
        let c = checked("http://h", &[("repository", "a b")]);
        let err = build(
            ProbeKind::Auth,
            &probe("/${params.repository}/info/refs"),
            "spec.authProbes[0].probe",
            &input(&c, None, None),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.authProbes[0].probe.http.path: the rendered URL"),
            "{err}"
        );
        let err = build(
            ProbeKind::Liveness,
            &probe("/${params.nope}"),
            "spec.livenessProbe",
            &input(&c, None, None),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProbeError::MissingParam {
                field: "spec.livenessProbe.http.path".into(),
                param: "nope".into()
            }
        );
        let err = build(
            ProbeKind::Auth,
            &probe("/${secret.token}"),
            "spec.authProbes[0].probe",
            &input(&c, None, None),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.authProbes[0].probe.http.path: Secret has no key 'token'"
        );
        let mut p = probe("/");
        p.method = Some("DELETE".into());
        assert!(matches!(
            build(ProbeKind::Liveness, &p, "f", &input(&c, None, None)).unwrap_err(),
            ProbeError::Method { .. }
        ));
    }

    #[test]
    fn probes_never_leave_the_prefix() {
        for repo in [
            "../other/x.git",
            "x/../../other",
            "%2e%2e/other",
            "..%2Fother",
        ] {
            let c = checked("https://git.test/team", &[("repository", repo)]);
            let err = build(
                ProbeKind::Auth,
                &probe("/${params.repository}/info/refs?service=git-upload-pack"),
                "spec.authProbes[0].probe",
                &input(&c, None, None),
            )
            .unwrap_err();
            assert!(
                matches!(err, ProbeError::OutsidePrefix { .. }),
                "{repo}: {err}"
            );
        }
        let c = checked("https://git.test/team", &[("repository", "./app.git")]);
        let r = build(
            ProbeKind::Auth,
            &probe("/${params.repository}/info/refs"),
            "f",
            &input(&c, None, None),
        )
        .unwrap();
        assert_eq!(
            r.uri().to_string(),
            "https://git.test:443/team/app.git/info/refs"
        );
    }

    #[test]
    fn status_lines_and_codes() {
        assert_eq!(
            status_line(StatusCode::UNAUTHORIZED),
            "HTTP 401 Unauthorized"
        );
        let c = checked("http://h", &[]);
        let mut p = probe("/");
        p.success_codes = vec![200, 401];
        let r = build(ProbeKind::Liveness, &p, "f", &input(&c, None, None)).unwrap();
        assert!(r.succeeded(StatusCode::UNAUTHORIZED));
        assert_eq!(r.expected(), "200, 401");
    }
}
