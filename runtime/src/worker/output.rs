//! The guests' stdout and stderr, batched: every instance of the worker
//! appends to one buffer per stream, and a task writes each buffer out a
//! few milliseconds after it stops being empty (or at once past 64 KiB).
//!
//! A guest that logs a line per request (the kubia sample does) would
//! otherwise cost a `write` on a pipe per request in the worker, and a
//! wake-up and a `read` in `shoal up`; batched, both are paid per batch.
//! Lines keep their order; output reaches the node agent at most
//! [`FLUSH_AFTER`] late, and is written out when the worker stops.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How long output may wait in the buffer.
pub const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// A buffer this full is written out at once.
const FLUSH_AT: usize = 64 << 10;

/// Which stream a buffer writes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Stdout,
    Stderr,
}

/// One stream's buffer, shared by every instance.
pub(crate) struct OutputBuffer {
    target: Target,
    buf: Mutex<Vec<u8>>,
    /// A flush is scheduled.
    scheduled: AtomicBool,
    wake: Notify,
}

impl OutputBuffer {
    pub(crate) fn new(target: Target) -> Arc<OutputBuffer> {
        Arc::new(OutputBuffer {
            target,
            buf: Mutex::new(Vec::with_capacity(8 << 10)),
            scheduled: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn append(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().expect("output lock");
        buf.extend_from_slice(bytes);
        if buf.len() >= FLUSH_AT {
            self.write_out(&mut buf);
        } else if !self.scheduled.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Writes out what the buffer holds.
    pub(crate) fn flush(&self) {
        let mut buf = self.buf.lock().expect("output lock");
        self.write_out(&mut buf);
    }

    fn write_out(&self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        let _ = match self.target {
            Target::Stdout => std::io::stdout().lock().write_all(buf),
            Target::Stderr => std::io::stderr().lock().write_all(buf),
        };
        buf.clear();
    }

    /// Writes the buffer out [`FLUSH_AFTER`] after it stops being empty,
    /// for as long as the worker runs.
    pub(crate) async fn flusher(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(FLUSH_AFTER).await;
            self.scheduled.store(false, Ordering::SeqCst);
            self.flush();
        }
    }
}

/// A guest's stream, as wasmtime-wasi takes it.
#[derive(Clone)]
pub(crate) struct GuestOutput(pub(crate) Arc<OutputBuffer>);

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Writer(self.0.clone()))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(Writer(self.0.clone()))
    }
}

struct Writer(Arc<OutputBuffer>);

#[wasmtime_wasi::async_trait]
impl Pollable for Writer {
    async fn ready(&mut self) {}
}

impl OutputStream for Writer {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(FLUSH_AT)
    }
}

impl AsyncWrite for Writer {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
