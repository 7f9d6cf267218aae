//! Cluster mode: several `shoal up` nodes sharing one desired state in etcd.
//!
//! Every node runs the gateway, the admin API and the node agent, and keeps
//! the store's mirror of etcd ([`EtcdKv`]). Beside the services and
//! modules, the cluster keeps, under the same prefix:
//!
//! | key | written by | value |
//! |---|---|---|
//! | `nodes/<name>` | the node, when it registers | [`NodeRecord`]: addresses, capacity, first registration |
//! | `status/<name>` | the node, under its lease | [`NodeStatus`]: its lease, when granted, the replicas it runs |
//! | `leader` | the leader, under its lease | the leader's name |
//! | `placement/<service>` | the leader, fenced | the service's replica count per node |
//! | `scale/<service>` | the leader, fenced | its autoscaler's decision for the service ([`ScaleStatus`]) |
//! | `demand/<name>`, `activate/<service>` | a node, under its lease | its gateway's demand; a request waiting for a service at zero |
//! | `cluster/token` | the first node | the admin API's token, the same on every node |
//!
//! **Membership by leases.** A node holds an etcd lease (`--node-lease-ttl`,
//! 10 s by default), renewed every third of it; `status/<name>` lives under
//! it, so a node that dies or is cut off for a TTL disappears from the
//! ready nodes by itself. A node whose lease is gone (it was frozen, or cut
//! off) holds its replicas as they are, starts none, registers again with a
//! new lease, and then follows the placement, which by then gives its
//! replicas to others: it stops them. etcd without a quorum is not a lost
//! lease (etcd extends leases across its own recovery): the node keeps
//! everything running and retries.
//!
//! **One leader.** Every node campaigns for `leader` (created only if
//! absent, under the campaigner's lease). The leader keeps the key's create
//! revision as its fence; each of its writes is a transaction that first
//! compares the key's create revision with it, so a deposed leader (its
//! lease expired, another took over) cannot write: its transaction fails
//! and it steps down. The leader runs the scheduler ([`schedule`]) every
//! second and on changes; each node runs as many replicas of each service
//! as the placement gives it ([`Cluster::replicas_here`]) and rolls them
//! to new revisions itself, with the single-node rules.

pub mod schedule;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_api::objects::{NodeView, ReplicaInfo, ScaleStatus, ServiceRecord, now_unix};
use shoal_etcd::{Client, Compare, CompareResult, EtcdError, Op, Txn};
use tokio::sync::{Notify, watch};

use crate::store::{EtcdKv, Kv, StoreError};
use schedule::{Demand, NodeInfo, Placement};

/// How often the leader schedules.
pub const LEADER_PERIOD: Duration = Duration::from_secs(1);
/// How often a node looks for a vacant leadership (in its mirror).
pub const CAMPAIGN_PERIOD: Duration = Duration::from_millis(200);

/// The cluster settings of one node (`shoal up --etcd …`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The key prefix in etcd (`/shoal/`).
    pub prefix: String,
    /// This node's name (`--node-name`).
    pub node: String,
    /// Where other nodes reach this one (`--advertise`).
    pub advertise: String,
    /// This node's gateway and admin API addresses, for `get nodes`.
    pub gateway: String,
    pub admin: String,
    /// The node lease's TTL (`--node-lease-ttl`).
    pub lease_ttl: Duration,
    /// Memory this node gives replicas, in bytes (`--capacity`).
    pub capacity: u64,
    /// The cluster's secret (the admin API's token, the same on every
    /// node): for fetching modules from other nodes.
    pub secret: String,
}

/// What a node records about itself when it registers (`nodes/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    pub address: String,
    pub gateway: String,
    pub admin: String,
    pub capacity: u64,
    pub registered_unix: u64,
}

/// What a node publishes under its lease (`status/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub lease: i64,
    pub lease_granted_unix: u64,
    pub replicas: Vec<ReplicaInfo>,
}

/// How often the leader compacts etcd's history, and how many revisions
/// it keeps: every node writes its demand each second, so without
/// compaction etcd's keyspace would grow without bound (the Kubernetes API
/// server compacts every 5 minutes too).
pub const COMPACTION_PERIOD: Duration = Duration::from_secs(300);
pub const KEEP_REVISIONS: u64 = 10_000;

/// How often a node removes the files of modules deleted elsewhere, and
/// how old such a file must be (an upload writes its file just before its
/// record).
pub const SWEEP_PERIOD: Duration = Duration::from_secs(10);
pub const SWEEP_GRACE: Duration = Duration::from_secs(60);

/// How long another node's admin API may take to answer a question.
pub const PEER_ANSWER: Duration = Duration::from_secs(5);

/// How long fetching a module from another node may take.
pub const MODULE_FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// What a node's gateway saw of each service's demand over the last
/// [`TICK`] (`demand/<name>`, under its lease, written every tick): the
/// leader's autoscaler sums every node's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDemand {
    pub services: BTreeMap<String, ServiceDemand>,
}

