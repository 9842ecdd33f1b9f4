//! The API's URLs, read from the raw request path (never a decoded one: `%2F` in a tool path
//! must reach the tool as sent).
//!
//! - `/connectors/v1alpha1/{namespace}`: the Connectors of a namespace the caller may get;
//! - `/connectors/v1alpha1/{namespace}/{connector}/path/{api-path}`: a Connector's API (the
//!   prefix is its `status.api.path`).

use connectors_crd::ConnectorId;

use crate::error::ApiError;

/// The common prefix of the API's routes.
pub const PREFIX: &str = "/connectors/v1alpha1";

/// A Connector's `status.api.path`.
pub fn api_path(id: &ConnectorId) -> String {
    format!("{PREFIX}/{}/{}/path", id.namespace, id.name)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// The Connectors of a namespace.
    Namespace(&'a str),
    /// A Connector's API; `api_path` is `""` or starts with `/`, raw as sent.
    Connector { id: ConnectorId, api_path: &'a str },
}

/// Reads a raw request path under [`PREFIX`].
pub fn parse(path: &str) -> Result<Route<'_>, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "no such endpoint: {} (the API serves {PREFIX}/{{namespace}} and {PREFIX}/{{namespace}}/{{connector}}/path/{{api-path}})",
            shorten(path)
        ))
    };
    let rest = path
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(not_found)?;
    let (namespace, rest) = rest.split_once('/').unwrap_or((rest, ""));
    check_namespace(namespace)?;
    if rest.is_empty() {
        return Ok(Route::Namespace(namespace));
    }
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    check_name(name)?;
    let api_path = match rest.strip_prefix("path") {
        Some(r) if r.is_empty() || r.starts_with('/') => r,
        _ => return Err(not_found()),
    };
    Ok(Route::Connector {
        id: ConnectorId::new(namespace, name),
        api_path,
    })
}

/// A namespace name: a DNS label.
fn check_namespace(ns: &str) -> Result<(), ApiError> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "'{}' is not a namespace name (lowercase letters, digits and '-', at most 63)",
            shorten(ns)
        )))
    }
}

/// A Connector name: a DNS subdomain.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "'{}' is not a Connector name (lowercase letters, digits, '-' and '.')",
            shorten(name)
        )))
    }
}

/// A piece of a request, fit to quote: at most 200 characters, no control characters.
pub fn shorten(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.len() < s.len() {
        format!("{clean}...")
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            parse("/connectors/v1alpha1/team-a").unwrap(),
            Route::Namespace("team-a")
        );
        assert_eq!(
            parse("/connectors/v1alpha1/team-a/").unwrap(),
            Route::Namespace("team-a")
        );
        assert_eq!(
            parse("/connectors/v1alpha1/a/git/path").unwrap(),
            Route::Connector {
                id: ConnectorId::new("a", "git"),
                api_path: ""
            }
        );
        assert_eq!(
            parse("/connectors/v1alpha1/a/gl.x/path/api/v4/projects/devops%2Fdemo").unwrap(),
            Route::Connector {
                id: ConnectorId::new("a", "gl.x"),
                api_path: "/api/v4/projects/devops%2Fdemo"
            }
        );
        for bad in [
            "/connectors/v1alpha1/a/git",
            "/connectors/v1alpha1/a/git/paths/x",
            "/connectors/v2/a/git/path",
        ] {
            assert!(matches!(parse(bad), Err(ApiError::NotFound(_))), "{bad}");
        }
        for bad in [
            "/connectors/v1alpha1/A/git/path",
            "/connectors/v1alpha1/a/Git/path",
            "/connectors/v1alpha1/a/%2e%2e/path",
            "/connectors/v1alpha1/-a/git/path",
        ] {
            assert!(matches!(parse(bad), Err(ApiError::BadRequest(_))), "{bad}");
        }
        assert_eq!(
            api_path(&ConnectorId::new("a", "git")),
            "/connectors/v1alpha1/a/git/path"
        );
    }
}
