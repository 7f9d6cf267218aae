//! The node agent: starts worker processes, confines them, watches them.
//!
//! Starting a replica, in order:
//!
//! 1. Create its cgroup with the manifest's limits (when cgroups are usable).
//! 2. Open the cgroup's `cgroup.procs` files, a readiness pipe, its stdio
//!    pipes and its channel.
//! 3. Ask the zygote ([`crate::zygote`]) to fork it; the child, first:
//!    leaves Shoal's process group (so a terminal's
//!    Ctrl-C reaches Shoal only, which drains first), joins the cgroup, and
//!    puts its descriptors on 0 to 6, closing every other one.
//! 4. It then runs as `shoal worker` does: reads its configuration from
//!    stdin, loads the precompiled component, binds its channel (fds 4, 5
//!    and 6, see `shoal_protocol::channel`) and writes `ready` (fd 3) with
//!    the time each step took.
//! 5. A task per replica forwards its stdout and stderr line by line,
//!    prefixed with the replica's name, and another waits for its exit,
//!    removes its cgroup, and publishes the [`Exit`].
//!
//! Steps 1 to 3 are done ahead for the next replicas: a pool
//! of standby workers (`shoal-standby` in `ps`) waits, each confined in its
//! own cgroup, for a configuration. Joining a cgroup v1 costs the kernel an
//! RCU grace period (about 15 ms on the machines measured) when no other
//! join happened just before, more than everything else a start does; a
//! standby pays it before a replica is needed. When a replica starts, a
//! standby's cgroup is renamed after it (cgroup v1; v2 cannot rename, and
//! the group keeps its `standby-<n>` name) and given the replica's limits,
//! and the configuration is sent. The pool's size follows demand: one
//! standby per start in the last [`DEMAND_WINDOW`], at least one, at most
//! [`AgentConfig::standby_max`]; it shrinks back once starts stop.
//!
//! Starts overlap: at most [`AgentConfig::start_concurrency`] run at once
//! (from the gate until the worker is ready), admitted oldest asked first,
//! and their forks run on as many long-lived threads (see
//! [`crate::starts`]); standbys are started on the same threads when no
//! start waits for one.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_protocol::attach::WorkerIdentity;
use shoal_protocol::channel::ChannelFds;
use shoal_protocol::config::{WorkerConfig, monotonic_nanos};
use shoal_protocol::ready::{Instances, ReadyReport};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::cgroups::{CgroupLimits, Cgroups, ReplicaCgroup};
use crate::child::Child;
use crate::starts::{Forkers, GateCounts, StartGate, Urgency};
use crate::zygote::{Preload, WorkerFds, Zygote};

/// Which stream a worker's output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (the guest's `println!`).
    Stdout,
    /// Standard error (the guest's `eprintln!` and the worker's own log).
    Stderr,
}

/// Where worker output goes: called with the replica's name and whole
/// lines, each already prefixed with that name, in chunks.
pub type LogSink = Arc<dyn Fn(&str, Stream, &[u8]) + Send + Sync>;

/// Settings of the node agent.
#[derive(Clone)]
pub struct AgentConfig {
    /// The `shoal` executable to run as `shoal worker`.
    pub exe: PathBuf,
    /// Where worker sockets live (keep the path short: socket paths are
    /// limited to 107 bytes).
    pub run_dir: PathBuf,
    /// The compiled-component cache.
    pub cache_dir: PathBuf,
    /// How long a worker may take to report ready.
    pub ready_timeout: Duration,
    /// Where worker output goes.
    pub log: LogSink,
    /// Workers started at once at most (forks under way and workers not
    /// yet ready); the others wait their turn, oldest asked first.
    pub start_concurrency: usize,
    /// The most standby workers kept (0: none).
    pub standby_max: usize,
    /// The prefix of the abstract socket names on which each worker
    /// listens for a `shoal up` that did not start it to attach
    /// (`shoal_protocol::attach::workers_scope`); `None`: workers cannot be
    /// attached to.
    pub attach_scope: Option<String>,
    /// Where the workers of a Shoal from before the abstract names listen
    /// (`<data dir>/workers/<pid>.sock`): a successor takes them over too,
    /// and removes the directory when it is empty.
    pub legacy_attach_dir: Option<PathBuf>,
    /// How long a worker whose gateways are all gone waits to be attached
    /// before it exits.
    pub orphan_grace: Duration,
}

/// Starts at once by default: twice the cores, at least four. A start is
/// mostly CPU (exec, loading the component, one instantiation) with a
/// kernel wait in it (joining the cgroup); two per core keeps the cores
/// busy while each start still finishes quickly, in order.
pub fn default_start_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from).saturating_mul(2).max(4)
}

/// Standby workers kept at most by default. A standby is a `shoal worker`
/// process waiting for its configuration, about 2 MiB of its own memory
/// (the rest is the binary's pages, shared); 16 cover a burst of 16 starts
/// and cost about 32 MiB while the pool is full.
pub const DEFAULT_STANDBY_MAX: usize = 16;

