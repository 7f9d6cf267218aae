//! A client's request body on its way to a worker, with the service's size
//! limit.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;

/// A client's body with a size limit: past it, the stream ends in an error
/// and `exceeded` is set, so that the gateway can answer `413`. When the
/// client's own body is broken (bad chunking, cut short), `broken` is set,
/// so that the gateway answers `400` rather than blaming the replica.
pub struct LimitedBody<B = Incoming> {
    pub body: B,
    pub remaining: u64,
    pub exceeded: Arc<AtomicBool>,
    pub broken: Arc<AtomicBool>,
}

/// The error a [`LimitedBody`] ends with past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the service's limit")]
pub struct BodyTooLarge;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> hyper::body::Body for LimitedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let limited = self.get_mut();
        match Pin::new(&mut limited.body).poll_frame(cx) {
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
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
