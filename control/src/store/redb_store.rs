//! [`RedbStore`]: the [`Store`] in one redb file, module bytes beside it.
//!
//! The layout, the schema versioning and the choice of redb are documented
//! on [`RedbStore`].

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition, TableHandle,
    WriteTransaction,
};
use shoal_api::{ModuleInfo, ServiceRecord, now_unix};

use super::{Blobs, ModuleUpload, StagedModule, Store, StoreError, check_digest, is_disk_full};

/// The schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: u32 = 2;

const META: TableDefinition<'_, &str, u32> = TableDefinition::new("meta");
const SERVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("services");
/// Schema 1 kept module bytes in the store; schema 2 moves them to files.
const LEGACY_MODULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("modules");
const MODULE_INFO: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("module_info");
const SCHEMA_KEY: &str = "schema_version";

/// What redb may keep in memory: the store holds small records only.
const CACHE_SIZE: usize = 16 << 20;

/// A [`Store`] in one redb database file, with module bytes in files beside
/// it.
///
/// # Why redb
///
/// redb is an embedded key-value store in pure Rust: no server to run, no C
/// library to build, one file to back up. Its transactions are ACID (a
/// commit is durable once it returns, with copy-on-write B-trees and
/// checksums, so a crash leaves the last committed state), readers never
/// block the writer, and the file is locked so that two `shoal` processes
/// cannot write it at once. That is what a single-node control plane needs;
/// etcd can take its place behind [`Store`] when there are several.
///
/// # Layout
///
/// | where | key | value |
/// |---|---|---|
/// | table `meta` | `&str` | `u32`; `"schema_version"` → [`SCHEMA_VERSION`] |
/// | table `services` | `&str` service name | `&[u8]`: [`ServiceRecord`] as JSON |
/// | table `module_info` | `&str` digest (lowercase hex sha256) | `&[u8]`: [`ModuleInfo`] as JSON |
/// | `modules/<digest>.wasm` beside the store | | the component's bytes ([`Blobs`]) |
///
/// Records are JSON so that a later schema can add fields with defaults
/// without a migration; the schema version changes only when a layout change
/// would make an older Shoal misread the file. [`RedbStore::open`] refuses
/// a file whose version is newer than [`SCHEMA_VERSION`] (without changing
/// it) and migrates older ones in place: schema 1 kept module bytes in a
/// `modules` table, where a 200 MB upload cost 200 MB of memory to write
/// and its space was never given back; opening it writes each one to its
/// file, then drops the table, in one transaction (a crash before the commit
/// redoes it at the next open).
///
/// Module bytes are files because they are large and written once:
/// uploads stream to disk, a deleted module's space is free at once, and the
/// redb file holds only records of a few hundred bytes, so its
/// integrity check at open and its compaction (after deletions) are cheap.
///
/// Every open checks the integrity of the whole file (redb's
/// `set_check_integrity_on_open`: page checksums, allocator state), so a
/// damaged file is reported as [`StoreError::Corrupt`] rather than trusted.
/// A plain open trusts a cleanly closed file and may panic on one altered
/// behind redb's back (single flipped bytes did, in our tests).
///
/// # Failures
///
/// Reads are served from a copy of the committed records kept in memory
/// (the bytes as stored, decoded on each read), so they go on while the
/// disk fails. After an IO error redb refuses every later operation until
/// the database is closed and opened again; the store does that at once
/// (and before the next write if it could not), so once space is freed the
/// next write succeeds. A full disk is [`StoreError::DiskFull`].
///
/// # Locking
///
/// The file is locked while the store is open: a second open, from this
/// process or another, fails with [`StoreError::Locked`]. Dropping the store
/// closes the file.
pub struct RedbStore {
    /// `None` after an IO failure closed it, until it is opened again.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    blobs: Blobs,
    /// The committed records, as stored.
    mirror: RwLock<Mirror>,
    /// Held by each write from its transaction to its mirror update, so
    /// that the mirror follows the commits in order.
    writer: Mutex<()>,
    /// Set when redb reported an IO error: it must be opened again.
    failed: AtomicBool,
}

