//! The `Kv` contract (revisions, preconditions, lists, watches, compaction),
//! one set of checks run against every backend: `LocalKv` in memory and in a
//! redb file, and `EtcdKv` on a real etcd server (skipped, saying so, where
//! etcd is not installed; required in CI).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use shoal_control::store::{Entry, EtcdKv, Event, Expect, Kv, LocalKv, StoreError, Watch, WatchItem};
use shoal_etcd::testing::EtcdCluster;

/// The items of `watch` until `count` have come (or 10 s passed).
fn take(watch: &Watch, count: usize) -> Vec<WatchItem> {
    let mut items = Vec::new();
    while items.len() < count {
        match watch.recv_timeout(Duration::from_secs(10)) {
            Ok(item) => items.push(item),
            Err(ended) => panic!("watch {} after {items:?}", if ended { "ended" } else { "timed out" }),
        }
    }
    items
}

/// Asserts that nothing more comes on `watch` for a little while.
fn quiet(watch: &Watch) {
    if let Ok(item) = watch.recv_timeout(Duration::from_millis(300)) {
        panic!("unexpected {item:?}");
    }
}

fn put_event(item: &WatchItem) -> &Entry {
    match item {
        WatchItem::Event(Event::Put(entry)) => entry,
        other => panic!("expected a put, got {other:?}"),
    }
}

fn conflict(result: Result<impl std::fmt::Debug, StoreError>) -> (String, Expect, Option<u64>) {
    match result {
        Err(StoreError::Conflict { key, expected, current }) => (key, expected, current),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

// ---- the contract ----

fn revisions_count_writes(kv: &dyn Kv) {
    assert_eq!(kv.get("services/kubia").unwrap(), None);
    let first = kv.put("services/kubia", b"one", Expect::Any).unwrap();
    let entry = kv.get("services/kubia").unwrap().unwrap();
    assert_eq!(
        entry,
        Entry { key: "services/kubia".into(), value: b"one".to_vec(), create_revision: first, mod_revision: first }
    );
    let second = kv.put("services/kubia", b"two", Expect::Any).unwrap();
    assert!(second > first, "{second} after {first}");
    let entry = kv.get("services/kubia").unwrap().unwrap();
    assert_eq!((entry.value.as_slice(), entry.create_revision, entry.mod_revision), (&b"two"[..], first, second));
    // Another key's write moves the store's revision on too.
    let other = kv.put("services/other", b"x", Expect::Any).unwrap();
    assert!(other > second);
    let deleted = kv.delete("services/kubia", Expect::Any).unwrap().unwrap();
    assert!(deleted > other);
    assert_eq!(kv.get("services/kubia").unwrap(), None);
    assert_eq!(kv.delete("services/kubia", Expect::Any).unwrap(), None, "nothing to delete");
    // Created again, it starts a new life.
    let again = kv.put("services/kubia", b"three", Expect::Absent).unwrap();
    assert_eq!(kv.get("services/kubia").unwrap().unwrap().create_revision, again);
}

fn preconditions_decide(kv: &dyn Kv) {
    let created = kv.put("services/kubia", b"v1", Expect::Absent).unwrap();
    assert_eq!(
        conflict(kv.put("services/kubia", b"again", Expect::Absent)),
        ("services/kubia".into(), Expect::Absent, Some(created))
    );
    let updated = kv.put("services/kubia", b"v2", Expect::Revision(created)).unwrap();
    // A writer that read before that update loses, and changes nothing.
    let error = kv.put("services/kubia", b"stale", Expect::Revision(created)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "services/kubia was changed by another write (resourceVersion {updated}, not {created}); read it again and retry"
        )
    );
    assert_eq!(kv.get("services/kubia").unwrap().unwrap().value, b"v2");
    assert_eq!(
        conflict(kv.put("services/missing", b"x", Expect::Revision(created))),
        ("services/missing".into(), Expect::Revision(created), None)
    );
    assert_eq!(kv.get("services/missing").unwrap(), None);
    conflict(kv.delete("services/kubia", Expect::Revision(created)));
    conflict(kv.delete("services/missing", Expect::Revision(created)));
    assert!(kv.get("services/kubia").unwrap().is_some());
    assert!(kv.delete("services/kubia", Expect::Revision(updated)).unwrap().is_some());
    assert_eq!(kv.get("services/kubia").unwrap(), None);
}

fn one_of_two_racing_writers_wins(kv: &dyn Kv) {
    let base = kv.put("services/kubia", b"base", Expect::Any).unwrap();
    for round in 0..5 {
        let current = kv.get("services/kubia").unwrap().unwrap().mod_revision;
        let barrier = Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..2)
                .map(|writer| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        kv.put(
                            "services/kubia",
                            format!("round {round} writer {writer}").as_bytes(),
                            Expect::Revision(current),
                        )
                    })
                })
                .collect();
            writers.into_iter().map(|writer| writer.join().unwrap()).collect()
        });
        let won: Vec<_> = results.iter().filter(|result| result.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        assert!(results.iter().any(|result| matches!(result, Err(StoreError::Conflict { .. }))), "{results:?}");
    }
    assert!(kv.get("services/kubia").unwrap().unwrap().mod_revision > base);
}

