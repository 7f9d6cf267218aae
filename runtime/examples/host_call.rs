//! What one call from a guest into the host costs on the workers' engine:
//! `cargo run --release -p shoal-runtime --example host_call -- [calls]`.
//!
//! A kubia request crosses between guest and host about 29 times (22 calls
//! of `wasi:http`, `wasi:io`, `wasi:cli` and `wasi:clocks` functions, and the
//! drops of the resources they return), and those crossings, not the
//! guest's own code, are the largest part of a worker's CPU per request.
//! This measures the two kinds of crossing, each in a loop inside one guest
//! call so that nothing else is timed:
//!
//! - `plain`: `monotonic-clock.now`, a call without resources (it includes
//!   the host's `clock_gettime`, ~20 ns);
//! - `resource`: `get-stdout` and the drop of the stream it returns, the
//!   pair most `wasi:http` calls look like (a resource made in the host's
//!   table, handed to the guest, dropped).
//!
//! Not a test: it prints ns per call, comparable only within one run (to
//! weigh a change to the host-call path, run it before and after).

use std::time::Instant;

use shoal_runtime::engine::{PoolSettings, worker_engine};
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct Host {
    table: ResourceTable,
    wasi: WasiCtx,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// `plain n` calls `now` n times; `resource n` gets and drops stdout n times.
const LOOPS: &str = r#"
(component
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (export "now" (func (result u64)))))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (export "output-stream" (type (sub resource)))))
  (alias export $streams "output-stream" (type $stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $stream (type $outer))
    (export "output-stream" (type $s (eq $outer)))
    (export "get-stdout" (func (result (own $s))))))
  (core func $now (canon lower (func $clock "now")))
  (core func $get (canon lower (func $stdout "get-stdout")))
  (core func $drop (canon resource.drop $stream))
  (core module $m
    (import "host" "now" (func $now (result i64)))
    (import "host" "get" (func $get (result i32)))
    (import "host" "drop" (func $drop (param i32)))
    (func (export "plain") (param $n i32)
      (loop $l
        (drop (call $now))
        (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
    (func (export "resource") (param $n i32)
      (loop $l
        (call $drop (call $get))
        (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))
  (core instance $i (instantiate $m (with "host" (instance
    (export "now" (func $now)) (export "get" (func $get)) (export "drop" (func $drop))))))
  (func (export "plain") (param "n" u32) (canon lift (core func $i "plain")))
  (func (export "resource") (param "n" u32) (canon lift (core func $i "resource")))
)
"#;

fn main() -> wasmtime::Result<()> {
    let calls: u32 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| wasmtime::format_err!("calls {arg:?}: {e}"))?,
        None => 2_000_000,
    };
    if calls == 0 {
        wasmtime::bail!("calls must be at least 1");
    }
    let engine = worker_engine(PoolSettings { max_instances: 1, instance_memory: 16 << 20 })?;
    let component = Component::new(&engine, LOOPS)?;
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut store = Store::new(&engine, Host { table: ResourceTable::new(), wasi: WasiCtx::builder().build() });
        // The workers' engine interrupts guests at epoch deadlines: none here.
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker.instantiate_async(&mut store, &component).await?;
        println!("| crossing | ns per call |\n|---|---|");
        for (name, per) in [("plain", 1.0), ("resource", 2.0)] {
            let run = instance.get_typed_func::<(u32,), ()>(&mut store, name)?;
            let start = Instant::now();
            run.call_async(&mut store, (calls,)).await?;
            let ns = start.elapsed().as_nanos() as f64 / f64::from(calls) / per;
            let label =
                if name == "plain" { "plain (`now`)" } else { "resource (`get-stdout`, drop), each of the two" };
            println!("| {label} | {ns:.1} |");
        }
        Ok(())
    })
}
