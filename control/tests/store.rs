//! The `Store` contract, run against a `KvStore` in memory and in a redb file
//! on real files; then what only a file can do: survive a reopen, be locked,
//! be tampered with, be written by a newer Shoal, be something else entirely.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redb::{Database, ReadableDatabase, TableDefinition};
use shoal_api::{Resources, Route, Service, ServiceRecord, ServiceSpec};
use shoal_control::store::{Expect, KvStore, SCHEMA_VERSION, Store, StoreError, sha256_hex};

// The on-disk layout, as documented in `shoal_control::store::redb_store`.
const META: TableDefinition<'_, &str, u32> = TableDefinition::new("meta");
const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
/// Schemas 1 and 2: services and module infos in tables of their own.
const SERVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("services");
/// Schema 1's table of module bytes (schema 2 keeps them in files).
const LEGACY_MODULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("modules");
const MODULE_INFO: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("module_info");

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-control-{}-{test}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// `store.redb` in a subdirectory that does not exist yet (open creates it).
    fn store_path(&self) -> PathBuf {
        self.0.join("data").join("store.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn record(name: &str, replicas: u32) -> ServiceRecord {
    ServiceRecord {
        service: Service {
            name: name.into(),
            labels: BTreeMap::from([("app".into(), name.into())]),
            spec: ServiceSpec {
                module: PathBuf::from("/srv/hello.wasm"),
                module_field: "hello.wasm".into(),
                replicas,
                routes: vec![Route::new(Some(format!("{name}.example.com")), "/")],
                env: BTreeMap::from([("GREETING".into(), "hi".into())]),
                resources: Resources { memory: 64 << 20, cpu_millis: Some(500), instance_memory: 16 << 20 },
                limits: Default::default(),
                instances: Default::default(),
                timeout: Duration::from_millis(1500),
                autoscale: None,
                allow_outbound: Vec::new(),
                readiness: None,
                liveness: None,
            },
            resource_version: None,
        },
        module_digest: sha256_hex(b"module"),
        generation: 1,
        created_unix: 1_700_000_000,
        updated_unix: 1_700_000_100,
        resource_version: 0,
        previous: None,
        history: Vec::new(),
    }
}

/// Records as written: without the `resourceVersion` a read fills in.
fn bare(records: Vec<ServiceRecord>) -> Vec<ServiceRecord> {
    records.into_iter().map(|record| ServiceRecord { resource_version: 0, ..record }).collect()
}

fn bare1(record: Option<ServiceRecord>) -> Option<ServiceRecord> {
    record.map(|record| ServiceRecord { resource_version: 0, ..record })
}

fn open(path: &Path) -> KvStore {
    KvStore::open(path).unwrap_or_else(|err| panic!("open {}: {err}", path.display()))
}

fn open_err(path: &Path) -> StoreError {
    KvStore::open(path).expect_err("open should fail")
}

// ---- the contract, for every store ----

fn services_round_trip(store: &dyn Store) {
    assert_eq!(bare(store.services().unwrap()), vec![]);
    assert_eq!(bare1(store.service("kubia").unwrap()), None);
    let kubia = record("kubia", 3);
    store.put_service(&kubia, Expect::Any).unwrap();
    assert_eq!(bare1(store.service("kubia").unwrap()), Some(kubia.clone()));

    let mut scaled = kubia.clone();
    scaled.service.spec.replicas = 5;
    scaled.generation = 2;
    store.put_service(&scaled, Expect::Any).unwrap();
    assert_eq!(bare1(store.service("kubia").unwrap()), Some(scaled.clone()));
    assert_eq!(bare(store.services().unwrap()), vec![scaled]);
}

fn services_sorted_and_deleted(store: &dyn Store) {
    for name in ["zeta", "alpha", "kubia", "alpha-2"] {
        store.put_service(&record(name, 1), Expect::Any).unwrap();
    }
    let names = |store: &dyn Store| -> Vec<String> {
        bare(store.services().unwrap()).into_iter().map(|record| record.service.name).collect()
    };
    assert_eq!(names(store), ["alpha", "alpha-2", "kubia", "zeta"]);
    assert!(store.delete_service("kubia", Expect::Any).unwrap());
    assert!(!store.delete_service("kubia", Expect::Any).unwrap());
    assert!(!store.delete_service("never", Expect::Any).unwrap());
    assert_eq!(bare1(store.service("kubia").unwrap()), None);
    assert_eq!(names(store), ["alpha", "alpha-2", "zeta"]);
}

fn modules_are_content_addressed(store: &dyn Store) {
    let bytes = b"\0asm pretend component".repeat(1000);
    let info = store.put_module(&bytes).unwrap();
    assert_eq!(info.digest, sha256_hex(&bytes));
    assert_eq!(info.size, bytes.len() as u64);
    assert!(info.created_unix > 1_700_000_000);

    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(store.put_module(&bytes).unwrap(), info, "same bytes, same info (first created_unix)");
    assert_eq!(store.module(&info.digest).unwrap().as_deref(), Some(bytes.as_slice()));
    assert_eq!(store.module_info(&info.digest).unwrap(), Some(info.clone()));

    let other = store.put_module(b"other").unwrap();
    assert_eq!(other.digest, sha256_hex(b"other"));
    let mut expected = vec![info.clone(), other.clone()];
    expected.sort_by(|a, b| a.digest.cmp(&b.digest));
    assert_eq!(store.modules().unwrap(), expected);

    let empty = store.put_module(b"").unwrap();
    assert_eq!((empty.digest.as_str(), empty.size), (sha256_hex(b"").as_str(), 0));
    assert_eq!(store.module(&empty.digest).unwrap(), Some(vec![]));

    assert!(store.delete_module(&info.digest).unwrap());
    assert!(!store.delete_module(&info.digest).unwrap());
    assert_eq!(store.module(&info.digest).unwrap(), None);
    assert_eq!(store.module_info(&info.digest).unwrap(), None);
    assert_eq!(store.modules().unwrap().len(), 2);
}

fn digests_are_checked(store: &dyn Store) {
    let absent = sha256_hex(b"absent");
    assert_eq!(store.module(&absent).unwrap(), None);
    assert_eq!(store.module_info(&absent).unwrap(), None);
    for bad in ["", "kubia", "../../etc/passwd", &absent.to_uppercase(), &absent[..63]] {
        let is_invalid = |err: StoreError| matches!(err, StoreError::InvalidDigest(d) if d == bad);
        assert!(is_invalid(store.module(bad).unwrap_err()), "module({bad:?})");
        assert!(is_invalid(store.module_info(bad).unwrap_err()), "module_info({bad:?})");
        assert!(is_invalid(store.delete_module(bad).unwrap_err()), "delete_module({bad:?})");
    }
}

/// One test per behaviour and store: `memory::NAME` and `redb::NAME`.
macro_rules! for_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(&shoal_control::store::KvStore::memory()); })*
        }
        mod redb_file {
            $(#[test] fn $name() {
                let dir = super::TempDir::new(stringify!($name));
                super::$name(&super::open(&dir.store_path()));
            })*
        }
    };
}

