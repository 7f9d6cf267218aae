//! The worker process: one replica serving HTTP on a Unix socket.
//!
//! Start: load the precompiled component, link WASI and `wasi:http`, check
//! that one instance can be created under the request limits (a component
//! that traps or runs out of memory at start never reports ready), bind the
//! socket, report `ready` on the descriptor the node agent passed.
//!
//! Request path, in order:
//!
//! 1. hyper reads an HTTP/1.1 request from the gateway's pooled connection.
//! 2. A permit from the concurrency semaphore is taken: at most
//!    `max_concurrency` instances exist at once (the size of the instance
//!    pool); up to `queue` requests wait for one (at most until the
//!    deadline), and past that the answer is `503` with `Retry-After`.
//! 3. A fresh [`Store`] gets the replica's environment, the instance memory
//!    cap and an epoch deadline; the component is instantiated from its
//!    [`ProxyPre`] and its `wasi:http/incoming-handler` is called in a task
//!    of its own, so the body can keep streaming after the headers are sent.
//! 4. The response head comes back through a oneshot. A trap before it maps
//!    to `500`, the deadline to `504`; the detail goes to stderr, which the
//!    node agent captures per replica.

use std::convert::Infallible;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, oneshot};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::cache::ComponentCache;
use crate::engine::{EPOCH_TICK, PoolSettings, worker_engine};

/// The environment variable naming the file descriptor on which a worker
/// reports readiness (it writes one line, `ready`, then closes it).
pub const READY_FD_ENV: &str = "SHOAL_READY_FD";

/// The header of a readiness probe. The worker answers a request that
/// carries it itself (`200 ready`), without running the guest; the gateway
/// removes it from client requests.
pub const PROBE_HEADER: &str = "x-shoal-probe";

/// Everything a worker needs, passed by the node agent as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// The service this replica belongs to.
    pub service: String,
    /// The replica's name; the guest sees it as `HOSTNAME`.
    pub replica: String,
    /// Where to listen.
    pub socket: PathBuf,
    /// The component file.
    pub module: PathBuf,
    /// The compiled-component cache directory.
    pub cache_dir: PathBuf,
    /// Environment variables for the guest, besides `HOSTNAME`.
    pub env: Vec<(String, String)>,
    /// Linear memory cap per instance, in bytes.
    pub instance_memory: u64,
    /// Request deadline, in milliseconds.
    pub timeout_ms: u64,
    /// Instances that may run at once; further requests wait for a slot.
    pub max_concurrency: u32,
    /// Requests that may wait for a slot; past it, `503` with `Retry-After`.
    #[serde(default)]
    pub queue: u32,
    /// How long in-flight requests may take to finish after SIGTERM, in
    /// milliseconds.
    pub drain_timeout_ms: u64,
    /// Requests one instance serves before it is discarded; 1 is a fresh
    /// instance per request.
    #[serde(default = "one")]
    pub instance_requests: u32,
    /// How long an idle instance is kept for reuse, in milliseconds.
    #[serde(default)]
    pub instance_idle_ms: u64,
}

fn one() -> u32 {
    1
}

/// Per-store state: WASI contexts, the resource table and memory limits.
pub(crate) struct Guest {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    limits: StoreLimits,
    hooks: NoOutbound,
}

/// `wasi:http` hooks with the defaults, and without outgoing requests:
/// outbound HTTP needs an allow-list in the manifest first, so a guest's
/// `outgoing-handler.handle` fails with an error code.
struct NoOutbound;

