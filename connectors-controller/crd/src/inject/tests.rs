//! The injector's flows against a scripted transport (the end-to-end tests run real registries).

use std::sync::Mutex;

use futures_util::FutureExt as _;
use http::header::WWW_AUTHENTICATE;

use super::*;
use crate::address::ToolAddress;

/// Answers GETs from a script and records them (URL, whether an Authorization went).
struct Scripted {
    answers: Mutex<Vec<Answer>>,
    calls: Mutex<Vec<(String, Option<String>)>>,
}

impl Scripted {
    fn new(answers: Vec<Answer>) -> Self {
        Self {
            answers: Mutex::new(answers),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn calls(&self) -> Vec<(String, Option<String>)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Transport for Scripted {
    fn get(
        &self,
        uri: &Uri,
        authorization: Option<&HeaderValue>,
    ) -> impl Future<Output = Result<Answer, String>> + Send {
        self.calls.lock().unwrap().push((
            uri.to_string(),
            authorization.map(|a| a.to_str().unwrap().to_owned()),
        ));
        let next = {
            let mut a = self.answers.lock().unwrap();
            if a.is_empty() {
                None
            } else {
                Some(a.remove(0))
            }
        };
        async move { next.ok_or_else(|| "no answer scripted".to_owned()) }
    }
}

fn answer(status: u16, challenge: Option<&str>, body: &str) -> Answer {
    let mut headers = HeaderMap::new();
    if let Some(c) = challenge {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_str(c).unwrap());
    }
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: body.as_bytes().to_vec(),
    }
}

fn token(t: &str) -> Answer {
    answer(200, None, &format!(r#"{{"token":"{t}","expires_in":300}}"#))
}

const BEARER: &str = r#"Bearer realm="https://auth.test/token",service="registry.test""#;
const LOGIN: &str = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret

fn registry(login: Option<&'static str>, extra: &[&str]) -> Injector {
    let main = ToolAddress::parse("https://registry.test").unwrap();
    let mut addresses = vec![main.clone()];
    addresses.extend(extra.iter().map(|a| ToolAddress::parse(a).unwrap()));
    Injector::RegistryToken(Arc::new(RegistryToken::new(
        &ConnectorId::new("ns", "reg"),
        login.map(HeaderValue::from_static),
        main,
        addresses,
    )))
}

/// What a try sends: its Authorization.
fn prepare(
    inj: &Injector,
    method: Method,
    path: &str,
    attempt: &mut Attempt,
    ex: &Exchange<'_, Scripted>,
) -> Result<Option<String>, InjectError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer from-the-client"),
    );
    let (p, q) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let path = RequestPath::parse(p).unwrap();
    inj.prepare(
        Outgoing {
            method: &method,
            scheme: Scheme::Https,
            host: "registry.test",
            port: 443,
            path: &path,
            query: q,
            headers: &mut headers,
        },
        attempt,
        ex,
    )
    .now_or_never()
    .expect("ready")?;
    Ok(headers
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned()))
}

fn respond(
    inj: &Injector,
    attempt: &mut Attempt,
    a: &Answer,
    ex: &Exchange<'_, Scripted>,
) -> Result<Next, InjectError> {
    inj.on_response(attempt, a.status, &a.headers, ex)
        .now_or_never()
        .expect("ready")
}

