//! `shoal up`: the control plane, the gateway and a node agent in one
//! process, until SIGINT or SIGTERM.
//!
//! Start, in order:
//!
//! 1. Open the store in the data directory (services and modules survive
//!    restarts) and the API token (created on first start, mode 0600).
//! 2. Check every `-f` manifest and compile every module it names, so that
//!    bad input stops `shoal up` before anything starts; then apply them
//!    (upload the module, store the service). On the first start of a data
//!    directory without `-f` (or `--no-sample`), apply the built-in kubia
//!    sample.
//! 3. Bind the gateway and the admin API, start the reconciler, which starts
//!    the replicas of every stored service.
//!
//! Shutdown: the gateway stops accepting and drains; every replica leaves
//! the rotation and is sent SIGTERM, drains and exits (SIGKILL after the
//! grace period); cgroups, sockets and the run directory are removed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use shoal_api::Service;
use shoal_control::admin::AdminState;
use shoal_control::apply::apply;
use shoal_control::cluster::{Cluster, ClusterConfig};
use shoal_control::events::EventLog;
use shoal_control::logs::LogBook;
use shoal_control::pods::PodContext;
use shoal_control::reconciler::Controller;
use shoal_control::store::{Blobs, EtcdKv, Expect, Kv, KvStore, Store, StoreError};
use shoal_gateway::{Gateway, GatewayConfig};
use shoal_node::{AgentConfig, Cgroups, LogSink, NodeAgent};
// Everything `shoal up` prints goes through the console, which never blocks
// on a reader who stops reading (shoal_node::console).
use shoal_node::{console_eprintln as eprintln, console_println as println};
use shoal_runtime::ComponentCache;
use tokio::sync::{Notify, watch};

use crate::UpArgs;
use crate::handover::{Caller, Inheritance, Role, Shared};

/// The kubia sample, built from `samples/hello` by `build.rs`.
const HELLO_WASM: &[u8] = include_bytes!(env!("SHOAL_HELLO_WASM"));

/// The manifest applied on the first start of a data directory without `-f`.
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

/// Marks a data directory whose first start is done.
const INITIALIZED: &str = "initialized";

/// A validated service, the manifest it came from, and its module's bytes.
struct Loaded {
    source: String,
    service: Service,
    /// The component's bytes; `None` for a module named by its digest
    /// (`sha256:…`), which must be in the store already.
    module: Option<Vec<u8>>,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    // First, while this is the only thread: every thread and worker
    // started from here on inherits the policy.
    set_cpu_scheduling(args.cpu_scheduling);
    let open_files = raise_open_files_limit();
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let cache = ComponentCache::new(data_dir.join("cache"));
    let first_start = !data_dir.join(INITIALIZED).exists();
    let mut loaded = load_services(&args.files)?;
    // A node joining a cluster adds nothing of its own: the cluster's
    // services are what was applied to it.
    if args.files.is_empty() && first_start && args.etcd.is_none() && !args.no_sample {
        loaded.extend(builtin_kubia()?);
    }
    compile(&loaded, &cache)?;
    let default_certificate = default_certificate(&args)?;

    // A shoal up running on this data directory hands over to this one:
    // after it let go of the store, before this one opens it.
    let inheritance = if args.etcd.is_none() { crate::handover::take_over(&data_dir)? } else { None };
    let etcd = args.etcd.as_deref().map(connect_etcd).transpose()?;
    let store: Arc<dyn Store> = match &etcd {
        Some((client, kv)) => {
            let location = PathBuf::from(format!("etcd at {}", client.endpoints().join(",")));
            Arc::new(KvStore::new(kv.clone(), Blobs::new(data_dir.join("modules")), location))
        }
        None => Arc::new(KvStore::open(&data_dir.join("store.redb"))?),
    };
    let mut token = load_or_create_token(&data_dir)?;
    if let Some((_, kv)) = &etcd {
        token = cluster_token(kv.as_ref(), &token, &data_dir)?;
    }
    let mut all: Vec<Service> = store.services()?.into_iter().map(|r| r.service).collect();
    all.retain(|s| !loaded.iter().any(|l| l.service.name == s.name));
    all.extend(loaded.iter().map(|l| l.service.clone()));
    shoal_api::validate_set(&all).map_err(|e| anyhow!("{e}"))?;
    for Loaded { source, service, module } in loaded {
        let digest = match (module, service.spec.module_digest()) {
            (Some(module), _) => store.put_module(&module)?.digest,
            (None, Some(digest)) => match store.module_info(digest)? {
                Some(info) => info.digest,
                None => bail!(
                    "{source}: spec.module: {} is not in the store of {} (shoal get modules -o wide lists the \
                     stored ones)",
                    service.spec.module_field,
                    data_dir.display()
                ),
            },
            (None, None) => unreachable!("a module is read unless it is named by digest"),
        };
        let name = service.name.clone();
        let warnings = shoal_api::warnings(&service);
        let (applied, _) = apply(&*store, service, &digest).map_err(|e| anyhow!("{source}: {e}"))?;
        println!("shoal: service/{name} {}", applied.as_str());
        for warning in warnings {
            eprintln!("warning: {source}: service {name:?}: {warning}");
        }
    }
    std::fs::write(data_dir.join(INITIALIZED), b"")
        .with_context(|| format!("cannot write to the data directory {}", data_dir.display()))?;

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // tokio's own default (one thread per core) unless TOKIO_WORKER_THREADS
    // says otherwise.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(gateway_threads());
    }
    let runtime = builder.enable_all().build().context("cannot start the tokio runtime")?;
    let listeners = if args.tls_listen.is_some() { 2 } else { 1 };
    let max_connections = connection_budget(args.max_connections, open_files, listeners);
    let stores = Stores { store, etcd, token, cache, data_dir, inheritance };
    runtime.block_on(serve(args, stores, default_certificate, max_connections))
}

