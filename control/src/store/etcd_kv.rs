//! [`EtcdKv`]: the [`Kv`] contract in etcd, for a cluster.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use shoal_etcd::{Client, Compare, CompareResult, EtcdError, EventKind, Op, OpResponse, Txn, WatchMessage};

use super::StoreError;
use super::kv::{Entry, Event, Expect, Kv, Listing, Watch, WatchItem, WatchSender, watch_channel};
use super::local::conflict;

/// How long a write waits for its own change to come back on the watch
/// that feeds the mirror, so that a read right after it sees it.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);
/// The pause before watching again after a watch failed.
const REWATCH_DELAY: Duration = Duration::from_millis(500);

/// The [`Kv`] contract in etcd, under a key prefix (`/shoal/` by default),
/// so that several clusters, or other programs, can share one etcd.
///
/// Writes go to etcd, each one transaction whose compare is the
/// precondition ([`Expect::Absent`]: the key's create revision is 0;
/// [`Expect::Revision`]: its mod revision is the one given), so that etcd
/// decides between racing writers.
///
/// Reads are served from a **mirror**: every entry under the prefix, kept
/// by one watch (listed at start, then followed from the list's revision;
/// listed again when etcd compacted past it). A node that loses etcd (no
/// quorum, or a partition) keeps answering reads from what it last knew,
/// and so keeps routing and running what it runs, while writes fail with
/// [`StoreError::Unavailable`]. A write waits until its own change is back
/// in the mirror (at most 5 s), so a read after a write sees it.
///
/// The methods block: each one runs on the store's own runtime (one
/// thread), so they may be called from any thread, async or not.
pub struct EtcdKv {
    client: Client,
    prefix: String,
    /// Taken on drop, to shut it down without waiting.
    runtime: Option<tokio::runtime::Runtime>,
    mirror: Arc<Mirror>,
}

impl Drop for EtcdKv {
    fn drop(&mut self) {
        // Stops the watches; does not block, so it may run on a runtime's thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Default)]
struct Mirror {
    state: Mutex<MirrorState>,
    changed: Condvar,
}

#[derive(Default)]
struct MirrorState {
    /// By key without the prefix.
    entries: BTreeMap<String, Entry>,
    /// The revision of the last change applied (or of the list).
    revision: u64,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKv").field("endpoints", &self.client.endpoints()).field("prefix", &self.prefix).finish()
    }
}

impl EtcdKv {
    /// Connects to etcd through `client`, under `prefix`, and loads the
    /// mirror. Fails with [`StoreError::Unavailable`] if etcd cannot be
    /// listed.
    pub fn connect(client: Client, prefix: &str) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shoal-etcd")
            .enable_all()
            .build()
            .map_err(|error| StoreError::Backend { detail: format!("starting the etcd client's thread: {error}") })?;
        let kv = EtcdKv { client, prefix: prefix.to_owned(), runtime: Some(runtime), mirror: Arc::default() };
        let listing = kv.fetch_list()?;
        kv.mirror.replace(listing);
        let (client, prefix, mirror) = (kv.client.clone(), kv.prefix.clone(), Arc::downgrade(&kv.mirror));
        kv.handle().spawn(follow(client, prefix, mirror));
        Ok(kv)
    }

