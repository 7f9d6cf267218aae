//! [`RedbDisk`]: where a [`LocalKv`](super::LocalKv) keeps its entries and
//! history on disk, in one redb file.
//!
//! The layout, the schema versioning and the choice of redb are documented
//! on [`RedbDisk`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::kv::{Entry, Event};
use super::local::{Commit, State};
use super::{Blobs, StoreError, check_digest, is_disk_full};

/// The schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: u32 = 3;

const META: TableDefinition<'_, &str, u32> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");
const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
const HISTORY: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("history");
/// Schemas 1 and 2 kept services and module infos in tables of their own.
const LEGACY_SERVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("services");
const LEGACY_MODULE_INFO: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("module_info");
/// Schema 1 kept module bytes in the store; schema 2 moved them to files.
const LEGACY_MODULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("modules");
const SCHEMA_KEY: &str = "schema_version";
const REVISION_KEY: &str = "revision";
const FIRST_KEY: &str = "first";

/// What redb may keep in memory: the store holds small records only.
const CACHE_SIZE: usize = 16 << 20;

/// The file of a [`LocalKv`](super::LocalKv): entries, the recent history
/// and the revision counters in one redb database.
///
/// # Why redb
///
/// redb is an embedded key-value store in pure Rust: no server to run, no C
/// library to build, one file to back up. Its transactions are ACID (a
/// commit is durable once it returns, with copy-on-write B-trees and
/// checksums, so a crash leaves the last committed state), readers never
/// block the writer, and the file is locked so that two `shoal` processes
/// cannot write it at once. That is what a single-node control plane needs;
/// etcd takes its place in a cluster ([`EtcdKv`](super::EtcdKv)), behind
/// the same [`Kv`](super::Kv) contract.
///
/// # Layout (schema 3)
///
/// | table | key | value |
/// |---|---|---|
/// | `meta` | `&str` | `u32`; `"schema_version"` → [`SCHEMA_VERSION`] |
/// | `counters` | `&str` | `u64`; `"revision"` (the last write's), `"first"` (the oldest revision a watch may start from) |
/// | `kv` | `&str` key (`services/<name>`, `modules/<digest>`) | `&[u8]`: create revision (u64 LE), mod revision (u64 LE), then the value (a JSON record) |
/// | `history` | `u64` revision | `&[u8]`: kind (1 put, 2 delete), create revision (u64 LE), key length (u32 LE), key, value |
/// | `modules/<digest>.wasm` beside the file | | a component's bytes ([`Blobs`]) |
///
/// Each write is one transaction over `kv`, `history` and `counters`; the
/// history keeps the last [`HISTORY`](super::local::HISTORY) changes.
/// Records are JSON so that a later schema can add fields with defaults
/// without a migration; the schema version changes only when a layout change
/// would make an older Shoal misread the file. [`RedbDisk::open`] refuses a
/// file whose version is newer than [`SCHEMA_VERSION`] (without changing
/// it) and migrates older ones in place, in one transaction (a crash before
/// the commit redoes it at the next open):
///
/// * schema 1 kept module bytes in a `modules` table, where a 200 MB upload
///   cost 200 MB of memory to write and its space was never given back;
///   each goes to its file and the table is dropped;
/// * schemas 1 and 2 kept services and module infos in tables `services`
///   and `module_info`, without revisions; each record moves to `kv` under
///   its key, at revisions 1, 2, … in key order, with no history.
///
/// Module bytes are files because they are large and written once:
/// uploads stream to disk, a deleted module's space is free at once, and the
/// redb file holds only records of a few hundred bytes, so its integrity
/// check at open and its compaction (after deletions) are cheap.
///
/// Every open checks the integrity of the whole file (redb's
/// `set_check_integrity_on_open`: page checksums, allocator state), so a
/// damaged file is reported as [`StoreError::Corrupt`] rather than trusted.
/// A plain open trusts a cleanly closed file and may panic on one altered
/// behind redb's back (single flipped bytes did, in our tests).
///
/// # Failures
///
/// After an IO error redb refuses every later operation until the database
/// is closed and opened again; the disk does that at once (and before the
/// next write if it could not), so once space is freed the next write
/// succeeds. A full disk is [`StoreError::DiskFull`]. Reads never come
/// here: the [`LocalKv`](super::LocalKv) serves them from memory.
///
/// # Locking
///
/// The file is locked while it is open: a second open, from this process or
/// another, fails with [`StoreError::Locked`]. Dropping it closes the file.
pub(crate) struct RedbDisk {
    /// `None` after an IO failure closed it, until it is opened again.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// Set when redb reported an IO error: it must be opened again.
    failed: AtomicBool,
    /// Set by [`RedbDisk::release`]: closed for good, never opened again.
    released: AtomicBool,
}

