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

use super::rewind::Rewind;
use super::{ConnTarget, Shared, handler};

/// First byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves a `CONNECT` tunnel: its first byte is read (and replayed) to tell TLS from plain HTTP.
pub async fn serve_tunnel<IO>(
    shared: Arc<Shared>,
    mut io: IO,
    target: ConnTarget,
    fallback_host: String,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; 1];
    match io.read(&mut first).await {
        Ok(0) => {}
        Ok(_) => {
            let io = Rewind::new(io, Bytes::copy_from_slice(&first));
            serve(shared, io, first[0], target, fallback_host).await;
        }
        Err(e) => tracing::debug!(error = %e, "tunnel closed before its first byte"),
    }
}

/// Serves a redirected socket: its first byte is peeked, not consumed, so the TLS or HTTP layer
/// reads the whole first message in one go.
pub async fn serve_socket(
    shared: Arc<Shared>,
    stream: TcpStream,
    target: ConnTarget,
    fallback_host: String,
) {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => {}
        Ok(_) => serve(shared, stream, first[0], target, fallback_host).await,
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
        async move { Ok::<_, std::convert::Infallible>(handler::handle(&shared, &target, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No HTTP/1 timer: re-arming its header-read timeout on every request costs a wakeup of the
    // runtime (a syscall pair) per request, a tenth of the proxy's whole cost on small requests.
    builder.http1().keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .adaptive_window(true);
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