/// The certificate HTTPS serves by default, when `--tls-listen` is given:
/// `--tls-cert`/`--tls-key`, checked now so that a bad file stops `shoal
/// up` with its name; or a self-signed one for this machine's local names.
fn default_certificate(args: &UpArgs) -> anyhow::Result<Option<Arc<shoal_gateway::tls::Certificate>>> {
    use shoal_gateway::tls::{Certificate, now_unix};
    let Some(address) = args.tls_listen else { return Ok(None) };
    let certificate = match (&args.tls_cert, &args.tls_key) {
        (Some(cert_path), Some(key_path)) => {
            let cert =
                std::fs::read(cert_path).with_context(|| format!("--tls-cert: cannot read {}", cert_path.display()))?;
            let key =
                std::fs::read(key_path).with_context(|| format!("--tls-key: cannot read {}", key_path.display()))?;
            let certificate = Certificate::load(&cert, &key, now_unix()).map_err(|error| {
                anyhow!("{}", error.naming(&cert_path.display().to_string(), &key_path.display().to_string()))
            })?;
            if let Some(warning) = certificate.info.expiry_warning(now_unix()) {
                eprintln!("warning: --tls-cert {}: {warning}", cert_path.display());
            }
            certificate.with_origin(format!("--tls-cert {}", cert_path.display()))
        }
        _ => {
            let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            if !address.ip().is_unspecified() && !address.ip().is_loopback() {
                names.push(address.ip().to_string());
            }
            let (cert, key) = shoal_gateway::tls::self_signed(&names)?;
            let certificate =
                Certificate::load(cert.as_bytes(), key.as_bytes(), now_unix()).map_err(|e| anyhow!("{e}"))?;
            eprintln!(
                "WARNING: no --tls-cert: HTTPS on {address} serves a self-signed certificate for {}; clients cannot \
                 verify it (curl -k). Give --tls-cert/--tls-key, or add certificates per host with `shoal tls add`.",
                names.join(", ")
            );
            certificate.with_origin("self-signed")
        }
    };
    Ok(Some(Arc::new(certificate)))
}

/// The prefix of Shoal's keys in etcd.
const ETCD_PREFIX: &str = "/shoal/";
/// How long `shoal up --etcd` waits for etcd to answer at start.
const ETCD_WAIT: Duration = Duration::from_secs(60);