for_every_store!(services_round_trip, services_sorted_and_deleted, modules_are_content_addressed, digests_are_checked);

#[test]
fn memory_store_is_a_dyn_store() {
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(KvStore::memory());
    store.put_service(&record("kubia", 1), Expect::Any).unwrap();
    assert_eq!(bare(store.services().unwrap()).len(), 1);
}

// ---- what only a file can do ----

#[test]
fn everything_survives_a_reopen() {
    let dir = TempDir::new("reopen");
    let path = dir.store_path();
    let (kubia, info) = {
        let store = open(&path);
        assert_eq!(store.location(), path);
        store.put_service(&record("kubia", 3), Expect::Any).unwrap();
        store.put_service(&record("gone", 1), Expect::Any).unwrap();
        assert!(store.delete_service("gone", Expect::Any).unwrap());
        (record("kubia", 3), store.put_module(b"component bytes").unwrap())
    };
    let store = open(&path);
    assert_eq!(bare(store.services().unwrap()), vec![kubia]);
    assert_eq!(store.module(&info.digest).unwrap().as_deref(), Some(&b"component bytes"[..]));
    assert_eq!(store.modules().unwrap(), vec![info.clone()]);
    assert_eq!(store.put_module(b"component bytes").unwrap(), info);
}

#[test]
fn a_tampered_module_is_refused_and_a_put_repairs_it() {
    let dir = TempDir::new("tampered");
    let path = dir.store_path();
    let info = open(&path).put_module(b"the real component").unwrap();

    // Change the module's file behind the store's back.
    let file = path.with_file_name("modules").join(format!("{}.wasm", info.digest));
    assert_eq!(std::fs::read(&file).unwrap(), b"the real component");
    std::fs::write(&file, b"an evil component").unwrap();

    let store = open(&path);
    let err = store.module(&info.digest).unwrap_err();
    let evil = sha256_hex(b"an evil component");
    assert!(matches!(&err, StoreError::Tampered { digest, actual } if *digest == info.digest && *actual == evil));
    assert_eq!(
        err.to_string(),
        format!(
            "module sha256:{} does not match its content (sha256:{evil}): the store was modified outside Shoal",
            info.digest
        )
    );
    let err = store.module_file(&info.digest).unwrap_err();
    assert!(matches!(&err, StoreError::Tampered { actual, .. } if *actual == evil), "{err:?}");
    // The info is still readable; putting the true bytes again repairs the file.
    assert_eq!(store.module_info(&info.digest).unwrap(), Some(info.clone()));
    assert_eq!(store.put_module(b"the real component").unwrap(), info);
    assert_eq!(store.module(&info.digest).unwrap().as_deref(), Some(&b"the real component"[..]));
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = TempDir::new("newer");
    let path = dir.store_path();
    open(&path).put_service(&record("kubia", 1), Expect::Any).unwrap();
    let write_version = |version: u32| {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema_version", version).unwrap();
        txn.commit().unwrap();
    };
    write_version(SCHEMA_VERSION + 1);

    let err = open_err(&path);
    let newer = SCHEMA_VERSION + 1;
    assert!(
        matches!(&err, StoreError::NewerSchema { found, supported, .. } if *found == newer && *supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the store at {} was written by a newer Shoal (schema {newer}; this version reads schema {SCHEMA_VERSION} and older)",
            path.display()
        )
    );
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let version = txn.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value();
        assert_eq!(version, SCHEMA_VERSION + 1, "the refused file is unchanged");
    }
    write_version(SCHEMA_VERSION);
    assert_eq!(bare(open(&path).services().unwrap()), vec![record("kubia", 1)]);
}

