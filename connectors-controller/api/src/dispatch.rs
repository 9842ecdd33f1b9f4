//! What a request under a Connector's API path is, from its class's `spec.api`:
//! 1. a declared list resource (`resources[].path`, exact);
//! 2. under a resource group the class declares (the first segment of a resource path, such as
//!    `git/` or `oci/`) but no resource: 404, so a typo never reaches the tool;
//! 3. an OpenAPI operation (`openapi.paths`, `{param}` matching one raw segment, `%2F`
//!    included) with `x-provider-type: api`: a class API service, not served here (400, the
//!    existing product's message); with `proxy` or nothing: the relay, to the address its
//!    `x-openapi-address` names;
//! 4. anything else: the relay to the Connector's address (the default).

use connectors_crd::ConnectorClass;
use connectors_crd::api::ApiResource;
use http::Method;
use serde_json::Value;

use crate::error::ApiError;
use crate::route::shorten;

#[derive(Debug, PartialEq)]
pub enum Dispatch<'a> {
    /// A declared list resource, and its index in `spec.api.resources`.
    Resource(&'a ApiResource, usize),
    /// The tool's own API: `address` is the `x-openapi-address` of the matched operation.
    Relay { address: Option<String> },
}

/// Decides for `api_path` (raw, `""` or starting with `/`) and `method`.
pub fn decide<'a>(
    class: Option<&'a ConnectorClass>,
    api_path: &str,
    method: &Method,
) -> Result<Dispatch<'a>, ApiError> {
    let Some(class) = class else {
        return Ok(Dispatch::Relay { address: None });
    };
    let class_name = class.metadata.name.as_deref().unwrap_or_default();
    let Some(api) = &class.spec.api else {
        return Ok(Dispatch::Relay { address: None });
    };
    let trimmed = api_path.trim_end_matches('/');
    if let Some((i, r)) = api
        .resources
        .iter()
        .enumerate()
        .find(|(_, r)| r.path == trimmed)
    {
        return Ok(Dispatch::Resource(r, i));
    }
    let first = first_segment(trimmed);
    if !first.is_empty()
        && api
            .resources
            .iter()
            .any(|r| first_segment(&r.path) == first)
    {
        let known: Vec<&str> = api
            .resources
            .iter()
            .filter(|r| first_segment(&r.path) == first)
            .map(|r| r.path.trim_start_matches('/'))
            .collect();
        return Err(ApiError::NotFound(format!(
            "ConnectorClass '{class_name}' has no resource '{}' (under '{first}/' it serves: {})",
            shorten(trimmed.trim_start_matches('/')),
            known.join(", ")
        )));
    }
    let Some(op) = api
        .openapi
        .as_ref()
        .and_then(|doc| operation(doc, trimmed, method))
    else {
        return Ok(Dispatch::Relay { address: None });
    };
    match op.provider.as_deref() {
        None | Some("" | "proxy") => Ok(Dispatch::Relay {
            address: op.address,
        }),
        Some("api") => Err(ApiError::BadRequest(format!(
            "api address of connectorclass '{class_name}' is not resolved (operation {} {} is served by a class API service, which this API does not call; declare it in spec.api.resources or as x-provider-type: proxy)",
            method, op.template
        ))),
        Some(other) => Err(ApiError::Internal(format!(
            "ConnectorClass '{class_name}' spec.api.openapi.paths.{}: x-provider-type '{}' is not api or proxy; the class must be fixed",
            op.template,
            shorten(other)
        ))),
    }
}

fn first_segment(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    p.split('/').next().unwrap_or_default()
}

struct Operation {
    template: String,
    provider: Option<String>,
    address: Option<String>,
}

/// The operation of `doc.paths` matching `path` and `method` (HEAD and OPTIONS use `get`),
/// the most specific template first (most literal segments).
fn operation(doc: &Value, path: &str, method: &Method) -> Option<Operation> {
    let paths = doc.get("paths")?.as_object()?;
    let verb = match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return None,
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut best: Option<(usize, &String, &Value)> = None;
    for (template, item) in paths {
        let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        if t.len() != segments.len() {
            continue;
        }
        let mut literal = 0;
        let matches = t.iter().zip(&segments).all(|(t, s)| {
            if t.starts_with('{') && t.ends_with('}') {
                !s.is_empty()
            } else {
                literal += 1;
                t == s
            }
        });
        if matches && best.is_none_or(|(n, _, _)| literal > n) {
            best = Some((literal, template, item));
        }
    }
    let (_, template, item) = best?;
    let op = item.get(verb);
    let ext = |key: &str| -> Option<String> {
        op.and_then(|o| o.get(key))
            .or_else(|| item.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Some(Operation {
        template: template.clone(),
        provider: ext("x-provider-type"),
        address: ext("x-openapi-address"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class() -> ConnectorClass {
        serde_yaml_ng::from_str(
            r#"
apiVersion: connectors.io/v1alpha1
kind: ConnectorClass
metadata: {name: gitlab}
spec:
  api:
    openapi:
      paths:
        /api/v4/projects/{id}/repository/branches:
          get: {x-provider-type: proxy, x-openapi-address: api}
        /api/v4/projects/{id}/repository/tags:
          get: {x-provider-type: api}
        /api/v4/projects/devops%2Fdemo/repository/tags:
          get: {x-provider-type: proxy}
    resources:
      - path: /gitlab/branches
        http: {path: /x, fields: {name: name}}
"#,
        )
        .unwrap()
    }

    #[test]
    fn decisions() {
        let c = class();
        assert!(matches!(
            decide(Some(&c), "/gitlab/branches/", &Method::GET).unwrap(),
            Dispatch::Resource(_, 0)
        ));
        let e = decide(Some(&c), "/gitlab/brunches", &Method::GET).unwrap_err();
        assert!(matches!(e, ApiError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("gitlab/branches"), "{e}");
        assert_eq!(
            decide(
                Some(&c),
                "/api/v4/projects/devops%2Fdemo/repository/branches",
                &Method::HEAD
            )
            .unwrap(),
            Dispatch::Relay {
                address: Some("api".into())
            }
        );
        // The literal template wins over the templated one.
        assert_eq!(
            decide(
                Some(&c),
                "/api/v4/projects/devops%2Fdemo/repository/tags",
                &Method::GET
            )
            .unwrap(),
            Dispatch::Relay { address: None }
        );
        let e = decide(Some(&c), "/api/v4/projects/1/repository/tags", &Method::GET).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("api address of connectorclass 'gitlab' is not resolved"),
            "{e}"
        );
        assert_eq!(
            decide(Some(&c), "/api/v4/groups", &Method::GET).unwrap(),
            Dispatch::Relay { address: None }
        );
        assert_eq!(
            decide(None, "/x", &Method::GET).unwrap(),
            Dispatch::Relay { address: None }
        );
    }
}