fn lists_are_sorted_prefixes_at_a_revision(kv: &dyn Kv) {
    for key in ["services/zeta", "services/alpha", "modules/abc", "services/kubia", "servicesx"] {
        kv.put(key, key.as_bytes(), Expect::Any).unwrap();
    }
    let last = kv.put("services/alpha", b"changed", Expect::Any).unwrap();
    let listing = kv.list("services/").unwrap();
    let keys: Vec<_> = listing.entries.iter().map(|entry| entry.key.as_str()).collect();
    assert_eq!(keys, ["services/alpha", "services/kubia", "services/zeta"]);
    assert_eq!(listing.revision, last);
    assert_eq!(listing.entries[0].value, b"changed");
    assert_eq!(kv.list("nothing/").unwrap().entries, vec![]);
    // A watch from the revision after a list sees what came after, only.
    let watch = kv.watch("services/", listing.revision + 1).unwrap();
    quiet(&watch);
    let next = kv.put("services/new", b"n", Expect::Any).unwrap();
    let items = take(&watch, 1);
    assert_eq!(put_event(&items[0]).mod_revision, next);
}

fn watches_replay_then_follow(kv: &dyn Kv) {
    let start = kv.put("services/a", b"1", Expect::Any).unwrap();
    kv.put("modules/m", b"not watched", Expect::Any).unwrap();
    kv.put("services/b", b"2", Expect::Any).unwrap();
    let deleted = kv.delete("services/a", Expect::Any).unwrap().unwrap();
    let watch = kv.watch("services/", start).unwrap();
    let items = take(&watch, 3);
    assert_eq!(put_event(&items[0]).key, "services/a");
    assert_eq!(put_event(&items[0]).mod_revision, start);
    assert_eq!(put_event(&items[1]).value, b"2");
    assert_eq!(items[2], WatchItem::Event(Event::Delete { key: "services/a".into(), revision: deleted }));
    quiet(&watch);
    // Then live, in order.
    let mut written = Vec::new();
    for n in 0..20 {
        written.push(kv.put(&format!("services/live-{n:02}"), b"x", Expect::Any).unwrap());
    }
    let seen: Vec<_> = take(&watch, 20).iter().map(|item| put_event(item).mod_revision).collect();
    assert_eq!(seen, written);
    // Two watches see the same changes; dropping one does not stop writes.
    let other = kv.watch("services/live-", 1.max(start)).unwrap();
    drop(other);
    kv.put("services/after-drop", b"x", Expect::Any).unwrap();
    assert_eq!(put_event(&take(&watch, 1)[0]).key, "services/after-drop");
}