/// Asserts that opening `path` fails with `Corrupt` naming it.
fn assert_corrupt(path: &Path, detail_contains: &str) {
    let err = open_err(path);
    assert!(matches!(&err, StoreError::Corrupt { path: p, .. } if p == path), "{err:?}");
    let message = err.to_string();
    let prefix = format!("the store at {} is corrupt or not a Shoal store: ", path.display());
    assert!(message.starts_with(&prefix), "{message}");
    assert!(message.contains(detail_contains), "{message:?} should contain {detail_contains:?}");
}

#[test]
fn files_that_are_not_shoal_stores_are_corrupt() {
    let dir = TempDir::new("corrupt");
    let path = dir.0.join("store.redb");

    std::fs::write(&path, "apiVersion: shoal.dev/v1\nkind: Service\n").unwrap();
    assert_corrupt(&path, "Not a redb database");

    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&path, &random).unwrap();
    assert_corrupt(&path, "Not a redb database");
    assert_eq!(std::fs::read(&path).unwrap(), random, "a refused file is left as it was");

    // A redb database, but another program's.
    std::fs::remove_file(&path).unwrap();
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("counters")).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    assert_corrupt(&path, "a redb database without a schema version (tables: counters)");

    // A Shoal store whose meta table has the wrong types.
    std::fs::remove_file(&path).unwrap();
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, &str>::new("meta")).unwrap().insert("schema_version", "1").unwrap();
        txn.commit().unwrap();
    }
    assert_corrupt(&path, "table meta");
}

#[test]
fn a_damaged_file_is_corrupt_not_a_panic() {
    let dir = TempDir::new("damaged");
    let path = dir.store_path();
    {
        let store = open(&path);
        store.put_module(&[7; 100_000]).unwrap();
        for n in 0..20 {
            store.put_service(&record(&format!("service-{n}"), n), Expect::Any).unwrap();
        }
    }
    let original = std::fs::read(&path).unwrap();
    let len = original.len();

    // Garbage over most of the file.
    let mut bytes = original.clone();
    bytes[len / 4..].iter_mut().for_each(|byte| *byte ^= 0x5A);
    std::fs::write(&path, &bytes).unwrap();
    assert_corrupt(&path, "corrupted");

    // One flipped byte anywhere: the open's integrity check (or the record
    // decoding) reports it, or it lands in unused space; redb never panics.
    for offset in (0..len).step_by(len / 40) {
        let mut bytes = original.clone();
        bytes[offset] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        match KvStore::open(&path).and_then(|store| store.services().and(store.modules())) {
            Ok(_) | Err(StoreError::Corrupt { .. }) => {}
            Err(err) => panic!("byte {offset} flipped: {err:?}"),
        }
    }
}

