//! The node agent: runs replicas as worker processes on this machine.
//!
//! Each replica is a worker process (the same binary, forked by the
//! zygote), confined by a cgroup of its own that it joins first, and
//! watched until it exits; its cgroup and socket are removed then. A worker
//! outlives a `shoal up` that died for a grace, and the next one takes it
//! over ([`NodeAgent::adopt`]). Without cgroup access the agent still runs replicas,
//! unconfined, and says so.
//!
//! # Layout
//!
//! - [`agent`]: starting (fork, confine, exec, readiness), stopping (SIGTERM,
//!   grace, SIGKILL) and watching workers; forwarding their output.
//! - [`cgroups`]: per-replica cgroups on v1 or v2 through cgroups-rs.
//! - [`console`]: `shoal up`'s stdout and stderr, written by a thread per
//!   stream so that a reader who stops reading never blocks the platform.
//! - [`starts`]: the start gate (how many starts at once, in which order)
//!   and the fork threads.
//! - [`zygote`]: the process that forks every worker without `exec`, and
//!   its side in `shoal up`; `child`: a worker it forked, watched through
//!   a pidfd.

pub mod agent;
pub mod cgroups;
mod child;
pub mod console;
pub mod starts;
pub mod zygote;

pub use agent::{
    Adopted, AgentConfig, DEFAULT_STANDBY_MAX, Exit, Killer, LogSink, NodeAgent, Replica, ReplicaSpec, StartError,
    StartStatus, Startup, Stream, Usage, default_start_concurrency, stdio_log,
};
pub use cgroups::{CgroupLimits, Cgroups};