    /// The etcd endpoints, comma-separated.
    pub fn endpoints(&self) -> String {
        self.client.endpoints().join(",")
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("the runtime lives until drop").handle()
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// Runs `future` on the store's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, EtcdError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle().spawn(async move {
            let _ = tx.send(future.await);
        });
        let result =
            rx.recv().map_err(|_| StoreError::Backend { detail: "the etcd client's thread stopped".to_owned() })?;
        result.map_err(|error| store_error(&self.endpoints(), error))
    }

    /// Lists every entry under the prefix from etcd itself.
    fn fetch_list(&self) -> Result<Listing, StoreError> {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        self.run(async move { list(&client, &prefix).await })
    }

    /// Waits (a bounded time) until the mirror has applied `revision`.
    fn wait_for(&self, revision: u64) {
        let state = self.mirror.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, timeout) = self
            .mirror
            .changed
            .wait_timeout_while(state, READ_YOUR_WRITES, |state| state.revision < revision)
            .unwrap_or_else(PoisonError::into_inner);
        drop(state);
        if timeout.timed_out() {
            tracing::warn!(revision, "etcd: a write did not come back on the watch within 5 s; reads may be stale");
        }
    }

    /// Writes `op` if `expect` holds of `key`: the response to `op`, or the
    /// conflict with the key's current entry.
    fn guarded(&self, key: &str, expect: Expect, op: Op) -> Result<(u64, OpResponse), StoreError> {
        let full = self.full_key(key);
        let compare = match expect {
            Expect::Any => vec![],
            Expect::Absent => vec![Compare::create_revision(full.clone(), CompareResult::Equal, 0)],
            Expect::Revision(revision) => {
                vec![Compare::mod_revision(full.clone(), CompareResult::Equal, revision as i64)]
            }
        };
        let txn = Txn { compare, success: vec![op], failure: vec![Op::Range { key: full, range_end: None }] };
        let client = self.client.clone();
        let response = self.run(async move { client.txn(&txn).await })?;
        let revision = response.revision as u64;
        let first = response.responses.into_iter().next();
        if !response.succeeded {
            let current = match first {
                Some(OpResponse::Range(range)) => range.kvs.into_iter().next().map(|kv| entry(key.to_owned(), kv)),
                _ => None,
            };
            return Err(conflict(key, expect, current.as_ref()));
        }
        let first = first
            .ok_or_else(|| StoreError::Backend { detail: "etcd: a transaction without its response".to_owned() })?;
        Ok((revision, first))
    }
}

impl Mirror {
    fn replace(&self, listing: Listing) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.entries = listing.entries.into_iter().map(|entry| (entry.key.clone(), entry)).collect();
        state.revision = listing.revision;
        self.changed.notify_all();
    }

    fn apply(&self, events: Vec<Event>, revision: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            match event {
                Event::Put(entry) => {
                    state.entries.insert(entry.key.clone(), entry);
                }
                Event::Delete { key, .. } => {
                    state.entries.remove(&key);
                }
            }
        }
        state.revision = state.revision.max(revision);
        self.changed.notify_all();
    }

    fn revision(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).revision
    }
}

/// Keeps `mirror` up to date until it is dropped: a watch from the
/// revision after the last one applied; a new list when etcd compacted past
/// it; a pause and a new watch when the watch fails.
async fn follow(client: Client, prefix: String, mirror: std::sync::Weak<Mirror>) {
    let range_end = shoal_etcd::prefix_end(prefix.as_bytes());
    loop {
        let Some(from) = mirror.upgrade().map(|mirror| mirror.revision() + 1) else { return };
        let mut watch = client.watch(prefix.as_bytes(), Some(&range_end), from as i64);
        while let Some(message) = watch.next().await {
            let Some(mirror) = mirror.upgrade() else { return };
            match message {
                Ok(WatchMessage::Events { revision, events }) => {
                    let events = events.into_iter().filter_map(|event| event_of(&prefix, event)).collect();
                    mirror.apply(events, revision.max(0) as u64);
                }
                Ok(WatchMessage::Compacted { compact_revision }) => {
                    tracing::warn!(compact_revision, "etcd compacted past the mirror's revision; listing again");
                    match list(&client, &prefix).await {
                        Ok(listing) => mirror.replace(listing),
                        Err(error) => tracing::warn!(%error, "etcd: cannot list the store again"),
                    }
                    break;
                }
                Err(error) => {
                    tracing::debug!(%error, "etcd: the store's watch failed");
                    break;
                }
            }
        }
        tokio::time::sleep(REWATCH_DELAY).await;
    }
}