impl wasmtime_wasi_http::WasiHttpHooks for NoOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = OutboundResult> + Send> {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

type OutboundResult = Result<
    (
        http::Response<wasmtime_wasi_http::WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Guest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// The loaded component and what each request needs to run it.
struct Replica {
    pre: ProxyPre<Guest>,
    env: Vec<(String, String)>,
    instance_memory: usize,
    timeout: Duration,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot, bounded by `queue`.
    waiting: AtomicUsize,
    queue: usize,
    /// Requests one instance may serve (1: a fresh instance per request).
    instance_requests: u32,
    /// How long an idle instance is kept.
    instance_idle: Duration,
    /// Instances that served a request cleanly and may serve another, most
    /// recently used last.
    idle: std::sync::Mutex<Vec<Warm>>,
}

/// An instance kept for another request.
struct Warm {
    store: Store<Guest>,
    proxy: Proxy,
    served: u32,
    since: std::time::Instant,
}

/// Links `component` against what a worker provides (WASI and `wasi:http`)
/// and checks that it exports `wasi:http/incoming-handler`.
pub(crate) fn proxy_pre(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<ProxyPre<Guest>> {
    let mut linker = Linker::<Guest>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    linker.instantiate_pre(component).and_then(ProxyPre::new)
}

/// Runs a worker until SIGTERM, then drains. Blocks the calling thread.
///
/// `exec` is how long the process took from the node agent's spawn to its
/// `main` ([`since_spawn`]), reported with the readiness line.
pub fn run_worker(config: WorkerConfig, exec: Duration) -> anyhow::Result<()> {
    let entered = std::time::Instant::now();
    // One thread: a replica's parallelism is its replica count (each worker
    // in its own cgroup), and a single-threaded runtime has no cross-thread
    // wake-ups. Measured with kubia on 2 cores: 29k requests/s and p99 9 ms
    // against 24k and 92 ms with two threads per worker. A guest that spins
    // still cannot starve the others: it yields at every epoch tick.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(serve(config, entered, exec))
}

/// The environment variable in which the node agent passes the
/// `CLOCK_MONOTONIC` time (ns) at which it spawned the worker.
pub const SPAWNED_ENV: &str = "SHOAL_SPAWNED_NS";

/// The time since the node agent spawned this process (fork, exec, the
/// binary's start), from [`SPAWNED_ENV`]; zero without it.
pub fn since_spawn() -> Duration {
    std::env::var(SPAWNED_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, |spawned| Duration::from_nanos(monotonic_nanos().saturating_sub(spawned)))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
pub fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

async fn serve(config: WorkerConfig, started: std::time::Instant, exec: Duration) -> anyhow::Result<()> {
    let runtime_ready = started.elapsed();
    let engine =
        worker_engine(PoolSettings { max_instances: config.max_concurrency, instance_memory: config.instance_memory })
            .map_err(|e| anyhow::anyhow!("cannot configure wasmtime: {e:#}"))?;
    let engine_ready = started.elapsed();
    let (component, outcome) = ComponentCache::new(&config.cache_dir).load(&engine, &config.module)?;
    let pre = proxy_pre(&engine, &component)
        .map_err(|e| anyhow::anyhow!("{}: cannot serve it as a wasi:http proxy: {e:#}", config.module.display()))?;

    let ticker = engine.clone();
    std::thread::Builder::new().name("epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(EPOCH_TICK);
            ticker.increment_epoch();
        }
    })?;

    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let mut env = config.env.clone();
    env.push(("HOSTNAME".to_owned(), config.replica.clone()));
    let replica = Arc::new(Replica {
        pre,
        env,
        instance_memory: usize::try_from(config.instance_memory).unwrap_or(usize::MAX),
        timeout,
        slots: Arc::new(Semaphore::new(config.max_concurrency.max(1) as usize)),
        waiting: AtomicUsize::new(0),
        queue: config.queue as usize,
        instance_requests: config.instance_requests.max(1),
        instance_idle: Duration::from_millis(config.instance_idle_ms),
        idle: std::sync::Mutex::new(Vec::new()),
    });

    let loaded = started.elapsed();
    replica
        .check_start()
        .await
        .with_context(|| format!("{}: the component failed to start", config.module.display()))?;
    let checked = started.elapsed();

    let _ = std::fs::remove_file(&config.socket);
    let listener =
        UnixListener::bind(&config.socket).with_context(|| format!("cannot listen on {}", config.socket.display()))?;
    let total = started.elapsed();
    tracing::info!(replica = %config.replica, cache = ?outcome, elapsed = ?total, "ready");
    notify_ready(&format!(
        "ready exec_us={} runtime_us={} engine_us={} load_us={} check_us={} total_us={}\n",
        exec.as_micros(),
        runtime_ready.as_micros(),
        (engine_ready - runtime_ready).as_micros(),
        (loaded - engine_ready).as_micros(),
        (checked - loaded).as_micros(),
        total.as_micros()
    ));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep.tick() => replica.sweep(),
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let replica = replica.clone();
                let service = hyper::service::service_fn(move |req| replica.clone().handle(req));
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            _ = sigterm.recv() => break,
        }
    }

    // Drain: no new connections; idle keep-alive connections close now, busy
    // ones after their current response.
    drop(listener);
    let _ = std::fs::remove_file(&config.socket);
    let drain = Duration::from_millis(config.drain_timeout_ms);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(replica = %config.replica, ?drain, "drain timed out; closing remaining connections");
    }
    Ok(())
}

