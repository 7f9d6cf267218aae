//! # shoal-protocol: how `shoal up` and its workers talk
//!
//! One small crate that the node agent, the gateway and the worker share,
//! so that a new per-replica setting or a change of the channel touches one
//! place, and the node agent needs no wasmtime.
//!
//! # Layout
//!
//! - [`config`]: what a worker is told ([`WorkerConfig`], sent as JSON on
//!   its stdin) and the environment and descriptor numbers it starts with.
//! - [`ready`]: the line a worker writes on its readiness pipe, with how
//!   long each start step took.
//! - [`channel`]: the shared-memory channel between the gateway and one
//!   replica: the segment layout, the two rings, the frames, the wake-ups.
//! - [`fdpass`]: messages with descriptors over Unix sockets.
//! - [`attach`]: a `shoal up` attaching to a worker it did not start.

pub mod attach;
pub mod channel;
pub mod config;
pub mod fdpass;
pub mod ready;

pub use config::WorkerConfig;