/// One service's demand at one gateway over one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceDemand {
    /// Average requests in flight (in replicas and held).
    pub concurrency: f64,
    /// Requests that arrived.
    pub requests: f64,
}

/// How recent every ready node's demand must be for the leader's
/// autoscaler to decide: without it (etcd lost its quorum, a node cannot
/// write) the counts hold, so nothing is scaled down for want of figures.
pub const DEMAND_FRESHNESS: Duration = Duration::from_secs(3);

/// Why a fenced write failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The leadership the write was fenced on is over.
    #[error("this node is no longer the leader (its leadership of revision {0} ended); the write was refused")]
    Deposed(i64),
    /// etcd could not be reached.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// One node's part in the cluster: its lease, its registration, its
/// leadership, and the leader's scheduling.
pub struct Cluster {
    config: ClusterConfig,
    client: Client,
    kv: Arc<EtcdKv>,
    state: Mutex<State>,
    /// Wakes the reconciler when the placement may have changed.
    changed: Arc<Notify>,
    /// The gateway told of the ready replicas on other nodes.
    gateway: std::sync::OnceLock<Arc<shoal_gateway::Gateway>>,
    /// The node's event log (the leader's autoscaler records its
    /// decisions there).
    events: std::sync::OnceLock<Arc<crate::events::EventLog>>,
    /// The node's store, for fetching modules ahead of their use.
    store: std::sync::OnceLock<Arc<dyn crate::store::Store>>,
    /// This cluster itself, for the tasks it spawns.
    me: std::sync::Weak<Cluster>,
    /// The leader's autoscaler, while this node leads.
    scaler: Mutex<Option<Arc<crate::scaling::Scaler>>>,
    /// For fetching modules from other nodes.
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

#[derive(Debug, Default)]
struct State {
    /// The node's lease and when it was granted.
    lease: Option<(i64, u64)>,
    /// The leadership held: the `leader` key's create revision.
    fence: Option<i64>,
    /// The status last written under the lease.
    published: Option<Vec<u8>>,
    /// The replicas last reported by the node agent.
    replicas: Vec<ReplicaInfo>,
    /// Unschedulable replicas last reported, to log changes only.
    unschedulable: Vec<(String, u32, String)>,
    /// The mirror's revision when the gateway's remote replicas were last
    /// set.
    routed: u64,
    /// The placement as the reconciler was last woken for it.
    placed: Vec<(String, u64)>,
    /// The gateway's meter readings at the last demand published.
    readings: std::collections::HashMap<String, shoal_gateway::metrics::MeterReading>,
    /// The leader's view of each node's demand: its key's revision and
    /// when that last changed.
    demand_seen: std::collections::HashMap<String, (u64, std::time::Instant)>,
    /// Services this node asked the leader to activate, not yet seen.
    activating: std::collections::HashSet<String>,
    /// Whether modules are being fetched ahead of their use.
    prefetching: bool,
    /// Modules no node could send, not to be reported again.
    unfetched: std::collections::HashSet<String>,
    /// When module files without a record were last swept.
    swept: Option<std::time::Instant>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.config.node).finish_non_exhaustive()
    }
}

