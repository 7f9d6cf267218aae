//! Other nodes of a cluster, as the gateway reaches their replicas.
//!
//! Every gateway knows every ready replica in the cluster. A replica on
//! another node is reached through that node's internal listener (the
//! address it advertises, its admin API's listener), never its public
//! port: the request goes as HTTP/1.1 with the cluster's secret and its
//! origin (client address, hops, what is left of its deadline) in
//! `x-shoal-*` headers, and the owner node hands it to one of its own ready
//! replicas of the service, never on to a third node
//! ([`crate::Gateway::serve_peer`]). When it has none left (the replica was
//! just stopped) it answers [`NOT_TAKEN_HEADER`], and the request goes to
//! another replica whatever its method, since it ran nowhere.
//!
//! A peer that cannot be reached (refused, reset, timed out) is ejected
//! for [`EJECTION`]: its replicas are skipped, and the request that failed
//! on it goes to another replica where that is safe. So the seconds between
//! a node's death and the end of its lease cost no failed GET.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::client::BoxError;

/// The service a request from a peer is for; its presence marks the
/// request as forwarded by another node's gateway.
pub const FORWARD_HEADER: &str = "x-shoal-forward";
/// The cluster's secret, without which a forwarded request is refused.
pub const SECRET_HEADER: &str = "x-shoal-cluster-secret";
/// The address of the client the first gateway served.
pub const CLIENT_HEADER: &str = "x-shoal-client";
/// Milliseconds left of the request's deadline.
pub const DEADLINE_HEADER: &str = "x-shoal-deadline-ms";
/// Set on the owner node's answer when no replica of its own took the
/// request: it ran nowhere.
pub const NOT_TAKEN_HEADER: &str = "x-shoal-not-taken";

/// How long a peer that could not be reached is skipped.
pub const EJECTION: Duration = Duration::from_secs(5);
/// How long connecting to a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A request body on its way to a peer.
pub(crate) type PeerBody = UnsyncBoxBody<Bytes, BoxError>;

/// Another node, where some ready replicas run.
#[derive(Debug)]
pub struct Peer {
    /// Its name (`--node-name`).
    pub node: String,
    /// Its internal listener (`--advertise`), `host:port`.
    pub address: String,
    ejected_until: Mutex<Option<Instant>>,
}

impl Peer {
    /// The node `node`, reached at `address`.
    pub fn new(node: impl Into<String>, address: impl Into<String>) -> Self {
        Self { node: node.into(), address: address.into(), ejected_until: Mutex::new(None) }
    }

    /// Whether its replicas are skipped now.
    pub fn is_ejected(&self) -> bool {
        let mut until = self.ejected_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Skips its replicas for [`EJECTION`].
    pub fn eject(&self) {
        let mut until = self.ejected_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if until.is_none() {
            tracing::warn!(node = %self.node, address = %self.address, ejection = ?EJECTION, "cannot reach node; skipping its replicas");
        }
        *until = Some(Instant::now() + EJECTION);
    }
}

/// How this gateway reaches its peers: one pooled client, and the secret.
pub(crate) struct Peers {
    pub client: Client<HttpConnector, PeerBody>,
    pub secret: String,
}

impl Peers {
    pub fn new(secret: &str) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(http);
        Self { client, secret: secret.to_owned() }
    }
}

/// A ready replica on another node, as the cluster publishes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteReplica {
    pub service: String,
    /// The replica's name.
    pub name: String,
    /// The node it runs on, and where that node is reached.
    pub node: String,
    pub address: String,
}
