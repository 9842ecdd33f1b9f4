//! Declared JSON list resources (`spec.api.resources[].http`): every page of a tool's list,
//! read with the Connector's credentials, its items mapped to the declared fields. Paging
//! styles: `link` (RFC 8288 `rel="next"`), `page` (page numbers) and `continue` (a token in the
//! body). Every next-page URL is checked to lie under the Connector's address before it is
//! sent to; the pages, items and time spent are bounded.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use connectors_crd::api::{HttpList, Paging, PagingStyle};
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;

use crate::Limits;
use crate::call::{call, success};
use crate::error::ApiError;
use crate::listing::Item;
use crate::template::{self, Values, at, with_param};
use crate::tool::{Target, Tool};
use crate::upstream::Upstream;

/// Page size asked for when the class says nothing.
const DEFAULT_PAGE_SIZE: u32 = 100;

/// What a declared list needs besides the declaration.
pub struct Request<'a> {
    pub class: &'a str,
    /// The resource's index in `spec.api.resources`, for messages.
    pub index: usize,
    pub query: &'a BTreeMap<String, String>,
}

/// Reads the whole list.
pub async fn collect(
    upstream: &Upstream,
    tool: &Tool,
    list: &HttpList,
    req: &Request<'_>,
    limits: &Limits,
) -> Result<Vec<Item>, ApiError> {
    let field = |f: &str| format!("spec.api.resources[{}].http.{f}", req.index);
    if !list.fields.contains_key("name") {
        return Err(ApiError::Internal(format!(
            "ConnectorClass '{}' {}: declares no 'name' field; the class must be fixed",
            req.class,
            field("fields")
        )));
    }
    let address = tool.address(list.address.as_deref())?.clone();
    let rel = template::render(
        &list.path,
        &Values {
            query: req.query,
            params: &tool.checked.params,
            namespace: &tool.id.namespace,
            name: &tool.id.name,
        },
    )
    .map_err(|e| e.into_api(req.class, &field("path")))?;
    let mut target = tool.under(&address, &rel)?;
    let paging = list.paging.clone();
    let size = paging
        .as_ref()
        .map_or(DEFAULT_PAGE_SIZE, |p| p.size.unwrap_or(DEFAULT_PAGE_SIZE));
    if let Some(p) = &paging {
        if let Some(param) = &p.size_param {
            target.path_and_query = with_param(&target.path_and_query, param, &size.to_string());
        }
        if p.style == PagingStyle::Page {
            target.path_and_query = with_param(&target.path_and_query, page_param(p), "1");
        }
    }
    let started = Instant::now();
    let mut items = Vec::new();
    let mut page = 1u64;
    for fetched in 1.. {
        if fetched > limits.max_pages {
            return Err(ApiError::BadGateway {
                connector: tool.id.clone(),
                what: format!(
                    "the tool's list at {} has more than {} pages, the most the API reads",
                    target.shown(),
                    limits.max_pages
                ),
            });
        }
        if started.elapsed() > limits.list_timeout {
            return Err(ApiError::Timeout {
                connector: tool.id.clone(),
                what: format!("the tool's list at {} (all its pages)", target.shown()),
                after: limits.list_timeout,
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let answer = call(upstream, tool, Method::GET, &target, headers, Bytes::new()).await?;
        let answer = success(tool, &target, answer)?;
        let doc: Value =
            serde_json::from_slice(&answer.body).map_err(|e| ApiError::BadGateway {
                connector: tool.id.clone(),
                what: format!(
                    "the tool's answer to GET {} is not JSON ({e})",
                    target.shown()
                ),
            })?;
        let empty = Vec::new();
        let found = match at(&doc, &list.items) {
            Some(Value::Array(found)) => found,
            // A registry answers `"tags": null` for a repository without tags.
            Some(Value::Null) => &empty,
            _ => {
                return Err(ApiError::BadGateway {
                    connector: tool.id.clone(),
                    what: format!(
                        "the tool's answer to GET {} has no list at '{}' ({} of class '{}')",
                        target.shown(),
                        if list.items.is_empty() {
                            "."
                        } else {
                            &list.items
                        },
                        field("items"),
                        req.class
                    ),
                });
            }
        };
        let count = found.len();
        for raw in found {
            if items.len() >= limits.max_items {
                return Err(ApiError::BadGateway {
                    connector: tool.id.clone(),
                    what: format!(
                        "the tool's list at {} has more than {} items, the most the API collects",
                        target.shown(),
                        limits.max_items
                    ),
                });
            }
            items.push(map_item(raw, &list.fields));
        }
        let next = match &paging {
            None => None,
            Some(p) => next_page(
                tool,
                p,
                &target,
                &answer.headers,
                &doc,
                count,
                size,
                &mut page,
            )?,
        };
        match next {
            Some(t) => target = t,
            None => break,
        }
    }
    Ok(items)
}

fn page_param(p: &Paging) -> &str {
    p.page_param.as_deref().unwrap_or("page")
}

/// One tool item as the declared fields.
fn map_item(raw: &Value, fields: &BTreeMap<String, String>) -> Item {
    fields
        .iter()
        .map(|(name, path)| (name.clone(), at(raw, path).cloned().unwrap_or(Value::Null)))
        .collect()
}

/// The next page's request, or none when this was the last.
#[allow(
    clippy::too_many_arguments,
    reason = "the paging state, passed as it is"
)]
fn next_page(
    tool: &Tool,
    p: &Paging,
    current: &Target,
    headers: &HeaderMap,
    doc: &Value,
    count: usize,
    size: u32,
    page: &mut u64,
) -> Result<Option<Target>, ApiError> {
    match p.style {
        PagingStyle::Link => {
            let Some(link) = next_link(headers) else {
                return Ok(None);
            };
            let base = url::Url::parse(&format!("{}{}", current.base, current.path_and_query))
                .map_err(|e| ApiError::Internal(format!("cannot read back a tool URL: {e}")))?;
            let next = base.join(&link).map_err(|_| ApiError::BadGateway {
                connector: tool.id.clone(),
                what: format!(
                    "the tool's next-page link for {} is not a URL",
                    current.shown()
                ),
            })?;
            match tool.locate(next.as_str()) {
                Ok((_, t)) => Ok(Some(t)),
                Err(_) => Err(ApiError::BadGateway {
                    connector: tool.id.clone(),
                    what: format!(
                        "the tool's next-page link for {} points outside the Connector's address; it is not followed",
                        current.shown()
                    ),
                }),
            }
        }
        PagingStyle::Page => {
            if count == 0 || count < size as usize {
                return Ok(None);
            }
            if let Some(h) = &p.total_pages_header {
                let total = headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if total.is_some_and(|t| *page >= t) {
                    return Ok(None);
                }
            }
            *page += 1;
            let mut t = current.clone();
            t.path_and_query = with_param(&t.path_and_query, page_param(p), &page.to_string());
            Ok(Some(t))
        }
        PagingStyle::Continue => {
            let path = p.token_path.as_deref().unwrap_or("metadata.continue");
            let token = at(doc, path).and_then(Value::as_str).unwrap_or_default();
            if token.is_empty() {
                return Ok(None);
            }
            let param = p.token_param.as_deref().unwrap_or("continue");
            let mut t = current.clone();
            t.path_and_query = with_param(&t.path_and_query, param, &template::encode(token));
            Ok(Some(t))
        }
    }
}

/// The `rel="next"` URL of `Link` headers, if any.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>')? + start;
            let url = &rest[start + 1..end];
            let params_end = rest[end..].find('<').map_or(rest.len(), |i| end + i);
            let params = &rest[end + 1..params_end];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim()
                            .trim_matches('"')
                            .split_whitespace()
                            .any(|r| r.eq_ignore_ascii_case("next"))
                })
            });
            if is_next {
                return Some(url.to_owned());
            }
            rest = &rest[params_end..];
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        let mut h = HeaderMap::new();
        assert_eq!(next_link(&h), None);
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/_catalog?last=b&n=2>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=2"));
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "<https://g.test/api/v4/x?page=1>; rel=\"first\", <https://g.test/api/v4/x?page=3>; rel=\"next\"",
            ),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://g.test/api/v4/x?page=3")
        );
        h.insert(
            header::LINK,
            HeaderValue::from_static("<https://g.test/a>; rel=prev"),
        );
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn items_map_to_fields() {
        let fields: BTreeMap<String, String> = [
            ("name".to_owned(), "name".to_owned()),
            ("commitID".to_owned(), "commit.id".to_owned()),
        ]
        .into();
        let item = map_item(
            &serde_json::json!({"name": "main", "commit": {"id": "abc"}}),
            &fields,
        );
        assert_eq!(item["name"], "main");
        assert_eq!(item["commitID"], "abc");
        let scalar: BTreeMap<String, String> = [("name".to_owned(), ".".to_owned())].into();
        assert_eq!(map_item(&serde_json::json!("v1"), &scalar)["name"], "v1");
    }
}
