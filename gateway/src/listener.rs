//! The accept loop every Shoal listener runs: the gateway's and the admin
//! API's.
//!
//! One task per connection, HTTP/1.1 with keep-alive (and HTTP/2 with prior
//! knowledge where asked), and the defences a listener facing unknown
//! clients needs:
//!
//! - **A connection cap.** Past [`ServeConfig::max_connections`] open
//!   connections, a new one is closed at once (nothing queues), or, with
//!   [`ServeConfig::evict_untrusted`], the oldest connection that is not
//!   serving a request and never carried a trusted one is closed to make
//!   room. A listener whose clients authenticate (the admin API) evicts, so
//!   that no number of anonymous connections locks its users out; the
//!   gateway, whose clients are all anonymous, refuses.
//! - **A header timeout.** A connection must complete a request head within
//!   [`ServeConfig::header_timeout`] of opening (or of its last response,
//!   with an idle timeout), however slowly it trickles bytes.
//! - **An idle timeout.** A keep-alive connection without a request in
//!   progress is closed after [`ServeConfig::idle_timeout`].
//! - **A graceful drain.** On shutdown: no new connections, idle ones
//!   closed, busy ones finish their responses within
//!   [`ServeConfig::drain_timeout`].
//! - **TLS, where asked** ([`ServeConfig::tls`]): the handshake runs in the
//!   connection's task, under the header timeout (a client that stalls or
//!   trickles its ClientHello is cut like one that trickles its request
//!   head); a client that sends anything but TLS fails its handshake and
//!   its connection closes, touching nothing else. Each handshake's result
//!   and version are counted.
//!
//! Each connection's service is made by the caller from its [`Connection`]:
//! the client's address, and [`Connection::trust`], which a handler calls
//! once the client has proven who it is. (Nothing is added to the requests
//! themselves: the gateway's path allocates nothing for this.)
//!
//! A connection counts as busy from the moment its request head is complete
//! until its response body ends (a followed log is busy for as long as it
//! streams), so the idle timeout and eviction never cut a response short.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Settings of one listener.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// What the listener serves, for logs (`gateway`, `admin API`).
    pub name: &'static str,
    /// Open client connections at most.
    pub max_connections: usize,
    /// At the cap, close the oldest idle untrusted connection to make room
    /// rather than the new one.
    pub evict_untrusted: bool,
    /// Time a client has to send a complete request head, from the opening
    /// of the connection and, on HTTP/1.1, from the end of each response (so
    /// it is also how long an idle HTTP/1.1 keep-alive connection lasts).
    pub header_timeout: Duration,
    /// Time a connection may stay without a request in progress after its
    /// first one (what closes idle HTTP/2 connections); `None` leaves them
    /// to the client (and HTTP/1.1 ones to the header timeout).
    pub idle_timeout: Option<Duration>,
    /// Time in-flight requests get to finish on shutdown.
    pub drain_timeout: Duration,
    /// Serve HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    pub http2: bool,
    /// The most header fields in an HTTP/1.1 request; past it, `431`.
    pub max_headers: usize,
    /// Terminate TLS (HTTPS) on this listener.
    pub tls: Option<TlsSetup>,
    /// Once set (a handover to another process sharing the listening
    /// socket), every HTTP/1.1 response says `Connection: close` and its
    /// connection closes after it; and when `shutdown` comes, the drain
    /// first gives open connections up to [`LINGER`] to close that way,
    /// after their next response, before closing idle ones, whose clients
    /// could be sending a request at that very moment.
    pub closing: Option<Arc<AtomicBool>>,
}

/// How long a drain with [`ServeConfig::closing`] set waits for
/// connections to close after their next response.
pub const LINGER: Duration = Duration::from_secs(1);

/// What a TLS listener terminates TLS with, and where it counts
/// handshakes.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub config: Arc<rustls::ServerConfig>,
    pub stats: Arc<crate::tls::TlsStats>,
}

/// A client connection, as a request's handler sees it (in the request's
/// extensions).
#[derive(Clone)]
pub struct Connection {
    state: Arc<ConnState>,
    /// The client's address.
    pub peer: SocketAddr,
}

