//! The worker process: one replica, serving the requests the gateway sends
//! on its channel (no HTTP between the two: see [`shoal_protocol::channel`]).
//!
//! Start: load the precompiled component, link WASI and `wasi:http`, check
//! that one instance can be created under the request limits (a component
//! that traps or runs out of memory at start never reports ready), open the
//! channel the node agent passed, report `ready` on the readiness pipe.
//!
//! Request path, in order:
//!
//! 1. The port's driver ([`port`]) takes a request frame from the channel
//!    and turns it into an `http::Request` whose body streams from the
//!    channel.
//! 2. A permit from the concurrency semaphore is taken: at most
//!    `max_concurrency` instances exist at once (the size of the instance
//!    pool); up to `queue` requests wait for one (at most until the
//!    deadline), and past that the answer is `503` with `Retry-After`.
//! 3. A fresh [`Store`] gets the replica's environment, the instance memory
//!    cap and an epoch deadline; the component is instantiated from its
//!    [`ProxyPre`] and its `wasi:http/incoming-handler` is called in a task
//!    of its own, so the body can keep streaming after the headers are sent.
//! 4. The response head comes back through a oneshot. A trap before it maps
//!    to `500`, as does a call that returned without a response (at once:
//!    an instance that kept its response outparam is dropped, not reused),
//!    the deadline to `504`; the detail goes to stderr, which the
//!    node agent captures per replica. The port writes the response to the
//!    channel: its head with the body that is ready, then the rest within
//!    the gateway's window.

pub mod attach;
mod calls;
mod output;
mod port;
pub mod preload;
mod ticker;

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use shoal_protocol::attach::WorkerIdentity;
use shoal_protocol::channel::{Channel, ChannelFds, Side};
use shoal_protocol::config::CHANNEL_FDS_ENV;
use shoal_protocol::ready::{Instances, ReadyReport};
use tokio::sync::{Semaphore, oneshot};
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::clocks::WasiClocksCtx;
use wasmtime_wasi::random::WasiRandomCtx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::{HostOutgoingBody, HyperOutgoingBody};
use wasmtime_wasi_http::p2::types::HostResponseOutparam;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::cache::{CacheOutcome, ComponentCache};
use crate::engine::{PoolSettings, worker_engine};
use calls::{Calls, Outbound};
use output::{GuestOutput, OutputBuffer, Target};
use port::{GuestBody, Incoming, Origin, Port, plain};
use ticker::Ticker;

pub use shoal_protocol::config::{READY_FD_ENV, SPAWNED_ENV, WorkerConfig, monotonic_nanos, since_spawn};

/// Per-store state: WASI contexts, the resource table and memory limits.
pub(crate) struct Guest {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    limits: Limits,
    hooks: Outbound,
}

/// The instance's memory cap, and how far its linear memory has grown.
struct Limits {
    cap: StoreLimits,
    /// The largest memory size granted so far, in bytes.
    memory: usize,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let granted = self.cap.memory_growing(current, desired, maximum)?;
        if granted {
            self.memory = self.memory.max(desired);
        }
        Ok(granted)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.cap.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.cap.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.cap.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.cap.instances()
    }

    fn tables(&self) -> usize {
        self.cap.tables()
    }

    fn memories(&self) -> usize {
        self.cap.memories()
    }
}

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
    /// The guests' stdout and stderr, batched ([`output`]).
    stdout: GuestOutput,
    stderr: GuestOutput,
    env: Vec<(String, String)>,
    instance_memory: usize,
    /// A reused instance whose memory grew past this is not used again
    /// ([`retire_at`]).
    retire_at: usize,
    timeout: Duration,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot, bounded by `queue`.
    waiting: AtomicUsize,
    queue: usize,
    /// Requests one instance may serve (1: a fresh instance per request).
    instance_requests: u32,
    /// Whether, with a fresh instance per request, an instance that served
    /// one is reset to its state after instantiation and serves the next
    /// (cleared when a snapshot of this component fails: see [`Reset`]).
    resettable: AtomicBool,
    /// How long an idle instance is kept.
    instance_idle: Duration,
    /// Instances that served a request cleanly and may serve another (as
    /// they are, or reset), most recently used last.
    idle: std::sync::Mutex<Vec<Warm>>,
    /// The guests' outgoing requests.
    calls: Arc<Calls>,
    /// Advances the epoch while a guest may run.
    ticker: &'static Ticker,
}

