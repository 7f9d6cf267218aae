//! The reconciler: makes the running pods match the stored services.
//!
//! Level-triggered and idempotent: each pass reads the whole desired state
//! from the store and the whole actual state from the pods, and acts on the
//! difference, so a missed trigger costs at most one period. Passes run on
//! every change (API writes, pod readiness) and every [`PERIOD`].
//!
//! Per service, in order:
//!
//! 1. Publish its routes and deadline to the gateway.
//! 2. Prepare its module: read it from the store (verifying its digest),
//!    write it to `modules/<digest>.wasm`, compile it into the cache. A
//!    module that fails here blocks new pods and is reported; running pods
//!    keep serving.
//! 3. Pods of the current revision versus older ones. Without older ones,
//!    scale to the desired count. With older ones, roll: at most
//!    [`MAX_SURGE`] pods above the desired count, never fewer ready pods than
//!    desired minus [`MAX_UNAVAILABLE`]; a new pod that fails before it was
//!    ever ready halts the rollout, and the old pods keep serving.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_api::objects::{ReplicaInfo, ReplicaUsage, RolloutPhase, ServiceRecord, ServiceStatus, USAGE_WINDOW_SECS};
use shoal_gateway::ServiceSnapshot;
use shoal_gateway::metrics::ReplicaSnapshot;
use shoal_node::{CgroupLimits, ReplicaSpec, Usage};
use shoal_runtime::ComponentCache;
use shoal_runtime::engine::Engine;
use tokio::sync::watch;

use crate::autoscaler::TICK;
use crate::logs::LogBook;
use crate::pods::{GRACE, Pod, PodContext};
use crate::scaling::Scaler;
use crate::store::Store;

/// How often a pass runs without a trigger.
pub const PERIOD: Duration = Duration::from_secs(5);
/// Pods a rollout may add above the desired count.
pub const MAX_SURGE: usize = 1;
/// Ready pods a rollout may take away below the desired count.
pub const MAX_UNAVAILABLE: usize = 0;

/// The reconciler and the actual state it manages.
pub struct Controller {
    store: Arc<dyn Store>,
    ctx: PodContext,
    logs: Arc<LogBook>,
    cache: ComponentCache,
    engine: Engine,
    modules_dir: PathBuf,
    pods: Mutex<Vec<Pod>>,
    /// Prepared modules by digest: the file workers load, or why not.
    modules: Mutex<HashMap<String, Result<PathBuf, String>>>,
    statuses: Mutex<HashMap<String, ServiceStatus>>,
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
    pub fn new(
        store: Arc<dyn Store>,
        ctx: PodContext,
        logs: Arc<LogBook>,
        cache: ComponentCache,
        modules_dir: PathBuf,
    ) -> anyhow::Result<Arc<Self>> {
        let engine = shoal_runtime::engine::compiler_engine().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let scaler = Scaler::new(ctx.gateway.clone(), ctx.events.clone(), ctx.changed.clone());
        let activator = Arc::downgrade(&scaler);
        ctx.gateway.on_activate(move |service| {
            if let Some(scaler) = activator.upgrade() {
                scaler.activate(service);
            }
        });
        Ok(Arc::new(Self {
            store,
            ctx,
            logs,
            cache,
            engine,
            modules_dir,
            pods: Mutex::new(Vec::new()),
            modules: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            published: Mutex::new(HashSet::new()),
            halted: Mutex::new(HashMap::new()),
            announced: Mutex::new(HashMap::new()),
            scaler,
            usage: Mutex::new(HashMap::new()),
        }))
    }

    /// Asks for a pass now.
    pub fn trigger(&self) {
        self.ctx.changed.notify_one();
    }

