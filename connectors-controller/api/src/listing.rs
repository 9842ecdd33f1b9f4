//! The list envelope of every list resource: `{"listMeta":{"totalItems":N},"items":[...]}`,
//! and the query parameters that shape it: `search` (a case-sensitive substring of `name`),
//! `page` (from 1), `itemsPerPage` (default 20), `sortBy` (a field, default `name`) and
//! `order` (`asc`, the default, or `desc`). The order is stable: ties keep the tool's order.
//! `totalItems` counts the matches of `search`, before paging; a page past the end is empty.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// One item of a list: its fields.
pub type Item = Map<String, Value>;

/// Items per page when the caller says nothing.
pub const DEFAULT_ITEMS_PER_PAGE: usize = 20;
/// The most items one page holds.
pub const MAX_ITEMS_PER_PAGE: usize = 1000;
/// The parameters the envelope itself reads (the others go to the resource).
pub const LIST_PARAMS: [&str; 5] = ["search", "page", "itemsPerPage", "sortBy", "order"];

/// What the caller asked of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListParams {
    pub search: Option<String>,
    pub page: usize,
    pub items_per_page: usize,
    pub sort_by: String,
    pub descending: bool,
}

impl Default for ListParams {
    fn default() -> Self {
        Self {
            search: None,
            page: 1,
            items_per_page: DEFAULT_ITEMS_PER_PAGE,
            sort_by: "name".to_owned(),
            descending: false,
        }
    }
}

/// A request's query, decoded: the list parameters, and the others by name (the first value of
/// each; they feed the resource's request and the cache key).
pub fn split_query(raw: Option<&str>) -> Result<(ListParams, BTreeMap<String, String>), ApiError> {
    let mut list = ListParams::default();
    let mut others = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "search" => list.search = Some(v.into_owned()).filter(|s| !s.is_empty()),
            "page" => list.page = positive("page", &v)?.max(1),
            "itemsPerPage" => {
                let n = positive("itemsPerPage", &v)?;
                list.items_per_page = if n < 1 {
                    DEFAULT_ITEMS_PER_PAGE
                } else {
                    n.min(MAX_ITEMS_PER_PAGE)
                };
            }
            "sortBy" => {
                if !v.is_empty() {
                    list.sort_by = v.into_owned();
                }
            }
            "order" => {
                list.descending = match v.as_ref() {
                    "" | "asc" => false,
                    "desc" => true,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "order must be 'asc' or 'desc', not '{}'",
                            crate::route::shorten(other)
                        )));
                    }
                }
            }
            _ => {
                others
                    .entry(k.into_owned())
                    .or_insert_with(|| v.into_owned());
            }
        }
    }
    Ok((list, others))
}

/// A non-negative integer parameter (`0` is taken as the default by the caller).
fn positive(name: &str, v: &str) -> Result<usize, ApiError> {
    v.trim().parse::<usize>().map_err(|_| {
        ApiError::BadRequest(format!(
            "{name} must be a positive integer, not '{}'",
            crate::route::shorten(v)
        ))
    })
}

/// The envelope of one page of `items`, after `search` and the order. `fields` are the fields
/// items may have (an unknown `sortBy` is refused).
pub fn envelope(items: &[Item], params: &ListParams, fields: &[&str]) -> Result<Value, ApiError> {
    if !fields.contains(&params.sort_by.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "sortBy '{}' is not a field of these items ({})",
            crate::route::shorten(&params.sort_by),
            fields.join(", ")
        )));
    }
    let mut matched: Vec<&Item> = items
        .iter()
        .filter(|i| match &params.search {
            None => true,
            Some(s) => i
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.contains(s.as_str())),
        })
        .collect();
    // A stable sort: ties keep the tool's order.
    matched.sort_by(|a, b| {
        let o = compare(a.get(&params.sort_by), b.get(&params.sort_by));
        if params.descending { o.reverse() } else { o }
    });
    let total = matched.len();
    let start = (params.page - 1).saturating_mul(params.items_per_page);
    let page: Vec<&Item> = matched
        .into_iter()
        .skip(start)
        .take(params.items_per_page)
        .collect();
    Ok(json!({"listMeta": {"totalItems": total}, "items": page}))
}

/// Field values in order: numbers by value, strings by bytes, missing ones last.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Null) | None, Some(Value::Null) | None) => Ordering::Equal,
        (Some(Value::Null) | None, _) => Ordering::Greater,
        (_, Some(Value::Null) | None) => Ordering::Less,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(names: &[&str]) -> Vec<Item> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut m = Map::new();
                m.insert("name".into(), json!(n));
                m.insert("n".into(), json!(i));
                m
            })
            .collect()
    }

    fn names(v: &Value) -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn search_order_and_pages() {
        let all = items(&[
            "refs/tags/v2",
            "refs/heads/main",
            "refs/heads/maint",
            "refs/tags/v1",
        ]);
        let (p, _) = split_query(Some("search=ma&itemsPerPage=1&page=2")).unwrap();
        let v = envelope(&all, &p, &["name"]).unwrap();
        assert_eq!(v["listMeta"]["totalItems"], 2);
        assert_eq!(names(&v), ["refs/heads/maint"]);
        let (p, _) = split_query(Some("page=9")).unwrap();
        let v = envelope(&all, &p, &["name"]).unwrap();
        assert_eq!(v["listMeta"]["totalItems"], 4);
        assert!(names(&v).is_empty());
        let (p, _) = split_query(Some("order=desc")).unwrap();
        assert_eq!(
            names(&envelope(&all, &p, &["name"]).unwrap()),
            [
                "refs/tags/v2",
                "refs/tags/v1",
                "refs/heads/maint",
                "refs/heads/main"
            ]
        );
        let (p, _) = split_query(Some("sortBy=n&order=desc&itemsPerPage=2")).unwrap();
        assert_eq!(
            names(&envelope(&all, &p, &["name", "n"]).unwrap()),
            ["refs/tags/v1", "refs/heads/maint"]
        );
        assert!(envelope(&all, &p, &["name"]).is_err());
    }

    #[test]
    fn parameters() {
        let (p, others) = split_query(Some(
            "repositoryUrl=https%3A%2F%2Fgit.test%2Fa.git&itemsPerPage=0&page=0&search=",
        ))
        .unwrap();
        assert_eq!(p, ListParams::default());
        assert_eq!(others["repositoryUrl"], "https://git.test/a.git");
        let (p, _) = split_query(Some("itemsPerPage=100000")).unwrap();
        assert_eq!(p.items_per_page, MAX_ITEMS_PER_PAGE);
        for bad in ["page=x", "page=-1", "itemsPerPage=1.5", "order=up"] {
            let e = split_query(Some(bad)).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad}");
        }
        assert!(
            split_query(Some("page=two"))
                .unwrap_err()
                .to_string()
                .contains("page must be a positive integer, not 'two'")
        );
    }
}
