//! The compiled-component cache: a second load does not recompile, a
//! damaged artifact is replaced, and a changed module is a different entry.

use std::path::Path;

use crate::support::*;
use shoal_runtime::engine::compiler_engine;
use shoal_runtime::{CacheOutcome, ComponentCache};

fn artifacts(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "cwasm")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn second_load_is_a_cache_hit_and_damage_is_repaired() {
    let dir = Scratch::new("cache");
    let cache = ComponentCache::new(dir.0.join("cache"));
    let engine = compiler_engine().unwrap();
    let hello = Path::new(HELLO_WASM);

    let (_, first) = cache.load(&engine, hello).unwrap();
    assert_eq!(first, CacheOutcome::Compiled);
    let (_, second) = cache.load(&engine, hello).unwrap();
    assert_eq!(second, CacheOutcome::Hit);
    let files = artifacts(cache.dir());
    assert_eq!(files.len(), 1);
    let digest = shoal_runtime::sha256_hex(&std::fs::read(hello).unwrap());
    assert!(files[0].file_name().unwrap().to_str().unwrap().starts_with(&digest));

    // A truncated artifact is discarded and rebuilt, not loaded.
    std::fs::write(&files[0], b"garbage").unwrap();
    let (_, third) = cache.load(&engine, hello).unwrap();
    assert_eq!(third, CacheOutcome::Compiled);
    let (_, fourth) = cache.load(&engine, hello).unwrap();
    assert_eq!(fourth, CacheOutcome::Hit);

    // Another module is another entry.
    let (_, other) = cache.load(&engine, Path::new(FAULTY_WASM)).unwrap();
    assert_eq!(other, CacheOutcome::Compiled);
    assert_eq!(artifacts(cache.dir()).len(), 2);
}

#[test]
fn the_worker_engine_loads_what_the_compiler_engine_stored() {
    let dir = Scratch::new("compat");
    let cache = ComponentCache::new(dir.0.join("cache"));
    let hello = Path::new(HELLO_WASM);
    let (_, outcome) = cache.load(&compiler_engine().unwrap(), hello).unwrap();
    assert_eq!(outcome, CacheOutcome::Compiled);
    let worker = shoal_runtime::engine::worker_engine(shoal_runtime::engine::PoolSettings {
        max_instances: 4,
        instance_memory: 16 << 20,
    })
    .unwrap();
    let (_, outcome) = cache.load(&worker, hello).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit, "workers would recompile what shoal up compiled");
}

#[test]
fn check_component_names_what_a_file_is() {
    let path = Path::new("x.wasm");
    let err = |bytes: &[u8]| shoal_runtime::check_component(path, bytes).unwrap_err().to_string();
    assert_eq!(err(b"hello"), "x.wasm: not a WebAssembly file");
    assert!(err(b"(module)").contains("WebAssembly text file"));
    assert!(err(b"\0asm\x01\0\0\0").contains("core WebAssembly module, not a component"));
    assert!(shoal_runtime::check_component(path, b"\0asm\x0d\0\x01\0").is_ok());
}

#[test]
fn the_crash_at_start_fixture_is_a_proxy_component_that_traps_when_instantiated() {
    let bytes = wat::parse_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crash-at-start.wat")).unwrap();
    let path = Path::new("crash-at-start.wasm");
    shoal_runtime::check_component(path, &bytes).unwrap();
    let dir = Scratch::new("crash");
    let cache = ComponentCache::new(dir.0.join("cache"));
    let (_, outcome) = cache.load_bytes(&compiler_engine().unwrap(), path, &bytes).unwrap();
    assert_eq!(outcome, CacheOutcome::Compiled);
}
