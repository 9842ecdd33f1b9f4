//! From a Secret and a class's injection rule to what goes on the wire.
//!
//! Secret values live in [`SecretString`]s (zeroized on drop, `Debug` prints a placeholder) and
//! the rendered header values are marked sensitive, so neither reaches a log line by accident.

use std::collections::BTreeMap;

use std::borrow::Cow;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use k8s_openapi::api::core::v1::Secret;
use secrecy::{ExposeSecret, SecretString};

use crate::class::{AuthType, BasicInjection, BearerInjection, Injection};
use crate::template::{self, Scope, TemplateError};

pub const SECRET_TYPE_BASIC_AUTH: &str = "kubernetes.io/basic-auth";
pub const SECRET_TYPE_OPAQUE: &str = "Opaque";
/// A client certificate and its key (`tls.crt`, `tls.key`).
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
/// A bearer token (`token`).
pub const SECRET_TYPE_BEARER_TOKEN: &str = "connectors.io/bearer-token";
/// A registry login (`username`, `password`) exchanged for tokens at the registry's token
/// service.
pub const SECRET_TYPE_REGISTRY_TOKEN: &str = "connectors.io/registry-token";

/// Secret types of the existing Connectors product, and ours they stand for: a Secret ported
/// from it fits an auth type that asks for ours, and the other way round.
pub const SECRET_TYPE_ALIASES: &[(&str, &str)] = &[
    ("connectors.cpaas.io/bearer-token", SECRET_TYPE_BEARER_TOKEN),
    (
        "cpaas.io/distribution-registry-token",
        SECRET_TYPE_REGISTRY_TOKEN,
    ),
];

/// The Secret type `t` stands for: ours for an alias, else `t`.
pub fn canonical_secret_type(t: &str) -> &str {
    SECRET_TYPE_ALIASES
        .iter()
        .find(|(alias, _)| *alias == t)
        .map_or(t, |(_, ours)| ours)
}

/// Whether a Secret of type `found` fits an auth type asking for `expected` (aliases count).
pub fn secret_type_fits(expected: &str, found: &str) -> bool {
    canonical_secret_type(expected) == canonical_secret_type(found)
}

/// The data of a Secret, with `stringData` merged over `data` as the API server does.
#[derive(Debug, Default)]
pub struct SecretData {
    pub type_: String,
    values: BTreeMap<String, SecretString>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("Secret is of type '{found}' but auth type '{auth}' needs '{expected}'")]
    SecretType {
        auth: String,
        expected: String,
        found: String,
    },
    #[error("Secret has no key '{0}'")]
    MissingKey(String),
    #[error("Secret key '{0}' is not UTF-8 text")]
    NotText(String),
    #[error("Secret key '{0}' is empty")]
    EmptyKey(String),
    #[error("injection rule: {0}")]
    Template(#[from] TemplateError),
    #[error("injection rule: '{0}' is not a valid header name")]
    HeaderName(String),
    #[error("the rendered value of '{0}' is not a valid header value (control characters?)")]
    HeaderValue(String),
    #[error(
        "injection rule: '${{connector.{0}}}' is not available in injection rules (use ${{secret.KEY}} or ${{params.NAME}})"
    )]
    ConnectorScope(String),
    #[error(
        "injection rule must set exactly one of basic, bearer, header, query, registryToken, clientCertificate (it sets {0})"
    )]
    InjectionShape(usize),
    #[error("Secret key '{0}' holds no PEM {1}")]
    NotPem(String, &'static str),
    #[error(
        "the injection rule (registryToken or clientCertificate) is not a fixed header or query parameter"
    )]
    NotStatic,
}

impl SecretData {
    /// Reads a Secret. Keys that are not UTF-8 are kept out and reported only when used.
    pub fn from_secret(secret: &Secret) -> Self {
        let mut values = BTreeMap::new();
        let mut not_text = Vec::new();
        for (k, v) in secret.data.iter().flatten() {
            match String::from_utf8(v.0.clone()) {
                Ok(s) => {
                    values.insert(k.clone(), SecretString::from(s));
                }
                Err(_) => not_text.push(k.clone()),
            }
        }
        for (k, v) in secret.string_data.iter().flatten() {
            values.insert(k.clone(), SecretString::from(v.clone()));
        }
        let mut data = Self {
            type_: secret
                .type_
                .clone()
                .unwrap_or_else(|| SECRET_TYPE_OPAQUE.to_owned()),
            values,
        };
        for k in not_text {
            data.values
                .entry(k)
                .or_insert_with(|| SecretString::from(NOT_TEXT.to_owned()));
        }
        data
    }

