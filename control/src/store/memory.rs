//! [`MemoryStore`]: the [`Store`] contract in memory, for tests of other
//! components.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use shoal_api::{ModuleInfo, ServiceRecord, now_unix};

use super::{Blobs, ModuleUpload, StagedModule, Store, StoreError, check_digest};

/// A [`Store`] in memory: ordered maps behind one mutex, and module files in
/// a temporary directory removed on drop.
///
/// Each method holds the mutex for its whole operation, so writes are atomic
/// as the trait requires. Nothing is durable.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    blobs: Blobs,
}

#[derive(Debug, Default)]
struct State {
    services: BTreeMap<String, ServiceRecord>,
    modules: BTreeMap<String, ModuleInfo>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        use rand::Rng as _;
        let tag: u64 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!("shoal-memory-store-{}-{tag:016x}", std::process::id()));
        Self { state: Mutex::default(), blobs: Blobs::new(dir.join("modules")) }
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        if let Some(dir) = self.blobs.dir().parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every method leaves the maps consistent before it could panic, so
        // a poisoned lock still guards valid state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        Ok(self.state().services.values().cloned().collect())
    }

    fn service(&self, name: &str) -> Result<Option<ServiceRecord>, StoreError> {
        Ok(self.state().services.get(name).cloned())
    }

    fn put_service(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        self.state().services.insert(record.service.name.clone(), record.clone());
        Ok(())
    }

    fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.state().services.remove(name).is_some())
    }

    fn begin_module(&self) -> Result<ModuleUpload, StoreError> {
        self.blobs.begin()
    }

    fn commit_module(&self, mut staged: StagedModule) -> Result<ModuleInfo, StoreError> {
        let mut state = self.state();
        self.blobs.install(&mut staged)?;
        let digest = staged.digest().to_owned();
        let info = state.modules.entry(digest.clone()).or_insert_with(|| ModuleInfo {
            digest,
            size: staged.size(),
            created_unix: now_unix(),
        });
        Ok(info.clone())
    }

    fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_digest(digest)?;
        if !self.state().modules.contains_key(digest) {
            return Ok(None);
        }
        self.blobs.read(digest)
    }

    fn module_file(&self, digest: &str) -> Result<Option<PathBuf>, StoreError> {
        check_digest(digest)?;
        if !self.state().modules.contains_key(digest) {
            return Ok(None);
        }
        self.blobs.verify(digest)
    }

    fn module_info(&self, digest: &str) -> Result<Option<ModuleInfo>, StoreError> {
        check_digest(digest)?;
        Ok(self.state().modules.get(digest).cloned())
    }

    fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError> {
        Ok(self.state().modules.values().cloned().collect())
    }

    fn delete_module(&self, digest: &str) -> Result<bool, StoreError> {
        check_digest(digest)?;
        let mut state = self.state();
        let removed = state.modules.remove(digest).is_some();
        self.blobs.remove(digest)?;
        Ok(removed)
    }
}
