//! Request paths as the tool will resolve them, so that a Connector's path prefix holds.
//!
//! A Connector for `https://git.corp/team` must never lend its credentials to a request that the
//! server resolves outside `/team`: `/team/../other`, `/team/%2e%2e/other`, `/team/..%2fother`,
//! `/team//../other` under nginx's `merge_slashes`, `/team/..;/other` under Tomcat, and so on.
//!
//! Every request path is read two ways:
//! - **strict** (RFC 3986): percent-encoded unreserved characters decoded (section 6.2.2.2), hex
//!   digits upper-cased, dot segments removed (5.2.4). `%2F` stays data inside its segment.
//!   This is the path that is matched and the only one ever sent upstream.
//! - **loose**: what the most lenient server could make of it: `%2F`, `%5C` and `\` as `/`,
//!   `%25` decoded once more, `;params` cut from each segment, empty segments merged, then
//!   dot segments removed.
//!
//! A prefix covers a request only when it covers both readings; when exactly one reading is
//! covered the encoding is ambiguous and the request is refused.

use std::fmt;

/// A request path read both ways (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPath {
    strict: String,
    loose: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error(
        "the request path has a malformed percent-encoding (a '%' not followed by two hex digits)"
    )]
    BadEncoding,
}

/// How a path prefix relates to a request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Both readings are under the prefix.
    Inside,
    /// Neither reading is.
    Outside,
    /// One reading is under the prefix and the other is not: a server could resolve the path
    /// either way, so it is neither served with credentials nor called outside.
    Ambiguous,
}

impl RequestPath {
    /// Reads a request path (percent-encoded, without the query).
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let raw = if raw.is_empty() { "/" } else { raw };
        if !raw.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        let decoded = decode_unreserved(raw)?;
        let strict = remove_dot_segments(&decoded);
        let loose = loose_reading(&decoded);
        Ok(Self { strict, loose })
    }

    /// The normalized path: what is matched, and what goes upstream.
    pub fn as_str(&self) -> &str {
        &self.strict
    }

    /// How `prefix` (normalized, no trailing slash; `""` for the whole host) covers this path.
    pub fn coverage(&self, prefix: &str) -> Coverage {
        match (
            under_prefix(&self.strict, prefix),
            under_prefix(&self.loose, prefix),
        ) {
            (true, true) => Coverage::Inside,
            (false, false) => Coverage::Outside,
            _ => Coverage::Ambiguous,
        }
    }
}

impl fmt::Display for RequestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.strict)
    }
}

/// Normalizes a Connector's path prefix the way request paths are normalized (strict reading,
/// no trailing slash), so that the two compare byte for byte.
pub fn normalize_prefix(path: &str) -> Result<String, PathError> {
    let p = RequestPath::parse(path)?;
    Ok(p.strict.trim_end_matches('/').to_owned())
}