    /// A Secret from plain values (tests, probes).
    pub fn from_values<'a>(type_: &str, kv: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            type_: type_.to_owned(),
            values: kv
                .into_iter()
                .map(|(k, v)| (k.to_owned(), SecretString::from(v.to_owned())))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Result<&str, CredentialError> {
        let v = self
            .values
            .get(key)
            .ok_or_else(|| CredentialError::MissingKey(key.to_owned()))?
            .expose_secret();
        if v == NOT_TEXT {
            return Err(CredentialError::NotText(key.to_owned()));
        }
        Ok(v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

/// Marks a key whose bytes are not text; never a real value since it holds a NUL.
const NOT_TEXT: &str = "\0not-text\0";

/// The injection rule of an auth type, defaulted from its Secret type when the class gives none.
pub fn effective_injection(auth: &AuthType) -> Injection {
    if let Some(i) = &auth.injection {
        return i.clone();
    }
    if auth.secret_type == SECRET_TYPE_BASIC_AUTH {
        Injection {
            basic: Some(BasicInjection::default()),
            ..Default::default()
        }
    } else {
        Injection {
            bearer: Some(BearerInjection::default()),
            ..Default::default()
        }
    }
}

/// The Secret keys an auth type needs: those of its Secret type, its `params`, and those its
/// injection rule reads.
pub fn required_keys(auth: &AuthType) -> Result<Vec<String>, CredentialError> {
    let mut keys: Vec<String> = Vec::new();
    let mut add = |k: &str| {
        if !keys.iter().any(|x| x == k) {
            keys.push(k.to_owned());
        }
    };
    if auth.secret_type == SECRET_TYPE_BASIC_AUTH {
        add("username");
        add("password");
    }
    for p in &auth.params {
        add(&p.name);
    }
    for t in injection_templates(&effective_injection(auth))? {
        for (scope, key) in template::placeholders(t)? {
            if scope == Scope::Secret {
                add(&key);
            }
        }
    }
    Ok(keys)
}

fn injection_templates(i: &Injection) -> Result<Vec<&str>, CredentialError> {
    let set = [
        i.basic.is_some(),
        i.bearer.is_some(),
        i.header.is_some(),
        i.query.is_some(),
        i.registry_token.is_some(),
        i.client_certificate.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err(CredentialError::InjectionShape(set));
    }
    let mut t = Vec::new();
    if let Some(b) = &i.basic {
        t.push(b.username.as_str());
        t.push(b.password.as_str());
    }
    if let Some(b) = &i.bearer {
        t.push(b.token.as_str());
    }
    if let Some(h) = &i.header {
        t.push(h.value.as_str());
    }
    if let Some(q) = &i.query {
        t.push(q.value.as_str());
    }
    if let Some(r) = &i.registry_token {
        t.push(r.username.as_str());
        t.push(r.password.as_str());
    }
    if let Some(c) = &i.client_certificate {
        t.push(c.certificate.as_str());
        t.push(c.key.as_str());
    }
    Ok(t)
}

/// Checks a class's injection rule without a Secret: shape, placeholders (`${secret.*}` and
/// `${params.*}` only), header name.
pub fn check_injection(i: &Injection) -> Result<(), CredentialError> {
    for t in injection_templates(i)? {
        for (scope, key) in template::placeholders(t)? {
            if scope == Scope::Connector {
                return Err(CredentialError::ConnectorScope(key));
            }
        }
    }
    if let Some(h) = &i.header {
        HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| CredentialError::HeaderName(h.name.clone()))?;
    }
    Ok(())
}

/// Checks a Secret against an auth type: its type, and every key the type needs, present and
/// non-empty.
pub fn check_secret(auth: &AuthType, secret: &SecretData) -> Result<(), CredentialError> {
    if !secret_type_fits(&auth.secret_type, &secret.type_) {
        return Err(CredentialError::SecretType {
            auth: auth.name.clone(),
            expected: auth.secret_type.clone(),
            found: secret.type_.clone(),
        });
    }
    for key in required_keys(auth)? {
        if secret.get(&key)?.is_empty() {
            return Err(CredentialError::EmptyKey(key));
        }
    }
    Ok(())
}

/// What the proxy adds to a request.
#[derive(Clone)]
pub enum Credential {
    /// Set (replacing) this header.
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    /// Set (replacing) this query parameter; the value is already percent-encoded.
    Query { name: String, value: SecretString },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Header { name, .. } => write!(f, "Header({name}: ***)"),
            Credential::Query { name, .. } => write!(f, "Query({name}=***)"),
        }
    }
}

