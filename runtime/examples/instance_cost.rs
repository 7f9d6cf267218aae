//! What a fresh instance per request costs, phase by phase, under a few
//! pooling settings: `cargo run --release -p shoal-runtime --example
//! instance_cost -- <component.wasm> [iterations] [variant index]`.
//!
//! Each iteration does what a worker does for one request (a store, the
//! request's resources, instantiation, the guest's handler with its body
//! read to the end, the store dropped) on one thread, and the table gives
//! the mean µs of each phase and the host allocations per request. After
//! the worker's settings, a row resets one instance after each request (the
//! worker's default, "instantiate" being the reset) and a row serves every
//! request with one instance (the `maxRequests` > 1 policy). A variant index runs that variant alone (for
//! a profiler); `REUSED_ONLY=1` prints only the reused row. Not a test: it
//! prints, and the numbers are only comparable within one run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body::Body as _;
use http_body_util::BodyExt as _;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The system allocator, counting allocations (host side only: a guest
/// allocates in its own linear memory).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Guest {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoOutbound,
}

struct NoOutbound;

type OutboundResult = Result<
    (
        http::Response<wasmtime_wasi_http::WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl wasmtime_wasi_http::WasiHttpHooks for NoOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = OutboundResult> + Send> {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Guest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

struct Variant {
    name: &'static str,
    keep_resident: usize,
    pagemap: Enabled,
    cow: bool,
    lazy_tables: bool,
}

const PHASES: [&str; 5] = ["store", "request", "instantiate", "handle", "drop"];

fn engine(variant: &Variant) -> wasmtime::Result<Engine> {
    let mut pooling = PoolingAllocationConfig::new();
    pooling
        .total_component_instances(4)
        .total_core_instances(32)
        .total_memories(8)
        .total_tables(16)
        .total_stacks(4)
        .max_memory_size(16 << 20)
        .linear_memory_keep_resident(variant.keep_resident)
        .table_keep_resident(64 << 10)
        .pagemap_scan(variant.pagemap);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(1 << 20)
        .memory_init_cow(variant.cow)
        .table_lazy_init(variant.lazy_tables)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&config)
}

async fn one(pre: &ProxyPre<Guest>, times: &mut [Duration; 5]) -> wasmtime::Result<()> {
    let mut clock = Instant::now();
    let mut lap = |times: &mut [Duration; 5], i: usize| {
        let now = Instant::now();
        times[i] += now - clock;
        clock = now;
    };
    let mut store = new_store(pre);
    lap(times, 0);
    let request = prepare(&mut store)?;
    lap(times, 1);
    let proxy = pre.instantiate_async(&mut store).await?;
    lap(times, 2);
    serve(&mut store, &proxy, request).await?;
    lap(times, 3);
    drop(store);
    lap(times, 4);
    Ok(())
}

/// A kubia `GET /` in the store's table, and where its response will come.
type Prepared = (
    wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    tokio::sync::oneshot::Receiver<
        Result<
            http::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
            wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
        >,
    >,
);

fn prepare(store: &mut Store<Guest>) -> wasmtime::Result<Prepared> {
    let request = http::Request::builder().uri("http://kubia/").header("host", "kubia").body(
        http_body_util::Empty::<bytes::Bytes>::new().map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
    )?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    Ok((req, out, receiver))
}

/// The guest's handler for a prepared request, its response body read to
/// the end.
async fn serve(
    store: &mut Store<Guest>,
    proxy: &wasmtime_wasi_http::p2::bindings::Proxy,
    (req, out, receiver): Prepared,
) -> wasmtime::Result<()> {
    proxy.wasi_http_incoming_handler().call_handle(&mut *store, req, out).await?;
    let mut body = receiver.await?.map_err(|code| wasmtime::format_err!("{code:?}"))?.into_body();
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        frame?;
    }
    Ok(())
}

/// A store as the worker makes one: the guest's environment, no outbound
/// HTTP, and a deadline far enough away.
fn new_store(pre: &ProxyPre<Guest>) -> Store<Guest> {
    let mut wasi = WasiCtx::builder();
    wasi.env("HOSTNAME", "bench");
    let mut store = Store::new(
        pre.engine(),
        Guest { table: ResourceTable::new(), wasi: wasi.build(), http: WasiHttpCtx::new(), hooks: NoOutbound },
    );
    store.set_epoch_deadline(1_000_000);
    store
}

/// One instance reset after each request, as the worker does by default.
async fn reset(pre: &ProxyPre<Guest>, iterations: u32, times: &mut [Duration; 5]) -> wasmtime::Result<()> {
    let mut store = new_store(pre);
    let instance = pre.instance_pre().instantiate_async(&mut store).await?;
    let proxy = wasmtime_wasi_http::p2::bindings::Proxy::new(&mut store, &instance)?;
    let snapshot = instance.snapshot(&mut store)?;
    for _ in 0..iterations {
        let mut clock = Instant::now();
        let mut lap = |times: &mut [Duration; 5], i: usize| {
            let now = Instant::now();
            times[i] += now - clock;
            clock = now;
        };
        let request = prepare(&mut store)?;
        lap(times, 1);
        serve(&mut store, &proxy, request).await?;
        lap(times, 3);
        let leaked = instance.reset(&mut store, &snapshot)?;
        assert!(store.data_mut().table.shoal_delete_leaked(&leaked));
        assert!(store.data().table.is_empty(), "host table not empty after reset");
        // New clocks, random generators and HTTP context, as the worker
        // makes after a reset.
        *store.data_mut().wasi.clocks() = wasmtime_wasi::clocks::WasiClocksCtx::default();
        *store.data_mut().wasi.random() = wasmtime_wasi::random::WasiRandomCtx::default();
        store.data_mut().http = WasiHttpCtx::new();
        lap(times, 2);
    }
    Ok(())
}

