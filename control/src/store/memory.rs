//! [`MemoryStore`]: the [`Store`] contract in memory, for tests of other
//! components.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use shoal_api::{ModuleInfo, ServiceRecord, now_unix};

use super::{Store, StoreError, check_digest, sha256_hex};

/// A [`Store`] in memory: ordered maps behind one mutex.
///
/// Each method holds the mutex for its whole operation, so writes are atomic
/// as the trait requires. Nothing is durable, and stored modules cannot be
/// tampered with (the bytes are only reachable through [`Store::put_module`]),
/// so [`StoreError::Tampered`] never happens here.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    services: BTreeMap<String, ServiceRecord>,
    modules: BTreeMap<String, (ModuleInfo, Vec<u8>)>,
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

    fn put_module(&self, bytes: &[u8]) -> Result<ModuleInfo, StoreError> {
        let digest = sha256_hex(bytes);
        let mut state = self.state();
        let (info, _) = state.modules.entry(digest.clone()).or_insert_with(|| {
            let info = ModuleInfo { digest, size: bytes.len() as u64, created_unix: now_unix() };
            (info, bytes.to_vec())
        });
        Ok(info.clone())
    }

    fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_digest(digest)?;
        Ok(self.state().modules.get(digest).map(|(_, bytes)| bytes.clone()))
    }

    fn module_info(&self, digest: &str) -> Result<Option<ModuleInfo>, StoreError> {
        check_digest(digest)?;
        Ok(self.state().modules.get(digest).map(|(info, _)| info.clone()))
    }

    fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError> {
        Ok(self.state().modules.values().map(|(info, _)| info.clone()).collect())
    }

    fn delete_module(&self, digest: &str) -> Result<bool, StoreError> {
        check_digest(digest)?;
        Ok(self.state().modules.remove(digest).is_some())
    }
}
