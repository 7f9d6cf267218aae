//! The data plane: accepts client HTTP, routes it to a service, and proxies
//! it to one of the service's ready replicas over a Unix socket.
//!
//! ```text
//! client ──HTTP/1.1 or h2c──▶ server (accept loop, connection limit, drain)
//!                               │ proxy: route by Host + longest path prefix
//!                               │        pick a replica (power of two choices)
//!                               │        X-Forwarded-For, deadline
//!                               ▼
//!                        link: frames on the replica's shared-memory channel
//! ```
//!
//! The gateway's errors have short bodies and fixed statuses: `404` no route,
//! `502` the replica failed, `503` no ready replica, `504` the deadline passed.
//!
//! # Layout
//!
//! - [`router`]: the pure routing table.
//! - [`balancer`]: ready replicas of a service and the choice among them.
//! - [`link`]: the gateway's end of a replica's channel: requests out as
//!   frames, responses back, flow control, the worker checked.
//! - [`client`]: the client's request body with the service's size limit.
//! - `proxy`: the request path.
//! - `outbound`: calls from services (to a service by name, or out),
//!   allow-lists, hop counting.
//! - [`listener`]: the accept loop every listener of Shoal runs (connection
//!   cap, header and idle timeouts, eviction, graceful drain).
//! - `server`: the gateway's listener settings.

pub mod balancer;
pub mod client;
pub mod link;
pub mod listener;
pub mod metrics;
mod outbound;
pub mod peer;
mod proxy;
pub mod router;
mod server;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use metrics::{CallSnapshot, CallStats, Meter, MeterReading, ReplicaSnapshot, ReplicaStats};

use shoal_api::Route;

pub use balancer::{Balancer, Endpoint};
pub use outbound::{HOPS_HEADER, MAX_HOPS};
pub use peer::{Peer, RemoteReplica};
pub use router::Router;
pub use server::GatewayConfig;

/// A service as the gateway sees it: its deadline and its ready replicas.
pub struct Backend {
    /// The service's name.
    pub name: String,
    /// The request deadline, in milliseconds (changed in place on update).
    timeout_ms: AtomicU64,
    /// The largest request body, in bytes (changed in place on update).
    max_body: AtomicU64,
    /// The ready replicas.
    pub replicas: Balancer,
    /// Requests that may wait for a replica when none is ready (the
    /// activator); 0 answers `503` at once.
    max_held: AtomicU64,
    /// The service's demand.
    pub meter: Meter,
    /// Each replica's figures, by name, kept while the replica exists.
    stats: Mutex<HashMap<String, Arc<ReplicaStats>>>,
}

impl Backend {
    fn new(name: &str, timeout: Duration, max_body: u64) -> Self {
        Self {
            name: name.to_owned(),
            timeout_ms: AtomicU64::new(millis(timeout)),
            max_body: AtomicU64::new(max_body),
            replicas: Balancer::default(),
            max_held: AtomicU64::new(0),
            meter: Meter::default(),
            stats: Mutex::default(),
        }
    }

    /// Requests that may wait for a replica; 0 when the activator is off.
    pub fn max_held(&self) -> u64 {
        self.max_held.load(Ordering::Relaxed)
    }

    fn replica_stats(&self, replica: &str) -> Arc<ReplicaStats> {
        self.stats.lock().expect("stats lock").entry(replica.to_owned()).or_default().clone()
    }

    /// The largest request body, in bytes.
    pub fn max_body(&self) -> u64 {
        self.max_body.load(Ordering::Relaxed)
    }

    /// The request deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Remote {
    /// The remote replicas of `service`, with their peers.
    fn of(&self, service: &str) -> Vec<(String, Arc<peer::Peer>)> {
        self.replicas
            .iter()
            .filter(|r| r.service == service)
            .filter_map(|r| Some((r.name.clone(), self.peers.get(&(r.node.clone(), r.address.clone()))?.clone())))
            .collect()
    }
}

/// Each service's routes and backend, by name.
type Services = HashMap<String, (Vec<Route>, Arc<Backend>)>;

/// Called with a service's name when a request waits for it to have a
/// replica.
type ActivateHook = Box<dyn Fn(&str) + Send + Sync>;

