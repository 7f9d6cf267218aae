//! Applying a service: create it, replace it, or leave it as it is, the
//! way `kubectl apply` does. Shared by the admin API and `shoal up -f`.

use shoal_api::Service;
use shoal_api::objects::{PreviousRevision, ServiceRecord, now_unix};

use crate::store::{Expect, Store, StoreError};

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

impl Applied {
    /// As kubectl prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        }
    }
}

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The module has not been uploaded.
    #[error("module sha256:{0} is not in the store; upload it first (shoal push, or shoal apply which uploads it)")]
    UnknownModule(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Goes back to the previous revision of service `name` (`shoal rollout
/// undo`): its manifest and module, at the current replica count; the
/// revision it leaves becomes the previous one, so a second undo comes
/// back. `Ok(None)` when the service has no previous revision.
pub fn roll_back(store: &dyn Store, name: &str) -> Result<Option<(Applied, ServiceRecord)>, ApplyError> {
    let Some(current) = store.service(name)? else { return Ok(None) };
    let Some(previous) = current.previous.clone() else { return Ok(None) };
    let mut service = previous.service;
    service.spec.replicas = current.service.spec.replicas;
    service.resource_version = Some(current.resource_version);
    apply(store, service, &previous.module_digest).map(Some)
}

/// How many times an apply that lost a race to another write reads the
/// service again and retries, when it did not name a `resourceVersion`.
const RETRIES: usize = 8;

/// Stores `service` running the module `digest`. Re-applying the same spec
/// and module changes nothing (the path the module was applied from does
/// not count); any other change bumps the generation.
///
/// With `service.resource_version` (`metadata.resourceVersion`), the apply is refused with
/// [`StoreError::Conflict`] unless the stored service is at exactly that
/// version (it must exist). Without it, an apply that races another write
/// of the same service reads it again and retries, so the last apply wins
/// and no generation is skipped or repeated.
pub fn apply(store: &dyn Store, mut service: Service, digest: &str) -> Result<(Applied, ServiceRecord), ApplyError> {
    let resource_version = service.resource_version.take();
    if store.module_info(digest)?.is_none() {
        return Err(ApplyError::UnknownModule(digest.to_owned()));
    }
    let key = || format!("{}{}", crate::store::SERVICES, service.name);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let existing = store.service(&service.name)?;
        if let Some(wanted) = resource_version {
            let current = existing.as_ref().map(|existing| existing.resource_version);
            if current != Some(wanted) {
                return Err(StoreError::Conflict { key: key(), expected: Expect::Revision(wanted), current }.into());
            }
        }
        let now = now_unix();
        let (applied, record, expect) = match existing {
            Some(existing) => {
                let mut same = existing.service.clone();
                same.spec.module = service.spec.module.clone();
                same.spec.module_field = service.spec.module_field.clone();
                if same == service && existing.module_digest == digest {
                    return Ok((Applied::Unchanged, existing));
                }
                let mut record = ServiceRecord {
                    service: service.clone(),
                    module_digest: digest.to_owned(),
                    generation: existing.generation + 1,
                    created_unix: existing.created_unix,
                    updated_unix: now,
                    resource_version: 0,
                    previous: existing.previous.clone(),
                };
                // A new revision: the one it replaces is the one to go
                // back to.
                if record.revision() != existing.revision() {
                    record.previous = Some(Box::new(PreviousRevision {
                        service: existing.service.clone(),
                        module_digest: existing.module_digest.clone(),
                    }));
                }
                (Applied::Configured, record, Expect::Revision(existing.resource_version))
            }
            None => {
                let record = ServiceRecord {
                    service: service.clone(),
                    module_digest: digest.to_owned(),
                    generation: 1,
                    created_unix: now,
                    updated_unix: now,
                    resource_version: 0,
                    previous: None,
                };
                (Applied::Created, record, Expect::Absent)
            }
        };
        match store.put_service(&record, expect) {
            Ok(version) => return Ok((applied, ServiceRecord { resource_version: version, ..record })),
            Err(StoreError::Conflict { .. }) if resource_version.is_none() && attempt < RETRIES => continue,
            Err(error) => return Err(error.into()),
        }
    }
}
