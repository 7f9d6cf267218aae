//! `shoal up`: load manifests, check and precompile their modules, then run
//! the gateway and one supervised task per replica until SIGINT or SIGTERM.
//!
//! Shutdown, in order: the gateway stops accepting and drains its in-flight
//! requests; every replica is sent SIGTERM, drains and exits (SIGKILL after
//! the grace period); cgroups, sockets and the run directory are removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use shoal_api::Service;
use shoal_gateway::{Gateway, GatewayConfig};
use shoal_node::{AgentConfig, CgroupLimits, Cgroups, NodeAgent, ReplicaSpec};
use shoal_runtime::{ComponentCache, sha256_hex};
use tokio::sync::watch;

use crate::UpArgs;

/// The kubia sample, built from `samples/hello` by `build.rs`.
const HELLO_WASM: &[u8] = include_bytes!(env!("SHOAL_HELLO_WASM"));

/// The manifest `shoal up` runs without `-f`.
const DEFAULT_MANIFEST: &str = "\
apiVersion: shoal.dev/v1
kind: Service
metadata:
  name: kubia
spec:
  module: kubia.wasm
  replicas: 3
  resources:
    memory: 64Mi
    cpu: 500m
    instanceMemory: 16Mi
  timeout: 10s
";

/// Concurrent instances per replica (also its instance pool size).
const MAX_CONCURRENCY: u32 = 128;
/// Time a replica gets to finish in-flight requests when stopped.
const GRACE: Duration = Duration::from_secs(10);
/// Restart back-off: first delay, cap, and the uptime that resets it.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// A service ready to run: validated, its module compiled into the cache.
struct Planned {
    service: Service,
    revision: String,
    ready: AtomicUsize,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let cache = ComponentCache::new(data_dir.join("cache"));
    let services = load_services(&args.files, &data_dir)?;
    let planned = plan(services, &cache)?;

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the tokio runtime")?;
    runtime.block_on(serve(args, planned, cache))
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("shoal");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/shoal")
}

/// A validated service and the manifest it came from, for messages.
struct Loaded {
    source: String,
    service: Service,
}

/// Reads and validates every manifest, or the default kubia manifest.
fn load_services(files: &[PathBuf], data_dir: &Path) -> anyhow::Result<Vec<Loaded>> {
    let mut services = Vec::new();
    if files.is_empty() {
        let dir = data_dir.join("samples");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let module = dir.join("kubia.wasm");
        if std::fs::read(&module).ok().as_deref() != Some(HELLO_WASM) {
            std::fs::write(&module, HELLO_WASM).with_context(|| format!("cannot write {}", module.display()))?;
        }
        let parsed = shoal_api::parse_manifests(DEFAULT_MANIFEST, &dir).map_err(|e| anyhow!("{e}"))?;
        services
            .extend(parsed.into_iter().map(|service| Loaded { source: "the built-in kubia manifest".into(), service }));
    }
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read manifest {}", file.display()))?;
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let parsed = shoal_api::parse_manifests(&text, dir).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        for service in &parsed {
            check_module(file, service)?;
        }
        services.extend(parsed.into_iter().map(|service| Loaded { source: file.display().to_string(), service }));
    }
    let all: Vec<Service> = services.iter().map(|l| l.service.clone()).collect();
    shoal_api::validate_set(&all).map_err(|e| anyhow!("{e}"))?;
    Ok(services)
}

fn check_module(manifest: &Path, service: &Service) -> anyhow::Result<()> {
    let module = &service.spec.module;
    if !module.is_file() {
        let mut message =
            format!("{}: spec.module: {} not found (service {:?})", manifest.display(), module.display(), service.name);
        if module.components().any(|c| c.as_os_str() == "wasm32-wasip2") {
            message.push_str(
                "; build it first, for example: cargo build --release --target wasm32-wasip2 --manifest-path <project>/Cargo.toml",
            );
        }
        bail!(message);
    }
    Ok(())
}

/// Compiles every module (or finds it in the cache), so that a file that is
/// not a valid component stops `shoal up` before anything starts, and
/// workers only load precompiled code.
fn plan(services: Vec<Loaded>, cache: &ComponentCache) -> anyhow::Result<Vec<Arc<Planned>>> {
    let engine = shoal_runtime::engine::compiler_engine().map_err(|e| anyhow!("cannot configure wasmtime: {e:#}"))?;
    let mut planned = Vec::new();
    for Loaded { source, service } in services {
        let started = Instant::now();
        let bytes = std::fs::read(&service.spec.module)
            .with_context(|| format!("{source}: spec.module: cannot read {}", service.spec.module.display()))?;
        let (_, outcome) = cache
            .load_bytes(&engine, &service.spec.module, &bytes)
            .map_err(|e| anyhow!("{source}: spec.module: {e} (service {:?})", service.name))?;
        tracing::info!(service = %service.name, ?outcome, elapsed = ?started.elapsed(), "module ready");
        let spec_json = serde_json::to_string(&service.spec).unwrap_or_default();
        let revision = sha256_hex(format!("{}\n{spec_json}", sha256_hex(&bytes)).as_bytes())[..6].to_owned();
        planned.push(Arc::new(Planned { service, revision, ready: AtomicUsize::new(0) }));
    }
    Ok(planned)
}

