//! The gateway's listeners: the shared accept loop ([`crate::listener`])
//! with the gateway's settings, HTTP/1.1 and h2c on the plain port, HTTPS
//! (HTTP/2 or HTTP/1.1 by ALPN) on the TLS port, and the request-head size
//! check in front of the proxy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::Gateway;
use crate::listener::{Connection, ServeConfig, TlsSetup, serve};

/// Settings of the gateway's server.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Open client connections at most; past it, new connections are closed
    /// at once. Default 10,000.
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
    /// Time a connection may stay without a request in progress, after its
    /// first (what closes idle HTTP/2 connections; an idle HTTP/1.1 one is
    /// closed by the header timeout). Default 75 seconds, like nginx.
    pub idle_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            idle_timeout: Duration::from_secs(75),
        }
    }
}

impl Gateway {
    /// Serves plain-HTTP clients on `listener` until `shutdown` completes,
    /// then drains.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        config: GatewayConfig,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.serve_on(listener, config, None, shutdown).await
    }

    /// Serves HTTPS clients on `listener`, with the certificates of
    /// [`Gateway::certificates`], until `shutdown` completes, then drains.
    /// Plain requests for routes that require HTTPS are redirected to this
    /// listener's port from the call on (before the future is polled).
    pub fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        config: GatewayConfig,
        shutdown: impl Future<Output = ()>,
    ) -> impl Future<Output = std::io::Result<()>> {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        self.https_port.store(port, std::sync::atomic::Ordering::Relaxed);
        let tls =
            TlsSetup { config: crate::tls::server_config(self.certificates.clone()), stats: self.tls_stats.clone() };
        self.serve_on(listener, config, Some(tls), shutdown)
    }

    async fn serve_on(
        self: Arc<Self>,
        listener: TcpListener,
        config: GatewayConfig,
        tls: Option<TlsSetup>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let max_head = config.max_header_bytes;
        let secure = tls.is_some();
        let gateway_closing = self.closing();
        let gateway = self;
        let make = move |connection: &Connection| {
            let (gateway, peer) = (gateway.clone(), connection.peer);
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let gateway = gateway.clone();
                async move {
                    if crate::proxy::head_size(&req) > max_head {
                        return Ok(crate::proxy::message(
                            hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "431 request header fields too large\n",
                        ));
                    }
                    Ok::<_, std::convert::Infallible>(gateway.proxy(req, peer, secure).await)
                }
            })
        };
        let serve_config = ServeConfig {
            name: if secure { "gateway (TLS)" } else { "gateway" },
            max_connections: config.max_connections,
            // Clients of the gateway are anonymous: at the cap, new
            // connections are refused rather than old ones evicted.
            evict_untrusted: false,
            header_timeout: config.header_read_timeout,
            idle_timeout: Some(config.idle_timeout),
            drain_timeout: config.drain_timeout,
            http2: true,
            max_headers: config.max_headers,
            tls,
            closing: Some(gateway_closing),
        };
        serve(listener, serve_config, make, shutdown).await
    }
}
