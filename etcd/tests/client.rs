//! The client against real etcd servers (each test starts its own cluster, and returns early,
//! after printing "SKIPPED", when etcd is not installed).

use std::time::{Duration, Instant};

use shoal_etcd::testing::EtcdCluster;
use shoal_etcd::{
    Client, Compare, CompareResult, EtcdError, Event, EventKind, Op, OpResponse, Txn, WatchMessage, prefix_end,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

fn client(cluster: &EtcdCluster) -> Client {
    Client::new(&cluster.endpoints()).unwrap()
}

/// The next watch message, failing the test if none comes within 10 s.
async fn next(watch: &mut shoal_etcd::Watch) -> Option<Result<WatchMessage, EtcdError>> {
    timeout(Duration::from_secs(10), watch.next()).await.expect("no watch message within 10 s")
}

/// Watch events until there are `n` of them.
async fn events(watch: &mut shoal_etcd::Watch, n: usize) -> Vec<Event> {
    let mut all = Vec::new();
    while all.len() < n {
        match next(watch).await {
            Some(Ok(WatchMessage::Events { revision, events })) => {
                assert!(!events.is_empty());
                for e in &events {
                    assert!(e.kv.mod_revision <= revision, "event at {} in a message at {revision}", e.kv.mod_revision);
                }
                all.extend(events);
            }
            other => panic!("expected events, got {other:?}"),
        }
    }
    assert_eq!(all.len(), n, "more events than expected: {all:?}");
    all
}

/// A loopback port with nothing listening on it.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// The number of watchers a member has, from its Prometheus metrics.
async fn watchers(endpoint: &str) -> i64 {
    let address = endpoint.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n").await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("etcd_debugging_mvcc_watcher_total "))
        .unwrap_or_else(|| panic!("no watcher gauge in the metrics:\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() as i64
}

#[tokio::test]
async fn put_and_range_keys_and_prefixes() {
    let Some(cluster) = EtcdCluster::start(1) else { return };
    let c = client(&cluster);

    let first = c.put(b"p/a", b"1", 0).await.unwrap();
    let second = c.put(b"p/a", b"2", 0).await.unwrap();
    assert!(second > first, "{second} > {first}");
    c.put(b"p/b", b"3", 0).await.unwrap();
    c.put(b"p/c/d", b"4", 0).await.unwrap();
    let last = c.put(b"q", b"5", 0).await.unwrap();
    // A key that is not UTF-8, ending with 0xff: the prefix end must still be right.
    c.put(b"p\xff", b"\x00\xff", 0).await.unwrap();

    let r = c.range(b"p/a", None, 0).await.unwrap();
    assert_eq!(r.count, 1);
    assert_eq!(r.revision, last + 1);
    let kv = &r.kvs[0];
    assert_eq!((kv.key.as_slice(), kv.value.as_slice()), (b"p/a".as_slice(), b"2".as_slice()));
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version, kv.lease), (first, second, 2, 0));

    // As of an older revision.
    let old = c.range(b"p/a", None, first).await.unwrap();
    assert_eq!(old.kvs[0].value, b"1");
    assert_eq!(old.kvs[0].version, 1);

    let all = c.range(b"p/", Some(&prefix_end(b"p/")), 0).await.unwrap();
    let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [b"p/a".as_slice(), b"p/b", b"p/c/d"]);
    assert_eq!(all.count, 3);

    let binary = c.range(b"p\xff", Some(&prefix_end(b"p\xff")), 0).await.unwrap();
    assert_eq!(binary.kvs.len(), 1);
    assert_eq!(binary.kvs[0].value, b"\x00\xff");

    let missing = c.range(b"nothing", None, 0).await.unwrap();
    assert_eq!((missing.count, missing.kvs.len()), (0, 0));
    assert_eq!(missing.revision, last + 1);

    let future = c.range(b"p/a", None, last + 100).await.unwrap_err();
    match &future {
        EtcdError::Server { code: 11, message } => assert!(message.contains("future revision"), "{message}"),
        other => panic!("expected a future-revision error, got {other:?}"),
    }

    let status = c.status().await.unwrap();
    assert!(status.version.starts_with("3."), "{status:?}");
    assert!(status.member_id != 0 && status.leader == status.member_id, "{status:?}");
    assert!(status.raft_term >= 1, "{status:?}");
    assert_eq!(status.revision, last + 1);

    // A dead endpoint first: the client fails over to the live one, and keeps using it.
    let failover = Client::new(&format!("{},{}", dead_endpoint(), cluster.endpoint(0))).unwrap();
    assert_eq!(failover.range(b"q", None, 0).await.unwrap().kvs[0].value, b"5");
    let started = Instant::now();
    assert_eq!(failover.range(b"q", None, 0).await.unwrap().kvs[0].value, b"5");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn delete_keys_and_ranges() {
    let Some(cluster) = EtcdCluster::start(1) else { return };
    let c = client(&cluster);
    for key in ["d/1", "d/2", "d/3", "e"] {
        c.put(key.as_bytes(), b"x", 0).await.unwrap();
    }
    let (revision, deleted) = c.delete(b"d/1", None).await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(c.range(b"d/1", None, 0).await.unwrap().count, 0);
    assert_eq!(c.range(b"d/1", None, 0).await.unwrap().revision, revision);

    let (after, deleted) = c.delete(b"d/", Some(&prefix_end(b"d/"))).await.unwrap();
    assert_eq!((after, deleted), (revision + 1, 2));
    assert_eq!(c.range(b"d/", Some(&prefix_end(b"d/")), 0).await.unwrap().count, 0);
    assert_eq!(c.range(b"e", None, 0).await.unwrap().count, 1, "a key outside the range survives");

    // Deleting nothing changes nothing.
    assert_eq!(c.delete(b"d/1", None).await.unwrap(), (after, 0));
}

#[tokio::test]
async fn txn_on_mod_revision_runs_one_branch() {
    let Some(cluster) = EtcdCluster::start(1) else { return };
    let c = client(&cluster);
    let read_at = c.put(b"t/k", b"v1", 0).await.unwrap();

    let update = Txn::new()
        .when([Compare::mod_revision("t/k", CompareResult::Equal, read_at)])
        .and_then([Op::put("t/k", "v2", 0), Op::get("t/k")])
        .or_else([Op::get("t/k")]);
    let r = c.txn(&update).await.unwrap();
    assert!(r.succeeded, "{r:?}");
    assert_eq!(r.revision, read_at + 1);
    assert_eq!(r.responses.len(), 2, "{r:?}");
    assert_eq!(r.responses[0], OpResponse::Put { revision: r.revision });
    match &r.responses[1] {
        OpResponse::Range(range) => {
            assert_eq!(range.kvs[0].value, b"v2");
            assert_eq!(range.kvs[0].mod_revision, r.revision);
        }
        other => panic!("expected a range, got {other:?}"),
    }

    // The same transaction again: the key changed since `read_at`, so the failure branch runs
    // and returns the current value.
    let again = c.txn(&update).await.unwrap();
    assert!(!again.succeeded, "{again:?}");
    assert_eq!(again.revision, r.revision, "nothing was written");
    match &again.responses[..] {
        [OpResponse::Range(range)] => {
            assert_eq!(range.count, 1);
            assert_eq!(range.kvs[0].value, b"v2");
            assert_eq!(range.kvs[0].mod_revision, r.revision);
        }
        other => panic!("expected one range, got {other:?}"),
    }

    // Other compares, and a delete that reports what it deleted.
    let delete = Txn::new()
        .when([
            Compare::version("t/k", CompareResult::Equal, 2),
            Compare::value("t/k", CompareResult::Equal, b"v2".to_vec()),
            Compare::create_revision("t/k", CompareResult::Less, read_at + 1),
            Compare::mod_revision("t/k", CompareResult::Greater, read_at),
            Compare::lease("t/k", CompareResult::Equal, 0),
            Compare::value("t/k", CompareResult::NotEqual, b"v1".to_vec()),
        ])
        .and_then([Op::delete_prefix("t/")]);
    let r = c.txn(&delete).await.unwrap();
    assert!(r.succeeded, "{r:?}");
    match &r.responses[..] {
        [OpResponse::Delete { deleted: 1, prev_kvs }] => {
            assert_eq!(
                (prev_kvs[0].key.as_slice(), prev_kvs[0].value.as_slice()),
                (b"t/k".as_slice(), b"v2".as_slice())
            )
        }
        other => panic!("expected one delete, got {other:?}"),
    }
    assert_eq!(c.range(b"t/k", None, 0).await.unwrap().count, 0);
}

#[tokio::test]
async fn txn_with_create_revision_zero_creates_only_once() {
    let Some(cluster) = EtcdCluster::start(1) else { return };
    let c = client(&cluster);
    let create = |value: &str| {
        Txn::new()
            .when([Compare::create_revision("c/k", CompareResult::Equal, 0)])
            .and_then([Op::put("c/k", value, 0)])
            .or_else([Op::get("c/k")])
    };
    let first = c.txn(&create("first")).await.unwrap();
    assert!(first.succeeded, "the key is absent: {first:?}");
    let second = c.txn(&create("second")).await.unwrap();
    assert!(!second.succeeded, "the key exists: {second:?}");
    match &second.responses[..] {
        [OpResponse::Range(range)] => {
            assert_eq!(range.kvs[0].value, b"first");
            assert_eq!(range.kvs[0].create_revision, first.revision);
        }
        other => panic!("expected one range, got {other:?}"),
    }
    assert_eq!(c.range(b"c/k", None, 0).await.unwrap().kvs[0].value, b"first");
}

#[tokio::test]
async fn leases_keep_keys_alive_until_they_expire() {
    let Some(cluster) = EtcdCluster::start(1) else { return };
    let c = client(&cluster);

    let lease = c.lease_grant(1).await.unwrap();
    assert!(lease.id != 0 && lease.ttl >= 1, "{lease:?}");
    c.put(b"l/k", b"v", lease.id).await.unwrap();
    assert_eq!(c.range(b"l/k", None, 0).await.unwrap().kvs[0].lease, lease.id);
    let ttl = c.lease_keep_alive(lease.id).await.unwrap();
    assert!(ttl.is_some_and(|t| t >= 1), "{ttl:?}");

    // Without keep-alives, the lease expires and its key goes.
    let started = Instant::now();
    while c.range(b"l/k", None, 0).await.unwrap().count != 0 {
        assert!(started.elapsed() < Duration::from_secs(15), "the leased key is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.lease_keep_alive(lease.id).await.unwrap(), None, "an expired lease is gone");
    c.lease_revoke(lease.id).await.unwrap();
    c.lease_revoke(0x1234_5678).await.unwrap();

    // Revoking deletes a lease's keys at once.
    let long = c.lease_grant(60).await.unwrap();
    assert!(long.ttl >= 59, "{long:?}");
    c.put(b"l/other", b"v", long.id).await.unwrap();
    c.lease_revoke(long.id).await.unwrap();
    assert_eq!(c.range(b"l/other", None, 0).await.unwrap().count, 0);
    assert_eq!(c.lease_keep_alive(long.id).await.unwrap(), None);

    // A put with a lease that does not exist fails.
    match c.put(b"l/none", b"v", 0x1234_5678).await {
        Err(EtcdError::Server { code: 5, message }) => assert!(message.contains("lease not found"), "{message}"),
        other => panic!("expected lease not found, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_replays_history_then_follows_live() {
    let Some(cluster) = EtcdCluster::start(1) else { return };
    let c = client(&cluster);
    let a = c.put(b"w/a", b"1", 0).await.unwrap();
    let b = c.put(b"w/b", b"2", 0).await.unwrap();
    c.put(b"x/outside", b"-", 0).await.unwrap();
    let (deleted, _) = c.delete(b"w/a", None).await.unwrap();

    let mut watch = c.watch(b"w/", Some(&prefix_end(b"w/")), a);
    let history = events(&mut watch, 3).await;
    assert_eq!(history[0].kind, EventKind::Put);
    assert_eq!(history[0].kv.key, b"w/a");
    assert_eq!(history[0].kv.value, b"1");
    assert_eq!((history[0].kv.create_revision, history[0].kv.mod_revision, history[0].kv.version), (a, a, 1));
    assert_eq!(history[1].kind, EventKind::Put);
    assert_eq!((history[1].kv.key.as_slice(), history[1].kv.mod_revision), (b"w/b".as_slice(), b));
    assert_eq!(history[2].kind, EventKind::Delete);
    assert_eq!((history[2].kv.key.as_slice(), history[2].kv.mod_revision), (b"w/a".as_slice(), deleted));

    let live = c.put(b"w/c", b"3", 0).await.unwrap();
    c.put(b"x/outside", b"+", 0).await.unwrap();
    let (gone, _) = c.delete(b"w/b", None).await.unwrap();
    let more = events(&mut watch, 2).await;
    assert_eq!(
        (more[0].kind, more[0].kv.key.as_slice(), more[0].kv.mod_revision),
        (EventKind::Put, b"w/c".as_slice(), live)
    );
    assert_eq!(
        (more[1].kind, more[1].kv.key.as_slice(), more[1].kv.mod_revision),
        (EventKind::Delete, b"w/b".as_slice(), gone)
    );

    // A single key, from now on.
    let mut single = c.watch(b"w/c", None, 0);
    // The watch is created asynchronously: keep writing until it sees a write.
    let mut seen = None;
    for i in 0..50 {
        let revision = c.put(b"w/c", format!("v{i}").as_bytes(), 0).await.unwrap();
        if let Ok(message) = timeout(Duration::from_millis(200), single.next()).await {
            match message {
                Some(Ok(WatchMessage::Events { events, .. })) => {
                    assert!(events.iter().all(|e| e.kv.key == b"w/c"));
                    assert!(events[0].kv.mod_revision <= revision);
                    seen = Some(events);
                    break;
                }
                other => panic!("expected events, got {other:?}"),
            }
        }
    }
    assert!(seen.is_some(), "the watch from now on saw nothing");

    // Dropping watches cancels them in etcd.
    let endpoint = cluster.endpoint(0);
    assert_eq!(watchers(&endpoint).await, 2);
    drop(watch);
    drop(single);
    let started = Instant::now();
    while watchers(&endpoint).await != 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "dropped watches still run in etcd");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn compacted_revisions_are_reported() {
    let Some(cluster) = EtcdCluster::start(1) else { return };
    let c = client(&cluster);
    let first = c.put(b"k", b"1", 0).await.unwrap();
    c.put(b"k", b"2", 0).await.unwrap();
    let third = c.put(b"k", b"3", 0).await.unwrap();
    c.put(b"k", b"4", 0).await.unwrap();
    c.compact(third).await.unwrap();

    // Watching from before the compaction: told so, and the watch ends.
    let mut watch = c.watch(b"k", None, first);
    assert_eq!(next(&mut watch).await, Some(Ok(WatchMessage::Compacted { compact_revision: third })));
    assert_eq!(next(&mut watch).await, None);

    // Watching from the compaction on works.
    let mut watch = c.watch(b"k", None, third);
    let from = events(&mut watch, 2).await;
    assert_eq!((from[0].kv.value.as_slice(), from[1].kv.value.as_slice()), (b"3".as_slice(), b"4".as_slice()));

    assert_eq!(c.range(b"k", None, first).await.unwrap_err(), EtcdError::Compacted { compact_revision: 0 });
    assert_eq!(c.range(b"k", None, third).await.unwrap().kvs[0].value, b"3");
    assert!(matches!(c.compact(third).await, Err(EtcdError::Compacted { .. })), "compacting twice");
}

#[tokio::test]
async fn losing_quorum_makes_etcd_unavailable_until_it_is_back() {
    let Some(mut cluster) = EtcdCluster::start(3) else { return };
    let c = client(&cluster);
    c.put(b"quorum", b"1", 0).await.unwrap();

    // A watch on the member that stays.
    let mut watch = Client::new(&cluster.endpoint(0)).unwrap().watch(b"quorum", None, 0);
    let mut established = false;
    for _ in 0..50 {
        c.put(b"quorum", b"2", 0).await.unwrap();
        if let Ok(message) = timeout(Duration::from_millis(200), watch.next()).await {
            assert!(matches!(message, Some(Ok(WatchMessage::Events { .. }))), "{message:?}");
            established = true;
            break;
        }
    }
    assert!(established, "the watch saw nothing");

    cluster.stop(1);
    cluster.stop(2);
    let started = Instant::now();
    let error = c.put(b"quorum", b"3", 0).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, EtcdError::Unavailable { .. }), "{error:?}");
    assert!(took < Duration::from_secs(15), "the put took {took:?}");
    let message = error.to_string();
    assert!(message.starts_with(&format!("etcd is unavailable at {}: ", cluster.endpoints())), "{message}");

    // The member left without a leader ends its watches (thanks to `hasleader`).
    let started = Instant::now();
    loop {
        match timeout(Duration::from_secs(30), watch.next()).await.expect("the watch did not end within 30 s") {
            Some(Ok(WatchMessage::Events { .. })) => continue,
            Some(Err(EtcdError::Unavailable { detail, .. })) => {
                assert!(detail.contains("no leader"), "{detail}");
                break;
            }
            other => panic!("expected the watch to fail as unavailable, got {other:?}"),
        }
    }
    assert_eq!(timeout(Duration::from_secs(5), watch.next()).await.unwrap(), None);
    assert!(started.elapsed() < Duration::from_secs(30));

    cluster.restart(1);
    cluster.restart(2);
    let started = Instant::now();
    loop {
        match c.put(b"quorum", b"4", 0).await {
            Ok(_) => break,
            Err(EtcdError::Unavailable { .. }) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    }
    assert_eq!(c.range(b"quorum", None, 0).await.unwrap().kvs[0].value, b"4");
    // Every member serves again.
    for member in 0..3 {
        let one = Client::new(&cluster.endpoint(member)).unwrap();
        let started = Instant::now();
        while let Err(e) = one.range(b"quorum", None, 0).await {
            assert!(started.elapsed() < Duration::from_secs(20), "member {member}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn unreachable_endpoints_are_unavailable() {
    // Nothing listening: connections are refused.
    let endpoints = format!("{},{}", dead_endpoint(), dead_endpoint());
    let c = Client::new(&endpoints).unwrap();
    let error = c.put(b"k", b"v", 0).await.unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with(&format!("etcd is unavailable at {endpoints}: ")), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");

    let mut watch = c.watch(b"k", None, 0);
    let first = timeout(Duration::from_secs(10), watch.next()).await.unwrap();
    assert!(matches!(first, Some(Err(EtcdError::Unavailable { .. }))), "{first:?}");
    assert_eq!(timeout(Duration::from_secs(10), watch.next()).await.unwrap(), None);

    // Listening but never answering: every endpoint times out, and the call is bounded by about
    // twice the timeout.
    let silent: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let endpoints = silent.iter().map(|l| format!("http://{}", l.local_addr().unwrap())).collect::<Vec<_>>().join(",");
    let c = Client::new(&endpoints).unwrap().with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = c.range(b"k", None, 0).await.unwrap_err();
    let took = started.elapsed();
    match &error {
        EtcdError::Unavailable { endpoints: named, detail } => {
            assert_eq!(named, &endpoints);
            assert!(detail.contains("no response within"), "{detail}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(550) && took < Duration::from_secs(5), "took {took:?}");

    let mut watch = c.watch(b"k", None, 0);
    let first = timeout(Duration::from_secs(10), watch.next()).await.unwrap();
    assert!(matches!(first, Some(Err(EtcdError::Unavailable { .. }))), "{first:?}");
    assert_eq!(timeout(Duration::from_secs(10), watch.next()).await.unwrap(), None);
}

#[test]
fn bad_endpoints_are_invalid() {
    for (spec, bad) in [
        ("", ""),
        ("http://127.0.0.1:2379,https://127.0.0.1:2380", "https://127.0.0.1:2380"),
        ("http://127.0.0.1:2379,127.0.0.1:2380", "127.0.0.1:2380"),
        ("http://127.0.0.1", "http://127.0.0.1"),
        ("ftp://127.0.0.1:21", "ftp://127.0.0.1:21"),
    ] {
        match Client::new(spec) {
            Err(EtcdError::InvalidEndpoint(message)) => {
                assert!(message.contains(bad), "{spec:?}: {message}");
                let display = EtcdError::InvalidEndpoint(message.clone()).to_string();
                assert!(display.contains("etcd endpoint"), "{display}");
            }
            other => panic!("{spec:?}: expected InvalidEndpoint, got {other:?}"),
        }
    }
    match Client::new("https://etcd:2379") {
        Err(EtcdError::InvalidEndpoint(message)) => assert!(message.contains("TLS"), "{message}"),
        other => panic!("expected InvalidEndpoint, got {other:?}"),
    }
}

/// A fake gateway that answers one watch with a stream cut at awkward places: a JSON object split
/// across chunks, two objects in one chunk, and a final error line without a newline.
#[tokio::test]
async fn watch_reassembles_lines_split_across_chunks() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // The request's head and its (small) body.
        while !String::from_utf8_lossy(&request).contains("create_request") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before sending its request");
            request.extend_from_slice(&buf[..n]);
        }
        let created = r#"{"result":{"header":{"revision":"5"},"created":true}}"#;
        let put = r#"{"result":{"header":{"revision":"6"},"events":[{"kv":{"key":"YQ==","create_revision":"6","mod_revision":"6","version":"1","value":"MQ=="}}]}}"#;
        let delete = r#"{"result":{"header":{"revision":"7"},"events":[{"type":"DELETE","kv":{"key":"YQ==","mod_revision":"7"}}]}}"#;
        let error = r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        let (put_head, put_tail) = put.split_at(40);
        let chunks = [format!("{created}\n{put_head}"), format!("{put_tail}\n"), format!("{delete}\n{error}")];
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for chunk in chunks {
            socket.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes()).await.unwrap();
            socket.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        socket.write_all(b"0\r\n\r\n").await.unwrap();
        String::from_utf8(request).unwrap()
    });

    let c = Client::new(&endpoint).unwrap();
    let mut watch = c.watch(b"a", Some(b"b"), 6);
    match next(&mut watch).await {
        Some(Ok(WatchMessage::Events { revision: 6, events })) => {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].kind, EventKind::Put);
            assert_eq!(
                (events[0].kv.key.as_slice(), events[0].kv.value.as_slice()),
                (b"a".as_slice(), b"1".as_slice())
            );
        }
        other => panic!("expected the put, got {other:?}"),
    }
    match next(&mut watch).await {
        Some(Ok(WatchMessage::Events { revision: 7, events })) => {
            assert_eq!((events[0].kind, events[0].kv.mod_revision), (EventKind::Delete, 7));
        }
        other => panic!("expected the delete, got {other:?}"),
    }
    match next(&mut watch).await {
        Some(Err(EtcdError::Unavailable { endpoints, detail })) => {
            assert_eq!(endpoints, endpoint);
            assert!(detail.contains("no leader"), "{detail}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert_eq!(next(&mut watch).await, None);

    let request = server.await.unwrap().to_lowercase();
    assert!(request.starts_with("post /v3/watch http/1.1\r\n"), "{request}");
    assert!(request.contains("\r\ngrpc-metadata-hasleader: true\r\n"), "{request}");
    assert!(request.contains(r#""start_revision":"6""#) && request.contains(r#""range_end":"yg==""#), "{request}");
}
