//! [`KvStore`]: the [`Store`] over any [`Kv`], with module files beside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_api::{ModuleInfo, ServiceRecord, now_unix};

use super::kv::{Entry, Expect, Kv};
use super::local::LocalKv;
use super::{Blobs, CertificateRecord, ModuleUpload, StagedModule, Store, StoreError, check_digest};

/// Where services are kept: `services/<name>` → [`ServiceRecord`] as JSON.
pub const SERVICES: &str = "services/";
/// Where module infos are kept: `modules/<digest>` → [`ModuleInfo`] as JSON.
pub const MODULES: &str = "modules/";
/// Where certificates are kept: `certificates/<host>` →
/// [`CertificateRecord`] as JSON.
pub const CERTIFICATES: &str = "certificates/";

/// The [`Store`]: records as JSON under [`SERVICES`] and [`MODULES`] in a
/// [`Kv`], module bytes as files ([`Blobs`]).
///
/// A service's `resourceVersion` is the `mod_revision` of its key: it is
/// filled in on every read and never stored in the record.
pub struct KvStore {
    kv: Arc<dyn Kv>,
    blobs: Blobs,
    location: PathBuf,
    /// A directory of its own to remove on drop ([`KvStore::memory`]).
    scratch: Option<PathBuf>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").field("location", &self.location).finish_non_exhaustive()
    }
}

impl Drop for KvStore {
    fn drop(&mut self) {
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl KvStore {
    /// The store in the redb file at `path` (created with its parent
    /// directories if missing), module files in `modules/` beside it. See
    /// [`RedbDisk`](super::redb_store::RedbDisk) for the layout and errors.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let kv = LocalKv::open(path)?;
        let dir = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let store = KvStore::new(Arc::new(kv), Blobs::new(dir.join("modules")), path.to_owned());
        store.blobs.clean_staging();
        store.remove_orphan_files()?;
        Ok(store)
    }

    /// An empty store in memory, module files in a temporary directory
    /// removed on drop. Nothing survives it: for tests of other components.
    pub fn memory() -> Self {
        use rand::Rng as _;
        let tag: u64 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!("shoal-memory-store-{}-{tag:016x}", std::process::id()));
        let mut store = KvStore::new(Arc::new(LocalKv::memory()), Blobs::new(dir.join("modules")), "memory".into());
        store.scratch = Some(dir);
        store
    }

    /// The store over `kv`, module files in `blobs`; `location` names it in
    /// errors.
    pub fn new(kv: Arc<dyn Kv>, blobs: Blobs, location: PathBuf) -> Self {
        KvStore { kv, blobs, location, scratch: None }
    }

    /// The file (or `memory`, or etcd's endpoints) errors name.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// The key-value store under this one.
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// The directory of module files.
    pub fn modules_dir(&self) -> &Path {
        self.blobs.dir()
    }

    /// Module files without a record: uploads whose record was never
    /// committed (a crash, a full disk). Removed at open.
    fn remove_orphan_files(&self) -> Result<(), StoreError> {
        let known = self.kv.list(MODULES)?.entries;
        for digest in self.blobs.digests() {
            if !known.iter().any(|entry| entry.key[MODULES.len()..] == digest) {
                let _ = self.blobs.remove(&digest);
            }
        }
        Ok(())
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt { path: self.location.clone(), detail }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, entry: &Entry) -> Result<T, StoreError> {
        serde_json::from_slice(&entry.value)
            .map_err(|err| self.corrupt(format!("{:?} does not decode: {err}", entry.key)))
    }

    fn decode_service(&self, entry: &Entry) -> Result<ServiceRecord, StoreError> {
        let mut record: ServiceRecord = self.decode(entry)?;
        let name = &entry.key[SERVICES.len()..];
        if record.service.name != name {
            return Err(self.corrupt(format!("{:?} holds service {:?}", entry.key, record.service.name)));
        }
        record.resource_version = entry.mod_revision;
        Ok(record)
    }

    fn decode_info(&self, entry: &Entry) -> Result<ModuleInfo, StoreError> {
        let info: ModuleInfo = self.decode(entry)?;
        if info.digest != entry.key[MODULES.len()..] {
            return Err(self.corrupt(format!("{:?} holds the info of {:?}", entry.key, info.digest)));
        }
        Ok(info)
    }

    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|err| StoreError::Backend { detail: format!("encoding a record: {err}") })
    }

    fn has_module(&self, digest: &str) -> Result<bool, StoreError> {
        check_digest(digest)?;
        Ok(self.kv.get(&format!("{MODULES}{digest}"))?.is_some())
    }
}