fn compaction_is_reported(kv: &dyn Kv) {
    let old = kv.put("services/a", b"1", Expect::Any).unwrap();
    kv.put("services/a", b"2", Expect::Any).unwrap();
    let now = kv.put("services/a", b"3", Expect::Any).unwrap();
    kv.compact(now).unwrap();
    let watch = kv.watch("services/", old).unwrap();
    match take(&watch, 1).remove(0) {
        WatchItem::Compacted { compacted } => assert!(compacted > old && compacted <= now + 1, "{compacted}"),
        other => panic!("expected a compaction, got {other:?}"),
    }
    assert!(matches!(watch.recv_timeout(Duration::from_secs(5)), Err(true)), "a compacted watch ends");
    // From the compaction on, a watch works.
    let watch = kv.watch("services/", now).unwrap();
    assert_eq!(put_event(&take(&watch, 1)[0]).value, b"3");
    // The entries themselves are untouched.
    assert_eq!(kv.get("services/a").unwrap().unwrap().value, b"3");
}

/// One check of the contract, run against any `Kv`.
type Check = fn(&dyn Kv);

/// Every contract check, by name.
const CONTRACT: &[(&str, Check)] = &[
    ("revisions_count_writes", revisions_count_writes),
    ("preconditions_decide", preconditions_decide),
    ("one_of_two_racing_writers_wins", one_of_two_racing_writers_wins),
    ("lists_are_sorted_prefixes_at_a_revision", lists_are_sorted_prefixes_at_a_revision),
    ("watches_replay_then_follow", watches_replay_then_follow),
    ("compaction_is_reported", compaction_is_reported),
];

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-kv-{}-{test}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_contract_in_memory() {
    for (name, check) in CONTRACT {
        eprintln!("memory: {name}");
        check(&LocalKv::memory());
    }
}

#[test]
fn the_contract_in_a_redb_file() {
    for (name, check) in CONTRACT {
        eprintln!("redb: {name}");
        let dir = TempDir::new(name);
        check(&LocalKv::open(&dir.0.join("store.redb")).unwrap());
    }
}

#[test]
fn the_contract_on_etcd() {
    let Some(cluster) = EtcdCluster::start(1) else { return };
    for (name, check) in CONTRACT {
        eprintln!("etcd: {name}");
        // Each check in a prefix of its own, as if in its own etcd, with a
        // client of its own: an `EtcdKv` runs its requests on a runtime of
        // its own, and a pooled connection made on the previous check's
        // runtime died with it ("dispatch task is gone"), which a shared
        // client could pick up. (A `shoal up` has one `EtcdKv` for its life.)
        let client = shoal_etcd::Client::new(&cluster.endpoints()).unwrap();
        let kv = EtcdKv::connect(client, &format!("/test/{name}/")).unwrap();
        check(&kv);
    }
}