/// What to run: one replica of a service revision.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    /// The service's name.
    pub service: String,
    /// The replica's name, unique on this node.
    pub name: String,
    /// The component file.
    pub module: PathBuf,
    /// Guest environment variables.
    pub env: Vec<(String, String)>,
    /// cgroup limits.
    pub limits: CgroupLimits,
    /// Linear memory cap per instance, in bytes.
    pub instance_memory: u64,
    /// Request deadline.
    pub timeout: Duration,
    /// Concurrent instances per replica.
    pub max_concurrency: u32,
    /// Requests that may wait for an instance per replica.
    pub queue: u32,
    /// How long in-flight requests may finish when the replica is stopped.
    pub drain_timeout: Duration,
    /// Requests one Wasm instance serves (1: a fresh one per request).
    pub instance_requests: u32,
    /// How long an idle instance is kept for reuse.
    pub instance_idle: Duration,
    /// `spec.allowOutbound`, as written (validated): the gateway checks
    /// the replica's calls against it.
    pub allow_outbound: Vec<String>,
    /// `spec.limits.callResponseBody`: the largest response body a call
    /// of the replica receives.
    pub call_response_body: u64,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// The kernel's OOM killer killed it (its cgroup recorded an OOM kill).
    OomKilled,
    /// A worker taken over from another `shoal up` ended: not our child,
    /// so how is not known.
    Ended,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Ended => {
                f.write_str("ended (taken over from another shoal up, so its exit status is not ours to read)")
            }
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
            Exit::OomKilled => f.write_str("OOMKilled"),
        }
    }
}

/// A worker taken over from another `shoal up`: who it says it is, and
/// the replica it now is here.
#[derive(Debug)]
pub struct Adopted {
    pub identity: WorkerIdentity,
    pub replica: Replica,
}

/// A started replica.
#[derive(Debug)]
pub struct Replica {
    /// The replica's name.
    pub name: String,
    /// The worker's process id.
    pub pid: u32,
    /// The gateway's end of the worker's channel, until the caller takes
    /// it ([`Replica::take_channel`]).
    channel: Option<ChannelFds>,
    /// Its cgroup path, or `None` when it runs unconfined.
    pub cgroup: Option<String>,
    /// How long it took to become ready, step by step.
    pub startup: Startup,
    exit: watch::Receiver<Option<Exit>>,
}

/// How long a replica took to start: in total (from the node agent's call
/// until the worker reported ready), and the steps the worker reported.
/// The process start (cgroup, fork, exec, the binary's own start) is the
/// total less the worker's steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Startup {
    pub total: Duration,
    /// Creating the cgroup and setting its limits.
    pub cgroup: Duration,
    /// From spawning the worker to its start: fork, exec, the binary's
    /// start.
    pub exec: Duration,
    /// Starting its tokio runtime.
    pub runtime: Duration,
    /// Configuring wasmtime (the pooling allocator's reservation).
    pub engine: Duration,
    /// Loading the precompiled component and linking it.
    pub load: Duration,
    /// The start check: one instantiation.
    pub check: Duration,
    /// The worker's own time, from its `main` until ready.
    pub worker: Duration,
    /// Whether a standby process became the replica (its fork, cgroup
    /// join and exec happened before).
    pub standby: bool,
    /// How long it waited for its turn to start (not in `total`).
    pub queued: Duration,
    /// How its instances serve requests, as the worker said.
    pub instances: Option<Instances>,
    /// Whether its engine and module were loaded by the zygote before it
    /// forked the worker.
    pub preloaded: bool,
}

impl Startup {
    /// Reads the worker's `ready engine_us=… load_us=… check_us=…
    /// total_us=…` line.
    fn parse(total: Duration, line: &str) -> Self {
        let report = ReadyReport::parse(line).unwrap_or_default();
        Self {
            total,
            cgroup: Duration::ZERO,
            exec: report.exec,
            runtime: report.runtime,
            engine: report.engine,
            load: report.load,
            check: report.check,
            worker: report.total,
            standby: false,
            queued: Duration::ZERO,
            instances: report.instances,
            preloaded: report.preloaded,
        }
    }

    /// What the steps do not account for: the agent's side of the spawn,
    /// reading the readiness pipe.
    pub fn other(&self) -> Duration {
        let exec = if self.standby { Duration::ZERO } else { self.exec };
        self.total.saturating_sub(self.worker + self.cgroup + exec)
    }
}

impl fmt::Display for Startup {
    /// `ready in 14.2ms (cgroup 0.2ms, exec 3.1ms, runtime 0.3ms, engine
    /// 2.0ms, module load 4.1ms, start check 1.2ms, other 0.1ms), instances
    /// reset`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
        let exec = if self.standby { "standby".to_owned() } else { ms(self.exec) };
        write!(
            f,
            "ready in {} (cgroup {}, exec {}, runtime {}, engine {}, module load {}, start check {}, other {})",
            ms(self.total),
            ms(self.cgroup),
            exec,
            ms(self.runtime),
            ms(self.engine),
            ms(self.load),
            ms(self.check),
            ms(self.other())
        )?;
        if self.queued >= Duration::from_micros(100) {
            write!(f, ", after waiting {} for its turn", ms(self.queued))?;
        }
        if self.preloaded {
            f.write_str(", module preloaded")?;
        }
        match self.instances {
            Some(instances) => write!(f, ", instances {}", instances.as_str()),
            None => Ok(()),
        }
    }
}

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its cgroup could not be set up.
    #[error("{0}")]
    Cgroup(String),
    /// The worker process could not be started.
    #[error("cannot start worker: {0}")]
    Spawn(#[from] std::io::Error),
    /// The worker exited before it was ready; the last line it wrote to
    /// stderr says why.
    #[error("worker exited before it was ready ({0}): {1}")]
    Exited(Exit, String),
    /// The worker did not report ready in time.
    #[error("worker not ready after {0:?}")]
    Timeout(Duration),
}