impl Cluster {
    /// This node in the cluster whose desired state `kv` mirrors, through
    /// `client`. Nothing is written until [`Cluster::register`].
    pub fn new(config: ClusterConfig, client: Client, kv: Arc<EtcdKv>, changed: Arc<Notify>) -> Arc<Self> {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            config,
            client,
            kv,
            state: Mutex::default(),
            changed,
            gateway: Default::default(),
            events: Default::default(),
            store: Default::default(),
            scaler: Mutex::default(),
            http,
        })
    }

    /// The other ready nodes (holding their leases), with their addresses.
    fn peers(&self) -> Vec<(String, String)> {
        let Ok(statuses) = self.kv.list("status/") else { return Vec::new() };
        let Ok(records) = self.kv.list("nodes/") else { return Vec::new() };
        records
            .entries
            .iter()
            .filter_map(|entry| serde_json::from_slice::<NodeRecord>(&entry.value).ok())
            .filter(|record| record.name != self.config.node)
            .filter(|record| statuses.entries.iter().any(|e| e.key["status/".len()..] == record.name))
            .map(|record| (record.name, record.address))
            .collect()
    }

    /// `GET path_and_query` on every other ready node's admin API, at once:
    /// each node's name and its answer (or why there is none). What a node
    /// alone knows (its replicas' usage and output, its events) is served
    /// by any node this way.
    pub async fn ask_peers(
        &self,
        path_and_query: &str,
    ) -> Vec<(String, Result<hyper::Response<hyper::body::Incoming>, String>)> {
        let asks = self.peers().into_iter().map(|(node, address)| async move {
            let request = hyper::Request::get(format!("http://{address}{path_and_query}"))
                .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.config.secret))
                .body(http_body_util::Empty::new());
            let answer = match request {
                Ok(request) => match tokio::time::timeout(PEER_ANSWER, self.http.request(request)).await {
                    Ok(Ok(response)) if response.status().is_success() => Ok(response),
                    Ok(Ok(response)) => Err(format!("answered {}", response.status())),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no answer within {PEER_ANSWER:?}")),
                },
                Err(error) => Err(error.to_string()),
            };
            (node, answer)
        });
        futures::future::join_all(asks).await
    }

    /// Fetches module `digest`, stored in the cluster but not on this node
    /// (it was pushed to another), from the first ready node that has it,
    /// into `store`.
    pub async fn fetch_module(&self, digest: &str, store: Arc<dyn crate::store::Store>) -> Result<(), String> {
        let peers = self.peers();
        if peers.is_empty() {
            return Err(format!(
                "module sha256:{digest} is not on this node, and no other node is ready to send it; push it again"
            ));
        }
        let mut problems = Vec::new();
        for (node, address) in peers {
            let started = std::time::Instant::now();
            match tokio::time::timeout(MODULE_FETCH_TIMEOUT, self.fetch_from(&address, digest, store.clone())).await {
                Ok(Ok(size)) => {
                    tracing::info!(module = %digest, from = %node, size, elapsed = ?started.elapsed(), "module fetched from another node");
                    return Ok(());
                }
                Ok(Err(problem)) => problems.push(format!("{node}: {problem}")),
                Err(_) => problems.push(format!("{node}: not sent within {MODULE_FETCH_TIMEOUT:?}")),
            }
        }
        Err(format!(
            "module sha256:{digest} is not on this node and no node could send it ({}); push it again",
            problems.join("; ")
        ))
    }

    async fn fetch_from(
        &self,
        address: &str,
        digest: &str,
        store: Arc<dyn crate::store::Store>,
    ) -> Result<u64, String> {
        use http_body_util::BodyExt as _;
        let request = hyper::Request::get(format!("http://{address}/v1/modules/sha256:{digest}/content"))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.config.secret))
            .body(http_body_util::Empty::new())
            .map_err(|e| format!("bad address {address:?}: {e}"))?;
        let response = self.http.request(request).await.map_err(|e| format!("{address}: {e}"))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let text = String::from_utf8_lossy(&text[..text.len().min(500)]).trim().to_owned();
            return Err(format!("answered {status}: {text}"));
        }
        let begin = store.clone();
        let mut upload = tokio::task::spawn_blocking(move || begin.begin_module())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the transfer broke: {e}"))?;
            if let Some(data) = frame.data_ref() {
                if upload.size() + data.len() as u64 > crate::admin::MAX_MODULE_SIZE {
                    return Err("sent more than the largest module".to_owned());
                }
                upload.write(data).map_err(|e| e.to_string())?;
            }
        }
        let staged = tokio::task::spawn_blocking(move || upload.finish())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if staged.digest() != digest {
            return Err(format!("sent a module whose sha256 is {}", staged.digest()));
        }
        let size = staged.size();
        tokio::task::spawn_blocking(move || store.commit_module(staged))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(size)
    }

    /// Keeps `gateway` told of the ready replicas on other nodes, so that
    /// it routes to them; publishes its demand for the leader's
    /// autoscaler, whose decisions go to `events` while this node leads.
    /// Modules are fetched into `store` as soon as they are pushed to any
    /// node.
    pub fn attach(
        &self,
        gateway: Arc<shoal_gateway::Gateway>,
        events: Arc<crate::events::EventLog>,
        store: Arc<dyn crate::store::Store>,
    ) {
        let _ = self.gateway.set(gateway);
        let _ = self.events.set(events);
        let _ = self.store.set(store);
        self.sync_routes();
    }

    /// Fetches, in the background and one at a time, every stored module
    /// whose file this node lacks: a module pushed to one node is on every
    /// node within seconds, so it outlives the node it was pushed to.
    fn prefetch_modules(&self) {
        let Some(store) = self.store.get().cloned() else { return };
        self.sweep_modules(&store);
        let Ok(listing) = self.kv.list(crate::store::MODULES) else { return };
        let missing: Vec<String> = listing
            .entries
            .iter()
            .map(|entry| entry.key[crate::store::MODULES.len()..].to_owned())
            .filter(|digest| !store.has_module_file(digest))
            .collect();
        if missing.is_empty() || std::mem::replace(&mut self.state().prefetching, true) {
            return;
        }
        let Some(this) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            for digest in missing {
                match this.fetch_module(&digest, store.clone()).await {
                    Ok(()) => {
                        this.state().unfetched.remove(&digest);
                    }
                    Err(problem) => {
                        if this.state().unfetched.insert(digest.clone()) {
                            tracing::warn!(module = %digest, %problem, "cannot fetch a module pushed to another node");
                        }
                    }
                }
            }
            this.state().prefetching = false;
        });
    }

    /// Publishes what this node's gateway saw of each autoscaled service
    /// since the last tick (`demand/<name>`, under the lease).
    async fn publish_demand(&self) {
        let Some(gateway) = self.gateway.get() else { return };
        let Ok(services) = self.services() else { return };
        let snapshot = gateway.snapshot();
        let demand = {
            let mut state = self.state();
            let mut demand = NodeDemand::default();
            for service in &snapshot {
                if !services.iter().any(|r| r.service.name == service.name && r.service.spec.autoscale.is_some()) {
                    continue;
                }
                let reading = service.meter;
                let Some(last) = state.readings.insert(service.name.clone(), reading) else { continue };
                let elapsed = reading.at.saturating_duration_since(last.at).as_secs_f64();
                if elapsed <= 0.0 {
                    continue;
                }
                let arrivals = reading.arrivals.saturating_sub(last.arrivals) as f64;
                demand.services.insert(
                    service.name.clone(),
                    ServiceDemand {
                        concurrency: reading.concurrency_since(&last),
                        requests: arrivals * crate::autoscaler::TICK.as_secs_f64() / elapsed,
                    },
                );
            }
            demand
        };
        let Some((lease, _)) = self.state().lease else { return };
        let value = serde_json::to_vec(&demand).expect("a demand encodes");
        if let Err(error) = self.client.put(&self.key(&format!("demand/{}", self.config.node)), &value, lease).await {
            tracing::debug!(%error, "cannot publish the node's demand");
        }
    }

    /// Asks the leader's autoscaler for a replica of `service`, which has
    /// none ready anywhere (`activate/<service>`, under the lease): however
    /// many gateways ask, the leader takes the count from 0 to 1 once.
    pub fn activate(&self, service: &str) {
        if self.kv.get(&format!("activate/{service}")).ok().flatten().is_some()
            || !self.state().activating.insert(service.to_owned())
        {
            return;
        }
        let Some(this) = self.me.upgrade() else { return };
        let service = service.to_owned();
        tokio::spawn(async move {
            let lease = this.state().lease.map_or(0, |(id, _)| id);
            let key = this.key(&format!("activate/{service}"));
            if let Err(error) = this.client.put(&key, this.config.node.as_bytes(), lease).await {
                tracing::warn!(%service, %error, "cannot ask the cluster's leader for a replica");
            }
            this.state().activating.remove(&service);
        });
    }

    /// Gives the gateway the ready replicas other nodes publish (under
    /// their leases: a node whose lease ended has none), when the mirror
    /// changed.
    fn sync_routes(&self) {
        let Some(gateway) = self.gateway.get() else { return };
        let Ok(statuses) = self.kv.list("status/") else { return };
        if std::mem::replace(&mut self.state().routed, statuses.revision) == statuses.revision {
            return;
        }
        let Ok(records) = self.kv.list("nodes/") else { return };
        let addresses: BTreeMap<String, String> = records
            .entries
            .iter()
            .filter_map(|entry| serde_json::from_slice::<NodeRecord>(&entry.value).ok())
            .map(|record| (record.name, record.address))
            .collect();
        let mut remote = Vec::new();
        for entry in &statuses.entries {
            let node = &entry.key["status/".len()..];
            if node == self.config.node {
                continue;
            }
            let (Some(address), Ok(status)) = (addresses.get(node), serde_json::from_slice::<NodeStatus>(&entry.value))
            else {
                continue;
            };
            remote.extend(status.replicas.into_iter().filter(|r| r.ready).map(|r| shoal_gateway::RemoteReplica {
                service: r.service,
                name: r.name,
                node: node.to_owned(),
                address: address.clone(),
            }));
        }
        gateway.set_remote(remote);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.config.prefix).into_bytes()
    }

    /// Whether this node holds a lease (and so may start replicas).
    pub fn registered(&self) -> bool {
        self.state().lease.is_some()
    }

    /// The leadership this node holds: its fence (the `leader` key's create
    /// revision).
    pub fn fence(&self) -> Option<i64> {
        self.state().fence
    }

    /// Takes a lease and registers under it: `nodes/<name>` (kept across
    /// leases, with the first registration's time) and `status/<name>`.
    pub async fn register(&self) -> Result<(), EtcdError> {
        let ttl = self.config.lease_ttl.as_secs().max(1) as i64;
        let lease = self.client.lease_grant(ttl).await?;
        let granted = now_unix();
        let registered_unix = match self.kv.get(&format!("nodes/{}", self.config.node)) {
            Ok(Some(entry)) => {
                serde_json::from_slice::<NodeRecord>(&entry.value).map_or(granted, |r| r.registered_unix)
            }
            _ => granted,
        };
        let record = NodeRecord {
            name: self.config.node.clone(),
            address: self.config.advertise.clone(),
            gateway: self.config.gateway.clone(),
            admin: self.config.admin.clone(),
            capacity: self.config.capacity,
            registered_unix,
        };
        let replicas = self.state().replicas.clone();
        let status = NodeStatus { lease: lease.id, lease_granted_unix: granted, replicas };
        let status = serde_json::to_vec(&status).expect("a node status encodes");
        let txn = Txn::new().and_then([
            Op::put(self.key(&format!("nodes/{}", self.config.node)), serde_json::to_vec(&record).expect("encodes"), 0),
            Op::put(self.key(&format!("status/{}", self.config.node)), status.clone(), lease.id),
        ]);
        if let Err(error) = self.client.txn(&txn).await {
            let _ = self.client.lease_revoke(lease.id).await;
            return Err(error);
        }
        {
            let mut state = self.state();
            state.lease = Some((lease.id, granted));
            state.published = Some(status);
        }
        tracing::info!(node = %self.config.node, lease = lease.id, ttl, "registered in the cluster");
        self.changed.notify_one();
        Ok(())
    }

    /// Renews the lease; registers again if it is gone. etcd being
    /// unreachable changes nothing (the lease outlives etcd's recovery).
    async fn renew(&self) {
        let lease = self.state().lease;
        match lease {
            Some((id, _)) => match self.client.lease_keep_alive(id).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(node = %self.config.node, "the node's lease expired: holding replicas, starting none, registering again");
                    {
                        let mut state = self.state();
                        state.lease = None;
                        state.fence = None;
                        state.published = None;
                    }
                    self.changed.notify_one();
                    if let Err(error) = self.register().await {
                        tracing::warn!(%error, "cannot register again; retrying");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot renew the node's lease; retrying"),
            },
            None => {
                if let Err(error) = self.register().await {
                    tracing::warn!(%error, "cannot register in the cluster; retrying");
                }
            }
        }
    }

    /// The node agent's replicas, published under the lease when they
    /// change.
    pub fn report(&self, replicas: Vec<ReplicaInfo>) {
        self.state().replicas = replicas;
    }

    async fn publish(&self) {
        let (lease, bytes) = {
            let state = self.state();
            let Some((id, granted)) = state.lease else { return };
            let status = NodeStatus { lease: id, lease_granted_unix: granted, replicas: state.replicas.clone() };
            let bytes = serde_json::to_vec(&status).expect("a node status encodes");
            if state.published.as_ref() == Some(&bytes) {
                return;
            }
            (id, bytes)
        };
        // Only under the lease it was granted: a lost lease is not revived.
        let key = self.key(&format!("status/{}", self.config.node));
        let txn = Txn::new().when([Compare::lease(key.clone(), CompareResult::Equal, lease)]).and_then([Op::put(
            key,
            bytes.clone(),
            lease,
        )]);
        match self.client.txn(&txn).await {
            Ok(response) if response.succeeded => self.state().published = Some(bytes),
            Ok(_) => tracing::debug!("the node's status is no longer under its lease; it registers again"),
            Err(error) => tracing::debug!(%error, "cannot publish the node's status"),
        }
    }

    /// Campaigns for the leadership if nobody holds it: `leader` is created
    /// under this node's lease only if absent. Returns the fence if this
    /// node leads.
    pub async fn campaign(&self) -> Result<Option<i64>, EtcdError> {
        if let Some(fence) = self.fence() {
            return Ok(Some(fence));
        }
        let Some((lease, _)) = self.state().lease else { return Ok(None) };
        // The mirror follows the key: no need to ask etcd while it names a
        // leader.
        if self.kv.get("leader").ok().flatten().is_some() {
            return Ok(None);
        }
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareResult::Equal, 0)])
            .and_then([Op::put(key.clone(), self.config.node.clone(), lease)])
            .or_else([Op::get(key)]);
        let response = self.client.txn(&txn).await?;
        if !response.succeeded {
            return Ok(None);
        }
        let fence = response.revision;
        self.state().fence = Some(fence);
        tracing::info!(node = %self.config.node, fence, "became the cluster's leader");
        Ok(Some(fence))
    }

    /// Writes `ops` only if the leadership of `fence` still holds: the
    /// `leader` key's create revision is still `fence`. A refused write
    /// means that leadership is over; this node steps down if it held it.
    pub async fn fenced(&self, fence: i64, ops: Vec<Op>) -> Result<i64, FenceError> {
        let txn =
            Txn::new().when([Compare::create_revision(self.key("leader"), CompareResult::Equal, fence)]).and_then(ops);
        let response = self.client.txn(&txn).await?;
        if response.succeeded {
            return Ok(response.revision);
        }
        let mut state = self.state();
        if state.fence == Some(fence) {
            state.fence = None;
            tracing::warn!(node = %self.config.node, fence, "lost the cluster's leadership");
        }
        drop(state);
        // A later leadership starts its autoscaler from the placement.
        self.scaler.lock().unwrap_or_else(PoisonError::into_inner).take();
        Err(FenceError::Deposed(fence))
    }

    /// Ends this node's membership at once: revokes its lease, so its
    /// status and its leadership go now rather than after a TTL.
    pub async fn leave(&self) {
        let lease = self.state().lease.take();
        self.state().fence = None;
        if let Some((id, _)) = lease
            && let Err(error) = self.client.lease_revoke(id).await
        {
            tracing::warn!(%error, "cannot revoke the node's lease; it expires by itself");
        }
    }

    /// Replicas of `service` the placement gives this node; `None` while it
    /// holds no lease (it then keeps what runs and starts nothing).
    pub fn replicas_here(&self, service: &str) -> Option<u32> {
        if !self.registered() {
            return None;
        }
        let placement = self.kv.get(&format!("placement/{service}")).ok().flatten();
        let counts: BTreeMap<String, u32> =
            placement.and_then(|entry| serde_json::from_slice(&entry.value).ok()).unwrap_or_default();
        Some(counts.get(&self.config.node).copied().unwrap_or(0))
    }

    /// Every node the cluster knows, ready or not, by name.
    pub fn nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        let records = self.kv.list("nodes/")?.entries;
        let statuses: BTreeMap<String, NodeStatus> = self
            .kv
            .list("status/")?
            .entries
            .into_iter()
            .filter_map(|entry| {
                Some((entry.key["status/".len()..].to_owned(), serde_json::from_slice(&entry.value).ok()?))
            })
            .collect();
        let leader = self.kv.get("leader")?.map(|entry| String::from_utf8_lossy(&entry.value).into_owned());
        let reserved = self.reserved()?;
        Ok(records
            .into_iter()
            .filter_map(|entry| serde_json::from_slice::<NodeRecord>(&entry.value).ok())
            .map(|record| {
                let status = statuses.get(&record.name);
                NodeView {
                    ready: status.is_some(),
                    leader: leader.as_deref() == Some(record.name.as_str()),
                    replicas: status.map_or(0, |s| s.replicas.len() as u32),
                    reserved: reserved.get(&record.name).copied().unwrap_or(0),
                    lease_granted_unix: status.map(|s| s.lease_granted_unix),
                    name: record.name,
                    address: record.address,
                    gateway: record.gateway,
                    admin: record.admin,
                    capacity: record.capacity,
                    registered_unix: record.registered_unix,
                    starts: None,
                }
            })
            .collect())
    }

    /// The replicas every ready node runs, as they last published them.
    pub fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError> {
        Ok(self
            .kv
            .list("status/")?
            .entries
            .into_iter()
            .filter_map(|entry| serde_json::from_slice::<NodeStatus>(&entry.value).ok())
            .flat_map(|status| status.replicas)
            .collect())
    }

    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let entries = self.kv.list("services/")?.entries;
        Ok(entries.into_iter().filter_map(|entry| serde_json::from_slice(&entry.value).ok()).collect())
    }

    fn placement(&self) -> Result<Placement, StoreError> {
        Ok(self
            .kv
            .list("placement/")?
            .entries
            .into_iter()
            .filter_map(|entry| {
                Some((entry.key["placement/".len()..].to_owned(), serde_json::from_slice(&entry.value).ok()?))
            })
            .collect())
    }

    /// Memory reserved on each node by the placement.
    fn reserved(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let memory: BTreeMap<String, u64> =
            self.services()?.into_iter().map(|r| (r.service.name, r.service.spec.resources.memory)).collect();
        let mut reserved = BTreeMap::new();
        for (service, counts) in self.placement()? {
            for (node, count) in counts {
                *reserved.entry(node).or_default() += u64::from(count) * memory.get(&service).copied().unwrap_or(0);
            }
        }
        Ok(reserved)
    }

    /// The leader's autoscaler: a sample from every ready node's demand,
    /// summed, then a decision per autoscaled service; the activations
    /// asked for. Returns the keys of the activations it took.
    fn autoscale(&self, services: &[ServiceRecord], placement: &Placement) -> Result<Vec<String>, StoreError> {
        let (Some(gateway), Some(events)) = (self.gateway.get(), self.events.get()) else { return Ok(Vec::new()) };
        let scaler = self
            .scaler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| crate::scaling::Scaler::new(gateway.clone(), events.clone(), Arc::default()))
            .clone();
        scaler.sync_from(services, &|name| placement.get(name).map(|counts| counts.values().sum()));

        let ready_nodes: Vec<String> =
            self.kv.list("status/")?.entries.iter().map(|e| e.key["status/".len()..].to_owned()).collect();
        let demand = self.kv.list("demand/")?.entries;
        let now = std::time::Instant::now();
        let mut fresh = true;
        let mut samples: std::collections::HashMap<String, (crate::autoscaler::Sample, u32)> = Default::default();
        {
            let mut state = self.state();
            for node in &ready_nodes {
                let entry = demand.iter().find(|e| e.key["demand/".len()..] == *node);
                let revision = entry.map_or(0, |e| e.mod_revision);
                let seen = state.demand_seen.entry(node.clone()).or_insert((revision, now));
                if seen.0 != revision {
                    *seen = (revision, now);
                }
                if revision == 0 || now.duration_since(seen.1) > DEMAND_FRESHNESS {
                    fresh = false;
                }
                let Some(node_demand) = entry.and_then(|e| serde_json::from_slice::<NodeDemand>(&e.value).ok()) else {
                    continue;
                };
                for (service, d) in node_demand.services {
                    let sample = &mut samples.entry(service).or_default().0;
                    sample.concurrency += d.concurrency;
                    sample.requests += d.requests;
                }
            }
            state.demand_seen.retain(|node, _| ready_nodes.contains(node));
        }
        for replica in self.replicas()?.into_iter().filter(|r| r.ready) {
            samples.entry(replica.service).or_default().1 += 1;
        }
        let mut taken = Vec::new();
        for entry in self.kv.list("activate/")?.entries {
            scaler.activate(&entry.key["activate/".len()..]);
            taken.push(entry.key);
        }
        if fresh {
            scaler.tick_from(&samples);
        } else {
            tracing::debug!("not every node's demand is recent: the autoscaler holds its counts");
        }
        Ok(taken)
    }

    /// One pass of the leader: the autoscaler's counts, then the next
    /// placement, written (fenced) where it changed.
    async fn lead(&self, fence: i64) -> Result<(), FenceError> {
        let read = || -> Result<_, StoreError> {
            let services = self.services()?;
            let placement = self.placement()?;
            let activations = self.autoscale(&services, &placement)?;
            let scaler = self.scaler.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let demands: Vec<Demand> = services
                .iter()
                .map(|record| Demand {
                    service: record.service.name.clone(),
                    replicas: scaler
                        .as_ref()
                        .and_then(|s| s.desired(&record.service.name))
                        .unwrap_or(record.service.spec.replicas),
                    memory: record.service.spec.resources.memory,
                })
                .collect();
            let ready: std::collections::HashSet<String> = self
                .kv
                .list("status/")?
                .entries
                .into_iter()
                .map(|entry| entry.key["status/".len()..].to_owned())
                .collect();
            let nodes: Vec<NodeInfo> = self
                .kv
                .list("nodes/")?
                .entries
                .into_iter()
                .filter_map(|entry| serde_json::from_slice::<NodeRecord>(&entry.value).ok())
                .map(|record| NodeInfo {
                    ready: ready.contains(&record.name),
                    name: record.name,
                    capacity: record.capacity,
                })
                .collect();
            Ok((demands, nodes, placement, activations))
        };
        let (demands, nodes, current, activations) = match read() {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "the leader cannot read the cluster's state");
                return Ok(());
            }
        };
        let next = schedule::schedule(&demands, &nodes, &current);
        {
            let mut state = self.state();
            if state.unschedulable != next.unschedulable {
                for (service, missing, why) in &next.unschedulable {
                    tracing::warn!(service, missing, why, "replicas cannot be placed");
                }
                state.unschedulable = next.unschedulable.clone();
            }
        }
        let mut ops = Vec::new();
        for (service, counts) in &next.placement {
            if current.get(service) != Some(counts) {
                let value = serde_json::to_vec(counts).expect("a placement encodes");
                ops.push(Op::put(self.key(&format!("placement/{service}")), value, 0));
            }
        }
        for service in current.keys().filter(|service| !next.placement.contains_key(*service)) {
            ops.push(Op::delete(self.key(&format!("placement/{service}"))));
        }
        for key in activations {
            ops.push(Op::delete(self.key(&key)));
        }
        let placed = ops.len();
        ops.extend(self.scale_ops());
        if ops.is_empty() {
            return Ok(());
        }
        self.fenced(fence, ops).await?;
        if placed > 0 {
            tracing::info!(placement = ?next.placement, "placed replicas");
        }
        Ok(())
    }

    /// The writes that publish the leader's autoscaler decisions
    /// (`scale/<service>`) where they changed, so that every node's API
    /// shows them.
    fn scale_ops(&self) -> Vec<Op> {
        let scaler = self.scaler.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let published = self.kv.list("scale/").map(|l| l.entries).unwrap_or_default();
        let mut ops = Vec::new();
        let mut kept = Vec::new();
        for record in self.services().unwrap_or_default() {
            let Some(status) = scaler.as_ref().and_then(|s| s.status(&record.service.name)) else { continue };
            let key = format!("scale/{}", record.service.name);
            kept.push(key.clone());
            let old = published
                .iter()
                .find(|e| e.key == key)
                .and_then(|e| serde_json::from_slice::<ScaleStatus>(&e.value).ok());
            let same = old.is_some_and(|old| {
                (old.desired, old.panic, old.changed_unix) == (status.desired, status.panic, status.changed_unix)
            });
            if !same {
                ops.push(Op::put(self.key(&key), serde_json::to_vec(&status).expect("a scale status encodes"), 0));
            }
        }
        for entry in published.iter().filter(|e| !kept.contains(&e.key)) {
            ops.push(Op::delete(self.key(&entry.key)));
        }
        ops
    }

    /// Every [`SWEEP_PERIOD`]: removes the files of modules deleted
    /// through another node (files without a record, older than
    /// [`SWEEP_GRACE`]).
    fn sweep_modules(&self, store: &Arc<dyn crate::store::Store>) {
        {
            let mut state = self.state();
            if state.swept.is_some_and(|at| at.elapsed() < SWEEP_PERIOD) {
                return;
            }
            state.swept = Some(std::time::Instant::now());
        }
        let store = store.clone();
        tokio::task::spawn_blocking(move || match store.sweep_module_files(SWEEP_GRACE) {
            Ok(removed) => {
                for digest in removed {
                    tracing::info!(module = %digest, "removed the file of a module deleted in the cluster");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot sweep module files"),
        });
    }

    /// Compacts etcd's history to the last [`KEEP_REVISIONS`] revisions.
    /// A mirror whose watch is further behind lists again.
    async fn compact(&self) {
        let Ok(listing) = self.kv.list("leader") else { return };
        let Some(revision) = listing.revision.checked_sub(KEEP_REVISIONS).filter(|r| *r > 0) else { return };
        match self.client.compact(revision as i64).await {
            Ok(()) => tracing::debug!(revision, "compacted etcd's history"),
            Err(error) => tracing::debug!(%error, "cannot compact etcd's history"),
        }
    }

    /// The cluster's autoscaler decision for `service`, as the leader last
    /// published it.
    pub fn scale_status(&self, service: &str) -> Option<ScaleStatus> {
        let entry = self.kv.get(&format!("scale/{service}")).ok().flatten()?;
        serde_json::from_slice(&entry.value).ok()
    }

    /// Runs the node's membership and, while it leads, the scheduler,
    /// until `shutdown`; then leaves the cluster.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let renew_every = (self.config.lease_ttl / 3).max(Duration::from_millis(200));
        let mut renewal = tokio::time::interval(renew_every);
        renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Often, to take over soon after a leader's lease expires (a
        // campaign asks etcd only when the mirror shows no leader); the
        // leader schedules every [`LEADER_PERIOD`].
        let mut leading = tokio::time::interval(CAMPAIGN_PERIOD);
        leading.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pass = tokio::time::Instant::now() - LEADER_PERIOD;
        let mut last_compaction = tokio::time::Instant::now();
        let mut demand = tokio::time::interval(crate::autoscaler::TICK);
        demand.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = renewal.tick() => {
                    self.renew().await;
                    self.publish().await;
                }
                _ = demand.tick() => {
                    self.publish_demand().await;
                    self.prefetch_modules();
                }
                _ = leading.tick() => {
                    self.publish().await;
                    self.sync_routes();
                    // An activation is taken at once, not at the next pass.
                    let asked = self.kv.list("activate/").is_ok_and(|l| !l.entries.is_empty());
                    match self.campaign().await {
                        Ok(Some(fence)) if asked || last_pass.elapsed() >= LEADER_PERIOD => {
                            last_pass = tokio::time::Instant::now();
                            if let Err(error) = self.lead(fence).await {
                                tracing::warn!(%error, "the leader's pass failed");
                            }
                            if last_compaction.elapsed() >= COMPACTION_PERIOD {
                                last_compaction = tokio::time::Instant::now();
                                self.compact().await;
                            }
                        }
                        Ok(_) => {}
                        Err(error) => tracing::debug!(%error, "cannot campaign for the leadership"),
                    }
                    // Wake the reconciler when the placement changed.
                    let placed: Vec<(String, u64)> = self
                        .kv
                        .list("placement/")
                        .map(|l| l.entries.into_iter().map(|e| (e.key, e.mod_revision)).collect())
                        .unwrap_or_default();
                    if std::mem::replace(&mut self.state().placed, placed.clone()) != placed {
                        self.changed.notify_one();
                    }
                }
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        self.leave().await;
    }
}

impl crate::reconciler::Share for Cluster {
    fn replicas_here(&self, service: &str) -> Option<u32> {
        Cluster::replicas_here(self, service)
    }

    fn fetch_module<'a>(
        &'a self,
        digest: &'a str,
        store: Arc<dyn crate::store::Store>,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(Cluster::fetch_module(self, digest, store))
    }

    fn report(&self, replicas: Vec<ReplicaInfo>) {
        Cluster::report(self, replicas);
    }

    fn activate(&self, service: &str) {
        Cluster::activate(self, service);
    }
}
