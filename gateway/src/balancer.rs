//! Spreading requests over a service's ready replicas.
//!
//! Power of two choices: pick two replicas at random and send the request to
//! the one with fewer requests in flight. It needs no global view, avoids
//! the herd behaviour of "least loaded", and keeps the worst replica's queue
//! short.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use rand::Rng as _;
use tokio::sync::{Notify, watch};

use crate::link::Link;
use crate::metrics::ReplicaStats;
use crate::peer::Peer;

/// Where a replica is reached.
pub(crate) enum Target {
    /// On this node: the channel to its worker.
    Local(Arc<Link>),
    /// On another node, through that node's internal listener.
    Remote(Arc<Peer>),
}

/// One ready replica, as the gateway sees it.
pub struct Endpoint {
    /// The replica's name.
    pub name: String,
    stats: Arc<ReplicaStats>,
    pub(crate) target: Target,
    /// Set when the replica stopped answering (its probes failed): requests
    /// in flight to it give up and, where safe, go to another replica.
    failed: std::sync::atomic::AtomicBool,
    failed_notify: Notify,
}

impl Endpoint {
    /// An endpoint for the worker at the other end of `link`, with fresh
    /// figures.
    pub fn new(name: impl Into<String>, link: Arc<Link>) -> Self {
        Self::with_stats(name, link, Arc::default())
    }

    /// An endpoint that counts into `stats` (kept across its returns to the
    /// rotation).
    pub fn with_stats(name: impl Into<String>, link: Arc<Link>, stats: Arc<ReplicaStats>) -> Self {
        Self::at(name.into(), Target::Local(link), stats)
    }

    /// An endpoint for a replica on another node, reached through `peer`.
    pub fn remote(name: impl Into<String>, peer: Arc<Peer>) -> Self {
        Self::at(name.into(), Target::Remote(peer), Arc::default())
    }

    fn at(name: String, target: Target, stats: Arc<ReplicaStats>) -> Self {
        Self { name, stats, target, failed: std::sync::atomic::AtomicBool::new(false), failed_notify: Notify::new() }
    }

    /// Whether the replica runs on another node.
    pub fn is_remote(&self) -> bool {
        matches!(self.target, Target::Remote(_))
    }

    /// The node it runs on, when that is another one.
    pub fn peer(&self) -> Option<&Arc<Peer>> {
        match &self.target {
            Target::Remote(peer) => Some(peer),
            Target::Local(_) => None,
        }
    }

    /// Whether requests may be sent to it now: a remote replica whose node
    /// could not be reached is skipped for a while.
    fn usable(&self) -> bool {
        self.peer().is_none_or(|peer| !peer.is_ejected())
    }

    /// What a request sent to it is expected to cost: the requests in
    /// flight, plus one for the hop to another node (so that an idle local
    /// replica wins over an idle remote one, and remote ones still take
    /// their share of the load).
    fn cost(&self) -> u64 {
        self.in_flight() + u64::from(self.is_remote())
    }

    /// Marks the replica as failed: requests in flight to it stop waiting.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.failed_notify.notify_waiters();
    }

    /// Whether the replica was marked failed.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Completes once the replica is marked failed.
    pub async fn failed(&self) {
        loop {
            let notified = self.failed_notify.notified();
            if self.failed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Requests sent to this replica whose responses have not finished.
    pub fn in_flight(&self) -> u64 {
        self.stats.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops; then records its
    /// status and latency.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint: self.clone(), start: Instant::now(), status: 0 }
    }
}

/// A request in flight on an endpoint; dropping it ends the count and
/// records the request's status and latency (unless it was cancelled
/// before any status: the client went away).
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    start: Instant,
    status: u16,
}

impl InFlight {
    /// The status the replica answered with.
    pub fn answered(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let stats = &self.endpoint.stats;
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Without a status the client went away first: not the replica's
        // answer, so not counted as one.
        if self.status != 0 {
            stats.observe(self.status, self.start.elapsed());
        }
    }
}

/// The ready replicas of one service.
pub struct Balancer {
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    /// Replicas taken out of rotation while requests may still wait on
    /// them (a failed probe), so that they can still be failed.
    resting: std::sync::Mutex<Vec<Arc<Endpoint>>>,
    /// The number of ready replicas, for requests waiting for one.
    ready: watch::Sender<usize>,
}

