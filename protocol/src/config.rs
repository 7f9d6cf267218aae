//! What a worker is told, and what it starts with.
//!
//! The node agent forks and execs `shoal worker <name> <room>`, with:
//!
//! - fd 3: the write end of the readiness pipe ([`READY_FD_ENV`]);
//! - fds 4, 5, 6: the channel to the gateway: the shared segment, the read
//!   end of the pipe that wakes the worker, the write end of the pipe that
//!   wakes the gateway
//!   ([`CHANNEL_FDS_ENV`], see [`crate::channel`]);
//! - stdin: its [`WorkerConfig`] as JSON (not on the command line, so the
//!   guest's environment is not in the process listing); a standby worker
//!   waits there until it is given one;
//! - stdout and stderr: pipes the node agent reads, line by line.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The environment variable naming the file descriptor on which a worker
/// reports readiness (it writes one line, `ready …`, then closes it).
pub const READY_FD_ENV: &str = "SHOAL_READY_FD";

/// The environment variable in which the node agent passes the
/// `CLOCK_MONOTONIC` time (ns) at which it spawned the worker.
pub const SPAWNED_ENV: &str = "SHOAL_SPAWNED_NS";

/// The environment variable naming the worker's three channel descriptors:
/// `<segment>,<the pipe it sleeps on>,<the pipe that wakes the gateway>`.
pub const CHANNEL_FDS_ENV: &str = "SHOAL_CHANNEL_FDS";

/// The descriptor numbers the node agent puts the channel on in a worker.
pub const CHANNEL_FDS: [i32; 3] = [4, 5, 6];

/// Everything a worker needs, passed by the node agent as JSON on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// The service this replica belongs to.
    pub service: String,
    /// The replica's name; the guest sees it as `HOSTNAME`.
    pub replica: String,
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
    /// Where the worker listens for a `shoal up` that did not start it (a
    /// successor, or one started after a crash) to attach a new channel:
    /// a name in the abstract Unix socket namespace
    /// (`attach::worker_name`). `None`: no such socket.
    #[serde(default)]
    pub attach: Option<String>,
    /// How long the worker waits for an attach once every gateway that
    /// had a channel to it is gone, in milliseconds; then it exits. (0: at
    /// once.)
    #[serde(default)]
    pub orphan_grace_ms: u64,
}

fn one() -> u32 {
    1
}

impl WorkerConfig {
    /// The request deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
pub fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// The time since the node agent spawned this process (fork, exec, the
/// binary's start), from [`SPAWNED_ENV`]; zero without it.
pub fn since_spawn() -> Duration {
    std::env::var(SPAWNED_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, |spawned| Duration::from_nanos(monotonic_nanos().saturating_sub(spawned)))
}
