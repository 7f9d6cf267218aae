//! Durable desired state: the [`Store`] trait and its implementations.
//!
//! The control plane keeps three kinds of objects:
//!
//! * **services** ([`ServiceRecord`]), keyed by name: the applied manifest,
//!   the digest of its module and the bookkeeping around it (generation,
//!   times);
//! * **modules**: Wasm components, keyed by the lowercase hex sha256 of
//!   their bytes, with a small [`ModuleInfo`] beside each. The bytes are
//!   files ([`Blobs`]: `modules/<sha256>.wasm` beside the store), written
//!   as they arrive, so that storing a module costs no memory in proportion
//!   to its size and deleting one gives its space back at once;
//! * **certificates** ([`CertificateRecord`]), keyed by host: the PEM chain
//!   and private key the gateway's TLS listener serves for that host. The
//!   key is kept as given (as Kubernetes keeps a TLS Secret in etcd) and is
//!   never sent by any API.
//!
//! # The contract
//!
//! * **Atomic writes.** Every write method is one transaction: after it
//!   returns `Ok` the change is durable, and a crash leaves either the old or
//!   the new state, never a mix. A module's file is complete before its
//!   info is recorded, so an info never names a partial file.
//! * **Reads see the last committed write** of this store handle, and keep
//!   working when writes fail (a full disk): they are served from what was
//!   committed.
//! * **A failed write leaves the store usable.** A full disk is
//!   [`StoreError::DiskFull`], naming the directory; the next write after
//!   space is freed succeeds, without a restart.
//! * **Content addressing.** A module's key is the sha256 of its bytes,
//!   computed by the store while they are written ([`Store::begin_module`]),
//!   so the same bytes are stored once and the key says what the content
//!   is. Storing the same bytes again changes nothing and returns the same
//!   [`ModuleInfo`] (with the time of the first put).
//! * **Verification.** [`Store::module`] and [`Store::module_file`] hash
//!   the bytes they read and return [`StoreError::Tampered`] if they do not
//!   match the digest, so a file edited outside Shoal is noticed before a
//!   modified component runs. Storing the right bytes again repairs it.
//! * **Orderly listings.** [`Store::services`] is sorted by name,
//!   [`Store::modules`] by digest.
//! * **Digests are checked**: a digest that is not 64 lowercase hex
//!   characters is [`StoreError::InvalidDigest`], whether or not anything is
//!   stored under it.
//!
//! * **Optimistic concurrency.** A service read from the store carries its
//!   `resourceVersion` (the revision of its last change); a write may
//!   require it ([`Expect`]), and fails with [`StoreError::Conflict`],
//!   changing nothing, if another write came first.
//!
//! The store is built in two layers. [`Kv`] is the revisioned key-value
//! contract (get with revision, put and delete with a precondition, list at
//! a revision, watch from a revision): etcd's model, kept by the embedded
//! [`LocalKv`] (memory, or a redb file: [`RedbDisk`](redb_store::RedbDisk))
//! and by [`EtcdKv`]. [`KvStore`] keeps services and module infos in any of
//! them as JSON records, and module bytes as files beside ([`Blobs`]):
//! module bytes stay out of the key-value store (etcd limits a value to
//! 1.5 MiB by default). The methods block; callers in async code use
//! `spawn_blocking` or accept the short wait.
//!
//! # Implementations
//!
//! * [`KvStore::open`]: a redb file on disk, module files beside it; the
//!   store `shoal up` runs on alone.
//! * [`KvStore::new`] over an [`EtcdKv`]: the store of a cluster.
//! * [`KvStore::memory`]: for unit tests of other components. Nothing
//!   survives it.

mod blobs;
mod error;
mod etcd_kv;
pub mod kv;
mod kv_store;
mod local;
pub mod redb_store;

use std::path::PathBuf;

use sha2::{Digest, Sha256};
pub use shoal_api::{ModuleInfo, ServiceRecord};

pub use blobs::{Blobs, ModuleUpload, StagedModule, is_disk_full};
pub use error::StoreError;
pub use etcd_kv::EtcdKv;
pub use kv::{Entry, Event, Expect, Kv, Listing, Watch, WatchItem};
pub use kv_store::{CERTIFICATES, KvStore, MODULES, SERVICES};
pub use local::{HISTORY, LocalKv};
pub use redb_store::SCHEMA_VERSION;

/// A host's certificate as stored: what `shoal tls add` uploaded.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertificateRecord {
    /// The host, lowercased, or a `*.` wildcard.
    pub host: String,
    /// The certificate chain, leaf first, as PEM.
    pub cert_pem: String,
    /// Its private key, as PEM. Never printed, never returned by an API.
    pub key_pem: String,
    /// When it was stored (Unix seconds).
    pub created_unix: u64,
}

impl std::fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRecord")
            .field("host", &self.host)
            .field("created_unix", &self.created_unix)
            .finish_non_exhaustive()
    }
}

