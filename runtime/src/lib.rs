//! Wasm execution for Shoal: everything that runs inside a worker process,
//! plus the compile step `shoal up` uses to validate modules up front.
//!
//! A worker (`shoal worker`) hosts one replica of one service revision. It
//! loads the service's component (precompiled once, cached on disk by
//! content digest and engine), then serves HTTP/1.1 on a Unix socket, making
//! one instance of the component per request under a memory cap
//! ([`wasmtime::StoreLimits`]) and an epoch deadline.
//!
//! # Layout
//!
//! - [`engine`]: the wasmtime configuration (pooling allocator, epochs)
//!   shared by compiler and workers.
//! - [`cache`]: the on-disk cache of compiled components and the component
//!   check that names what a bad file is.
//! - [`marker`]: the custom section that marks a component as serving many
//!   requests per instance (the JS SDK's Node http servers).
//! - [`worker`]: the worker process: its configuration, the request path from
//!   hyper into the guest's `wasi:http/incoming-handler`, readiness and
//!   drain.

pub mod cache;
pub mod engine;
pub mod marker;
pub mod worker;

use std::path::PathBuf;

pub use cache::{CacheOutcome, ComponentCache, check_component, sha256_hex};
pub use worker::{WorkerConfig, run_worker};

impl ModuleError {
    /// What is wrong, without the file's name (for a caller that names the
    /// file its own way, such as the CLI for an upload).
    pub fn reason(&self) -> String {
        let full = self.to_string();
        match self {
            ModuleError::Read { path, .. }
            | ModuleError::NotAComponent { path, .. }
            | ModuleError::Compile { path, .. }
            | ModuleError::NotAProxy { path, .. } => {
                full.strip_prefix(&format!("{}: ", path.display())).map_or(full.clone(), str::to_owned)
            }
            ModuleError::Cache { .. } => full,
        }
    }

    /// Whether it failed because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            ModuleError::Read { source, .. } | ModuleError::Cache { source, .. } => source,
            _ => return false,
        };
        matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
    }
}

/// Why a module cannot be loaded. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The module file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a Wasm component.
    #[error("{}: {what}", path.display())]
    NotAComponent {
        /// The module file.
        path: PathBuf,
        /// What the file is instead.
        what: &'static str,
    },
    /// wasmtime rejected the component.
    #[error("{}: not a valid component: {source:#}", path.display())]
    Compile {
        /// The module file.
        path: PathBuf,
        /// wasmtime's error.
        source: wasmtime::Error,
    },
    /// The component does not link as a `wasi:http` proxy: it does not
    /// export `wasi:http/incoming-handler`, or imports what workers do not
    /// provide.
    #[error("{}: not a wasi:http service that Shoal can run: {source:#}", path.display())]
    NotAProxy {
        /// The module file.
        path: PathBuf,
        /// wasmtime's error.
        source: wasmtime::Error,
    },
    /// The compiled artifact could not be written to the cache.
    #[error("cannot write compiled module to {}: {source}", path.display())]
    Cache {
        /// The artifact path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}
