//! `shoal`: the command-line entry point. Thin wiring over the crates:
//! `shoal up` runs gateway and node agent for the services in manifests;
//! `shoal worker` is a replica process, started by the node agent.

/// mimalloc for `shoal up` and the workers alike: glibc's malloc was 14 %
/// of a worker's CPU per fresh instance (see ARCHITECTURE.md, "Decisions").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod builder;
mod cli;
mod handover;
mod scaffold;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};

/// A small Kubernetes for WebAssembly HTTP microservices.
#[derive(Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and a node agent for the services in the manifests
    /// (without -f: the kubia sample, 3 replicas).
    Up(Box<UpArgs>),
    /// Build a service's directory into the Wasm component its manifest
    /// names: a Cargo project for wasm32-wasip2, a JavaScript project
    /// (package.json, app.js, index.js) with the JS SDK.
    Build(builder::BuildArgs),
    /// Start a service: write a directory (handler, build files,
    /// service.yaml, README) that `shoal build` builds and `shoal apply`
    /// deploys, outside any clone of Shoal.
    New(scaffold::NewArgs),
    /// Run one replica (started by the node agent; not for direct use).
    #[command(hide = true)]
    Worker {
        /// The replica's name, or `standby-<n>` for a standby process
        /// (shown in process listings).
        name: String,
        /// Spaces: room for the replica's name in the process's command
        /// line, which a standby rewrites once it knows it.
        #[arg(hide = true)]
        room: Option<String>,
        /// The worker's configuration, as JSON. Without it, the worker
        /// reads it from stdin (the node agent sends it there, so that the
        /// guest's environment is not in the process listing).
        #[arg(long)]
        config: Option<String>,
    },
    /// Fork workers on request, without exec (started by the node agent;
    /// not for direct use).
    #[command(hide = true)]
    Zygote {
        /// Spaces: room in the command line for the workers it forks.
        #[arg(hide = true)]
        room: Option<String>,
    },
    /// The client commands that talk to `shoal up`'s admin API (apply, get,
    /// describe, delete, scale, logs, rollout, push).
    #[command(flatten)]
    Client(cli::Command),
}