/// The request and handler phases on one instance that serves them all
/// (`spec.instances.maxRequests` > 1), for comparison.
async fn reused(pre: &ProxyPre<Guest>, iterations: u32) -> wasmtime::Result<([Duration; 5], u64)> {
    let mut times = [Duration::ZERO; 5];
    let mut allocations = 0;
    let mut store = new_store(pre);
    let proxy = pre.instantiate_async(&mut store).await?;
    for i in 0..iterations + iterations / 10 {
        if i == iterations / 10 {
            allocations = ALLOCATIONS.load(Ordering::Relaxed);
        }
        let started = Instant::now();
        let request = prepare(&mut store)?;
        let prepared = Instant::now();
        serve(&mut store, &proxy, request).await?;
        if i >= iterations / 10 {
            times[1] += prepared - started;
            times[3] += prepared.elapsed();
        }
    }
    Ok((times, ALLOCATIONS.load(Ordering::Relaxed) - allocations))
}

fn print_row(name: &str, times: &[Duration; 5], iterations: u32, allocations: u64) {
    let us: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e6 / f64::from(iterations)).collect();
    let cells: Vec<String> = us.iter().map(|u| format!("{u:.1}")).collect();
    let per_request = allocations as f64 / f64::from(iterations);
    println!("| {name} | {} | {:.1} | {per_request:.0} |", cells.join(" | "), us.iter().sum::<f64>());
}

fn main() -> wasmtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| wasmtime::format_err!("usage: instance_cost <component.wasm> [iterations] [variant index]"))?;
    let iterations: u32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20_000);
    // Optionally one variant only (its index), e.g. under a profiler.
    let only: Option<usize> = args.next().map(|n| n.parse()).transpose()?;
    let variants = [
        Variant {
            name: "worker (1 MiB resident, pagemap)",
            keep_resident: 1 << 20,
            pagemap: Enabled::Auto,
            cow: true,
            lazy_tables: true,
        },
        Variant {
            name: "1 MiB resident, no pagemap",
            keep_resident: 1 << 20,
            pagemap: Enabled::No,
            cow: true,
            lazy_tables: true,
        },
        Variant {
            name: "4 MiB resident, pagemap",
            keep_resident: 4 << 20,
            pagemap: Enabled::Auto,
            cow: true,
            lazy_tables: true,
        },
        Variant {
            name: "nothing resident (madvise)",
            keep_resident: 0,
            pagemap: Enabled::No,
            cow: true,
            lazy_tables: true,
        },
        Variant {
            name: "1 MiB resident, pagemap, no CoW",
            keep_resident: 1 << 20,
            pagemap: Enabled::Auto,
            cow: false,
            lazy_tables: true,
        },
        Variant {
            name: "1 MiB resident, pagemap, tables initialized eagerly",
            keep_resident: 1 << 20,
            pagemap: Enabled::Auto,
            cow: true,
            lazy_tables: false,
        },
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    println!("{iterations} requests of {path} per variant, mean µs per phase");
    println!();
    println!("| variant | {} | total | host allocations |", PHASES.join(" | "));
    println!("|---|{}---|---|", "---|".repeat(PHASES.len()));
    for (index, variant) in variants.iter().enumerate() {
        if only.is_some_and(|only| only != index) {
            continue;
        }
        let engine = engine(variant)?;
        let component = Component::from_file(&engine, &path)?;
        let mut linker = Linker::<Guest>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
        let mut times = [Duration::ZERO; 5];
        if std::env::var_os("REUSED_ONLY").is_some() {
            let (times, allocations) = runtime.block_on(reused(&pre, iterations))?;
            print_row("worker settings, one instance reused", &times, iterations, allocations);
            continue;
        }
        let mut allocations = 0;
        runtime.block_on(async {
            for _ in 0..iterations / 10 {
                one(&pre, &mut [Duration::ZERO; 5]).await?;
            }
            allocations = ALLOCATIONS.load(Ordering::Relaxed);
            for _ in 0..iterations {
                one(&pre, &mut times).await?;
            }
            allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
            wasmtime::Result::<()>::Ok(())
        })?;
        print_row(variant.name, &times, iterations, allocations);
        if index == 0 {
            {
                let mut times = [Duration::ZERO; 5];
                let a0 = ALLOCATIONS.load(Ordering::Relaxed);
                runtime.block_on(reset(&pre, iterations, &mut times))?;
                let a = ALLOCATIONS.load(Ordering::Relaxed) - a0;
                print_row("one instance, reset after each request", &times, iterations, a);
            }
            let (times, allocations) = runtime.block_on(reused(&pre, iterations))?;
            print_row("worker settings, one instance reused", &times, iterations, allocations);
        }
    }
    Ok(())
}