/// An instance kept for another request.
struct Warm {
    store: Store<Guest>,
    proxy: Proxy,
    /// How to return the instance to its state after instantiation, when
    /// every request gets a fresh one.
    reset: Option<Reset>,
    served: u32,
    since: std::time::Instant,
}

/// An instance and the snapshot of its state right after instantiation
/// (wasmtime's `Instance::snapshot`, added by Shoal's copy: see
/// `vendor/wasmtime/SHOAL.md`). Resetting a used instance to it costs ~3 µs
/// where instantiating and dropping another costs ~11 µs; the guest sees
/// the same: its memories, globals, tables and handles as a fresh instance
/// has them.
struct Reset {
    instance: wasmtime::component::Instance,
    snapshot: wasmtime::component::InstanceSnapshot,
}

/// How many requests one store serves, reset after each, before it is
/// dropped and a new instance made: a bound on anything a store could
/// accumulate that a reset does not return (at ~15 µs per instantiation
/// and snapshot, 0.015 µs per request).
const RESETS_PER_STORE: u32 = 1000;

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

async fn serve(config: WorkerConfig, started: std::time::Instant, exec: Duration) -> anyhow::Result<()> {
    let runtime_ready = started.elapsed();
    let pool = PoolSettings { max_instances: config.max_concurrency, instance_memory: config.instance_memory };
    // What the zygote loaded before forking this process, if anything.
    let (preloaded_engine, preloaded) = preload::take(pool, &config.module);
    let engine = match preloaded_engine {
        Some(engine) => engine,
        None => worker_engine(pool).map_err(|e| anyhow::anyhow!("cannot configure wasmtime: {e:#}"))?,
    };
    let engine_ready = started.elapsed();
    let was_preloaded = preloaded.is_some();
    let (pre, outcome) = match preloaded {
        Some(pre) => (pre, CacheOutcome::Hit),
        None => {
            let (component, outcome) = ComponentCache::new(&config.cache_dir).load(&engine, &config.module)?;
            let pre = proxy_pre(&engine, &component).map_err(|e| {
                anyhow::anyhow!("{}: cannot serve it as a wasi:http proxy: {e:#}", config.module.display())
            })?;
            (pre, outcome)
        }
    };

    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let mut env = config.env.clone();
    env.push(("HOSTNAME".to_owned(), config.replica.clone()));
    let (stdout, stderr) = (OutputBuffer::new(Target::Stdout), OutputBuffer::new(Target::Stderr));
    tokio::spawn(stdout.clone().flusher());
    tokio::spawn(stderr.clone().flusher());
    let slots = Arc::new(Semaphore::new(config.max_concurrency.max(1) as usize));
    let ticker = Ticker::start(engine.clone(), slots.clone(), config.max_concurrency.max(1) as usize)?;
    let replica = Arc::new(Replica {
        pre,
        stdout: GuestOutput(stdout.clone()),
        stderr: GuestOutput(stderr.clone()),
        env,
        instance_memory: usize::try_from(config.instance_memory).unwrap_or(usize::MAX),
        retire_at: retire_at(usize::try_from(config.instance_memory).unwrap_or(usize::MAX)),
        timeout,
        slots,
        waiting: AtomicUsize::new(0),
        queue: config.queue as usize,
        instance_requests: config.instance_requests.max(1),
        resettable: AtomicBool::new(config.instance_requests <= 1),
        instance_idle: Duration::from_millis(config.instance_idle_ms),
        idle: std::sync::Mutex::new(Vec::new()),
        calls: Arc::new(Calls::new()),
        ticker,
    });

    let loaded = started.elapsed();
    replica
        .check_start()
        .await
        .with_context(|| format!("{}: the component failed to start", config.module.display()))?;
    let checked = started.elapsed();

    let port = Port::new(open_channel()?);
    replica.calls.use_port(port.clone());
    // Listening before it says it is ready: whoever sees it ready may
    // attach.
    // A name someone else holds does not keep the replica from serving;
    // only another `shoal up` cannot take it over.
    let attach = config.attach.as_ref().and_then(|name| {
        let address = shoal_protocol::attach::Address::Abstract(name.clone());
        shoal_protocol::attach::SeqpacketListener::bind(&address)
            .inspect_err(|error| {
                tracing::warn!(
                    replica = %config.replica, %address, %error,
                    "cannot listen for attaches: another shoal up cannot take this worker over"
                );
            })
            .ok()
    });
    let total = started.elapsed();
    tracing::info!(replica = %config.replica, cache = ?outcome, elapsed = ?total, "ready");
    notify_ready(
        &ReadyReport {
            exec,
            runtime: runtime_ready,
            engine: engine_ready - runtime_ready,
            load: loaded - engine_ready,
            check: checked - loaded,
            total,
            instances: Some(replica.instance_policy()),
            preloaded: was_preloaded,
        }
        .to_line(),
    );
    let identity = WorkerIdentity {
        service: config.service.clone(),
        replica: config.replica.clone(),
        module: config.module.clone(),
        pid: std::process::id(),
        ready_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One session per gateway with a channel to this worker: the one that
    // started it, then any that attached (a successor in a handover, one
    // started after a crash). Each driver ends when its gateway is gone.
    let mut ports: Vec<Arc<Port>> = Vec::new();
    let mut sessions = tokio::task::JoinSet::new();
    let start_session = |port: Arc<Port>, sessions: &mut tokio::task::JoinSet<_>| {
        let handler = {
            let (replica, port) = (replica.clone(), port.clone());
            // Calls go out on the newest session once it brings a request:
            // its gateway then serves calls (a successor opens its link
            // before it sends anything), while until then the one that
            // started the worker, or handed over, still does.
            let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
            move |incoming: Incoming| {
                if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    replica.calls.use_port(port.clone());
                }
                let (replica, port) = (replica.clone(), port.clone());
                async move {
                    let Incoming { request, stream, origin } = incoming;
                    let response = replica.respond(request, &stream, origin).await;
                    port.respond(&stream, response).await;
                }
            }
        };
        let driver = port.clone().run(handler);
        sessions.spawn(async move { (port, driver.await) });
    };
    start_session(port.clone(), &mut sessions);
    ports.push(port);
    let grace = Duration::from_millis(config.orphan_grace_ms);
    // Set while no gateway has a channel: the worker exits at this time.
    let mut orphaned: Option<tokio::time::Instant> = None;
    let accept = async |attach: &Option<shoal_protocol::attach::SeqpacketListener>| match attach {
        Some(socket) => socket.accept().await,
        None => std::future::pending().await,
    };
    loop {
        let until_orphan_exit = async {
            match orphaned {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sweep.tick() => replica.sweep(),
            Some(ended) = sessions.join_next() => {
                let (port, result) = ended.map_err(|e| anyhow::anyhow!("a channel's driver failed: {e}"))?;
                if let Err(error) = result {
                    stdout.flush();
                    stderr.flush();
                    return Err(anyhow::anyhow!("the channel to the gateway failed: {error}"));
                }
                // That gateway is gone: its requests end here.
                port.close();
                replica.calls.forget_port(&port);
                ports.retain(|p| !Arc::ptr_eq(p, &port));
                if let Some(newest) = ports.last() {
                    replica.calls.use_port(newest.clone());
                } else {
                    tracing::info!(replica = %config.replica, ?grace, "no gateway left; waiting to be attached");
                    orphaned = Some(tokio::time::Instant::now() + grace);
                }
            }
            connection = accept(&attach) => {
                let connection = connection.context("cannot accept on the attach socket")?;
                let who = identity.clone();
                match tokio::task::spawn_blocking(move || attach::exchange(connection, &who)).await {
                    Ok(Ok(channel)) => {
                        let port = Port::new(channel);
                        start_session(port.clone(), &mut sessions);
                        ports.push(port);
                        orphaned = None;
                        tracing::info!(replica = %config.replica, sessions = ports.len(), "attached");
                    }
                    // Anyone may connect to an abstract name: another
                    // user's attempts are refused without a warning.
                    Ok(Err(error)) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                        tracing::debug!(replica = %config.replica, %error, "an attach refused");
                    }
                    Ok(Err(error)) => tracing::warn!(replica = %config.replica, %error, "an attach failed"),
                    Err(error) => tracing::warn!(replica = %config.replica, %error, "an attach failed"),
                }
            }
            () = until_orphan_exit => {
                tracing::warn!(replica = %config.replica, ?grace, "no gateway attached within the grace; exiting");
                stdout.flush();
                stderr.flush();
                return Ok(());
            }
            _ = sigterm.recv() => break,
        }
    }

    // Drain: new requests are refused; the ones in flight finish (the
    // drivers keep running for their bodies and windows).
    for port in &ports {
        port.drain();
    }
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let all_idle = async {
        for port in &ports {
            port.idle().await;
        }
    };
    tokio::select! {
        () = all_idle => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(replica = %config.replica, ?drain, "drain timed out; ending the requests in flight");
        }
    }
    drop(attach);
    stdout.flush();
    stderr.flush();
    Ok(())
}

