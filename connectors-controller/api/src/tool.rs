//! A Connector ready to be called: its spec checked against its class, its credential rendered
//! from its Secret and its CA read, by the same checks the proxy and the controller run
//! (`connectors_crd::assess`). Every URL the API sends to is built here, and only when it
//! resolves under one of the Connector's addresses (scheme, host, port, path prefix, both
//! readings of the path: the rule the proxy applies), so credentials never leave the
//! Connector's scope.

use std::collections::BTreeMap;

use connectors_crd::ConnectorId;
use connectors_crd::address::ToolAddress;
use connectors_crd::assess;
use connectors_crd::inject::Injector;
use connectors_crd::path::{Coverage, RequestPath};
use connectors_crd::validation::CheckedConnector;
use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::CertificateDer;

use crate::backend::Entry;
use crate::error::ApiError;
use crate::route::shorten;

pub struct Tool {
    pub id: ConnectorId,
    pub checked: CheckedConnector,
    /// What goes on each request (none for an anonymous auth type): the injector the proxy and
    /// the probes use, the registry token flow included.
    pub injector: Option<Injector>,
    /// The Connector's CA certificates, trusted beside the system roots.
    pub roots: Vec<CertificateDer<'static>>,
}

/// A URL under one of the Connector's addresses, split for the injector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `scheme://host[:port]`.
    pub base: String,
    /// The normalized path (the strict reading, `%2F` kept) and the query as given.
    pub path_and_query: String,
}

impl Target {
    /// The URL without its query, for messages.
    pub fn shown(&self) -> String {
        let path = self
            .path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p);
        format!("{}{path}", self.base)
    }
}

impl Tool {
    /// Checks a Connector with its Secrets; a Connector that cannot serve is
    /// [`ApiError::NotReady`], saying why.
    pub fn resolve(entry: &Entry, secrets: &BTreeMap<String, Secret>) -> Result<Self, ApiError> {
        let id = entry.connector.id();
        let a = assess::assess(&entry.connector, entry.class.as_deref(), |n| secrets.get(n));
        let not_ready = |why: String| ApiError::NotReady {
            connector: id.clone(),
            why,
        };
        let injector = a.injector.map_err(not_ready)?;
        let checked = a
            .checked
            .ok_or_else(|| not_ready("its spec does not fit its class".to_owned()))?;
        let pems = a.ca_pem.map_err(not_ready)?;
        let mut roots = Vec::new();
        for pem in pems {
            roots.extend(
                connectors_crd::tls::parse_pem_certs(&pem)
                    .map_err(|e| not_ready(format!("caCertSecretRef: {e}")))?,
            );
        }
        Ok(Self {
            id,
            checked,
            injector,
            roots,
        })
    }

    /// The address an operation uses (`x-openapi-address`): the Connector's `spec.address` for
    /// none or `""`, else the address extension of that name.
    pub fn address(&self, name: Option<&str>) -> Result<&ToolAddress, ApiError> {
        match name.map(str::trim).filter(|n| !n.is_empty()) {
            None => Ok(&self.checked.address),
            Some(n) => self
                .checked
                .extensions
                .iter()
                .find(|(e, _)| e == n)
                .map(|(_, a)| a)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "the class's API names address '{}', which Connector {} does not have (spec.addressExtensions)",
                        shorten(n),
                        self.id
                    ))
                }),
        }
    }

    /// `rel` (a path starting with `/`, with an optional query) under `address`, its path
    /// prefix kept: `https://h/gitlab` + `/api/v4/x` is `https://h/gitlab/api/v4/x`.
    pub fn under(&self, address: &ToolAddress, rel: &str) -> Result<Target, ApiError> {
        let (path, query) = split_query(rel);
        let joined = format!(
            "{}{}",
            address.path_prefix,
            if path.is_empty() { "/" } else { path }
        );
        target(address, &joined, query, &self.id)
    }

    /// An absolute URL (a repository URL, a tool's next-page link) checked to lie under one of
    /// the Connector's addresses.
    pub fn locate(&self, url: &str) -> Result<(&ToolAddress, Target), ApiError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            ApiError::BadRequest(format!("'{}' is not a URL: {e}", shorten(&redact(url))))
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(ApiError::BadRequest(format!(
                "'{}' must not carry user info: the Connector's credentials are used",
                shorten(&redact(url))
            )));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => String::new(),
        };
        let port = parsed.port_or_known_default().unwrap_or(0);
        let outside = || {
            ApiError::BadRequest(format!(
                "'{}' is not under the address of Connector {} ({})",
                shorten(&redact(url)),
                self.id,
                self.checked.address
            ))
        };
        for address in self.checked.addresses() {
            if address.scheme.as_str() != parsed.scheme()
                || address.host != host
                || address.port != port
            {
                continue;
            }
            let path = parsed.path();
            let t = target(address, path, parsed.query(), &self.id);
            return match t {
                Ok(t) => Ok((address, t)),
                Err(ApiError::BadRequest(m)) if m.contains("outside") => Err(outside()),
                Err(e) => Err(e),
            };
        }
        Err(outside())
    }
}