/// Connects to etcd and loads the store's mirror of it.
fn connect_etcd(endpoints: &str) -> anyhow::Result<(shoal_etcd::Client, Arc<EtcdKv>)> {
    let client = shoal_etcd::Client::new(endpoints).map_err(|e| anyhow!("--etcd: {e}"))?;
    // etcd may start after this node (a machine's boot, a whole cluster
    // started at once): wait for it a while, saying so.
    let started = Instant::now();
    let mut said = None;
    let kv = loop {
        match EtcdKv::connect(client.clone(), ETCD_PREFIX) {
            Ok(kv) => break kv,
            Err(error @ StoreError::Unavailable { .. }) if started.elapsed() < ETCD_WAIT => {
                if said.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(5)) {
                    eprintln!("shoal: waiting for etcd ({} s at most): {error}", ETCD_WAIT.as_secs());
                    said = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => bail!("cannot join the cluster: {error}"),
        }
    };
    Ok((client, Arc::new(kv)))
}

/// The cluster's admin token: the first node's, stored in etcd, so that
/// the CLI works with any node's API. Written to this node's data
/// directory too, where the CLI on this machine reads it.
fn cluster_token(kv: &dyn Kv, local: &str, data_dir: &Path) -> anyhow::Result<String> {
    const KEY: &str = "cluster/token";
    let token = match kv.put(KEY, local.as_bytes(), Expect::Absent) {
        Ok(_) => local.to_owned(),
        Err(StoreError::Conflict { .. }) => {
            let entry = kv.get(KEY)?.ok_or_else(|| anyhow!("the cluster's token vanished from etcd"))?;
            String::from_utf8(entry.value).map_err(|_| anyhow!("the cluster's token in etcd is not text"))?
        }
        Err(error) => return Err(anyhow!("cannot read or store the cluster's token: {error}")),
    };
    if token != local {
        let path = data_dir.join("token");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(token.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(token)
}

/// The machine's memory, in bytes: a node's default capacity.
fn machine_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(8 << 30, |kib| kib * 1024)
}

/// Descriptors kept for everything but client connections: the store, the
/// admin API's connections, and the first workers' channels and pipes.
const RESERVED_FDS: u64 = 1024 + shoal_control::admin::MAX_CONNECTIONS as u64;

/// The gateway's connection cap within the open-files limit: half of what
/// [`RESERVED_FDS`] leaves; the other half is for workers (each holds its
/// channel's three descriptors and three pipes in `shoal up`), so no number
/// of connections to one listener starves the others or the workers.
fn connection_budget(wanted: Option<usize>, open_files: u64, listeners: u64) -> usize {
    let budget =
        usize::try_from(open_files.saturating_sub(RESERVED_FDS) / 2 / listeners.max(1)).unwrap_or(usize::MAX).max(1);
    let Some(wanted) = wanted else {
        return budget.min(GatewayConfig::default().max_connections);
    };
    if wanted > budget {
        eprintln!(
            "WARNING: the open-files limit ({open_files}) holds only {budget} gateway connections (half of what \
             is left after {RESERVED_FDS} kept for the rest; the other half is for workers); the gateway takes {budget}, not \
             {wanted}. Raise the limit (ulimit -n) for more."
        );
        return budget;
    }
    wanted
}

/// Threads for the gateway (and the control plane, which is mostly idle):
/// half the cores, at least one. The workers, one thread each, need the
/// rest. Measured with kubia on 2 cores (3 replicas, cpu 500m): one gateway
/// thread gave 19–22k requests/s with p99 4.5–4.8 ms, two gave 16–17k with
/// p99 10–14 ms; with instances reused, p99 2.8–3.1 ms against 8.6–68 ms.
/// Threads of one runtime competing with the workers for two cores wake
/// each other across cores and get descheduled mid-request.
fn gateway_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The kernel's scheduling policy for `shoal up`, its threads and its
/// workers (`--cpu-scheduling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuScheduling {
    /// `SCHED_BATCH`: the same fair share of the CPU as `normal`, but a
    /// thread that wakes up does not preempt the one running; it runs when
    /// that one blocks or its slice ends.
    Batch,
    /// `SCHED_OTHER`, the kernel's default.
    Normal,
}

/// Applies `policy` to the calling thread; threads and processes started
/// from it afterwards inherit it (`fork` and `exec` keep the policy).
///
/// Why batch is the default: the gateway and every replica are separate
/// processes that wake each other for each request. Under the normal policy
/// each wake-up may preempt the process that sent it, halfway through its
/// batch of work: measured with kubia on 2 cores (3 replicas, wrk -c32),
/// 0.2 involuntary context switches per request in the workers and 0.5 in
/// the gateway, ~56 µs of CPU per request. Under batch the workers' fell to
/// 0.01, CPU per request to ~46 µs, requests/s rose 10–17 % and p99 fell
/// from 3.1 to 1.7 ms (fresh instances); with instances reused, 57–60k
/// against 47–54k requests/s, p99 1.3 ms against 1.7–9.3 ms. Setting
/// `SCHED_BATCH` needs no privilege; a failure is reported and Shoal runs
/// on under the normal policy.
fn set_cpu_scheduling(policy: CpuScheduling) {
    let (name, number) = match policy {
        CpuScheduling::Batch => ("SCHED_BATCH", libc::SCHED_BATCH),
        CpuScheduling::Normal => ("SCHED_OTHER", libc::SCHED_OTHER),
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, number, &param) } != 0 {
        eprintln!(
            "WARNING: cannot set the CPU scheduling policy {name} (--cpu-scheduling): {}; running under the \
             current policy",
            std::io::Error::last_os_error()
        );
    }
}

