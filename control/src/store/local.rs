//! [`LocalKv`]: the [`Kv`] contract in this process, in memory or in a redb
//! file.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::StoreError;
use super::kv::{Entry, Event, Expect, Kv, Listing, Watch, WatchItem, WatchSender, watch_channel};
use super::redb_store::RedbDisk;

/// How many changes the store remembers for watches. A watch from an older
/// revision is told it was compacted and lists again.
pub const HISTORY: usize = 10_000;

/// The [`Kv`] contract kept by this process: every entry and the last
/// [`HISTORY`] changes in memory, and, for [`LocalKv::open`], in a redb
/// file ([`RedbDisk`], whose documentation gives the layout).
///
/// Reads are served from memory, so they go on while the disk fails (a
/// full disk). A write takes the writer lock, checks its precondition,
/// commits to the file (entry, change and revision in one transaction),
/// and only then changes memory and tells the watchers, so memory never
/// holds what the file does not. Watchers are told under the state lock, in
/// revision order; a watch starts under the same lock, so it sees each
/// change exactly once, whether from history or live.
pub struct LocalKv {
    state: RwLock<State>,
    /// Held by each write from its check to its change of memory.
    writer: Mutex<()>,
    /// `None` for a store in memory only.
    disk: Option<RedbDisk>,
    location: PathBuf,
}

/// What a [`RedbDisk`] loads at open.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) entries: BTreeMap<String, Entry>,
    /// The last changes, oldest first; revisions `first..=revision`.
    pub(crate) history: VecDeque<Event>,
    /// The store's revision: that of the last write (0 when none).
    pub(crate) revision: u64,
    /// The oldest revision a watch may start from.
    pub(crate) first: u64,
    pub(crate) watchers: Vec<(String, WatchSender)>,
}

impl std::fmt::Debug for LocalKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKv").field("location", &self.location).finish_non_exhaustive()
    }
}

/// A change to commit: the key's new entry (`None`: deleted), the event, and
/// the history's new first revision.
pub(crate) struct Commit<'a> {
    pub(crate) event: &'a Event,
    pub(crate) first: u64,
}

impl LocalKv {
    /// An empty store in memory. Nothing survives it.
    pub fn memory() -> Self {
        let state = State { first: 1, ..State::default() };
        LocalKv { state: RwLock::new(state), writer: Mutex::new(()), disk: None, location: PathBuf::from("memory") }
    }

    /// The store in the redb file at `path`, created (with its parent
    /// directories) if missing; see [`RedbDisk::open`] for its errors.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let (disk, state) = RedbDisk::open(path)?;
        Ok(LocalKv { state: RwLock::new(state), writer: Mutex::new(()), disk: Some(disk), location: path.to_owned() })
    }

    /// The file, or `memory`.
    pub fn location(&self) -> &Path {
        &self.location
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry at `key` and the next revision, if `expect` holds of it.
    /// The caller holds the writer lock.
    fn checked(&self, key: &str, expect: Expect) -> Result<(Option<Entry>, u64), StoreError> {
        let state = self.state();
        let current = state.entries.get(key).cloned();
        if !expect.holds(current.as_ref()) {
            return Err(conflict(key, expect, current.as_ref()));
        }
        Ok((current, state.revision + 1))
    }

    /// Commits `event` (the next revision), then applies it to memory and
    /// tells the watchers. The caller holds the writer lock.
    fn write(&self, event: Event) -> Result<u64, StoreError> {
        let revision = event.revision();
        let first = {
            let state = self.state();
            debug_assert_eq!(revision, state.revision + 1);
            if state.history.len() >= HISTORY { state.history[1].revision() } else { state.first }
        };
        if let Some(disk) = &self.disk {
            disk.commit(&Commit { event: &event, first })?;
        }
        let mut state = self.state_mut();
        state.revision = revision;
        match &event {
            Event::Put(entry) => {
                state.entries.insert(entry.key.clone(), entry.clone());
            }
            Event::Delete { key, .. } => {
                state.entries.remove(key);
            }
        }
        state.watchers.retain(|(prefix, watcher)| {
            !event.key().starts_with(prefix.as_str()) || watcher.send(WatchItem::Event(event.clone()))
        });
        state.history.push_back(event);
        while state.history.front().is_some_and(|event| event.revision() < first) {
            state.history.pop_front();
        }
        state.first = first;
        Ok(revision)
    }
}

/// The conflict error for `key`, whose current entry is `current`.
pub(crate) fn conflict(key: &str, expect: Expect, current: Option<&Entry>) -> StoreError {
    StoreError::Conflict { key: key.to_owned(), expected: expect, current: current.map(|entry| entry.mod_revision) }
}

impl Kv for LocalKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.state().entries.get(key).cloned())
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError> {
        let _writer = self.lock_writer();
        let (current, revision) = self.checked(key, expect)?;
        let entry = Entry {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision: current.map_or(revision, |current| current.create_revision),
            mod_revision: revision,
        };
        self.write(Event::Put(entry))
    }

    fn delete(&self, key: &str, expect: Expect) -> Result<Option<u64>, StoreError> {
        let _writer = self.lock_writer();
        let (current, revision) = self.checked(key, expect)?;
        if current.is_none() {
            return Ok(None);
        }
        self.write(Event::Delete { key: key.to_owned(), revision }).map(Some)
    }

    fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let state = self.state();
        Ok(super::kv::listing(&state.entries, prefix, state.revision))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.state().revision)
    }

    fn watch(&self, prefix: &str, from: u64) -> Result<Watch, StoreError> {
        let (sender, watch) = watch_channel();
        let mut state = self.state_mut();
        if from < state.first {
            sender.send(WatchItem::Compacted { compacted: state.first });
            return Ok(watch);
        }
        for event in state.history.iter().filter(|event| event.revision() >= from) {
            if event.key().starts_with(prefix) && !sender.send(WatchItem::Event(event.clone())) {
                // Too far behind already: the watcher resumes later.
                return Ok(watch);
            }
        }
        state.watchers.push((prefix.to_owned(), sender));
        Ok(watch)
    }

    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let _writer = self.lock_writer();
        let first = {
            let state = self.state();
            revision.clamp(state.first, state.revision + 1)
        };
        if let Some(disk) = &self.disk {
            disk.compact_history(first)?;
        }
        let mut state = self.state_mut();
        while state.history.front().is_some_and(|event| event.revision() < first) {
            state.history.pop_front();
        }
        state.first = first;
        Ok(())
    }

    fn reclaim(&self) -> Result<(), StoreError> {
        let _writer = self.lock_writer();
        match &self.disk {
            Some(disk) => disk.reclaim(),
            None => Ok(()),
        }
    }

    fn release(&self) {
        // After any write in progress.
        let _writer = self.lock_writer();
        if let Some(disk) = &self.disk {
            disk.release();
        }
    }
}
