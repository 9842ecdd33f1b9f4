//! The accept loop both listeners share: admission (connection caps), TCP_NODELAY, and the
//! connection's liveness (it is closed once its [`Activity`] expires).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use super::Shared;
use super::admission::Full;
use super::idle::Activity;
use super::refusal::REFUSAL_HEADER;

/// What a listener says to a connection over its caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// An HTTP 503 naming the cap (the explicit proxy: its clients speak HTTP first).
    Answer503,
    /// Close at once (redirected connections may be TLS; they see a reset).
    Close,
}

/// Accepts connections until shutdown. Each one is admitted (or refused, see [`WhenFull`]),
/// gets TCP_NODELAY, is counted, and goes to `serve` with its [`Activity`]; `serve` returns the
/// connection's future and span (or `None` to close it). The future runs in a task of its own,
/// tracked so shutdown can wait for it, and is dropped (closing the connection) when the
/// connection has been silent or idle past its timeouts.
pub async fn accept_loop<F, Fut>(
    shared: &Arc<Shared>,
    listener: TcpListener,
    name: &'static str,
    when_full: WhenFull,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Arc<Activity>) -> Option<(Fut, tracing::Span)>,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors or memory: back off rather than spin.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let lease = match shared.admission.admit(peer.ip()) {
            Ok(l) => l,
            Err(full) => {
                refuse(shared, &stream, name, peer, full, when_full);
                continue;
            }
        };
        shared.metrics.connection(name);
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let activity = Activity::new(shared.settings.timeouts, lease);
        if let Some((conn, span)) = serve(stream, peer, activity.clone()) {
            let metrics = shared.metrics.clone();
            shared.tasks.spawn(
                async move {
                    tokio::select! {
                        () = conn => {}
                        () = activity.expired() => {
                            if activity.in_head() {
                                // A client that connected and did not complete its TLS
                                // handshake and request head in time: an attack, or a client
                                // starved of CPU. Either way it shows.
                                tracing::info!("closing a connection with no complete request head within the header timeout");
                                metrics.refusal("header-timeout");
                            } else {
                                tracing::debug!("closing an idle connection");
                            }
                        }
                    }
                }
                .instrument(span),
            );
        }
    }
}

/// Turns away a connection over a cap, with a log line at most once a second.
fn refuse(
    shared: &Shared,
    stream: &TcpStream,
    listener: &'static str,
    peer: SocketAddr,
    full: Full,
    when_full: WhenFull,
) {
    shared.metrics.refusal("connection-limit");
    static LAST_LOG: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_LOG.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(listener, %peer, "refused a connection: {full}");
    }
    if when_full == WhenFull::Answer503 {
        let body = format!("connectors: {full}\n");
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n{REFUSAL_HEADER}: connection-limit\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        // One attempt, never waiting: a fresh socket's send buffer takes it whole.
        let _ = stream.try_write(resp.as_bytes());
    }
}