impl Store for KvStore {
    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        self.kv.list(SERVICES)?.entries.iter().map(|entry| self.decode_service(entry)).collect()
    }

    fn revision(&self) -> Result<u64, StoreError> {
        self.kv.revision()
    }

    fn service(&self, name: &str) -> Result<Option<ServiceRecord>, StoreError> {
        self.kv.get(&format!("{SERVICES}{name}"))?.map(|entry| self.decode_service(&entry)).transpose()
    }

    fn put_service(&self, record: &ServiceRecord, expect: Expect) -> Result<u64, StoreError> {
        let stored = ServiceRecord { resource_version: 0, ..record.clone() };
        let json = self.encode(&stored)?;
        self.kv.put(&format!("{SERVICES}{}", record.service.name), &json, expect)
    }

    fn delete_service(&self, name: &str, expect: Expect) -> Result<bool, StoreError> {
        Ok(self.kv.delete(&format!("{SERVICES}{name}"), expect)?.is_some())
    }

    fn begin_module(&self) -> Result<ModuleUpload, StoreError> {
        self.blobs.begin()
    }

    fn commit_module(&self, mut staged: StagedModule) -> Result<ModuleInfo, StoreError> {
        let digest = staged.digest().to_owned();
        let key = format!("{MODULES}{digest}");
        let current = self.kv.get(&key)?;
        self.blobs.install(&mut staged)?;
        // An existing info keeps its creation time; one that does not
        // decode is replaced, since these bytes say what is true.
        let old = current.as_ref().and_then(|entry| self.decode_info(entry).ok());
        let created_unix = old.as_ref().map_or_else(now_unix, |old| old.created_unix);
        let info = ModuleInfo { digest: digest.clone(), size: staged.size(), created_unix };
        if old.as_ref() != Some(&info) {
            let expect = current.as_ref().map_or(Expect::Absent, |entry| Expect::Revision(entry.mod_revision));
            if let Err(error) = self.kv.put(&key, &self.encode(&info)?, expect) {
                // Nothing names the file: it goes, so the space comes back.
                if current.is_none() && !matches!(error, StoreError::Conflict { .. }) {
                    let _ = self.blobs.remove(&digest);
                }
                return Err(error);
            }
        }
        Ok(info)
    }

    fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.has_module(digest)? {
            return Ok(None);
        }
        self.blobs.read(digest)
    }

    fn module_file(&self, digest: &str) -> Result<Option<PathBuf>, StoreError> {
        if !self.has_module(digest)? {
            return Ok(None);
        }
        self.blobs.verify(digest)
    }

    fn sweep_module_files(&self, grace: std::time::Duration) -> Result<Vec<String>, StoreError> {
        let known = self.kv.list(MODULES)?.entries;
        let mut removed = Vec::new();
        for digest in self.blobs.digests() {
            if known.iter().any(|entry| entry.key[MODULES.len()..] == digest) {
                continue;
            }
            let age = std::fs::metadata(self.blobs.path(&digest))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok());
            if age.is_some_and(|age| age >= grace) && self.blobs.remove(&digest)? {
                removed.push(digest);
            }
        }
        Ok(removed)
    }

    fn has_module_file(&self, digest: &str) -> bool {
        check_digest(digest).is_ok() && self.blobs.path(digest).is_file()
    }

    fn module_info(&self, digest: &str) -> Result<Option<ModuleInfo>, StoreError> {
        check_digest(digest)?;
        self.kv.get(&format!("{MODULES}{digest}"))?.map(|entry| self.decode_info(&entry)).transpose()
    }

    fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError> {
        self.kv.list(MODULES)?.entries.iter().map(|entry| self.decode_info(entry)).collect()
    }

    fn delete_module(&self, digest: &str) -> Result<bool, StoreError> {
        check_digest(digest)?;
        let removed = self.kv.delete(&format!("{MODULES}{digest}"), Expect::Any)?.is_some();
        let file = self.blobs.remove(digest)?;
        Ok(removed || file)
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        let entries = self.kv.list(CERTIFICATES)?.entries;
        entries
            .iter()
            .map(|entry| {
                let record: CertificateRecord = self.decode(entry)?;
                if record.host != entry.key[CERTIFICATES.len()..] {
                    return Err(self.corrupt(format!("{:?} holds the certificate of {:?}", entry.key, record.host)));
                }
                Ok(record)
            })
            .collect()
    }

    fn put_certificate(&self, record: &CertificateRecord) -> Result<u64, StoreError> {
        self.kv.put(&format!("{CERTIFICATES}{}", record.host), &self.encode(record)?, Expect::Any)
    }

    fn delete_certificate(&self, host: &str) -> Result<bool, StoreError> {
        Ok(self.kv.delete(&format!("{CERTIFICATES}{host}"), Expect::Any)?.is_some())
    }

    fn compact(&self) -> Result<(), StoreError> {
        self.kv.reclaim()
    }

    fn release(&self) {
        self.kv.release();
    }
}
