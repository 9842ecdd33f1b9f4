//! The OCI registry token flow, invisible to the client (distribution's token specification).
//!
//! A registry in token mode answers `401` with `WWW-Authenticate: Bearer realm=...,
//! service=..., scope=...`. The injector then gets a token from the realm with the Connector's
//! login (Basic; anonymously without a Secret), caches it per (Connector and login, realm,
//! service, scopes) until shortly before it expires, and sends the request again with it. Once
//! a registry's challenge is known, later requests get their token before they are sent, the
//! scopes read from the path ([`super::scope`]), so a large upload is never sent twice. A realm
//! must lie under one of the Connector's addresses (the main one or an `addressExtensions`
//! value: scheme, host, port and path prefix, as the proxy matches requests); any other realm
//! is refused before anything is sent to it. A registry that asks for `Basic` gets the login.

use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use secrecy::{ExposeSecret as _, SecretString};

use super::challenge::{RegistryChallenge, registry_challenge};
use super::tokens::{Learned, TokenKey};
use super::{Attempt, Exchange, InjectError, Next, Outgoing, Sent, Transport, scope};
use crate::address::{ToolAddress, redact};
use crate::connector::ConnectorId;
use crate::path::{Coverage, RequestPath};

/// Longest a token is kept, whatever the realm says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The lifetime of a token whose answer gives none (the specification's default).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// How long before its expiry a token is no longer sent.
const MARGIN: Duration = Duration::from_secs(10);
/// Longest quote of a realm's or registry's answer in a message.
const MAX_QUOTE: usize = 200;

/// One Connector's registry login and where its tokens may come from.
pub struct RegistryToken {
    /// `Basic ...` for the realm (and for registries that ask for Basic); `None`: anonymous.
    login: Option<HeaderValue>,
    /// Strings that must never be quoted back: the login's parts.
    needles: Vec<SecretString>,
    /// The Connector and its login, for the token cache.
    fingerprint: u64,
    registry: ToolAddress,
    /// Every address of the Connector: a realm must lie under one.
    addresses: Vec<ToolAddress>,
}

impl std::fmt::Debug for RegistryToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryToken")
            .field("registry", &self.registry.to_string())
            .field("login", &self.login.as_ref().map(|_| "***"))
            .finish()
    }
}