impl Credential {
    /// Puts the credential on a request: sets its header (replacing any the client sent), or
    /// sets its query parameter in `path_and_query` (replacing any the client sent, under any
    /// encoding of its name). Returns the path and query to send. The proxy, the probes and the
    /// API relay all inject through this one function.
    pub fn apply<'a>(&self, headers: &mut HeaderMap, path_and_query: &'a str) -> Cow<'a, str> {
        match self {
            Credential::Header { name, value } => {
                headers.insert(name.clone(), value.clone());
                Cow::Borrowed(path_and_query)
            }
            Credential::Query { name, value } => {
                let (path, query) = path_and_query
                    .split_once('?')
                    .unwrap_or((path_and_query, ""));
                let mut out = String::with_capacity(path_and_query.len() + name.len() + 48);
                out.push_str(path);
                out.push('?');
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    if !query_key_is(pair, name) {
                        out.push_str(pair);
                        out.push('&');
                    }
                }
                out.push_str(name);
                out.push('=');
                out.push_str(value.expose_secret());
                Cow::Owned(out)
            }
        }
    }

    /// Keeps the credential from going back to the workload in a response's headers: the
    /// injected query parameter is cut from the URLs of `Location`, `Content-Location`, `Link`
    /// and `Refresh`, and any other header that still carries the secret is dropped. Returns how
    /// many headers were changed or dropped. (A tool that echoes a credential in a response
    /// body cannot be protected this way; see docs/architecture.md.)
    pub fn scrub_response(&self, headers: &mut HeaderMap) -> usize {
        let mut changed = 0;
        if let Credential::Query { name, .. } = self {
            for h in [
                header::LOCATION,
                header::CONTENT_LOCATION,
                header::LINK,
                header::REFRESH,
            ] {
                let values: Vec<HeaderValue> = headers.get_all(&h).iter().cloned().collect();
                if values.is_empty() {
                    continue;
                }
                let mut rewritten = Vec::with_capacity(values.len());
                let mut any = false;
                for v in values {
                    match v.to_str().ok().and_then(|t| without_query_param(t, name)) {
                        Some(t) => {
                            any = true;
                            if let Ok(nv) = HeaderValue::try_from(t) {
                                rewritten.push(nv);
                            }
                        }
                        None => rewritten.push(v),
                    }
                }
                if any {
                    changed += 1;
                    headers.remove(&h);
                    for v in rewritten {
                        headers.append(h.clone(), v);
                    }
                }
            }
        }
        let needles = self.needles();
        let leaking: Vec<HeaderName> = headers
            .iter()
            .filter(|(_, v)| {
                needles
                    .iter()
                    .any(|n| contains(v.as_bytes(), n.expose_secret().as_bytes()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in leaking {
            headers.remove(&k);
            changed += 1;
        }
        changed
    }

    /// The byte strings whose presence in a response header means the credential is leaking.
    fn needles(&self) -> Vec<SecretString> {
        let mut out = Vec::new();
        match self {
            Credential::Header { value, .. } => {
                let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                if let Some((_, token)) = v.split_once(' ') {
                    out.push(SecretString::from(token.to_owned()));
                }
                out.push(SecretString::from(v));
            }
            Credential::Query { value, .. } => {
                let raw = percent_encoding::percent_decode_str(value.expose_secret())
                    .decode_utf8_lossy()
                    .into_owned();
                out.push(SecretString::from(value.expose_secret().to_owned()));
                out.push(SecretString::from(raw));
            }
        }
        // Too short to tell from ordinary text.
        out.retain(|n| n.expose_secret().len() >= MIN_NEEDLE);
        out
    }
}

/// What a query value keeps unencoded: RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Shorter secrets are not searched for in response headers (they would match ordinary text).
const MIN_NEEDLE: usize = 4;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a `key=value` pair (or a bare `key`) of a query has the key `name`, comparing the
/// percent-decoded key as a server would.
fn query_key_is(pair: &str, name: &str) -> bool {
    let key = pair.split('=').next().unwrap_or_default();
    key == name
        || percent_encoding::percent_decode_str(&key.replace('+', " "))
            .decode_utf8()
            .is_ok_and(|k| k == name)
}

/// The header value with the query parameter `name` removed from every URL in it; `None` when
/// no URL held it. URLs are the whole value (`Location`) or the `<...>` parts (`Link`) or the
/// part after `url=` (`Refresh`).
fn without_query_param(value: &str, name: &str) -> Option<String> {
    let strip_url = |url: &str| -> Option<String> {
        let (before_frag, frag) = match url.split_once('#') {
            Some((a, f)) => (a, Some(f)),
            None => (url, None),
        };
        let (base, query) = before_frag.split_once('?')?;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !query_key_is(p, name))
            .collect();
        if kept.len() == query.split('&').filter(|p| !p.is_empty()).count() {
            return None;
        }
        let mut out = base.to_owned();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        if let Some(f) = frag {
            out.push('#');
            out.push_str(f);
        }
        Some(out)
    };
    if value.contains('<') {
        // Link: `<url>; rel=next, <url>; rel=prev`
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        let mut any = false;
        while let Some(start) = rest.find('<') {
            let Some(len) = rest[start..].find('>') else {
                break;
            };
            out.push_str(&rest[..=start]);
            let url = &rest[start + 1..start + len];
            match strip_url(url) {
                Some(u) => {
                    any = true;
                    out.push_str(&u);
                }
                None => out.push_str(url),
            }
            out.push('>');
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        return any.then_some(out);
    }
    let lower = value.to_ascii_lowercase();
    if let Some(pos) = lower.find("url=") {
        // Refresh: `5; url=...`
        let (head, url) = value.split_at(pos + 4);
        return strip_url(url.trim()).map(|u| format!("{head}{u}"));
    }
    strip_url(value.trim())
}

/// A client certificate chain and its private key, in PEM, presented to the tool in the TLS
/// handshake. The key is zeroized on drop and never printed.
#[derive(Clone)]
pub struct ClientIdentity {
    pub certificate_pem: String,
    pub key_pem: SecretString,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(***)")
    }
}

/// What an auth type's injection rule renders to.
#[derive(Clone, Debug)]
pub enum Rendered {
    /// The same header or query parameter on every request.
    Static(Credential),
    /// The registry token flow, with the `Authorization: Basic` value of the login (`None`:
    /// anonymous tokens).
    RegistryToken(Option<HeaderValue>),
    /// A client certificate for the TLS handshake.
    ClientCertificate(ClientIdentity),
}

/// Renders an auth type's injection rule. Without a Secret only the registry token flow has
/// something to do (anonymous tokens): the others render to `None`.
pub fn render_rule(
    auth: &AuthType,
    secret: Option<&SecretData>,
    params: &BTreeMap<String, String>,
) -> Result<Option<Rendered>, CredentialError> {
    let inj = effective_injection(auth);
    check_injection(&inj)?;
    let Some(secret) = secret else {
        return Ok(inj
            .registry_token
            .is_some()
            .then_some(Rendered::RegistryToken(None)));
    };
    if let Some(r) = &inj.registry_token {
        let expand = expander(secret, params);
        let user = SecretString::from(expand(&r.username)?);
        let pass = SecretString::from(expand(&r.password)?);
        return Ok(Some(Rendered::RegistryToken(Some(basic_header(
            &user, &pass,
        )?))));
    }
    if let Some(c) = &inj.client_certificate {
        let expand = expander(secret, params);
        let certificate_pem = expand(&c.certificate)?;
        let key_pem = SecretString::from(expand(&c.key)?);
        let key_name = template_key(&c.key);
        if !certificate_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(CredentialError::NotPem(
                template_key(&c.certificate),
                "certificate",
            ));
        }
        if !key_pem.expose_secret().contains("PRIVATE KEY-----") {
            return Err(CredentialError::NotPem(key_name, "private key"));
        }
        return Ok(Some(Rendered::ClientCertificate(ClientIdentity {
            certificate_pem,
            key_pem,
        })));
    }
    render(auth, secret, params).map(|c| Some(Rendered::Static(c)))
}

/// The Secret key a template names (for messages), or the template itself.
fn template_key(t: &str) -> String {
    match template::placeholders(t).ok().as_deref() {
        Some([(Scope::Secret, key)]) => key.clone(),
        _ => t.to_owned(),
    }
}

/// `Basic base64(user:password)`, marked sensitive.
fn basic_header(user: &SecretString, pass: &SecretString) -> Result<HeaderValue, CredentialError> {
    let joined = SecretString::from(format!("{}:{}", user.expose_secret(), pass.expose_secret()));
    let encoded = SecretString::from(
        base64::engine::general_purpose::STANDARD.encode(joined.expose_secret()),
    );
    let mut hv = HeaderValue::try_from(format!("Basic {}", encoded.expose_secret()))
        .map_err(|_| CredentialError::HeaderValue("Authorization".to_owned()))?;
    hv.set_sensitive(true);
    Ok(hv)
}

/// Expands a template with the Secret's values and the Connector's parameters.
fn expander<'a>(
    secret: &'a SecretData,
    params: &'a BTreeMap<String, String>,
) -> impl Fn(&str) -> Result<String, CredentialError> + 'a {
    move |t: &str| {
        let mut missing_secret = None;
        let out = template::render(t, |scope, key| match scope {
            Scope::Secret => match secret.get(key) {
                Ok(v) => Some(v.to_owned()),
                Err(e) => {
                    missing_secret = Some(e);
                    None
                }
            },
            Scope::Params => params.get(key).cloned(),
            Scope::Connector => None,
        });
        match (out, missing_secret) {
            (_, Some(e)) => Err(e),
            (Ok(s), None) => Ok(s),
            (Err(e), None) => Err(e.into()),
        }
    }
}

