//! A page for UI developers, served by the API itself at `/connectors/ui/`: plain HTML and JS,
//! embedded at build time (no build step, no network). It calls only this API, with the token
//! typed into it (or given in the URL fragment, `#token=...`, which never reaches a server):
//! a Connector picker for a namespace, then, as the Connector's class declares them, a
//! repository and branch/tag pickers (Git), repository and tag pickers (OCI), or the items of
//! any other list resource, each with search and paging.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// `/connectors/ui` to `/connectors/ui/`.
pub async fn to_index() -> Redirect {
    Redirect::permanent("/connectors/ui/")
}

pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => file("text/javascript; charset=utf-8", APP),
        "style.css" => file("text/css; charset=utf-8", STYLE),
        "index.html" => file("text/html; charset=utf-8", INDEX),
        _ => crate::ApiError::NotFound(format!(
            "the page has no file '{}'",
            crate::route::shorten(&name)
        ))
        .into_response(),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page runs only its own script and talks only to this API.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