/// Starts and stops worker processes on this machine.
pub struct NodeAgent {
    config: AgentConfig,
    cgroups: Option<Arc<Cgroups>>,
    /// Admits [`AgentConfig::start_concurrency`] starts at once, oldest
    /// asked first.
    gate: StartGate,
    /// The threads workers are forked on.
    forkers: Arc<Forkers>,
    /// Workers started ahead, for the next replicas.
    pool: Mutex<Pool>,
    standby_seq: AtomicU64,
    /// Set by [`NodeAgent::cleanup`]: no more standby processes.
    closed: AtomicBool,
    /// Whether the task that resizes the pool runs.
    keeper: AtomicBool,
    /// Forks every worker.
    zygote: Zygote,
}

/// The standby pool: its workers, and the size it aims at.
struct Pool {
    standbys: VecDeque<Standby>,
    /// Standbys being started (their fork jobs queued or running).
    refilling: usize,
    /// The size aimed at: the starts of the last [`DEMAND_WINDOW`], at
    /// least one, at most [`AgentConfig::standby_max`].
    target: usize,
    /// When the starts of the last [`DEMAND_WINDOW`] happened.
    recent: VecDeque<Instant>,
    /// Starts so far, and how many found a standby.
    starts: u64,
    from_standby: u64,
}

/// How far back starts count as demand for standbys. A burst of starts
/// grows the pool at once (up to its maximum); it shrinks back to one
/// standby once this long has passed without starts.
pub const DEMAND_WINDOW: Duration = Duration::from_secs(60);
/// How often the pool is resized and its dead standbys replaced.
const KEEP_PERIOD: Duration = Duration::from_secs(5);

/// The standby pool and the start gate, as `shoal describe node` and
/// `/metrics` show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartStatus {
    /// Standby workers waiting now.
    pub standby: usize,
    /// The pool's size aimed at now (from the last minute's starts).
    pub standby_target: usize,
    /// The pool's largest size.
    pub standby_max: usize,
    /// Starts at most at once, and starts under way, and waiting.
    pub gate: GateCounts,
    /// Replica starts so far, and how many of them took a standby.
    pub starts: u64,
    pub from_standby: u64,
}

impl NodeAgent {
    /// A node agent; `cgroups` is `None` when replicas run unconfined.
    pub fn new(config: AgentConfig, cgroups: Option<Cgroups>) -> Self {
        let concurrency = config.start_concurrency.max(1);
        let zygote = Zygote::new(&config.exe);
        Self {
            gate: StartGate::new(concurrency),
            forkers: Arc::new(Forkers::new(concurrency)),
            pool: Mutex::new(Pool {
                standbys: VecDeque::new(),
                refilling: 0,
                target: config.standby_max.min(1),
                recent: VecDeque::new(),
                starts: 0,
                from_standby: 0,
            }),
            config,
            cgroups: cgroups.map(Arc::new),
            standby_seq: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            keeper: AtomicBool::new(false),
            zygote,
        }
    }

    /// Whether replicas get cgroups.
    pub fn confined(&self) -> bool {
        self.cgroups.is_some()
    }

    /// A running replica's resource use: CPU time of its process, and the
    /// memory of its cgroup (its resident set when unconfined).
    pub fn usage(&self, pid: u32, cgroup: Option<&str>) -> Usage {
        let memory = match (&self.cgroups, cgroup) {
            (Some(cgroups), Some(path)) => cgroups.memory_usage(path),
            _ => None,
        }
        .or_else(|| resident_set(pid));
        Usage { cpu: cpu_time(pid), memory }
    }

    /// The standby pool and the start gate now.
    pub fn start_status(&self) -> StartStatus {
        let pool = self.pool.lock().expect("pool lock");
        StartStatus {
            standby: pool.standbys.len(),
            standby_target: pool.target,
            standby_max: self.config.standby_max,
            gate: self.gate.counts(),
            starts: pool.starts,
            from_standby: pool.from_standby,
        }
    }

