//! One request, in order: the route; the caller (401); may they get the Connector (403); does
//! it exist (404, told only to callers allowed to know); the method; then a declared list
//! resource or the relay, from the cache when a fresh answer is there. Every failure is an
//! [`ApiError`], turned into a `Status` response in one place. One log line per request
//! (method, path without query, Connector, caller, status, duration), never a token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use connectors_crd::ConnectorId;
use connectors_crd::api::ApiResource;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::backend::{Caller, Entry};
use crate::cache::{Cached, Key};
use crate::dispatch::{self, Dispatch};
use crate::error::{ApiError, READ_METHODS};
use crate::listing::{self, Item};
use crate::relay::{self, Relayed};
use crate::route::{self, Route, shorten};
use crate::tool::Tool;
use crate::upstream::Answer;
use crate::{Api, declared, gitrefs};

const ALL_METHODS: &str = "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE";

/// The axum handler of `/connectors/v1alpha1/...`.
pub async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = shorten(req.uri().path());
    let span = tracing::info_span!(
        "api",
        %method,
        %path,
        connector = tracing::field::Empty,
        caller = tracing::field::Empty
    );
    let result = api.serve(req).instrument(span.clone()).await;
    let response = result.unwrap_or_else(|e| {
        let _enter = span.enter();
        if e.status().is_server_error() {
            tracing::warn!(status = e.status().as_u16(), "{e}");
        } else {
            tracing::debug!(status = e.status().as_u16(), "{e}");
        }
        e.into_response()
    });
    let _enter = span.enter();
    tracing::info!(
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "api request"
    );
    response
}

impl Api {
    async fn serve(&self, req: Request) -> Result<Response, ApiError> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        match route::parse(&path)? {
            Route::Namespace(namespace) => {
                read_only(&parts.method)?;
                let caller = self.caller(&parts).await?;
                if parts.method == Method::OPTIONS {
                    return Ok(options(READ_METHODS));
                }
                let list = self
                    .list_connectors(&caller, namespace, parts.uri.query())
                    .await?;
                Ok(json_response(
                    StatusCode::OK,
                    &list,
                    parts.method == Method::HEAD,
                ))
            }
            Route::Connector { id, api_path } => {
                let api_path = api_path.to_owned();
                self.connector(parts, body, id, &api_path).await
            }
        }
    }

    async fn caller(&self, parts: &Parts) -> Result<Caller, ApiError> {
        let caller = self.gate.authenticate(&parts.headers).await?;
        tracing::Span::current().record("caller", caller.name.as_str());
        Ok(caller)
    }

    async fn connector(
        &self,
        parts: Parts,
        body: Body,
        id: ConnectorId,
        api_path: &str,
    ) -> Result<Response, ApiError> {
        tracing::Span::current().record("connector", tracing::field::display(&id));
        let caller = self.caller(&parts).await?;
        self.gate.authorize(&caller, &id).await?;
        let entry = self
            .store
            .connector(&id)?
            .ok_or_else(|| ApiError::NotFound(format!("Connector {id} not found")))?;
        let method = parts.method.clone();
        let dispatch = dispatch::decide(entry.class.as_deref(), api_path, &method)?;
        let writes = matches!(
            method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        let writable = matches!(dispatch, Dispatch::Relay { .. }) && self.settings.allow_writes;
        let allowed = if writable { ALL_METHODS } else { READ_METHODS };
        let is_read = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !is_read && (!writes || !writable) {
            let message = match &dispatch {
                Dispatch::Resource(..) => format!("{method} is not allowed on a list resource"),
                Dispatch::Relay { .. } if writes => format!(
                    "{method} is not allowed: the API is read-only (writes to tools are off; its administrator can enable them)"
                ),
                Dispatch::Relay { .. } => format!("{method} is not allowed"),
            };
            return Err(ApiError::MethodNotAllowed {
                message,
                allow: allowed,
            });
        }
        if method == Method::OPTIONS {
            return Ok(options(allowed));
        }
        let head = method == Method::HEAD;
        match dispatch {
            Dispatch::Resource(resource, index) => {
                let v = self
                    .list(&entry, resource, index, parts.uri.query())
                    .await?;
                Ok(json_response(StatusCode::OK, &v, head))
            }
            Dispatch::Relay { address } => {
                let body = if writes {
                    axum::body::to_bytes(body, self.settings.max_request_bytes)
                        .await
                        .map_err(|_| {
                            ApiError::TooLarge(format!(
                                "the request body is larger than {} bytes (or broke off)",
                                self.settings.max_request_bytes
                            ))
                        })?
                } else {
                    Bytes::new()
                };
                let answer = self
                    .relay(&entry, &parts, address.as_deref(), api_path, body)
                    .await?;
                Ok(answer_response(&answer, head))
            }
        }
    }

    /// A declared list resource, one page of it.
    async fn list(
        &self,
        entry: &Entry,
        resource: &ApiResource,
        index: usize,
        raw_query: Option<&str>,
    ) -> Result<Value, ApiError> {
        let (params, query) = listing::split_query(raw_query)?;
        for p in &resource.parameters {
            if p.required && query.get(&p.name).is_none_or(String::is_empty) {
                return Err(ApiError::BadRequest(format!(
                    "parameter {} is required{}",
                    p.name,
                    p.description
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                )));
            }
        }
        let class = entry
            .class
            .as_ref()
            .and_then(|c| c.metadata.name.clone())
            .unwrap_or_default();
        let fields: Vec<String> = match (&resource.http, &resource.git_refs) {
            (Some(h), None) => h.fields.keys().cloned().collect(),
            (None, Some(_)) => gitrefs::FIELDS.iter().map(|s| (*s).to_owned()).collect(),
            _ => {
                return Err(ApiError::Internal(format!(
                    "ConnectorClass '{class}' spec.api.resources[{index}]: exactly one of http and gitRefs must be set; the class must be fixed"
                )));
            }
        };
        let key = Key {
            connector: entry.connector.id(),
            version: entry.version.clone(),
            request: format!("list {} {}", resource.path, canonical(&query)),
        };
        let items = match self.cache.get(&key) {
            Some(Cached::List(items)) => items,
            _ => {
                let tool = self.tool(entry).await?;
                let items = match (&resource.http, &resource.git_refs) {
                    (Some(h), _) => {
                        let req = declared::Request {
                            class: &class,
                            index,
                            query: &query,
                        };
                        declared::collect(&self.upstream, &tool, h, &req, &self.settings.limits)
                            .await?
                    }
                    (None, Some(g)) => gitrefs::collect(&self.upstream, &tool, g, &query).await?,
                    (None, None) => Vec::new(),
                };
                let items = Arc::new(items);
                self.cache.put(key, Cached::List(items.clone()));
                items
            }
        };
        let names: Vec<&str> = fields.iter().map(String::as_str).collect();
        listing::envelope(&items, &params, &names)
    }

    /// The tool's own API.
    async fn relay(
        &self,
        entry: &Entry,
        parts: &Parts,
        address: Option<&str>,
        api_path: &str,
        body: Bytes,
    ) -> Result<Answer, ApiError> {
        let cacheable = parts.method == Method::GET;
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let key = Key {
            connector: entry.connector.id(),
            version: entry.version.clone(),
            request: format!(
                "relay {api_path}?{} accept={accept}",
                parts.uri.query().unwrap_or_default()
            ),
        };
        if cacheable && let Some(Cached::Answer(a)) = self.cache.get(&key) {
            return Ok((*a).clone());
        }
        let tool = self.tool(entry).await?;
        let answer = relay::relay(
            &self.upstream,
            &tool,
            Relayed {
                method: parts.method.clone(),
                address,
                api_path,
                query: parts.uri.query(),
                headers: &parts.headers,
                body,
            },
        )
        .await?;
        if cacheable && answer.status.is_success() {
            self.cache
                .put(key, Cached::Answer(Arc::new(answer.clone())));
        }
        Ok(answer)
    }

    /// The Connector, ready to call its tool (its Secrets read now).
    async fn tool(&self, entry: &Entry) -> Result<Tool, ApiError> {
        let secrets = self.store.secrets(&entry.connector).await?;
        Tool::resolve(entry, &secrets)
    }

    /// The Connectors of a namespace that the caller may get.
    async fn list_connectors(
        &self,
        caller: &Caller,
        namespace: &str,
        raw_query: Option<&str>,
    ) -> Result<Value, ApiError> {
        let (params, _) = listing::split_query(raw_query)?;
        let mut items: Vec<Item> = Vec::new();
        for entry in self.store.connectors(namespace)? {
            let id = entry.connector.id();
            match self.gate.authorize(caller, &id).await {
                Ok(()) => items.push(connector_item(&entry)),
                Err(ApiError::Forbidden(_)) => {}
                Err(e) => return Err(e),
            }
        }
        listing::envelope(&items, &params, &["name", "className"])
    }
}