/// Segment-wise prefix test: `/team` covers `/team` and `/team/x`, not `/teammate`.
fn under_prefix(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` of unreserved characters, upper-cases the hex of the others.
fn decode_unreserved(s: &str) -> Result<String, PathError> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEncoding);
            };
            let v = hi * 16 + lo;
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
        } else {
            // `s` is a str: a non-ASCII byte starts a whole character, copied as is.
            let ch_len = utf8_len(b[i]);
            out.push_str(s.get(i..i + ch_len).unwrap_or_default());
            i += ch_len.max(1);
        }
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// The lenient reading of an already strict-decoded path.
fn loose_reading(decoded: &str) -> String {
    // `%25` once more (a server that decodes twice), then the separators a lenient server honours.
    let twice = decode_percent_25(decoded);
    let mut s = String::with_capacity(twice.len());
    let b = twice.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                s.push('/');
                i += 1;
            }
            b'%' if b.get(i + 1) == Some(&b'2') && matches!(b.get(i + 2), Some(b'F' | b'f')) => {
                s.push('/');
                i += 3;
            }
            b'%' if b.get(i + 1) == Some(&b'5') && matches!(b.get(i + 2), Some(b'C' | b'c')) => {
                s.push('/');
                i += 3;
            }
            _ => {
                let ch_len = utf8_len(b[i]);
                s.push_str(twice.get(i..i + ch_len).unwrap_or_default());
                i += ch_len.max(1);
            }
        }
    }
    // `;params` cut from every segment, empty segments merged.
    let trailing = s.ends_with('/');
    let segments: Vec<&str> = s
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or_default())
        .filter(|seg| !seg.is_empty())
        .collect();
    let mut merged = String::with_capacity(s.len());
    for seg in &segments {
        merged.push('/');
        merged.push_str(seg);
    }
    if merged.is_empty() || trailing {
        merged.push('/');
    }
    remove_dot_segments(&merged)
}

/// Decodes `%25XX` to `%XX`'s character when that is unreserved or a separator, as a server
/// that decodes twice would.
fn decode_percent_25(s: &str) -> String {
    if !s.contains("%25") {
        return s.to_owned();
    }
    let once = s.replace("%25", "%");
    match decode_unreserved(&once) {
        Ok(d) => d,
        // `%25` followed by something that is not hex: a single decode is all there is.
        Err(_) => s.to_owned(),
    }
}

/// RFC 3986 5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let body = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(p: &str) -> String {
        RequestPath::parse(p).unwrap().as_str().to_owned()
    }

    fn cov(p: &str) -> Coverage {
        RequestPath::parse(p).unwrap().coverage("/team")
    }

    #[test]
    fn rfc3986_dot_segments() {
        // RFC 3986 5.4 examples, on the path part.
        assert_eq!(strict("/a/b/c/./../../g"), "/a/g");
        assert_eq!(strict("/mid/content=5/../6"), "/mid/6");
        assert_eq!(strict("/a/b/."), "/a/b/");
        assert_eq!(strict("/a/b/.."), "/a/");
        assert_eq!(strict("/../../x"), "/x");
        assert_eq!(strict("/"), "/");
        assert_eq!(strict(""), "/");
        assert_eq!(strict("/a//b"), "/a//b");
        assert_eq!(strict("/a/..."), "/a/...");
    }

    #[test]
    fn unreserved_are_decoded_and_hex_upper_cased() {
        assert_eq!(strict("/%7Euser/%61pp"), "/~user/app");
        assert_eq!(strict("/a%2fb"), "/a%2Fb");
        assert_eq!(strict("/a%20b"), "/a%20b");
        assert_eq!(strict("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(strict("/é"), "/é");
        assert_eq!(
            RequestPath::parse("/a%2").unwrap_err(),
            PathError::BadEncoding
        );
        assert_eq!(
            RequestPath::parse("/a%zz").unwrap_err(),
            PathError::BadEncoding
        );
        assert_eq!(
            RequestPath::parse("team").unwrap_err(),
            PathError::NotAbsolute
        );
    }

    #[test]
    fn inside_the_prefix() {
        for p in [
            "/team",
            "/team/",
            "/team/app.git/info/refs",
            "/team/./app.git",
            "/team/x/../app.git",
            "/team/%61pp.git",
            "/team/a%2Fb",
            "/team/a;v=1/b",
        ] {
            assert_eq!(cov(p), Coverage::Inside, "{p}");
        }
    }

    #[test]
    fn escapes_are_outside() {
        for p in [
            "/team/../other/repo.git",
            "/team/./../other",
            "/team/%2e%2e/other",
            "/team/.%2e/other",
            "/team/%2E%2E/other",
            "/team/app/../../other",
            "/team/..",
            "/teammate/x",
            "/other",
            "/%74eam/../other",
        ] {
            assert_eq!(cov(p), Coverage::Outside, "{p}");
        }
    }

    #[test]
    fn encodings_a_server_may_read_otherwise_are_ambiguous() {
        for p in [
            "/team/..%2fother",
            "/team/..%2Fother",
            "/team/%2E%2E%2Fother",
            "/team/a%2F..%2F..%2Fother",
            "/team/..%5cother",
            "/team/..\\other",
            "/team//../other",
            "/team/..;/other",
            "/team/%252e%252e/other",
            "/team/%252e%252e%252fother",
        ] {
            assert_eq!(cov(p), Coverage::Ambiguous, "{p}");
        }
    }

    #[test]
    fn whole_host_prefix_covers_everything() {
        let p = RequestPath::parse("/a/../..%2f").unwrap();
        assert_eq!(p.coverage(""), Coverage::Inside);
    }

    #[test]
    fn prefixes_normalize_like_paths() {
        assert_eq!(normalize_prefix("/team/").unwrap(), "/team");
        assert_eq!(normalize_prefix("/%7Eteam").unwrap(), "/~team");
        assert_eq!(normalize_prefix("/").unwrap(), "");
        assert_eq!(normalize_prefix("").unwrap(), "");
    }
}