    /// Fills the standby pool to its first size and starts the task that
    /// resizes it, so that the first replica, too, finds a standby. Called
    /// by `shoal up` once it runs; [`NodeAgent::start`] does it otherwise.
    pub fn warm(self: &Arc<Self>) {
        if self.keeper.swap(true, Ordering::SeqCst) {
            return;
        }
        let agent = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(KEEP_PERIOD);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(agent) = agent.upgrade() else { return };
                if agent.closed.load(Ordering::SeqCst) {
                    return;
                }
                agent.keep_pool();
            }
        });
    }

    /// Starts a replica and waits until it is ready to serve. `asked` is
    /// when it was asked for (for a service woken from zero, when its
    /// first request arrived): at most [`AgentConfig::start_concurrency`]
    /// starts run at once, and the others are admitted oldest asked first.
    /// A standby process becomes the replica when there is one; a new
    /// process is started otherwise.
    pub async fn start(self: &Arc<Self>, spec: &ReplicaSpec, asked: Instant) -> Result<Replica, StartError> {
        let reached = Instant::now();
        self.warm();
        let _admitted = self.gate.enter(asked).await;
        let started = Instant::now();
        let queued = started - reached;
        let standby = self.take_standby();
        if let Some(mut standby) = standby {
            let cgroup = match (&self.cgroups, standby.cgroup.take()) {
                (Some(cgroups), Some(group)) => {
                    let group = cgroups.rename(group, &spec.name);
                    if let Err(error) = group.apply(spec.limits) {
                        let _ = standby.process.child.start_kill();
                        let _ = standby.process.child.wait().await;
                        let _ = group.remove();
                        return Err(StartError::Cgroup(format!(
                            "cannot set limits on cgroup {}: {error}",
                            group.path()
                        )));
                    }
                    Some(group)
                }
                (_, group) => group,
            };
            let cgroup_time = started.elapsed();
            let mut replica = self.attach(spec, standby.process, cgroup, started).await?;
            replica.startup.cgroup = cgroup_time;
            replica.startup.standby = true;
            replica.startup.queued = queued;
            self.preload(spec);
            return Ok(replica);
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (agent, name, limits) = (self.clone(), spec.name.clone(), spec.limits);
        self.forkers.run(
            Urgency::Start,
            Box::new(move || {
                let created = Instant::now();
                let cgroup = match &agent.cgroups {
                    Some(cgroups) => match cgroups.create(&name, limits) {
                        Ok(group) => Some(group),
                        Err(error) => {
                            let _ = sender.send(Err(StartError::Cgroup(error)));
                            return;
                        }
                    },
                    None => None,
                };
                let cgroup_time = created.elapsed();
                let result = match spawn_process(&agent.zygote, &name, cgroup.as_ref()) {
                    Ok(process) => Ok((process, cgroup, cgroup_time)),
                    Err(error) => {
                        if let Some(group) = cgroup {
                            let _ = group.remove();
                        }
                        Err(StartError::Spawn(error))
                    }
                };
                let _ = sender.send(result);
            }),
        );
        let Ok(forked) = receiver.await else {
            return Err(StartError::Spawn(std::io::Error::other("the fork thread is gone")));
        };
        let (process, cgroup, cgroup_time) = forked?;
        let mut replica = self.attach(spec, process, cgroup, started).await?;
        replica.startup.cgroup = cgroup_time;
        replica.startup.queued = queued;
        self.preload(spec);
        Ok(replica)
    }

    /// After a replica of `spec` started: has the zygote load its module
    /// for the workers it forks next (once; when no start waits for a fork
    /// thread).
    fn preload(self: &Arc<Self>, spec: &ReplicaSpec) {
        let preload = Preload {
            module: spec.module.clone(),
            cache_dir: self.config.cache_dir.clone(),
            max_instances: spec.max_concurrency,
            instance_memory: spec.instance_memory,
        };
        let agent = self.clone();
        self.forkers.run(Urgency::Spare, Box::new(move || agent.zygote.preload(preload)));
    }

    /// A live standby from the pool, if there is one; counts the start as
    /// demand and tops the pool up.
    fn take_standby(self: &Arc<Self>) -> Option<Standby> {
        let mut dead = Vec::new();
        let taken = {
            let mut pool = self.pool.lock().expect("pool lock");
            let now = Instant::now();
            pool.recent.push_back(now);
            pool.starts += 1;
            pool.resize(now, self.config.standby_max);
            let mut taken = None;
            while let Some(mut standby) = pool.standbys.pop_front() {
                if standby.process.child.try_wait().ok().flatten().is_none() {
                    taken = Some(standby);
                    pool.from_standby += 1;
                    break;
                }
                dead.push(standby);
            }
            taken
        };
        // It died while waiting: its cgroup goes.
        for mut standby in dead {
            if let Some(group) = standby.cgroup.take() {
                let _ = group.remove();
            }
        }
        self.top_up();
        taken
    }

    /// Every [`KEEP_PERIOD`]: the pool's size follows the last minute's
    /// starts; standbys past it are stopped, dead ones replaced.
    fn keep_pool(self: &Arc<Self>) {
        let surplus: Vec<Standby> = {
            let mut pool = self.pool.lock().expect("pool lock");
            pool.resize(Instant::now(), self.config.standby_max);
            let mut alive = VecDeque::new();
            let mut gone = Vec::new();
            for mut standby in pool.standbys.drain(..) {
                if standby.process.child.try_wait().ok().flatten().is_none() {
                    alive.push_back(standby);
                } else {
                    gone.push(standby);
                }
            }
            while alive.len() > pool.target {
                gone.extend(alive.pop_back());
            }
            pool.standbys = alive;
            gone
        };
        if !surplus.is_empty() {
            self.forkers.run(
                Urgency::Spare,
                Box::new(move || {
                    for mut standby in surplus {
                        stop_now(&mut standby.process.child);
                        if let Some(group) = standby.cgroup.take() {
                            let _ = group.remove();
                        }
                    }
                }),
            );
        }
        self.top_up();
    }

    /// Queues the standbys the pool lacks, one fork job each, run when no
    /// start waits for a fork thread.
    fn top_up(self: &Arc<Self>) {
        let wanted = {
            let mut pool = self.pool.lock().expect("pool lock");
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let wanted = pool.target.saturating_sub(pool.standbys.len() + pool.refilling);
            pool.refilling += wanted;
            wanted
        };
        for _ in 0..wanted {
            let agent = self.clone();
            self.forkers.run(Urgency::Spare, Box::new(move || agent.refill()));
        }
    }

    /// Starts one standby (on a fork thread): a worker forked and confined,
    /// waiting for its configuration. Joining a cgroup v1 takes the kernel
    /// an RCU grace period (about 15 ms here when no other join happened
    /// just before); a standby pays it before a replica is needed.
    fn refill(&self) {
        let done = |standby: Option<Standby>| {
            let mut pool = self.pool.lock().expect("pool lock");
            pool.refilling -= 1;
            let unwanted = self.closed.load(Ordering::SeqCst) || pool.standbys.len() >= pool.target;
            match standby {
                Some(standby) if !unwanted => pool.standbys.push_back(standby),
                Some(mut standby) => {
                    drop(pool);
                    // Shoal is stopping, or the pool shrank: not needed.
                    stop_now(&mut standby.process.child);
                    if let Some(group) = standby.cgroup.take() {
                        let _ = group.remove();
                    }
                }
                None => {}
            }
        };
        {
            let pool = self.pool.lock().expect("pool lock");
            if self.closed.load(Ordering::SeqCst) || pool.standbys.len() >= pool.target {
                drop(pool);
                return done(None);
            }
        }
        let number = self.standby_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("standby-{number}");
        let cgroup = match &self.cgroups {
            Some(cgroups) => match cgroups.create(&name, STANDBY_LIMITS) {
                Ok(group) => Some(group),
                Err(error) => {
                    tracing::warn!(%error, "cannot create a standby worker's cgroup");
                    return done(None);
                }
            },
            None => None,
        };
        match spawn_process(&self.zygote, &name, cgroup.as_ref()) {
            Ok(process) => done(Some(Standby { process, cgroup })),
            Err(error) => {
                tracing::warn!(%error, "cannot start a standby worker");
                if let Some(group) = cgroup {
                    let _ = group.remove();
                }
                done(None);
            }
        }
    }

    /// Makes a started process replica `spec`: sends its configuration,
    /// forwards its output, watches its exit, and waits for its readiness.
    async fn attach(
        &self,
        spec: &ReplicaSpec,
        process: Process,
        cgroup: Option<ReplicaCgroup>,
        started: std::time::Instant,
    ) -> Result<Replica, StartError> {
        let Process { mut child, ready_read, channel } = process;
        let pid = child.id().unwrap_or_default();
        let worker = WorkerConfig {
            service: spec.service.clone(),
            replica: spec.name.clone(),
            module: spec.module.clone(),
            cache_dir: self.config.cache_dir.clone(),
            env: spec.env.clone(),
            instance_memory: spec.instance_memory,
            timeout_ms: spec.timeout.as_millis() as u64,
            max_concurrency: spec.max_concurrency,
            queue: spec.queue,
            drain_timeout_ms: spec.drain_timeout.as_millis() as u64,
            instance_requests: spec.instance_requests,
            instance_idle_ms: spec.instance_idle.as_millis() as u64,
            attach: self
                .config
                .attach_scope
                .as_ref()
                .map(|scope| shoal_protocol::attach::worker_name(scope, pid, rand::random())),
            orphan_grace_ms: self.config.orphan_grace.as_millis() as u64,
        };
        let config_json = serde_json::to_vec(&worker).expect("worker config serializes");
        // The worker reads its configuration to the end of its stdin. A
        // worker that died first is reported below, from its exit.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = tokio::time::timeout(self.config.ready_timeout, stdin.write_all(&config_json)).await;
        }
        let name: Arc<str> = spec.name.as_str().into();
        let last_error = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            widen_pipe(out.as_raw_fd());
            tokio::spawn(forward(out, name.clone(), Stream::Stdout, self.config.log.clone(), None));
        }
        let stderr_done = child.stderr.take().map(|err| {
            tokio::spawn(forward(err, name, Stream::Stderr, self.config.log.clone(), Some(last_error.clone())))
        });

        let cgroup_path = cgroup.as_ref().map(|c| c.path().to_owned());
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let mut exit = match status {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    match (status.code(), status.signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(signal)) => Exit::Signal(signal),
                        (None, None) => Exit::Code(-1),
                    }
                }
                Err(_) => Exit::Code(-1),
            };
            if let Some(cgroup) = cgroup {
                if exit == Exit::Signal(libc::SIGKILL) && cgroup.oom_killed() {
                    exit = Exit::OomKilled;
                }
                if let Err(error) = cgroup.remove() {
                    tracing::warn!(%error, "cgroup left behind");
                }
            }
            let _ = exit_tx.send(Some(exit));
        });

        let mut replica = Replica {
            name: spec.name.clone(),
            pid,
            channel: Some(channel),
            cgroup: cgroup_path,
            startup: Startup::default(),
            exit: exit_rx,
        };
        match tokio::time::timeout(self.config.ready_timeout, wait_ready(ready_read)).await {
            Ok(Some(line)) => {
                replica.startup = Startup::parse(started.elapsed(), &line);
                Ok(replica)
            }
            Ok(None) => {
                let exit = replica.wait().await;
                // Its stderr is complete once the process is gone.
                if let Some(done) = stderr_done {
                    let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
                }
                let why = last_error.lock().expect("last error lock").trim().to_owned();
                let why = if why.is_empty() { "it wrote no error".to_owned() } else { why };
                Err(StartError::Exited(exit, why))
            }
            Err(_) => {
                replica.kill();
                replica.wait().await;
                Err(StartError::Timeout(self.config.ready_timeout))
            }
        }
    }

    /// Takes over the workers another `shoal up` left running (it died, or
    /// hands over): attaches to each that listens under
    /// [`AgentConfig::attach_scope`] (or, from an older Shoal, in
    /// [`AgentConfig::legacy_attach_dir`]), taking its output, and watches
    /// it. Must run within a tokio runtime.
    pub async fn adopt(&self) -> Vec<Adopted> {
        use shoal_protocol::attach::{self, Address};
        let mut candidates: Vec<Address> = Vec::new();
        if let Some(scope) = &self.config.attach_scope {
            match attach::listening_workers(scope) {
                Ok(found) => candidates.extend(found.into_iter().map(|l| l.address)),
                Err(error) => tracing::warn!(%error, "cannot list the workers to take over (/proc/net/unix)"),
            }
        }
        let legacy = self.config.legacy_attach_dir.as_deref().and_then(|dir| std::fs::read_dir(dir).ok());
        candidates.extend(
            legacy
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|e| e == "sock"))
                .map(Address::File),
        );
        let mut adopted = Vec::new();
        for address in candidates {
            let attached = tokio::task::spawn_blocking({
                let address = address.clone();
                move || -> std::io::Result<_> {
                    let (out_read, out_write) = pipe()?;
                    let (err_read, err_write) = pipe()?;
                    let (identity, fds) = attach::attach(&address, &out_write, &err_write)?;
                    Ok((identity, fds, out_read, err_read))
                }
            })
            .await;
            match attached {
                Ok(Ok((identity, fds, out_read, err_read))) => match self.adopted(&identity, fds, out_read, err_read) {
                    Ok(replica) => adopted.push(Adopted { identity, replica }),
                    Err(error) => tracing::warn!(%error, replica = %identity.replica, "cannot take over a worker"),
                },
                // It ended since it was listed (an older Shoal's worker
                // left its file).
                Ok(Err(error))
                    if matches!(error.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound) =>
                {
                    if let Address::File(path) = &address {
                        let _ = std::fs::remove_file(path);
                    }
                }
                Ok(Err(error)) => tracing::warn!(%error, %address, "cannot attach to a worker"),
                Err(error) => tracing::warn!(%error, "cannot attach to a worker"),
            }
        }
        // Gone once its last worker is (it fails while a file is left).
        if let Some(dir) = &self.config.legacy_attach_dir {
            let _ = std::fs::remove_dir(dir);
        }
        adopted
    }

    /// A [`Replica`] of a worker just attached to.
    fn adopted(
        &self,
        identity: &WorkerIdentity,
        channel: ChannelFds,
        out_read: OwnedFd,
        err_read: OwnedFd,
    ) -> std::io::Result<Replica> {
        let name: Arc<str> = identity.replica.as_str().into();
        let receiver = |fd: OwnedFd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd);
        let (out, err) = (receiver(out_read)?, receiver(err_read)?);
        widen_pipe(out.as_raw_fd());
        tokio::spawn(forward(out, name.clone(), Stream::Stdout, self.config.log.clone(), None));
        tokio::spawn(forward(err, name, Stream::Stderr, self.config.log.clone(), None));
        let cgroup = self.cgroups.as_ref().and_then(|cgroups| cgroups.of_process(identity.pid));
        let cgroup_path = cgroup.as_ref().map(|c| c.path().to_owned());
        let ended = crate::child::watch(identity.pid)?;
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt as _;
            let mut exit = match ended.await {
                Some(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(signal)) => Exit::Signal(signal),
                    (None, None) => Exit::Ended,
                },
                None => Exit::Ended,
            };
            if let Some(cgroup) = cgroup {
                if cgroup.oom_killed() {
                    exit = Exit::OomKilled;
                }
                if let Err(error) = cgroup.remove() {
                    tracing::warn!(%error, "cgroup left behind");
                }
            }
            let _ = exit_tx.send(Some(exit));
        });
        Ok(Replica {
            name: identity.replica.clone(),
            pid: identity.pid,
            channel: Some(channel),
            cgroup: cgroup_path,
            startup: Startup::default(),
            exit: exit_rx,
        })
    }

    /// Stops a replica: SIGTERM, then SIGKILL after `grace`. Returns once it
    /// has exited and its cgroup is gone.
    pub async fn stop(&self, replica: &mut Replica, grace: Duration) -> Exit {
        replica.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, replica.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(replica = %replica.name, ?grace, "did not stop in time; killing it");
                replica.kill();
                replica.wait().await
            }
        }
    }

    /// Stops the standby workers and removes what the agent made outside
    /// its replicas (the instance's cgroup parent).
    pub fn cleanup(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // A standby being started now is stopped by its fork thread.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pool.lock().expect("pool lock").refilling > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut standbys: Vec<Standby> = self.pool.lock().expect("pool lock").standbys.drain(..).collect();
        // All killed first, so that they exit together.
        for standby in &mut standbys {
            let _ = standby.process.child.start_kill();
        }
        for mut standby in standbys {
            stop_now(&mut standby.process.child);
            if let Some(group) = standby.cgroup.take() {
                let _ = group.remove();
            }
        }
        self.zygote.stop();
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_base();
        }
    }
}