#[test]
fn a_challenge_is_answered_with_a_token_and_later_requests_get_theirs_first() {
    let realm = Scripted::new(vec![token("t-ping"), token("t-push")]);
    let tokens = TokenCache::new();
    let ex = Exchange {
        transport: &realm,
        tokens: &tokens,
    };
    let inj = registry(Some(LOGIN), &["https://auth.test"]);

    // The ping: sent bare (the client's token removed), challenged, sent again with a token.
    let mut a = Attempt::new(true);
    assert_eq!(
        prepare(&inj, Method::GET, "/v2/", &mut a, &ex).unwrap(),
        None
    );
    assert_eq!(
        respond(&inj, &mut a, &answer(401, Some(BEARER), ""), &ex).unwrap(),
        Next::Retry
    );
    assert_eq!(
        prepare(&inj, Method::GET, "/v2/", &mut a, &ex)
            .unwrap()
            .as_deref(),
        Some("Bearer t-ping")
    );
    assert_eq!(
        respond(&inj, &mut a, &answer(200, None, ""), &ex).unwrap(),
        Next::Done
    );

    // Uploads whose bodies cannot be replayed get their token before they are sent, once.
    for _ in 0..3 {
        let mut a = Attempt::new(false);
        let sent = prepare(
            &inj,
            Method::PATCH,
            "/v2/team/app/blobs/uploads/0a1b?_state=x",
            &mut a,
            &ex,
        )
        .unwrap();
        assert_eq!(sent.as_deref(), Some("Bearer t-push"));
    }
    let calls = realm.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[0],
        (
            "https://auth.test:443/token?service=registry.test".to_owned(),
            Some(LOGIN.to_owned())
        )
    );
    assert_eq!(
        calls[1].0,
        "https://auth.test:443/token?service=registry.test&scope=repository%3Ateam%2Fapp%3Apull%2Cpush"
    );
}

#[test]
fn an_unknown_registry_is_asked_before_a_streamed_body_goes() {
    let t = Scripted::new(vec![answer(401, Some(BEARER), ""), token("t1")]);
    let tokens = TokenCache::new();
    let ex = Exchange {
        transport: &t,
        tokens: &tokens,
    };
    let inj = registry(Some(LOGIN), &["https://auth.test"]);
    let mut a = Attempt::new(false);
    let sent = prepare(
        &inj,
        Method::PUT,
        "/v2/app/blobs/uploads/u1?digest=sha256:00",
        &mut a,
        &ex,
    )
    .unwrap();
    assert_eq!(sent.as_deref(), Some("Bearer t1"));
    let calls = t.calls();
    assert_eq!(calls[0], ("https://registry.test:443/v2/".to_owned(), None));
    // Not replayable, challenged anyway: refused with what to do, never sent twice.
    let e = respond(&inj, &mut a, &answer(401, Some(BEARER), ""), &ex).unwrap_err();
    assert!(!matches!(e, InjectError::NotReplayable { .. }), "{e}");
}

#[test]
fn a_realm_elsewhere_never_sees_the_login() {
    let t = Scripted::new(vec![]);
    let tokens = TokenCache::new();
    let ex = Exchange {
        transport: &t,
        tokens: &tokens,
    };
    let inj = registry(Some(LOGIN), &[]);
    let mut a = Attempt::new(true);
    prepare(&inj, Method::GET, "/v2/", &mut a, &ex).unwrap();
    let r = respond(&inj, &mut a, &answer(401, Some(BEARER), ""), &ex).unwrap();
    assert_eq!(r, Next::Retry);
    let e = prepare(&inj, Method::GET, "/v2/", &mut a, &ex).unwrap_err();
    assert!(matches!(e, InjectError::RealmNotAllowed { .. }), "{e}");
    assert!(e.to_string().contains("https://auth.test/token"), "{e}");
    assert!(t.calls().is_empty(), "{:?}", t.calls());
}