/// Durable desired state: services and the modules they run.
///
/// See the [module documentation](self) for the contract every
/// implementation keeps. The trait is object safe; components hold an
/// `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Every service, sorted by name.
    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError>;

    /// A number that changes whenever anything stored changes (the
    /// revision of the last write): while it stays, [`Store::services`]
    /// answers the same.
    fn revision(&self) -> Result<u64, StoreError>;

    /// The service named `name`, if there is one.
    fn service(&self, name: &str) -> Result<Option<ServiceRecord>, StoreError>;

    /// Creates or replaces the service `record.service.name`, atomically,
    /// if `expect` holds of the stored one ([`StoreError::Conflict`] if not;
    /// `record.resource_version` is not looked at). Returns the new
    /// `resourceVersion`.
    fn put_service(&self, record: &ServiceRecord, expect: Expect) -> Result<u64, StoreError>;

    /// Deletes the service `name` if `expect` holds; `false` if there was
    /// none.
    fn delete_service(&self, name: &str, expect: Expect) -> Result<bool, StoreError>;

    /// Starts storing a module: its bytes are written to a staging file
    /// and hashed as they come; [`ModuleUpload::finish`], then
    /// [`Store::commit_module`], store it.
    fn begin_module(&self) -> Result<ModuleUpload, StoreError>;

    /// Stores a staged module under its digest: its file moves into place,
    /// then its info is recorded, in one transaction. Idempotent: the same
    /// bytes give the same info, with the `created_unix` of the first put.
    fn commit_module(&self, staged: StagedModule) -> Result<ModuleInfo, StoreError>;

    /// Stores `bytes` as a module ([`Store::begin_module`], one write,
    /// [`Store::commit_module`]).
    fn put_module(&self, bytes: &[u8]) -> Result<ModuleInfo, StoreError> {
        let mut upload = self.begin_module()?;
        upload.write(bytes)?;
        self.commit_module(upload.finish()?)
    }

    /// The bytes of module `digest`, if stored, after checking that they
    /// hash to `digest` ([`StoreError::Tampered`] if not).
    fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The file of module `digest`, if stored, after checking that its
    /// content hashes to `digest` (read in pieces: memory does not grow with
    /// its size).
    fn module_file(&self, digest: &str) -> Result<Option<PathBuf>, StoreError>;

    /// Whether this store holds the file of module `digest` (without
    /// checking its content). In a cluster a module's record may be stored
    /// where its file is not yet: it was pushed to another node.
    fn has_module_file(&self, digest: &str) -> bool {
        matches!(self.module_file(digest), Ok(Some(_)))
    }

    /// Removes the module files that have no record and were last written
    /// longer than `grace` ago (in a cluster: modules another node
    /// deleted); returns their digests. The grace spares an upload between
    /// its file and its record.
    fn sweep_module_files(&self, grace: std::time::Duration) -> Result<Vec<String>, StoreError> {
        let _ = grace;
        Ok(Vec::new())
    }

    /// The info of module `digest`, if stored.
    fn module_info(&self, digest: &str) -> Result<Option<ModuleInfo>, StoreError>;

    /// The info of every module, sorted by digest.
    fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError>;

    /// Deletes module `digest` (info and file); `false` if there was none.
    fn delete_module(&self, digest: &str) -> Result<bool, StoreError>;

    /// Every host's certificate, sorted by host.
    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Stores `record` as its host's certificate, replacing any; returns
    /// the store's revision after the write.
    fn put_certificate(&self, record: &CertificateRecord) -> Result<u64, StoreError>;

    /// Deletes the certificate of `host`; `false` if there was none.
    fn delete_certificate(&self, host: &str) -> Result<bool, StoreError>;

    /// Gives back the space deleted records took, where the backend keeps
    /// it (redb: a compaction). Module files need none: deleting one frees
    /// its space at once.
    fn compact(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Closes the store for good so that another `shoal up` may open it
    /// (a handover): reads go on, writes fail.
    fn release(&self) {}
}

/// The sha256 of `bytes` as lowercase hex: a module's digest.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Checks that `digest` looks like a module digest: 64 lowercase hex
/// characters.
pub(crate) fn check_digest(digest: &str) -> Result<(), StoreError> {
    let hex = |byte: u8| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
    if digest.len() == 64 && digest.bytes().all(hex) {
        Ok(())
    } else {
        Err(StoreError::InvalidDigest(digest.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn digests_are_checked() {
        assert!(check_digest(&sha256_hex(b"")).is_ok());
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(63), &"a".repeat(65), "../etc/passwd"] {
            let err = check_digest(bad).unwrap_err();
            assert!(matches!(&err, StoreError::InvalidDigest(d) if d == bad), "{bad}: {err}");
        }
        assert_eq!(
            check_digest("xyz").unwrap_err().to_string(),
            r#""xyz" is not a module digest (expected a sha256 as 64 lowercase hex characters)"#
        );
    }
}
