//! # shoal-control: the control plane
//!
//! The control plane keeps Shoal's desired state (services and the modules
//! they run) durable, so that it survives a restart of `shoal`; serves the
//! authenticated admin API that changes it; and reconciles the running
//! replicas with it, continuously.
//!
//! # Layout
//!
//! * [`admin`]: the admin API (axum), its token check and its error
//!   responses.
//! * [`cluster`]: cluster mode on etcd: membership by leases, the
//!   leader's fenced scheduling, each node's share of the replicas.
//! * [`apply`]: create-or-replace of a service, shared by the API and
//!   `shoal up -f`.
//! * [`reconciler`]: the level-triggered loop that makes pods match the
//!   store: scaling, rolling updates, module preparation, service status.
//! * [`pods`]: one replica slot each: start, readiness, restart with
//!   back-off, drain on stop.
//! * [`events`]: the event log (`shoal get events`, `describe`).
//! * [`logs`]: recent replica output and the feed `shoal logs -f` follows.
//! * [`store`] holds the [`Store`](store::Store) trait, the durable
//!   interface to desired state, and [`KvStore`](store::KvStore), which
//!   keeps it in a revisioned key-value store ([`Kv`](store::Kv)): a redb
//!   file ([`LocalKv`](store::LocalKv)) on one node, etcd
//!   ([`EtcdKv`](store::EtcdKv)) in a cluster.

pub mod admin;
pub mod apply;
pub mod autoscaler;
pub mod cluster;
pub mod events;
pub mod history;
pub mod logs;
pub mod metrics;
pub mod pods;
pub mod reconciler;
pub mod scaling;
pub mod store;
