//! The accept loop both listeners share.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use super::Shared;

/// Accepts connections until shutdown. Each gets TCP_NODELAY, is counted, and goes to `serve`,
/// which returns the connection's future and span (or `None` to close it); the future runs in a
/// task of its own, tracked so shutdown can wait for it.
pub async fn accept_loop<F, Fut>(
    shared: &Arc<Shared>,
    listener: TcpListener,
    name: &'static str,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Option<(Fut, tracing::Span)>,
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
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.metrics.connection(name);
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if let Some((conn, span)) = serve(stream, peer) {
            shared.tasks.spawn(conn.instrument(span));
        }
    }
}
