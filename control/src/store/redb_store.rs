//! [`RedbStore`]: the [`Store`] in one redb file.
//!
//! The layout, the schema versioning and the choice of redb are documented
//! on [`RedbStore`].

use std::fmt::Display;
use std::path::{Path, PathBuf};

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition, TableHandle,
};
use shoal_api::{ModuleInfo, ServiceRecord, now_unix};

use super::{Store, StoreError, check_digest, sha256_hex};

/// The schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;

const META: TableDefinition<'_, &str, u32> = TableDefinition::new("meta");
const SERVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("services");
const MODULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("modules");
const MODULE_INFO: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("module_info");
const SCHEMA_KEY: &str = "schema_version";

/// A [`Store`] in one redb database file.
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
/// | table | key | value |
/// |---|---|---|
/// | `meta` | `&str` | `u32`; `"schema_version"` → [`SCHEMA_VERSION`] |
/// | `services` | `&str` service name | `&[u8]`: [`ServiceRecord`] as JSON |
/// | `modules` | `&str` digest (lowercase hex sha256) | `&[u8]`: the component's bytes |
/// | `module_info` | `&str` digest | `&[u8]`: [`ModuleInfo`] as JSON |
///
/// Records are JSON so that a later schema can add fields with defaults
/// without a migration; the schema version changes only when a layout change
/// would make an older Shoal misread the file. [`RedbStore::open`] refuses
/// a file whose version is newer than [`SCHEMA_VERSION`] (without changing
/// it) and will migrate older ones in place once there are any.
///
/// Every open checks the integrity of the whole file (redb's
/// `set_check_integrity_on_open`: page checksums, allocator state), so a
/// damaged file is reported as [`StoreError::Corrupt`] rather than trusted.
/// A plain open trusts a cleanly closed file and may panic on one altered
/// behind redb's back (single flipped bytes did, in our tests). The check
/// reads the whole file once per open, which is cheap next to compiling the
/// modules in it.
///
/// # Locking
///
/// The file is locked while the store is open: a second open, from this
/// process or another, fails with [`StoreError::Locked`]. Dropping the store
/// closes the file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating it (and its parent directories)
    /// if it does not exist.
    ///
    /// Errors: [`StoreError::Corrupt`] for a file that is not a Shoal store
    /// or is damaged, [`StoreError::NewerSchema`] for one written by a newer
    /// Shoal, [`StoreError::Locked`] while another handle has it open,
    /// [`StoreError::Backend`] for IO errors (permissions, …).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let backend =
            |what: &str, err: &dyn Display| StoreError::Backend { detail: format!("{what} {}: {err}", path.display()) };
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| backend("creating the directory of", &err))?;
        }
        let corrupt = |detail: String| StoreError::Corrupt { path: path.to_owned(), detail };
        let db = Builder::new().set_check_integrity_on_open(true).create(path).map_err(|err| match err {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                StoreError::Locked { path: path.to_owned() }
            }
            DatabaseError::Storage(StorageError::Io(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
                corrupt(io.to_string())
            }
            DatabaseError::Storage(StorageError::Corrupted(detail)) => corrupt(detail),
            DatabaseError::UpgradeRequired(format) => corrupt(format!("an old redb file format ({format})")),
            DatabaseError::RepairAborted => corrupt("it needs a repair, which was aborted".to_owned()),
            other => backend("opening", &other),
        })?;
        let store = RedbStore { db, path: path.to_owned() };
        store.init_schema()?;
        Ok(store)
    }

    /// The file this store is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the schema version, writing it (and creating the tables) in a
    /// new store. One write transaction: a refused file is left unchanged.
    fn init_schema(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().or_fail(self, "beginning a write")?;
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
                // SCHEMA_VERSION itself; older versions get migrated here.
                Some(_) => {}
            }
            for table in [SERVICES, MODULES, MODULE_INFO] {
                txn.open_table(table).or_fail(self, format_args!("opening table {}", table.name()))?;
            }
        }
        txn.commit().or_fail(self, "committing the schema")
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
}

/// Maps a redb error to a [`StoreError`] naming what was being done.
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
            err => StoreError::Backend { detail: format!("{what} in {}: {err}", store.path.display()) },
        })
    }
}

