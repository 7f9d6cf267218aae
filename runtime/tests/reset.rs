//! Resetting an instance (`Instance::snapshot` / `Instance::reset`, added by
//! Shoal's copy of wasmtime) returns every piece of state a guest can change
//! to what a fresh instance has: linear memory (contents and size), mutable
//! globals, tables (elements and size), dropped data and element segments,
//! and the handle tables. The components here are written in WAT so that
//! each piece is touched directly, on the engine the workers use.

use wasmtime::component::{Component, Instance, Linker, ResourceTable, TypedFunc};
use wasmtime::{Engine, Store};

use shoal_runtime::engine::{PoolSettings, worker_engine};

/// `run` observes the state a fresh instance has, one bit per piece (511
/// when all hold), then changes every piece: a second `run` on the same
/// instance traps (its segments are dropped) or returns another value.
const OBSERVER: &str = r#"
(component
  (core module $m
    (memory 1)
    (table $t 4 funcref)
    (global $g (mut i32) (i32.const 7))
    (type $ret (func (result i32)))
    (func $a (result i32) i32.const 100)
    (func $b (result i32) i32.const 200)
    (elem $e funcref (ref.func $a) (ref.func $b))
    (elem (table $t) (i32.const 0) func $a)
    (data $d "\2a")
    (data (i32.const 16) "\05")
    (func (export "run") (result i32)
      (local $fp i32)
      ;; bit 0: the global's initial value
      (if (i32.eq (global.get $g) (i32.const 7))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 1)))))
      ;; bit 1: the active data segment's byte
      (if (i32.eq (i32.load8_u (i32.const 16)) (i32.const 5))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 2)))))
      ;; bit 2: zero elsewhere
      (if (i32.eqz (i32.load8_u (i32.const 100)))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 4)))))
      ;; bit 3: the initial memory size
      (if (i32.eq (memory.size) (i32.const 1))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 8)))))
      ;; bit 4: the initial table size
      (if (i32.eq (table.size $t) (i32.const 4))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 16)))))
      ;; bit 5: the active element segment's function
      (if (i32.eq (call_indirect $t (type $ret) (i32.const 0)) (i32.const 100))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 32)))))
      ;; bit 6: a null element elsewhere
      (if (ref.is_null (table.get $t (i32.const 1)))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 64)))))
      ;; bit 7: the passive data segment is still there (traps if dropped)
      (memory.init $d (i32.const 200) (i32.const 0) (i32.const 1))
      (if (i32.eq (i32.load8_u (i32.const 200)) (i32.const 42))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 128)))))
      ;; bit 8: the passive element segment is still there (traps if dropped)
      (table.init $t $e (i32.const 2) (i32.const 0) (i32.const 2))
      (if (i32.eq (call_indirect $t (type $ret) (i32.const 3)) (i32.const 200))
        (then (local.set $fp (i32.or (local.get $fp) (i32.const 256)))))
      ;; Now change all of it.
      (global.set $g (i32.const 8))
      (i32.store8 (i32.const 16) (i32.const 9))
      (i32.store8 (i32.const 100) (i32.const 1))
      (drop (memory.grow (i32.const 3)))
      (i32.store (i32.const 200000) (i32.const -1))
      (drop (table.grow $t (ref.null func) (i32.const 5)))
      (table.set $t (i32.const 1) (ref.func $b))
      (table.set $t (i32.const 8) (ref.func $b))
      (data.drop $d)
      (elem.drop $e)
      (local.get $fp))
    (func (export "trap") unreachable)
  )
  (core instance $i (instantiate $m))
  (func (export "run") (result u32) (canon lift (core func $i "run")))
  (func (export "trap") (canon lift (core func $i "trap")))
)
"#;

const FRESH: u32 = 0x1ff;

fn engine() -> Engine {
    worker_engine(PoolSettings { max_instances: 4, instance_memory: 16 << 20 }).expect("worker engine")
}

async fn instantiate(engine: &Engine, wat: &str) -> (Store<ResourceTable>, Instance) {
    let component = Component::new(engine, wat).expect("component compiles");
    let mut store = Store::new(engine, ResourceTable::new());
    // The worker engine interrupts at epoch deadlines; nothing ticks here.
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = Linker::new(engine).instantiate_async(&mut store, &component).await.expect("instantiates");
    (store, instance)
}

fn run(store: &mut Store<ResourceTable>, instance: &Instance) -> TypedFunc<(), (u32,)> {
    instance.get_typed_func::<(), (u32,)>(store, "run").expect("run export")
}