impl Replica {
    /// The gateway's end of the worker's channel (once; `None` after).
    pub fn take_channel(&mut self) -> Option<ChannelFds> {
        self.channel.take()
    }

    /// Waits until the worker has exited and been cleaned up.
    pub async fn wait(&mut self) -> Exit {
        loop {
            if let Some(exit) = self.exit.borrow_and_update().clone() {
                return exit;
            }
            if self.exit.changed().await.is_err() {
                return Exit::Code(-1);
            }
        }
    }

    /// Whether the worker has exited.
    pub fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Sends `signal` to the worker if it is still running.
    pub fn signal(&self, signal: i32) {
        if self.exited().is_none() && self.pid > 0 {
            // SAFETY: kill has no memory-safety preconditions. The pid is our
            // child's and has not been reaped (we checked above).
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    /// Kills the worker at once.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// A handle that kills the worker if it still runs, usable while
    /// [`Replica::wait`] borrows the replica.
    pub fn killer(&self) -> Killer {
        Killer { pid: self.pid, exit: self.exit.clone() }
    }
}

/// Kills one worker if it still runs ([`Replica::killer`]).
#[derive(Clone)]
pub struct Killer {
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
}

impl Killer {
    /// SIGKILL, unless the worker already exited (its pid may be reused).
    pub fn kill(&self) {
        if self.exit.borrow().is_none() && self.pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; the pid is
            // our child's and it has not been reaped (checked above).
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

/// Kills a process that runs no replica yet and waits (at most 5 s) until
/// it is gone, so that its cgroup can be removed.
fn stop_now(child: &mut Child) {
    let _ = child.start_kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A worker process, forked, confined and exec'd, not yet told what to run.
struct Process {
    child: Child,
    ready_read: OwnedFd,
    /// The gateway's end of its channel (the worker has its own copies).
    channel: ChannelFds,
}

/// A standby worker and its cgroup.
struct Standby {
    process: Process,
    cgroup: Option<ReplicaCgroup>,
}

impl Pool {
    /// Forgets starts older than [`DEMAND_WINDOW`] and sets the size aimed
    /// at: one standby per start in the window, at least one, at most
    /// `max` (0: no standby at all).
    fn resize(&mut self, now: Instant, max: usize) {
        while self.recent.front().is_some_and(|&at| now.duration_since(at) > DEMAND_WINDOW) {
            self.recent.pop_front();
        }
        self.target = self.recent.len().clamp(1, max.max(1)).min(max);
    }
}

/// Spaces passed as a last argument to every worker: the room its command
/// line (what `ps` shows) has for `shoal worker <replica name>`, which a
/// standby learns only once it is given its configuration.
pub(crate) const TITLE_ROOM: usize = 64;

/// Limits of a standby worker's cgroup until it becomes a replica (it only
/// waits on its stdin meanwhile).
const STANDBY_LIMITS: CgroupLimits = CgroupLimits { memory: 64 << 20, cpu_millis: None };

/// Has the zygote fork `shoal worker <name>`, which joins `cgroup` first
/// and then waits for its configuration on stdin. Blocks until the zygote
/// answered (a fork thread calls it).
fn spawn_process(zygote: &Zygote, name: &str, cgroup: Option<&ReplicaCgroup>) -> std::io::Result<Process> {
    let asked = monotonic_nanos();
    let procs = cgroup.map(ReplicaCgroup::procs_files).transpose()?.unwrap_or_default();
    let (ready_read, ready_write) = pipe()?;
    let (channel, worker_channel) = ChannelFds::create(name)?;
    let (stdin_read, stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let fds = WorkerFds {
        stdio: [&stdin_read, &stdout_write, &stderr_write],
        ready: &ready_write,
        channel: [
            worker_channel.segment.as_raw_fd(),
            worker_channel.wake_me.as_raw_fd(),
            worker_channel.wake_peer.as_raw_fd(),
        ],
        procs: &procs,
    };
    let pid = zygote.fork(name, asked, &fds)?;
    // Only the worker holds its ends of the pipes now.
    drop((stdin_read, stdout_write, stderr_write, ready_write, worker_channel, procs));
    let child = match Child::adopt(pid, stdin_write, stdout_read, stderr_read) {
        Ok(child) => child,
        Err(error) => {
            // SAFETY: kill and waitpid on our own child, which nothing
            // else reaps; the status is not needed.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
            return Err(error);
        }
    };
    Ok(Process { child, ready_read, channel })
}

/// Room for a worker's output before its writes block: a guest that logs a
/// line per request must not stall (its worker runs one thread) while
/// `shoal up` is busy proxying; 64 KiB, Linux's default, is ~1,000 lines.
const OUTPUT_PIPE_SIZE: i32 = 1 << 20;

fn widen_pipe(fd: i32) {
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; failure (e.g. over
    // /proc/sys/fs/pipe-max-size) leaves the pipe as it was.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, OUTPUT_PIPE_SIZE) };
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads the readiness pipe: the worker's `ready …` line once it wrote it
/// whole, `None` if it closed the pipe (exited) first.
async fn wait_ready(read: OwnedFd) -> Option<String> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read).ok()?;
    let mut buf = [0u8; 256];
    let mut seen = Vec::new();
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if seen.starts_with(b"ready") && seen.contains(&b'\n') || seen.len() > 4096 {
                    return seen.starts_with(b"ready").then(|| String::from_utf8_lossy(&seen).into_owned());
                }
            }
        }
    }
}

/// Forwards a worker's output: whole lines, each prefixed, in chunks.
/// With `last_line`, the last complete line (without the prefix) is kept
/// there too.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    name: Arc<str>,
    stream: Stream,
    log: LogSink,
    last_line: Option<Arc<std::sync::Mutex<String>>>,
) {
    /// Read at most at once, and the longest line kept whole.
    const CHUNK: usize = 64 * 1024;
    let prefix = format!("{name} | ").into_bytes();
    // Read into spare capacity: nothing zeroed, and no page of it touched
    // before output arrives (many workers print nothing, or little).
    let mut pending: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        pending.reserve(CHUNK);
        match from.read_buf(&mut pending).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
            // A very long line without a newline is flushed as it is.
            if pending.len() >= CHUNK {
                out.extend_from_slice(&prefix);
                out.append(&mut pending);
                out.push(b'\n');
                log(&name, stream, &out);
                out.clear();
            }
            continue;
        };
        for line in pending[..=last].split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(&prefix);
            out.extend_from_slice(line);
        }
        if let Some(keep) = &last_line {
            let line = pending[..last].rsplit(|&b| b == b'\n').next().unwrap_or_default();
            *keep.lock().expect("last line lock") = String::from_utf8_lossy(line).into_owned();
        }
        pending.drain(..=last);
        log(&name, stream, &out);
        out.clear();
    }
    if !pending.is_empty() {
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&pending);
        out.push(b'\n');
        log(&name, stream, &out);
    }
}