impl Default for Balancer {
    fn default() -> Self {
        Self {
            endpoints: RwLock::new(Arc::from([])),
            resting: std::sync::Mutex::default(),
            ready: watch::Sender::new(0),
        }
    }
}

impl Balancer {
    /// Picks a replica by power of two choices, or `None` if none is ready.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.read().expect("balancer lock").clone();
        if endpoints.iter().all(|e| e.usable()) {
            return Self::choose(&endpoints);
        }
        let usable: Vec<Arc<Endpoint>> = endpoints.iter().filter(|e| e.usable()).cloned().collect();
        Self::choose(&usable)
    }

    /// Picks a replica on this node, for a request another node's gateway
    /// forwarded here.
    pub fn pick_local(&self) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.read().expect("balancer lock").clone();
        if endpoints.iter().all(|e| !e.is_remote()) {
            return Self::choose(&endpoints);
        }
        let local: Vec<Arc<Endpoint>> = endpoints.iter().filter(|e| !e.is_remote()).cloned().collect();
        Self::choose(&local)
    }

    /// Like [`Balancer::pick`], never choosing the replica named `not`.
    pub fn pick_other(&self, not: &str) -> Option<Arc<Endpoint>> {
        self.pick_excluding(&[not])
    }

    /// Like [`Balancer::pick`], never choosing a replica named in `tried`.
    pub fn pick_excluding(&self, tried: &[&str]) -> Option<Arc<Endpoint>> {
        let endpoints: Vec<Arc<Endpoint>> = self
            .endpoints
            .read()
            .expect("balancer lock")
            .iter()
            .filter(|e| e.usable() && !tried.contains(&e.name.as_str()))
            .cloned()
            .collect();
        Self::choose(&endpoints)
    }

    fn choose(endpoints: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
        match endpoints.len() {
            0 => None,
            1 => Some(endpoints[0].clone()),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (ea, eb) = (&endpoints[a], &endpoints[b]);
                Some(if eb.cost() < ea.cost() { eb.clone() } else { ea.clone() })
            }
        }
    }

    /// Adds a ready replica (replacing one of the same name).
    pub fn add(&self, endpoint: Endpoint) {
        self.resting.lock().expect("balancer lock").retain(|e| e.name != endpoint.name);
        let mut guard = self.endpoints.write().expect("balancer lock");
        let mut list: Vec<Arc<Endpoint>> = guard.iter().filter(|e| e.name != endpoint.name).cloned().collect();
        list.push(Arc::new(endpoint));
        self.ready.send_replace(list.len());
        *guard = list.into();
    }

    /// Makes `remote` (replica name, node) the replicas of this service on
    /// other nodes: those no longer listed leave (requests sent to them
    /// finish), new ones join. Local replicas are left as they are.
    pub fn set_remote(&self, remote: &[(String, Arc<Peer>)]) {
        let mut guard = self.endpoints.write().expect("balancer lock");
        let same = |e: &Endpoint, (name, peer): &(String, Arc<Peer>)| {
            e.name == *name && e.peer().is_some_and(|p| Arc::ptr_eq(p, peer))
        };
        let mut list: Vec<Arc<Endpoint>> =
            guard.iter().filter(|e| !e.is_remote() || remote.iter().any(|r| same(e, r))).cloned().collect();
        for entry in remote {
            if !list.iter().any(|e| same(e, entry)) {
                list.push(Arc::new(Endpoint::remote(entry.0.clone(), entry.1.clone())));
            }
        }
        if list.len() != guard.len() || list.iter().zip(guard.iter()).any(|(a, b)| !Arc::ptr_eq(a, b)) {
            self.ready.send_replace(list.len());
            *guard = list.into();
        }
    }

    /// How many replicas on this node are ready.
    pub fn local_len(&self) -> usize {
        self.endpoints.read().expect("balancer lock").iter().filter(|e| !e.is_remote()).count()
    }

    /// Watches the number of ready replicas.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.ready.subscribe()
    }

    /// Wakes the requests waiting for a replica, to look again at why they
    /// wait (the service was removed, or its activator turned off).
    pub fn wake(&self) {
        self.ready.send_modify(|_| {});
    }

    /// Removes a replica; requests already sent to it finish.
    pub fn remove(&self, name: &str) -> bool {
        let removed = self.take(name);
        if let Some(endpoint) = &removed {
            let mut resting = self.resting.lock().expect("balancer lock");
            resting.retain(|e| e.name != endpoint.name && Arc::strong_count(e) > 1);
            resting.push(endpoint.clone());
        }
        removed.is_some()
    }

    /// Fails a replica that is stuck, in rotation or not: requests in
    /// flight to it give up on it (and go to another replica where that is
    /// safe).
    pub fn fail(&self, name: &str) -> bool {
        let mut failed = self.take(name);
        let mut resting = self.resting.lock().expect("balancer lock");
        if let Some(at) = resting.iter().position(|e| e.name == name) {
            failed = failed.or(Some(resting.swap_remove(at)));
        }
        drop(resting);
        if let Some(endpoint) = &failed {
            endpoint.fail();
        }
        failed.is_some()
    }

    fn take(&self, name: &str) -> Option<Arc<Endpoint>> {
        let mut guard = self.endpoints.write().expect("balancer lock");
        let removed = guard.iter().find(|e| e.name == name).cloned();
        let list: Vec<Arc<Endpoint>> = guard.iter().filter(|e| e.name != name).cloned().collect();
        self.ready.send_replace(list.len());
        *guard = list.into();
        removed
    }

    /// The names of the ready replicas.
    pub fn names(&self) -> Vec<String> {
        self.endpoints.read().expect("balancer lock").iter().map(|e| e.name.clone()).collect()
    }

    /// How many replicas are ready.
    pub fn len(&self) -> usize {
        self.endpoints.read().expect("balancer lock").len()
    }

    /// Whether no replica is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(names: &[&str]) -> Balancer {
        let b = Balancer::default();
        for name in names {
            let (fds, _worker) = shoal_protocol::channel::ChannelFds::create("test").unwrap();
            b.add(Endpoint::new(*name, Link::open(name, fds).unwrap()));
        }
        b
    }

    #[tokio::test]
    async fn empty_has_no_pick() {
        assert!(balancer(&[]).pick().is_none());
    }

    #[tokio::test]
    async fn spreads_over_idle_replicas() {
        let b = balancer(&["a", "b", "c"]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(b.pick().unwrap().name.clone());
        }
        assert_eq!(seen.len(), 3);
    }

    #[tokio::test]
    async fn avoids_the_busier_replica() {
        let b = balancer(&["a", "b"]);
        let busy = b.pick().unwrap();
        let _guards: Vec<InFlight> = (0..5).map(|_| busy.track()).collect();
        for _ in 0..50 {
            assert_ne!(b.pick().unwrap().name, busy.name);
        }
    }

    #[tokio::test]
    async fn pick_other_avoids_the_named_replica() {
        let b = balancer(&["a", "b"]);
        for _ in 0..20 {
            assert_eq!(b.pick_other("a").unwrap().name, "b");
        }
        assert!(balancer(&["a"]).pick_other("a").is_none());
    }

    #[tokio::test]
    async fn pick_excluding_avoids_every_tried_replica() {
        let b = balancer(&["a", "b", "c"]);
        for _ in 0..20 {
            assert_eq!(b.pick_excluding(&["a", "c"]).unwrap().name, "b");
        }
        assert!(b.pick_excluding(&["a", "b", "c"]).is_none());
    }

    #[tokio::test]
    async fn a_failed_replica_wakes_its_waiters_and_leaves() {
        let b = balancer(&["a", "b"]);
        let a = b.pick_excluding(&["b"]).unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.failed().await }
        });
        tokio::task::yield_now().await;
        assert!(b.fail("a"));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(b.names(), ["b"]);
        // A waiter that comes after the failure returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), a.failed()).await.unwrap();
    }

    #[tokio::test]
    async fn in_flight_ends_with_the_guard() {
        let b = balancer(&["a"]);
        let e = b.pick().unwrap();
        let guard = e.track();
        assert_eq!(e.in_flight(), 1);
        drop(guard);
        assert_eq!(e.in_flight(), 0);
        assert!(b.remove("a"));
        assert!(b.is_empty());
    }
}