/// Renders an auth type's static injection (`basic`, `bearer`, `header`, `query`) with a
/// Secret's values and the Connector's parameters; see [`render_rule`] for every rule.
pub fn render(
    auth: &AuthType,
    secret: &SecretData,
    params: &BTreeMap<String, String>,
) -> Result<Credential, CredentialError> {
    let inj = effective_injection(auth);
    check_injection(&inj)?;
    let expand = expander(secret, params);
    let sensitive = |name: &str, v: String| -> Result<HeaderValue, CredentialError> {
        let mut hv =
            HeaderValue::try_from(v).map_err(|_| CredentialError::HeaderValue(name.to_owned()))?;
        hv.set_sensitive(true);
        Ok(hv)
    };
    if let Some(b) = &inj.basic {
        let user = SecretString::from(expand(&b.username)?);
        let pass = SecretString::from(expand(&b.password)?);
        return Ok(Credential::Header {
            name: http::header::AUTHORIZATION,
            value: basic_header(&user, &pass)?,
        });
    }
    if let Some(b) = &inj.bearer {
        let token = SecretString::from(expand(&b.token)?);
        return Ok(Credential::Header {
            name: http::header::AUTHORIZATION,
            value: sensitive("Authorization", format!("Bearer {}", token.expose_secret()))?,
        });
    }
    if let Some(h) = &inj.header {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| CredentialError::HeaderName(h.name.clone()))?;
        let value = sensitive(&h.name, expand(&h.value)?)?;
        return Ok(Credential::Header { name, value });
    }
    if let Some(q) = &inj.query {
        let raw = SecretString::from(expand(&q.value)?);
        let encoded =
            percent_encoding::utf8_percent_encode(raw.expose_secret(), QUERY_VALUE).to_string();
        return Ok(Credential::Query {
            name: q.name.clone(),
            value: SecretString::from(encoded),
        });
    }
    Err(CredentialError::NotStatic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::NamedTemplate;

    fn basic_auth() -> AuthType {
        AuthType {
            name: "basicAuth".into(),
            secret_type: SECRET_TYPE_BASIC_AUTH.into(),
            ..Default::default()
        }
    }

    #[test]
    fn basic_from_secret_type() {
        let s = SecretData::from_values(
            SECRET_TYPE_BASIC_AUTH,
            [("username", "alice"), ("password", "s3cret")],
        );
        check_secret(&basic_auth(), &s).unwrap();
        let c = render(&basic_auth(), &s, &BTreeMap::new()).unwrap();
        let Credential::Header { name, value } = c else {
            panic!("not a header")
        };
        assert_eq!(name, http::header::AUTHORIZATION);
        assert_eq!(value.to_str().unwrap(), "Basic YWxpY2U6czNjcmV0");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("YWxp"));
    }

    #[test]
    fn secret_problems_are_named() {
        let s = SecretData::from_values(SECRET_TYPE_OPAQUE, [("username", "a")]);
        assert!(matches!(
            check_secret(&basic_auth(), &s).unwrap_err(),
            CredentialError::SecretType { .. }
        ));
        let s = SecretData::from_values(SECRET_TYPE_BASIC_AUTH, [("username", "a")]);
        assert_eq!(
            check_secret(&basic_auth(), &s).unwrap_err(),
            CredentialError::MissingKey("password".into())
        );
        let s = SecretData::from_values(
            SECRET_TYPE_BASIC_AUTH,
            [("username", "a"), ("password", "")],
        );
        assert_eq!(
            check_secret(&basic_auth(), &s).unwrap_err(),
            CredentialError::EmptyKey("password".into())
        );
    }

    #[test]
    fn header_and_query_rules() {
        let mut auth = AuthType {
            name: "pat".into(),
            secret_type: SECRET_TYPE_OPAQUE.into(),
            injection: Some(Injection {
                header: Some(NamedTemplate {
                    name: "PRIVATE-TOKEN".into(),
                    value: "${secret.token}".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(required_keys(&auth).unwrap(), vec!["token".to_string()]);
        let s = SecretData::from_values(SECRET_TYPE_OPAQUE, [("token", "a b&c")]);
        let Credential::Header { name, value } = render(&auth, &s, &BTreeMap::new()).unwrap()
        else {
            panic!()
        };
        assert_eq!(name.as_str(), "private-token");
        assert_eq!(value.to_str().unwrap(), "a b&c");

        auth.injection = Some(Injection {
            query: Some(NamedTemplate {
                name: "access_token".into(),
                value: "${secret.token}".into(),
            }),
            ..Default::default()
        });
        let Credential::Query { name, value } = render(&auth, &s, &BTreeMap::new()).unwrap() else {
            panic!()
        };
        assert_eq!(name, "access_token");
        assert_eq!(value.expose_secret(), "a%20b%26c");
    }

    #[test]
    fn ported_secret_types_fit_the_auth_types_asking_for_ours() {
        let bearer = AuthType {
            name: "bearerTokenAuth".into(),
            secret_type: SECRET_TYPE_BEARER_TOKEN.into(),
            injection: Some(Injection {
                bearer: Some(BearerInjection {
                    token: "${secret.token}".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ported = SecretData::from_values(
            "connectors.cpaas.io/bearer-token",
            [("token", "sa-token-123")],
        );
        check_secret(&bearer, &ported).unwrap();
        let Credential::Header { name, value } =
            render(&bearer, &ported, &BTreeMap::new()).unwrap()
        else {
            panic!("not a header")
        };
        assert_eq!(name, http::header::AUTHORIZATION);
        assert_eq!(value.to_str().unwrap(), "Bearer sa-token-123");
        assert!(secret_type_fits(
            SECRET_TYPE_REGISTRY_TOKEN,
            "cpaas.io/distribution-registry-token"
        ));
        // Neither alias stands for the other, nor for an unrelated type.
        let other =
            SecretData::from_values("cpaas.io/distribution-registry-token", [("token", "x")]);
        assert!(matches!(
            check_secret(&bearer, &other).unwrap_err(),
            CredentialError::SecretType { .. }
        ));
        assert!(!secret_type_fits(
            SECRET_TYPE_BEARER_TOKEN,
            SECRET_TYPE_OPAQUE
        ));
    }

    #[test]
    fn injection_shape_is_checked() {
        let both = Injection {
            basic: Some(BasicInjection::default()),
            bearer: Some(BearerInjection::default()),
            ..Default::default()
        };
        assert_eq!(
            check_injection(&both).unwrap_err(),
            CredentialError::InjectionShape(2)
        );
        let bad_header = Injection {
            header: Some(NamedTemplate {
                name: "bad header".into(),
                value: "x".into(),
            }),
            ..Default::default()
        };
        assert!(matches!(
            check_injection(&bad_header).unwrap_err(),
            CredentialError::HeaderName(_)
        ));
    }

    fn query_credential(name: &str, value: &str) -> Credential {
        Credential::Query {
            name: name.into(),
            value: SecretString::from(value.to_owned()),
        }
    }

    #[test]
    fn apply_replaces_what_the_client_sent() {
        let q = query_credential("private_token", "s3cr%2Ft");
        let mut h = HeaderMap::new();
        assert_eq!(q.apply(&mut h, "/a"), "/a?private_token=s3cr%2Ft");
        assert_eq!(
            q.apply(&mut h, "/a?private%5Ftoken=mine&b=1&private_token=x"),
            "/a?b=1&private_token=s3cr%2Ft"
        );
        assert_eq!(q.apply(&mut h, "/a?"), "/a?private_token=s3cr%2Ft");
        assert!(h.is_empty());
        let c = Credential::Header {
            name: header::AUTHORIZATION,
            value: HeaderValue::from_static("Bearer abc"),
        };
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer mine"),
        );
        assert_eq!(c.apply(&mut h, "/a?x"), "/a?x");
        assert_eq!(h[header::AUTHORIZATION], "Bearer abc");
    }

    #[test]
    fn query_credentials_are_cut_from_response_urls() {
        let q = query_credential("private_token", "s3cr%2Ft-value");
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("https://git.test/team/?private_token=s3cr%2Ft-value&x=1"),
        );
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "<https://git.test/api?page=2&private_token=s3cr%2Ft-value>; rel=\"next\", <https://git.test/api?page=1>; rel=\"first\"",
            ),
        );
        h.insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_static("/a?private_token=s3cr%2Ft-value"),
        );
        h.insert(
            header::REFRESH,
            HeaderValue::from_static("0; url=/b?PRIVATE_TOKEN=no&private_token=s3cr%2Ft-value"),
        );
        h.insert("x-echo", HeaderValue::from_static("you sent s3cr/t-value"));
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        assert_eq!(q.scrub_response(&mut h), 5);
        assert_eq!(h[header::LOCATION], "https://git.test/team/?x=1");
        assert_eq!(
            h[header::LINK],
            "<https://git.test/api?page=2>; rel=\"next\", <https://git.test/api?page=1>; rel=\"first\""
        );
        assert_eq!(h[header::CONTENT_LOCATION], "/a");
        assert_eq!(h[header::REFRESH], "0; url=/b?PRIVATE_TOKEN=no");
        assert!(!h.contains_key("x-echo"));
        assert!(h.contains_key(header::ETAG));
    }

    #[test]
    fn echoed_header_credentials_are_dropped() {
        let c = Credential::Header {
            name: header::AUTHORIZATION,
            value: HeaderValue::from_static("Basic YWxpY2U6czNjcmV0"),
        };
        let mut h = HeaderMap::new();
        h.insert("x-debug-auth", HeaderValue::from_static("YWxpY2U6czNjcmV0"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(c.scrub_response(&mut h), 1);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn control_characters_are_refused() {
        let s = SecretData::from_values(SECRET_TYPE_OPAQUE, [("token", "a\r\nX-Evil: 1")]);
        let auth = AuthType {
            name: "t".into(),
            secret_type: SECRET_TYPE_OPAQUE.into(),
            ..Default::default()
        };
        assert!(matches!(
            render(&auth, &s, &BTreeMap::new()).unwrap_err(),
            CredentialError::HeaderValue(_)
        ));
    }
}