async fn list(client: &Client, prefix: &str) -> Result<Listing, EtcdError> {
    let range_end = shoal_etcd::prefix_end(prefix.as_bytes());
    let response = client.range(prefix.as_bytes(), Some(&range_end), 0).await?;
    let entries = response
        .kvs
        .into_iter()
        .filter_map(|kv| Some(entry(String::from_utf8(kv.key.get(prefix.len()..)?.to_vec()).ok()?, kv)))
        .collect();
    Ok(Listing { entries, revision: response.revision as u64 })
}

fn entry(key: String, kv: shoal_etcd::KeyValue) -> Entry {
    Entry { key, value: kv.value, create_revision: kv.create_revision as u64, mod_revision: kv.mod_revision as u64 }
}

/// An etcd event as a [`Event`] under `prefix` (`None` for a key outside
/// it or not UTF-8).
fn event_of(prefix: &str, event: shoal_etcd::Event) -> Option<Event> {
    let key = String::from_utf8(event.kv.key.get(prefix.len()..)?.to_vec()).ok()?;
    Some(match event.kind {
        EventKind::Put => Event::Put(entry(key, event.kv)),
        EventKind::Delete => Event::Delete { key, revision: event.kv.mod_revision as u64 },
    })
}

fn store_error(endpoints: &str, error: EtcdError) -> StoreError {
    match error {
        EtcdError::Unavailable { .. } => StoreError::Unavailable { detail: error.to_string() },
        error => StoreError::Backend { detail: format!("etcd at {endpoints}: {error}") },
    }
}

impl Kv for EtcdKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.mirror.state.lock().unwrap_or_else(PoisonError::into_inner).entries.get(key).cloned())
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError> {
        let op = Op::Put { key: self.full_key(key), value: value.to_vec(), lease: 0 };
        let (revision, _) = self.guarded(key, expect, op)?;
        self.wait_for(revision);
        Ok(revision)
    }

    fn delete(&self, key: &str, expect: Expect) -> Result<Option<u64>, StoreError> {
        let op = Op::Delete { key: self.full_key(key), range_end: None };
        let (revision, response) = self.guarded(key, expect, op)?;
        match response {
            OpResponse::Delete { deleted, .. } if deleted > 0 => {
                self.wait_for(revision);
                Ok(Some(revision))
            }
            OpResponse::Delete { .. } if expect == Expect::Any => Ok(None),
            // A missing key with a precondition fails its compare above.
            _ => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let state = self.mirror.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(super::kv::listing(&state.entries, prefix, state.revision))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.mirror.revision())
    }

    fn watch(&self, prefix: &str, from: u64) -> Result<Watch, StoreError> {
        let (sender, watch) = watch_channel();
        let full = format!("{}{prefix}", self.prefix);
        let range_end = shoal_etcd::prefix_end(full.as_bytes());
        let (client, prefix) = (self.client.clone(), self.prefix.clone());
        self.handle().spawn(async move {
            let stream = client.watch(full.as_bytes(), Some(&range_end), from.max(1) as i64);
            forward(stream, prefix, sender).await;
        });
        Ok(watch)
    }

    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let client = self.client.clone();
        self.run(async move {
            match client.compact(revision as i64).await {
                // Compacting at or before the last compaction changes nothing.
                Err(EtcdError::Compacted { .. }) => Ok(()),
                other => other,
            }
        })
    }
}

/// Sends an etcd watch's changes to a [`Watch`] until either ends.
async fn forward(mut stream: shoal_etcd::Watch, prefix: String, sender: WatchSender) {
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = check.tick() => {
                if sender.is_closed() {
                    return;
                }
                continue;
            }
        };
        let Some(message) = message else { return };
        match message {
            Ok(WatchMessage::Events { events, .. }) => {
                for event in events.into_iter().filter_map(|event| event_of(&prefix, event)) {
                    if !sender.send(WatchItem::Event(event)) {
                        return;
                    }
                }
            }
            Ok(WatchMessage::Compacted { compact_revision }) => {
                sender.send(WatchItem::Compacted { compacted: compact_revision.max(0) as u64 });
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "etcd: a watch failed");
                return;
            }
        }
    }
}