/// The channel the node agent passed (fds 4, 5 and 6, as `SHOAL_CHANNEL_FDS`
/// says).
fn open_channel() -> anyhow::Result<Channel> {
    let fds: Vec<i32> = std::env::var(CHANNEL_FDS_ENV)
        .map_err(|_| anyhow::anyhow!("{CHANNEL_FDS_ENV} is not set: a worker is started by shoal up"))?
        .split(',')
        .map(|fd| fd.trim().parse::<i32>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{CHANNEL_FDS_ENV}: {e}"))?;
    let [segment, wake_me, wake_gateway] = fds[..] else {
        anyhow::bail!("{CHANNEL_FDS_ENV}: expected three descriptors, found {}", fds.len());
    };
    // SAFETY: the node agent put the channel's three descriptors on these
    // numbers for this process alone; nothing else here owns them.
    let fds = unsafe { ChannelFds::inherited([segment, wake_me, wake_gateway]) };
    Channel::open(fds, Side::Worker).context("cannot open the channel to the gateway")
}

impl Replica {
    /// A store for one instance: the guest's environment and stdio, the
    /// memory cap and the deadline.
    fn store(&self) -> Store<Guest> {
        let mut store = Store::new(
            self.pre.engine(),
            Guest {
                table: ResourceTable::new(),
                wasi: WasiCtx::builder()
                    .envs(&self.env)
                    .stdout(self.stdout.clone())
                    .stderr(self.stderr.clone())
                    .build(),
                http: WasiHttpCtx::new(),
                limits: Limits {
                    cap: StoreLimitsBuilder::new()
                        .memory_size(self.instance_memory)
                        .trap_on_grow_failure(false)
                        .build(),
                    memory: 0,
                },
                hooks: Outbound { calls: self.calls.clone(), origin: Origin { hops: 0, deadline: None } },
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

    /// How instances serve requests, for the ready line.
    fn instance_policy(&self) -> Instances {
        if self.instance_requests > 1 {
            Instances::Reuse
        } else if self.resettable.load(Ordering::Relaxed) {
            Instances::Reset
        } else {
            Instances::Instantiate
        }
    }

    /// An idle instance to reuse, if the policy allows and one is there.
    fn warm(&self) -> Option<Warm> {
        if self.instance_policy() == Instances::Instantiate {
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
    /// served its share; with a fresh instance per request, resets it
    /// first, and drops it if the reset cannot return it exactly.
    fn keep(&self, mut warm: Warm) {
        warm.served += 1;
        match &warm.reset {
            None if warm.served >= self.instance_requests => return,
            // A reused instance whose memory has grown near its cap is
            // retired while it can still serve: one that leaks (some
            // engines do, a little per request) would otherwise fail a
            // request when it runs out.
            None if warm.store.data().limits.memory > self.retire_at => {
                tracing::debug!(
                    served = warm.served,
                    memory = warm.store.data().limits.memory,
                    "instance retired: its memory grew near the cap"
                );
                return;
            }
            None => {}
            Some(_) if warm.served >= RESETS_PER_STORE => return,
            Some(Reset { instance, snapshot }) => {
                let leaked = match instance.reset(&mut warm.store, snapshot) {
                    Ok(leaked) => leaked,
                    Err(error) => {
                        tracing::debug!(error = %format!("{error:#}"), "instance not reset; dropping it");
                        return;
                    }
                };
                // Host resources the guest still owned (a stdout stream it
                // cached, a handle it forgot) go as with a dropped store;
                // anything else left in the table means the store is not as
                // a fresh one, and it goes instead.
                let guest = warm.store.data_mut();
                if !guest.table.shoal_delete_leaked(&leaked) || !guest.table.is_empty() {
                    tracing::debug!("host resources outlived the request; dropping the instance");
                    return;
                }
                // New clocks and random generators, as a new store would
                // have: the monotonic clock's origin, the generators' state
                // and the insecure seed are the host's state the guest can
                // read. The rest of the WASI context (environment, stdio,
                // no files or sockets) holds none and is kept.
                *guest.wasi.clocks() = WasiClocksCtx::default();
                *guest.wasi.random() = WasiRandomCtx::default();
                guest.http = WasiHttpCtx::new();
            }
        }
        warm.since = std::time::Instant::now();
        self.idle.lock().expect("idle lock").push(warm);
    }

    /// A new instance in `store`, with what resetting it needs when every
    /// request gets a fresh instance and this component allows it.
    async fn instantiate(&self, store: &mut Store<Guest>) -> wasmtime::Result<(Proxy, Option<Reset>)> {
        let instance = self.pre.instance_pre().instantiate_async(&mut *store).await?;
        let proxy = Proxy::new(&mut *store, &instance)?;
        if !self.resettable.load(Ordering::Relaxed) {
            return Ok((proxy, None));
        }
        match instance.snapshot(&mut *store) {
            Ok(snapshot) => Ok((proxy, Some(Reset { instance, snapshot }))),
            Err(error) => {
                if self.resettable.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        reason = %format!("{error:#}"),
                        "instances of this component cannot be reset: each request instantiates a fresh one"
                    );
                }
                Ok((proxy, None))
            }
        }
    }

    /// The start check: one instance is created (running the component's
    /// start functions) under the same limits as a request's, before the
    /// replica reports ready. A component that cannot start never gets
    /// traffic.
    ///
    /// Where instances are kept between requests, the instance checked is
    /// kept too, unused: the first request runs in it rather than making
    /// another (an instantiation and its page faults less per cold start).
    async fn check_start(&self) -> anyhow::Result<()> {
        let mut store = self.store();
        self.ticker.set_checking(true);
        let checked = self.instantiate(&mut store).await;
        self.ticker.set_checking(false);
        let (proxy, reset) = checked.map_err(|error| {
            tracing::debug!(error = %format!("{error:?}"), "start check failed");
            // One line for the node agent's message; the root cause is the
            // trap or limit that stopped the start.
            anyhow::anyhow!("{}", error.root_cause())
        })?;
        if self.instance_policy() != Instances::Instantiate {
            let warm = Warm { store, proxy, reset, served: 0, since: std::time::Instant::now() };
            self.idle.lock().expect("idle lock").push(warm);
        }
        Ok(())
    }

    /// Runs the guest for one request and returns its response (or the
    /// worker's own: `503` past the queue, `500` for a trap, `504` at the
    /// deadline).
    async fn respond(
        self: &Arc<Self>,
        req: Request<GuestBody>,
        stream: &port::Stream,
        origin: Origin,
    ) -> Response<HyperOutgoingBody> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        // A free instance now, or a place in the bounded queue, or 503.
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    let mut busy = plain(StatusCode::SERVICE_UNAVAILABLE, "503 replica overloaded: try again\n");
                    busy.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return busy;
                }
                let waited = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                match waited {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => {
                        return plain(StatusCode::SERVICE_UNAVAILABLE, "replica is shutting down\n");
                    }
                    Err(_elapsed) => {
                        return plain(StatusCode::GATEWAY_TIMEOUT, "deadline exceeded waiting for a free instance\n");
                    }
                }
            }
        };

        self.ticker.wake();
        let warm = self.warm();
        let (mut store, reused) = match warm {
            Some(Warm { mut store, proxy, reset, served, .. }) => {
                self.arm(&mut store);
                (store, Some((proxy, reset, served)))
            }
            None => (self.store(), None),
        };
        // The guest's calls go out on behalf of this request: its hops,
        // and its deadline (the gateway's, or this replica's if sooner).
        store.data_mut().hooks.origin =
            Origin { deadline: Some(origin.deadline.map_or(deadline, |d| d.min(deadline))), ..origin };

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
                return plain(StatusCode::BAD_REQUEST, "bad request\n");
            }
        };
        if stream.cancelled() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "cancelled\n");
        }
        let replica = self.clone();
        let unfinished_body = Arc::new(AtomicBool::new(false));
        let body_guard = unfinished_body.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let (proxy, reset, served) = match reused {
                Some(reused) => reused,
                None => {
                    let (proxy, reset) = replica.instantiate(&mut store).await?;
                    (proxy, reset, 0)
                }
            };
            let outparam = out.rep();
            let called = proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await;
            // A response body the guest still holds when its call is over
            // (it returned without finishing it, trapped or hit its
            // deadline) was not finished: once the store goes, its end
            // must read as a failure, not as a complete body.
            if store.data_mut().table.iter_mut().any(|entry| entry.is::<HostOutgoingBody>()) {
                unfinished_body.store(true, Ordering::Release);
                called?;
                tracing::warn!("guest returned without finishing its response body; cutting it off");
                return Ok(());
            }
            called?;
            // A call that returned without setting a response and kept the
            // response outparam would leave the request waiting for a head
            // that cannot come: its instance is dropped (the outparam with
            // it), and the request is answered at once.
            let unanswered = Resource::<HostResponseOutparam>::new_borrow(outparam);
            if store.data().table.get(&unanswered).is_ok() {
                return Ok(());
            }
            // Only an instance whose call returned cleanly is used again: a
            // trap, an interrupt or a failed allocation discards it.
            replica.keep(Warm { store, proxy, reset, served, since: std::time::Instant::now() });
            Ok::<(), wasmtime::Error>(())
        });
        stream.set_guest(task.abort_handle());

        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(Ok(response))) => response.map(|body| GuardedBody { body, unfinished: body_guard }.boxed_unsync()),
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
        }
    }
}

