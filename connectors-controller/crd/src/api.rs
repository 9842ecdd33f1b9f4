//! `ConnectorClass.spec.api`: what the unified REST API serves for the Connectors of a class.
//!
//! A class declares two things, both plain data:
//! - `openapi`: an OpenAPI 3 document (free-form) of the tool's API as served under a Connector's
//!   `status.api.path`, with the existing product's extensions: an operation's
//!   `x-provider-type` (`proxy`, the default: relayed to the tool with the Connector's
//!   credentials; `api`: answered by a class API service) and `x-openapi-address` (empty: the
//!   Connector's `spec.address`; a name: that address extension).
//! - `resources`: list resources answered in the list envelope
//!   (`{"listMeta":{"totalItems":N},"items":[...]}`, with `search`, `page`, `itemsPerPage`,
//!   `sortBy`, `order`), each a request template to the tool, where the items are in its
//!   answer, how their fields map, and how the tool pages. A GitLab, GitHub or Harbor list
//!   needs no code; the built-in classes use the same declaration (the Git refs, which are not
//!   JSON, use the built-in `gitRefs` reader).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API of a class's Connectors.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassApi {
    /// An OpenAPI 3 document of the tool's API under a Connector's `status.api.path`
    /// (free-form). Operations may set `x-provider-type` (`proxy`, the default, or `api`) and
    /// `x-openapi-address` (empty for `spec.address`, or the name of an address extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub openapi: Option<serde_json::Value>,
    /// List resources, answered in the list envelope with search and paging.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub resources: Vec<ApiResource>,
}

/// One list resource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiResource {
    /// Where it is served, under a Connector's `status.api.path`, e.g. `/git/gitrefs`.
    #[schemars(length(min = 2, max = 253), regex(pattern = r"^(/[A-Za-z0-9._-]+)+$"))]
    pub path: String,
    /// The OpenAPI operationId, e.g. `listGitRefs` (UI forms refer to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub operation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Query parameters the caller gives, beyond `search`, `page`, `itemsPerPage`, `sortBy`
    /// and `order`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub parameters: Vec<ResourceParameter>,
    /// The items come from a JSON list of the tool's HTTP API. Exactly one of `http` and
    /// `gitRefs` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpList>,
    /// The items are the branches and tags of a Git repository, read over the smart HTTP
    /// protocol (v2 `ls-refs` where the server speaks it, else the v0 advertisement): items
    /// `{name: "refs/heads/main", commitID}`, annotated tags peeled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_refs: Option<GitRefsList>,
}

/// A query parameter of a list resource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceParameter {
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_-]*$")
    )]
    pub name: String,
    /// Without it the request is answered 400.
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// A list read from the tool's JSON API, every page of it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpList {
    /// The request's path and query, joined to the address (its path prefix kept). A template:
    /// `${query.NAME}` is the caller's parameter NAME percent-encoded as one segment (`/` as
    /// `%2F`, as GitLab project ids want), `${path.NAME}` the same keeping `/` (a repository
    /// name of several segments), `${params.NAME}` a Connector parameter, `${connector.name}`
    /// and `${connector.namespace}`; `$$` is a literal `$`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^/"))]
    pub path: String,
    /// Which address the request goes to: empty for `spec.address`, else the name of an
    /// address extension (as `x-openapi-address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub address: Option<String>,
    /// Where the items are in the JSON answer: a dotted path (`tags`, `items`,
    /// `data.repositories`); empty when the answer is the array itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253))]
    pub items: String,
    /// The fields of each item: output name to a dotted path in the tool's item (`.` is the
    /// item itself, for a list of strings). `name` is required: search and the default order
    /// use it.
    #[schemars(length(max = 32))]
    pub fields: BTreeMap<String, String>,
    /// How the tool pages its list. Absent: one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<Paging>,
}

/// How a tool pages a list.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PagingStyle {
    /// `Link: <url>; rel="next"` (RFC 8288), followed until there is none: the distribution
    /// API, GitHub, GitLab.
    #[default]
    Link,
    /// Page numbers (`pageParam`, from 1), until a short page, or the last page of
    /// `totalPagesHeader`: GitLab, Harbor.
    Page,
    /// A token in the answer (`tokenPath`) sent back as `tokenParam`, until it is empty:
    /// Kubernetes (`metadata.continue`).
    Continue,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Paging {
    pub style: PagingStyle,
    /// The query parameter for the page size (`n`, `per_page`, `page_size`, `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub size_param: Option<String>,
    /// The page size asked for (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub size: Option<u32>,
    /// `page` style: the page-number parameter (default `page`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub page_param: Option<String>,
    /// `page` style: a response header holding the number of pages (e.g. `x-total-pages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub total_pages_header: Option<String>,
    /// `continue` style: the parameter the token is sent in (default `continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub token_param: Option<String>,
    /// `continue` style: the dotted path of the token in the answer (default
    /// `metadata.continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub token_path: Option<String>,
}

/// The refs of a Git repository.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitRefsList {
    /// The caller's query parameter holding the repository's clone URL (default
    /// `repositoryUrl`); it must lie under the Connector's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub repository_param: Option<String>,
    /// The ref prefixes listed (default `refs/heads/` and `refs/tags/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub ref_prefixes: Vec<String>,
}

impl ClassApi {
    /// The resource served at `path` (leading `/`; a trailing `/` is ignored).
    pub fn resource(&self, path: &str) -> Option<&ApiResource> {
        let path = path.trim_end_matches('/');
        self.resources.iter().find(|r| r.path == path)
    }
}

/// A free-form object: kept as written (a structural schema needs this marker).
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_declared_resource() {
        let api: ClassApi = serde_yaml_ng::from_str(
            r#"
openapi:
  paths:
    /api/v4/projects/{id}/repository/branches:
      get: {x-provider-type: proxy, operationId: listBranches}
resources:
  - path: /gitlab/branches
    parameters: [{name: project, required: true}]
    http:
      path: /api/v4/projects/${query.project}/repository/branches
      fields: {name: name, commitID: commit.id}
      paging: {style: page, sizeParam: per_page, size: 100, totalPagesHeader: x-total-pages}
"#,
        )
        .unwrap();
        let r = api.resource("/gitlab/branches/").unwrap();
        let http = r.http.as_ref().unwrap();
        assert_eq!(http.fields["commitID"], "commit.id");
        assert_eq!(http.paging.as_ref().unwrap().style, PagingStyle::Page);
        assert!(api.resource("/gitlab").is_none());
        assert!(api.openapi.unwrap()["paths"].is_object());
    }
}
