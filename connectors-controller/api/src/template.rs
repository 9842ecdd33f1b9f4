//! The templates of declared list resources (`spec.api.resources[].http.path`):
//! `${query.NAME}` (the caller's parameter, percent-encoded as one segment: `/` as `%2F`),
//! `${path.NAME}` (the same, `/` kept: a name of several segments, each checked),
//! `${params.NAME}` (a Connector parameter, encoded as one segment), `${connector.name}` and
//! `${connector.namespace}`; `$$` is a literal `$`. No scope reaches a Secret: credentials go
//! on requests only through the injection rule.

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::ApiError;
use crate::route::shorten;

/// Kept unencoded: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a template may read.
pub struct Values<'a> {
    pub query: &'a BTreeMap<String, String>,
    pub params: &'a BTreeMap<String, String>,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Why a template cannot be used: the class is at fault (500), or the caller (400).
#[derive(Debug, PartialEq, Eq)]
pub enum TemplateError {
    Class(String),
    Caller(String),
}

impl TemplateError {
    /// As the API's error, naming the resource's field when the class is at fault.
    pub fn into_api(self, class: &str, field: &str) -> ApiError {
        match self {
            TemplateError::Class(m) => ApiError::Internal(format!(
                "ConnectorClass '{class}' {field}: {m}; the class must be fixed"
            )),
            TemplateError::Caller(m) => ApiError::BadRequest(m),
        }
    }
}

/// Expands a template.
pub fn render(template: &str, v: &Values<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let Some(r) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = r.find('}').ok_or_else(|| {
            TemplateError::Class(format!("unterminated placeholder in '{template}'"))
        })?;
        let placeholder = r[..end].trim();
        let (scope, key) = placeholder
            .split_once('.')
            .ok_or_else(|| bad(placeholder))?;
        let value = match scope {
            "query" => v.query.get(key).map(|s| encode(s)),
            "path" => match v.query.get(key) {
                Some(s) => Some(segments(key, s)?),
                None => None,
            },
            "params" => v.params.get(key).map(|s| encode(s)),
            "connector" => match key {
                "name" => Some(encode(v.name)),
                "namespace" => Some(encode(v.namespace)),
                _ => return Err(bad(placeholder)),
            },
            _ => return Err(bad(placeholder)),
        };
        match value {
            Some(s) => out.push_str(&s),
            None if scope == "params" => {
                return Err(TemplateError::Caller(format!(
                    "the resource needs Connector parameter '{key}', which the Connector does not set (spec.params)"
                )));
            }
            // An optional parameter the caller left out.
            None => {}
        }
        rest = &r[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn bad(placeholder: &str) -> TemplateError {
    TemplateError::Class(format!(
        "placeholder '${{{placeholder}}}' is not one of query.NAME, path.NAME, params.NAME, connector.name, connector.namespace"
    ))
}

/// One segment (or query value), percent-encoded.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A value of several segments, each encoded: none may be empty, `.` or `..`.
fn segments(key: &str, s: &str) -> Result<String, TemplateError> {
    let mut out = Vec::new();
    for seg in s.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(TemplateError::Caller(format!(
                "parameter {key} '{}' must be names separated by single '/' (no empty, '.' or '..' part)",
                shorten(s)
            )));
        }
        out.push(encode(seg));
    }
    Ok(out.join("/"))
}

/// The value at a dotted path of a JSON document (`tags`, `metadata.continue`, `items.0.name`);
/// `""` or `.` is the document itself.
pub fn at<'v>(value: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    if path.is_empty() || path == "." {
        return Some(value);
    }
    let mut cur = value;
    for key in path.split('.') {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(key)?,
            serde_json::Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// `path_and_query` with the query parameter `name` set to `value` (already encoded),
/// replacing any value it had.
pub fn with_param(path_and_query: &str, name: &str, value: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(name))
        .collect();
    let set = format!("{name}={value}");
    pairs.push(&set);
    format!("{path}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(
        query: &'a BTreeMap<String, String>,
        params: &'a BTreeMap<String, String>,
    ) -> Values<'a> {
        Values {
            query,
            params,
            namespace: "team-a",
            name: "gl",
        }
    }

    #[test]
    fn renders_each_scope() {
        let q: BTreeMap<String, String> = [
            ("project".to_owned(), "devops/demo".to_owned()),
            ("repository".to_owned(), "team/app".to_owned()),
            ("q".to_owned(), "a b&c".to_owned()),
        ]
        .into();
        let p: BTreeMap<String, String> = [("org".to_owned(), "my org".to_owned())].into();
        let v = values(&q, &p);
        assert_eq!(
            render("/api/v4/projects/${query.project}/repository/branches", &v).unwrap(),
            "/api/v4/projects/devops%2Fdemo/repository/branches"
        );
        assert_eq!(
            render("/v2/${path.repository}/tags/list", &v).unwrap(),
            "/v2/team/app/tags/list"
        );
        assert_eq!(
            render(
                "/orgs/${params.org}/repos?q=${query.q}&x=${query.missing}&c=${connector.name}$$",
                &v
            )
            .unwrap(),
            "/orgs/my%20org/repos?q=a%20b%26c&x=&c=gl$"
        );
    }

    #[test]
    fn problems_say_whose_they_are() {
        let q: BTreeMap<String, String> =
            [("repository".to_owned(), "team/../x".to_owned())].into();
        let p = BTreeMap::new();
        let v = values(&q, &p);
        assert!(matches!(
            render("/v2/${path.repository}", &v),
            Err(TemplateError::Caller(_))
        ));
        assert!(matches!(
            render("/${secret.token}", &v),
            Err(TemplateError::Class(_))
        ));
        assert!(matches!(
            render("/${query.x", &v),
            Err(TemplateError::Class(_))
        ));
        assert!(matches!(
            render("/${params.org}", &v),
            Err(TemplateError::Caller(_))
        ));
    }

    #[test]
    fn json_paths_and_params() {
        let doc = serde_json::json!({"metadata": {"continue": "abc"}, "items": [{"name": "x"}]});
        assert_eq!(at(&doc, "metadata.continue").unwrap(), "abc");
        assert_eq!(at(&doc, "items.0.name").unwrap(), "x");
        assert_eq!(at(&doc, "").unwrap(), &doc);
        assert!(at(&doc, "nope.x").is_none());
        assert_eq!(with_param("/v2/_catalog", "n", "100"), "/v2/_catalog?n=100");
        assert_eq!(with_param("/x?n=5&a=1", "n", "100"), "/x?a=1&n=100");
    }
}
