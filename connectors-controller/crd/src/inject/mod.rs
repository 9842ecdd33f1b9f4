//! The one credential injector: what the proxy, the controller's probes and the API relay put on
//! a request to a Connector's tool, and how they answer the tool's reply.
//!
//! An [`Injector`] is made from a Connector's checked spec and its rendered injection rule:
//! - [`Injector::Static`]: a header or query parameter, the same on every request;
//! - [`Injector::RegistryToken`]: the OCI registry token flow ([`registry`]): a token fetched
//!   from the registry's realm and cached ([`TokenCache`]), fetched again on a `401`;
//! - [`Injector::ClientCertificate`]: a client certificate for the TLS handshake (the caller
//!   picks an upstream connection presenting it; the request itself carries nothing).
//!
//! Nothing here does I/O of its own: a round trip (to a realm, or to ask a registry what it
//! wants) goes through the caller's [`Transport`], so the agent uses its pooled upstream
//! clients and the controller its probe client, with the same rules. A request goes:
//!
//! ```text
//! let mut attempt = Attempt::new(body_can_be_sent_again);
//! loop {
//!     let path_and_query = injector.prepare(outgoing, &mut attempt, &exchange).await?;
//!     let response = send(...);
//!     match injector.on_response(&mut attempt, status, &headers, &exchange).await? {
//!         Next::Done => break,       // the response goes back
//!         Next::Retry => continue,   // send the same request again (the body was kept)
//!     }
//! }
//! ```

pub mod challenge;
mod registry;
pub mod scope;
mod tokens;

use std::future::Future;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use secrecy::ExposeSecret as _;

use crate::address::Scheme;
use crate::connector::ConnectorId;
use crate::credentials::{ClientIdentity, Credential, Rendered};
use crate::path::RequestPath;
use crate::validation::CheckedConnector;

pub use registry::RegistryToken;
pub use tokens::TokenCache;

/// The largest answer body a [`Transport`] needs to return (a token's JSON is far smaller).
pub const MAX_ANSWER: usize = 64 * 1024;

/// Requests sent at most for one request of a workload (the first and two retries).
const MAX_TRIES: u8 = 3;

/// A round trip the injector needs: `GET` a URL, with an `Authorization` value or none.
/// Implementations bound the time (connect, TLS, answer) and read at most [`MAX_ANSWER`]
/// bytes of the body; an error is a sentence saying what failed (never a credential).
pub trait Transport: Sync {
    fn get(
        &self,
        uri: &Uri,
        authorization: Option<&HeaderValue>,
    ) -> impl Future<Output = Result<Answer, String>> + Send;
}

/// What a [`Transport`] got back.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Where an injector's round trips go and what it keeps between requests.
pub struct Exchange<'a, T> {
    pub transport: &'a T,
    pub tokens: &'a TokenCache,
}

/// A request on its way to the tool, as the injector sees it.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub scheme: Scheme,
    /// Normalized host (lowercase, no brackets).
    pub host: &'a str,
    pub port: u16,
    /// The normalized path that was matched, and is sent.
    pub path: &'a RequestPath,
    /// The query as the workload sent it.
    pub query: Option<&'a str>,
    pub headers: &'a mut HeaderMap,
}

/// What to do with the tool's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Pass it back.
    Done,
    /// Send the request again ([`Injector::prepare`] first): it now gets what the tool asked for.
    Retry,
}

/// One request's passage through the injector: what was sent, and what a retry needs.
#[derive(Debug)]
pub struct Attempt {
    replayable: bool,
    tries: u8,
    sent: Sent,
    /// The injector applies to this request (a registry request outside the registry API
    /// gets nothing).
    applies: bool,
    /// Scopes a challenge asked for, for the next try.
    extra_scopes: Vec<String>,
}

#[derive(Clone, Debug)]
enum Sent {
    Nothing,
    /// A static credential, a login, or a client certificate.
    Credential,
    Token {
        key: tokens::TokenKey,
        value: HeaderValue,
        /// Fetched moments ago (not an old cached one).
        fresh: bool,
        /// The realm, as shown in messages.
        realm: String,
    },
}

impl Attempt {
    /// A new request; `replayable` when its body is held whole (or it has none), so it can be
    /// sent again after a challenge.
    pub fn new(replayable: bool) -> Self {
        Self {
            replayable,
            tries: 1,
            sent: Sent::Nothing,
            applies: true,
            extra_scopes: Vec::new(),
        }
    }

    /// Whether credentials went with the last try.
    pub fn carried_credentials(&self) -> bool {
        !matches!(self.sent, Sent::Nothing)
    }

    /// Another try when the body can be sent again (and tries are left); else `why`.
    fn retry(&mut self, why: InjectError) -> Result<Next, InjectError> {
        if !self.replayable {
            return Err(why);
        }
        if self.tries >= MAX_TRIES {
            return Err(InjectError::TooManyChallenges);
        }
        self.tries += 1;
        Ok(Next::Retry)
    }
}

