//! A connection bound for a tool (a `CONNECT` tunnel or a redirected socket): TLS is terminated
//! with a certificate minted for the server name, then HTTP/1.1 or HTTP/2 is served, each request
//! going to the handler.

use std::sync::Arc;

use bytes::Bytes;
use connectors_crd::address::Scheme;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::idle::{Guarded, Watched};
use super::passthrough;
use super::rewind::Rewind;
use super::{ConnTarget, Shared, handler};

/// Concurrent HTTP/2 streams per workload connection: each may hold an upstream connection.
const MAX_STREAMS: u32 = 128;

/// First byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves a `CONNECT` tunnel: its first byte is read (and replayed) to tell TLS from plain HTTP.
/// A tunnel that stays silent for the header timeout after its `200` is closed.
pub async fn serve_tunnel<IO>(
    shared: Arc<Shared>,
    mut io: IO,
    target: ConnTarget,
    fallback_host: String,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; 1];
    let wait = shared.settings.timeouts.header;
    match tokio::time::timeout(wait, io.read(&mut first)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(_)) => {
            let io = Rewind::new(io, Bytes::copy_from_slice(&first));
            serve(shared, io, first[0], target, fallback_host).await;
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "tunnel closed before its first byte"),
        Err(_) => tracing::debug!("closing a tunnel silent after its CONNECT"),
    }
}

/// Serves a redirected socket: its first byte is peeked, not consumed, so the TLS or HTTP layer
/// reads the whole first message in one go. A TLS connection for a name no Connector serves on
/// this port is passed through to its destination untouched (see [`passthrough`]).
pub async fn serve_socket(
    shared: Arc<Shared>,
    stream: TcpStream,
    target: ConnTarget,
    fallback_host: String,
) {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => {}
        Ok(_) => {
            if first[0] == TLS_HANDSHAKE
                && let Some(to) = target.original
            {
                let hello = passthrough::peek_hello(&stream, shared.settings.timeouts.header).await;
                let name = match &hello {
                    passthrough::Hello::Tls { server_name } => {
                        server_name.clone().unwrap_or_else(|| fallback_host.clone())
                    }
                    passthrough::Hello::Unreadable => fallback_host.clone(),
                };
                if !shared.catalog.load().covers_endpoint(&name, target.port) {
                    shared.metrics.passed_through();
                    tracing::debug!(server_name = %name, %to, "no Connector serves this name: passed through");
                    // Spliced: in flight for as long as it lasts (never closed as idle).
                    let _busy = target.activity.begin();
                    match passthrough::splice(stream, to, shared.settings.connect_timeout).await {
                        Ok((sent, received)) => {
                            tracing::debug!(sent, received, "passed-through connection closed")
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, %to, "passed-through connection ended")
                        }
                    }
                    return;
                }
            }
            let io = Watched::new(stream, target.activity.clone());
            serve(shared, io, first[0], target, fallback_host).await;
        }
        Err(e) => tracing::debug!(error = %e, "connection closed before its first byte"),
    }
}

/// Serves a connection to its end. `target.scheme` is set here from what the workload speaks
/// (`first` is the first byte it sent). `fallback_host` names the certificate when the workload
/// sends no server name.
async fn serve<IO>(
    shared: Arc<Shared>,
    io: IO,
    first: u8,
    mut target: ConnTarget,
    fallback_host: String,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if first != TLS_HANDSHAKE {
        target.scheme = Scheme::Http;
        serve_http(shared, io, target).await;
        return;
    }
    target.scheme = Scheme::Https;
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        let name = sni
            .clone()
            .or_else(|| target.host.clone())
            .unwrap_or(fallback_host);
        let config = shared
            .leaves
            .server_config(&name)
            .map_err(std::io::Error::other)?;
        let stream = start.into_stream(config).await?;
        Ok::<_, std::io::Error>((stream, name))
    };
    let (tls, name) = match tokio::time::timeout(shared.settings.handshake_timeout, handshake).await
    {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "TLS handshake with the workload failed");
            shared.metrics.refusal("tls-handshake");
            return;
        }
        Err(_) => {
            tracing::info!("TLS handshake with the workload timed out");
            shared.metrics.refusal("tls-handshake");
            return;
        }
    };
    // A CONNECT tunnel is for its CONNECT host; a redirected socket for the name it asked for.
    target.host.get_or_insert(name);
    serve_http(shared, tls, target).await;
}

async fn serve_http<IO>(shared: Arc<Shared>, io: IO, target: ConnTarget)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = Arc::new(target);
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let target = target.clone();
        async move {
            let busy = target.activity.begin();
            let resp = handler::handle(&shared, &target, req).await;
            Ok::<_, std::convert::Infallible>(resp.map(|b| Guarded::new(b, busy)))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No HTTP/1 timer: re-arming its header-read timeout on every request costs a wakeup of the
    // runtime (a syscall pair) per request.
    // The connection's timeouts are kept by its `Activity` (see `idle`).
    builder.http1().keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .max_concurrent_streams(MAX_STREAMS);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "workload connection ended with an error");
    }
}