/// The open-files limit Shoal asks for when it may raise the hard limit
/// (as root): 10,000 gateway connections at two descriptors each, and room
/// for the rest.
const WANTED_OPEN_FILES: u64 = 65_536;

/// Every client connection and every pooled worker connection is a file
/// descriptor: raise the soft limit to the hard one, and, where allowed
/// (root), both to [`WANTED_OPEN_FILES`], as nginx does with
/// `worker_rlimit_nofile`. Returns the limit in effect.
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(WANTED_OPEN_FILES);
    let wanted = limit.rlim_max.max(WANTED_OPEN_FILES.min(ceiling));
    for target in [wanted, limit.rlim_max] {
        if target <= limit.rlim_cur {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit { rlim_cur: target, rlim_max: target.max(limit.rlim_max) };
        // SAFETY: setrlimit only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return target;
        }
    }
    limit.rlim_cur
}

/// The data directory when none is given: `$XDG_DATA_HOME/shoal` or
/// `~/.local/share/shoal`.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("shoal");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/shoal")
}

/// The API token in `<data-dir>/token`, created (mode 0600) if missing.
fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    use rand::Rng as _;
    let bytes: [u8; 32] = rand::rng().random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create the API token file {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

fn builtin_kubia() -> anyhow::Result<Vec<Loaded>> {
    let services = shoal_api::parse_manifests(DEFAULT_MANIFEST, Path::new(".")).map_err(|e| anyhow!("{e}"))?;
    Ok(services
        .into_iter()
        .map(|service| Loaded {
            source: "the built-in kubia manifest".into(),
            service,
            module: Some(HELLO_WASM.to_vec()),
        })
        .collect())
}

/// Reads and validates every manifest and reads the modules they name.
fn load_services(files: &[PathBuf]) -> anyhow::Result<Vec<Loaded>> {
    let mut services = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read manifest {}", file.display()))?;
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let parsed = shoal_api::parse_manifests(&text, dir).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        for service in parsed {
            let module = match service.spec.module_digest() {
                Some(_) => None,
                None => Some(read_module(file, &service)?),
            };
            services.push(Loaded { source: file.display().to_string(), service, module });
        }
    }
    let all: Vec<Service> = services.iter().map(|l| l.service.clone()).collect();
    shoal_api::validate_set(&all).map_err(|e| anyhow!("{e}"))?;
    Ok(services)
}

fn read_module(manifest: &Path, service: &Service) -> anyhow::Result<Vec<u8>> {
    let module = &service.spec.module;
    match std::fs::read(module) {
        Ok(bytes) => Ok(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut message = format!(
                "{}: spec.module: {} not found (service {:?})",
                manifest.display(),
                module.display(),
                service.name
            );
            message.push_str(&format!("; build it with: {}", crate::builder::build_hint(manifest, module)));
            bail!(message)
        }
        Err(error) => bail!("{}: spec.module: cannot read {}: {error}", manifest.display(), module.display()),
    }
}

/// Checks every module as the admin API checks uploads (compiled into the
/// cache, linked as a `wasi:http` proxy), so that a file that is not a
/// valid component stops `shoal up` before anything starts.
fn compile(services: &[Loaded], cache: &ComponentCache) -> anyhow::Result<()> {
    let engine = shoal_runtime::engine::compiler_engine().map_err(|e| anyhow!("cannot configure wasmtime: {e:#}"))?;
    for Loaded { source, service, module } in services {
        let Some(module) = module else { continue };
        let started = Instant::now();
        let outcome = cache
            .check_bytes(&engine, &service.spec.module, module)
            .map_err(|e| anyhow!("{source}: spec.module: {e} (service {:?})", service.name))?;
        tracing::info!(service = %service.name, ?outcome, elapsed = ?started.elapsed(), "module ready");
    }
    Ok(())
}

/// What `shoal up` opened before its runtime started.
struct Stores {
    store: Arc<dyn Store>,
    etcd: Option<(shoal_etcd::Client, Arc<EtcdKv>)>,
    token: String,
    cache: ComponentCache,
    data_dir: PathBuf,
    /// What the `shoal up` that handed over to this one passed on.
    inheritance: Option<Inheritance>,
}