impl RegistryToken {
    pub fn new(
        id: &ConnectorId,
        login: Option<HeaderValue>,
        registry: ToolAddress,
        addresses: Vec<ToolAddress>,
    ) -> Self {
        static SEED: OnceLock<std::hash::RandomState> = OnceLock::new();
        let mut h = SEED.get_or_init(std::hash::RandomState::new).build_hasher();
        id.namespace.hash(&mut h);
        id.name.hash(&mut h);
        login.as_ref().map(HeaderValue::as_bytes).hash(&mut h);
        registry.to_string().hash(&mut h);
        let mut needles = Vec::new();
        if let Some(v) = &login {
            let b64 = String::from_utf8_lossy(v.as_bytes())
                .trim_start_matches("Basic ")
                .to_owned();
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&b64) {
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                if let Some((_, pass)) = decoded.split_once(':') {
                    needles.push(SecretString::from(pass.to_owned()));
                }
                needles.push(SecretString::from(decoded));
            }
            needles.push(SecretString::from(b64));
        }
        needles.retain(|n| n.expose_secret().len() >= 4);
        Self {
            login,
            needles,
            fingerprint: h.finish(),
            registry,
            addresses,
        }
    }

    /// The request's path relative to the registry's root, when the request is for the
    /// registry API (`<address>/v2/...`) of this Connector's main address.
    fn api_path<'p>(&self, out: &'p Outgoing<'_>) -> Option<&'p str> {
        if out.scheme != self.registry.scheme
            || out.host != self.registry.host
            || out.port != self.registry.port
        {
            return None;
        }
        let rel = out
            .path
            .as_str()
            .strip_prefix(self.registry.path_prefix.as_str())?;
        (rel == "/v2" || rel.starts_with("/v2/")).then_some(rel)
    }

    pub(super) async fn prepare<T: Transport>(
        &self,
        out: &mut Outgoing<'_>,
        attempt: &mut Attempt,
        ex: &Exchange<'_, T>,
    ) -> Result<(), InjectError> {
        // Tokens the client got itself never pass; neither does its placeholder.
        out.headers.remove(AUTHORIZATION);
        attempt.sent = Sent::Nothing;
        let Some(rel) = self.api_path(out) else {
            attempt.applies = false;
            return Ok(());
        };
        attempt.applies = true;
        let mut learned = ex.tokens.learned(self.fingerprint);
        if learned.is_none() && !attempt.replayable {
            // The body cannot be sent twice: ask the registry what it wants first.
            learned = self.discover(ex).await?;
        }
        match learned {
            None => {}
            Some(Learned::Basic) => {
                if let Some(login) = &self.login {
                    out.headers.insert(AUTHORIZATION, login.clone());
                    attempt.sent = Sent::Credential;
                }
            }
            Some(Learned::Bearer { realm, service }) => {
                let mut scopes = scope::derive(out.method, rel, out.query);
                scopes.extend(attempt.extra_scopes.iter().cloned());
                scopes.sort();
                scopes.dedup();
                let (key, uri, shown) = self.token_request(&realm, &service, &scopes)?;
                let (token, fresh) = ex
                    .tokens
                    .get(key.clone(), || {
                        self.fetch(ex, uri, shown.clone(), &service, &scopes)
                    })
                    .await?;
                out.headers.insert(AUTHORIZATION, token.value.clone());
                attempt.sent = Sent::Token {
                    key,
                    value: token.value,
                    fresh,
                    realm: shown,
                };
            }
        }
        Ok(())
    }

    pub(super) async fn on_response<T: Transport>(
        &self,
        attempt: &mut Attempt,
        status: StatusCode,
        headers: &HeaderMap,
        ex: &Exchange<'_, T>,
    ) -> Result<Next, InjectError> {
        if status != StatusCode::UNAUTHORIZED || !attempt.applies {
            return Ok(Next::Done);
        }
        match registry_challenge(headers) {
            Some(RegistryChallenge::Basic) => {
                ex.tokens.learn(self.fingerprint, Learned::Basic);
                match attempt.sent {
                    Sent::Credential => Err(InjectError::CredentialsRefused { status }),
                    // Anonymous: the registry's own answer goes back.
                    _ if self.login.is_none() => Ok(Next::Done),
                    _ => attempt.retry(InjectError::NotReplayable {
                        needed: "the login (Basic)".into(),
                    }),
                }
            }
            Some(RegistryChallenge::Bearer {
                realm,
                service,
                scopes,
                error,
            }) => {
                ex.tokens.learn(
                    self.fingerprint,
                    Learned::Bearer {
                        realm: realm.clone(),
                        service: service.clone(),
                    },
                );
                let wanted = if scopes.is_empty() {
                    "access to the registry".to_owned()
                } else {
                    scopes.join(" ")
                };
                if let Sent::Token {
                    key,
                    value,
                    fresh,
                    realm: shown,
                } = &attempt.sent
                {
                    let asked_for_all = scopes.iter().all(|s| key.scopes.contains(s));
                    if *fresh && asked_for_all {
                        // A token just issued for what the registry wants, and turned down.
                        return Err(
                            if error.as_deref() == Some("insufficient_scope") || !scopes.is_empty()
                            {
                                InjectError::ScopeNotGranted {
                                    realm: shown.clone(),
                                    scopes: wanted,
                                }
                            } else {
                                InjectError::TokenRefused {
                                    realm: shown.clone(),
                                    answer: error.unwrap_or_default(),
                                }
                            },
                        );
                    }
                    ex.tokens.invalidate(key.clone(), value).await;
                }
                attempt.extra_scopes = scopes;
                attempt.retry(InjectError::NotReplayable { needed: wanted })
            }
            None => match attempt.sent {
                Sent::Nothing => Ok(Next::Done),
                _ => Err(InjectError::CredentialsRefused { status }),
            },
        }
    }

    /// Asks the registry (`GET <address>/v2/`, no credentials) what it wants.
    async fn discover<T: Transport>(
        &self,
        ex: &Exchange<'_, T>,
    ) -> Result<Option<Learned>, InjectError> {
        let url = format!(
            "{}://{}{}/v2/",
            self.registry.scheme,
            self.registry.authority(),
            self.registry.path_prefix
        );
        let uri = Uri::try_from(url.as_str()).map_err(|e| InjectError::Discovery {
            cause: format!("{url}: {e}"),
        })?;
        let answer =
            ex.transport
                .get(&uri, None)
                .await
                .map_err(|cause| InjectError::Discovery {
                    cause: format!("GET {url}: {cause}"),
                })?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        let learned = match registry_challenge(&answer.headers) {
            Some(RegistryChallenge::Basic) => Learned::Basic,
            Some(RegistryChallenge::Bearer { realm, service, .. }) => {
                Learned::Bearer { realm, service }
            }
            None => return Ok(None),
        };
        ex.tokens.learn(self.fingerprint, learned.clone());
        Ok(Some(learned))
    }

    /// The cache key, the URL to ask (the realm's path normalized, `service` and `scope`
    /// added) and the realm as shown in messages; or the refusal of a realm no address of the
    /// Connector covers.
    fn token_request(
        &self,
        realm: &str,
        service: &str,
        scopes: &[String],
    ) -> Result<(TokenKey, Uri, String), InjectError> {
        let shown = redact(realm);
        let not_allowed = || InjectError::RealmNotAllowed {
            realm: shown.clone(),
        };
        let url = url::Url::parse(realm).map_err(|_| not_allowed())?;
        let host = match url.host().ok_or_else(not_allowed)? {
            url::Host::Domain(d) => d.to_owned(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => format!("[{ip}]"),
        };
        let port = url.port_or_known_default().ok_or_else(not_allowed)?;
        // The realm's scheme, host and port as an address, normalized the way Connector
        // addresses are; then its path as the token service will resolve it.
        let base = ToolAddress::parse(&format!("{}://{host}:{port}", url.scheme()))
            .map_err(|_| not_allowed())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(not_allowed());
        }
        let path = RequestPath::parse(url.path()).map_err(|_| not_allowed())?;
        let covered = self.addresses.iter().any(|a| {
            a.scheme == base.scheme
                && a.host == base.host
                && a.port == base.port
                && a.coverage(&path) == Coverage::Inside
        });
        if !covered {
            return Err(not_allowed());
        }
        let mut query: Vec<String> = url
            .query()
            .filter(|q| !q.is_empty())
            .map(|q| vec![q.to_owned()])
            .unwrap_or_default();
        if !service.is_empty() {
            query.push(format!("service={}", encode(service)));
        }
        for s in scopes {
            query.push(format!("scope={}", encode(s)));
        }
        let mut target = format!("{}://{}{}", base.scheme, base.authority(), path);
        if !query.is_empty() {
            target.push('?');
            target.push_str(&query.join("&"));
        }
        let uri = Uri::try_from(target).map_err(|_| not_allowed())?;
        let key = TokenKey {
            login: self.fingerprint,
            realm: format!("{}://{}{}", base.scheme, base.authority(), path),
            service: service.to_owned(),
            scopes: scopes.to_vec(),
        };
        Ok((key, uri, shown))
    }

    /// Gets a token from the realm: its `Authorization` value and how long it may be sent.
    async fn fetch<T: Transport>(
        &self,
        ex: &Exchange<'_, T>,
        uri: Uri,
        realm: String,
        service: &str,
        scopes: &[String],
    ) -> Result<(HeaderValue, Duration), InjectError> {
        let answer = ex
            .transport
            .get(&uri, self.login.as_ref())
            .await
            .map_err(|cause| InjectError::RealmFailed {
                realm: realm.clone(),
                cause,
            })?;
        let quoted = || self.quote(&answer.body);
        match answer.status.as_u16() {
            200..=299 => {}
            401 | 403 => {
                return Err(InjectError::RealmRefused {
                    realm,
                    status: answer.status,
                    answer: quoted(),
                    anonymous: self.login.is_none(),
                });
            }
            _ => {
                return Err(InjectError::RealmFailed {
                    cause: format!(
                        "it answered {}{}",
                        crate::probe::status_line(answer.status),
                        match quoted() {
                            q if q.is_empty() => String::new(),
                            q => format!(": {q}"),
                        }
                    ),
                    realm,
                });
            }
        }
        let (token, life) =
            parse_answer(&answer.body).map_err(|cause| InjectError::RealmFailed {
                realm: realm.clone(),
                cause,
            })?;
        let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose_secret()))
            .map_err(|_| InjectError::RealmFailed {
                realm: realm.clone(),
                cause: "its token has characters a header cannot carry".into(),
            })?;
        value.set_sensitive(true);
        tracing::debug!(
            %realm,
            service,
            scopes = %scopes.join(" "),
            expires_in = life.as_secs(),
            anonymous = self.login.is_none(),
            "registry token fetched"
        );
        let margin = MARGIN.min(life / 2);
        Ok((value, life - margin))
    }

    /// An answer body fit for a message: printable, short, without the login.
    fn quote(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        // distribution's `{"errors":[{"code":...,"message":...}]}`: the messages say it best.
        let messages: Option<Vec<String>> = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let list = v.get("errors")?.as_array()?.clone();
                Some(
                    list.iter()
                        .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
                        .map(str::to_owned)
                        .collect(),
                )
            })
            .filter(|m: &Vec<String>| !m.is_empty());
        let mut text = match messages {
            Some(m) => m.join("; "),
            None => text.into_owned(),
        };
        for n in &self.needles {
            text = text.replace(n.expose_secret(), "***");
        }
        let clean: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let clean = clean.trim();
        match clean.char_indices().nth(MAX_QUOTE) {
            Some((i, _)) => format!("{}...", &clean[..i]),
            None => clean.to_owned(),
        }
    }
}

