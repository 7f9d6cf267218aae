//! Applying a service: create it, replace it, or leave it as it is, the
//! way `kubectl apply` does. Shared by the admin API and `shoal up -f`.

use shoal_api::Service;
use shoal_api::objects::{ServiceRecord, now_unix};

use crate::store::{Store, StoreError};

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

/// Stores `service` running the module `digest`. Re-applying the same spec
/// and module changes nothing (the path the module was applied from does
/// not count); any other change bumps the generation.
pub fn apply(store: &dyn Store, service: Service, digest: &str) -> Result<(Applied, ServiceRecord), ApplyError> {
    if store.module_info(digest)?.is_none() {
        return Err(ApplyError::UnknownModule(digest.to_owned()));
    }
    let now = now_unix();
    let (applied, record) = match store.service(&service.name)? {
        Some(existing) => {
            let mut same = existing.service.clone();
            same.spec.module = service.spec.module.clone();
            same.spec.module_field = service.spec.module_field.clone();
            if same == service && existing.module_digest == digest {
                return Ok((Applied::Unchanged, existing));
            }
            let record = ServiceRecord {
                service,
                module_digest: digest.to_owned(),
                generation: existing.generation + 1,
                created_unix: existing.created_unix,
                updated_unix: now,
            };
            (Applied::Configured, record)
        }
        None => {
            let record = ServiceRecord {
                service,
                module_digest: digest.to_owned(),
                generation: 1,
                created_unix: now,
                updated_unix: now,
            };
            (Applied::Created, record)
        }
    };
    store.put_service(&record)?;
    Ok((applied, record))
}