async fn serve(
    args: UpArgs,
    stores: Stores,
    default_certificate: Option<Arc<shoal_gateway::tls::Certificate>>,
    max_connections: usize,
) -> anyhow::Result<()> {
    let Stores { store, etcd, token, cache, data_dir, mut inheritance } = stores;
    // Handle SIGINT and SIGTERM from here on (before anything is printed
    // that says Shoal is up), so that a signal always means a clean stop.
    let signal = shutdown_signal()?;
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
    let logs = Arc::new(LogBook::default());
    let log_sink: LogSink = {
        let (logs, stdio) = (logs.clone(), shoal_node::stdio_log());
        Arc::new(move |replica, stream, chunk| {
            logs.push(replica, chunk);
            stdio(replica, stream, chunk);
        })
    };
    let attach_scope = attach_scope(&data_dir);
    let agent = Arc::new(NodeAgent::new(
        AgentConfig {
            exe: std::env::current_exe().context("cannot find the shoal executable")?,
            run_dir: run_dir.clone(),
            cache_dir: cache.dir().to_owned(),
            ready_timeout: Duration::from_secs(60),
            log: log_sink,
            start_concurrency: args.start_concurrency.unwrap_or_else(shoal_node::default_start_concurrency),
            standby_max: args.standby_max,
            attach_scope,
            legacy_attach_dir: Some(data_dir.join("workers")),
            orphan_grace: args.orphan_grace,
        },
        cgroups,
    ));
    agent.warm();
    let cleanup = |agent: &NodeAgent| {
        agent.cleanup();
        let _ = std::fs::remove_dir_all(&run_dir);
    };

    let (gateway_listener, admin_listener, tls_listener) =
        match bind(args.listen, args.admin_listen, args.tls_listen, inheritance.as_mut()) {
            Ok(listeners) => listeners,
            Err(error) => {
                cleanup(&agent);
                return Err(error);
            }
        };
    let gateway_address = gateway_listener.local_addr()?;
    let admin_address = admin_listener.local_addr()?;
    // Copies of the listening sockets, for a successor.
    let shared = share(&gateway_listener, &admin_listener, tls_listener.as_ref())?;

    let gateway = Gateway::new();
    gateway.trust_outbound_cas(&args.outbound_ca)?;
    gateway.certificates().set_default(default_certificate);
    let events = Arc::new(EventLog::printing());
    let ctx = PodContext {
        agent: agent.clone(),
        gateway: gateway.clone(),
        events: events.clone(),
        changed: Arc::new(Notify::new()),
        dirty: Arc::default(),
        node: args.node_name.clone().unwrap_or_else(hostname),
    };
    let changed = ctx.changed.clone();
    let node = ctx.node.clone();
    let controller = Controller::new(store.clone(), ctx, logs.clone(), cache, data_dir.clone(), args.module_retention)?;
    // The admin API, the control plane and the gateway stop apart in a
    // handover; together otherwise.
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let (control_stop, shutdown_rx) = watch::channel(false);
    let (gateway_stop, gateway_stop_rx) = watch::channel(false);

    // In a cluster: register (a lease, this node's record), then run this
    // node's share of the placement.
    let cluster = match etcd {
        Some((client, kv)) => {
            let advertise = match &args.advertise {
                Some(address) => address.clone(),
                None if admin_address.ip().is_unspecified() => {
                    cleanup(&agent);
                    bail!(
                        "--advertise is needed: the admin API listens on {admin_address}, which is not an address \
                         other nodes can reach this one at (give --advertise HOST:PORT)"
                    );
                }
                None => admin_address.to_string(),
            };
            let config = ClusterConfig {
                prefix: ETCD_PREFIX.to_owned(),
                node: node.clone(),
                advertise,
                gateway: gateway_address.to_string(),
                admin: admin_address.to_string(),
                lease_ttl: args.node_lease_ttl,
                capacity: args.capacity.unwrap_or_else(machine_memory),
                secret: token.clone(),
            };
            let cluster = Cluster::new(config, client, kv, changed);
            if let Err(error) = cluster.register().await {
                cleanup(&agent);
                bail!("cannot register node {node:?} in the cluster: {error}");
            }
            controller.join(cluster.clone());
            gateway.join_cluster(&token);
            cluster.attach(gateway.clone(), events.clone(), store.clone());
            println!("shoal: node {node} joined the cluster at {}", args.etcd.as_deref().unwrap_or_default());
            Some(cluster)
        }
        None => None,
    };
    let cluster_mode = cluster.is_some();
    let membership = cluster.clone().map(|cluster| tokio::spawn(cluster.run(shutdown_rx.clone())));

    // Workers an earlier `shoal up` on this data directory left running
    // (it was killed, or crashed) serve on, as this one's replicas.
    let adopted = agent.adopt().await;
    if let Some(inheritance) = &mut inheritance {
        controller.inherit(std::mem::take(&mut inheritance.succession));
    }
    if !adopted.is_empty() {
        println!("shoal: took over {} running worker(s) of an earlier shoal up", adopted.len());
        controller.take_over(adopted);
    }
    // One pass before serving, so that every stored service's routes are
    // published: requests that arrive before its replicas are ready get
    // 503 (no ready replica), never 404.
    controller.reconcile().await;
    let mut reconciler = Some(tokio::spawn(controller.clone().run(shutdown_rx.clone())));
    if inheritance.is_some() {
        // Serve once the predecessor's replicas are in this gateway's
        // rotation too, so that no request finds none.
        let started = Instant::now();
        while controller.taking_over() && started.elapsed() < TAKEOVER_WAIT {
            controller.trigger();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if controller.taking_over() {
            eprintln!(
                "warning: some workers taken over are not in rotation after {} s; serving anyway",
                TAKEOVER_WAIT.as_secs()
            );
        }
    }
    let mut admin = AdminState::new(store.clone(), controller.clone(), events, logs, &token);
    if let Some(cluster) = cluster {
        admin = admin.with_cluster(cluster, gateway.clone());
    } else {
        admin = admin.with_local_node(shoal_api::NodeView {
            name: node.clone(),
            address: admin_address.to_string(),
            gateway: gateway_address.to_string(),
            admin: admin_address.to_string(),
            ready: true,
            leader: true,
            replicas: 0,
            capacity: args.capacity.unwrap_or_else(machine_memory),
            reserved: 0,
            registered_unix: shoal_api::objects::now_unix(),
            lease_granted_unix: None,
            starts: None,
        });
    }
    let mut admin_shutdown = admin_stop_rx;
    let mut admin_server = Some(tokio::spawn(shoal_control::admin::serve(admin_listener, admin, async move {
        let _ = admin_shutdown.wait_for(|stop| *stop).await;
    })));
    let mut gateway_shutdown = gateway_stop_rx.clone();
    let gateway_config = GatewayConfig { max_connections, ..GatewayConfig::default() };
    let gateway_server = tokio::spawn(gateway.clone().serve(gateway_listener, gateway_config.clone(), async move {
        let _ = gateway_shutdown.wait_for(|stop| *stop).await;
    }));
    println!("shoal: gateway listening on http://{gateway_address}");
    let tls_server = tls_listener.map(|listener| {
        let address = listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
        println!("shoal: gateway listening on https://{address}");
        let mut tls_shutdown = gateway_stop_rx.clone();
        tokio::spawn(gateway.clone().serve_tls(listener, gateway_config.clone(), async move {
            let _ = tls_shutdown.wait_for(|stop| *stop).await;
        }))
    });
    println!("shoal: admin API listening on http://{admin_address} (token in {})", data_dir.join("token").display());
    // Requests the predecessor passes on while it drains come to a
    // listener of this process's own, open until the predecessor is gone.
    let passed_on = inheritance
        .as_ref()
        .map(|inheritance| passed_on_listener(&gateway, gateway_address, &gateway_config, inheritance.predecessor));
    // Before telling a predecessor this one serves: the next successor may
    // come right after.
    let mut desk = crate::handover::open_desk(&data_dir);
    if let (Some(inheritance), Some(passed_on)) = (inheritance, passed_on) {
        let predecessor = inheritance.predecessor;
        match inheritance.serving(passed_on) {
            Ok(()) => println!("shoal: took over from pid {predecessor}, which drains and exits"),
            Err(error) => eprintln!("warning: cannot tell pid {predecessor} that this shoal up serves: {error}"),
        }
    }

    tokio::pin!(signal);
    let successor = loop {
        let caller = async {
            match &desk {
                Some(desk) => desk.next().await,
                None => std::future::pending().await,
            }
        };
        let caller = tokio::select! {
            () = &mut signal => break None,
            caller = caller => caller,
        };
        if cluster_mode {
            caller.refuse(
                "this node is in a cluster (--etcd), where a handover is not supported yet: stop this shoal up, \
                 then start the new one (the cluster places the replicas elsewhere meanwhile)",
            );
            continue;
        }
        let pid = caller.pid;
        println!("shoal: handing over to a new shoal up (pid {pid}, version {})", caller.version);
        // No more changes: the admin API drains, the pods let go of their
        // workers (serving on here until the drain), the store closes.
        let _ = admin_stop.send(true);
        if let Some(mut server) = admin_server.take()
            && tokio::time::timeout(ADMIN_DRAIN, &mut server).await.is_err()
        {
            // A long request (a watch, `logs -f`) is cut; a write would
            // have ended by now.
            server.abort();
        }
        controller.release_on_stop();
        let _ = control_stop.send(true);
        if let Some(reconciler) = reconciler.take() {
            let _ = reconciler.await;
        }
        let succession = controller.succession();
        store.release();
        let offered: Vec<(Shared, std::os::fd::RawFd)> =
            shared.iter().map(|(s, fd)| (s.clone(), std::os::fd::AsRawFd::as_raw_fd(fd))).collect();
        match offer(caller, offered, succession).await {
            Ok(gateway) => break Some((pid, gateway)),
            Err(error) => {
                eprintln!(
                    "ERROR: the new shoal up (pid {pid}) failed to take over: {error}. This one goes on serving \
                     its running replicas, without a control plane (no restarts, no scaling, no admin API): start \
                     a new shoal up on {} to take over.",
                    data_dir.display()
                );
                // The failed one may have bound its own socket in place
                // (leave its file: on tmpfs, the new file may have the
                // inode number of ours).
                if let Some(old) = desk.take() {
                    old.close_for_successor();
                }
                desk = crate::handover::open_desk(&data_dir);
            }
        }
    };
    match (desk, successor) {
        (Some(desk), Some(_)) => desk.close_for_successor(),
        (desk, _) => drop(desk),
    }
    match successor {
        Some((pid, successor_gateway)) => {
            println!("shoal: pid {pid} serves; draining");
            gateway.hand_off(successor_gateway);
        }
        None => println!("shoal: shutting down"),
    }
    // The copies of the listening sockets: a listener the successor did
    // not take closes with this process's own.
    drop(shared);
    let _ = gateway_stop.send(true);
    let _ = control_stop.send(true);
    let _ = admin_stop.send(true);
    if let Err(error) = gateway_server.await {
        tracing::warn!(%error, "gateway task failed");
    }
    if let Some(Err(error)) = match tls_server {
        Some(server) => Some(server.await),
        None => None,
    } {
        tracing::warn!(%error, "HTTPS gateway task failed");
    }
    if let Some(reconciler) = reconciler {
        let _ = reconciler.await;
    }
    if let Some(membership) = membership {
        let _ = membership.await;
    }
    if let Some(admin_server) = admin_server {
        let _ = admin_server.await;
    }
    cleanup(&agent);
    match successor {
        Some((pid, _)) => println!("shoal: handed over to pid {pid}; stopped (its workers serve on)"),
        None => println!("shoal: stopped"),
    }
    Ok(())
}

/// How long a `shoal up` handing over lets its admin API's requests end
/// before it closes the store.
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

/// How long a successor waits for the workers it took over to enter its
/// rotation before it serves anyway.
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

/// Offers the listening sockets and the state to `caller`, and waits until
/// it serves.
async fn offer(
    caller: Caller,
    offered: Vec<(Shared, std::os::fd::RawFd)>,
    succession: shoal_control::reconciler::Succession,
) -> anyhow::Result<std::net::SocketAddr> {
    tokio::task::spawn_blocking(move || caller.offer(&offered, &succession))
        .await
        .map_err(|e| anyhow!("the handover task failed: {e}"))?
        .map_err(|e| anyhow!("{e}"))
}

/// Where the predecessor is to pass the requests it cannot serve while it
/// drains: a loopback listener of this process's own, served as the
/// gateway until the predecessor (`predecessor`, 0 when unknown) has
/// exited. Only this process accepts on it: sent to the shared listener,
/// such a request could be accepted by the predecessor again. If no
/// loopback address can be bound, the shared listener's address (with a
/// warning).
fn passed_on_listener(
    gateway: &Arc<Gateway>,
    gateway_address: std::net::SocketAddr,
    config: &GatewayConfig,
    predecessor: u32,
) -> std::net::SocketAddr {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let candidates = [SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), SocketAddr::from((Ipv6Addr::LOCALHOST, 0))];
    let mut failures = Vec::new();
    let bound = candidates.iter().find_map(|&address| match listen(address).and_then(|l| Ok((l.local_addr()?, l))) {
        Ok(bound) => Some(bound),
        Err(error) => {
            failures.push(format!("{address}: {error}"));
            None
        }
    });
    let Some((address, listener)) = bound else {
        let shared = loopback(gateway_address);
        eprintln!(
            "warning: cannot listen on loopback for the requests the predecessor passes on ({}); they go to \
             {shared}, where the predecessor may take some back and answer 503",
            failures.join("; ")
        );
        return shared;
    };
    let gone = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // As the cgroups' stale check tells a gone process.
            if predecessor != 0 && !Path::new(&format!("/proc/{predecessor}")).exists() {
                return;
            }
        }
    };
    let gateway = gateway.clone();
    let config = config.clone();
    tokio::spawn(async move {
        if let Err(error) = gateway.serve(listener, config, gone).await {
            tracing::warn!(%error, "the listener for requests passed on by the predecessor failed");
        }
    });
    address
}