impl RedbDisk {
    /// Opens the file at `path`, creating it (and its parent directories)
    /// if it does not exist, and loads its entries and history.
    ///
    /// Errors: [`StoreError::Corrupt`] for a file that is not a Shoal store
    /// or is damaged, [`StoreError::NewerSchema`] for one written by a newer
    /// Shoal, [`StoreError::Locked`] while another handle has it open,
    /// [`StoreError::Backend`] for IO errors (permissions, …).
    pub(crate) fn open(path: &Path) -> Result<(Self, State), StoreError> {
        let backend =
            |what: &str, err: &dyn Display| StoreError::Backend { detail: format!("{what} {}: {err}", path.display()) };
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| backend("creating the directory of", &err))?;
        }
        let db = open_database(path)?;
        let disk = RedbDisk {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            failed: AtomicBool::new(false),
            released: AtomicBool::new(false),
        };
        disk.init_schema()?;
        let state = disk.load()?;
        Ok((disk, state))
    }

    fn data_dir(&self) -> PathBuf {
        self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned()
    }

    fn backend(&self, what: &str) -> StoreError {
        StoreError::Backend { detail: format!("{what}: {}", self.path.display()) }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), detail }
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the open database (opened again first if an IO failure
    /// closed it), and closes and opens it again if `f` met an IO failure,
    /// so that the next call finds it usable.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.released.load(Ordering::SeqCst) {
            return Err(self.backend("the store was handed over to another shoal up, which writes it now"));
        }
        if self.failed.load(Ordering::SeqCst) || self.db().is_none() {
            self.reopen()?;
        }
        let result = {
            let guard = self.db();
            let db = guard.as_ref().ok_or_else(|| self.backend("the store is closed"))?;
            f(db)
        };
        if self.failed.load(Ordering::SeqCst)
            && let Err(error) = self.reopen()
        {
            tracing::warn!(%error, store = %self.path.display(), "cannot reopen the store; retrying at the next write");
        }
        result
    }

    /// Closes the database and opens it again (redb's answer to an IO
    /// error). Memory already holds exactly what was committed.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if self.released.load(Ordering::SeqCst) {
            return Err(self.backend("the store was handed over to another shoal up, which writes it now"));
        }
        // Dropping the failed handle closes the file and its lock.
        guard.take();
        *guard = Some(open_database(&self.path)?);
        drop(guard);
        self.failed.store(false, Ordering::SeqCst);
        tracing::info!(store = %self.path.display(), "store reopened after an IO error");
        Ok(())
    }

    /// Closes the file for good (its lock with it), so that another
    /// process can open it: a `shoal up` handing over to its successor.
    /// Every write after fails; reads go on from memory.
    pub(crate) fn release(&self) {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        self.released.store(true, Ordering::SeqCst);
        guard.take();
    }

    /// Reads the schema version, writing it (and creating the tables) in a
    /// new store, and migrates an older one. One write transaction: a
    /// refused file is left unchanged.
    fn init_schema(&self) -> Result<(), StoreError> {
        let guard = self.db();
        let db = guard.as_ref().ok_or_else(|| self.backend("the store is closed"))?;
        let txn = db.begin_write().or_fail(self, "beginning a write")?;
        {
            let tables: Vec<String> =
                txn.list_tables().or_fail(self, "listing tables")?.map(|table| table.name().to_owned()).collect();
            let mut meta = txn.open_table(META).or_fail(self, "opening table meta")?;
            let found = meta.get(SCHEMA_KEY).or_fail(self, "reading the schema version")?.map(|v| v.value());
            match found {
                None if tables.is_empty() => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION).or_fail(self, "writing the schema version")?;
                }
                None => {
                    let detail = format!("a redb database without a schema version (tables: {})", tables.join(", "));
                    return Err(self.corrupt(detail));
                }
                Some(0) => return Err(self.corrupt("schema version 0".to_owned())),
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::NewerSchema { path: self.path.clone(), found, supported: SCHEMA_VERSION });
                }
                Some(found @ (1 | 2)) => {
                    if found == 1 {
                        self.migrate_modules_to_files(&txn)?;
                    }
                    self.migrate_records_to_kv(&txn)?;
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION).or_fail(self, "writing the schema version")?;
                }
                // SCHEMA_VERSION itself.
                Some(_) => {}
            }
            txn.open_table(KV).or_fail(self, "opening table kv")?;
            txn.open_table(HISTORY).or_fail(self, "opening table history")?;
            let mut counters = txn.open_table(COUNTERS).or_fail(self, "opening table counters")?;
            if counters.get(FIRST_KEY).or_fail(self, "reading the counters")?.is_none() {
                let revision =
                    counters.get(REVISION_KEY).or_fail(self, "reading the counters")?.map_or(0, |v| v.value());
                counters.insert(REVISION_KEY, revision).or_fail(self, "writing the counters")?;
                counters.insert(FIRST_KEY, revision + 1).or_fail(self, "writing the counters")?;
            }
        }
        txn.commit().or_fail(self, "committing the schema")
    }

    /// Schema 1 → 2: each module's bytes to its file (under the digest it
    /// was stored under, so that bytes changed behind Shoal's back are still
    /// reported as such), then the table goes.
    fn migrate_modules_to_files(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let has_table =
            txn.list_tables().or_fail(self, "listing tables")?.any(|table| table.name() == LEGACY_MODULES.name());
        if !has_table {
            return Ok(());
        }
        let blobs = Blobs::new(self.data_dir().join("modules"));
        {
            let table = txn.open_table(LEGACY_MODULES).or_fail(self, "opening table modules")?;
            for entry in table.iter().or_fail(self, "reading table modules")? {
                let (digest, bytes) = entry.or_fail(self, "reading table modules")?;
                let digest = digest.value();
                if check_digest(digest).is_err() {
                    return Err(self.corrupt(format!("modules[{digest:?}] is not under a module digest")));
                }
                write_file_atomically(&blobs.path(digest), bytes.value())
                    .map_err(|e| super::blobs::io_error(&self.data_dir(), "move a module to its file", &e))?;
            }
        }
        txn.delete_table(LEGACY_MODULES).or_fail(self, "dropping table modules")?;
        tracing::info!(store = %self.path.display(), "moved module bytes out of the store into files (schema 1 → 2)");
        Ok(())
    }

    /// Schema 2 → 3: every service and module info into `kv`, under its
    /// key, at revisions 1, 2, …; then the old tables go.
    fn migrate_records_to_kv(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let tables: Vec<String> =
            txn.list_tables().or_fail(self, "listing tables")?.map(|table| table.name().to_owned()).collect();
        let mut records = Vec::new();
        for (table, prefix) in [(LEGACY_SERVICES, "services/"), (LEGACY_MODULE_INFO, "modules/")] {
            if !tables.iter().any(|name| name == table.name()) {
                continue;
            }
            let what = format_args!("reading table {}", table.name());
            let open = txn.open_table(table).or_fail(self, what)?;
            for entry in open.iter().or_fail(self, what)? {
                let (key, value) = entry.or_fail(self, what)?;
                records.push((format!("{prefix}{}", key.value()), value.value().to_vec()));
            }
        }
        let mut kv = txn.open_table(KV).or_fail(self, "opening table kv")?;
        let mut revision = 0;
        for (key, value) in &records {
            revision += 1;
            kv.insert(key.as_str(), encode_entry(revision, revision, value).as_slice())
                .or_fail(self, "migrating a record")?;
        }
        let mut counters = txn.open_table(COUNTERS).or_fail(self, "opening table counters")?;
        counters.insert(REVISION_KEY, revision).or_fail(self, "writing the counters")?;
        counters.insert(FIRST_KEY, revision + 1).or_fail(self, "writing the counters")?;
        for table in [LEGACY_SERVICES, LEGACY_MODULE_INFO] {
            if tables.iter().any(|name| name == table.name()) {
                txn.delete_table(table).or_fail(self, format_args!("dropping table {}", table.name()))?;
            }
        }
        tracing::info!(store = %self.path.display(), records = records.len(), "records moved under revisioned keys (schema 2 → 3)");
        Ok(())
    }

    /// Loads the entries, the history and the counters.
    fn load(&self) -> Result<State, StoreError> {
        let guard = self.db();
        let db = guard.as_ref().ok_or_else(|| self.backend("the store is closed"))?;
        let txn = db.begin_read().or_fail(self, "beginning a read")?;
        let mut entries = BTreeMap::new();
        let kv = txn.open_table(KV).or_fail(self, "opening table kv")?;
        for item in kv.iter().or_fail(self, "reading table kv")? {
            let (key, value) = item.or_fail(self, "reading table kv")?;
            let key = key.value().to_owned();
            let entry =
                decode_entry(&key, value.value()).ok_or_else(|| self.corrupt(format!("kv[{key:?}] is too short")))?;
            entries.insert(key, entry);
        }
        let mut history = VecDeque::new();
        let table = txn.open_table(HISTORY).or_fail(self, "opening table history")?;
        for item in table.iter().or_fail(self, "reading table history")? {
            let (revision, bytes) = item.or_fail(self, "reading table history")?;
            let revision = revision.value();
            let event = decode_event(revision, bytes.value())
                .ok_or_else(|| self.corrupt(format!("history[{revision}] does not decode")))?;
            history.push_back(event);
        }
        let counters = txn.open_table(COUNTERS).or_fail(self, "opening table counters")?;
        let counter = |key: &str| -> Result<u64, StoreError> {
            counters
                .get(key)
                .or_fail(self, "reading the counters")?
                .map(|v| v.value())
                .ok_or_else(|| self.corrupt(format!("counters[{key:?}] is missing")))
        };
        let (revision, first) = (counter(REVISION_KEY)?, counter(FIRST_KEY)?);
        if let Some((key, entry)) = entries.iter().find(|(_, entry)| entry.mod_revision > revision) {
            let detail =
                format!("kv[{key:?}] was written at revision {}, after the store's {revision}", entry.mod_revision);
            return Err(self.corrupt(detail));
        }
        Ok(State { entries, history, revision, first, watchers: Vec::new() })
    }

    /// Writes one change: the entry (or its removal), the event in the
    /// history, the history trimmed to start at `commit.first`, and the
    /// counters, in one transaction.
    pub(crate) fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let event = commit.event;
        let what = match event {
            Event::Put(entry) => format!("writing {}", entry.key),
            Event::Delete { key, .. } => format!("deleting {key}"),
        };
        self.with_db(|db| {
            let txn = db.begin_write().or_fail(self, "beginning a write")?;
            {
                let mut kv = txn.open_table(KV).or_fail(self, "opening table kv")?;
                match event {
                    Event::Put(entry) => {
                        let bytes = encode_entry(entry.create_revision, entry.mod_revision, &entry.value);
                        kv.insert(entry.key.as_str(), bytes.as_slice()).or_fail(self, &what)?;
                    }
                    Event::Delete { key, .. } => {
                        kv.remove(key.as_str()).or_fail(self, &what)?;
                    }
                }
                let mut history = txn.open_table(HISTORY).or_fail(self, "opening table history")?;
                history.insert(event.revision(), encode_event(event).as_slice()).or_fail(self, &what)?;
                history.retain_in(..commit.first, |_, _| false).or_fail(self, "trimming the history")?;
                let mut counters = txn.open_table(COUNTERS).or_fail(self, "opening table counters")?;
                counters.insert(REVISION_KEY, event.revision()).or_fail(self, &what)?;
                counters.insert(FIRST_KEY, commit.first).or_fail(self, &what)?;
            }
            txn.commit().or_fail(self, format_args!("committing ({what})"))
        })
    }

    /// Forgets the history before `first`.
    pub(crate) fn compact_history(&self, first: u64) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().or_fail(self, "beginning a write")?;
            {
                let mut history = txn.open_table(HISTORY).or_fail(self, "opening table history")?;
                history.retain_in(..first, |_, _| false).or_fail(self, "trimming the history")?;
                let mut counters = txn.open_table(COUNTERS).or_fail(self, "opening table counters")?;
                counters.insert(FIRST_KEY, first).or_fail(self, "writing the counters")?;
            }
            txn.commit().or_fail(self, "committing a compaction of the history")
        })
    }

    /// Compacts the file, giving back the space deleted records took.
    pub(crate) fn reclaim(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = guard.as_mut() else { return Err(self.backend("the store is closed")) };
        match db.compact() {
            Ok(_) => Ok(()),
            Err(redb::CompactionError::Storage(StorageError::Io(io))) => {
                drop(guard);
                self.failed.store(true, Ordering::SeqCst);
                if is_disk_full(&io) {
                    Err(StoreError::DiskFull { dir: self.data_dir(), what: "compact the store".to_owned() })
                } else {
                    Err(StoreError::Backend { detail: format!("compacting {}: {io}", self.path.display()) })
                }
            }
            Err(error) => Err(StoreError::Backend { detail: format!("compacting {}: {error}", self.path.display()) }),
        }
    }
}