/// What the page and UIs need to know of a Connector (no Secret, no status).
fn connector_item(entry: &Entry) -> Item {
    let c = &entry.connector;
    let id = c.id();
    let resources: Vec<Value> = entry
        .class
        .as_ref()
        .and_then(|cl| cl.spec.api.as_ref())
        .map(|api| {
            api.resources
                .iter()
                .map(|r| {
                    json!({
                        "path": r.path,
                        "operationId": r.operation_id,
                        "kind": if r.git_refs.is_some() { "gitRefs" } else { "http" },
                        "parameters": r.parameters.iter().map(|p| json!({"name": p.name, "required": p.required})).collect::<Vec<_>>(),
                        "repositoryParam": r.git_refs.as_ref().map(|g| g.repository_param.clone().unwrap_or_else(|| "repositoryUrl".to_owned())),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut item = Item::new();
    item.insert("name".into(), json!(id.name));
    item.insert("namespace".into(), json!(id.namespace));
    item.insert("className".into(), json!(c.spec.connector_class_name));
    item.insert(
        "address".into(),
        json!(connectors_crd::address::redact(&c.spec.address)),
    );
    item.insert("apiPath".into(), json!(route::api_path(&id)));
    item.insert("resources".into(), Value::Array(resources));
    item
}

/// The query, canonical (sorted), for cache keys.
fn canonical(query: &BTreeMap<String, String>) -> String {
    query
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                crate::template::encode(k),
                crate::template::encode(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn read_only(method: &Method) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed {
            message: format!("{method} is not allowed: this endpoint is read-only"),
            allow: READ_METHODS,
        })
    }
}

fn options(allow: &'static str) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn json_response(status: StatusCode, v: &Value, head: bool) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let len = body.len();
    let mut r = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        if head { Vec::new() } else { body },
    )
        .into_response();
    if head {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

fn answer_response(a: &Answer, head: bool) -> Response {
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::from(a.body.clone())
    });
    *r.status_mut() = a.status;
    *r.headers_mut() = a.headers.clone();
    if head && !a.body.is_empty() {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(a.body.len()));
    }
    r
}