#[test]
fn a_redb_file_keeps_revisions_and_history_across_a_reopen() {
    let dir = TempDir::new("reopen");
    let path = dir.0.join("store.redb");
    let (first, last) = {
        let kv = LocalKv::open(&path).unwrap();
        let first = kv.put("services/a", b"1", Expect::Any).unwrap();
        kv.put("services/b", b"2", Expect::Any).unwrap();
        (first, kv.delete("services/a", Expect::Any).unwrap().unwrap())
    };
    let kv = LocalKv::open(&path).unwrap();
    assert_eq!(kv.list("").unwrap().revision, last);
    let next = kv.put("services/c", b"3", Expect::Any).unwrap();
    assert_eq!(next, last + 1, "revisions go on from where they were");
    let watch = kv.watch("services/", first).unwrap();
    let items = take(&watch, 4);
    let revisions: Vec<_> = items
        .iter()
        .map(|item| match item {
            WatchItem::Event(event) => event.revision(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(revisions, [first, first + 1, last, next]);
}

#[test]
fn local_history_is_bounded_and_older_watches_are_compacted() {
    let kv = LocalKv::memory();
    let total = shoal_control::store::HISTORY + 50;
    for n in 0..total {
        kv.put("services/busy", n.to_string().as_bytes(), Expect::Any).unwrap();
    }
    let watch = kv.watch("services/", 1).unwrap();
    assert_eq!(take(&watch, 1), [WatchItem::Compacted { compacted: 51 }]);
    let watch = kv.watch("services/", 51).unwrap();
    let items = take(&watch, shoal_control::store::HISTORY);
    assert_eq!(put_event(&items[0]).mod_revision, 51);
    let keys: BTreeSet<_> = items.iter().map(|item| put_event(item).key.clone()).collect();
    assert_eq!(keys.len(), 1);
}

#[test]
fn etcd_unavailable_fails_writes_clearly_and_reads_go_on() {
    let Some(mut cluster) = EtcdCluster::start(3) else { return };
    let client = shoal_etcd::Client::new(&cluster.endpoints()).unwrap().with_timeout(Duration::from_secs(2));
    let kv = Arc::new(EtcdKv::connect(client, "/shoal/").unwrap());
    let written = kv.put("services/kubia", b"before", Expect::Any).unwrap();
    cluster.stop(1);
    cluster.stop(2);
    let error = kv.put("services/kubia", b"during", Expect::Any).unwrap_err();
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("etcd"), "{error}");
    // What this node knew is still read.
    let entry = kv.get("services/kubia").unwrap().unwrap();
    assert_eq!((entry.value.as_slice(), entry.mod_revision), (&b"before"[..], written));
    assert_eq!(kv.list("services/").unwrap().entries.len(), 1);
    cluster.restart(1);
    cluster.restart(2);
    // Once a quorum is back, writes succeed again (the first may still meet
    // an election). The refused write was not confirmed, not undone: etcd
    // may still apply it once it has a quorum, as it does for any client.
    let mut result = kv.put("services/other", b"after", Expect::Any);
    for _ in 0..20 {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        result = kv.put("services/other", b"after", Expect::Any);
    }
    let after = result.unwrap();
    let entry = kv.get("services/kubia").unwrap().unwrap();
    assert!([&b"before"[..], b"during"].contains(&entry.value.as_slice()), "{entry:?}");
    assert!(entry.mod_revision < after);
    kv.put("services/kubia", b"last", Expect::Revision(entry.mod_revision)).unwrap();
}

#[test]
fn a_mirror_that_fell_behind_a_compaction_lists_again() {
    let Some(mut cluster) = EtcdCluster::start(3) else { return };
    // The mirror talks to member 0 only; the writer to the others.
    let client = shoal_etcd::Client::new(&cluster.endpoint(0)).unwrap().with_timeout(Duration::from_secs(2));
    let mirror = EtcdKv::connect(client, "/shoal/").unwrap();
    let writer_endpoints = format!("{},{}", cluster.endpoint(1), cluster.endpoint(2));
    let writer = shoal_etcd::Client::new(&writer_endpoints).unwrap();
    let writer = EtcdKv::connect(writer, "/shoal/").unwrap();
    writer.put("services/kept", b"1", Expect::Any).unwrap();
    writer.put("services/gone", b"1", Expect::Any).unwrap();
    let seen = |kv: &EtcdKv, key: &str, value: Option<&[u8]>| {
        let started = std::time::Instant::now();
        loop {
            let now = kv.get(key).unwrap().map(|e| e.value);
            if now.as_deref() == value {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{key}: {now:?}, not {value:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    seen(&mirror, "services/gone", Some(b"1"));

    // While the mirror's member is down, keys change and etcd compacts
    // past every revision the mirror saw.
    cluster.stop(0);
    writer.put("services/kept", b"2", Expect::Any).unwrap();
    writer.delete("services/gone", Expect::Any).unwrap();
    let last = writer.put("services/new", b"3", Expect::Any).unwrap();
    writer.compact(last).unwrap();
    cluster.restart(0);

    // The mirror's watch cannot resume: it lists again, and ends right.
    seen(&mirror, "services/kept", Some(b"2"));
    seen(&mirror, "services/gone", None);
    seen(&mirror, "services/new", Some(b"3"));
    assert!(mirror.list("services/").unwrap().revision >= last);
}