fn encode_entry(create_revision: u64, mod_revision: u64, value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + value.len());
    bytes.extend_from_slice(&create_revision.to_le_bytes());
    bytes.extend_from_slice(&mod_revision.to_le_bytes());
    bytes.extend_from_slice(value);
    bytes
}

fn decode_entry(key: &str, bytes: &[u8]) -> Option<Entry> {
    let create_revision = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let mod_revision = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some(Entry { key: key.to_owned(), value: bytes[16..].to_vec(), create_revision, mod_revision })
}

fn encode_event(event: &Event) -> Vec<u8> {
    let (kind, create, key, value): (u8, u64, &str, &[u8]) = match event {
        Event::Put(entry) => (1, entry.create_revision, &entry.key, &entry.value),
        Event::Delete { key, .. } => (2, 0, key, &[]),
    };
    let mut bytes = Vec::with_capacity(13 + key.len() + value.len());
    bytes.push(kind);
    bytes.extend_from_slice(&create.to_le_bytes());
    bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(value);
    bytes
}

fn decode_event(revision: u64, bytes: &[u8]) -> Option<Event> {
    let kind = *bytes.first()?;
    let create_revision = u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?);
    let key_len = u32::from_le_bytes(bytes.get(9..13)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(bytes.get(13..13 + key_len)?).ok()?.to_owned();
    let value = bytes[13 + key_len..].to_vec();
    match kind {
        1 => Some(Event::Put(Entry { key, value, create_revision, mod_revision: revision })),
        2 => Some(Event::Delete { key, revision }),
        _ => None,
    }
}