#[tokio::test]
async fn a_reset_instance_sees_what_a_fresh_one_sees() {
    let engine = engine();
    let (mut store, instance) = instantiate(&engine, OBSERVER).await;
    let run = run(&mut store, &instance);
    let snapshot = instance.snapshot(&mut store).expect("a snapshot");
    for round in 0..5 {
        let (fingerprint,) = run.call_async(&mut store, ()).await.expect("run");
        assert_eq!(fingerprint, FRESH, "round {round}: {fingerprint:#x}");
        let leaked = instance.reset(&mut store, &snapshot).expect("reset");
        assert!(leaked.is_empty());
    }
}

#[tokio::test]
async fn without_a_reset_the_instance_keeps_its_changes() {
    // The control for the test above: the observer does see its own
    // changes when nothing undoes them (its dropped segment traps).
    let engine = engine();
    let (mut store, instance) = instantiate(&engine, OBSERVER).await;
    let run = run(&mut store, &instance);
    assert_eq!(run.call_async(&mut store, ()).await.expect("first run").0, FRESH);
    let second = run.call_async(&mut store, ()).await;
    assert!(second.is_err(), "a second run without reset returned {second:?}");
}

#[tokio::test]
async fn a_trapped_instance_is_not_reset() {
    let engine = engine();
    let (mut store, instance) = instantiate(&engine, OBSERVER).await;
    let trap = instance.get_typed_func::<(), ()>(&mut store, "trap").expect("trap export");
    let snapshot = instance.snapshot(&mut store).expect("a snapshot");
    assert!(trap.call_async(&mut store, ()).await.is_err());
    let error = instance.reset(&mut store, &snapshot).expect_err("a trapped instance is refused");
    assert!(format!("{error:#}").contains("trapped"), "{error:#}");
}

#[tokio::test]
async fn a_host_call_during_instantiation_makes_the_instance_not_resettable() {
    // What a start function got from the host (a random seed, the time)
    // would be the same after every reset, where fresh instances differ.
    let engine = engine();
    let wat = r#"
      (component
        (import "seed" (func $seed (result u32)))
        (core func $lowered (canon lower (func $seed)))
        (core module $m
          (import "host" "seed" (func $seed (result i32)))
          (global $seed (mut i32) (i32.const 0))
          (func $init (global.set $seed (call $seed)))
          (start $init)
          (func (export "run") (result i32) (global.get $seed)))
        (core instance $i (instantiate $m (with "host" (instance (export "seed" (func $lowered))))))
        (func (export "run") (result u32) (canon lift (core func $i "run"))))
    "#;
    let component = Component::new(&engine, wat).expect("component compiles");
    let mut linker = Linker::<ResourceTable>::new(&engine);
    linker.root().func_wrap("seed", |_, (): ()| Ok((42u32,))).expect("define seed");
    let mut store = Store::new(&engine, ResourceTable::new());
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker.instantiate_async(&mut store, &component).await.expect("instantiates");
    let error = instance.snapshot(&mut store).err().expect("the snapshot fails");
    assert!(format!("{error:#}").contains("called the host while it was instantiated"), "{error:#}");
}

#[tokio::test]
async fn a_start_function_that_writes_memory_makes_the_instance_not_resettable() {
    // A reset restores the memory image, not what a start function wrote
    // after it, so the snapshot refuses and the worker instantiates instead.
    let engine = engine();
    let wat = r#"
      (component
        (core module $m
          (memory 1)
          (func $init (i32.store (i32.const 64) (i32.const 1)))
          (start $init)
          (func (export "run") (result i32) (i32.load (i32.const 64))))
        (core instance $i (instantiate $m))
        (func (export "run") (result u32) (canon lift (core func $i "run"))))
    "#;
    let (mut store, instance) = instantiate(&engine, wat).await;
    let error = instance.snapshot(&mut store).err().expect("the snapshot fails");
    assert!(format!("{error:#}").contains("instantiation wrote or grew a memory"), "{error:#}");
}

#[tokio::test]
async fn a_snapshot_belongs_to_its_instance() {
    let engine = engine();
    let (mut store, first) = instantiate(&engine, OBSERVER).await;
    let snapshot = first.snapshot(&mut store).expect("a snapshot");
    let component = Component::new(&engine, OBSERVER).expect("component compiles");
    let second =
        Linker::<ResourceTable>::new(&engine).instantiate_async(&mut store, &component).await.expect("instantiates");
    let error = second.reset(&mut store, &snapshot).expect_err("another instance's snapshot is refused");
    assert!(format!("{error:#}").contains("another instance"), "{error:#}");
    // Only the store's newest instance, before it runs, can be snapshotted.
    assert!(first.snapshot(&mut store).is_err());
}
