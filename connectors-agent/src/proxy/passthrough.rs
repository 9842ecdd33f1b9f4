//! Redirected TLS connections that no Connector serves go on to their destination untouched.
//!
//! The eBPF redirect matches by address and port, so connections for other names on a tool's
//! address (a CDN, a shared ingress) reach the agent too. Their TLS ClientHello is read without
//! consuming it (`MSG_PEEK`); when its server name is not one a Connector serves on that port,
//! the connection is spliced byte for byte to the original destination: no certificate is minted,
//! no TLS is terminated, the workload talks to the real server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Largest ClientHello peeked at (one TLS record holds at most 16 KiB of handshake).
const MAX_HELLO: usize = 16 * 1024 + 5;
/// How long to wait between peeks while a ClientHello arrives in pieces.
const PEEK_PAUSE: Duration = Duration::from_millis(2);

/// What the start of a TLS connection says.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello, with its server name (SNI) if it sent one.
    Tls { server_name: Option<String> },
    /// Not a TLS ClientHello the agent can read.
    Unreadable,
}

/// Reads the ClientHello at the start of `stream` without consuming it, within `within`.
pub async fn peek_hello(stream: &TcpStream, within: Duration) -> Hello {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; MAX_HELLO];
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Hello::Unreadable,
        };
        if n == 0 {
            return Hello::Unreadable;
        }
        let mut acceptor = rustls::server::Acceptor::default();
        let mut rd: &[u8] = &buf[..n];
        if acceptor.read_tls(&mut rd).is_err() {
            return Hello::Unreadable;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Hello::Tls {
                    server_name: accepted.client_hello().server_name().map(str::to_owned),
                };
            }
            // Not all of it yet: wait for more bytes (peek returns what is there at once).
            Ok(None) if n < MAX_HELLO => {
                if n == last {
                    tokio::time::sleep(PEEK_PAUSE).await;
                }
                last = n;
                if tokio::time::Instant::now() >= deadline {
                    return Hello::Unreadable;
                }
            }
            _ => return Hello::Unreadable,
        }
    }
}

/// Splices `stream` to `to` until either side closes. Returns the bytes each way.
pub async fn splice(
    mut stream: TcpStream,
    to: SocketAddr,
    connect_timeout: Duration,
) -> std::io::Result<(u64, u64)> {
    let mut upstream = tokio::time::timeout(connect_timeout, TcpStream::connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// A real ClientHello, as rustls sends it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            name.to_owned().try_into().unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn the_server_name_is_read_without_consuming_it_even_in_pieces() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hello = client_hello("cdn.example");
        let sent = hello.clone();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let (a, b) = sent.split_at(sent.len() / 2);
            s.write_all(a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            s.write_all(b).await.unwrap();
            s
        });
        let (server, _) = l.accept().await.unwrap();
        let got = peek_hello(&server, Duration::from_secs(2)).await;
        assert_eq!(
            got,
            Hello::Tls {
                server_name: Some("cdn.example".into())
            }
        );
        // Still all there for whoever reads next.
        let mut buf = vec![0u8; hello.len()];
        let n = server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &hello[..n]);
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn plain_text_is_not_a_hello() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"\x16GET / HTTP/1.1\r\n\r\n").await.unwrap();
            s
        });
        let (server, _) = l.accept().await.unwrap();
        assert_eq!(
            peek_hello(&server, Duration::from_millis(300)).await,
            Hello::Unreadable
        );
        drop(client.await.unwrap());
    }
}