#[test]
fn an_undecodable_record_is_corrupt_naming_its_key() {
    let dir = TempDir::new("record");
    let path = dir.store_path();
    open(&path).put_service(&record("kubia", 1), Expect::Any).unwrap();
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let mut value = vec![0; 16];
        value.extend_from_slice(b"{\"service\": 42}");
        txn.open_table(KV).unwrap().insert("services/kubia", value.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let store = open(&path);
    for err in [store.services().unwrap_err(), store.service("kubia").unwrap_err()] {
        assert!(matches!(&err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(r#""services/kubia" does not decode: "#), "{err}");
    }
}

#[test]
fn a_second_open_is_locked_out() {
    let dir = TempDir::new("locked");
    let path = dir.store_path();
    let first = open(&path);
    let err = open_err(&path);
    assert!(matches!(&err, StoreError::Locked { path: p } if *p == path), "{err:?}");
    assert_eq!(err.to_string(), format!("the store at {} is in use by another shoal process", path.display()));
    first.put_service(&record("kubia", 1), Expect::Any).unwrap();
    drop(first);
    assert_eq!(bare(open(&path).services().unwrap()).len(), 1, "the lock goes with the store");
}

#[test]
fn open_fails_clearly_where_it_cannot_create_the_file() {
    let dir = TempDir::new("unwritable");
    let file = dir.0.join("a-file");
    std::fs::write(&file, "").unwrap();
    let err = open_err(&file.join("store.redb"));
    assert!(matches!(&err, StoreError::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
}

#[test]
fn a_schema_1_store_moves_its_module_bytes_to_files() {
    let dir = TempDir::new("migrate");
    let path = dir.store_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let (good, tampered) = (b"a component of schema 1".to_vec(), b"bytes changed behind shoal's back".to_vec());
    let good_digest = sha256_hex(&good);
    let tampered_digest = sha256_hex(b"what was stored first");
    // A store as Shoal wrote it before module bytes moved to files.
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema_version", 1).unwrap();
        txn.open_table(SERVICES)
            .unwrap()
            .insert("kubia", serde_json::to_vec(&record("kubia", 2)).unwrap().as_slice())
            .unwrap();
        {
            let mut modules = txn.open_table(LEGACY_MODULES).unwrap();
            modules.insert(good_digest.as_str(), good.as_slice()).unwrap();
            modules.insert(tampered_digest.as_str(), tampered.as_slice()).unwrap();
        }
        {
            let mut infos = txn.open_table(MODULE_INFO).unwrap();
            for (digest, size) in [(&good_digest, good.len()), (&tampered_digest, 21)] {
                let info = format!(r#"{{"digest":"{digest}","size":{size},"createdUnix":1700000000}}"#);
                infos.insert(digest.as_str(), info.as_bytes()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    let store = open(&path);
    assert_eq!(bare(store.services().unwrap()), vec![record("kubia", 2)]);
    assert_eq!(store.module(&good_digest).unwrap(), Some(good.clone()));
    assert_eq!(store.modules().unwrap().len(), 2);
    let file = store.module_file(&good_digest).unwrap().unwrap();
    assert_eq!(file, path.with_file_name("modules").join(format!("{good_digest}.wasm")));
    // Bytes that did not match their digest still do not: refused, not lost.
    assert!(matches!(store.module(&tampered_digest), Err(StoreError::Tampered { .. })));
    drop(store);
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value(), SCHEMA_VERSION);
        assert!(txn.open_table(LEGACY_MODULES).is_err(), "the table of module bytes is gone");
        assert!(txn.open_table(SERVICES).is_err(), "services moved under revisioned keys");
        assert!(txn.open_table(MODULE_INFO).is_err(), "module infos moved under revisioned keys");
    }
    // And it opens again as it is.
    assert_eq!(open(&path).module(&good_digest).unwrap(), Some(good));
}

#[test]
fn deleting_a_module_frees_its_file_and_compaction_keeps_the_store_small() {
    let dir = TempDir::new("delete");
    let path = dir.store_path();
    let store = open(&path);
    let infos: Vec<_> = (0..5u8).map(|n| store.put_module(&vec![n; 1 << 20]).unwrap()).collect();
    let modules_dir = path.with_file_name("modules");
    let files = || std::fs::read_dir(&modules_dir).unwrap().flatten().filter(|e| e.path().is_file()).count();
    assert_eq!(files(), 5);
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20, "module bytes are not in the store file");
    for info in &infos {
        assert!(store.delete_module(&info.digest).unwrap());
    }
    store.compact().unwrap();
    assert_eq!(files(), 0);
    assert!(store.modules().unwrap().is_empty());
    // An upload that is not committed leaves nothing behind.
    let mut upload = store.begin_module().unwrap();
    upload.write(b"half").unwrap();
    drop(upload);
    let staged = store.begin_module().unwrap().finish().unwrap();
    let staged_path = staged.path().to_owned();
    assert!(staged_path.exists());
    drop(staged);
    assert!(!staged_path.exists());
}

/// A tmpfs of `size` on `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        if std::process::Command::new("id").arg("-u").output().map(|o| o.stdout != b"0\n").unwrap_or(true) {
            return Err("not running as root".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount failed ({status})"));
        }
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_writes_clearly_and_the_next_write_after_freeing_space_succeeds() {
    let dir = TempDir::new("full");
    let mount = dir.0.join("fs");
    let _tmpfs = match Tmpfs::mount(&mount, "4m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a tmpfs: {reason}");
            return;
        }
    };
    let path = mount.join("data").join("store.redb");
    let store = open(&path);
    store.put_service(&record("kubia", 1), Expect::Any).unwrap();
    let info = store.put_module(b"a module").unwrap();

    // Fill the disk, then write records until one fails.
    let filler = mount.join("filler");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[7u8; 16 * 1024]).is_ok() {}
    }
    let mut failure = None;
    for n in 0..2000 {
        let mut big = record(&format!("service-{n}"), 1);
        big.service.spec.env.insert("PADDING".into(), "x".repeat(64 * 1024));
        if let Err(error) = store.put_service(&big, Expect::Any) {
            failure = Some(error);
            break;
        }
    }
    let error = failure.expect("writes never failed on a full disk");
    assert!(matches!(&error, StoreError::DiskFull { .. }), "{error:?}");
    assert!(
        error.to_string().starts_with(&format!("disk full in {}: cannot ", path.parent().unwrap().display())),
        "{error}"
    );
    // A module does not fit either, and leaves nothing behind.
    let module = store.put_module(&[9u8; 256 * 1024]).unwrap_err();
    assert!(matches!(module, StoreError::DiskFull { .. }), "{module:?}");
    // Reads go on.
    assert_eq!(bare1(store.service("kubia").unwrap()), Some(record("kubia", 1)));
    assert_eq!(store.module(&info.digest).unwrap().as_deref(), Some(&b"a module"[..]));

    // Space freed: the next write succeeds, on the same handle.
    std::fs::remove_file(&filler).unwrap();
    store.put_service(&record("after", 2), Expect::Any).unwrap();
    assert_eq!(bare1(store.service("after").unwrap()), Some(record("after", 2)));
    store.put_module(&[9u8; 256 * 1024]).unwrap();
    drop(store);
    // And everything acknowledged is there after a reopen.
    let store = open(&path);
    assert_eq!(bare1(store.service("kubia").unwrap()), Some(record("kubia", 1)));
    assert_eq!(bare1(store.service("after").unwrap()), Some(record("after", 2)));
}

#[test]
fn module_files_without_a_record_are_swept_after_their_grace() {
    let dir = TempDir::new("sweep");
    let store = open(&dir.store_path());
    let kept = store.put_module(b"\0asm kept").unwrap();
    let gone = store.put_module(b"\0asm gone").unwrap();
    // Another node deleted `gone`: its record went, its file here stayed.
    store.kv().delete(&format!("modules/{}", gone.digest), Expect::Any).unwrap();
    assert!(store.has_module_file(&gone.digest));
    // Within the grace (an upload between its file and its record) it stays.
    assert_eq!(store.sweep_module_files(Duration::from_secs(3600)).unwrap(), Vec::<String>::new());
    assert!(store.has_module_file(&gone.digest));
    assert_eq!(store.sweep_module_files(Duration::ZERO).unwrap(), vec![gone.digest.clone()]);
    assert!(!store.has_module_file(&gone.digest));
    assert!(store.has_module_file(&kept.digest));
    assert_eq!(store.module(&kept.digest).unwrap().unwrap(), b"\0asm kept");
}
