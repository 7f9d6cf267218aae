//! The reconciler: makes the running pods match the stored services.
//!
//! Level-triggered and idempotent: each pass reads the whole desired state
//! from the store and the whole actual state from the pods, and acts on the
//! difference, so a missed trigger costs at most one period. Full passes
//! run on every change of the desired state (API writes, a module
//! prepared, the cluster) and at least every [`PERIOD`]; a change in a
//! service's pods or autoscaled count runs a pass over just the services
//! marked ([`crate::pods::Dirty`]), the same steps for fewer services.
//!
//! A pass, in order:
//!
//! 1. Publish every service's routes and deadline to the gateway, before
//!    anything else: a route belongs to its service from the moment the
//!    service exists, so a request for it gets that service's answer, or
//!    `503` (or waits, if autoscaled) while it has no ready replica, never
//!    the answer of a catch-all route.
//! 2. Per service, its module: ready, being prepared, or failed. Preparing
//!    (check the file against its digest, compile it into the cache, link
//!    it as a `wasi:http` proxy) runs in the background, at most
//!    [`PREPARING_AT_ONCE`] at a time, and triggers a pass when done, so a
//!    module that takes seconds to compile holds up nobody else. A module
//!    that fails halts its service's rollout with the reason (running pods
//!    keep serving), and is tried again after a back-off.
//! 3. Pods of the current revision versus older ones. Without older ones,
//!    scale to the desired count. With older ones, roll: at most
//!    [`MAX_SURGE`] pods above the desired count, never fewer ready pods than
//!    desired minus [`MAX_UNAVAILABLE`]; a new pod that fails before it was
//!    ever ready halts the rollout, and the old pods keep serving.
//! 4. Deleted services: their pods stop; their routes stay (answering
//!    `503`) until the last pod is gone, then go.
//!
//! The controller also owns the modules' life: it knows which modules
//! services and running pods use, deletes unused ones on request
//! ([`Controller::delete_module`], [`Controller::collect_modules`]) and,
//! every [`GC_PERIOD`], those unused for longer than the retention.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_api::objects::{
    ModuleInfo, ReplicaInfo, ReplicaUsage, RolloutPhase, ServiceRecord, ServiceStatus, USAGE_WINDOW_SECS,
};
use shoal_gateway::ServiceSnapshot;
use shoal_gateway::metrics::ReplicaSnapshot;
use shoal_node::{Adopted, CgroupLimits, ReplicaSpec, Usage};
use shoal_runtime::engine::Engine;
use shoal_runtime::{CacheOutcome, ComponentCache, ModuleError};
use tokio::sync::watch;

use crate::autoscaler::TICK;
use crate::logs::LogBook;
use crate::pods::{GRACE, Memory, Pod, PodContext, Probes};
use crate::scaling::Scaler;
use crate::store::{Store, StoreError};

/// How often a pass runs without a trigger.
pub const PERIOD: Duration = Duration::from_secs(5);
/// Pods a rollout may add above the desired count.
pub const MAX_SURGE: usize = 1;
/// Ready pods a rollout may take away below the desired count.
pub const MAX_UNAVAILABLE: usize = 0;
/// Modules prepared (compiled) at once: one, since wasmtime compiles one
/// module on every core already; two at once only make each take longer.
/// The smallest waiting module goes first, so that a large module (a
/// JavaScript engine) does not hold up the small ones.
pub const PREPARING_AT_ONCE: usize = 1;
/// How often unused modules are looked for.
pub const GC_PERIOD: Duration = Duration::from_secs(30);
/// The first wait before a module that failed to prepare is tried again;
/// it doubles up to [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// This node's share of the services, in a cluster (see
/// [`crate::cluster`]): the leader's placement decides how many replicas of
/// each service run here, and the node's replicas are published for the
/// other nodes.
pub trait Share: Send + Sync {
    /// Replicas of `service` to run on this node; `None`: hold what runs,
    /// start and stop nothing (the node holds no lease).
    fn replicas_here(&self, service: &str) -> Option<u32>;
    /// The replicas this node runs, after each pass.
    fn report(&self, replicas: Vec<ReplicaInfo>);
    /// A request waits for `service`, which has no ready replica anywhere:
    /// ask the cluster's autoscaler for one. Called for every waiting
    /// request: cheap and idempotent.
    fn activate(&self, service: &str);
    /// Fetches module `digest`, stored but not on this node, into `store`
    /// (from another node).
    fn fetch_module<'a>(
        &'a self,
        digest: &'a str,
        store: Arc<dyn Store>,
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

/// Where a module stands.
#[derive(Debug, Clone)]
enum ModuleState {
    /// Being prepared in the background (or waiting for its turn) since
    /// `since`; `size` bytes (0: unknown).
    Preparing { since: Instant, size: u64 },
    /// Prepared: the file workers load, and whether the component is
    /// marked as serving many requests per instance
    /// ([`shoal_runtime::marker`]).
    Ready { path: PathBuf, reuses: bool },
    /// Failed; tried again once `retry_at` has passed.
    Failed { message: String, retry_at: Instant, attempts: u32 },
}

/// What [`Controller::delete_module`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleDeletion {
    Deleted,
    NotFound,
    /// In use; who uses it, as a sentence.
    InUse(String),
}

/// How long [`Controller::run`] waits, when releasing its pods, for starts
/// in progress to end.
const RELEASE_WAIT: Duration = Duration::from_secs(15);

/// What a `shoal up` hands its successor beside the store: see
/// [`Controller::succession`].
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Succession {
    /// [`Scaler::export`].
    pub autoscaler: serde_json::Value,
    /// What each running replica's pod remembers, by replica name.
    pub replicas: HashMap<String, Memory>,
    /// By service: the pods whose worker is not running (in back-off
    /// after a crash), which the successor starts as they would have been.
    pub waiting: HashMap<String, Vec<Memory>>,
    /// Replicas whose workers were being stopped (a scale-down, an old
    /// revision): the successor leaves them to end.
    pub stopping: Vec<String>,
}

