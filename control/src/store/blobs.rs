//! Module bytes as files: `<data-dir>/modules/<sha256>.wasm`.
//!
//! A module is written once, through a [`ModuleUpload`]: the bytes go to a
//! file in `modules/.staging/` as they arrive, hashed on the way, so that
//! memory does not grow with the module's size; [`ModuleUpload::finish`]
//! makes them durable (`fsync`) and gives a [`StagedModule`] whose digest
//! the store computed. Installing it renames the file to its digest's name
//! (atomic within the directory), so a module file under its final name is
//! always complete. A staged file that is never installed is removed when
//! its [`StagedModule`] drops, and leftovers of a crash when the store
//! opens.
//!
//! Reading a module hashes its file again ([`Blobs::verify`]), so a file
//! changed behind Shoal's back is noticed before it runs.

use std::fs::File;
use std::io::{BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{StoreError, check_digest};

/// The directory of module files.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    /// The data directory, which errors name (`disk full in <data dir>`).
    data_dir: PathBuf,
}

/// Where uploads are written before they are installed.
const STAGING: &str = ".staging";

impl Blobs {
    /// The module files in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let data_dir = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(&dir).to_owned();
        Self { dir, data_dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of module `digest` (which may not exist).
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    /// Removes the staged files a crash left behind.
    pub fn clean_staging(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join(STAGING));
    }

    /// Starts writing a module.
    pub fn begin(&self) -> Result<ModuleUpload, StoreError> {
        let staging = self.dir.join(STAGING);
        std::fs::create_dir_all(&staging).map_err(|e| io_error(&self.data_dir, "create the module directory", &e))?;
        use rand::Rng as _;
        let name: u64 = rand::rng().random();
        let path = staging.join(format!("upload-{name:016x}"));
        let file = File::create(&path).map_err(|e| io_error(&self.data_dir, "create an upload file", &e))?;
        Ok(ModuleUpload {
            file: BufWriter::with_capacity(64 * 1024, file),
            staged: StagedModule { path, digest: String::new(), size: 0, installed: false },
            hasher: Sha256::new(),
            dir: self.data_dir.clone(),
        })
    }

    /// Moves a staged module to its final name. The same bytes under the
    /// same name are replaced by an identical file, which repairs a file
    /// that was changed behind Shoal's back.
    pub fn install(&self, staged: &mut StagedModule) -> Result<PathBuf, StoreError> {
        let target = self.path(&staged.digest);
        std::fs::rename(&staged.path, &target).map_err(|e| io_error(&self.data_dir, "store the module", &e))?;
        staged.installed = true;
        // The rename is durable once the directory is.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(target)
    }

    /// The file of module `digest` after checking that its content hashes
    /// to `digest` (read in 64 KiB pieces); `None` if there is none.
    pub fn verify(&self, digest: &str) -> Result<Option<PathBuf>, StoreError> {
        check_digest(digest)?;
        let path = self.path(digest);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&self.data_dir, &format!("read module {digest}"), &e)),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.data_dir, &format!("read module {digest}"), &e)),
            }
        }
        let actual = hex(&hasher.finalize());
        if actual != digest {
            return Err(StoreError::Tampered { digest: digest.to_owned(), actual });
        }
        Ok(Some(path))
    }

    /// The bytes of module `digest`, verified; `None` if there is none.
    pub fn read(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(path) = self.verify(digest)? else { return Ok(None) };
        let bytes = std::fs::read(&path).map_err(|e| io_error(&self.data_dir, &format!("read module {digest}"), &e))?;
        // Checked again: the file could change between the two reads.
        let actual = super::sha256_hex(&bytes);
        if actual != digest {
            return Err(StoreError::Tampered { digest: digest.to_owned(), actual });
        }
        Ok(Some(bytes))
    }

    /// Removes module `digest`'s file; `false` if there was none.
    pub fn remove(&self, digest: &str) -> Result<bool, StoreError> {
        match std::fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(&self.data_dir, &format!("delete module {digest}"), &e)),
        }
    }

    /// The digests that have a file.
    pub fn digests(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".wasm").map(str::to_owned))
            .filter(|d| check_digest(d).is_ok())
            .collect()
    }
}

/// A module being written: bytes go to a staging file and into a hash.
pub struct ModuleUpload {
    file: BufWriter<File>,
    staged: StagedModule,
    hasher: Sha256,
    dir: PathBuf,
}

impl ModuleUpload {
    /// Appends bytes. A full disk is [`StoreError::DiskFull`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(bytes).map_err(|e| io_error(&self.dir, "write the module", &e))?;
        self.hasher.update(bytes);
        self.staged.size += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.staged.size
    }

    /// Makes the bytes durable and names their digest.
    pub fn finish(mut self) -> Result<StagedModule, StoreError> {
        let file = self.file.into_inner().map_err(|e| io_error(&self.dir, "write the module", e.error()))?;
        file.sync_all().map_err(|e| io_error(&self.dir, "write the module", &e))?;
        self.staged.digest = hex(&self.hasher.finalize());
        Ok(self.staged)
    }
}

/// A complete module in the staging area, with the digest of its bytes.
/// Its file is removed on drop unless it was installed.
#[derive(Debug)]
pub struct StagedModule {
    path: PathBuf,
    digest: String,
    size: u64,
    installed: bool,
}

impl StagedModule {
    /// The staged file (for checking it before it is stored).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sha256 of its bytes, as lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for StagedModule {
    fn drop(&mut self) {
        if !self.installed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an IO error means that the disk (or the user's quota) is full.
pub fn is_disk_full(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// An IO error while doing `what` in `dir`: [`StoreError::DiskFull`] when
/// the disk is full, [`StoreError::Backend`] otherwise.
pub fn io_error(dir: &Path, what: &str, error: &std::io::Error) -> StoreError {
    if is_disk_full(error) {
        StoreError::DiskFull { dir: dir.to_owned(), what: what.to_owned() }
    } else {
        StoreError::Backend { detail: format!("cannot {what} in {}: {error}", dir.display()) }
    }
}