/// The gateway: routes and backends, changed at run time by the control
/// plane, read by every request.
#[derive(Default)]
pub struct Gateway {
    router: RwLock<Arc<Router<Routed>>>,
    services: RwLock<Services>,
    activate: OnceLock<ActivateHook>,
    /// Calls between services and out.
    calls: Mutex<CallTable>,
    /// The client for calls to hosts outside, made on first use unless
    /// set before.
    outside: OnceLock<Arc<outbound::Outside>>,
    /// In a cluster: how other nodes are reached.
    peers: OnceLock<peer::Peers>,
    /// In a cluster: the ready replicas on other nodes, and those nodes.
    remote: Mutex<Remote>,
    /// The certificates the TLS listener serves, and its handshakes.
    certificates: Arc<tls::Certificates>,
    tls_stats: Arc<tls::TlsStats>,
    /// The TLS listener's port (0: none): where a plain request for a route
    /// that requires HTTPS is redirected.
    https_port: std::sync::atomic::AtomicU16,
    /// Set by [`Gateway::hand_off`]: HTTP/1.1 connections close after
    /// their next response.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Set by [`Gateway::hand_off`]: where requests go that find no ready
    /// replica here.
    successor: Successor,
}

/// The gateway of the `shoal up` that took over from this one, once one
/// did.
struct Successor {
    address: tokio::sync::watch::Sender<Option<std::net::SocketAddr>>,
    client: OnceLock<
        hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, peer::PeerBody>,
    >,
}

impl Default for Successor {
    fn default() -> Self {
        Self { address: tokio::sync::watch::channel(None).0, client: OnceLock::new() }
    }
}

/// What a route leads to.
#[derive(Clone)]
pub(crate) struct Routed {
    pub backend: Arc<Backend>,
    /// `tls: required`: plain HTTP is redirected.
    pub https_only: bool,
}

/// The cluster's ready replicas on other nodes, as last published.
#[derive(Default)]
struct Remote {
    replicas: Vec<RemoteReplica>,
    /// One peer per (node, address), kept while it has replicas, so that
    /// its ejection holds across updates.
    peers: HashMap<(String, String), Arc<peer::Peer>>,
}

/// Call figures by (caller, target), with whether the target is a service.
type CallTable = HashMap<(String, String), (bool, Arc<CallStats>)>;

/// The most (caller, target) pairs whose calls are counted apart; calls to
/// further targets are counted under [`OTHER_TARGETS`] (a guest that calls
/// many hosts cannot grow the gateway's memory, or `/metrics`, without
/// bound).
const MAX_CALL_TARGETS: usize = 1000;
/// The target the calls past [`MAX_CALL_TARGETS`] are counted under.
pub const OTHER_TARGETS: &str = "(other)";

/// One service's figures at one moment.
#[derive(Debug, Clone)]
pub struct ServiceSnapshot {
    pub name: String,
    pub meter: MeterReading,
    /// Ready replicas.
    pub ready: usize,
    /// Each replica's figures, by name, sorted.
    pub replicas: Vec<(String, ReplicaSnapshot)>,
}