/// The memory size past which a reused instance is retired: three
/// quarters of the cap, leaving at least 4 MiB (what one request of a
/// large guest may still grow by) when the cap allows.
fn retire_at(cap: usize) -> usize {
    let headroom = (cap / 4).max(4 << 20).min(cap / 2);
    cap - headroom
}

/// A guest's response body whose end is checked: when the guest's call
/// ended with the body still in its hands (`unfinished`, set before the
/// store that holds the body's sender goes), the end of the data is a
/// failure (the channel resets the stream, the client sees a cut-off
/// body), not the end of a complete body.
struct GuardedBody {
    body: HyperOutgoingBody,
    unfinished: Arc<AtomicBool>,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            std::task::Poll::Ready(None) if self.unfinished.load(Ordering::Acquire) => {
                std::task::Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                    "the service did not finish its response body".to_owned(),
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        // Only known once the data ends (see poll_frame).
        self.body.is_end_stream() && !self.unfinished.load(Ordering::Acquire)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Maps a guest failure to a response, logging the detail.
fn guest_failure(error: &wasmtime::Error) -> Response<HyperOutgoingBody> {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        tracing::warn!("guest interrupted at its deadline");
        return plain(StatusCode::GATEWAY_TIMEOUT, "deadline exceeded\n");
    }
    // One line a reader of `shoal logs --tail` sees beside the guest's own
    // panic message (which the guest printed just before); the wasm
    // backtrace, a line per frame, at debug level (SHOAL_LOG=debug).
    tracing::warn!("guest trapped: {}", error.root_cause());
    tracing::debug!(error = %format!("{error:?}"), "guest trapped, with its backtrace");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "the service trapped\n")
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