/// The committed records by key, as JSON bytes.
#[derive(Default)]
struct Mirror {
    services: BTreeMap<String, Vec<u8>>,
    infos: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating it (and its parent directories)
    /// if it does not exist. Module files are kept in `modules/` beside it.
    ///
    /// Errors: [`StoreError::Corrupt`] for a file that is not a Shoal store
    /// or is damaged, [`StoreError::NewerSchema`] for one written by a newer
    /// Shoal, [`StoreError::Locked`] while another handle has it open,
    /// [`StoreError::Backend`] for IO errors (permissions, …).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let backend =
            |what: &str, err: &dyn Display| StoreError::Backend { detail: format!("{what} {}: {err}", path.display()) };
        let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent).map_err(|err| backend("creating the directory of", &err))?;
        }
        let blobs = Blobs::new(parent.unwrap_or(Path::new(".")).join("modules"));
        let db = open_database(path)?;
        let store = RedbStore {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            blobs,
            mirror: RwLock::default(),
            writer: Mutex::new(()),
            failed: AtomicBool::new(false),
        };
        store.init_schema()?;
        store.load_mirror()?;
        store.blobs.clean_staging();
        store.remove_orphan_files();
        Ok(store)
    }

    /// The file this store is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of module files.
    pub fn modules_dir(&self) -> &Path {
        self.blobs.dir()
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn mirror(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn mirror_mut(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the open database (opened again first if an IO failure
    /// closed it), and closes and opens it again if `f` met an IO failure,
    /// so that the next call finds it usable.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
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
    /// error), reloading the committed records from it.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Dropping the failed handle closes the file and its lock.
        guard.take();
        let db = open_database(&self.path)?;
        *guard = Some(db);
        drop(guard);
        self.failed.store(false, Ordering::SeqCst);
        self.load_mirror()?;
        tracing::info!(store = %self.path.display(), "store reopened after an IO error");
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned()
    }

    fn backend(&self, what: &str) -> StoreError {
        StoreError::Backend { detail: format!("{what}: {}", self.path.display()) }
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
                Some(1) => {
                    self.migrate_modules_to_files(&txn)?;
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION).or_fail(self, "writing the schema version")?;
                }
                // SCHEMA_VERSION itself.
                Some(_) => {}
            }
            for table in [SERVICES, MODULE_INFO] {
                txn.open_table(table).or_fail(self, format_args!("opening table {}", table.name()))?;
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
        {
            let table = txn.open_table(LEGACY_MODULES).or_fail(self, "opening table modules")?;
            for entry in table.iter().or_fail(self, "reading table modules")? {
                let (digest, bytes) = entry.or_fail(self, "reading table modules")?;
                let digest = digest.value();
                if check_digest(digest).is_err() {
                    return Err(self.corrupt(format!("modules[{digest:?}] is not under a module digest")));
                }
                write_file_atomically(&self.blobs.path(digest), bytes.value())
                    .map_err(|e| super::blobs::io_error(&self.data_dir(), "move a module to its file", &e))?;
            }
        }
        txn.delete_table(LEGACY_MODULES).or_fail(self, "dropping table modules")?;
        tracing::info!(store = %self.path.display(), "moved module bytes out of the store into files (schema 1 → 2)");
        Ok(())
    }

    /// Loads the committed records into the mirror.
    fn load_mirror(&self) -> Result<(), StoreError> {
        let mut mirror = Mirror::default();
        {
            let guard = self.db();
            let db = guard.as_ref().ok_or_else(|| self.backend("the store is closed"))?;
            let txn = db.begin_read().or_fail(self, "beginning a read")?;
            for (table, into) in [(SERVICES, &mut mirror.services), (MODULE_INFO, &mut mirror.infos)] {
                let what = format_args!("reading table {}", table.name());
                let table = txn.open_table(table).or_fail(self, what)?;
                for entry in table.iter().or_fail(self, what)? {
                    let (key, value) = entry.or_fail(self, what)?;
                    into.insert(key.value().to_owned(), value.value().to_vec());
                }
            }
        }
        *self.mirror_mut() = mirror;
        Ok(())
    }

    /// Module files without a record: uploads whose record was never
    /// committed (a crash, a full disk). Removed at open.
    fn remove_orphan_files(&self) {
        let known: Vec<String> = self.mirror().infos.keys().cloned().collect();
        for digest in self.blobs.digests() {
            if !known.contains(&digest) {
                let _ = self.blobs.remove(&digest);
            }
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), detail }
    }

    /// Decodes the JSON record under `key` in `table`.
    fn decode<T: serde::de::DeserializeOwned>(&self, table: &str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|err| self.corrupt(format!("{table}[{key:?}] does not decode: {err}")))
    }

    fn decode_service(&self, name: &str, bytes: &[u8]) -> Result<ServiceRecord, StoreError> {
        let record: ServiceRecord = self.decode("services", name, bytes)?;
        if record.service.name != name {
            let detail = format!("services[{name:?}] holds service {:?}", record.service.name);
            return Err(self.corrupt(detail));
        }
        Ok(record)
    }

    fn decode_info(&self, digest: &str, bytes: &[u8]) -> Result<ModuleInfo, StoreError> {
        let info: ModuleInfo = self.decode("module_info", digest, bytes)?;
        if info.digest != digest {
            return Err(self.corrupt(format!("module_info[{digest:?}] holds the info of {:?}", info.digest)));
        }
        Ok(info)
    }

    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|err| StoreError::Backend { detail: format!("encoding a record: {err}") })
    }

    /// Inserts (`Some`) or removes (`None`) `key` in `table` in one
    /// transaction, and the mirror after the commit. Returns whether the key
    /// was there before.
    fn write_record(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
        value: Option<Vec<u8>>,
        what: impl Display,
    ) -> Result<bool, StoreError> {
        let existed = self.with_db(|db| {
            let txn = db.begin_write().or_fail(self, "beginning a write")?;
            let existed = {
                let mut open = txn.open_table(table).or_fail(self, format_args!("opening table {}", table.name()))?;
                match &value {
                    Some(bytes) => open.insert(key, bytes.as_slice()).or_fail(self, &what)?.is_some(),
                    None => open.remove(key).or_fail(self, &what)?.is_some(),
                }
            };
            if existed || value.is_some() {
                txn.commit().or_fail(self, format_args!("committing ({what})"))?;
            }
            // Otherwise dropping the transaction aborts it: nothing to sync.
            Ok(existed)
        })?;
        let mut mirror = self.mirror_mut();
        let map = if table.name() == SERVICES.name() { &mut mirror.services } else { &mut mirror.infos };
        match value {
            Some(bytes) => {
                map.insert(key.to_owned(), bytes);
            }
            None => {
                map.remove(key);
            }
        }
        Ok(existed)
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
    fn or_fail(self, store: &RedbStore, what: impl Display) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrFail<T> for Result<T, E> {
    fn or_fail(self, store: &RedbStore, what: impl Display) -> Result<T, StoreError> {
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

impl Store for RedbStore {
    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let mirror = self.mirror();
        mirror.services.iter().map(|(name, bytes)| self.decode_service(name, bytes)).collect()
    }

    fn service(&self, name: &str) -> Result<Option<ServiceRecord>, StoreError> {
        let mirror = self.mirror();
        mirror.services.get(name).map(|bytes| self.decode_service(name, bytes)).transpose()
    }

    fn put_service(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        let name = record.service.name.as_str();
        let json = self.encode(record)?;
        let _writer = self.lock_writer();
        self.write_record(SERVICES, name, Some(json), format_args!("writing service {name:?}")).map(drop)
    }

    fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let _writer = self.lock_writer();
        self.write_record(SERVICES, name, None, format_args!("deleting service {name:?}"))
    }

    fn begin_module(&self) -> Result<ModuleUpload, StoreError> {
        self.blobs.begin()
    }

    fn commit_module(&self, mut staged: StagedModule) -> Result<ModuleInfo, StoreError> {
        let digest = staged.digest().to_owned();
        let _writer = self.lock_writer();
        let existed = self.mirror().infos.contains_key(&digest);
        self.blobs.install(&mut staged)?;
        // An existing info keeps its creation time; one that does not
        // decode is replaced, since these bytes say what is true.
        let old = self.mirror().infos.get(&digest).and_then(|bytes| self.decode_info(&digest, bytes).ok());
        let created_unix = old.as_ref().map_or_else(now_unix, |old| old.created_unix);
        let info = ModuleInfo { digest: digest.clone(), size: staged.size(), created_unix };
        if old.as_ref() != Some(&info) {
            let json = self.encode(&info)?;
            let written = self.write_record(MODULE_INFO, &digest, Some(json), format_args!("writing module {digest}"));
            if let Err(error) = written {
                // Nothing names the file: it goes, so the space comes back.
                if !existed {
                    let _ = self.blobs.remove(&digest);
                }
                return Err(error);
            }
        }
        Ok(info)
    }

    fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_digest(digest)?;
        if !self.mirror().infos.contains_key(digest) {
            return Ok(None);
        }
        self.blobs.read(digest)
    }

    fn module_file(&self, digest: &str) -> Result<Option<PathBuf>, StoreError> {
        check_digest(digest)?;
        if !self.mirror().infos.contains_key(digest) {
            return Ok(None);
        }
        self.blobs.verify(digest)
    }

    fn module_info(&self, digest: &str) -> Result<Option<ModuleInfo>, StoreError> {
        check_digest(digest)?;
        let mirror = self.mirror();
        mirror.infos.get(digest).map(|bytes| self.decode_info(digest, bytes)).transpose()
    }

    fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError> {
        let mirror = self.mirror();
        mirror.infos.iter().map(|(digest, bytes)| self.decode_info(digest, bytes)).collect()
    }

    fn delete_module(&self, digest: &str) -> Result<bool, StoreError> {
        check_digest(digest)?;
        let _writer = self.lock_writer();
        let removed = self.write_record(MODULE_INFO, digest, None, format_args!("deleting module {digest}"))?;
        let file = self.blobs.remove(digest)?;
        Ok(removed || file)
    }

    fn compact(&self) -> Result<(), StoreError> {
        let _writer = self.lock_writer();
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
