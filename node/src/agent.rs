//! The node agent: starts worker processes, confines them, watches them.
//!
//! Starting a replica, in order:
//!
//! 1. Create its cgroup with the manifest's limits (when cgroups are usable).
//! 2. Open the cgroup's `cgroup.procs` files and a readiness pipe.
//! 3. `fork`; in the child, before `exec`: set `PR_SET_PDEATHSIG` (so the
//!    worker dies with Shoal), leave Shoal's process group (so a terminal's
//!    Ctrl-C reaches Shoal only, which drains first), check the parent did
//!    not already die, join the cgroup, and put the readiness pipe on fd 3.
//! 4. `exec` the same `shoal` binary as `shoal worker`, which reads its
//!    configuration from stdin, loads the precompiled component, binds its
//!    channel (fds 4, 5 and 6, see `shoal_protocol::channel`) and writes
//!    `ready` with the time each step took.
//! 5. A task per replica forwards its stdout and stderr line by line,
//!    prefixed with the replica's name, and another waits for its exit,
//!    removes its cgroup, and publishes the [`Exit`].
//!
//! Steps 1 to 4 up to `exec` are done ahead for the next replica: one
//! standby worker (`shoal-standby` in `ps`) waits, confined in its own
//! cgroup, for its configuration. Joining a cgroup v1 costs the kernel an RCU
//! grace period (about 15 ms on the machines measured), more than everything
//! else a start does; the standby pays it before a replica is needed. When a
//! replica starts, the standby's cgroup is renamed after it (cgroup v1; v2
//! cannot rename, and the group keeps its `standby-<n>` name) and given the
//! replica's limits, the configuration is sent, and another standby is
//! started in the background. Every fork happens on one long-lived thread
//! (see `NodeAgent::on_fork_thread`).

use std::fmt;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_protocol::channel::ChannelFds;
use shoal_protocol::config::{CHANNEL_FDS, CHANNEL_FDS_ENV, READY_FD_ENV, SPAWNED_ENV, WorkerConfig, monotonic_nanos};
use shoal_protocol::ready::{Instances, ReadyReport};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::cgroups::{CgroupLimits, Cgroups, ReplicaCgroup};

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
}

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
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
            Exit::OomKilled => f.write_str("OOMKilled"),
        }
    }
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
    /// How its instances serve requests, as the worker said.
    pub instances: Option<Instances>,
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
            instances: report.instances,
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
    /// A worker process started ahead, for the next replica.
    standby: Mutex<Option<Standby>>,
    standby_seq: AtomicU64,
    /// Set by [`NodeAgent::cleanup`]: no more standby processes.
    closed: AtomicBool,
    /// While the fork thread starts a standby.
    refilling: AtomicBool,
    /// Jobs for the fork thread (see [`NodeAgent::on_fork_thread`]).
    forker: Mutex<Option<std::sync::mpsc::Sender<ForkJob>>>,
}

