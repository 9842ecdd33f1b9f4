//! The token scopes a registry request needs, read from its method and path, so a token can be
//! fetched before a request whose body cannot be replayed is sent (distribution's token
//! specification: `repository:<name>:<actions>`).

use http::Method;

/// The scopes of a request to `path` (normalized, relative to the registry's root, e.g.
/// `/v2/team/app/blobs/uploads/`) with `query`: sorted, without duplicates. Paths that need no
/// repository (`/v2/`) or that are not the registry API give none.
pub fn derive(method: &Method, path: &str, query: Option<&str>) -> Vec<String> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Vec::new();
    };
    if rest == "_catalog" {
        return vec!["registry:catalog:*".to_owned()];
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let Some(name) = repository(&segments) else {
        return Vec::new();
    };
    let actions = if *method == Method::GET || *method == Method::HEAD {
        "pull"
    } else if *method == Method::DELETE {
        "delete"
    } else {
        "pull,push"
    };
    let mut scopes = vec![format!("repository:{name}:{actions}")];
    // A cross-repository mount reads the blob from another repository.
    if *method == Method::POST
        && let Some(from) = query.and_then(mount_source)
    {
        scopes.push(format!("repository:{from}:pull"));
    }
    scopes.sort();
    scopes.dedup();
    scopes
}

/// The repository name of an API path's segments (after `/v2/`), when it is a repository
/// route: `<name>/manifests/<ref>`, `<name>/blobs/<digest>`, `<name>/blobs/uploads/[<id>]`,
/// `<name>/tags/list`, `<name>/referrers/<digest>`.
fn repository(segments: &[&str]) -> Option<String> {
    let n = segments.len();
    let name_len = match segments {
        [.., "blobs", "uploads"] | [.., "blobs", "uploads", ""] => {
            n - if segments[n - 1].is_empty() { 3 } else { 2 }
        }
        [.., "blobs", "uploads", id] if !id.contains(':') => n - 3,
        [.., "blobs", digest] if digest.contains(':') => n - 2,
        [.., "manifests", reference] if !reference.is_empty() => n - 2,
        [.., "tags", "list"] => n - 2,
        [.., "referrers", digest] if digest.contains(':') => n - 2,
        _ => return None,
    };
    let name = &segments[..name_len];
    (!name.is_empty() && name.iter().all(|c| is_component(c))).then(|| name.join("/"))
}

/// A path component of a repository name: `[a-z0-9]+([._-][a-z0-9]+)*`.
fn is_component(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 255
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !c.starts_with(['.', '_', '-'])
        && !c.ends_with(['.', '_', '-'])
}

/// The `from` repository of `mount=<digest>&from=<name>`.
fn mount_source(query: &str) -> Option<String> {
    let mut mount = false;
    let mut from = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "mount" => mount = !v.is_empty(),
            "from" => {
                from = percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .ok()
                    .map(|s| s.into_owned())
            }
            _ => {}
        }
    }
    let from = from?;
    (mount && !from.is_empty() && from.split('/').all(is_component)).then_some(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(m: Method, p: &str, q: Option<&str>) -> Vec<String> {
        derive(&m, p, q)
    }

    #[test]
    fn scopes_by_route_and_method() {
        assert!(d(Method::GET, "/v2/", None).is_empty());
        assert_eq!(d(Method::GET, "/v2/_catalog", None), ["registry:catalog:*"]);
        assert_eq!(
            d(Method::POST, "/v2/team/app/blobs/uploads/", None),
            ["repository:team/app:pull,push"]
        );
        assert_eq!(
            d(
                Method::PATCH,
                "/v2/team/app/blobs/uploads/6f0c-41a2",
                Some("_state=abc")
            ),
            ["repository:team/app:pull,push"]
        );
        assert_eq!(
            d(Method::PUT, "/v2/app/manifests/v1", None),
            ["repository:app:pull,push"]
        );
        assert_eq!(
            d(Method::HEAD, "/v2/a/b/c/blobs/sha256:0123", None),
            ["repository:a/b/c:pull"]
        );
        assert_eq!(
            d(Method::GET, "/v2/app/tags/list", Some("n=10")),
            ["repository:app:pull"]
        );
        assert_eq!(
            d(Method::DELETE, "/v2/app/manifests/sha256:01", None),
            ["repository:app:delete"]
        );
        // A repository named like a route keyword.
        assert_eq!(
            d(Method::GET, "/v2/blobs/manifests/latest", None),
            ["repository:blobs:pull"]
        );
    }

    #[test]
    fn mounts_name_both_repositories() {
        assert_eq!(
            d(
                Method::POST,
                "/v2/team/app/blobs/uploads/",
                Some("mount=sha256%3A01&from=team%2Fbase")
            ),
            ["repository:team/app:pull,push", "repository:team/base:pull"]
        );
        // A `from` that is not a repository name adds nothing.
        assert_eq!(
            d(
                Method::POST,
                "/v2/app/blobs/uploads/",
                Some("mount=sha256:01&from=x%20repository:y:push")
            ),
            ["repository:app:pull,push"]
        );
    }

    #[test]
    fn other_paths_have_no_scope() {
        for p in [
            "/",
            "/v2",
            "/v2/app",
            "/v2/App/manifests/v1",
            "/v2//manifests/v1",
            "/v2/app/blobs/nodigest",
            "/api/v2.0/projects",
        ] {
            assert!(d(Method::GET, p, None).is_empty(), "{p}");
        }
    }
}
