//! `WWW-Authenticate` challenges (RFC 9110 11.6.1), as registries send them:
//! `Bearer realm="https://auth.corp/token",service="registry.corp",scope="repository:team/app:pull"`.

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;

/// One challenge: its scheme (lowercase) and parameters (names lowercase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a registry asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryChallenge {
    /// `Basic`: the login itself.
    Basic,
    /// `Bearer`: a token from `realm` for `service` and `scopes`; `error` as the registry gave
    /// it (`insufficient_scope`, `invalid_token`).
    Bearer {
        realm: String,
        service: String,
        scopes: Vec<String>,
        error: Option<String>,
    },
}

/// The registry challenge of a response: a `Bearer` one with a realm first, else `Basic`.
pub fn registry_challenge(headers: &HeaderMap) -> Option<RegistryChallenge> {
    let all: Vec<Challenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse)
        .collect();
    if let Some(b) = all
        .iter()
        .find(|c| c.scheme == "bearer" && c.param("realm").is_some_and(|r| !r.is_empty()))
    {
        let scopes = b
            .params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' '))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        return Some(RegistryChallenge::Bearer {
            realm: b.param("realm").unwrap_or_default().to_owned(),
            service: b.param("service").unwrap_or_default().to_owned(),
            scopes,
            error: b.param("error").map(str::to_owned),
        });
    }
    all.iter()
        .any(|c| c.scheme == "basic")
        .then_some(RegistryChallenge::Basic)
}

/// Parses one header value into its challenges. Malformed parts end the parse; what was read
/// before them is kept.
pub fn parse(value: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    loop {
        p.skip(b", \t");
        let Some(token) = p.token() else { break };
        p.skip(b" \t");
        if p.peek() == Some(b'=') {
            // A parameter of the current challenge.
            p.i += 1;
            p.skip(b" \t");
            let value = if p.peek() == Some(b'"') {
                match p.quoted() {
                    Some(v) => v,
                    None => break,
                }
            } else {
                p.token().unwrap_or_default()
            };
            match out.last_mut() {
                Some(c) => c.params.push((token.to_ascii_lowercase(), value)),
                None => break,
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, set: &[u8]) {
        while self.peek().is_some_and(|c| set.contains(&c)) {
            self.i += 1;
        }
    }

    /// An RFC 9110 token (token68 characters included, for `Basic abc==`).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c))
        {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_challenges_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.test/token",service="registry.test",scope="repository:team/app:pull,push repository:x:pull",error="insufficient_scope""#,
            ),
        );
        assert_eq!(
            registry_challenge(&h),
            Some(RegistryChallenge::Bearer {
                realm: "https://auth.test/token".into(),
                service: "registry.test".into(),
                scopes: vec![
                    "repository:team/app:pull,push".into(),
                    "repository:x:pull".into()
                ],
                error: Some("insufficient_scope".into()),
            })
        );
    }

    #[test]
    fn several_challenges_and_basic() {
        let c = parse(r#"Basic realm="reg", charset="UTF-8", Bearer realm="h\"x""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("charset"), Some("UTF-8"));
        assert_eq!(c[1].param("realm"), Some("h\"x"));
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="Registry Realm""#),
        );
        assert_eq!(registry_challenge(&h), Some(RegistryChallenge::Basic));
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Negotiate"));
        assert_eq!(registry_challenge(&h), None);
    }

    #[test]
    fn malformed_values_do_not_panic() {
        for v in [
            "",
            "=",
            "Bearer realm=\"unterminated",
            ",,,",
            "Bearer =x",
            "a=b",
        ] {
            let _ = parse(v);
        }
    }
}