impl NodeAgent {
    /// A node agent; `cgroups` is `None` when replicas run unconfined.
    pub fn new(config: AgentConfig, cgroups: Option<Cgroups>) -> Self {
        Self {
            config,
            cgroups: cgroups.map(Arc::new),
            standby: Mutex::new(None),
            standby_seq: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            refilling: AtomicBool::new(false),
            forker: Mutex::new(None),
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

    /// Starts a replica and waits until it is ready to serve: the standby
    /// process when there is one (then another standby is started), a new
    /// process otherwise.
    pub async fn start(self: &Arc<Self>, spec: &ReplicaSpec) -> Result<Replica, StartError> {
        let started = std::time::Instant::now();
        let standby = self.standby.lock().expect("standby lock").take();
        let agent = self.clone();
        self.on_fork_thread(move || agent.refill());
        if let Some(mut standby) = standby {
            if standby.process.child.try_wait().ok().flatten().is_none() {
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
                return Ok(replica);
            }
            // It died while waiting: clean up and start afresh.
            if let Some(group) = standby.cgroup.take() {
                let _ = group.remove();
            }
        }
        let cgroup = match &self.cgroups {
            Some(cgroups) => Some(cgroups.create(&spec.name, spec.limits).map_err(StartError::Cgroup)?),
            None => None,
        };
        let cgroup_time = started.elapsed();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (config, name) = (self.config.clone(), spec.name.clone());
        self.on_fork_thread(move || {
            let process = spawn_process(&config, &name, cgroup.as_ref());
            let _ = sender.send((process, cgroup));
        });
        let Ok((process, cgroup)) = receiver.await else {
            return Err(StartError::Spawn(std::io::Error::other("the fork thread is gone")));
        };
        let process = match process {
            Ok(process) => process,
            Err(error) => {
                if let Some(group) = cgroup {
                    let _ = group.remove();
                }
                return Err(StartError::Spawn(error));
            }
        };
        let mut replica = self.attach(spec, process, cgroup, started).await?;
        replica.startup.cgroup = cgroup_time;
        Ok(replica)
    }

    /// Starts a standby process if there is none and Shoal is not shutting
    /// down: a worker already forked, confined and exec'd, waiting for its
    /// configuration. Joining a cgroup v1 takes the kernel an RCU grace
    /// period (about 15 ms here), and exec a few more; a standby pays them
    /// before a replica is needed.
    fn refill(&self) {
        // Only the fork thread refills, so nobody else can start one between
        // this check and the store below.
        if self.standby.lock().expect("standby lock").is_some() || self.closed.load(Ordering::SeqCst) {
            return;
        }
        self.refilling.store(true, Ordering::SeqCst);
        let number = self.standby_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("standby-{number}");
        let cgroup = match &self.cgroups {
            Some(cgroups) => match cgroups.create(&name, STANDBY_LIMITS) {
                Ok(group) => Some(group),
                Err(error) => {
                    tracing::warn!(%error, "cannot create a standby worker's cgroup");
                    self.refilling.store(false, Ordering::SeqCst);
                    return;
                }
            },
            None => None,
        };
        match spawn_process(&self.config, &name, cgroup.as_ref()) {
            Ok(mut process) => {
                let mut standby = self.standby.lock().expect("standby lock");
                if self.closed.load(Ordering::SeqCst) {
                    // Shoal is stopping: this one is not needed.
                    drop(standby);
                    stop_now(&mut process.child);
                    if let Some(group) = cgroup {
                        let _ = group.remove();
                    }
                } else {
                    *standby = Some(Standby { process, cgroup });
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start a standby worker");
                if let Some(group) = cgroup {
                    let _ = group.remove();
                }
            }
        }
        self.refilling.store(false, Ordering::SeqCst);
    }

    /// Runs `job` on the agent's fork thread, started on first use. Every
    /// worker is forked there: `PR_SET_PDEATHSIG` fires when the *thread*
    /// that forked a process exits, so that thread must live as long as
    /// Shoal (a tokio blocking thread exits after 10 s idle); and a fork
    /// blocks until the child has joined its cgroup and exec'd, which must
    /// not hold up a runtime thread.
    fn on_fork_thread(&self, job: impl FnOnce() + Send + 'static) {
        let mut forker = self.forker.lock().expect("forker lock");
        let sender = forker.get_or_insert_with(|| {
            let (sender, jobs) = std::sync::mpsc::channel::<ForkJob>();
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("shoal-fork".into())
                .spawn(move || {
                    // tokio::process needs the runtime to watch the children.
                    let _entered = runtime.enter();
                    for job in jobs {
                        job();
                    }
                })
                .expect("cannot start the fork thread");
            sender
        });
        let _ = sender.send(Box::new(job));
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
        };
        let config_json = serde_json::to_vec(&worker).expect("worker config serializes");
        // The worker reads its configuration to the end of its stdin. A
        // worker that died first is reported below, from its exit.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = tokio::time::timeout(self.config.ready_timeout, stdin.write_all(&config_json)).await;
        }
        let pid = child.id().unwrap_or_default();
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

    /// Removes what the agent made outside its replicas (the instance's
    /// cgroup parent).
    pub fn cleanup(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // A standby being started now is stopped by the fork thread itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.refilling.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(mut standby) = self.standby.lock().expect("standby lock").take() {
            stop_now(&mut standby.process.child);
            if let Some(group) = standby.cgroup.take() {
                let _ = group.remove();
            }
        }
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

/// Work for the agent's fork thread.
type ForkJob = Box<dyn FnOnce() + Send>;

/// Kills a process that runs no replica yet and waits (at most 5 s) until
/// it is gone, so that its cgroup can be removed.
fn stop_now(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A worker process, forked, confined and exec'd, not yet told what to run.
struct Process {
    child: tokio::process::Child,
    ready_read: OwnedFd,
    /// The gateway's end of its channel (the worker has its own copies).
    channel: ChannelFds,
}

/// A standby worker and its cgroup.
struct Standby {
    process: Process,
    cgroup: Option<ReplicaCgroup>,
}

/// Spaces passed as a last argument to every worker: the room its command
/// line (what `ps` shows) has for `shoal worker <replica name>`, which a
/// standby learns only once it is given its configuration.
const TITLE_ROOM: usize = 64;

/// Limits of a standby worker's cgroup until it becomes a replica (it only
/// waits on its stdin meanwhile).
const STANDBY_LIMITS: CgroupLimits = CgroupLimits { memory: 64 << 20, cpu_millis: None };

/// Forks, confines (in `cgroup`) and execs `shoal worker <name>`, which
/// waits for its configuration on stdin.
fn spawn_process(config: &AgentConfig, name: &str, cgroup: Option<&ReplicaCgroup>) -> std::io::Result<Process> {
    let procs = cgroup.map(ReplicaCgroup::procs_files).transpose()?.unwrap_or_default();
    let (ready_read, ready_write) = pipe()?;
    let (channel, worker_channel) = ChannelFds::create(name)?;
    let mut command = tokio::process::Command::new(&config.exe);
    command
        .arg("worker")
        .arg(name)
        // Room in the process's argument memory for the replica's name,
        // which the worker writes there once it knows it (see `ps`).
        .arg(" ".repeat(TITLE_ROOM))
        .env(READY_FD_ENV, "3")
        .env(CHANNEL_FDS_ENV, CHANNEL_FDS.map(|fd| fd.to_string()).join(","))
        .env(SPAWNED_ENV, monotonic_nanos().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    // fd 3: the readiness pipe; 4, 5, 6: the channel (the segment and the
    // worker's ends of the two wake-up pipes).
    let passed = [
        ready_write.as_raw_fd(),
        worker_channel.segment.as_raw_fd(),
        worker_channel.wake_me.as_raw_fd(),
        worker_channel.wake_peer.as_raw_fd(),
    ];
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and
    // only makes async-signal-safe system calls on descriptors opened
    // before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Its own process group, so that a terminal's Ctrl-C reaches
            // Shoal alone, which then drains and stops its workers.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            for &fd in &procs_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Out of the way first (a source may sit on a target number),
            // then onto 3, 4, 5, 6, where dup2 clears close-on-exec.
            let mut moved = [0; 4];
            for (to, &from) in moved.iter_mut().zip(&passed) {
                *to = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 100);
                if *to < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, &from) in (3..).zip(&moved) {
                if libc::dup2(from, target) != target {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(ready_write);
    drop(procs);
    // Only the worker holds its ends of the pipes.
    drop(worker_channel);
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
    let prefix = format!("{name} | ").into_bytes();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
            // A very long line without a newline is flushed as it is.
            if pending.len() >= buf.len() {
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

/// A [`LogSink`] that writes to this process's stdout and stderr.
pub fn stdio_log() -> LogSink {
    Arc::new(|_replica, stream, chunk| {
        let _ = match stream {
            Stream::Stdout => std::io::stdout().lock().write_all(chunk),
            Stream::Stderr => std::io::stderr().lock().write_all(chunk),
        };
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