/// The reconciler and the actual state it manages.
pub struct Controller {
    store: Arc<dyn Store>,
    ctx: PodContext,
    logs: Arc<LogBook>,
    cache: ComponentCache,
    engine: Engine,
    data_dir: PathBuf,
    pods: Mutex<Vec<Pod>>,
    /// Workers taken over from an earlier `shoal up`, until a pass makes
    /// them pods (those of a current revision, once its module is ready)
    /// or stops them.
    adopted: Mutex<Vec<Adopted>>,
    /// What a predecessor's pods remembered ([`Succession`]): by replica
    /// name for the pods made of its workers, and by service for those
    /// whose worker was not running, taken by the next pods started.
    inherited: Mutex<Succession>,
    /// Set by [`Controller::release_on_stop`]: [`Controller::run`] ends by
    /// letting go of its pods, not stopping them.
    releasing: std::sync::atomic::AtomicBool,
    /// Each module's preparation, by digest.
    modules: Mutex<HashMap<String, ModuleState>>,
    /// Modules waiting to be prepared, smallest first: (size, digest,
    /// failed attempts so far). One task prepares them, one at a time.
    waiting: Mutex<std::collections::BinaryHeap<std::cmp::Reverse<(u64, String, u32)>>>,
    /// Wakes the preparing task.
    waiting_changed: Arc<tokio::sync::Notify>,
    /// Held while a module's use is checked and changed (apply, delete,
    /// gc), so that a module is never deleted under a service naming it.
    module_lock: Mutex<()>,
    /// How long a module nothing uses is kept.
    module_retention: Duration,
    /// Since when each module has been unused, as seen by the collector.
    unused_since: Mutex<HashMap<String, Instant>>,
    statuses: Mutex<HashMap<String, ServiceStatus>>,
    /// Each service's figures over the last 15 minutes (the dashboard's
    /// charts).
    history: crate::history::History,
    /// Services the gateway knows, to remove deleted ones.
    published: Mutex<HashSet<String>>,
    /// The last reported halt per service, so it is reported once.
    halted: Mutex<HashMap<String, String>>,
    /// The generation last announced ready per service.
    announced: Mutex<HashMap<String, u64>>,
    /// The autoscaler of services with `spec.autoscale`.
    pub scaler: Arc<Scaler>,
    /// Each replica's figures over the last [`USAGE_WINDOW_SECS`], oldest
    /// first, one per tick.
    usage: Mutex<HashMap<String, VecDeque<UsagePoint>>>,
    /// This node's share, in a cluster; alone, every replica runs here.
    share: Arc<std::sync::OnceLock<Arc<dyn Share>>>,
    /// The services as last read from the store, while its revision stays.
    desired: Mutex<Option<Arc<Desired>>>,
    /// The certificate records the gateway was last given: a pass whose
    /// store revision moved for anything else parses none again.
    certificates: Mutex<Vec<crate::store::CertificateRecord>>,
}

/// The stored services as of one store revision, with what each pass needs
/// of them computed once: with a thousand services, decoding them and
/// hashing their revisions on every pass kept a core busy during a storm
/// of cold starts.
struct Desired {
    /// The store's revision they were read at (or after).
    store_revision: u64,
    /// Sorted by name.
    records: Vec<ServiceRecord>,
    /// Each record's [`ServiceRecord::revision`].
    revisions: Vec<String>,
    names: HashSet<String>,
    /// Each service's place in `records`.
    index: HashMap<String, usize>,
}

/// One replica's figures at one tick.
#[derive(Debug, Clone)]
struct UsagePoint {
    at: Instant,
    pid: u32,
    service: String,
    requests: ReplicaSnapshot,
    usage: Usage,
}

impl Controller {
    /// A controller over `store`, with the data directory (for messages)
    /// and how long modules nothing uses are kept.
    pub fn new(
        store: Arc<dyn Store>,
        ctx: PodContext,
        logs: Arc<LogBook>,
        cache: ComponentCache,
        data_dir: PathBuf,
        module_retention: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let engine = shoal_runtime::engine::compiler_engine().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let scaler = Scaler::new(ctx.gateway.clone(), ctx.events.clone(), ctx.dirty.clone());
        let activator = Arc::downgrade(&scaler);
        let share: Arc<std::sync::OnceLock<Arc<dyn Share>>> = Arc::default();
        let cluster = share.clone();
        // In a cluster, the leader's autoscaler decides: this node asks it.
        ctx.gateway.on_activate(move |service| match cluster.get() {
            Some(share) => share.activate(service),
            None => {
                if let Some(scaler) = activator.upgrade() {
                    scaler.activate(service);
                }
            }
        });
        let controller = Arc::new(Self {
            store,
            ctx,
            logs,
            cache,
            engine,
            data_dir,
            pods: Mutex::new(Vec::new()),
            adopted: Mutex::new(Vec::new()),
            inherited: Mutex::default(),
            releasing: std::sync::atomic::AtomicBool::new(false),
            modules: Mutex::new(HashMap::new()),
            waiting: Mutex::new(std::collections::BinaryHeap::new()),
            waiting_changed: Arc::new(tokio::sync::Notify::new()),
            module_lock: Mutex::new(()),
            module_retention,
            unused_since: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            history: crate::history::History::default(),
            published: Mutex::new(HashSet::new()),
            halted: Mutex::new(HashMap::new()),
            announced: Mutex::new(HashMap::new()),
            scaler,
            usage: Mutex::new(HashMap::new()),
            share,
            desired: Mutex::new(None),
            certificates: Mutex::new(Vec::new()),
        });
        let changed = controller.waiting_changed.clone();
        tokio::spawn(Self::prepare_waiting(Arc::downgrade(&controller), changed));
        Ok(controller)
    }

    /// Makes this controller run its node's share of a cluster: from now
    /// on the placement, not `spec.replicas`, says how many replicas run
    /// here.
    pub fn join(&self, share: Arc<dyn Share>) {
        if self.share.set(share).is_err() {
            tracing::warn!("the controller is already in a cluster");
        }
    }

    /// The gateway this node's replicas are published to.
    pub fn gateway(&self) -> &Arc<shoal_gateway::Gateway> {
        &self.ctx.gateway
    }

    /// Asks for a pass now.
    pub fn trigger(&self) {
        self.ctx.changed.notify_one();
    }

