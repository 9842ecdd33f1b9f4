//! The OpenAPI 3 document of the API: its routes, the list envelope, the `Status` errors, and
//! one operation per list resource of the built-in classes (`deploy/classes`), generated from
//! their declarations. `cargo xtask gen-openapi` writes it to `docs/openapi.json`; the API
//! serves that file (embedded at build time), and `cargo xtask test` fails when it is stale.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use connectors_crd::ConnectorClass;
use connectors_crd::api::ApiResource;
use serde_json::{Map, Value, json};

use crate::gitrefs;
use crate::listing::{DEFAULT_ITEMS_PER_PAGE, MAX_ITEMS_PER_PAGE};
use crate::route::PREFIX;

/// Where the document is served.
pub const PATH: &str = "/connectors/v1alpha1/openapi.json";

/// The committed document (`docs/openapi.json`).
pub const COMMITTED: &str = include_str!("../../../docs/openapi.json");

pub async fn serve() -> Response {
    let mut r = COMMITTED.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The document, for these classes (the built-in ones), as `docs/openapi.json` holds it.
pub fn render(classes: &[ConnectorClass]) -> String {
    let mut text = serde_json::to_string_pretty(&document(classes)).unwrap_or_default();
    text.push('\n');
    text
}

/// The document, for these classes.
pub fn document(classes: &[ConnectorClass]) -> Value {
    let mut paths = Map::new();
    paths.insert(
        format!("{PREFIX}/{{namespace}}"),
        json!({
            "get": {
                "operationId": "listConnectors",
                "summary": "The Connectors of a namespace that the caller may get",
                "tags": ["connectors"],
                "parameters": [
                    {"$ref": "#/components/parameters/namespace"},
                    {"$ref": "#/components/parameters/search"},
                    {"$ref": "#/components/parameters/page"},
                    {"$ref": "#/components/parameters/itemsPerPage"},
                    {"$ref": "#/components/parameters/sortBy"},
                    {"$ref": "#/components/parameters/order"}
                ],
                "responses": with_errors(json!({
                    "200": {"description": "One page of the Connectors", "content": {"application/json": {"schema": list_schema(json!({"$ref": "#/components/schemas/ConnectorSummary"}))}}}
                }), &["400", "401", "503"])
            }
        }),
    );
    let mut sorted: Vec<&ConnectorClass> = classes.iter().collect();
    sorted.sort_by_key(|c| c.metadata.name.clone());
    for class in sorted {
        let name = class.metadata.name.as_deref().unwrap_or_default();
        for r in class.spec.api.iter().flat_map(|a| &a.resources) {
            let key = format!("{PREFIX}/{{namespace}}/{{connector}}/path{}", r.path);
            if paths.contains_key(&key) {
                continue;
            }
            paths.insert(key, json!({"get": resource_operation(name, r)}));
        }
    }
    let relay_responses = |read: bool| {
        let mut ok = json!({
            "2XX": {"description": "The tool's answer as it sent it: status, body, and its content and paging headers (Content-Type, ETag, Link, x-total, x-total-pages...)"},
            "3XX": {"description": "The tool's answer"},
            "4XX": {"description": "The tool's answer (a 401 from the tool is answered 502)"}
        });
        if read {
            ok["405"] = json!({"$ref": "#/components/responses/MethodNotAllowed"});
        }
        with_errors(ok, &["400", "401", "403", "404", "502", "503", "504"])
    };
    let relay_params = json!([
        {"$ref": "#/components/parameters/namespace"},
        {"$ref": "#/components/parameters/connector"},
        {"name": "apiPath", "in": "path", "required": true, "description": "A path of the tool's own API (GitLab api/v4/..., Harbor api/v2.0/..., the distribution API v2/..., the Kubernetes API), under the Connector's address; percent-encoded slashes (%2F) reach the tool as sent", "schema": {"type": "string"}}
    ]);
    let relay = |summary: &str, read: bool| {
        json!({
            "summary": summary,
            "tags": ["relay"],
            "responses": relay_responses(read)
        })
    };
    paths.insert(
        format!("{PREFIX}/{{namespace}}/{{connector}}/path/{{apiPath}}"),
        json!({
            "parameters": relay_params,
            "get": {"operationId": "relayGet", "description": "Relayed to the tool's own API with the Connector's credentials, unless the path is a list resource of the Connector's class. The caller's Authorization and cookies never go to the tool.", "summary": "The tool's own API (read)", "tags": ["relay"], "responses": relay_responses(false)},
            "head": relay("The tool's own API (read, no body)", false),
            "options": {"summary": "The methods allowed", "tags": ["relay"], "responses": {"204": {"description": "No body; `Allow` lists the methods"}}},
            "post": relay("Relayed only when writes are enabled; else 405 with Allow: GET, HEAD, OPTIONS", true),
            "put": relay("Relayed only when writes are enabled; else 405", true),
            "patch": relay("Relayed only when writes are enabled; else 405", true),
            "delete": relay("Relayed only when writes are enabled; else 405", true)
        }),
    );
    paths.insert(
        PATH.to_owned(),
        json!({"get": {"operationId": "openapi", "summary": "This document", "security": [], "tags": ["meta"], "responses": {"200": {"description": "The OpenAPI 3 document", "content": {"application/json": {}}}}}}),
    );
    paths.insert(
        "/connectors/ui/".to_owned(),
        json!({"get": {"operationId": "page", "summary": "A page for UI developers: Connector, repository, branch and tag pickers calling this API", "security": [], "tags": ["meta"], "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Connectors API",
            "version": "v1alpha1",
            "description": "One API for UIs over every Connector: list resources (Git branches and tags, OCI repositories and tags, Kubernetes namespaces, and any list a ConnectorClass declares in spec.api.resources) in the envelope {\"listMeta\":{\"totalItems\":N},\"items\":[...]}, and the tools' own APIs relayed with the Connector's credentials. A caller needs `get` on the Connector (connectors.connectors.io); no answer ever holds a credential. Errors are Kubernetes Status objects."
        },
        "security": [{"bearer": []}],
        "tags": [
            {"name": "connectors", "description": "Connectors the caller may use"},
            {"name": "relay", "description": "A tool's own API, with the Connector's credentials"},
            {"name": "meta", "description": "This document and the UI developers' page"}
        ],
        "paths": paths,
        "components": components()
    })
}

fn resource_operation(class: &str, r: &ApiResource) -> Value {
    let mut params = vec![
        json!({"$ref": "#/components/parameters/namespace"}),
        json!({"$ref": "#/components/parameters/connector"}),
    ];
    for p in &r.parameters {
        params.push(json!({
            "name": p.name,
            "in": "query",
            "required": p.required,
            "description": p.description.clone().unwrap_or_default(),
            "schema": {"type": "string"}
        }));
    }
    if let Some(g) = &r.git_refs {
        let name = g.repository_param.as_deref().unwrap_or("repositoryUrl");
        if !r.parameters.iter().any(|p| p.name == name) {
            params.push(json!({
                "name": name, "in": "query", "required": true,
                "description": "The repository's clone URL, under the Connector's address",
                "schema": {"type": "string", "format": "uri"}
            }));
        }
    }
    for p in ["search", "page", "itemsPerPage", "sortBy", "order"] {
        params.push(json!({"$ref": format!("#/components/parameters/{p}")}));
    }
    let fields: Vec<String> = match (&r.http, &r.git_refs) {
        (Some(h), _) => h.fields.keys().cloned().collect(),
        _ => gitrefs::FIELDS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let properties: Map<String, Value> = fields
        .iter()
        .map(|f| (f.clone(), json!({"type": "string"})))
        .collect();
    let item = json!({"type": "object", "required": ["name"], "properties": properties});
    let id = r
        .operation_id
        .clone()
        .unwrap_or_else(|| format!("list{}", r.path.replace(['/', '-', '.', '_'], "")));
    json!({
        "operationId": id,
        "summary": r.description.clone().unwrap_or_else(|| format!("A list resource of class {class}")),
        "description": format!("Served for Connectors of class {class} (declared in its spec.api.resources). `totalItems` counts the matches of `search` before paging; the order is stable (ties keep the tool's order)."),
        "tags": [class],
        "parameters": params,
        "responses": with_errors(json!({
            "200": {"description": "One page of the list", "content": {"application/json": {"schema": list_schema(item)}}}
        }), &["400", "401", "403", "404", "405", "502", "503", "504"])
    })
}

fn list_schema(item: Value) -> Value {
    json!({
        "type": "object",
        "required": ["listMeta", "items"],
        "properties": {
            "listMeta": {"$ref": "#/components/schemas/ListMeta"},
            "items": {"type": "array", "items": item}
        }
    })
}

fn with_errors(mut responses: Value, codes: &[&str]) -> Value {
    for code in codes {
        let name = match *code {
            "400" => "BadRequest",
            "401" => "Unauthorized",
            "403" => "Forbidden",
            "404" => "NotFound",
            "405" => "MethodNotAllowed",
            "502" => "BadGateway",
            "503" => "ServiceUnavailable",
            _ => "GatewayTimeout",
        };
        responses[*code] = json!({"$ref": format!("#/components/responses/{name}")});
    }
    responses
}

fn components() -> Value {
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}});
    json!({
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "A Kubernetes token of the caller (checked with a TokenReview; the caller needs `get` on the Connector). The standalone agent takes the token of its --api-token-file."}
        },
        "parameters": {
            "namespace": {"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}},
            "connector": {"name": "connector", "in": "path", "required": true, "schema": {"type": "string"}},
            "search": {"name": "search", "in": "query", "description": "Only items whose name contains this text (case-sensitive)", "schema": {"type": "string"}},
            "page": {"name": "page", "in": "query", "description": "The page, from 1 (a non-integer is answered 400)", "schema": {"type": "integer", "minimum": 1, "default": 1}},
            "itemsPerPage": {"name": "itemsPerPage", "in": "query", "description": format!("Items per page (at most {MAX_ITEMS_PER_PAGE})"), "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ITEMS_PER_PAGE, "default": DEFAULT_ITEMS_PER_PAGE}},
            "sortBy": {"name": "sortBy", "in": "query", "description": "The field to order by", "schema": {"type": "string", "default": "name"}},
            "order": {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"}}
        },
        "schemas": {
            "ListMeta": {"type": "object", "required": ["totalItems"], "properties": {"totalItems": {"type": "integer", "description": "The matches of search, before paging"}}},
            "Status": {
                "type": "object",
                "description": "A Kubernetes Status (metav1.Status)",
                "required": ["kind", "apiVersion", "status", "message", "reason", "code"],
                "properties": {
                    "kind": {"type": "string", "enum": ["Status"]},
                    "apiVersion": {"type": "string", "enum": ["v1"]},
                    "metadata": {"type": "object"},
                    "status": {"type": "string", "enum": ["Failure"]},
                    "message": {"type": "string", "description": "What went wrong, and what to change"},
                    "reason": {"type": "string", "enum": ["BadRequest", "Unauthorized", "Forbidden", "NotFound", "MethodNotAllowed", "RequestEntityTooLarge", "ServiceUnavailable", "Timeout", "InternalError"]},
                    "code": {"type": "integer"},
                    "details": {"nullable": true}
                }
            },
            "ConnectorSummary": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "className": {"type": "string"},
                    "address": {"type": "string", "description": "spec.address, user info and query values as ***"},
                    "apiPath": {"type": "string", "description": "The Connector's status.api.path"},
                    "resources": {"type": "array", "items": {"type": "object", "properties": {
                        "path": {"type": "string"}, "operationId": {"type": "string", "nullable": true},
                        "kind": {"type": "string", "enum": ["http", "gitRefs"]},
                        "parameters": {"type": "array", "items": {"type": "object"}},
                        "repositoryParam": {"type": "string", "nullable": true}
                    }}}
                }
            }
        },
        "responses": {
            "BadRequest": error("A parameter or path is wrong (a repositoryUrl outside the Connector's address, a non-integer page...)"),
            "Unauthorized": error("No bearer token, or one that is not accepted"),
            "Forbidden": error("The caller may not get the Connector"),
            "NotFound": error("No such Connector (told only to callers allowed to get it), resource, or object at the tool"),
            "MethodNotAllowed": error("A write while writes are off, or any write on a list resource; Allow lists the methods"),
            "BadGateway": error("The tool refused the Connector's credentials, could not be reached, or answered what the resource cannot read; the message names the Connector"),
            "ServiceUnavailable": error("The Connector cannot serve (its Secret is missing or wrong...), or the API server cannot answer now"),
            "GatewayTimeout": error("The tool did not answer within the timeout; the message names the Connector")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_come_from_the_declarations() {
        let class: ConnectorClass = serde_yaml_ng::from_str(
            r#"
apiVersion: connectors.io/v1alpha1
kind: ConnectorClass
metadata: {name: git}
spec:
  api:
    resources:
      - path: /git/gitrefs
        operationId: listGitRefs
        gitRefs: {}
"#,
        )
        .unwrap();
        let doc = document(&[class]);
        let op =
            &doc["paths"]["/connectors/v1alpha1/{namespace}/{connector}/path/git/gitrefs"]["get"];
        assert_eq!(op["operationId"], "listGitRefs");
        let params = op["parameters"].as_array().unwrap();
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "repositoryUrl" && p["required"] == true)
        );
        assert!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["items"]
                ["items"]["properties"]
                .get("commitID")
                .is_some()
        );
        assert_eq!(
            op["responses"]["401"]["$ref"],
            "#/components/responses/Unauthorized"
        );
        // The committed document parses.
        let committed: Value = serde_json::from_str(COMMITTED).unwrap();
        assert_eq!(committed["openapi"], "3.0.3");
    }
}
