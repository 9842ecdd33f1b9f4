//! Tool addresses: parsing a Connector's URL into what the proxy matches on, and the class rules.

use std::fmt;

use crate::class::AddressRules;
use crate::path::{self, Coverage, RequestPath};

/// `http` or `https`: the only schemes the proxy speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Scheme, host (lowercase, IPv6 without brackets) and port (the scheme's default when
/// absent) of an absolute `http` or `https` URI; `None` for anything else.
pub fn origin_of(uri: &http::Uri) -> Option<(Scheme, String, u16)> {
    let scheme = match uri.scheme_str()? {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(scheme.default_port());
    Some((scheme, host, port))
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed tool address: where requests go and which of them the Connector covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ToolAddress {
    pub scheme: Scheme,
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` for the whole host).
    pub path_prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("'{0}' is not a URL: {1}")]
    NotUrl(String, String),
    #[error("scheme '{0}' is not supported (use http or https)")]
    UnsupportedScheme(String),
    #[error("'{0}' has no host")]
    NoHost(String),
    #[error("'{0}' must not contain user info; credentials belong in the Secret")]
    UserInfo(String),
    #[error("'{0}' must not contain a query or fragment (credentials belong in the Secret)")]
    QueryOrFragment(String),
    #[error("'{0}' contains a control character (CR, LF, TAB...) at position {1}")]
    ControlCharacter(String, usize),
    #[error("'{0}': the path {1}")]
    Path(String, path::PathError),
    #[error("scheme '{scheme}' is not allowed by the class (allowed: {allowed})")]
    SchemeNotAllowed { scheme: String, allowed: String },
    #[error("host '{host}' does not match the class's host patterns ({patterns})")]
    HostNotAllowed { host: String, patterns: String },
}

impl ToolAddress {
    pub fn parse(address: &str) -> Result<Self, AddressError> {
        // The URL parser drops tabs and newlines silently; an address holding one is a mistake
        // (or an attempt to smuggle a header), never meant.
        if let Some(pos) = address.chars().position(char::is_control) {
            return Err(AddressError::ControlCharacter(
                redact(&address.escape_debug().to_string()),
                pos,
            ));
        }
        let url = url::Url::parse(address.trim())
            .map_err(|e| AddressError::NotUrl(redact(address), e.to_string()))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(AddressError::UnsupportedScheme(other.to_owned())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(AddressError::UserInfo(redact_userinfo(&url)));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(AddressError::QueryOrFragment(redact(address)));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(AddressError::NoHost(address.to_owned())),
        };
        if host.is_empty() {
            return Err(AddressError::NoHost(address.to_owned()));
        }
        let port = url.port().unwrap_or(scheme.default_port());
        let path_prefix = path::normalize_prefix(url.path())
            .map_err(|e| AddressError::Path(redact(address), e))?;
        Ok(Self {
            scheme,
            host,
            port,
            path_prefix,
        })
    }

    /// Checks the address against a class's rules.
    pub fn check_rules(&self, rules: &AddressRules) -> Result<(), AddressError> {
        if !rules.schemes.is_empty()
            && !rules
                .schemes
                .iter()
                .any(|s| s.eq_ignore_ascii_case(self.scheme.as_str()))
        {
            return Err(AddressError::SchemeNotAllowed {
                scheme: self.scheme.to_string(),
                allowed: rules.schemes.join(", "),
            });
        }
        if !rules.hosts.is_empty() && !rules.hosts.iter().any(|p| host_matches(p, &self.host)) {
            return Err(AddressError::HostNotAllowed {
                host: self.host.clone(),
                patterns: rules.hosts.join(", "),
            });
        }
        Ok(())
    }

    /// `host:port`, with brackets around an IPv6 literal.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// How this address's path prefix covers a request path, as the tool will resolve it.
    pub fn coverage(&self, path: &RequestPath) -> Coverage {
        path.coverage(&self.path_prefix)
    }

    /// Whether a request path (percent-encoded, no query) falls under this address's path
    /// prefix under every reading a server may apply.
    pub fn covers_path(&self, path: &str) -> bool {
        RequestPath::parse(path).is_ok_and(|p| self.coverage(&p) == Coverage::Inside)
    }
}

impl fmt::Display for ToolAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme,
            self.authority(),
            self.path_prefix
        )
    }
}

/// An address fit to show: user info and query values replaced by `***`, whether or not it
/// parses as a URL. Use it wherever a Connector's address is echoed (status, logs, messages).
pub fn redact(address: &str) -> String {
    let (before_fragment, fragment) = match address.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (address, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    // User info: between `scheme://` and the last `@` before the path.
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rfind('@') {
                Some(at) => format!("{scheme}://***@{}{path}", &authority[at + 1..]),
                None => base.to_owned(),
            }
        }
        None => match base.rfind('@') {
            Some(at) => format!("***@{}", &base[at + 1..]),
            None => base.to_owned(),
        },
    };
    if let Some(q) = query {
        let masked: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None if pair.is_empty() => String::new(),
                None => "***".to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&masked.join("&"));
    }
    if fragment.is_some() {
        out.push_str("#***");
    }
    out
}