/// Arguments of `shoal up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// A Service manifest (YAML); repeat for several.
    #[arg(short = 'f', long = "file", value_name = "MANIFEST")]
    files: Vec<PathBuf>,
    /// Start without the kubia sample on the first start of a data
    /// directory (it is applied only then, and only without -f).
    #[arg(long, env = "SHOAL_NO_SAMPLE")]
    no_sample: bool,
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:8080", env = "SHOAL_LISTEN")]
    listen: SocketAddr,
    /// The admin API's address (the CLI talks to it; never the gateway's port).
    #[arg(long, default_value = "127.0.0.1:8081", env = "SHOAL_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// Serve HTTPS too, on this address (e.g. 127.0.0.1:8443): HTTP/2 and
    /// HTTP/1.1 over TLS 1.3 or 1.2. Certificates: --tls-cert/--tls-key as
    /// the default, and one per host with `shoal tls add`. Without
    /// --tls-cert, a self-signed certificate for localhost, for trying it
    /// out (clients must skip verification: curl -k).
    #[arg(long, value_name = "ADDR", env = "SHOAL_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// The default certificate chain (PEM, leaf first) HTTPS serves: to
    /// clients that name no host, or a host without a certificate of its own.
    #[arg(long, value_name = "FILE", env = "SHOAL_TLS_CERT", requires_all = ["tls_key", "tls_listen"])]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", env = "SHOAL_TLS_KEY", requires_all = ["tls_cert", "tls_listen"])]
    tls_key: Option<PathBuf>,
    /// Where Shoal keeps its data: the store (services, modules), the API
    /// token and the compiled-module cache.
    /// Default: $XDG_DATA_HOME/shoal or ~/.local/share/shoal.
    #[arg(long, value_name = "DIR", env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Open client connections the gateway takes at most (on each of its
    /// listeners, plain and HTTPS); past it, new ones are closed at once. Default: 10,000, or as many as the open-files
    /// limit holds if that is fewer. A number the limit cannot hold is
    /// lowered, with a warning.
    #[arg(long, value_name = "N", env = "SHOAL_MAX_CONNECTIONS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_connections: Option<usize>,
    /// How long workers keep running after this `shoal up` is gone without
    /// a successor (killed, crashed): a `shoal up` started on the same data
    /// directory within it takes them over, serving on; after it they exit.
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "SHOAL_ORPHAN_GRACE",
          value_parser = parse_duration)]
    orphan_grace: std::time::Duration,
    /// How long a module that no service and no replica uses is kept before
    /// it is deleted ("90s", "1h"); `shoal gc` deletes them at once.
    #[arg(long, value_name = "DURATION", default_value = "1h", env = "SHOAL_MODULE_RETENTION",
          value_parser = parse_duration)]
    module_retention: std::time::Duration,
    /// How the kernel schedules Shoal's threads and its workers: `batch`
    /// (SCHED_BATCH: a thread that wakes up waits for the running one's
    /// turn to end instead of preempting it, so the gateway and the
    /// replicas stop interrupting each other mid-request) or `normal`.
    #[arg(long, value_enum, value_name = "POLICY", default_value = "batch", env = "SHOAL_CPU_SCHEDULING")]
    cpu_scheduling: up::CpuScheduling,
    /// Replicas started at once at most (1..=256); more wait their turn,
    /// oldest request first. Default: twice the cores, at least 4.
    #[arg(long, value_name = "N", env = "SHOAL_START_CONCURRENCY",
          value_parser = clap::value_parser!(u16).range(1..=256).map(usize::from))]
    start_concurrency: Option<usize>,
    /// Standby workers (started ahead, waiting to become a replica) kept at
    /// most (0..=256); the pool follows the last minute's starts.
    #[arg(long, value_name = "N", env = "SHOAL_STANDBY_MAX", default_value_t = shoal_node::DEFAULT_STANDBY_MAX,
          value_parser = clap::value_parser!(u16).range(0..=256).map(usize::from))]
    standby_max: usize,
    /// A PEM file of CA certificates to trust, besides the machine's, for
    /// services' HTTPS calls to hosts outside; repeat for several.
    #[arg(long, value_name = "FILE", env = "SHOAL_OUTBOUND_CA", value_delimiter = ',')]
    outbound_ca: Vec<PathBuf>,
    /// Join a cluster whose desired state is in etcd at these endpoints
    /// (`http://host:2379`, comma-separated); without it, Shoal is a single
    /// node with its store in the data directory.
    #[arg(long, value_name = "URL[,URL…]", env = "SHOAL_ETCD")]
    etcd: Option<String>,
    /// This node's name in the cluster. Default: the host name.
    #[arg(long, value_name = "NAME", env = "SHOAL_NODE_NAME", requires = "etcd")]
    node_name: Option<String>,
    /// The address other nodes reach this one at. Default: the admin
    /// API's address.
    #[arg(long, value_name = "HOST:PORT", env = "SHOAL_ADVERTISE", requires = "etcd")]
    advertise: Option<String>,
    /// How long a node that stops renewing its lease stays in the cluster
    /// before its replicas are placed elsewhere (renewed every third).
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "SHOAL_NODE_LEASE_TTL",
          value_parser = parse_lease_ttl, requires = "etcd")]
    node_lease_ttl: std::time::Duration,
    /// Memory this node gives replicas ("8Gi"); the scheduler places no
    /// more than this here. Default: the machine's memory.
    #[arg(long, value_name = "BYTES", env = "SHOAL_CAPACITY", value_parser = parse_capacity, requires = "etcd")]
    capacity: Option<u64>,
}

fn parse_lease_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < std::time::Duration::from_secs(2) || ttl > std::time::Duration::from_secs(3600) {
        return Err(format!("{text:?} is outside 2s..1h (etcd leases count whole seconds, at least 2)"));
    }
    if ttl.subsec_nanos() != 0 {
        return Err(format!("{text:?} is not a whole number of seconds (etcd leases count whole seconds)"));
    }
    Ok(ttl)
}

