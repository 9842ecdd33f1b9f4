//! Bodies the proxy passes on: streamed as they come, or, when small, held whole first.
//!
//! A small body that is streamed leaves after its head in a second write, and the peer wakes
//! twice for one message. Holding bodies of a known small length lets head and body leave in one
//! write; every other body (unknown length, large, or a long-lived stream such as a watch) is
//! streamed untouched, so memory stays bounded.

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;

/// A body the proxy sends: the peer's, streamed, or one held (or written) whole.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Bodies with a `Content-Length` up to this many bytes are held whole.
pub const COALESCE_LIMIT: u64 = 64 * 1024;

/// The body, held whole when its `Content-Length` is at most [`COALESCE_LIMIT`].
pub async fn coalesce(headers: &HeaderMap, body: Incoming) -> Result<Body, hyper::Error> {
    match content_length(headers) {
        Some(n) if n <= COALESCE_LIMIT => {
            Ok(Either::Right(Full::new(body.collect().await?.to_bytes())))
        }
        _ => Ok(Either::Left(body)),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next()?.to_str().ok()?.trim().parse().ok()?;
    // Several differing values: leave the body alone, the HTTP layer judges it.
    values.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_read_once() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(CONTENT_LENGTH, "42".parse().unwrap());
        assert_eq!(content_length(&h), Some(42));
        h.append(CONTENT_LENGTH, "43".parse().unwrap());
        assert_eq!(content_length(&h), None);
    }
}