/// Where this process reaches a gateway listening on `address`: the
/// loopback address of its family when it listens on all of them.
fn loopback(address: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, address.port())
}

/// A copy of each listening socket, with what it is for, to offer a
/// successor.
fn share(
    gateway: &tokio::net::TcpListener,
    admin: &tokio::net::TcpListener,
    tls: Option<&tokio::net::TcpListener>,
) -> anyhow::Result<Vec<(Shared, std::os::fd::OwnedFd)>> {
    use std::os::fd::AsFd as _;
    let mut shared = Vec::new();
    for (role, listener) in [(Role::Gateway, Some(gateway)), (Role::Admin, Some(admin)), (Role::Tls, tls)] {
        let Some(listener) = listener else { continue };
        let fd = listener.as_fd().try_clone_to_owned().context("cannot copy a listening socket")?;
        shared.push((Shared { role, address: listener.local_addr()? }, fd));
    }
    Ok(shared)
}

/// The gateway's, the admin API's and the HTTPS listener.
type Listeners = (tokio::net::TcpListener, tokio::net::TcpListener, Option<tokio::net::TcpListener>);

/// Binds the gateway, the admin API and HTTPS, with errors that name the
/// address; or takes the predecessor's listening sockets for them.
fn bind(
    gateway: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    tls: Option<std::net::SocketAddr>,
    mut inherited: Option<&mut Inheritance>,
) -> anyhow::Result<Listeners> {
    let mut take =
        |role: Role, wanted: Option<std::net::SocketAddr>| -> anyhow::Result<Option<tokio::net::TcpListener>> {
            let Some(listener) = inherited.as_mut().and_then(|i| i.listener(role, wanted)) else { return Ok(None) };
            listener.set_nonblocking(true).context("cannot use an inherited listening socket")?;
            Ok(Some(tokio::net::TcpListener::from_std(listener).context("cannot use an inherited listening socket")?))
        };
    let g = match take(Role::Gateway, Some(gateway))? {
        Some(listener) => listener,
        None => listen(gateway).map_err(|e| anyhow!("cannot listen on {gateway}: {e}"))?,
    };
    let a = match take(Role::Admin, Some(admin))? {
        Some(listener) => listener,
        None => listen(admin).map_err(|e| {
            anyhow!("cannot listen on {admin} for the admin API: {e} (choose another with --admin-listen)")
        })?,
    };
    let t = match take(Role::Tls, tls)? {
        Some(listener) => Some(listener),
        None => tls
            .map(|tls| {
                listen(tls)
                    .map_err(|e| anyhow!("cannot listen on {tls} for HTTPS: {e} (choose another with --tls-listen)"))
            })
            .transpose()?,
    };
    Ok((g, a, t))
}

/// Connections the kernel completes for a listener before it accepts them.
/// std's 128 is easily overrun by a burst: the kernel then drops handshakes,
/// and a client whose last handshake packet was dropped believes it is
/// connected to a server that never heard of it. 4,096 is Linux's default
/// ceiling (`net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (and
/// `SO_REUSEADDR`, so a restart does not wait for old connections).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "localhost".into(), |h| h.trim().to_owned())
}

/// A future that completes on SIGINT or SIGTERM; the handlers are in place
/// when this returns.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// The prefix of the abstract socket names on which workers listen for a
/// `shoal up` that did not start them to attach
/// (`shoal_protocol::attach::workers_scope`); `None`, with a warning, when
/// the data directory cannot be read.
fn attach_scope(data_dir: &Path) -> Option<String> {
    match shoal_protocol::attach::workers_scope(data_dir) {
        Ok(scope) => Some(scope),
        Err(error) => {
            eprintln!(
                "warning: cannot read {} ({error}): another shoal up cannot take over running workers from this one",
                data_dir.display()
            );
            None
        }
    }
}