fn redact_userinfo(url: &url::Url) -> String {
    let mut u = url.clone();
    // Both setters only fail for URLs that cannot have credentials, which this one has.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Matches a host against a pattern: exact (case-insensitive), or `*.suffix` for any host with
/// one or more labels before `.suffix`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_of_reads_scheme_host_and_port() {
        let o = |s: &str| origin_of(&s.parse::<http::Uri>().expect("uri"));
        assert_eq!(
            o("https://Git.Test/a"),
            Some((Scheme::Https, "git.test".into(), 443))
        );
        assert_eq!(
            o("http://[fd00::1]:8080/"),
            Some((Scheme::Http, "fd00::1".into(), 8080))
        );
        assert_eq!(o("ftp://git.test/"), None);
        assert_eq!(o("/relative"), None);
    }

    #[test]
    fn parses_https_with_default_port_and_prefix() {
        let a = ToolAddress::parse("https://Git.Example/team/").unwrap();
        assert_eq!(a.scheme, Scheme::Https);
        assert_eq!(a.host, "git.example");
        assert_eq!(a.port, 443);
        assert_eq!(a.path_prefix, "/team");
        assert_eq!(a.authority(), "git.example:443");
    }

    #[test]
    fn parses_ipv6_literal() {
        let a = ToolAddress::parse("http://[fd00::2]:8080").unwrap();
        assert_eq!(a.host, "fd00::2");
        assert_eq!(a.authority(), "[fd00::2]:8080");
        assert_eq!(a.path_prefix, "");
    }

    #[test]
    fn rejects_userinfo_without_echoing_password() {
        let err = ToolAddress::parse("https://bob:hunter2@git.example").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(matches!(err, AddressError::UserInfo(_)));
    }

    #[test]
    fn redacts_credentials_in_any_address() {
        assert_eq!(
            redact("https://bob:hunter2@git.example/team?private_token=s3cret&x"),
            "https://***@git.example/team?private_token=***&***"
        );
        assert_eq!(redact("https://git.example/a@b"), "https://git.example/a@b");
        assert_eq!(redact("bob:hunter2@git.example"), "***@git.example");
        assert_eq!(redact("not a url#frag"), "not a url#***");
        for bad in [
            "https://u:hunter2@h",
            "https://h/?private_token=hunter2",
            "https://h/#hunter2",
            "ht tp://u:hunter2@h",
        ] {
            let err = ToolAddress::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn rejects_control_characters() {
        for bad in [
            "https://git.test/\r\nX-Injected: 1",
            "https://git.test\n",
            "https://git\t.test",
        ] {
            let err = ToolAddress::parse(bad).unwrap_err();
            assert!(
                matches!(err, AddressError::ControlCharacter(..)),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn rejects_other_schemes_and_queries() {
        assert!(matches!(
            ToolAddress::parse("ftp://x").unwrap_err(),
            AddressError::UnsupportedScheme(_)
        ));
        assert!(matches!(
            ToolAddress::parse("https://x/?a=b").unwrap_err(),
            AddressError::QueryOrFragment(_)
        ));
        assert!(matches!(
            ToolAddress::parse("not a url").unwrap_err(),
            AddressError::NotUrl(..)
        ));
    }

    #[test]
    fn path_prefix_is_segment_wise() {
        let a = ToolAddress::parse("https://h/team").unwrap();
        assert!(a.covers_path("/team"));
        assert!(a.covers_path("/team/app.git/info/refs"));
        assert!(!a.covers_path("/teammate/app.git"));
        assert!(!a.covers_path("/other"));
        assert!(!a.covers_path("/team/../other"));
        assert!(!a.covers_path("/team/..%2Fother"));
        let a = ToolAddress::parse("https://h/%7Eteam/./x/").unwrap();
        assert_eq!(a.path_prefix, "/~team/x");
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("*.corp", "git.corp"));
        assert!(host_matches("*.corp", "a.b.corp"));
        assert!(!host_matches("*.corp", "corp"));
        assert!(!host_matches("*.corp", "evilcorp"));
        assert!(host_matches("Git.Corp", "git.corp"));
    }

    #[test]
    fn class_rules() {
        let a = ToolAddress::parse("http://git.corp").unwrap();
        let rules = AddressRules {
            schemes: vec!["https".into()],
            ..Default::default()
        };
        assert!(matches!(
            a.check_rules(&rules).unwrap_err(),
            AddressError::SchemeNotAllowed { .. }
        ));
        let rules = AddressRules {
            hosts: vec!["*.example".into()],
            ..Default::default()
        };
        assert!(matches!(
            a.check_rules(&rules).unwrap_err(),
            AddressError::HostNotAllowed { .. }
        ));
    }
}