async fn serve(args: UpArgs, planned: Vec<Arc<Planned>>, cache: ComponentCache) -> anyhow::Result<()> {
    let instance = format!("up-{}", std::process::id());
    let cgroups = match Cgroups::detect(&instance) {
        Ok(cgroups) => Some(cgroups),
        Err(reason) => {
            eprintln!(
                "WARNING: cgroups are unavailable ({reason}); replicas will run UNCONFINED, \
                 without memory, cpu or pids limits"
            );
            None
        }
    };
    let run_dir = std::env::temp_dir().join(format!("shoal-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let agent = Arc::new(NodeAgent::new(
        AgentConfig {
            exe: std::env::current_exe().context("cannot find the shoal executable")?,
            run_dir: run_dir.clone(),
            cache_dir: cache.dir().to_owned(),
            ready_timeout: Duration::from_secs(60),
            log: shoal_node::stdio_log(),
        },
        cgroups,
    ));

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            agent.cleanup();
            let _ = std::fs::remove_dir_all(&run_dir);
            bail!("cannot listen on {}: {error}", args.listen);
        }
    };
    let address = listener.local_addr()?;
    let gateway = Gateway::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let mut slots = Vec::new();
    for service in &planned {
        gateway.set_service(&service.service.name, service.service.spec.routes.clone(), service.service.spec.timeout);
        for _ in 0..service.service.spec.replicas {
            slots.push(tokio::spawn(supervise(service.clone(), agent.clone(), gateway.clone(), shutdown_rx.clone())));
        }
    }
    let mut gateway_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(gateway.clone().serve(listener, GatewayConfig::default(), async move {
        let _ = gateway_shutdown.wait_for(|stop| *stop).await;
    }));
    println!("shoal: gateway listening on http://{address}");

    wait_for_signal().await;
    println!("shoal: shutting down");
    let _ = shutdown_tx.send(true);
    if let Err(error) = server.await {
        tracing::warn!(%error, "gateway task failed");
    }
    for slot in slots {
        let _ = slot.await;
    }
    agent.cleanup();
    let _ = std::fs::remove_dir_all(&run_dir);
    println!("shoal: stopped");
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Keeps one replica of a service running: starts it, puts it in rotation,
/// and replaces it when it exits, backing off while it keeps failing.
async fn supervise(
    planned: Arc<Planned>,
    agent: Arc<NodeAgent>,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = &planned.service;
    let mut backoff = BACKOFF_START;
    let mut counted_ready = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let spec = ReplicaSpec {
            service: service.name.clone(),
            name: replica_name(&service.name, &planned.revision),
            module: service.spec.module.clone(),
            env: service.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            limits: CgroupLimits {
                memory: service.spec.resources.memory,
                cpu_millis: service.spec.resources.cpu_millis,
            },
            instance_memory: service.spec.resources.instance_memory,
            timeout: service.spec.timeout,
            max_concurrency: MAX_CONCURRENCY,
            drain_timeout: GRACE,
        };
        match agent.start(&spec).await {
            Ok(mut replica) => {
                let started = Instant::now();
                println!(
                    "shoal: replica {} ready (pid {}, cgroup {})",
                    replica.name,
                    replica.pid,
                    replica.cgroup.as_deref().unwrap_or("none: unconfined")
                );
                gateway.add_replica(&service.name, &replica.name, &replica.socket);
                if !counted_ready {
                    counted_ready = true;
                    let ready = planned.ready.fetch_add(1, Ordering::SeqCst) + 1;
                    if ready == service.spec.replicas as usize {
                        println!("shoal: service {} ready: {ready}/{ready} replicas", service.name);
                    }
                }
                tokio::select! {
                    exit = replica.wait() => {
                        gateway.remove_replica(&service.name, &replica.name);
                        if started.elapsed() >= BACKOFF_RESET {
                            backoff = BACKOFF_START;
                        }
                        if *shutdown.borrow() {
                            return;
                        }
                        eprintln!("shoal: replica {} exited ({exit}); replacing it in {backoff:?}", replica.name);
                    }
                    () = stopped(&mut shutdown) => {
                        gateway.remove_replica(&service.name, &replica.name);
                        let exit = agent.stop(&mut replica, GRACE).await;
                        tracing::info!(replica = %replica.name, %exit, "stopped");
                        return;
                    }
                }
            }
            Err(error) => {
                eprintln!(
                    "shoal: replica {} of service {} failed to start: {error}; retrying in {backoff:?}",
                    spec.name, service.name
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            () = stopped(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Completes once shutdown has been requested.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// `<service>-<revision>-<5 random characters>`, like a Kubernetes pod name.
fn replica_name(service: &str, revision: &str) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{service}-{revision}-{suffix}")
}
