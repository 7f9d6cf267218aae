//! [`Kv`]: the revisioned key-value contract under the [`Store`](super::Store).
//!
//! Desired state is a set of keys (`services/<name>`, `modules/<digest>`),
//! each holding bytes. The store as a whole has a **revision**, a counter
//! that every successful write increases by one; each entry remembers the
//! revision that created it and the one that last changed it. That is
//! etcd's model, so the same contract is kept by the embedded store
//! ([`LocalKv`](super::LocalKv), in memory or in a redb file) and by etcd
//! ([`EtcdKv`](super::EtcdKv)), and `control/tests/kv.rs` runs one set of
//! tests against each.
//!
//! * **Get** returns an entry with its `mod_revision` (a service's
//!   `resourceVersion`).
//! * **Put and delete take a precondition** ([`Expect`]): any state, absent,
//!   or present at exactly one revision. A write whose precondition does not
//!   hold changes nothing and is [`StoreError::Conflict`], so two writers who
//!   read the same revision cannot both win.
//! * **List** returns every entry under a prefix, sorted by key, read at one
//!   revision, and that revision: a watch from the next one misses nothing
//!   and repeats nothing.
//! * **Watch** delivers every change under a prefix from a revision on, in
//!   revision order, as [`WatchItem`]s. A start older than the history the
//!   store keeps is reported as [`WatchItem::Compacted`] (the watcher lists
//!   again); a watch that ends ([`Watch::recv`] gives `None`) is resumed by
//!   watching again from the revision after the last one seen.
//!
//! Values are opaque bytes here; the [`KvStore`](super::KvStore) above
//! decides what they hold (JSON records).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::StoreError;

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, e.g. `services/kubia`.
    pub key: String,
    /// The bytes stored under it.
    pub value: Vec<u8>,
    /// The revision of the write that created the key (since its last
    /// deletion).
    pub create_revision: u64,
    /// The revision of the write that last changed it.
    pub mod_revision: u64,
}

/// What a write requires of its key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything: the write always applies.
    Any,
    /// The key does not exist (create only).
    Absent,
    /// The key exists and was last changed at exactly this revision.
    Revision(u64),
}

impl Expect {
    /// Whether `current` (the key's entry, if any) satisfies this.
    pub fn holds(self, current: Option<&Entry>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Revision(revision) => current.is_some_and(|entry| entry.mod_revision == revision),
        }
    }
}

/// Entries under a prefix, as of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Sorted by key.
    pub entries: Vec<Entry>,
    /// The store's revision the entries were read at.
    pub revision: u64,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created or changed; the entry as written.
    Put(Entry),
    /// The key was deleted at `revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        revision: u64,
    },
}

impl Event {
    /// The revision of the write.
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put(entry) => entry.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key written.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(entry) => &entry.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A change, in revision order.
    Event(Event),
    /// The watch asked for history older than the store keeps: changes
    /// before `compacted` are gone. The watch ends; list again.
    Compacted {
        /// The oldest revision a watch may start from.
        compacted: u64,
    },
}

/// At most this many items wait unread in a watch before the store ends it
/// (the watcher resumes from where it was, from the store's history).
pub const WATCH_BACKLOG: usize = 100_000;

/// A stream of [`WatchItem`]s. Dropping it ends the watch.
#[derive(Debug)]
pub struct Watch {
    items: mpsc::Receiver<WatchItem>,
    pending: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// The sending side of a [`Watch`], held by the store.
#[derive(Debug, Clone)]
pub struct WatchSender {
    items: mpsc::Sender<WatchItem>,
    pending: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

/// A new watch and the sender that feeds it.
pub fn watch_channel() -> (WatchSender, Watch) {
    let (items_tx, items) = mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    (
        WatchSender { items: items_tx, pending: pending.clone(), closed: closed.clone() },
        Watch { items, pending, closed },
    )
}

impl WatchSender {
    /// Whether the [`Watch`] was dropped: nothing more need be sent.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Sends `item`; `false` if the watch is gone or has more than
    /// [`WATCH_BACKLOG`] items unread (the sender should then drop it, which
    /// ends the watch).
    pub fn send(&self, item: WatchItem) -> bool {
        if self.pending.load(Ordering::Relaxed) >= WATCH_BACKLOG {
            return false;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.items.send(item).is_ok()
    }
}

impl Watch {
    fn took(&self, item: WatchItem) -> WatchItem {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        item
    }

    /// The next item, waiting for it; `None` once the watch has ended.
    pub fn recv(&self) -> Option<WatchItem> {
        self.items.recv().ok().map(|item| self.took(item))
    }

    /// The next item if one comes within `timeout`. `Err(true)` if the
    /// watch has ended, `Err(false)` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<WatchItem, bool> {
        match self.items.recv_timeout(timeout) {
            Ok(item) => Ok(self.took(item)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(false),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(true),
        }
    }

    /// The next item if one is ready. `Err(true)` if the watch has ended,
    /// `Err(false)` if nothing is ready.
    pub fn try_recv(&self) -> Result<WatchItem, bool> {
        match self.items.try_recv() {
            Ok(item) => Ok(self.took(item)),
            Err(mpsc::TryRecvError::Empty) => Err(false),
            Err(mpsc::TryRecvError::Disconnected) => Err(true),
        }
    }
}

/// A revisioned key-value store; see the [module documentation](self).
///
/// The methods block (an embedded store waits for its disk, etcd for the
/// network, each for a bounded time); async callers use `spawn_blocking` or
/// accept the short wait.
pub trait Kv: Send + Sync + 'static {
    /// The entry under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Writes `value` under `key` if `expect` holds, and returns the new
    /// `mod_revision`; [`StoreError::Conflict`] (nothing written) if not.
    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError>;

    /// Deletes `key` if `expect` holds: the revision of the deletion, or
    /// `None` if there was no such key (with [`Expect::Any`]; any other
    /// expectation of a missing key is a conflict).
    fn delete(&self, key: &str, expect: Expect) -> Result<Option<u64>, StoreError>;

    /// Every entry whose key starts with `prefix`, sorted by key, and the
    /// revision they were read at.
    fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// The store's revision now: that of the last write seen. Cheap: the
    /// reconciler asks on every pass, and lists again only when it moved.
    fn revision(&self) -> Result<u64, StoreError>;

    /// Every change under `prefix` from revision `from` (inclusive) on.
    fn watch(&self, prefix: &str, from: u64) -> Result<Watch, StoreError>;

    /// Forgets the history before `revision`: a watch may no longer start
    /// before it.
    fn compact(&self, revision: u64) -> Result<(), StoreError>;

    /// Gives back space freed by deletions, where the backend keeps it (a
    /// redb file). Nothing to do elsewhere.
    fn reclaim(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Closes the backend's file for good, so that another process may
    /// open it (a handover); writes fail from then on. Nothing to do for a
    /// shared backend (etcd).
    fn release(&self) {}
}

/// The entries of `entries` under `prefix`, sorted, as of `revision`.
pub(crate) fn listing(entries: &std::collections::BTreeMap<String, Entry>, prefix: &str, revision: u64) -> Listing {
    let entries = entries
        .range(prefix.to_owned()..)
        .take_while(|(key, _)| key.starts_with(prefix))
        .map(|(_, entry)| entry.clone())
        .collect();
    Listing { entries, revision }
}
