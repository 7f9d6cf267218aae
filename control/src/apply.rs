//! Applying a service: create it, replace it, or leave it as it is, the
//! way `kubectl apply` does. Shared by the admin API and `shoal up -f`.

use shoal_api::Service;
use shoal_api::objects::{PreviousRevision, REVISION_HISTORY, RevisionEntry, ServiceRecord, now_unix};

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
    /// `rollout undo --to-revision N` named a revision the history does
    /// not hold.
    #[error("revision {0} is not in the service's history (shoal rollout history lists them)")]
    NoSuchRevision(u64),
    /// `rollout undo --to-revision N` named the revision running now.
    #[error("revision {0} is the current one")]
    AlreadyCurrent(u64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Goes back to an earlier revision of service `name` (`shoal rollout
/// undo [--to-revision N]`): revision `to` of its history, or the one
/// before the current; its manifest and module, at the current replica
/// count. The history gains it as a new revision, so a second undo comes
/// back. `Ok(None)` when the service has no earlier revision.
pub fn roll_back(
    store: &dyn Store,
    name: &str,
    to: Option<u64>,
) -> Result<Option<(Applied, ServiceRecord)>, ApplyError> {
    let Some(current) = store.service(name)? else { return Ok(None) };
    let history = history_of(&current);
    let current_number = history.last().map_or(0, |entry| entry.number);
    let (service, digest, note) = match to {
        Some(number) if number == current_number => return Err(ApplyError::AlreadyCurrent(number)),
        Some(number) => {
            let entry =
                history.iter().find(|entry| entry.number == number).ok_or(ApplyError::NoSuchRevision(number))?;
            (entry.service.clone(), entry.module_digest.clone(), format!("rolled back to {number}"))
        }
        None => match (history.len(), current.previous.as_deref()) {
            (2.., _) => {
                let entry = &history[history.len() - 2];
                (entry.service.clone(), entry.module_digest.clone(), format!("rolled back to {}", entry.number))
            }
            // A service stored before histories were kept.
            (_, Some(previous)) => (previous.service.clone(), previous.module_digest.clone(), "rolled back".to_owned()),
            _ => return Ok(None),
        },
    };
    let mut service = service;
    service.spec.replicas = current.service.spec.replicas;
    service.resource_version = Some(current.resource_version);
    apply_noting(store, service, &digest, Some(note)).map(Some)
}

/// The history of `record`, with an entry for its current revision made up
/// when it was stored before histories were kept.
fn history_of(record: &ServiceRecord) -> Vec<RevisionEntry> {
    if !record.history.is_empty() {
        return record.history.clone();
    }
    vec![RevisionEntry {
        number: 1,
        revision: record.revision(),
        service: record.service.clone(),
        module_digest: record.module_digest.clone(),
        applied_unix: record.updated_unix,
        change: "applied".to_owned(),
    }]
}

/// What differs between two revisions, by the fields that make one.
fn changes(before: &ServiceRecord, after: &ServiceRecord) -> String {
    let (a, b) = (&before.service.spec, &after.service.spec);
    let mut changed = Vec::new();
    if before.module_digest != after.module_digest {
        changed.push(format!("module sha256:{}", &after.module_digest[..after.module_digest.len().min(12)]));
    }
    for (name, differs) in [
        ("env", a.env != b.env),
        ("resources", a.resources != b.resources),
        ("limits", a.limits != b.limits),
        ("instances", a.instances != b.instances),
        ("timeout", a.timeout != b.timeout),
        ("readiness", a.readiness != b.readiness),
        ("liveness", a.liveness != b.liveness),
    ] {
        if differs {
            changed.push(name.to_owned());
        }
    }
    changed.join(", ")
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
pub fn apply(store: &dyn Store, service: Service, digest: &str) -> Result<(Applied, ServiceRecord), ApplyError> {
    apply_noting(store, service, digest, None)
}

/// [`apply`], with what a new revision's history entry says changed
/// (`note`), in place of the fields that differ.
fn apply_noting(
    store: &dyn Store,
    mut service: Service,
    digest: &str,
    note: Option<String>,
) -> Result<(Applied, ServiceRecord), ApplyError> {
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
                    history: existing.history.clone(),
                };
                // A new revision: the one it replaces is the one to go
                // back to, and the history gains it.
                if record.revision() != existing.revision() {
                    record.previous = Some(Box::new(PreviousRevision {
                        service: existing.service.clone(),
                        module_digest: existing.module_digest.clone(),
                    }));
                    let mut history = history_of(&existing);
                    let number = history.last().map_or(0, |entry| entry.number) + 1;
                    history.push(RevisionEntry {
                        number,
                        revision: record.revision(),
                        service: service.clone(),
                        module_digest: digest.to_owned(),
                        applied_unix: now,
                        change: note.clone().unwrap_or_else(|| changes(&existing, &record)),
                    });
                    let excess = history.len().saturating_sub(REVISION_HISTORY);
                    history.drain(..excess);
                    record.history = history;
                }
                (Applied::Configured, record, Expect::Revision(existing.resource_version))
            }
            None => {
                let mut record = ServiceRecord {
                    service: service.clone(),
                    module_digest: digest.to_owned(),
                    generation: 1,
                    created_unix: now,
                    updated_unix: now,
                    resource_version: 0,
                    previous: None,
                    history: Vec::new(),
                };
                record.history = vec![RevisionEntry {
                    number: 1,
                    revision: record.revision(),
                    service: service.clone(),
                    module_digest: digest.to_owned(),
                    applied_unix: now,
                    change: note.clone().unwrap_or_else(|| "created".to_owned()),
                }];
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
