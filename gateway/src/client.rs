//! Pooled HTTP/1.1 keep-alive connections to one worker's Unix socket.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;

/// A client whose every connection goes to one worker's socket.
pub type WorkerClient = Client<UnixConnector, UpstreamBody>;

/// A request body on its way to a worker: streamed from the client as it
/// arrives, or buffered (empty and small bodies), which lets the gateway
/// send the request again to another replica.
pub enum UpstreamBody {
    /// Streamed from the client, cut off past the service's size limit.
    Streaming(LimitedBody),
    /// Held in memory; `None` once sent.
    Buffered(Option<Bytes>),
}

/// A client's body with a size limit: past it, the stream ends in an error
/// and `exceeded` is set, so that the gateway can answer `413`. When the
/// client's own body is broken (bad chunking, cut short), `broken` is set,
/// so that the gateway answers `400` rather than blaming the replica.
pub struct LimitedBody {
    pub body: Incoming,
    pub remaining: u64,
    pub exceeded: Arc<AtomicBool>,
    pub broken: Arc<AtomicBool>,
}

/// The error a [`LimitedBody`] ends with past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the service's limit")]
pub struct BodyTooLarge;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Streaming(limited) => match Pin::new(&mut limited.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len > limited.remaining {
                        limited.exceeded.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    limited.remaining -= len;
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(error))) => {
                    limited.broken.store(true, Ordering::SeqCst);
                    Poll::Ready(Some(Err(Box::new(error))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            UpstreamBody::Buffered(bytes) => {
                Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(hyper::body::Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Streaming(limited) => limited.body.is_end_stream(),
            UpstreamBody::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            UpstreamBody::Streaming(limited) => limited.body.size_hint(),
            UpstreamBody::Buffered(bytes) => {
                hyper::body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Builds the pooled client for the worker listening on `socket`.
pub fn worker_client(socket: &Path) -> WorkerClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(UnixConnector { path: socket.into() })
}

/// Connects to a fixed Unix socket whatever the URI says.
#[derive(Clone, Debug)]
pub struct UnixConnector {
    path: Arc<Path>,
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = UnixIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UnixIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move { Ok(UnixIo(TokioIo::new(UnixStream::connect(&*path).await?))) })
    }
}

/// A Unix stream as hyper IO.
#[derive(Debug)]
pub struct UnixIo(TokioIo<UnixStream>);

impl Connection for UnixIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UnixIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UnixIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
