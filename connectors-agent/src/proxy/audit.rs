//! The audit trail: one structured log line (target `connectors_agent::audit`) per request that
//! got a Connector's credentials, written once its response has been sent whole (or broke off):
//! who (pod, ServiceAccount, or the peer standalone), which Connector, method, host, path,
//! status, response bytes, duration. Never a credential, never a query (it may hold one).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// What is known of a request that got credentials.
#[derive(Debug)]
pub struct Record {
    pub pod: Option<String>,
    pub service_account: Option<String>,
    pub peer: String,
    pub connector: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub started: Instant,
}

impl Record {
    fn write(&self, bytes: u64) {
        tracing::info!(
            target: "connectors_agent::audit",
            pod = self.pod.as_deref().unwrap_or("-"),
            service_account = self.service_account.as_deref().unwrap_or("-"),
            peer = %self.peer,
            connector = %self.connector,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = self.status,
            bytes,
            ms = self.started.elapsed().as_millis() as u64,
            "credentials used"
        );
    }
}

/// A response body that writes its request's audit line when it ends.
pub struct Audited<B> {
    inner: B,
    record: Option<Box<Record>>,
    bytes: u64,
}

impl<B> Audited<B> {
    pub fn new(inner: B, record: Option<Record>) -> Self {
        Self {
            inner,
            record: record.map(Box::new),
            bytes: 0,
        }
    }

    /// A body with nothing to audit.
    pub fn plain(inner: B) -> Self {
        Self::new(inner, None)
    }
}

impl<B> Body for Audited<B>
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
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(rec) = self.record.take() {
                    rec.write(self.bytes);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(rec) = self.record.take() {
                    rec.write(self.bytes);
                }
            }
            Poll::Pending => {}
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

impl<B> Drop for Audited<B> {
    fn drop(&mut self) {
        // A body sent whole in one frame may never be polled to its end, and one dropped early
        // broke off: the line is written here then, once.
        if let Some(rec) = self.record.take() {
            rec.write(self.bytes);
        }
    }
}
