//! The cluster's leadership against a real etcd: one leader at a time, and
//! a deposed leader's fenced writes refused. Skipped, saying so, where etcd
//! is not installed (required in CI).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_control::cluster::{Cluster, ClusterConfig, FenceError};
use shoal_control::store::{EtcdKv, Kv};
use shoal_etcd::testing::EtcdCluster;
use shoal_etcd::{Client, Op};
use tokio::sync::Notify;

const PREFIX: &str = "/shoal/";

/// Node `name` of the cluster on `endpoints` (registered, not yet
/// campaigning), with its mirror.
async fn node(endpoints: &str, name: &str) -> (Arc<Cluster>, Arc<EtcdKv>) {
    let client = Client::new(endpoints).unwrap();
    let kv = Arc::new(EtcdKv::connect(client.clone(), PREFIX).unwrap());
    let config = ClusterConfig {
        prefix: PREFIX.to_owned(),
        node: name.to_owned(),
        advertise: format!("{name}.test:8081"),
        gateway: format!("{name}.test:8080"),
        admin: format!("{name}.test:8081"),
        lease_ttl: Duration::from_secs(3),
        capacity: 1 << 30,
        secret: "secret".to_owned(),
    };
    let cluster = Cluster::new(config, client, kv.clone(), Arc::new(Notify::new()));
    cluster.register().await.unwrap();
    (cluster, kv)
}

/// Campaigns until `cluster` leads (its mirror must first see the
/// leadership vacant), for at most 10 s.
async fn lead(cluster: &Cluster) -> i64 {
    let started = Instant::now();
    loop {
        if let Some(fence) = cluster.campaign().await.unwrap() {
            return fence;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{} never led", cluster.node());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn put(key: &str, value: &str) -> Vec<Op> {
    vec![Op::put(format!("{PREFIX}{key}"), value.to_owned(), 0)]
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_at_a_time_and_a_deposed_leaders_fenced_write_fails() {
    let Some(etcd) = EtcdCluster::start(1) else { return };
    let (a, kv) = node(&etcd.endpoints(), "a").await;
    let (b, _) = node(&etcd.endpoints(), "b").await;

    let fence_a = lead(&a).await;
    a.fenced(fence_a, put("placement/kubia", r#"{"a":1}"#)).await.unwrap();
    // While a leads, b cannot.
    assert_eq!(b.campaign().await.unwrap(), None);
    assert_eq!(a.fence(), Some(fence_a));

    // a's lease ends (it died, or was cut off for a TTL): b takes over.
    a.leave().await;
    let fence_b = lead(&b).await;
    assert_ne!(fence_a, fence_b);

    // a write fenced on a's leadership is refused, and changes nothing.
    match a.fenced(fence_a, put("placement/kubia", r#"{"a":6}"#)).await {
        Err(FenceError::Deposed(fence)) => assert_eq!(fence, fence_a),
        other => panic!("a deposed leader's write was not refused: {other:?}"),
    }
    b.fenced(fence_b, put("placement/kubia", r#"{"b":1}"#)).await.unwrap();
    let started = Instant::now();
    loop {
        let value = kv.get("placement/kubia").unwrap().map(|e| e.value);
        if value.as_deref() == Some(br#"{"b":1}"#.as_slice()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{value:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        FenceError::Deposed(fence_a).to_string(),
        format!(
            "this node is no longer the leader (its leadership of revision {fence_a} ended); the write was refused"
        )
    );
}
