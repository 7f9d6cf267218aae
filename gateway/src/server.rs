//! The gateway's accept loop.
//!
//! One task per connection, HTTP/1.1 with keep-alive and HTTP/2 with prior
//! knowledge (h2c) on the same port, a limit on open connections (past it,
//! new connections are closed at once rather than queued), a header read
//! timeout against slow clients, and a graceful drain on shutdown: no new
//! connections, idle ones closed, busy ones finish their current responses
//! within the drain period.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Gateway;

/// Settings of the gateway's server.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Open client connections at most. Default 10,000.
    pub max_connections: usize,
    /// Time a client has to send a request's headers. Default 10 seconds.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown. Default 10 seconds.
    pub drain_timeout: Duration,
    /// The largest request head (request line and headers), in bytes;
    /// past it, `431`. Default 32 KiB.
    pub max_header_bytes: usize,
    /// The most header fields in a request; past it, `431`. Default 100.
    pub max_headers: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
        }
    }
}

impl Gateway {
    /// Serves clients on `listener` until `shutdown` completes, then drains.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        config: GatewayConfig,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().keep_alive(true).timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(config.max_connections));
        tokio::pin!(shutdown);

        loop {
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        // Out of file descriptors, most likely: back off
                        // instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::warn!(%client, limit = config.max_connections, "connection limit reached; closing");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let max_head = config.max_header_bytes;
            // Set by the first request: a connection that has sent none
            // within the header timeout is closed (hyper's own timeout only
            // starts once the protocol is known, which takes 24 bytes).
            let seen = Arc::new(AtomicBool::new(false));
            let seen_by_service = seen.clone();
            let service = hyper::service::service_fn(move |req| {
                let gateway = gateway.clone();
                seen_by_service.store(true, Ordering::Relaxed);
                async move {
                    if crate::proxy::head_size(&req) > max_head {
                        return Ok(crate::proxy::message(
                            hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "431 request header fields too large\n",
                        ));
                    }
                    Ok::<_, std::convert::Infallible>(gateway.proxy(req, client).await)
                }
            });
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            let first_request = config.header_read_timeout;
            tokio::spawn(async move {
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = &mut conn => result,
                    () = tokio::time::sleep(first_request) => {
                        if seen.load(Ordering::Relaxed) {
                            conn.await
                        } else {
                            tracing::debug!(%client, "no request within the header timeout; closing");
                            Ok(())
                        }
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%client, %error, "client connection ended with an error");
                }
                drop(permit);
            });
        }

        drop(listener);
        if tokio::time::timeout(config.drain_timeout, graceful.shutdown()).await.is_err() {
            tracing::warn!(drain = ?config.drain_timeout, "drain timed out; closing remaining connections");
        }
        Ok(())
    }
}