impl Connection {
    /// Marks the connection as carrying an authenticated client: it is no
    /// longer evicted to make room for new connections.
    pub fn trust(&self) {
        self.state.trusted.store(true, Ordering::Relaxed);
    }
}

/// One open connection, shared by its task, its requests and the registry.
struct ConnState {
    /// When the listener started: `last_active_ms` counts from it.
    epoch: Instant,
    /// Requests in progress (head read, response body not finished).
    busy: AtomicUsize,
    /// When the last request ended (or the connection opened), in
    /// milliseconds since the listener started.
    last_active_ms: AtomicU64,
    /// Whether a request on it was authenticated.
    trusted: AtomicBool,
    /// Whether it ever completed a request head.
    seen_request: AtomicBool,
    /// Told to close (evicted).
    close: Notify,
    /// The listener's [`ServeConfig::closing`].
    closing: Option<Arc<AtomicBool>>,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn evictable(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0 && !self.trusted.load(Ordering::Relaxed)
    }
}

/// The open connections by id; ids grow, so the first is the oldest.
struct Registry {
    open: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    started: Instant,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Serves each accepted connection with the service `make` makes for it,
/// on `listener`, until `shutdown` completes; then drains.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    config: ServeConfig,
    make: M,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    M: Fn(&Connection) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_headers(config.max_headers);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(if config.http2 { builder } else { builder.http1_only() });
    let graceful = GracefulShutdown::new();
    let registry = Arc::new(Registry { open: Mutex::new(BTreeMap::new()), started: Instant::now() });
    let mut next_id: u64 = 0;
    let mut accept_errors: u32 = 0;
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    accept_errors = 0;
                    conn
                }
                Err(error) => {
                    // Out of file descriptors, most likely: back off,
                    // doubling up to a second, instead of spinning.
                    accept_errors = accept_errors.saturating_add(1);
                    let pause = Duration::from_millis(10 << accept_errors.min(7)).min(Duration::from_secs(1));
                    tracing::warn!(listener = config.name, %error, ?pause, "accept failed");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if !admit(&registry, &config, peer) {
            continue;
        }
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let state = Arc::new(ConnState {
            epoch: registry.started,
            busy: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(registry.now_ms()),
            trusted: AtomicBool::new(false),
            seen_request: AtomicBool::new(false),
            close: Notify::new(),
            closing: config.closing.clone(),
        });
        registry.open.lock().expect("registry lock").insert(id, state.clone());
        let connection = Connection { state: state.clone(), peer };
        let tracked = Tracked { inner: make(&connection), state: state.clone() };
        let (registry, config, builder, watcher) =
            (registry.clone(), config.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let result = match &config.tls {
                None => drive(&builder, watcher, TokioIo::new(stream), tracked, &registry, &state, &config).await,
                Some(tls) => {
                    let handshake = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(stream);
                    let outcome = tokio::select! {
                        accepted = handshake => Some(accepted),
                        () = watchdog(&registry, &state, &config) => None,
                    };
                    match outcome {
                        Some(Ok(stream)) => {
                            let version = stream.get_ref().1.protocol_version();
                            let version = version.unwrap_or(rustls::ProtocolVersion::TLSv1_3);
                            tls.stats.count(crate::tls::Handshake::Done(version));
                            drive(&builder, watcher, TokioIo::new(stream), tracked, &registry, &state, &config).await
                        }
                        Some(Err(error)) => {
                            tls.stats.count(crate::tls::Handshake::Failed);
                            tracing::debug!(listener = config.name, %peer, %error, "TLS handshake failed");
                            Ok(())
                        }
                        None => {
                            tls.stats.count(crate::tls::Handshake::TimedOut);
                            tracing::debug!(listener = config.name, %peer, "TLS handshake not done within the header timeout");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(listener = config.name, %peer, %error, "client connection ended with an error");
            }
            registry.open.lock().expect("registry lock").remove(&id);
        });
    }

    drop(listener);
    if config.closing.as_ref().is_some_and(|closing| closing.load(Ordering::SeqCst)) {
        let until = Instant::now() + LINGER;
        while Instant::now() < until && !registry.open.lock().expect("registry lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = config.name, drain = ?config.drain_timeout, "drain timed out; closing remaining connections");
        for state in registry.open.lock().expect("registry lock").values() {
            state.close.notify_one();
        }
    }
    Ok(())
}

/// Serves one connection (plain, or TLS once its handshake is done) until
/// it ends or its watchdog closes it; the drain reaches it through
/// `watcher`.
async fn drive<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: TokioIo<I>,
    service: Tracked<S>,
    registry: &Registry,
    state: &ConnState,
    config: &ServeConfig,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = watcher.watch(builder.serve_connection(io, service).into_owned());
    tokio::pin!(conn);
    tokio::select! {
        result = &mut conn => result,
        () = watchdog(registry, state, config) => Ok(()),
    }
}

/// Whether a new connection may open: under the cap, or once the oldest
/// evictable connection was told to close.
fn admit(registry: &Registry, config: &ServeConfig, peer: SocketAddr) -> bool {
    let mut open = registry.open.lock().expect("registry lock");
    if open.len() < config.max_connections {
        return true;
    }
    if config.evict_untrusted {
        let victim = open.iter().find(|(_, state)| state.evictable()).map(|(id, _)| *id);
        if let Some(id) = victim {
            let state = open.remove(&id).expect("victim is open");
            state.close.notify_one();
            return true;
        }
    }
    drop(open);
    tracing::warn!(listener = config.name, %peer, limit = config.max_connections, "connection limit reached; closing");
    false
}

/// Completes when the connection must close: evicted, or without a request
/// in progress for longer than it may be. Before its first request a
/// connection has the header timeout; after, the idle timeout (or forever).
async fn watchdog(registry: &Registry, state: &ConnState, config: &ServeConfig) {
    loop {
        let limit = if state.seen_request.load(Ordering::Relaxed) {
            match config.idle_timeout {
                Some(idle) => idle,
                None => {
                    state.close.notified().await;
                    return;
                }
            }
        } else {
            config.header_timeout
        };
        let last = state.last_active_ms.load(Ordering::Relaxed);
        let due = registry.started + Duration::from_millis(last) + limit;
        tokio::select! {
            () = state.close.notified() => return,
            () = tokio::time::sleep_until(due) => {}
        }
        let idle = state.busy.load(Ordering::Acquire) == 0;
        if idle && state.last_active_ms.load(Ordering::Relaxed) == last {
            tracing::debug!(listener = config.name, "no request within the time allowed; closing");
            return;
        }
        // Busy, or a request came and went: look again from its end.
        if !idle {
            // The end of the request moves `last_active_ms`; until then,
            // only eviction or the drain closes it.
            while state.busy.load(Ordering::Acquire) != 0 {
                tokio::select! {
                    () = state.close.notified() => return,
                    () = tokio::time::sleep(limit.min(Duration::from_secs(1))) => {}
                }
            }
        }
    }
}

/// The service of one connection: counts its requests busy until their
/// response bodies end.
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let state = &self.state;
        state.busy.fetch_add(1, Ordering::Relaxed);
        state.seen_request.store(true, Ordering::Relaxed);
        let guard = Busy { state: state.clone() };
        // HTTP/2 has no `Connection` header (its drain is GOAWAY).
        let http1 = req.version() < http::Version::HTTP_2;
        TrackedFuture { inner: self.inner.call(req), guard: Some(guard), http1 }
    }
}

/// Ends a request's busy count, and marks the time, when dropped.
struct Busy {
    state: Arc<ConnState>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.last_active_ms.store(self.state.now_ms(), Ordering::Relaxed);
        // Release: a watchdog that sees the count drop sees the time too.
        self.state.busy.fetch_sub(1, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A request's response future; its body carries the busy count on.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Busy>,
        http1: bool,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(mut response)) => {
                let guard = this.guard.take();
                let closing = guard.as_ref().and_then(|g| g.state.closing.as_ref());
                if *this.http1 && closing.is_some_and(|closing| closing.load(Ordering::SeqCst)) {
                    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                Poll::Ready(Ok(response.map(|body| TrackedBody { inner: body, guard })))
            }
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection busy until it ends.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<Busy>,
    }
}

impl<B: HttpBody> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
