//! Tool addresses: parsing a Connector's URL into what the proxy matches on, and the class rules.

use std::fmt;

use crate::class::AddressRules;

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
    #[error("'{0}' must not contain a query or fragment")]
    QueryOrFragment(String),
    #[error("scheme '{scheme}' is not allowed by the class (allowed: {allowed})")]
    SchemeNotAllowed { scheme: String, allowed: String },
    #[error("host '{host}' does not match the class's host patterns ({patterns})")]
    HostNotAllowed { host: String, patterns: String },
}

impl ToolAddress {
    pub fn parse(address: &str) -> Result<Self, AddressError> {
        let url = url::Url::parse(address.trim())
            .map_err(|e| AddressError::NotUrl(address.to_owned(), e.to_string()))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(AddressError::UnsupportedScheme(other.to_owned())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(AddressError::UserInfo(redact_userinfo(&url)));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(AddressError::QueryOrFragment(address.to_owned()));
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
        let path_prefix = url.path().trim_end_matches('/').to_owned();
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

    /// Whether a request path falls under this address's path prefix (segment-wise).
    pub fn covers_path(&self, path: &str) -> bool {
        if self.path_prefix.is_empty() {
            return true;
        }
        match path.strip_prefix(&self.path_prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
            None => false,
        }
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