/// Opens (or creates) the database at `path`, checking its integrity.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { path: path.to_owned(), detail };
    Builder::new().set_check_integrity_on_open(true).set_cache_size(CACHE_SIZE).create(path).map_err(|err| match err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked { path: path.to_owned() }
        }
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
            corrupt(io.to_string())
        }
        DatabaseError::Storage(StorageError::Io(io)) if is_disk_full(&io) => StoreError::DiskFull {
            dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
            what: "open the store".to_owned(),
        },
        DatabaseError::Storage(StorageError::Corrupted(detail)) => corrupt(detail),
        DatabaseError::UpgradeRequired(format) => corrupt(format!("an old redb file format ({format})")),
        DatabaseError::RepairAborted => corrupt("it needs a repair, which was aborted".to_owned()),
        other => StoreError::Backend { detail: format!("opening {}: {other}", path.display()) },
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, durably.
fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Maps a redb error to a [`StoreError`] naming what was being done; an IO
/// error marks the store for reopening.
trait OrFail<T> {
    fn or_fail(self, store: &RedbDisk, what: impl Display) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrFail<T> for Result<T, E> {
    fn or_fail(self, store: &RedbDisk, what: impl Display) -> Result<T, StoreError> {
        self.map_err(|err| match err.into() {
            redb::Error::Corrupted(detail) => store.corrupt(format!("{what}: {detail}")),
            redb::Error::TableTypeMismatch { table, key, value } => {
                store.corrupt(format!("{what}: table {table} has keys {} and values {}", key.name(), value.name()))
            }
            redb::Error::Io(io) => {
                store.failed.store(true, Ordering::SeqCst);
                if is_disk_full(&io) {
                    StoreError::DiskFull { dir: store.data_dir(), what: what.to_string() }
                } else {
                    StoreError::Backend { detail: format!("{what} in {}: {io}", store.path.display()) }
                }
            }
            redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
                store.failed.store(true, Ordering::SeqCst);
                StoreError::Backend {
                    detail: format!("{what} in {}: an earlier IO error closed the store; retry", store.path.display()),
                }
            }
            err => StoreError::Backend { detail: format!("{what} in {}: {err}", store.path.display()) },
        })
    }
}
