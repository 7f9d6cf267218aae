//! `shoal`: the command-line entry point. Thin wiring over the crates:
//! `shoal up` runs gateway and node agent for the services in manifests;
//! `shoal worker` is a replica process, started by the node agent.

mod builder;
mod cli;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    Up(UpArgs),
    /// Build a service's directory into the Wasm component its manifest
    /// names: a Cargo project for wasm32-wasip2, a JavaScript project
    /// (package.json, app.js, index.js) with the JS SDK.
    Build(builder::BuildArgs),
    /// Run one replica (started by the node agent; not for direct use).
    #[command(hide = true)]
    Worker {
        /// The replica's name, or `standby-<n>` for a standby process
        /// (shown in process listings).
        name: String,
        /// The worker's configuration, as JSON. Without it, the worker
        /// reads it from stdin (the node agent sends it there, so that the
        /// guest's environment is not in the process listing).
        #[arg(long)]
        config: Option<String>,
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
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:8080", env = "SHOAL_LISTEN")]
    listen: SocketAddr,
    /// The admin API's address (the CLI talks to it; never the gateway's port).
    #[arg(long, default_value = "127.0.0.1:8081", env = "SHOAL_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// Where Shoal keeps its data: the store (services, modules), the API
    /// token and the compiled-module cache.
    /// Default: $XDG_DATA_HOME/shoal or ~/.local/share/shoal.
    #[arg(long, value_name = "DIR", env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => {
            init_tracing("info");
            match up::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Worker { name, config } => {
            let exec = shoal_runtime::worker::since_spawn();
            init_tracing("warn");
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
                .and_then(|config| shoal_runtime::run_worker(config, exec));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("worker {name}: error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
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

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Sets this thread's name, which for the main thread is the process name
/// `ps` and `top` show (at most 15 bytes).
fn set_process_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of which it uses at
    // most 16 bytes; `name` is one.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}