    /// Runs passes until `shutdown` turns true, then stops every pod and
    /// waits for them.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let sampler = tokio::spawn(self.clone().sample(shutdown.clone()));
        let collector = tokio::spawn(self.clone().collect_periodically(shutdown.clone()));
        let mut full = true;
        let mut last_full = Instant::now();
        loop {
            if full || last_full.elapsed() >= PERIOD || !self.reconcile_marked() {
                self.reconcile().await;
                last_full = Instant::now();
            }
            full = tokio::select! {
                () = self.ctx.changed.notified() => true,
                () = self.ctx.dirty.marked() => false,
                () = tokio::time::sleep(PERIOD.saturating_sub(last_full.elapsed())) => true,
                _ = shutdown.changed() => true,
            };
            if *shutdown.borrow() {
                break;
            }
        }
        let _ = sampler.await;
        let _ = collector.await;
        if self.releasing.load(std::sync::atomic::Ordering::SeqCst) {
            // Kept in `pods` for [`Controller::succession`]; every task
            // ends once a start in progress is done. Those already
            // stopping go on stopping their workers (not waited for).
            let letting_go: Vec<usize> = {
                let pods = self.pods.lock().expect("pods lock");
                let serving = (0..pods.len()).filter(|&i| !pods[i].stopping()).collect();
                pods.iter().for_each(Pod::release);
                serving
            };
            let deadline = Instant::now() + RELEASE_WAIT;
            loop {
                let done = {
                    let pods = self.pods.lock().expect("pods lock");
                    letting_go.iter().all(|&i| pods[i].finished())
                };
                if done || Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let pods: Vec<Pod> = std::mem::take(&mut *self.pods.lock().expect("pods lock"));
        for pod in &pods {
            pod.stop();
        }
        for pod in pods {
            pod.wait().await;
        }
    }

    /// Makes [`Controller::run`] end, when told to stop, by letting go of
    /// every pod with its worker running (a handover to another `shoal
    /// up`), instead of stopping them.
    pub fn release_on_stop(&self) {
        self.releasing.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// What a successor needs that the store does not hold: the
    /// autoscaler's state and each replica's restart count. Taken after
    /// [`Controller::run`] released the pods.
    pub fn succession(&self) -> Succession {
        let mut succession = Succession { autoscaler: self.scaler.export(), ..Succession::default() };
        for pod in self.pods.lock().expect("pods lock").iter() {
            if !pod.released() {
                if !pod.finished() {
                    succession.stopping.push(pod.name.clone());
                }
                continue;
            }
            let status = pod.status();
            if status.pid.is_some() {
                succession.replicas.insert(pod.name.clone(), pod.memory());
            } else if status.retry_at.is_some() {
                succession.waiting.entry(pod.service.clone()).or_default().push(pod.memory());
            }
        }
        succession
    }

    /// Takes on a predecessor's [`Controller::succession`], before the
    /// first pass.
    pub fn inherit(&self, succession: Succession) {
        self.scaler.restore(succession.autoscaler);
        let mut inherited = self.inherited.lock().expect("inherited lock");
        inherited.replicas.extend(succession.replicas);
        inherited.waiting.extend(succession.waiting);
        inherited.stopping.extend(succession.stopping);
    }

    /// Every [`GC_PERIOD`] until shutdown: deletes the modules nothing has
    /// used for the retention period.
    async fn collect_periodically(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(GC_PERIOD.min(self.module_retention.max(Duration::from_secs(1))));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            let this = self.clone();
            let retention = self.module_retention;
            match tokio::task::spawn_blocking(move || this.collect_modules(retention)).await {
                Ok(Ok(deleted)) => {
                    for module in deleted {
                        tracing::info!(module = %module.digest, size = module.size, "deleted an unused module");
                    }
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot collect unused modules"),
                Err(error) => tracing::warn!(%error, "module collector failed"),
            }
        }
    }

    /// Every [`TICK`] until shutdown: the autoscaler's sample and decision,
    /// and each replica's figures for `shoal top` and `/metrics`.
    async fn sample(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            // In a cluster, the leader's autoscaler scales.
            if self.share.get().is_none() {
                self.scaler.tick();
            }
            let snapshot = self.ctx.gateway.snapshot();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            {
                let statuses = self.statuses.lock().expect("status lock");
                self.history.record(
                    &snapshot,
                    |name| {
                        statuses.get(name).map_or_else(crate::history::Status::default, |s| crate::history::Status {
                            ready: s.ready,
                            desired: s.desired,
                            panic: s.scale.as_ref().is_some_and(|scale| scale.panic),
                        })
                    },
                    now_ms,
                );
            }
            let this = self.clone();
            // Reading /proc and cgroup files blocks.
            let _ = tokio::task::spawn_blocking(move || this.record_usage(&snapshot)).await;
        }
    }

    fn record_usage(&self, snapshot: &[ServiceSnapshot]) {
        let running: Vec<(String, u32, Option<String>)> = self
            .pods
            .lock()
            .expect("pods lock")
            .iter()
            .filter_map(|p| {
                let s = p.status();
                Some((p.name.clone(), s.pid?, s.cgroup))
            })
            .collect();
        let now = Instant::now();
        // Read /proc and the cgroups before taking the lock `top` and
        // `/metrics` wait on.
        let points: Vec<(String, UsagePoint)> = running
            .into_iter()
            .filter_map(|(name, pid, cgroup)| {
                let (service, requests) = snapshot.iter().find_map(|s| {
                    s.replicas.iter().find(|(n, _)| *n == name).map(|(_, r)| (s.name.clone(), r.clone()))
                })?;
                let usage = self.ctx.agent.usage(pid, cgroup.as_deref());
                Some((name, UsagePoint { at: now, pid, service, requests, usage }))
            })
            .collect();
        let keep = USAGE_WINDOW_SECS as usize + 1;
        let mut history = self.usage.lock().expect("usage lock");
        history.retain(|name, _| points.iter().any(|(n, _)| n == name));
        for (name, point) in points {
            let series = history.entry(name).or_default();
            // A restarted replica keeps its name, not its CPU counter.
            if series.back().is_some_and(|last| last.pid != point.pid) {
                series.clear();
            }
            series.push_back(point);
            while series.len() > keep {
                series.pop_front();
            }
        }
    }

    /// Each running replica's figures over the last window, sorted by name.
    /// The calls services made (of `service`, as caller or target, when
    /// it is given), since Shoal started.
    pub fn calls(&self, service: Option<&str>) -> Vec<shoal_api::CallUsage> {
        let zero = shoal_gateway::metrics::ReplicaSnapshot::default();
        self.ctx
            .gateway
            .call_snapshot()
            .into_iter()
            .filter(|c| service.is_none_or(|s| c.caller == s || (c.internal && c.target == s)))
            .map(|c| shoal_api::CallUsage {
                p50_ms: c.responses.quantile_since(&zero, 0.5).map(|s| s * 1000.0),
                p99_ms: c.responses.quantile_since(&zero, 0.99).map(|s| s * 1000.0),
                caller: c.caller,
                target: c.target,
                internal: c.internal,
                responses: c.responses.responses,
                failed: c.failed,
                denied: c.denied,
            })
            .collect()
    }

    pub fn top(&self, service: Option<&str>) -> Vec<ReplicaUsage> {
        let history = self.usage.lock().expect("usage lock");
        let mut out: Vec<ReplicaUsage> = history
            .iter()
            .filter_map(|(name, points)| {
                let (first, last) = (points.front()?, points.back()?);
                if service.is_some_and(|s| s != last.service) {
                    return None;
                }
                let seconds = last.at.saturating_duration_since(first.at).as_secs_f64();
                let requests = last.requests.count().saturating_sub(first.requests.count());
                let cpu = match (first.usage.cpu, last.usage.cpu) {
                    (Some(a), Some(b)) if seconds > 0.0 => {
                        Some((b.saturating_sub(a).as_secs_f64() * 1000.0 / seconds) as u64)
                    }
                    _ => None,
                };
                Some(ReplicaUsage {
                    name: name.clone(),
                    service: last.service.clone(),
                    in_flight: last.requests.in_flight,
                    rps: if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
                    p99_ms: last.requests.quantile_since(&first.requests, 0.99).map(|s| s * 1000.0),
                    cpu_millis: cpu,
                    memory_bytes: last.usage.memory,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The points of `service` after `since_ms` (Unix ms), oldest first.
    pub fn history(&self, service: &str, since_ms: u64) -> Vec<crate::history::Point> {
        self.history.series(service, since_ms)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.ctx.node
    }

    /// How this node starts replicas: its start gate and standby pool.
    pub fn starts(&self) -> shoal_api::NodeStarts {
        let status = self.ctx.agent.start_status();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        shoal_api::NodeStarts {
            concurrency: count(status.gate.limit),
            in_progress: count(status.gate.running),
            waiting: count(status.gate.waiting),
            standby: count(status.standby),
            standby_target: count(status.standby_target),
            standby_max: count(status.standby_max),
            started: status.starts,
            from_standby: status.from_standby,
        }
    }

    /// The memory the replicas running here reserve: each its service's
    /// `resources.memory`.
    pub fn reserved_memory(&self) -> u64 {
        let desired = self.desired.lock().expect("desired lock").clone();
        let Some(desired) = desired else { return 0 };
        let pods = self.pods.lock().expect("pods lock");
        pods.iter()
            .filter(|pod| !pod.stopping())
            .filter_map(|pod| {
                desired.index.get(&pod.service).map(|&i| desired.records[i].service.spec.resources.memory)
            })
            .sum()
    }

    /// What `/metrics` reports now.
    pub fn scrape(&self) -> crate::metrics::Scrape {
        let from_zero: HashMap<String, u64> = self.scaler.from_zero_counts().into_iter().collect();
        let grace: HashMap<String, Duration> = self
            .desired
            .lock()
            .expect("desired lock")
            .as_ref()
            .map(|desired| {
                desired
                    .records
                    .iter()
                    .filter_map(|r| {
                        Some((r.service.name.clone(), r.service.spec.autoscale.as_ref()?.scale_to_zero_grace_period))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let figures = self
            .statuses
            .lock()
            .expect("status lock")
            .values()
            .map(|s| {
                let figures = crate::metrics::ServiceFigures {
                    desired: s.desired,
                    ready: s.ready,
                    panic: s.scale.as_ref().is_some_and(|d| d.panic),
                    from_zero: from_zero.get(&s.name).copied().unwrap_or(0),
                    scale_to_zero_grace: grace.get(&s.name).copied(),
                };
                (s.name.clone(), figures)
            })
            .collect();
        crate::metrics::Scrape {
            services: self.ctx.gateway.snapshot(),
            figures,
            usage: self.latest_usage(),
            calls: self.ctx.gateway.call_snapshot(),
            starts: self.ctx.agent.start_status(),
            handshakes: self.ctx.gateway.https_port().map(|_| self.ctx.gateway.tls_stats().snapshot()),
            certificates: self
                .ctx
                .gateway
                .certificates()
                .list()
                .into_iter()
                .map(|(host, certificate)| (host, certificate.info.not_after_unix))
                .collect(),
        }
    }

    /// The latest resource use of each running replica, by name.
    pub fn latest_usage(&self) -> HashMap<String, Usage> {
        let history = self.usage.lock().expect("usage lock");
        history.iter().filter_map(|(name, points)| Some((name.clone(), points.back()?.usage))).collect()
    }

    /// One pass.
    pub async fn reconcile(self: &Arc<Self>) {
        let (desired, changed) = match self.desired() {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "cannot read services from the store");
                return;
            }
        };
        let records = &desired.records;
        // This pass covers the marked services too.
        self.ctx.dirty.take();
        self.reap();
        if changed {
            self.sync_certificates();
            self.scaler.sync(records);
            // Routes first: every service's, before anything can take time.
            for record in records {
                self.publish(record);
            }
        }
        // Each service's pods, by index: a pass only appends to the list.
        let mut pods_of: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, pod) in self.pods.lock().expect("pods lock").iter().enumerate() {
            pods_of.entry(pod.service.clone()).or_default().push(i);
        }
        for (record, revision) in records.iter().zip(&desired.revisions) {
            let pods = pods_of.get(&record.service.name).map_or(&[][..], Vec::as_slice);
            self.pass_service(record, revision, pods);
        }
        if let Some(share) = self.share.get() {
            share.report(self.replicas(None));
        }
        self.stop_unadopted(&desired);

        // Services no longer desired: stop their pods; their routes stay
        // (answering 503) until the last of their pods is gone.
        let names = &desired.names;
        let mut draining: HashSet<String> = HashSet::new();
        for pod in self.pods.lock().expect("pods lock").iter() {
            if !names.contains(&pod.service) {
                if !pod.stopping() {
                    pod.stop();
                }
                draining.insert(pod.service.clone());
            }
        }
        let mut published = self.published.lock().expect("published lock");
        for gone in published.difference(names).cloned().collect::<Vec<_>>() {
            // Requests waiting for a replica of it get their 503 now.
            self.ctx.gateway.set_activator(&gone, 0);
            if draining.contains(&gone) {
                continue;
            }
            self.ctx.gateway.remove_service(&gone);
            self.statuses.lock().expect("status lock").remove(&gone);
            self.halted.lock().expect("halted lock").remove(&gone);
            self.announced.lock().expect("announced lock").remove(&gone);
            published.remove(&gone);
        }
    }

    /// A pass over the services marked since the last one ([`Dirty`]):
    /// their pods changed, or the autoscaler changed their count. Returns
    /// false, having done nothing, when a full pass is needed instead: the
    /// store changed, a marked service is no longer stored (its routes go
    /// once its last pod is gone), or this node is in a cluster (which
    /// hears of every pass).
    fn reconcile_marked(self: &Arc<Self>) -> bool {
        if self.share.get().is_some() {
            return false;
        }
        let desired = match self.desired() {
            Ok((desired, false)) => desired,
            Ok((_, true)) | Err(_) => return false,
        };
        let marked = self.ctx.dirty.take();
        if marked.iter().any(|name| !desired.index.contains_key(name)) {
            return false;
        }
        self.reap();
        let mut pods_of: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, pod) in self.pods.lock().expect("pods lock").iter().enumerate() {
            if let Some(name) = marked.get(&pod.service) {
                pods_of.entry(name.as_str()).or_default().push(i);
            }
        }
        for name in &marked {
            let i = desired.index[name];
            let pods = pods_of.get(name.as_str()).map_or(&[][..], Vec::as_slice);
            self.pass_service(&desired.records[i], &desired.revisions[i], pods);
        }
        true
    }

    /// Takes charge of workers an earlier `shoal up` left running: each of
    /// a service's current revision becomes one of its pods once the
    /// module is ready; the others are stopped.
    pub fn take_over(&self, workers: Vec<Adopted>) {
        let stopping = std::mem::take(&mut self.inherited.lock().expect("inherited lock").stopping);
        let (ending, workers): (Vec<Adopted>, Vec<Adopted>) =
            workers.into_iter().partition(|a| stopping.contains(&a.identity.replica));
        for Adopted { identity, .. } in ending {
            tracing::info!(replica = %identity.replica, "not taking over a worker the predecessor was stopping");
        }
        self.adopted.lock().expect("adopted lock").extend(workers);
    }

    /// Whether workers taken over are still on their way into the
    /// gateway's rotation: waiting for a pass (their module being
    /// prepared), or made pods that are not ready yet (their readiness
    /// probe). A successor serves once none is, so that it never answers
    /// 503 for a replica its predecessor was serving with.
    pub fn taking_over(&self) -> bool {
        if !self.adopted.lock().expect("adopted lock").is_empty() {
            return true;
        }
        self.pods.lock().expect("pods lock").iter().any(|pod| {
            let status = pod.status();
            pod.adopted && !status.ever_ready && !pod.finished() && !pod.stopping()
        })
    }

    /// The pods made now of taken-over workers of `record`'s service whose
    /// module is ready: those running `revision` (the current one), and
    /// those running an earlier revision the history keeps (a rollout was
    /// in progress, or the manifest changed with the restart), which the
    /// rollout then replaces as it replaces any old pod. Their indices.
    fn adopt(self: &Arc<Self>, record: &ServiceRecord, revision: &str, module: &ModuleState) -> Vec<usize> {
        let name = &record.service.name;
        let mine: Vec<Adopted> = {
            let mut waiting = self.adopted.lock().expect("adopted lock");
            if !waiting.iter().any(|a| a.identity.service == *name) {
                return Vec::new();
            }
            let (mine, others) = std::mem::take(&mut *waiting).into_iter().partition(|a| a.identity.service == *name);
            *waiting = others;
            mine
        };
        let mut keep = Vec::new();
        let mut made = Vec::new();
        for adopted in mine {
            let worker_revision = revision_of(&adopted.identity.replica).unwrap_or_default().to_owned();
            let (service, digest, state) = if worker_revision == revision {
                (&record.service, &record.module_digest, module.clone())
            } else if let Some(entry) = record.history.iter().find(|e| e.revision == worker_revision) {
                (&entry.service, &entry.module_digest, self.module(&entry.module_digest))
            } else {
                // Of no revision kept: stopped by the pass.
                keep.push(adopted);
                continue;
            };
            let ModuleState::Ready { path, reuses } = state else {
                keep.push(adopted);
                continue;
            };
            let spec =
                replica_spec(service, adopted.identity.replica.clone(), &path, service.spec.instances.policy(reuses));
            let memory = self
                .inherited
                .lock()
                .expect("inherited lock")
                .replicas
                .remove(&adopted.identity.replica)
                .unwrap_or_default();
            let pair = (worker_revision, digest.clone());
            let up = Duration::from_secs(shoal_api::objects::now_unix().saturating_sub(adopted.identity.ready_unix));
            made.push(Pod::adopt(self.ctx.clone(), spec, probes(service), pair, (adopted.replica, memory, up)));
        }
        self.adopted.lock().expect("adopted lock").extend(keep);
        let mut pods = self.pods.lock().expect("pods lock");
        let first = pods.len();
        pods.extend(made);
        (first..pods.len()).collect()
    }

    /// Stops the taken-over workers no pass will make pods of: of services
    /// not stored, of revisions neither current nor in the history, of
    /// modules that failed.
    fn stop_unadopted(&self, desired: &Desired) {
        let mut waiting = self.adopted.lock().expect("adopted lock");
        let modules = self.modules.lock().expect("modules lock");
        let (keep, stop): (Vec<Adopted>, Vec<Adopted>) = std::mem::take(&mut *waiting).into_iter().partition(|a| {
            desired.index.get(&a.identity.service).is_some_and(|&i| {
                let record = &desired.records[i];
                let revision = revision_of(&a.identity.replica);
                let digest = if revision == Some(desired.revisions[i].as_str()) {
                    Some(&record.module_digest)
                } else {
                    record.history.iter().find(|e| Some(e.revision.as_str()) == revision).map(|e| &e.module_digest)
                };
                digest.is_some_and(|digest| !matches!(modules.get(digest), Some(ModuleState::Failed { .. })))
            })
        });
        *waiting = keep;
        drop((waiting, modules));
        for Adopted { identity, mut replica } in stop {
            let agent = self.ctx.agent.clone();
            tracing::info!(replica = %identity.replica, "stopping a taken-over worker no service wants");
            tokio::spawn(async move { agent.stop(&mut replica, GRACE).await });
        }
    }

    /// One service's part of a pass: its module, its pods, its status.
    fn pass_service(self: &Arc<Self>, record: &ServiceRecord, revision: &str, pods: &[usize]) {
        let module = self.module(&record.module_digest);
        let adopted = self.adopt(record, revision, &module);
        let with_adopted: Vec<usize>;
        let pods = if adopted.is_empty() {
            pods
        } else {
            with_adopted = pods.iter().copied().chain(adopted).collect();
            &with_adopted
        };
        let status = self.reconcile_service(record, revision, pods, &module);
        self.announce(&status);
        self.statuses.lock().expect("status lock").insert(record.service.name.clone(), status);
    }

    /// The stored services, read again only when the store's revision
    /// moved; and whether they were (then the pass publishes them).
    fn desired(&self) -> Result<(Arc<Desired>, bool), StoreError> {
        let revision = self.store.revision()?;
        let mut cached = self.desired.lock().expect("desired lock");
        if let Some(desired) = cached.as_ref().filter(|d| d.store_revision == revision) {
            return Ok((desired.clone(), false));
        }
        // A write between the two reads is seen by the next pass: the
        // records are at least as new as `revision`.
        let records = self.store.services()?;
        let desired = Arc::new(Desired {
            store_revision: revision,
            revisions: records.iter().map(ServiceRecord::revision).collect(),
            names: records.iter().map(|r| r.service.name.clone()).collect(),
            index: records.iter().enumerate().map(|(i, r)| (r.service.name.clone(), i)).collect(),
            records,
        });
        *cached = Some(desired.clone());
        Ok((desired, true))
    }

    /// Gives the gateway's TLS listener the stored certificates per host,
    /// when they changed since the last time (it keeps serving the ones it
    /// has if the store cannot be read). A
    /// stored certificate that no longer loads is left out, with an error
    /// logged: its host gets the default certificate.
    pub fn sync_certificates(&self) {
        let records = match self.store.certificates() {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "cannot read the certificates from the store");
                return;
            }
        };
        let mut synced = self.certificates.lock().expect("certificates lock");
        if *synced == records {
            return;
        }
        let mut hosts = Vec::with_capacity(records.len());
        for record in records.iter().cloned() {
            match shoal_gateway::tls::Certificate::parse(record.cert_pem.as_bytes(), record.key_pem.as_bytes()) {
                Ok(certificate) => hosts.push((record.host, Arc::new(certificate.with_origin("store")))),
                Err(error) => {
                    tracing::error!(host = %record.host, %error, "a stored certificate does not load; the host gets the default")
                }
            }
        }
        self.ctx.gateway.certificates().set_hosts(hosts);
        *synced = records;
    }

    /// Publishes a service's routes, deadline and body limit to the gateway.
    fn publish(&self, record: &ServiceRecord) {
        let spec = &record.service.spec;
        self.ctx.gateway.set_service(&record.service.name, spec.routes.clone(), spec.timeout, spec.limits.request_body);
        self.published.lock().expect("published lock").insert(record.service.name.clone());
    }

    /// Records a `Ready` event the first time a generation is fully rolled
    /// out.
    fn announce(&self, status: &ServiceStatus) {
        if status.rollout != RolloutPhase::Complete {
            return;
        }
        let mut announced = self.announced.lock().expect("announced lock");
        if announced.get(&status.name) == Some(&status.generation) {
            return;
        }
        announced.insert(status.name.clone(), status.generation);
        self.ctx.events.normal(
            format!("service/{}", status.name),
            "Ready",
            format!("{}/{} replicas ready (revision {})", status.ready, status.desired, status.revision),
        );
    }

    /// Drops pods whose task ended, and their logs (when a pod went: a pass
    /// where none did costs one look at each pod, not a set of their names).
    fn reap(&self) {
        let mut pods = self.pods.lock().expect("pods lock");
        let before = pods.len();
        pods.retain(|p| !p.finished());
        if pods.len() == before {
            return;
        }
        let alive: HashSet<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        self.logs.retain(|replica| alive.contains(replica));
    }

    /// One service's pass: `revision` is the record's, `indices` its pods'
    /// places in the pod list.
    fn reconcile_service(
        &self,
        record: &ServiceRecord,
        revision: &str,
        indices: &[usize],
        module: &ModuleState,
    ) -> ServiceStatus {
        let service = &record.service;
        let name = &service.name;
        let digest = &record.module_digest;
        // Autoscaled services hold requests while they have no replica (as
        // many as one replica takes on), unless no replica can start.
        let max_held = match (&service.spec.autoscale, module) {
            (Some(_), ModuleState::Ready { .. } | ModuleState::Preparing { .. }) => {
                u64::from(service.spec.admitted_concurrency()) + u64::from(service.spec.limits.queue)
            }
            _ => 0,
        };
        self.ctx.gateway.set_activator(name, max_held);
        let revision = revision.to_owned();
        // In a cluster, this node's share; `None` holds what runs.
        let (desired, hold) = match self.share.get().map(|share| share.replicas_here(name)) {
            None => (self.scaler.desired(name).unwrap_or(service.spec.replicas) as usize, false),
            Some(Some(here)) => (here as usize, false),
            Some(None) => (0, true),
        };
        let mut phase = RolloutPhase::Progressing;
        let mut message = match module {
            ModuleState::Ready { .. } => None,
            ModuleState::Preparing { since, size } => Some(preparing_message(digest, *size, since.elapsed())),
            ModuleState::Failed { message, .. } => {
                phase = RolloutPhase::Halted;
                Some(format!("module sha256:{} cannot be prepared: {message}", short(digest)))
            }
        };
        let (module, instances): (Result<PathBuf, ()>, _) = match module {
            ModuleState::Ready { path, reuses } => (Ok(path.clone()), Some(service.spec.instances.policy(*reuses))),
            _ => (Err(()), None),
        };

        let mut pods = self.pods.lock().expect("pods lock");
        let live: Vec<usize> = indices.iter().copied().filter(|&i| !pods[i].stopping()).collect();
        let (current, old): (Vec<usize>, Vec<usize>) = live.iter().partition(|&&i| pods[i].revision == revision);
        let ready = |i: &usize| pods[*i].status().ready;
        let ready_current = current.iter().filter(|i| ready(i)).count();
        let mut to_start = 0;
        let mut to_stop: Vec<usize> = Vec::new();

        // A pod of this revision that failed before it was ever ready
        // halts the rollout (the old pods, if any, keep serving).
        let failed = current.iter().map(|&i| &pods[i]).find(|p| {
            let s = p.status();
            !s.ever_ready && s.restarts > 0
        });
        if let Some(pod) = failed {
            phase = RolloutPhase::Halted;
            let why = pod.status().message.unwrap_or_else(|| "it failed".into());
            let mut text = format!("replica {} of revision {revision} failed before becoming ready ({why})", pod.name);
            if !old.is_empty() {
                text.push_str(&format!("; the {} replica(s) of the previous revision keep serving", old.len()));
            }
            let mut halted = self.halted.lock().expect("halted lock");
            if halted.get(name) != Some(&text) {
                self.ctx.events.warning(format!("service/{name}"), "RolloutHalted", text.clone());
                halted.insert(name.clone(), text.clone());
            }
            message = Some(text);
        }

        if old.is_empty() {
            if current.len() < desired && module.is_ok() {
                to_start = desired - current.len();
            }
            if current.len() > desired {
                let mut extra = current.clone();
                // Not-ready pods go first, then the newest.
                extra.sort_by_key(|&i| {
                    let s = pods[i].status();
                    (s.ready, std::cmp::Reverse(s.started_unix))
                });
                to_stop.extend(extra.into_iter().take(current.len() - desired));
            }
            if current.len() == desired && ready_current == desired && failed.is_none() && module.is_ok() {
                phase = RolloutPhase::Complete;
                self.halted.lock().expect("halted lock").remove(name);
            }
        } else {
            // Take old pods away while enough ready pods remain.
            let mut old_sorted = old.clone();
            old_sorted.sort_by_key(|i| ready(i));
            let mut ready_old = old.iter().filter(|i| ready(i)).count();
            let floor = desired.saturating_sub(MAX_UNAVAILABLE);
            for i in old_sorted {
                // Taken over from another `shoal up` and not probed yet: it
                // was serving there; its first probe says what it is.
                let s = pods[i].status();
                if pods[i].adopted && !s.ever_ready && s.message.is_none() {
                    continue;
                }
                if !ready(&i) {
                    to_stop.push(i);
                } else if ready_current + ready_old > floor {
                    to_stop.push(i);
                    ready_old -= 1;
                }
            }
            // Then surge: a new pod if the total stays within the limit.
            let old_left = old.len() - to_stop.len();
            if failed.is_none()
                && module.is_ok()
                && current.len() < desired
                && current.len() + old_left < desired + MAX_SURGE
            {
                to_start = 1;
            }
        }

        if hold {
            to_start = 0;
            to_stop.clear();
        }
        for &i in &to_stop {
            pods[i].stop();
        }
        let before = pods.len();
        if let (Ok(path), Some(instances)) = (&module, instances) {
            // Woken from zero: its start goes in line from when the first
            // request arrived.
            let asked = if to_start > 0 { self.scaler.take_activation(name) } else { None };
            let asked = asked.unwrap_or_else(Instant::now);
            for _ in 0..to_start {
                let spec = replica_spec(service, replica_name(name, &revision), path, instances);
                // A pod the predecessor had in back-off goes on from there.
                let memory = self.inherited.lock().expect("inherited lock").waiting.get_mut(name).and_then(Vec::pop);
                let (ctx, pair) = (self.ctx.clone(), (asked, memory.unwrap_or_default()));
                pods.push(Pod::start(ctx, spec, probes(service), revision.clone(), digest.clone(), pair));
            }
        }
        if message.is_none() && phase != RolloutPhase::Complete {
            message = current.iter().filter_map(|&i| pods[i].status().message).next();
        }

        let added = before..pods.len();
        let live: Vec<&Pod> =
            indices.iter().copied().chain(added).map(|i| &pods[i]).filter(|p| !p.stopping()).collect();
        let ready_all = live.iter().filter(|p| p.status().ready).count() as u32;
        ServiceStatus {
            name: name.clone(),
            desired: desired as u32,
            ready: ready_all,
            updated: live.iter().filter(|p| p.revision == revision).count() as u32,
            available: ready_all,
            revision,
            generation: record.generation,
            observed_generation: record.generation,
            rollout: phase,
            message,
            routes: service.spec.routes.clone(),
            scale: self.scaler.status(name),
            instances,
        }
    }

    /// Where module `digest` stands; starts preparing it (in the
    /// background) when it is new, or failed and due for another try.
    fn module(self: &Arc<Self>, digest: &str) -> ModuleState {
        let mut modules = self.modules.lock().expect("modules lock");
        let due = match modules.get(digest) {
            None => true,
            Some(ModuleState::Failed { retry_at, .. }) => Instant::now() >= *retry_at,
            Some(state) => return state.clone(),
        };
        if !due {
            return modules[digest].clone();
        }
        let size = self.store.module_info(digest).ok().flatten().map(|m| m.size);
        let preparing = ModuleState::Preparing { since: Instant::now(), size: size.unwrap_or(0) };
        let attempts = match modules.insert(digest.to_owned(), preparing.clone()) {
            Some(ModuleState::Failed { attempts, .. }) => attempts,
            _ => 0,
        };
        drop(modules);
        let order = size.unwrap_or(u64::MAX);
        self.waiting.lock().expect("waiting lock").push(std::cmp::Reverse((order, digest.to_owned(), attempts)));
        self.waiting_changed.notify_one();
        preparing
    }

    /// Prepares the waiting modules, smallest first, one at a time, for as
    /// long as the controller exists (started by [`Controller::new`]).
    async fn prepare_waiting(this: std::sync::Weak<Self>, changed: Arc<tokio::sync::Notify>) {
        loop {
            let next = match this.upgrade() {
                Some(controller) => controller.waiting.lock().expect("waiting lock").pop(),
                None => return,
            };
            let Some(std::cmp::Reverse((_, digest, attempts))) = next else {
                changed.notified().await;
                continue;
            };
            let Some(controller) = this.upgrade() else { return };
            // In a cluster, a module pushed to another node is fetched
            // from one first.
            if let Some(share) = controller.share.get().cloned() {
                let (store, target) = (controller.store.clone(), digest.clone());
                let missing = tokio::task::spawn_blocking(move || {
                    matches!(store.module_info(&target), Ok(Some(_))) && matches!(store.module_file(&target), Ok(None))
                })
                .await
                .unwrap_or(false);
                if missing && let Err(message) = share.fetch_module(&digest, controller.store.clone()).await {
                    controller.prepared(&digest, Err(message), attempts);
                    continue;
                }
            }
            let (worker, target) = (controller.clone(), digest.clone());
            let started = Instant::now();
            let mut preparation = tokio::task::spawn_blocking(move || worker.prepare(&target));
            // Long work says so: an event once it has taken a while, and
            // another when it ends (quick ones, the usual case with the
            // compile cache, stay quiet).
            let object = format!("module/sha256:{digest}");
            let size = controller.store.module_info(&digest).ok().flatten().map_or(0, |m| m.size);
            let result = match tokio::time::timeout(PREPARATION_REPORTED, &mut preparation).await {
                Ok(result) => result,
                Err(_) => {
                    controller.ctx.events.normal(
                        &object,
                        "Preparing",
                        format!("preparing module sha256:{} ({}): checking and compiling it", short(&digest), mb(size)),
                    );
                    preparation.await
                }
            };
            let result = result.unwrap_or_else(|e| Err(format!("module preparation failed: {e}")));
            let took = started.elapsed();
            if took >= PREPARATION_REPORTED
                && let Ok((_, _, outcome)) = &result
            {
                let how = match outcome {
                    CacheOutcome::Compiled => "compiled",
                    CacheOutcome::Hit => "from the compile cache",
                };
                controller.ctx.events.normal(
                    &object,
                    "Prepared",
                    format!(
                        "module sha256:{} ({}) prepared in {:.1}s ({how})",
                        short(&digest),
                        mb(size),
                        took.as_secs_f64()
                    ),
                );
            }
            controller.prepared(&digest, result.map(|(path, reuses, _)| (path, reuses)), attempts);
        }
    }

    /// Records how a preparation ended, reports a failure once, and asks
    /// for a pass.
    fn prepared(&self, digest: &str, result: Result<(PathBuf, bool), String>, attempts: u32) {
        let state = match result {
            Ok((path, reuses)) => ModuleState::Ready { path, reuses },
            Err(message) => {
                let retry = RETRY_START.saturating_mul(1 << attempts.min(10)).min(RETRY_MAX);
                let previous = match self.modules.lock().expect("modules lock").get(digest) {
                    Some(ModuleState::Failed { message, .. }) => Some(message.clone()),
                    _ => None,
                };
                if previous.as_deref() != Some(message.as_str()) {
                    self.ctx.events.warning(format!("module/sha256:{digest}"), "ModuleInvalid", message.clone());
                }
                ModuleState::Failed { message, retry_at: Instant::now() + retry, attempts: attempts + 1 }
            }
        };
        let mut modules = self.modules.lock().expect("modules lock");
        // A module deleted meanwhile stays forgotten.
        if modules.contains_key(digest) {
            modules.insert(digest.to_owned(), state);
        }
        drop(modules);
        self.trigger();
    }

    /// Prepares module `digest` (blocking): its file, checked against the
    /// digest, compiled into the cache and linked as a `wasi:http` proxy.
    /// Returns the file and whether the component is marked as serving
    /// many requests per instance.
    fn prepare(&self, digest: &str) -> Result<(PathBuf, bool, CacheOutcome), String> {
        let started = Instant::now();
        let path = match self.store.module_file(digest) {
            Ok(Some(path)) => path,
            Ok(None) => return Err(format!("module sha256:{digest} is not in the store; push it again")),
            Err(error) => return Err(error.to_string()),
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let outcome = self.cache.check_bytes(&self.engine, &path, &bytes).map_err(|e| match e {
            e if e.is_disk_full() => {
                StoreError::DiskFull { dir: self.data_dir.clone(), what: "compile the module".to_owned() }.to_string()
            }
            e => e.to_string(),
        })?;
        let reuses = shoal_runtime::marker::supports_reuse(&bytes);
        tracing::info!(module = %short(digest), ?outcome, reuses, elapsed = ?started.elapsed(), "module prepared");
        Ok((path, reuses, outcome))
    }

    /// The check a module passes before it is stored: a component that
    /// compiles (into the cache) and links as a `wasi:http` proxy. `path`
    /// is a staged upload (Shoal's own file, which nothing else writes) and
    /// `digest` the sha256 the store computed of it. A module refused here
    /// leaves no compiled artifact behind (unless the same module is stored).
    pub fn check_module(&self, path: &std::path::Path, digest: &str) -> Result<CacheOutcome, ModuleError> {
        let checked = self.cache.check_file(&self.engine, path, digest);
        if checked.is_err() && !matches!(self.store.module_info(digest), Ok(Some(_))) {
            self.cache.forget(digest);
        }
        checked
    }

    /// Forgets the compiled artifact of an upload that was checked but not
    /// stored, unless the module is stored anyway.
    pub fn upload_abandoned(&self, digest: &str) {
        if !matches!(self.store.module_info(digest), Ok(Some(_))) {
            self.cache.forget(digest);
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Held while a module's use is checked and changed (apply, delete,
    /// gc).
    pub fn module_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.module_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The services with pods still running module `digest`.
    pub fn services_running(&self, digest: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods
            .lock()
            .expect("pods lock")
            .iter()
            .filter(|p| p.digest == digest && !p.finished())
            .map(|p| p.service.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Who uses module `digest` (a stored service, or pods still running
    /// it), as a sentence.
    fn module_users(&self, digest: &str, services: &[ServiceRecord]) -> Option<String> {
        let mut users: Vec<&str> =
            services.iter().filter(|r| r.module_digest == digest).map(|r| r.service.name.as_str()).collect();
        if !users.is_empty() {
            users.sort_unstable();
            return Some(format!(
                "service {} runs it (delete the service or apply another module first)",
                users.join(", ")
            ));
        }
        let mut kept: Vec<&str> = services
            .iter()
            .filter(|r| {
                r.previous.as_ref().is_some_and(|p| p.module_digest == digest)
                    || r.history.iter().any(|entry| entry.module_digest == digest)
            })
            .map(|r| r.service.name.as_str())
            .collect();
        if !kept.is_empty() {
            kept.sort_unstable();
            return Some(format!(
                "an earlier revision of service {} runs it (shoal rollout undo goes back to it; shoal rollout history lists them)",
                kept.join(", ")
            ));
        }
        let running = self.services_running(digest);
        if !running.is_empty() {
            return Some(format!(
                "replicas of service {} still run it (a rollout is replacing them); try again once they are gone",
                running.join(", ")
            ));
        }
        if matches!(self.modules.lock().expect("modules lock").get(digest), Some(ModuleState::Preparing { .. })) {
            return Some("it is being prepared (compiled) now; try again once that is done".to_owned());
        }
        None
    }

    /// Deletes module `digest` unless something uses it (blocking).
    pub fn delete_module(&self, digest: &str) -> Result<ModuleDeletion, StoreError> {
        let _lock = self.module_lock();
        if self.store.module_info(digest)?.is_none() {
            return Ok(ModuleDeletion::NotFound);
        }
        if let Some(users) = self.module_users(digest, &self.store.services()?) {
            return Ok(ModuleDeletion::InUse(users));
        }
        self.remove_module(digest)?;
        self.compact();
        Ok(ModuleDeletion::Deleted)
    }

    /// Compacts the store after deletions; a failure is logged, not
    /// returned: what was deleted is gone either way.
    fn compact(&self) {
        if let Err(error) = self.store.compact() {
            tracing::warn!(%error, "cannot compact the store after deleting modules");
        }
    }

    fn remove_module(&self, digest: &str) -> Result<(), StoreError> {
        self.store.delete_module(digest)?;
        self.cache.forget(digest);
        self.modules.lock().expect("modules lock").remove(digest);
        self.unused_since.lock().expect("unused lock").remove(digest);
        self.ctx.events.normal(format!("module/sha256:{digest}"), "Deleted", "module deleted; its space is free");
        Ok(())
    }

    /// Forgets a failed preparation of module `digest`, which was just
    /// stored again (perhaps repaired): the next pass tries it at once.
    pub fn module_stored(&self, digest: &str) {
        let mut modules = self.modules.lock().expect("modules lock");
        if matches!(modules.get(digest), Some(ModuleState::Failed { .. })) {
            modules.remove(digest);
        }
        drop(modules);
        // Just uploaded: its unused time starts now (an apply may follow).
        self.unused_since.lock().expect("unused lock").remove(digest);
    }

    /// Deletes every module that no service and no pod has used for
    /// `grace` (blocking); returns what it deleted. With a zero grace, every
    /// unused module goes now (`shoal gc`).
    pub fn collect_modules(&self, grace: Duration) -> Result<Vec<ModuleInfo>, StoreError> {
        let _lock = self.module_lock();
        let services = self.store.services()?;
        let now = Instant::now();
        let mut deleted = Vec::new();
        let modules = self.store.modules()?;
        {
            let mut unused = self.unused_since.lock().expect("unused lock");
            unused.retain(|digest, _| modules.iter().any(|m| m.digest == *digest));
        }
        for module in modules {
            if self.module_users(&module.digest, &services).is_some() {
                self.unused_since.lock().expect("unused lock").remove(&module.digest);
                continue;
            }
            let since = *self.unused_since.lock().expect("unused lock").entry(module.digest.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                self.remove_module(&module.digest)?;
                deleted.push(module);
            }
        }
        if !deleted.is_empty() {
            self.compact();
        }
        Ok(deleted)
    }

    /// The status of a service, or `None` before its first pass.
    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.statuses.lock().expect("status lock").get(name).cloned()
    }

    /// The replicas, of one service or of all.
    pub fn replicas(&self, service: Option<&str>) -> Vec<ReplicaInfo> {
        let pods = self.pods.lock().expect("pods lock");
        let mut out: Vec<ReplicaInfo> =
            pods.iter().filter(|p| service.is_none_or(|s| p.service == s)).map(|p| p.info(&self.ctx.node)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The first 12 characters of a digest, as `shoal get modules` shows it.
/// How long a module's preparation runs before events report it.
const PREPARATION_REPORTED: Duration = Duration::from_secs(1);

/// A size in megabytes, for messages.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// What a service whose module is being prepared says meanwhile: the
/// module, its size, and for how long (in steps of 5 s, so that a status
/// line changes only that often).
fn preparing_message(digest: &str, size: u64, elapsed: Duration) -> String {
    let size = if size == 0 { String::new() } else { format!(", {}", mb(size)) };
    let seconds = elapsed.as_secs() / 5 * 5;
    let time = if seconds == 0 { String::new() } else { format!(", for {seconds}s") };
    format!("preparing module sha256:{} (compiling it{size}{time})", short(digest))
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// `<service>-<revision>-<5 random characters>`, like a Kubernetes pod name.
/// What a replica of `service` named `name` runs: its module at `path`,
/// its limits, and how it uses instances.
fn replica_spec(
    service: &shoal_api::Service,
    name: String,
    path: &std::path::Path,
    instances: shoal_api::InstancePolicy,
) -> ReplicaSpec {
    ReplicaSpec {
        service: service.name.clone(),
        name,
        module: path.to_path_buf(),
        env: service.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        limits: CgroupLimits { memory: service.spec.resources.memory, cpu_millis: service.spec.resources.cpu_millis },
        instance_memory: service.spec.resources.instance_memory,
        timeout: service.spec.timeout,
        // Never more instances than the replica's memory holds.
        max_concurrency: service.spec.admitted_concurrency(),
        queue: service.spec.limits.queue,
        drain_timeout: GRACE,
        instance_requests: instances.max_requests,
        instance_idle: instances.max_idle,
        allow_outbound: service.spec.allow_outbound.clone(),
        call_response_body: service.spec.limits.call_response_body,
    }
}

fn probes(service: &shoal_api::Service) -> Probes {
    Probes { readiness: service.spec.readiness.clone(), liveness: service.spec.liveness.clone() }
}

/// The revision in a replica's name (`<service>-<revision>-<suffix>`).
fn revision_of(replica: &str) -> Option<&str> {
    let mut parts = replica.rsplitn(3, '-');
    let (_suffix, revision, _service) = (parts.next()?, parts.next()?, parts.next()?);
    Some(revision)
}

pub fn replica_name(service: &str, revision: &str) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{service}-{revision}-{suffix}")
}
