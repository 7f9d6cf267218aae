//! [`StoreError`]: what can go wrong reading or writing desired state.

use std::path::PathBuf;

use super::kv::Expect;

/// An error of a [`Store`](super::Store).
///
/// Every variant names what is wrong and, where there is a file, which one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file cannot be read as a Shoal store: not a redb database (a text
    /// file, random bytes), a damaged one, a redb database of another
    /// program, or a stored record that does not decode.
    #[error("the store at {} is corrupt or not a Shoal store: {detail}", path.display())]
    Corrupt {
        /// The store's file.
        path: PathBuf,
        /// What is wrong, naming the table and key for a bad record.
        detail: String,
    },

    /// The store was written by a newer Shoal, with a schema this version
    /// does not know. Nothing was changed.
    #[error(
        "the store at {} was written by a newer Shoal (schema {found}; this version reads schema {supported} and older)",
        path.display()
    )]
    NewerSchema {
        /// The store's file.
        path: PathBuf,
        /// The schema version in the file.
        found: u32,
        /// The newest schema version this build reads.
        supported: u32,
    },

    /// Another process (or another handle in this one) has the store open.
    #[error("the store at {} is in use by another shoal process", path.display())]
    Locked {
        /// The store's file.
        path: PathBuf,
    },

    /// A stored module's bytes do not hash to the digest they are stored
    /// under.
    #[error(
        "module sha256:{digest} does not match its content (sha256:{actual}): the store was modified outside Shoal"
    )]
    Tampered {
        /// The digest the module was asked for (and stored under).
        digest: String,
        /// The sha256 of the bytes found.
        actual: String,
    },

    /// A module digest that is not 64 lowercase hex characters.
    #[error("{0:?} is not a module digest (expected a sha256 as 64 lowercase hex characters)")]
    InvalidDigest(String),

    /// The disk holding the store is full (or the user's quota is used
    /// up). Nothing was changed; once space is freed, writes succeed again.
    #[error("disk full in {}: cannot {what} (nothing was changed; free some space and try again)", dir.display())]
    DiskFull {
        /// The data directory.
        dir: PathBuf,
        /// What was being written, e.g. `store the module`.
        what: String,
    },

    /// A write's precondition did not hold: the key was changed (or
    /// created, or deleted) since the revision the writer read. Nothing was
    /// changed.
    #[error("{key} was changed by another write ({}); read it again and retry", conflict_detail(*expected, *current))]
    Conflict {
        /// The key written, e.g. `services/kubia`.
        key: String,
        /// What the write required.
        expected: Expect,
        /// The key's revision when the write was refused (`None`: absent).
        current: Option<u64>,
    },

    /// The store cannot be reached (etcd without a quorum, or unreachable).
    /// A write that failed so was not confirmed: etcd may still apply it
    /// once it has a quorum again (as for any etcd client whose request
    /// timed out). Reads go on from what this node knows.
    #[error("the store is unavailable: {detail}")]
    Unavailable {
        /// What failed, naming the endpoints, e.g. `etcd at http://…: …`.
        detail: String,
    },

    /// Any other failure of the backend (IO, a failed commit, …), with what
    /// was being done.
    #[error("store error: {detail}")]
    Backend {
        /// What was being done and what failed, e.g.
        /// `opening /var/lib/shoal/store.redb: Permission denied (os error 13)`.
        detail: String,
    },
}

fn conflict_detail(expected: Expect, current: Option<u64>) -> String {
    match (expected, current) {
        (Expect::Absent, Some(current)) => format!("it exists, at revision {current}"),
        (Expect::Revision(expected), Some(current)) => {
            format!("resourceVersion {current}, not {expected}")
        }
        (_, None) => "it no longer exists".to_owned(),
        (_, Some(current)) => format!("now at revision {current}"),
    }
}