    /// Runs passes until `shutdown` turns true, then stops every pod and
    /// waits for them.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let sampler = tokio::spawn(self.clone().sample(shutdown.clone()));
        loop {
            self.reconcile().await;
            tokio::select! {
                () = self.ctx.changed.notified() => {}
                () = tokio::time::sleep(PERIOD) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        let pods: Vec<Pod> = std::mem::take(&mut *self.pods.lock().expect("pods lock"));
        for pod in &pods {
            pod.stop();
        }
        for pod in pods {
            pod.wait().await;
        }
        let _ = sampler.await;
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
            self.scaler.tick();
            let snapshot = self.ctx.gateway.snapshot();
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

    /// What `/metrics` reports now.
    pub fn scrape(&self) -> crate::metrics::Scrape {
        let from_zero: HashMap<String, u64> = self.scaler.from_zero_counts().into_iter().collect();
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
                };
                (s.name.clone(), figures)
            })
            .collect();
        crate::metrics::Scrape { services: self.ctx.gateway.snapshot(), figures, usage: self.latest_usage() }
    }

    /// The latest resource use of each running replica, by name.
    pub fn latest_usage(&self) -> HashMap<String, Usage> {
        let history = self.usage.lock().expect("usage lock");
        history.iter().filter_map(|(name, points)| Some((name.clone(), points.back()?.usage))).collect()
    }

    /// One pass.
    pub async fn reconcile(&self) {
        let records = match self.store.services() {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "cannot read services from the store");
                return;
            }
        };
        self.reap();
        self.scaler.sync(&records);
        for record in &records {
            let module = self.prepare_module(&record.module_digest).await;
            let status = self.reconcile_service(record, module);
            self.announce(&status);
            self.statuses.lock().expect("status lock").insert(record.service.name.clone(), status);
        }

        // Services no longer desired: stop their pods, forget their routes.
        let names: HashSet<String> = records.iter().map(|r| r.service.name.clone()).collect();
        for pod in self.pods.lock().expect("pods lock").iter() {
            if !names.contains(&pod.service) && !pod.stopping() {
                pod.stop();
            }
        }
        let mut published = self.published.lock().expect("published lock");
        for gone in published.difference(&names).cloned().collect::<Vec<_>>() {
            self.ctx.gateway.remove_service(&gone);
            self.statuses.lock().expect("status lock").remove(&gone);
            self.halted.lock().expect("halted lock").remove(&gone);
            self.announced.lock().expect("announced lock").remove(&gone);
            published.remove(&gone);
        }
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

    /// Drops pods whose task ended, and their logs.
    fn reap(&self) {
        let mut pods = self.pods.lock().expect("pods lock");
        pods.retain(|p| !p.finished());
        let alive: HashSet<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        self.logs.retain(|replica| alive.contains(replica));
    }

    fn reconcile_service(&self, record: &ServiceRecord, module: Result<PathBuf, String>) -> ServiceStatus {
        let service = &record.service;
        let name = &service.name;
        self.ctx.gateway.set_service(
            name,
            service.spec.routes.clone(),
            service.spec.timeout,
            service.spec.limits.request_body,
        );
        // Autoscaled services hold requests while they have no replica (as
        // many as one replica takes on), unless no replica can start.
        let max_held = match service.spec.autoscale {
            Some(_) if module.is_ok() => {
                u64::from(service.spec.limits.concurrency) + u64::from(service.spec.limits.queue)
            }
            _ => 0,
        };
        self.ctx.gateway.set_activator(name, max_held);
        self.published.lock().expect("published lock").insert(name.clone());
        let revision = record.revision();
        let desired = self.scaler.desired(name).unwrap_or(service.spec.replicas) as usize;
        let mut message = module.as_ref().err().cloned();
        let mut phase = RolloutPhase::Progressing;

        let mut pods = self.pods.lock().expect("pods lock");
        let live: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].service == *name && !pods[i].stopping()).collect();
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
            if current.len() == desired && ready_current == desired && failed.is_none() {
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

        for &i in &to_stop {
            pods[i].stop();
        }
        if let Ok(path) = &module {
            for _ in 0..to_start {
                let spec = ReplicaSpec {
                    service: name.clone(),
                    name: replica_name(name, &revision),
                    module: path.clone(),
                    env: service.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    limits: CgroupLimits {
                        memory: service.spec.resources.memory,
                        cpu_millis: service.spec.resources.cpu_millis,
                    },
                    instance_memory: service.spec.resources.instance_memory,
                    timeout: service.spec.timeout,
                    max_concurrency: service.spec.limits.concurrency,
                    queue: service.spec.limits.queue,
                    drain_timeout: GRACE,
                    instance_requests: service.spec.instances.max_requests,
                    instance_idle: service.spec.instances.max_idle,
                };
                pods.push(Pod::start(self.ctx.clone(), spec, revision.clone()));
            }
        }
        if message.is_none() && phase != RolloutPhase::Complete {
            message = current.iter().filter_map(|&i| pods[i].status().message).next();
        }

        let live: Vec<&Pod> = pods.iter().filter(|p| p.service == *name && !p.stopping()).collect();
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
        }
    }

    /// The file workers load for `digest`, preparing it on first use.
    async fn prepare_module(&self, digest: &str) -> Result<PathBuf, String> {
        if let Some(Ok(path)) = self.modules.lock().expect("modules lock").get(digest) {
            return Ok(path.clone());
        }
        let result = self.prepare_module_uncached(digest).await;
        let previous = self.modules.lock().expect("modules lock").insert(digest.to_owned(), result.clone());
        if let Err(error) = &result
            && previous.and_then(|p| p.err()).as_ref() != Some(error)
        {
            self.ctx.events.warning(format!("module/sha256:{digest}"), "ModuleInvalid", error.clone());
        }
        result
    }

    async fn prepare_module_uncached(&self, digest: &str) -> Result<PathBuf, String> {
        let bytes = match self.store.module(digest) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(format!("module sha256:{digest} is not in the store; push it again")),
            Err(error) => return Err(error.to_string()),
        };
        let path = self.modules_dir.join(format!("{digest}.wasm"));
        let (cache, engine, file) = (self.cache.clone(), self.engine.clone(), path.clone());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            write_atomically(&file, &bytes).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            cache.load_bytes(&engine, &file, &bytes).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
        .map_err(|e| format!("module preparation failed: {e}"))??;
        Ok(path)
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

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// `<service>-<revision>-<5 random characters>`, like a Kubernetes pod name.
pub fn replica_name(service: &str, revision: &str) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{service}-{revision}-{suffix}")
}
