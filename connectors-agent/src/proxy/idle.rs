//! Liveness of workload connections: a connection that sends nothing, or takes too long to send
//! a request head, or sits idle between requests, is closed.
//!
//! - From accept (or the end of the last response) a connection has `idle` to start its next
//!   request; once its first byte arrives, it has `header` to complete the head (HTTP/1) or the
//!   TLS handshake and head. A request being served (or an upgraded connection) is never timed
//!   out here: the upstream timeouts and the drain cover those.
//! - The first request on a new connection gets `header` alone: a client that connects and is
//!   silent is closed after `header`.
//!
//! No timer is armed per request (that costs the runtime a wakeup per request): each connection
//! has one sleep, re-armed only when its deadline passes, and the IO and the request handler just
//! move the deadline with a relaxed atomic store.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::admission::Lease;

/// The timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From a request's first byte to its complete head (TLS handshake included), and from
    /// accept to the first request's head.
    pub header: Duration,
    /// Between requests on a keep-alive connection.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(base().elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One workload connection's activity. Shared by its IO, its requests and its tunnel.
#[derive(Debug)]
pub struct Activity {
    timeouts: Timeouts,
    /// When the connection times out unless a request is in flight (ms since [`base`]).
    deadline: AtomicU64,
    /// Requests being served plus upgraded streams.
    busy: AtomicU32,
    /// Bytes of the next request arrived since the connection went idle.
    head_started: AtomicBool,
    _lease: Lease,
}

/// Marks a request (or an upgraded stream) in flight; dropping it starts the idle time.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Activity {
    pub fn new(timeouts: Timeouts, lease: Lease) -> Arc<Self> {
        Arc::new(Self {
            timeouts,
            deadline: AtomicU64::new(now_ms().saturating_add(ms(timeouts.header))),
            busy: AtomicU32::new(0),
            // A new connection is held to the header timeout from the start.
            head_started: AtomicBool::new(true),
            _lease: lease,
        })
    }

    /// Bytes arrived from the workload.
    fn on_read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 && !self.head_started.load(Ordering::Relaxed) {
            self.head_started.store(true, Ordering::Relaxed);
            let head = now_ms().saturating_add(ms(self.timeouts.header));
            self.deadline.fetch_min(head, Ordering::Relaxed);
        }
    }

    /// Whether the connection is (or was, when it expired) within a request head or its TLS
    /// handshake, rather than idle between requests.
    pub fn in_head(&self) -> bool {
        self.head_started.load(Ordering::Relaxed)
    }

    /// A request (or upgraded stream) starts.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves when the connection has outlived its deadline with nothing in flight.
    pub async fn expired(&self) {
        loop {
            let now = now_ms();
            let next = if self.busy.load(Ordering::Relaxed) > 0 {
                now.saturating_add(ms(self.timeouts.idle))
            } else {
                let d = self.deadline.load(Ordering::Relaxed);
                if now >= d {
                    return;
                }
                d
            };
            let at = base() + Duration::from_millis(next);
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        if a.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            a.head_started.store(false, Ordering::Relaxed);
            a.deadline.store(
                now_ms().saturating_add(ms(a.timeouts.idle)),
                Ordering::Relaxed,
            );
        }
    }
}

/// The workload side of a connection: reads move its [`Activity`].
pub struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    pub fn new(inner: IO, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request marked in flight until it has been sent whole (or
/// dropped).
pub struct Guarded<B> {
    inner: B,
    busy: Option<Busy>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, busy: Busy) -> Self {
        Self {
            inner,
            busy: Some(busy),
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.busy = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::admission::{Admission, Caps};

    fn activity(header_ms: u64, idle_ms: u64) -> Arc<Activity> {
        let a = Admission::new(Caps {
            total: 10,
            per_peer: 10,
        });
        let lease = a.admit("10.0.0.1".parse().unwrap()).unwrap();
        Activity::new(
            Timeouts {
                header: Duration::from_millis(header_ms),
                idle: Duration::from_millis(idle_ms),
            },
            lease,
        )
    }

    #[tokio::test]
    async fn a_silent_connection_expires_after_the_header_timeout() {
        let a = activity(50, 10_000);
        let t = Instant::now();
        a.expired().await;
        assert!(
            t.elapsed() >= Duration::from_millis(45),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_request_in_flight_never_expires_and_idle_time_starts_after() {
        let a = activity(20, 100);
        let busy = a.begin();
        let r = tokio::time::timeout(Duration::from_millis(200), a.expired()).await;
        assert!(r.is_err(), "expired while busy");
        drop(busy);
        let t = Instant::now();
        a.expired().await;
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn bytes_of_a_new_request_start_the_header_timeout() {
        let a = activity(30, 10_000);
        drop(a.begin());
        a.on_read();
        let t = Instant::now();
        a.expired().await;
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
}
