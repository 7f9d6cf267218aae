//! The compiled-component cache.
//!
//! Compiling a component with Cranelift takes from milliseconds to seconds;
//! loading a precompiled one is an `mmap`. Artifacts are stored as
//! `<dir>/<sha256 of the component>-<engine hash>.cwasm`, so a changed module
//! or a changed engine (another wasmtime version or setting) never loads a
//! stale artifact. Files are written to a temporary name and renamed into
//! place, so concurrent writers and crashes never leave a partial artifact
//! under a final name.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::ModuleError;

/// Whether a load found its artifact in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The precompiled artifact was loaded from disk.
    Hit,
    /// The component was compiled and the artifact stored.
    Compiled,
}

/// A directory of precompiled components.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

/// The sha256 digest of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Maps a module file read-only.
///
/// Only for Shoal's own files, which nothing modifies in place: staged
/// uploads (under a random name in the data directory's staging area) and,
/// in a worker, the module file it was started with. A file changed or
/// truncated while mapped would change the bytes under the compiler or
/// raise SIGBUS; the control plane therefore reads the modules it prepares
/// instead, and only maps the uploads it has just written itself.
fn map_file(path: &Path) -> Result<memmap2::Mmap, ModuleError> {
    let read = |source| ModuleError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    // SAFETY: as above: the files mapped here are written once, under a
    // temporary or random name, by Shoal, and never modified in place
    // while Shoal runs.
    unsafe { memmap2::Mmap::map(&file) }.map_err(read)
}

/// Checks that `bytes` are a Wasm component (not a core module, not
/// something else), naming what they are instead.
pub fn check_component(path: &Path, bytes: &[u8]) -> Result<(), ModuleError> {
    let what = if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        if bytes.starts_with(b"(component") || bytes.starts_with(b"(module") {
            "a WebAssembly text file; compile it to binary first"
        } else {
            "not a WebAssembly file"
        }
    } else if bytes[4..8] == [0x0d, 0x00, 0x01, 0x00] {
        return Ok(());
    } else if bytes[4..8] == [0x01, 0x00, 0x00, 0x00] {
        "a core WebAssembly module, not a component (build for wasm32-wasip2, or wrap it with `wasm-tools component new`)"
    } else {
        "a WebAssembly file of an unknown version"
    };
    Err(ModuleError::NotAComponent { path: path.to_owned(), what })
}

impl ComponentCache {
    /// A cache stored in `dir`, created on first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the component in `path` for `engine`: from the cache when an
    /// artifact for these bytes and this engine exists, otherwise by compiling
    /// it and storing the artifact. The file is mapped, not read: memory
    /// does not grow with its size beyond the pages looked at.
    pub fn load(&self, engine: &Engine, path: &Path) -> Result<(Component, CacheOutcome), ModuleError> {
        let bytes = map_file(path)?;
        self.load_bytes(engine, path, &bytes)
    }

    /// Loads the component in `path` for `engine` if its artifact is in the
    /// cache; `None` if it is not (nothing is compiled).
    pub fn load_cached(&self, engine: &Engine, path: &Path) -> Result<Option<Component>, ModuleError> {
        let bytes = map_file(path)?;
        check_component(path, &bytes)?;
        let artifact = self.artifact_for(engine, &sha256_hex(&bytes));
        if !artifact.exists() {
            return Ok(None);
        }
        // SAFETY: as in `load_digested`: written by `store` from an engine
        // with the same compatibility hash; wasmtime checks its header.
        let component = unsafe { Component::deserialize_file(engine, &artifact) }
            .map_err(|source| ModuleError::Compile { path: path.to_owned(), source })?;
        Ok(Some(component))
    }

    /// The check every module passes before Shoal stores it or starts it
    /// from a manifest (`shoal up -f`, uploads through the admin API: one
    /// code path): it is a component (not a core module, not another
    /// file), wasmtime compiles it (the artifact is cached, so preparing it
    /// later is a cache hit), and it links as a `wasi:http` proxy against
    /// exactly what workers provide. Errors name `path`.
    pub fn check_bytes(&self, engine: &Engine, path: &Path, bytes: &[u8]) -> Result<CacheOutcome, ModuleError> {
        self.check_digested(engine, path, bytes, &sha256_hex(bytes))
    }

    /// [`ComponentCache::check_bytes`] for a file whose sha256 is known
    /// (the store computed it as the file was written), mapped rather than
    /// read: a file that is not a component is refused having touched only
    /// its first pages, whatever its size.
    pub fn check_file(&self, engine: &Engine, path: &Path, digest: &str) -> Result<CacheOutcome, ModuleError> {
        let bytes = map_file(path)?;
        self.check_digested(engine, path, &bytes, digest)
    }

    fn check_digested(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
        digest: &str,
    ) -> Result<CacheOutcome, ModuleError> {
        let (component, outcome) = self.load_digested(engine, path, bytes, digest)?;
        crate::worker::proxy_pre(engine, &component)
            .map_err(|source| ModuleError::NotAProxy { path: path.to_owned(), source })?;
        Ok(outcome)
    }

    /// Removes the compiled artifacts of the component whose sha256 is
    /// `digest` (every engine's), once its module is deleted.
    pub fn forget(&self, digest: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_artifact = name.to_str().is_some_and(|n| n.starts_with(digest) && n.ends_with(".cwasm"));
            if is_artifact {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Like [`ComponentCache::load`], for bytes already read from `path`.
    pub fn load_bytes(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome), ModuleError> {
        self.load_digested(engine, path, bytes, &sha256_hex(bytes))
    }

    fn load_digested(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, CacheOutcome), ModuleError> {
        check_component(path, bytes)?;
        let artifact = self.artifact_for(engine, digest);
        if artifact.exists() {
            // SAFETY: the artifact was written by `store` below from
            // `Engine::precompile_component` of an engine with the same
            // compatibility hash, under a name no other writer uses for
            // other contents; wasmtime also checks its header on load.
            match unsafe { Component::deserialize_file(engine, &artifact) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(error) => {
                    tracing::warn!(artifact = %artifact.display(), %error, "discarding unusable cached artifact");
                    let _ = std::fs::remove_file(&artifact);
                }
            }
        }
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|source| ModuleError::Compile { path: path.to_owned(), source })?;
        self.store(&artifact, &compiled).map_err(|source| ModuleError::Cache { path: artifact.clone(), source })?;
        // SAFETY: as above; these are the bytes just produced by this engine.
        let component = unsafe { Component::deserialize_file(engine, &artifact) }
            .map_err(|source| ModuleError::Compile { path: path.to_owned(), source })?;
        Ok((component, CacheOutcome::Compiled))
    }

    /// Where the artifact of `bytes` for `engine` is (or would be) stored.
    pub fn artifact_path(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        self.artifact_for(engine, &sha256_hex(bytes))
    }

    fn artifact_for(&self, engine: &Engine, digest: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
    }

    fn store(&self, artifact: &Path, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // A name no other writer uses, in this process or another: two
        // compiles of one module may run at once (uploads, preparation).
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{}.{}-{}.tmp",
            artifact.file_name().and_then(|n| n.to_str()).unwrap_or("artifact"),
            std::process::id(),
            SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(compiled)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, artifact)
    }
}
