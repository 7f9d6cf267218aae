//! What the zygote loads once for the workers it forks: an engine per pool
//! sizing, and each module's component, compiled code mapped and linked as
//! a `wasi:http` proxy. A worker forked afterwards finds them in its copy
//! of the zygote's memory and skips configuring wasmtime and loading its
//! module (together ~1.5 ms of a ~3 ms start on the machines measured).
//!
//! A child first calls [`after_fork`]; once it has its configuration,
//! [`take`] keeps what it runs and forgets the rest (see there why it is
//! not dropped).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::{Guest, proxy_pre};
use crate::cache::ComponentCache;
use crate::engine::{PoolSettings, worker_engine};

/// Engines (pool sizings) kept at most.
const MAX_ENGINES: usize = 4;
/// Modules kept at most, over all engines.
const MAX_MODULES: usize = 32;

struct Loaded {
    pool: PoolSettings,
    engine: Engine,
    /// Oldest first.
    modules: Vec<(PathBuf, ProxyPre<Guest>)>,
}

static LOADED: Mutex<Vec<Loaded>> = Mutex::new(Vec::new());

/// Loads `module` for workers of `pool` (the zygote, asked by the node
/// agent after a replica of it started): its compiled artifact must be in
/// `cache_dir` already; nothing is compiled here.
pub fn preload(pool: PoolSettings, module: &Path, cache_dir: &Path) -> Result<(), String> {
    let mut loaded = LOADED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if loaded.iter().any(|l| l.pool == pool && l.modules.iter().any(|(path, _)| path == module)) {
        return Ok(());
    }
    let at = match loaded.iter().position(|l| l.pool == pool) {
        Some(at) => at,
        None => {
            if loaded.len() >= MAX_ENGINES {
                loaded.remove(0);
            }
            let engine = worker_engine(pool).map_err(|e| format!("cannot configure wasmtime: {e:#}"))?;
            loaded.push(Loaded { pool, engine, modules: Vec::new() });
            loaded.len() - 1
        }
    };
    let engine = loaded[at].engine.clone();
    let component = ComponentCache::new(cache_dir)
        .load_cached(&engine, module)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is not compiled yet", module.display()))?;
    let pre = proxy_pre(&engine, &component).map_err(|e| format!("{}: {e:#}", module.display()))?;
    if loaded.iter().map(|l| l.modules.len()).sum::<usize>() >= MAX_MODULES
        && let Some(oldest) = loaded.iter_mut().find(|l| !l.modules.is_empty())
    {
        oldest.modules.remove(0);
    }
    loaded[at].modules.push((module.to_owned(), pre));
    Ok(())
}

/// In a child the zygote forked, before it uses wasmtime: what wasmtime's
/// own fork handlers would do (a raw `clone` runs none).
pub fn after_fork() {
    wasmtime::shoal_after_fork();
}

/// What was loaded for `pool` and `module`, if anything: the engine, and
/// the linked component.
///
/// The rest is forgotten, not dropped: dropping another module unmaps its
/// code, deregisters its unwind tables from a process-wide list and frees
/// its structures, each free a copy-on-write fault on a page shared with
/// the zygote; with 32 modules loaded that would cost a start more than
/// the preload saves. Forgotten, it stays mapped, read-only and untouched
/// (no memory of the worker's own): a guest cannot reach it, and the
/// worker process could read the compiled modules from the node's cache
/// anyway.
pub(crate) fn take(pool: PoolSettings, module: &Path) -> (Option<Engine>, Option<ProxyPre<Guest>>) {
    let loaded = std::mem::take(&mut *LOADED.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let mine = loaded.iter().find(|l| l.pool == pool).map(|mine| {
        let pre = mine.modules.iter().find(|(path, _)| path == module).map(|(_, pre)| pre.clone());
        (mine.engine.clone(), pre)
    });
    std::mem::forget(loaded);
    match mine {
        Some((engine, pre)) => (Some(engine), pre),
        None => (None, None),
    }
}