fn parse_capacity(text: &str) -> Result<u64, String> {
    match shoal_api::parse_memory(text.trim())? {
        0 => Err("must be more than 0".to_owned()),
        bytes => Ok(bytes),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{e} (expected e.g. 90s, 30m, 1h)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => {
            // Everything `shoal up` prints goes through the console, which
            // never blocks on a reader who stops reading (panics too).
            init_tracing_with("info", || shoal_node::console::Stderr);
            shoal_node::console::take_panics();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| up::run(*args)));
            if let Ok(Err(error)) = &result {
                shoal_node::console_eprintln!("error: {error:#}");
            }
            // The last lines, unless nobody reads them (5 s at most).
            shoal_node::console::flush(std::time::Duration::from_secs(5));
            match result {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(_)) => ExitCode::FAILURE,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Command::Worker { name, room: _, config } => {
            let exec = shoal_runtime::worker::since_spawn();
            init_tracing("warn");
            exit_code(worker(&name, config, exec))
        }
        Command::Zygote { room: _ } => {
            init_tracing("warn");
            set_process_name(c"shoal-zygote");
            exit_code(shoal_node::zygote::serve(
                |name, exec| {
                    shoal_runtime::worker::preload::after_fork();
                    worker(name, None, exec)
                },
                |module| {
                    let pool = shoal_runtime::engine::PoolSettings {
                        max_instances: module.max_instances,
                        instance_memory: module.instance_memory,
                    };
                    shoal_runtime::worker::preload::preload(pool, &module.module, &module.cache_dir)
                },
            ))
        }
        Command::New(args) => match scaffold::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Build(args) => match builder::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Client(command) => cli::run(command),
    }
}

/// A worker's life, exec'd as `shoal worker` or forked by the zygote:
/// reads its configuration (from stdin without `config`) and serves until
/// told to stop. Returns the exit code.
fn worker(name: &str, config: Option<String>, exec: std::time::Duration) -> i32 {
    // Forked by the zygote, the command line is still the zygote's.
    set_command_line(&format!("shoal worker {name}"));
    // What `ps -o comm` and top show: a standby waits for its
    // configuration; once it has it, it is a worker like any other.
    set_process_name(if name.starts_with("standby-") { c"shoal-standby" } else { c"shoal-worker" });
    let config = match config {
        Some(config) => Ok(config),
        None => std::io::read_to_string(std::io::stdin())
            .map_err(|e| anyhow::anyhow!("cannot read the worker configuration from stdin: {e}")),
    };
    set_process_name(c"shoal-worker");
    let result = config
        .and_then(|c| serde_json::from_str(&c).map_err(|e| anyhow::anyhow!("bad worker configuration: {e}")))
        .and_then(|config: shoal_runtime::WorkerConfig| {
            // `ps` shows the replica a standby became, not the standby.
            set_command_line(&format!("shoal worker {}", config.replica));
            shoal_runtime::run_worker(config, exec)
        });
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("worker {name}: error: {error:#}");
            1
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_tracing(default: &str) {
    init_tracing_with(default, std::io::stderr);
}

/// Logs at `default` (or `SHOAL_LOG`) to `writer`, which writes to stderr.
fn init_tracing_with<W>(default: &str, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Rewrites this process's command line as `ps` shows it: the memory that
/// held its arguments (whose bounds `/proc/self/stat` gives) gets `title`,
/// cut to fit, and NULs after it. The node agent passes every worker an
/// argument of spaces as room for the replica's name.
fn set_command_line(title: &str) {
    let Some((start, end)) = argument_memory() else { return };
    let room = end.saturating_sub(start);
    if room < 2 {
        return;
    }
    let title = title.as_bytes();
    let len = title.len().min(room - 1);
    // SAFETY: [start, end) is this process's own argument memory, on its
    // initial stack, writable, and read by nothing else once the arguments
    // were parsed (which `main` did before calling this); the writes stay
    // within it.
    unsafe {
        std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, len);
        std::ptr::write_bytes((start + len) as *mut u8, 0, room - len);
    }
}

/// Where this process's arguments are in its memory: `arg_start` and
/// `arg_end` of `/proc/self/stat` (fields 48 and 49).
fn argument_memory() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let start = fields.get(45)?.parse().ok()?;
    let end = fields.get(46)?.parse().ok()?;
    (start != 0 && end > start).then_some((start, end))
}

/// Sets this thread's name, which for the main thread is the process name
/// `ps` and `top` show (at most 15 bytes).
fn set_process_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of which it uses at
    // most 16 bytes; `name` is one.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}
