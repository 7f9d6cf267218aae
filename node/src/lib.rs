//! The node agent: runs replicas as worker processes on this machine.
//!
//! Each replica is a `shoal worker` process (the same binary), confined by a
//! cgroup of its own that it joins before `exec`, killed with Shoal through
//! `PR_SET_PDEATHSIG`, and watched until it exits; its cgroup and socket are
//! removed then. Without cgroup access the agent still runs replicas,
//! unconfined, and says so.
//!
//! # Layout
//!
//! - [`agent`]: starting (fork, confine, exec, readiness), stopping (SIGTERM,
//!   grace, SIGKILL) and watching workers; forwarding their output.
//! - [`cgroups`]: per-replica cgroups on v1 or v2 through cgroups-rs.

pub mod agent;
pub mod cgroups;

pub use agent::{
    AgentConfig, Exit, Killer, LogSink, NodeAgent, Replica, ReplicaSpec, StartError, Startup, Stream, Usage, stdio_log,
};
pub use cgroups::{CgroupLimits, Cgroups};