/// The token and its lifetime from a realm's JSON answer (`token` or `access_token`,
/// `expires_in` in seconds, 60 when absent).
fn parse_answer(body: &[u8]) -> Result<(SecretString, Duration), String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| "its answer is not the JSON of a token".to_owned())?;
    let token = ["token", "access_token"]
        .iter()
        .find_map(|k| v.get(k).and_then(|t| t.as_str()).filter(|t| !t.is_empty()))
        .ok_or_else(|| "its answer holds no token (no 'token' or 'access_token')".to_owned())?;
    let life = v
        .get("expires_in")
        .and_then(serde_json::Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 1.0)
        .map_or(DEFAULT_LIFETIME, Duration::from_secs_f64)
        .min(MAX_LIFETIME);
    Ok((SecretString::from(token.to_owned()), life))
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn encode(v: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        let (t, life) = parse_answer(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(t.expose_secret(), "abc");
        assert_eq!(life, Duration::from_secs(300));
        let (t, life) = parse_answer(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(t.expose_secret(), "xyz");
        assert_eq!(life, DEFAULT_LIFETIME);
        assert!(parse_answer(b"<html>").is_err());
        assert!(parse_answer(br#"{"token":""}"#).is_err());
    }

    fn injector(addresses: &[&str]) -> RegistryToken {
        let addresses: Vec<ToolAddress> = addresses
            .iter()
            .map(|a| ToolAddress::parse(a).unwrap())
            .collect();
        RegistryToken::new(
            &ConnectorId::new("ns", "reg"),
            Some(HeaderValue::from_static("Basic YWxpY2U6czNjcmV0LXB3")),
            addresses[0].clone(),
            addresses,
        )
    }

    #[test]
    fn realms_must_lie_under_an_address_of_the_connector() {
        let r = injector(&["https://registry.test", "https://auth.test:8443/auth"]);
        let scopes = vec!["repository:team/app:pull,push".to_owned()];
        let (key, uri, _) = r
            .token_request(
                "https://auth.test:8443/auth/./token?x=1",
                "registry.test",
                &scopes,
            )
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://auth.test:8443/auth/token?x=1&service=registry.test&scope=repository%3Ateam%2Fapp%3Apull%2Cpush"
        );
        assert_eq!(key.realm, "https://auth.test:8443/auth/token");
        r.token_request("https://REGISTRY.test:443/service/token", "s", &[])
            .unwrap();
        for bad in [
            "https://evil.test/token",
            "http://auth.test:8443/auth/token",
            "https://auth.test:8444/auth/token",
            "https://auth.test:8443/other/token",
            "https://auth.test:8443/auth/../other",
            "https://auth.test:8443/auth/..%2fother",
            "https://u:p@auth.test:8443/auth/token",
            "not a url",
            "/relative/token",
        ] {
            let e = r.token_request(bad, "s", &[]).unwrap_err();
            assert!(
                matches!(e, InjectError::RealmNotAllowed { .. }),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn quotes_never_hold_the_login() {
        let r = injector(&["https://registry.test"]);
        let q = r.quote(
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad password s3cret-pw for alice"}]}"#,
        );
        assert_eq!(q, "bad password *** for alice");
        let q = r.quote("x\r\n".repeat(300).as_bytes());
        assert!(q.len() <= MAX_QUOTE + 3 && !q.contains('\n'), "{q}");
    }
}
