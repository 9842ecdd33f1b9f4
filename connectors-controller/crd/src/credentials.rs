//! From a Secret and a class's injection rule to what goes on the wire.
//!
//! Secret values live in [`SecretString`]s (zeroized on drop, `Debug` prints a placeholder) and
//! the rendered header values are marked sensitive, so neither reaches a log line by accident.

use std::collections::BTreeMap;

use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::Secret;
use secrecy::{ExposeSecret, SecretString};

use crate::class::{AuthType, BasicInjection, BearerInjection, Injection};
use crate::template::{self, Scope, TemplateError};

pub const SECRET_TYPE_BASIC_AUTH: &str = "kubernetes.io/basic-auth";
pub const SECRET_TYPE_OPAQUE: &str = "Opaque";

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
    #[error("injection rule must set exactly one of basic, bearer, header, query (it sets {0})")]
    InjectionShape(usize),
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
    Ok(t)
}

/// Checks a class's injection rule without a Secret: shape, placeholders, header name.
pub fn check_injection(i: &Injection) -> Result<(), CredentialError> {
    for t in injection_templates(i)? {
        template::placeholders(t)?;
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
    if secret.type_ != auth.secret_type {
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

/// Renders an auth type's injection with a Secret's values and the Connector's parameters.
pub fn render(
    auth: &AuthType,
    secret: &SecretData,
    params: &BTreeMap<String, String>,
) -> Result<Credential, CredentialError> {
    let inj = effective_injection(auth);
    check_injection(&inj)?;
    let expand = |t: &str| -> Result<String, CredentialError> {
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
    };
    let sensitive = |name: &str, v: String| -> Result<HeaderValue, CredentialError> {
        let mut hv =
            HeaderValue::try_from(v).map_err(|_| CredentialError::HeaderValue(name.to_owned()))?;
        hv.set_sensitive(true);
        Ok(hv)
    };
    if let Some(b) = &inj.basic {
        let user = SecretString::from(expand(&b.username)?);
        let pass = SecretString::from(expand(&b.password)?);
        let joined =
            SecretString::from(format!("{}:{}", user.expose_secret(), pass.expose_secret()));
        let encoded = base64::engine::general_purpose::STANDARD.encode(joined.expose_secret());
        return Ok(Credential::Header {
            name: http::header::AUTHORIZATION,
            value: sensitive("Authorization", format!("Basic {encoded}"))?,
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
        let encoded = percent_encoding::utf8_percent_encode(
            raw.expose_secret(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        return Ok(Credential::Query {
            name: q.name.clone(),
            value: SecretString::from(encoded),
        });
    }
    Err(CredentialError::InjectionShape(0))
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