#[test]
fn a_refused_login_and_an_ungranted_scope_are_named() {
    let t = Scripted::new(vec![answer(
        401,
        None,
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication failed for alice"}]}"#,
    )]);
    let tokens = TokenCache::new();
    let ex = Exchange {
        transport: &t,
        tokens: &tokens,
    };
    let inj = registry(Some(LOGIN), &["https://auth.test"]);
    let mut a = Attempt::new(true);
    prepare(&inj, Method::GET, "/v2/", &mut a, &ex).unwrap();
    respond(&inj, &mut a, &answer(401, Some(BEARER), ""), &ex).unwrap();
    let e = prepare(&inj, Method::GET, "/v2/", &mut a, &ex).unwrap_err();
    assert!(matches!(e, InjectError::RealmRefused { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("authentication failed for alice"), "{text}");
    assert!(text.contains("HTTP 401"), "{text}");

    let t = Scripted::new(vec![token("t-pull-only")]);
    let ex = Exchange {
        transport: &t,
        tokens: &tokens,
    };
    let mut a = Attempt::new(true);
    let sent = prepare(&inj, Method::PUT, "/v2/app/manifests/v1", &mut a, &ex).unwrap();
    assert_eq!(sent.as_deref(), Some("Bearer t-pull-only"));
    let challenge = r#"Bearer realm="https://auth.test/token",service="registry.test",scope="repository:app:pull,push",error="insufficient_scope""#;
    let e = respond(&inj, &mut a, &answer(401, Some(challenge), ""), &ex).unwrap_err();
    assert!(matches!(e, InjectError::ScopeNotGranted { .. }), "{e}");
    assert!(e.to_string().contains("repository:app:pull,push"), "{e}");
}

#[test]
fn a_registry_asking_for_basic_gets_the_login() {
    let t = Scripted::new(vec![]);
    let tokens = TokenCache::new();
    let ex = Exchange {
        transport: &t,
        tokens: &tokens,
    };
    let inj = registry(Some(LOGIN), &[]);
    let mut a = Attempt::new(true);
    prepare(&inj, Method::GET, "/v2/", &mut a, &ex).unwrap();
    let basic = answer(401, Some(r#"Basic realm="Registry""#), "");
    assert_eq!(respond(&inj, &mut a, &basic, &ex).unwrap(), Next::Retry);
    assert_eq!(
        prepare(&inj, Method::GET, "/v2/", &mut a, &ex)
            .unwrap()
            .as_deref(),
        Some(LOGIN)
    );
    assert!(matches!(
        respond(&inj, &mut a, &basic, &ex).unwrap_err(),
        InjectError::CredentialsRefused { .. }
    ));
    // Later requests, streamed ones too, get it up front.
    let mut a = Attempt::new(false);
    assert_eq!(
        prepare(&inj, Method::PATCH, "/v2/app/blobs/uploads/x", &mut a, &ex)
            .unwrap()
            .as_deref(),
        Some(LOGIN)
    );
    // Anything but the registry API gets nothing.
    let mut a = Attempt::new(true);
    assert_eq!(
        prepare(&inj, Method::GET, "/other", &mut a, &ex).unwrap(),
        None
    );
    assert!(t.calls().is_empty());
}

#[test]
fn static_credentials_and_client_certificates() {
    let t = Scripted::new(vec![]);
    let tokens = TokenCache::new();
    let ex = Exchange {
        transport: &t,
        tokens: &tokens,
    };
    let bearer = Injector::Static(Credential::Header {
        name: AUTHORIZATION,
        value: HeaderValue::from_static("Bearer real"),
    });
    let mut a = Attempt::new(true);
    assert_eq!(
        prepare(&bearer, Method::GET, "/api", &mut a, &ex)
            .unwrap()
            .as_deref(),
        Some("Bearer real"),
        "the client's placeholder is replaced"
    );
    assert!(matches!(
        respond(&bearer, &mut a, &answer(401, None, ""), &ex).unwrap_err(),
        InjectError::CredentialsRefused { .. }
    ));
    let cert = Injector::ClientCertificate(Arc::new(ClientIdentity {
        certificate_pem: String::new(),
        key_pem: secrecy::SecretString::from(String::new()),
    }));
    let mut a = Attempt::new(true);
    assert_eq!(
        prepare(&cert, Method::GET, "/api", &mut a, &ex).unwrap(),
        None
    );
    assert!(cert.client_identity().is_some());
    assert!(matches!(
        respond(&cert, &mut a, &answer(401, None, ""), &ex).unwrap_err(),
        InjectError::ClientCertificateRefused { .. }
    ));
}