impl Gateway {
    /// An empty gateway: every request gets `404` until services are set.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Hands clients over to another process's gateway serving on the
    /// same listening sockets, reached at `successor` (a loopback
    /// listener only the successor accepts on): from now on every
    /// HTTP/1.1 response says `Connection: close`, so that its client's
    /// next request opens a connection the successor accepts; and a request that finds no ready replica here
    /// (one held for a service at zero, whose replica this process will
    /// no longer start) is passed to the successor, as it arrived.
    pub fn hand_off(&self, successor: std::net::SocketAddr) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        self.successor.address.send_replace(Some(successor));
    }

    /// The flag [`Gateway::hand_off`] sets, for the listeners.
    pub(crate) fn closing(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.closing.clone()
    }

    /// Adds or updates a service's routes, deadline and body size limit;
    /// its ready replicas are kept. The routing table is rebuilt only when
    /// the routes changed (the control plane publishes every service on
    /// every pass: with a thousand services, a rebuild each time made a
    /// pass take a second).
    pub fn set_service(&self, name: &str, routes: Vec<Route>, timeout: Duration, max_body: u64) {
        let mut services = self.services.write().expect("gateway lock");
        if let Some((current, backend)) = services.get(name)
            && *current == routes
        {
            backend.timeout_ms.store(millis(timeout), Ordering::Relaxed);
            backend.max_body.store(max_body, Ordering::Relaxed);
            return;
        }
        let backend = match services.remove(name) {
            Some((_, backend)) => {
                backend.timeout_ms.store(millis(timeout), Ordering::Relaxed);
                backend.max_body.store(max_body, Ordering::Relaxed);
                backend
            }
            None => {
                let backend = Arc::new(Backend::new(name, timeout, max_body));
                let remote = self.remote.lock().expect("remote lock");
                backend.replicas.set_remote(&remote.of(name));
                backend
            }
        };
        services.insert(name.to_owned(), (routes, backend));
        self.rebuild(&services);
    }

    /// Joins a cluster whose nodes share `secret`: requests can be sent to
    /// replicas on other nodes, and are taken from them. Call before
    /// serving.
    pub fn join_cluster(&self, secret: &str) {
        let _ = self.peers.set(peer::Peers::new(secret));
    }

    /// The cluster's secret, when in a cluster.
    pub fn cluster_secret(&self) -> Option<&str> {
        self.peers.get().map(|p| p.secret.as_str())
    }

    /// Makes `replicas` the ready replicas on other nodes: each service's
    /// rotation gains the new ones and loses those no longer listed.
    pub fn set_remote(&self, mut replicas: Vec<RemoteReplica>) {
        replicas.sort();
        let services = self.services.read().expect("gateway lock");
        let mut remote = self.remote.lock().expect("remote lock");
        if remote.replicas == replicas {
            return;
        }
        let mut peers = HashMap::new();
        for replica in &replicas {
            let key = (replica.node.clone(), replica.address.clone());
            let peer = remote
                .peers
                .get(&key)
                .cloned()
                .unwrap_or_else(|| Arc::new(peer::Peer::new(&replica.node, &replica.address)));
            peers.insert(key, peer);
        }
        *remote = Remote { replicas, peers };
        for (name, (_, backend)) in services.iter() {
            backend.replicas.set_remote(&remote.of(name));
        }
    }

    /// Removes a service and its routes.
    pub fn remove_service(&self, name: &str) {
        let mut services = self.services.write().expect("gateway lock");
        if let Some((_, backend)) = services.remove(name) {
            // Requests waiting for a replica get their 503 now.
            backend.max_held.store(0, Ordering::Relaxed);
            backend.replicas.wake();
        }
        self.rebuild(&services);
    }

    fn rebuild(&self, services: &Services) {
        let router = Router::new(services.values().flat_map(|(routes, backend)| {
            routes.iter().map(move |r| {
                let https_only = r.tls == shoal_api::RouteTls::Required;
                (r.clone(), Routed { backend: backend.clone(), https_only })
            })
        }));
        *self.router.write().expect("gateway lock") = Arc::new(router);
    }

    /// The backend of a service.
    pub fn backend(&self, service: &str) -> Option<Arc<Backend>> {
        self.services.read().expect("gateway lock").get(service).map(|(_, b)| b.clone())
    }

    /// Turns the activator on for `service` (`max_held` > 0): a request that
    /// finds no ready replica waits, up to the service's deadline, and the
    /// activation hook is called; past `max_held` waiting requests, `503`.
    /// Turning it off (0) answers the requests already waiting with `503`.
    pub fn set_activator(&self, service: &str, max_held: u64) {
        if let Some(backend) = self.backend(service) {
            let before = backend.max_held.swap(max_held, Ordering::Relaxed);
            if before != 0 && max_held == 0 {
                backend.replicas.wake();
            }
        }
    }

    /// Sets the function called (once per waiting request, so it must be
    /// idempotent) when a request waits for a service without ready
    /// replicas. Only the first call takes effect.
    pub fn on_activate(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.activate.set(Box::new(hook));
    }

    pub(crate) fn activate(&self, service: &str) {
        if let Some(hook) = self.activate.get() {
            hook(service);
        }
    }

    /// Puts a ready replica of `service`, reached through `link`, in
    /// rotation.
    pub fn add_replica(&self, service: &str, replica: &str, link: Arc<link::Link>) {
        if let Some(backend) = self.backend(service) {
            let stats = backend.replica_stats(replica);
            backend.replicas.add(Endpoint::with_stats(replica, link, stats));
        }
    }

    /// Forgets a replica that no longer exists (its figures included).
    pub fn forget_replica(&self, service: &str, replica: &str) {
        if let Some(backend) = self.backend(service) {
            backend.replicas.remove(replica);
            backend.stats.lock().expect("stats lock").remove(replica);
        }
    }

    /// Every service's figures, sorted by name.
    pub fn snapshot(&self) -> Vec<ServiceSnapshot> {
        let backends: Vec<Arc<Backend>> =
            self.services.read().expect("gateway lock").values().map(|(_, b)| b.clone()).collect();
        let mut out: Vec<ServiceSnapshot> = backends
            .iter()
            .map(|backend| {
                let mut replicas: Vec<(String, ReplicaSnapshot)> = backend
                    .stats
                    .lock()
                    .expect("stats lock")
                    .iter()
                    .map(|(name, stats)| (name.clone(), stats.snapshot()))
                    .collect();
                replicas.sort_by(|a, b| a.0.cmp(&b.0));
                ServiceSnapshot {
                    name: backend.name.clone(),
                    meter: backend.meter.read(),
                    ready: backend.replicas.local_len(),
                    replicas,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Trusts the CA certificates in `files` (PEM), besides the
    /// platform's, for HTTPS calls to hosts outside. Call before serving.
    pub fn trust_outbound_cas(&self, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
        let outside = outbound::Outside::new(files)?;
        let _ = self.outside.set(Arc::new(outside));
        Ok(())
    }

    pub(crate) fn outside(&self) -> anyhow::Result<Arc<outbound::Outside>> {
        if let Some(outside) = self.outside.get() {
            return Ok(outside.clone());
        }
        let outside = Arc::new(outbound::Outside::new(&[])?);
        Ok(self.outside.get_or_init(|| outside).clone())
    }

    /// The figures of `caller`'s calls to `target` (a service when
    /// `internal`, else `scheme://host:port`).
    pub(crate) fn call_stats(&self, caller: &str, target: &str, internal: bool) -> Arc<CallStats> {
        let mut calls = self.calls.lock().expect("calls lock");
        let key = (caller.to_owned(), target.to_owned());
        if let Some((_, stats)) = calls.get(&key) {
            return stats.clone();
        }
        let key = if calls.len() < MAX_CALL_TARGETS { key } else { (caller.to_owned(), OTHER_TARGETS.to_owned()) };
        calls.entry(key).or_insert_with(|| (internal, Arc::default())).1.clone()
    }

    /// Every (caller, target) pair's call figures, sorted.
    pub fn call_snapshot(&self) -> Vec<CallSnapshot> {
        let calls = self.calls.lock().expect("calls lock");
        let mut out: Vec<CallSnapshot> = calls
            .iter()
            .map(|((caller, target), (internal, stats))| stats.snapshot(caller, target, *internal))
            .collect();
        drop(calls);
        out.sort_by(|a, b| (&a.caller, &a.target).cmp(&(&b.caller, &b.target)));
        out
    }

    /// Takes a replica out of rotation; requests in flight to it finish.
    pub fn remove_replica(&self, service: &str, replica: &str) {
        if let Some(backend) = self.backend(service) {
            backend.replicas.remove(replica);
        }
    }

    /// Takes a replica that stopped answering out of rotation: requests in
    /// flight to it give up on it, and go to another replica where that is
    /// safe (else `502`).
    pub fn fail_replica(&self, service: &str, replica: &str) {
        if let Some(backend) = self.backend(service) {
            backend.replicas.fail(replica);
        }
    }

    /// The number of ready replicas of `service` on this node.
    pub fn ready_replicas(&self, service: &str) -> usize {
        self.backend(service).map_or(0, |b| b.replicas.local_len())
    }

    pub(crate) fn router(&self) -> Arc<Router<Routed>> {
        self.router.read().expect("gateway lock").clone()
    }

    /// The certificates the TLS listener serves: the default one (set at
    /// start) and those per host (from the store).
    pub fn certificates(&self) -> &Arc<tls::Certificates> {
        &self.certificates
    }

    /// The TLS listener's handshakes so far.
    pub fn tls_stats(&self) -> &tls::TlsStats {
        &self.tls_stats
    }

    /// The TLS listener's port, once it listens.
    pub fn https_port(&self) -> Option<u16> {
        Some(self.https_port.load(Ordering::Relaxed)).filter(|&port| port != 0)
    }
}