/// Why a request could not get (or was refused) the Connector's credentials. Messages say what
/// failed and what to check; they never hold a credential, and the caller adds the Connector.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the tool refused the credentials ({}); check the Connector's Secret", crate::probe::status_line(*.status))]
    CredentialsRefused { status: StatusCode },
    #[error("the tool refused the client certificate ({}); check the certificate and key in the Connector's Secret and that the tool trusts its issuer", crate::probe::status_line(*.status))]
    ClientCertificateRefused { status: StatusCode },
    #[error(
        "the registry sends its clients to the token service {realm}, which is not under the Connector's address nor any of its addressExtensions; nothing was sent there (if it is the registry's own, add it to spec.addressExtensions)"
    )]
    RealmNotAllowed { realm: String },
    #[error("the registry's token service {realm} refused {} ({}{}){}", if *.anonymous { "an anonymous token" } else { "the credentials" }, crate::probe::status_line(*.status), if .answer.is_empty() { String::new() } else { format!(": {}", .answer) }, if *.anonymous { "; give the Connector a Secret" } else { "; check the Connector's Secret" })]
    RealmRefused {
        realm: String,
        status: StatusCode,
        answer: String,
        anonymous: bool,
    },
    #[error("cannot get a token from the registry's token service {realm}: {cause}")]
    RealmFailed { realm: String, cause: String },
    #[error(
        "the registry's token service {realm} did not grant {scopes} to the Connector's credentials; give its account that access"
    )]
    ScopeNotGranted { realm: String, scopes: String },
    #[error("the registry refused a token just issued by {realm}{}", if .answer.is_empty() { String::new() } else { format!(" ({})", .answer) })]
    TokenRefused { realm: String, answer: String },
    #[error(
        "the registry asked for {needed} only once the request body was on its way, and the body is streamed, never kept to be sent twice: send the request again (it now gets it before it is sent)"
    )]
    NotReplayable { needed: String },
    #[error("the registry kept asking for credentials after they were sent")]
    TooManyChallenges,
    #[error("cannot ask the registry what it wants: {cause}")]
    Discovery { cause: String },
}

/// What a Connector puts on requests.
#[derive(Clone, Debug)]
pub enum Injector {
    Static(Credential),
    RegistryToken(Arc<RegistryToken>),
    ClientCertificate(Arc<ClientIdentity>),
}

impl Injector {
    /// The injector of a Connector (`id`, checked against its class) and its rendered rule.
    pub fn new(id: &ConnectorId, checked: &CheckedConnector, rendered: Rendered) -> Self {
        match rendered {
            Rendered::Static(c) => Injector::Static(c),
            Rendered::RegistryToken(login) => {
                Injector::RegistryToken(Arc::new(RegistryToken::new(
                    id,
                    login,
                    checked.address.clone(),
                    checked.addresses().cloned().collect(),
                )))
            }
            Rendered::ClientCertificate(identity) => {
                Injector::ClientCertificate(Arc::new(identity))
            }
        }
    }

    /// The client certificate to present upstream, if this injector uses one.
    pub fn client_identity(&self) -> Option<&ClientIdentity> {
        match self {
            Injector::ClientCertificate(i) => Some(i),
            _ => None,
        }
    }

    /// The static credential, if this injector is one.
    pub fn static_credential(&self) -> Option<&Credential> {
        match self {
            Injector::Static(c) => Some(c),
            _ => None,
        }
    }

    /// Puts the credentials on the request (replacing what the client sent); returns the path
    /// and query to send. A registry token may be fetched (or taken from the cache) here.
    pub async fn prepare<T: Transport>(
        &self,
        mut out: Outgoing<'_>,
        attempt: &mut Attempt,
        ex: &Exchange<'_, T>,
    ) -> Result<String, InjectError> {
        let path_and_query = match out.query {
            Some(q) => format!("{}?{q}", out.path),
            None => out.path.to_string(),
        };
        match self {
            Injector::Static(c) => {
                attempt.sent = Sent::Credential;
                Ok(c.apply(out.headers, &path_and_query).into_owned())
            }
            Injector::ClientCertificate(_) => {
                // The certificate speaks for the workload; a placeholder token must not.
                out.headers.remove(AUTHORIZATION);
                attempt.sent = Sent::Credential;
                Ok(path_and_query)
            }
            Injector::RegistryToken(r) => {
                r.prepare(&mut out, attempt, ex).await?;
                Ok(path_and_query)
            }
        }
    }

    /// Reads the tool's answer to a try: pass it back, send again, or refuse.
    pub async fn on_response<T: Transport>(
        &self,
        attempt: &mut Attempt,
        status: StatusCode,
        headers: &HeaderMap,
        ex: &Exchange<'_, T>,
    ) -> Result<Next, InjectError> {
        match self {
            Injector::Static(_) if status == StatusCode::UNAUTHORIZED => {
                Err(InjectError::CredentialsRefused { status })
            }
            Injector::ClientCertificate(_) if status == StatusCode::UNAUTHORIZED => {
                Err(InjectError::ClientCertificateRefused { status })
            }
            Injector::Static(_) | Injector::ClientCertificate(_) => Ok(Next::Done),
            Injector::RegistryToken(r) => r.on_response(attempt, status, headers, ex).await,
        }
    }

    /// Keeps the credentials from going back to the workload in the response's headers (see
    /// [`Credential::scrub_response`]); a token sent is dropped from any header holding it.
    /// Returns how many headers were changed or dropped.
    pub fn scrub_response(&self, attempt: &Attempt, headers: &mut HeaderMap) -> usize {
        match (self, &attempt.sent) {
            (Injector::Static(c), _) => c.scrub_response(headers),
            (_, Sent::Token { value, .. }) => {
                let token = String::from_utf8_lossy(value.as_bytes());
                let token =
                    secrecy::SecretString::from(token.trim_start_matches("Bearer ").to_owned());
                drop_headers_holding(headers, token.expose_secret().as_bytes())
            }
            _ => 0,
        }
    }
}

/// Drops every header whose value holds `needle`; returns how many.
fn drop_headers_holding(headers: &mut HeaderMap, needle: &[u8]) -> usize {
    if needle.len() < 8 {
        return 0;
    }
    let leaking: Vec<_> = headers
        .iter()
        .filter(|(_, v)| v.as_bytes().windows(needle.len()).any(|w| w == needle))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &leaking {
        headers.remove(k);
    }
    leaking.len()
}

#[cfg(test)]
mod tests;