impl Store for RedbStore {
    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let txn = self.db.begin_read().or_fail(self, "beginning a read")?;
        let table = txn.open_table(SERVICES).or_fail(self, "opening table services")?;
        let mut records = Vec::new();
        for entry in table.iter().or_fail(self, "listing services")? {
            let (name, bytes) = entry.or_fail(self, "listing services")?;
            records.push(self.decode_service(name.value(), bytes.value())?);
        }
        Ok(records)
    }

    fn service(&self, name: &str) -> Result<Option<ServiceRecord>, StoreError> {
        let txn = self.db.begin_read().or_fail(self, "beginning a read")?;
        let table = txn.open_table(SERVICES).or_fail(self, "opening table services")?;
        let found = table.get(name).or_fail(self, format_args!("reading service {name:?}"))?;
        found.map(|bytes| self.decode_service(name, bytes.value())).transpose()
    }

    fn put_service(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        let name = record.service.name.as_str();
        let json = self.encode(record)?;
        let txn = self.db.begin_write().or_fail(self, "beginning a write")?;
        {
            let mut table = txn.open_table(SERVICES).or_fail(self, "opening table services")?;
            table.insert(name, json.as_slice()).or_fail(self, format_args!("writing service {name:?}"))?;
        }
        txn.commit().or_fail(self, format_args!("committing service {name:?}"))
    }

    fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().or_fail(self, "beginning a write")?;
        let removed = {
            let mut table = txn.open_table(SERVICES).or_fail(self, "opening table services")?;
            table.remove(name).or_fail(self, format_args!("deleting service {name:?}"))?.is_some()
        };
        if removed {
            txn.commit().or_fail(self, format_args!("committing the deletion of service {name:?}"))?;
        }
        // Otherwise dropping the transaction aborts it: nothing to sync.
        Ok(removed)
    }

    fn put_module(&self, bytes: &[u8]) -> Result<ModuleInfo, StoreError> {
        let digest = sha256_hex(bytes);
        let key = digest.as_str();
        let txn = self.db.begin_write().or_fail(self, "beginning a write")?;
        let (info, changed) = {
            let mut blobs = txn.open_table(MODULES).or_fail(self, "opening table modules")?;
            let mut infos = txn.open_table(MODULE_INFO).or_fail(self, "opening table module_info")?;
            let what = format_args!("reading module {digest}");
            let blob_ok = blobs.get(key).or_fail(self, what)?.is_some_and(|blob| blob.value() == bytes);
            // An existing info keeps its creation time; one that does not
            // decode is replaced, since these bytes say what is true.
            let old = infos.get(key).or_fail(self, what)?.and_then(|v| self.decode_info(key, v.value()).ok());
            let size = bytes.len() as u64;
            let created_unix = old.as_ref().map_or_else(now_unix, |old| old.created_unix);
            let info = ModuleInfo { digest: digest.clone(), size, created_unix };
            let changed = !blob_ok || old.as_ref() != Some(&info);
            if !blob_ok {
                blobs.insert(key, bytes).or_fail(self, format_args!("writing module {digest}"))?;
            }
            if old.as_ref() != Some(&info) {
                let json = self.encode(&info)?;
                infos.insert(key, json.as_slice()).or_fail(self, format_args!("writing module {digest}"))?;
            }
            (info, changed)
        };
        if changed {
            txn.commit().or_fail(self, format_args!("committing module {digest}"))?;
        }
        Ok(info)
    }

    fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_digest(digest)?;
        let txn = self.db.begin_read().or_fail(self, "beginning a read")?;
        let table = txn.open_table(MODULES).or_fail(self, "opening table modules")?;
        let Some(blob) = table.get(digest).or_fail(self, format_args!("reading module {digest}"))? else {
            return Ok(None);
        };
        let bytes = blob.value().to_vec();
        let actual = sha256_hex(&bytes);
        if actual != digest {
            return Err(StoreError::Tampered { digest: digest.to_owned(), actual });
        }
        Ok(Some(bytes))
    }

    fn module_info(&self, digest: &str) -> Result<Option<ModuleInfo>, StoreError> {
        check_digest(digest)?;
        let txn = self.db.begin_read().or_fail(self, "beginning a read")?;
        let table = txn.open_table(MODULE_INFO).or_fail(self, "opening table module_info")?;
        let found = table.get(digest).or_fail(self, format_args!("reading module {digest}"))?;
        found.map(|bytes| self.decode_info(digest, bytes.value())).transpose()
    }

    fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError> {
        let txn = self.db.begin_read().or_fail(self, "beginning a read")?;
        let table = txn.open_table(MODULE_INFO).or_fail(self, "opening table module_info")?;
        let mut infos = Vec::new();
        for entry in table.iter().or_fail(self, "listing modules")? {
            let (digest, bytes) = entry.or_fail(self, "listing modules")?;
            infos.push(self.decode_info(digest.value(), bytes.value())?);
        }
        Ok(infos)
    }

    fn delete_module(&self, digest: &str) -> Result<bool, StoreError> {
        check_digest(digest)?;
        let txn = self.db.begin_write().or_fail(self, "beginning a write")?;
        let removed = {
            let what = format_args!("deleting module {digest}");
            let mut blobs = txn.open_table(MODULES).or_fail(self, "opening table modules")?;
            let mut infos = txn.open_table(MODULE_INFO).or_fail(self, "opening table module_info")?;
            let blob = blobs.remove(digest).or_fail(self, what)?.is_some();
            let info = infos.remove(digest).or_fail(self, what)?.is_some();
            blob || info
        };
        if removed {
            txn.commit().or_fail(self, format_args!("committing the deletion of module {digest}"))?;
        }
        Ok(removed)
    }
}
