//! A registry token service (distribution's token specification), for a real `docker-registry`
//! in token mode: `GET /token?service=...&scope=...` with Basic credentials (or none) answers a
//! JWT signed with ES256 whose `kid` is the libtrust fingerprint of its key, which the registry
//! finds in its `rootcertbundle` ([`TokenIssuer::root_cert`]). Access is granted per user and
//! action; every request is recorded, so tests can count tokens and see who asked.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::pki::TestCa;

/// The `iss` of every token.
pub const ISSUER: &str = "connectors-test-issuer";

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Every action on every repository.
    All,
    /// `pull` only.
    PullOnly,
}

/// One request to the token service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The Basic user, if credentials came (`None`: anonymous).
    pub user: Option<String>,
    /// Whether any `Authorization` header came at all.
    pub authorization: bool,
    pub service: String,
    /// The scopes asked for, as sent (sorted).
    pub scopes: Vec<String>,
    /// 200, or 401 for bad credentials.
    pub status: u16,
    /// The token issued (to check that nobody shows it).
    pub token: Option<String>,
}

pub struct IssuerOptions<'a> {
    /// Listen address; default 127.0.0.1 on a free port.
    pub listen: Option<SocketAddr>,
    /// TLS with a certificate from this CA for these names.
    pub tls: (&'a TestCa, Vec<&'a str>),
    /// The registry's `service` name (the tokens' audience).
    pub service: &'a str,
    pub users: Vec<(&'a str, &'a str, Grant)>,
    /// What anonymous clients get (none: no access, still a token).
    pub anonymous: Option<Grant>,
    /// `expires_in` of the tokens, in seconds.
    pub expires_in: u64,
}

pub struct TokenIssuer {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<Issued>>>,
    stop: Arc<AtomicBool>,
}

struct State {
    key: EcdsaKeyPair,
    kid: String,
    service: String,
    users: BTreeMap<String, (String, Grant)>,
    anonymous: Option<Grant>,
    expires_in: u64,
    log: Arc<Mutex<Vec<Issued>>>,
}

impl TokenIssuer {
    pub fn start(opts: IssuerOptions<'_>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("token-issuer")
            .tempdir()
            .expect("tempdir");
        // The signing key and a certificate of it: the registry's rootcertbundle.
        let signing = rcgen::KeyPair::generate().expect("signing key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "connectors test token signer");
        let cert = params.self_signed(&signing).expect("signing certificate");
        std::fs::write(dir.path().join("signer.crt"), cert.pem()).expect("write signer.crt");
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &signing.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("ring key");
        let kid = libtrust_key_id(&rcgen::PublicKeyData::subject_public_key_info(&signing));

        let (cert_pem, key_pem) = opts.tls.0.server_cert(&opts.tls.1);
        let tls = server_config(&cert_pem, &key_pem);
        let listen = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(listen)
            .unwrap_or_else(|e| panic!("token issuer cannot listen on {listen}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            key,
            kid,
            service: opts.service.to_owned(),
            users: opts
                .users
                .iter()
                .map(|(u, p, g)| ((*u).to_owned(), ((*p).to_owned(), *g)))
                .collect(),
            anonymous: opts.anonymous,
            expires_in: opts.expires_in,
            log: log.clone(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (state, tls) = (state.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &tls, &state);
                });
            }
        });
        Self {
            addr,
            dir,
            log,
            stop,
        }
    }

    /// The certificate of the signing key, for the registry's `rootcertbundle`.
    pub fn root_cert(&self) -> PathBuf {
        self.dir.path().join("signer.crt")
    }

    /// Every request so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every token issued so far.
    pub fn tokens(&self) -> Vec<String> {
        self.issued().into_iter().filter_map(|i| i.token).collect()
    }

    /// How many tokens were issued (200s) for exactly these scopes.
    pub fn count(&self, scopes: &[&str]) -> usize {
        let mut want: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        self.issued()
            .iter()
            .filter(|i| i.status == 200 && i.scopes == want)
            .count()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn server_config(cert_pem: &str, key_pem: &str) -> Arc<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
    Arc::new(config)
}

/// libtrust's key ID: SHA-256 of the DER public key, truncated to 240 bits, base32 in 12
/// groups of 4 joined by `:` (what distribution matches a JWT's `kid` against).
fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let b32 = base32(&digest.as_ref()[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4648 base32, no padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn serve(conn: TcpStream, tls: &Arc<ServerConfig>, state: &State) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let session = rustls::ServerConnection::new(tls.clone()).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(session, conn);
    let mut reader = BufReader::new(&mut stream);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
        if head.len() > 100 {
            return Ok(());
        }
    }
    let Some(request_line) = head.first() else {
        return Ok(());
    };
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let authorization = head.iter().find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.eq_ignore_ascii_case("authorization")
            .then(|| v.trim().to_owned())
    });
    // Drain a body, if a client sent one.
    if let Some(len) = head.iter().find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<u64>().ok())?
    }) {
        let _ = std::io::copy(&mut reader.by_ref().take(len), &mut std::io::sink());
    }
    let (status, body) = answer(state, target, authorization.as_deref());
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        response.push_str("WWW-Authenticate: Basic realm=\"token\"\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    stream.conn.send_close_notify();
    let _ = stream.flush();
    Ok(())
}

/// The answer to one token request: (status, JSON body).
fn answer(state: &State, target: &str, authorization: Option<&str>) -> (u16, String) {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut service = String::new();
    let mut scopes = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v);
        match k {
            "service" => service = v,
            "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
            _ => {}
        }
    }
    scopes.sort();
    let login = authorization
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let mut record = Issued {
        user: login.as_ref().map(|(u, _)| u.clone()),
        authorization: authorization.is_some(),
        service: service.clone(),
        scopes: scopes.clone(),
        status: 200,
        token: None,
    };
    let grant = match &login {
        Some((user, password)) => match state.users.get(user) {
            Some((p, g)) if p == password => Some(*g),
            _ => {
                record.status = 401;
                if let Ok(mut l) = state.log.lock() {
                    l.push(record);
                }
                return (
                    401,
                    format!(
                        r#"{{"errors":[{{"code":"UNAUTHORIZED","message":"authentication failed for user {user}"}}]}}"#
                    ),
                );
            }
        },
        None => state.anonymous,
    };
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let granted: Vec<&str> = actions
                .split(',')
                .filter(|a| match grant {
                    Some(Grant::All) => true,
                    Some(Grant::PullOnly) => *a == "pull",
                    None => false,
                })
                .collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": granted}))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": login.as_ref().map(|(u, _)| u.as_str()).unwrap_or(""),
        "aud": if service.is_empty() { state.service.clone() } else { service },
        "exp": now + state.expires_in,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("{now}-{}", random_hex()),
        "access": access,
    });
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": state.kid});
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let Ok(signature) = state
        .key
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
    else {
        return (500, r#"{"errors":[{"message":"cannot sign"}]}"#.to_owned());
    };
    let token = format!("{signing_input}.{}", b64url(signature.as_ref()));
    record.token = Some(token.clone());
    if let Ok(mut l) = state.log.lock() {
        l.push(record);
    }
    (
        200,
        serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": state.expires_in,
        })
        .to_string(),
    )
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&v[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn random_hex() -> String {
    let mut buf = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_and_key_ids() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        let id = libtrust_key_id(b"any key");
        assert_eq!(id.split(':').count(), 12);
        assert!(id.split(':').all(|g| g.len() == 4));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            decode("repository%3Ateam%2Fapp%3Apull%2Cpush"),
            "repository:team/app:pull,push"
        );
        assert_eq!(decode("a+b%2"), "a b%2");
    }
}
