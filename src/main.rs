//! `shoal`: the command-line entry point. Thin wiring over the crates:
//! `shoal up` runs gateway and node agent for the services in manifests;
//! `shoal worker` is a replica process, started by the node agent.

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
    /// Run one replica (started by the node agent; not for direct use).
    #[command(hide = true)]
    Worker {
        /// The replica's name (shown in process listings).
        name: String,
        /// The worker's configuration, as JSON.
        #[arg(long)]
        config: String,
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
            init_tracing("warn");
            let result = serde_json::from_str(&config)
                .map_err(|e| anyhow::anyhow!("bad worker configuration: {e}"))
                .and_then(shoal_runtime::run_worker);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("worker {name}: error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
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