/// Path and query of a relative reference.
fn split_query(rel: &str) -> (&str, Option<&str>) {
    match rel.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rel, None),
    }
}

fn target(
    address: &ToolAddress,
    raw_path: &str,
    query: Option<&str>,
    id: &ConnectorId,
) -> Result<Target, ApiError> {
    let path = RequestPath::parse(raw_path)
        .map_err(|e| ApiError::BadRequest(format!("the tool path '{}': {e}", shorten(raw_path))))?;
    match address.coverage(&path) {
        Coverage::Inside => {}
        Coverage::Outside => {
            return Err(ApiError::BadRequest(format!(
                "the tool path '{}' resolves outside the address of Connector {id} ({address}), so it is not sent",
                shorten(raw_path)
            )));
        }
        Coverage::Ambiguous => {
            return Err(ApiError::BadRequest(format!(
                "the tool path '{}' could resolve outside the address of Connector {id} ({address}) under some server's reading (an encoded '/' or '\\' next to '..', ';', '//'); it is not sent",
                shorten(raw_path)
            )));
        }
    }
    let host = if address.host.contains(':') {
        format!("[{}]", address.host)
    } else {
        address.host.clone()
    };
    let base = if address.port == address.scheme.default_port() {
        format!("{}://{host}", address.scheme)
    } else {
        format!("{}://{host}:{}", address.scheme, address.port)
    };
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    Ok(Target {
        base,
        path_and_query,
    })
}

/// A URL fit to quote (user info and query values masked).
fn redact(url: &str) -> String {
    connectors_crd::address::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(address: &str) -> Tool {
        Tool {
            id: ConnectorId::new("a", "gl"),
            checked: CheckedConnector {
                address: ToolAddress::parse(address).unwrap(),
                extensions: vec![(
                    "registry".into(),
                    ToolAddress::parse("https://registry.test:5000").unwrap(),
                )],
                auth_type: None,
                secret_name: None,
                params: BTreeMap::new(),
            },
            injector: None,
            roots: Vec::new(),
        }
    }

    #[test]
    fn paths_keep_the_prefix_and_encoded_slashes() {
        let t = tool("https://git.test/gitlab");
        let a = t.address(None).unwrap().clone();
        let x = t
            .under(
                &a,
                "/api/v4/projects/devops%2Fdemo/repository/branches?per_page=2",
            )
            .unwrap();
        assert_eq!(x.base, "https://git.test");
        assert_eq!(
            x.path_and_query,
            "/gitlab/api/v4/projects/devops%2Fdemo/repository/branches?per_page=2"
        );
        assert_eq!(
            x.shown(),
            "https://git.test/gitlab/api/v4/projects/devops%2Fdemo/repository/branches"
        );
        assert_eq!(t.under(&a, "").unwrap().path_and_query, "/gitlab/");
        for bad in ["/../other", "/%2e%2e/x", "/..%2Fother", "/a%zz"] {
            assert!(
                matches!(t.under(&a, bad), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
        let r = t.address(Some("registry")).unwrap();
        assert_eq!(r.port, 5000);
        assert!(t.address(Some("nope")).is_err());
    }

    #[test]
    fn absolute_urls_must_lie_under_an_address() {
        let t = tool("https://git.test/team");
        let (_, x) = t.locate("https://GIT.test:443/team/app.git").unwrap();
        assert_eq!(x.path_and_query, "/team/app.git");
        let (a, x) = t
            .locate("https://registry.test:5000/v2/_catalog?last=b&n=2")
            .unwrap();
        assert_eq!(a.port, 5000);
        assert_eq!(x.base, "https://registry.test:5000");
        assert_eq!(x.path_and_query, "/v2/_catalog?last=b&n=2");
        for bad in [
            "http://git.test/team/app.git",
            "https://git.test:8443/team/app.git",
            "https://other.test/team/app.git",
            "https://git.test/teammate/app.git",
            "https://git.test/team/../other.git",
            "https://u:p@git.test/team/app.git",
            "not a url",
        ] {
            let e = t.locate(bad).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad}: {e}");
            assert!(!e.to_string().contains(":p@"), "{e}");
        }
    }
}
