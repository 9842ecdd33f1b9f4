//! The data path's threads. Each worker runs its own single-threaded runtime with its own
//! listening sockets (`SO_REUSEPORT`: the kernel spreads new connections over the workers) and
//! its own upstream pools, so a connection, its requests and the upstream connections serving
//! them stay on one thread. A request costs no cross-thread wakeup, and workers share nothing on
//! the hot path but the catalog (one atomic load per request).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::proxy::{self, OriginalDst, Shared};

/// Binds `n` sockets on `addr` with `SO_REUSEPORT`, ready to hand to workers.
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        let l: std::net::TcpListener = s.into();
        // With port 0 the first socket picks the port; the others join it.
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// The running workers.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What one worker serves.
struct Work {
    forward: Option<std::net::TcpListener>,
    transparent: Option<(std::net::TcpListener, Arc<dyn OriginalDst>)>,
}

impl Workers {
    /// Starts one worker per forward-proxy socket; the transparent sockets, if any, are shared
    /// out alike. After shutdown each worker waits up to `drain` for open connections.
    pub fn start(
        shared: &Arc<Shared>,
        forward: Vec<std::net::TcpListener>,
        transparent: Vec<std::net::TcpListener>,
        origin: Option<Arc<dyn OriginalDst>>,
        drain: Duration,
    ) -> std::io::Result<Self> {
        let n = forward.len().max(transparent.len());
        let mut forward = forward.into_iter();
        let mut transparent = transparent.into_iter();
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let work = Work {
                forward: forward.next(),
                transparent: transparent
                    .next()
                    .and_then(|l| origin.clone().map(|o| (l, o))),
            };
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || run(shared, work, drain))?;
            threads.push(handle);
        }
        Ok(Self { threads })
    }

    /// Waits for every worker to finish (call after shutdown was signalled).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

fn run(shared: Arc<Shared>, work: Work, drain: Duration) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let forward = async {
            if let Some(l) = work.forward {
                match TcpListener::from_std(l) {
                    Ok(l) => proxy::serve_forward(shared.clone(), l).await,
                    Err(e) => tracing::error!(error = %e, "forward listener unusable"),
                }
            }
        };
        let transparent = async {
            if let Some((l, origin)) = work.transparent {
                match TcpListener::from_std(l) {
                    Ok(l) => proxy::serve_transparent(shared.clone(), l, origin).await,
                    Err(e) => tracing::error!(error = %e, "transparent listener unusable"),
                }
            }
        };
        tokio::join!(forward, transparent);
        // Accepting stopped: shutdown. This runtime holds its connections' tasks; keep it
        // running until they finish (or the drain time is up).
        let _ = tokio::time::timeout(drain, shared.tasks.wait()).await;
    });
}
