//! The node agent: starts worker processes, confines them, watches them.
//!
//! Starting a replica, in order:
//!
//! 1. Create its cgroup with the manifest's limits (when cgroups are usable).
//! 2. Open the cgroup's `cgroup.procs` files and a readiness pipe.
//! 3. `fork`; in the child, before `exec`: set `PR_SET_PDEATHSIG` (so the
//!    worker dies with Shoal), leave Shoal's process group (so a terminal's
//!    Ctrl-C reaches Shoal only, which drains first), check the parent did not already die, join
//!    the cgroup, and put the readiness pipe on fd 3.
//! 4. `exec` the same `shoal` binary as `shoal worker`, which loads the
//!    precompiled component, binds its Unix socket and writes `ready`.
//! 5. A task per replica forwards its stdout and stderr line by line,
//!    prefixed with the replica's name, and another waits for its exit,
//!    removes its cgroup and socket, and publishes the [`Exit`].

use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::WorkerConfig;
use tokio::io::{AsyncRead, AsyncReadExt as _};
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
    /// The worker's socket.
    pub socket: PathBuf,
    /// Its cgroup path, or `None` when it runs unconfined.
    pub cgroup: Option<String>,
    exit: watch::Receiver<Option<Exit>>,
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
}

impl NodeAgent {
    /// A node agent; `cgroups` is `None` when replicas run unconfined.
    pub fn new(config: AgentConfig, cgroups: Option<Cgroups>) -> Self {
        Self { config, cgroups: cgroups.map(Arc::new) }
    }

    /// Whether replicas get cgroups.
    pub fn confined(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Starts a replica and waits until it is ready to serve.
    pub async fn start(&self, spec: &ReplicaSpec) -> Result<Replica, StartError> {
        let cgroup = match &self.cgroups {
            Some(cgroups) => Some(cgroups.create(&spec.name, spec.limits).map_err(StartError::Cgroup)?),
            None => None,
        };
        match self.spawn(spec, cgroup).await {
            Ok(replica) => Ok(replica),
            Err((error, Some(cgroup))) => {
                let _ = cgroup.remove();
                Err(error)
            }
            Err((error, None)) => Err(error),
        }
    }

    async fn spawn(
        &self,
        spec: &ReplicaSpec,
        cgroup: Option<ReplicaCgroup>,
    ) -> Result<Replica, (StartError, Option<ReplicaCgroup>)> {
        let socket = self.config.run_dir.join(format!("{}.sock", spec.name));
        let worker = WorkerConfig {
            service: spec.service.clone(),
            replica: spec.name.clone(),
            socket: socket.clone(),
            module: spec.module.clone(),
            cache_dir: self.config.cache_dir.clone(),
            env: spec.env.clone(),
            instance_memory: spec.instance_memory,
            timeout_ms: spec.timeout.as_millis() as u64,
            max_concurrency: spec.max_concurrency,
            queue: spec.queue,
            drain_timeout_ms: spec.drain_timeout.as_millis() as u64,
        };
        let config_json = serde_json::to_string(&worker).expect("worker config serializes");
        let procs = match cgroup.as_ref().map(ReplicaCgroup::procs_files).transpose() {
            Ok(files) => files.unwrap_or_default(),
            Err(e) => {
                return Err((StartError::Cgroup(format!("cannot open cgroup.procs: {e}")), cgroup));
            }
        };
        let (ready_read, ready_write) = match pipe() {
            Ok(p) => p,
            Err(e) => return Err((StartError::Spawn(e), cgroup)),
        };

        let mut command = tokio::process::Command::new(&self.config.exe);
        command
            .arg("worker")
            .arg(&spec.name)
            .arg("--config")
            .arg(config_json)
            .env(shoal_runtime::worker::READY_FD_ENV, "3")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let ready_fd = ready_write.as_raw_fd();
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
                if ready_fd == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(ready_fd, 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Err((StartError::Spawn(e), cgroup)),
        };
        drop(ready_write);
        drop(procs);
        let pid = child.id().unwrap_or_default();
        let name: Arc<str> = spec.name.as_str().into();
        let last_error = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(out, name.clone(), Stream::Stdout, self.config.log.clone(), None));
        }
        let stderr_done = child.stderr.take().map(|err| {
            tokio::spawn(forward(err, name, Stream::Stderr, self.config.log.clone(), Some(last_error.clone())))
        });

        let cgroup_path = cgroup.as_ref().map(|c| c.path().to_owned());
        let (exit_tx, exit_rx) = watch::channel(None);
        let socket_path = socket.clone();
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
            let _ = std::fs::remove_file(&socket_path);
            let _ = exit_tx.send(Some(exit));
        });

        let mut replica = Replica { name: spec.name.clone(), pid, socket, cgroup: cgroup_path, exit: exit_rx };
        match tokio::time::timeout(self.config.ready_timeout, wait_ready(ready_read)).await {
            Ok(true) => Ok(replica),
            Ok(false) => {
                let exit = replica.wait().await;
                // Its stderr is complete once the process is gone.
                if let Some(done) = stderr_done {
                    let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
                }
                let why = last_error.lock().expect("last error lock").trim().to_owned();
                let why = if why.is_empty() { "it wrote no error".to_owned() } else { why };
                Err((StartError::Exited(exit, why), None))
            }
            Err(_) => {
                replica.kill();
                replica.wait().await;
                Err((StartError::Timeout(self.config.ready_timeout), None))
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
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_base();
        }
    }
}

impl Replica {
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

/// Reads the readiness pipe: `true` once the worker wrote `ready`, `false`
/// if it closed the pipe (exited) first.
async fn wait_ready(read: OwnedFd) -> bool {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read) else {
        return false;
    };
    let mut buf = [0u8; 16];
    let mut seen = Vec::new();
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if seen.starts_with(b"ready") {
                    return true;
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
