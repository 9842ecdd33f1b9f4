//! The transparent listener: connections redirected to the proxy without the workload knowing.
//! Where each one was going (and from which workload) comes from an [`OriginalDst`] source: the
//! eBPF redirect's map, or netfilter's `SO_ORIGINAL_DST` for iptables `REDIRECT`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;

use connectors_crd::address::Scheme;
use tokio::net::{TcpListener, TcpStream};

use super::accept::{WhenFull, accept_loop};
use super::{ConnTarget, Listener, Shared, intercept};
use crate::workload::Destination;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no original destination recorded for {peer} -> {local}")]
    NotFound { peer: SocketAddr, local: SocketAddr },
    #[error("original destination lookup failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A source of original destinations.
pub trait OriginalDst: Send + Sync + 'static {
    fn lookup(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Destination, LookupError>;
}

/// Several sources, asked in order: the first that knows the connection answers (e.g. the eBPF
/// redirect's record, then netfilter's for connections an iptables `REDIRECT` sent).
pub struct FirstFound(pub Vec<Arc<dyn OriginalDst>>);

impl OriginalDst for FirstFound {
    fn lookup(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Destination, LookupError> {
        let mut last = LookupError::NotFound { peer, local };
        for source in &self.0 {
            match source.lookup(stream, peer, local) {
                Ok(d) => return Ok(d),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Netfilter's record of a `REDIRECT`ed or `DNAT`ed connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoOriginalDst;

impl OriginalDst for SoOriginalDst {
    fn lookup(
        &self,
        stream: &TcpStream,
        _peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Destination, LookupError> {
        let fd = stream.as_raw_fd();
        let addr = if local.is_ipv4() {
            let mut sa: libc::sockaddr_in = zeroed_v4();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: `sa` is a valid, writable sockaddr_in of `len` bytes for the kernel to fill.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_IP,
                    libc::SO_ORIGINAL_DST,
                    (&raw mut sa).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ))
        } else {
            let mut sa: libc::sockaddr_in6 = zeroed_v6();
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            // SAFETY: as above, for sockaddr_in6.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_IPV6,
                    libc::IP6T_SO_ORIGINAL_DST,
                    (&raw mut sa).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                0,
                0,
            ))
        };
        Ok(Destination {
            addr,
            workload: None,
        })
    }
}

fn zeroed_v4() -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: 0,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    }
}

fn zeroed_v6() -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: 0,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
        sin6_scope_id: 0,
    }
}

/// Accepts redirected connections until shutdown.
pub async fn serve_transparent(
    shared: Arc<Shared>,
    listener: TcpListener,
    origin: Arc<dyn OriginalDst>,
) {
    let own = listener.local_addr().ok();
    accept_loop(&shared, listener, "transparent", WhenFull::Close, |stream, peer, activity| {
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "accepted socket has no local address");
                return None;
            }
        };
        let dest = match origin.lookup(&stream, peer, local) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(%peer, error = %e, "closing a connection with no known destination");
                shared.metrics.refusal("no-original-destination");
                return None;
            }
        };
        if Some(dest.addr) == own || dest.addr == local {
            tracing::info!(%peer, "closing a connection addressed to the proxy itself");
            shared.metrics.refusal("loop");
            return None;
        }
        let target = ConnTarget {
            peer,
            scheme: Scheme::Http,
            host: None,
            port: dest.addr.port(),
            workload: dest.workload,
            listener: Listener::Transparent,
            original: Some(dest.addr),
            pod: dest.workload.and_then(|w| shared.pod_by_workload(&w)),
            activity,
        };
        let span = tracing::debug_span!("conn", listener = "transparent", %peer, dest = %dest.addr);
        let fallback = dest.addr.ip().to_string();
        Some((
            intercept::serve_socket(shared.clone(), stream, target, fallback),
            span,
        ))
    })
    .await;
}
