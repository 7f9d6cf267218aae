//! The wasmtime [`Engine`] configuration shared by the compiler (in `shoal up`)
//! and the workers.
//!
//! Code compiled by one engine can only be loaded by an engine whose
//! compilation settings match, so both sides build their engine here. Only the
//! instance allocator differs: workers use the pooling allocator, the compiler
//! does not need one.

pub use wasmtime::Engine;
use wasmtime::{Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch ticker advances. Request deadlines are measured in
/// these ticks, so a deadline fires at most one tick late.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Sizing of a worker's instance pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Instances that may exist at once, which bounds concurrent requests.
    pub max_instances: u32,
    /// The largest linear memory one instance may have, in bytes.
    pub instance_memory: u64,
}

/// Builds the engine for compiling components (no instance pool).
pub fn compiler_engine() -> wasmtime::Result<Engine> {
    Engine::new(&base_config())
}

/// Builds the engine a worker runs components with.
///
/// The pooling allocator keeps linear memories, tables and stacks mapped
/// between instances. On the VMs we measured, a fresh instance per request is
/// dominated by `madvise`, so memory is kept resident up to 1 MiB per slot and
/// reset with the `PAGEMAP_SCAN` ioctl where the kernel has it (6.7+), which
/// touches only the pages that were dirtied.
pub fn worker_engine(pool: PoolSettings) -> wasmtime::Result<Engine> {
    let mut pooling = PoolingAllocationConfig::new();
    let instances = pool.max_instances.max(1);
    // A component built by Rust for wasip2 has a handful of core instances
    // (the program, the WASI adapter and shims), each with at most one memory
    // and table of its own.
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .total_stacks(instances)
        .max_memory_size(usize::try_from(pool.instance_memory).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&config)
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        // Deadlines: a timer signal advances the epoch (`worker::ticker`);
        // each store gets a deadline in ticks and traps when it passes.
        .epoch_interruption(true)
        // The default 4 GiB reservation per memory lets Cranelift drop bounds
        // checks; it is address space, not memory, and a pool of a few
        // hundred slots fits easily in 128 TiB.
        .max_wasm_stack(1 << 20);
    config
}