impl Replica {
    /// A store for one instance: the guest's environment and stdio, the
    /// memory cap and the deadline.
    fn store(&self) -> Store<Guest> {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env).inherit_stdout().inherit_stderr();
        let mut store = Store::new(
            self.pre.engine(),
            Guest {
                table: ResourceTable::new(),
                wasi: wasi.build(),
                http: WasiHttpCtx::new(),
                limits: StoreLimitsBuilder::new().memory_size(self.instance_memory).trap_on_grow_failure(false).build(),
                hooks: NoOutbound,
            },
        );
        store.limiter(|guest| &mut guest.limits);
        // Every epoch tick (10 ms) of guest execution, yield to the runtime
        // so that a busy guest cannot starve the other requests of its
        // thread, and stop the guest once its deadline has passed.
        self.arm(&mut store);
        store
    }

    /// Sets the deadline of the request a store is about to serve.
    fn arm(&self, store: &mut Store<Guest>) {
        let deadline = std::time::Instant::now() + self.timeout;
        store.epoch_deadline_callback(move |_| {
            Ok(if std::time::Instant::now() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        store.set_epoch_deadline(1);
    }

    /// An idle instance to reuse, if the policy allows and one is there.
    fn warm(&self) -> Option<Warm> {
        if self.instance_requests <= 1 {
            return None;
        }
        let mut idle = self.idle.lock().expect("idle lock");
        self.drop_expired(&mut idle);
        idle.pop()
    }

    /// Drops the instances idle longer than `maxIdle` (the oldest are first).
    fn drop_expired(&self, idle: &mut Vec<Warm>) {
        let now = std::time::Instant::now();
        let expired = idle.iter().take_while(|w| now.duration_since(w.since) > self.instance_idle).count();
        idle.drain(..expired);
    }

    /// Frees the memory of instances left idle by a replica gone quiet.
    fn sweep(&self) {
        let mut idle = self.idle.lock().expect("idle lock");
        self.drop_expired(&mut idle);
    }

    /// Keeps an instance that served a request cleanly, unless it has
    /// served its share.
    fn keep(&self, mut warm: Warm) {
        warm.served += 1;
        if warm.served >= self.instance_requests {
            return;
        }
        warm.since = std::time::Instant::now();
        self.idle.lock().expect("idle lock").push(warm);
    }

    /// The start check: one instance is created (running the component's
    /// start functions) under the same limits as a request's, before the
    /// replica reports ready. A component that cannot start never gets
    /// traffic.
    async fn check_start(&self) -> anyhow::Result<()> {
        let mut store = self.store();
        self.pre.instantiate_async(&mut store).await.map(drop).map_err(|error| {
            tracing::debug!(error = %format!("{error:?}"), "start check failed");
            // One line for the node agent's message; the root cause is the
            // trap or limit that stopped the start.
            anyhow::anyhow!("{}", error.root_cause())
        })
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<HyperOutgoingBody>, Infallible> {
        if req.headers().contains_key(PROBE_HEADER) {
            return Ok(plain(StatusCode::OK, "ready\n"));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        // A free instance now, or a place in the bounded queue, or 503.
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    let mut busy = plain(StatusCode::SERVICE_UNAVAILABLE, "503 replica overloaded: try again\n");
                    busy.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
                    return Ok(busy);
                }
                let waited = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                match waited {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => {
                        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "replica is shutting down\n"));
                    }
                    Err(_elapsed) => {
                        return Ok(plain(
                            StatusCode::GATEWAY_TIMEOUT,
                            "deadline exceeded waiting for a free instance\n",
                        ));
                    }
                }
            }
        };

        let warm = self.warm();
        let (mut store, reused) = match warm {
            Some(Warm { mut store, proxy, served, .. }) => {
                self.arm(&mut store);
                (store, Some((proxy, served)))
            }
            None => (self.store(), None),
        };

        let (sender, receiver) = oneshot::channel();
        let prepared = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .and_then(|req| Ok((req, store.data_mut().http().new_response_outparam(sender)?)));
        let (req, out) = match prepared {
            Ok(handles) => handles,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "bad request from the gateway");
                return Ok(plain(StatusCode::BAD_REQUEST, "bad request\n"));
            }
        };
        let replica = self.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let (proxy, served) = match reused {
                Some(reused) => reused,
                None => (replica.pre.instantiate_async(&mut store).await?, 0),
            };
            proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await?;
            // Only an instance whose call returned cleanly is used again: a
            // trap, an interrupt or a failed allocation discards it.
            replica.keep(Warm { store, proxy, served, since: std::time::Instant::now() });
            Ok::<(), wasmtime::Error>(())
        });

        Ok(match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(code))) => {
                tracing::warn!(?code, "guest answered with an error code");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "the service failed to answer\n")
            }
            // The guest ended without setting a response: find out why.
            Ok(Err(_dropped)) => match task.await {
                Ok(Ok(())) => {
                    tracing::warn!("guest returned without setting a response");
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "the service returned no response\n")
                }
                Ok(Err(error)) => guest_failure(&error),
                Err(join) => {
                    tracing::error!(error = %join, "request task failed");
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                }
            },
            // The epoch deadline traps the guest at about the same time.
            Err(_elapsed) => plain(StatusCode::GATEWAY_TIMEOUT, "deadline exceeded\n"),
        })
    }
}

/// Maps a guest failure to a response, logging the detail.
fn guest_failure(error: &wasmtime::Error) -> Response<HyperOutgoingBody> {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        tracing::warn!("guest interrupted at its deadline");
        return plain(StatusCode::GATEWAY_TIMEOUT, "deadline exceeded\n");
    }
    tracing::warn!(error = %format!("{error:?}"), "guest trapped");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "the service trapped\n")
}

fn plain(status: StatusCode, body: &'static str) -> Response<HyperOutgoingBody> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Tells the node agent that the worker accepts requests: one line,
/// `ready` and how long each start step took (`exec_us=… runtime_us=… engine_us=…
/// load_us=… check_us=… total_us=…`; `total_us` is from `run_worker`).
fn notify_ready(line: &str) {
    let Some(fd) = std::env::var(READY_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()) else {
        return;
    };
    // SAFETY: the node agent passes this descriptor, open for writing, to this
    // process alone; it is used once, here, and closed when `file` drops.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = file.write_all(line.as_bytes());
}