/// A [`LogSink`] that writes to this process's stdout and stderr through
/// the [`console`](crate::console): never blocking, whoever reads them.
pub fn stdio_log() -> LogSink {
    Arc::new(|_replica, stream, chunk| match stream {
        Stream::Stdout => crate::console::replica_out(chunk),
        Stream::Stderr => crate::console::replica_err(chunk),
    })
}

/// A replica's resource use at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since it started (user and system).
    pub cpu: Option<Duration>,
    /// Memory in bytes.
    pub memory: Option<u64>,
}

/// User plus system time of a process, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&t| t > 0)?;
    Some(Duration::from_nanos((utime + stime).saturating_mul(1_000_000_000 / ticks)))
}

/// The resident set of a process, from `/proc/<pid>/status`.
fn resident_set(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn startup_reads_the_workers_ready_line() {
        let line = "ready exec_us=15000 runtime_us=100 engine_us=700 load_us=1100 check_us=150 total_us=2100 instances=reset\n";
        let mut startup = Startup::parse(Duration::from_micros(17_600), line);
        startup.cgroup = Duration::from_micros(300);
        assert_eq!(startup.exec, Duration::from_millis(15));
        assert_eq!(startup.load, Duration::from_micros(1100));
        assert_eq!(startup.other(), Duration::from_micros(200));
        assert_eq!(
            startup.to_string(),
            "ready in 17.6ms (cgroup 0.3ms, exec 15.0ms, runtime 0.1ms, engine 0.7ms, module load 1.1ms, \
             start check 0.1ms, other 0.2ms), instances reset"
        );
        // From a standby process, its exec was paid before.
        startup.standby = true;
        startup.total = Duration::from_micros(2_600);
        assert!(startup.to_string().starts_with("ready in 2.6ms (cgroup 0.3ms, exec standby,"), "{startup}");
        assert_eq!(startup.other(), Duration::from_micros(200));
        // A line without figures still reads.
        assert_eq!(Startup::parse(Duration::from_millis(5), "ready\n").worker, Duration::ZERO);
    }

    #[test]
    fn reads_the_usage_of_this_process() {
        let pid = std::process::id();
        // Burn a little CPU so the figure is not zero.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(pid).is_some_and(|t| t > Duration::ZERO));
        assert!(resident_set(pid).is_some_and(|m| m > 1 << 20));
        assert_eq!(cpu_time(u32::MAX), None);
    }
}
