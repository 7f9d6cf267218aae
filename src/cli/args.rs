//! The arguments of the client commands (clap derive). Connection flags
//! (`--server`, `--token`, `--data-dir`) are flattened into every command,
//! so they go after the command's name: `shoal get svc --server URL`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::connect;

/// The client commands (flattened into `shoal`'s subcommands).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update services from manifest files (uploads their modules).
    Apply(ApplyArgs),
    /// Upload a Wasm component and print its digest.
    Push(PushArgs),
    /// List services, replicas or modules.
    Get(GetArgs),
    /// Show a service in detail, with its replicas and events.
    Describe(DescribeArgs),
    /// Delete a service (its replicas are stopped) or a module nothing uses.
    Delete(DeleteArgs),
    /// Delete every module that no service and no replica uses.
    Gc(GcArgs),
    /// Set the number of replicas of a service.
    Scale(ScaleArgs),
    /// Print the output of a service's replicas, or of one replica.
    Logs(LogsArgs),
    /// Follow rollouts, or undo the last one.
    Rollout(RolloutArgs),
    /// Show the live usage of running replicas: requests in flight, requests
    /// per second, p99 latency, CPU and memory (over the last 10 seconds).
    Top(TopArgs),
    /// Print a link that logs a browser into the dashboard (once, within a
    /// minute), and open it where a browser can be started.
    Dashboard(DashboardArgs),
    /// Manage the certificates HTTPS serves per host (shoal up --tls-listen).
    Tls(TlsArgs),
}

/// Arguments of `shoal tls`.
#[derive(Debug, Args)]
pub struct TlsArgs {
    #[command(subcommand)]
    pub command: TlsCommand,
}

/// The subcommands of `shoal tls`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Serve a certificate for a host (or a *.wildcard) over HTTPS, in place
    /// of any it had; new connections get it at once.
    Add(TlsAddArgs),
    /// Stop serving a host's own certificate (its clients then get the
    /// default one).
    Delete(TlsDeleteArgs),
}

/// Arguments of `shoal tls add`.
#[derive(Debug, Args)]
pub struct TlsAddArgs {
    /// The host, as clients name it (e.g. shop.example.com or *.example.com).
    pub host: String,
    /// The certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal tls delete`.
#[derive(Debug, Args)]
pub struct TlsDeleteArgs {
    /// The host.
    pub host: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Only print the link; do not start a browser.
    #[arg(long)]
    pub no_open: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// How to reach the admin API; every client command takes these.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// The admin API of `shoal up` (plain http://).
    #[arg(long, value_name = "URL", env = "SHOAL_SERVER", default_value = connect::DEFAULT_SERVER)]
    pub server: String,
    /// The API token. Default: the file `token` in the data directory.
    #[arg(long, value_name = "TOKEN", env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The data directory of `shoal up`, where it writes its token.
    /// Default: $XDG_DATA_HOME/shoal or ~/.local/share/shoal.
    #[arg(long, value_name = "DIR", env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Arguments of `shoal apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, or a directory (its *.yaml and *.yml files, not
    /// recursive), or `-` for standard input; repeat for several.
    #[arg(short = 'f', long = "filename", visible_alias = "file", value_name = "FILE|DIR", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The Wasm component (built with --target wasm32-wasip2).
    #[arg(value_name = "FILE.wasm")]
    pub file: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// What `shoal get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    #[value(aliases = ["service", "svc"])]
    Services,
    #[value(aliases = ["replica"])]
    Replicas,
    #[value(aliases = ["module"])]
    Modules,
    /// The nodes of a cluster.
    #[value(aliases = ["node", "no"])]
    Nodes,
    /// The certificates HTTPS serves: the default and one per host.
    #[value(aliases = ["certs", "cert", "certificate"])]
    Certificates,
}

/// The output format of `shoal get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// More columns.
    Wide,
    /// The objects as the API returns them, as JSON.
    Json,
    /// The objects as the API returns them, as YAML.
    Yaml,
}

/// Arguments of `shoal get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// services (service, svc), replicas (replica), modules (module),
    /// nodes (node, no) or certificates (certs, cert).
    pub resource: Resource,
    /// Only this one: a service or replica name (for replicas, a service's
    /// name lists its replicas), a module digest (or a prefix of it), or a
    /// certificate's host.
    pub name: Option<String>,
    /// Only the replicas of this service.
    #[arg(short = 's', long, value_name = "NAME")]
    pub service: Option<String>,
    /// Only services (or replicas of services) whose metadata.labels match:
    /// `key=value`, `key!=value`, `key` (has it), `!key` (has it not),
    /// comma-separated, all must hold (as kubectl's -l).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_name = "FORMAT")]
    pub output: Option<Output>,
    /// After the list, print objects as they change (every second), until Ctrl-C.
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The one kind of object `describe`, `delete` and `scale` act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceKind {
    #[value(aliases = ["services", "svc"])]
    Service,
}

/// What `shoal describe` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DescribeKind {
    #[value(aliases = ["services", "svc"])]
    Service,
    /// A node of a cluster.
    #[value(aliases = ["nodes", "no"])]
    Node,
}

/// Arguments of `shoal describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// service (svc) or node (no).
    pub kind: DescribeKind,
    /// The service's or the node's name.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// What `shoal delete` deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeleteKind {
    #[value(aliases = ["services", "svc"])]
    Service,
    #[value(aliases = ["modules"])]
    Module,
}

/// Arguments of `shoal delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// service (svc) or module.
    pub kind: DeleteKind,
    /// The service's name, or the module's digest (`sha256:…`, or enough of
    /// its start to name one module).
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// service (svc).
    pub kind: ServiceKind,
    /// The service's name.
    pub name: String,
    /// The new number of replicas (0..1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub replicas: u32,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A service (all its replicas) or one replica.
    pub name: String,
    /// Keep printing new output until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines of each replica's buffered output (default: all of it).
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// The subcommands of `shoal rollout`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until a service's latest change is rolled out.
    Status(RolloutStatusArgs),
    /// Go back to a service's previous revision (its manifest and module
    /// before the last change of revision), or to any revision of its
    /// history; a second undo comes back. Nothing is rebuilt.
    Undo(RolloutUndoArgs),
    /// List a service's revisions (the last 10): number, revision, module,
    /// when, and what changed.
    History(RolloutHistoryArgs),
}

/// Arguments of `shoal rollout undo`.
#[derive(Debug, Args)]
pub struct RolloutUndoArgs {
    /// The service's name.
    pub name: String,
    /// The revision number to go back to (shoal rollout history lists
    /// them); default the one before the current.
    #[arg(long, value_name = "N")]
    pub to_revision: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal rollout history`.
#[derive(Debug, Args)]
pub struct RolloutHistoryArgs {
    /// The service's name.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `shoal rollout status`.
#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    /// The service's name.
    pub name: String,
    /// Give up after this long ("90s", "5m"; 0 = wait forever).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The output format of `shoal top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopOutput {
    /// The figures as the API returns them, as JSON.
    Json,
}

/// Arguments of `shoal top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Only the replicas of this service.
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_name = "FORMAT")]
    pub output: Option<TopOutput>,
    /// Print the figures again every 2 seconds, until Ctrl-C.
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Parses `--timeout`: a humantime duration, or `0`.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text.trim()).map_err(|e| format!("{e} (expected e.g. 90s, 5m, 1h)"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::Cli;

    fn parse(args: &[&str]) -> Command {
        match Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}")).command {
            crate::Command::Client(command) => command,
            _ => panic!("{args:?} is not a client command"),
        }
    }

    #[test]
    fn apply_takes_repeated_files_and_connection_flags() {
        let Command::Apply(args) = parse(&[
            "shoal",
            "apply",
            "-f",
            "a.yaml",
            "--filename",
            "dir",
            "--server",
            "http://10.0.0.1:9000",
            "--token",
            "t0k",
        ]) else {
            panic!("not apply")
        };
        assert_eq!(args.files, [PathBuf::from("a.yaml"), PathBuf::from("dir")]);
        assert_eq!(args.connect.server, "http://10.0.0.1:9000");
        assert_eq!(args.connect.token.as_deref(), Some("t0k"));
        assert!(Cli::try_parse_from(["shoal", "apply"]).is_err(), "apply needs -f");
    }

    #[test]
    fn get_accepts_kubectl_aliases_and_flags() {
        for (word, want) in [
            ("services", Resource::Services),
            ("service", Resource::Services),
            ("svc", Resource::Services),
            ("replicas", Resource::Replicas),
            ("replica", Resource::Replicas),
            ("modules", Resource::Modules),
            ("certs", Resource::Certificates),
            ("cert", Resource::Certificates),
        ] {
            let Command::Get(args) = parse(&["shoal", "get", word]) else { panic!("not get") };
            assert_eq!(args.resource, want, "{word}");
            assert_eq!(args.output, None);
            assert!(!args.watch);
        }
        let Command::Get(args) = parse(&["shoal", "get", "replicas", "-s", "kubia", "-o", "wide", "-w"]) else {
            panic!("not get")
        };
        assert_eq!(args.service.as_deref(), Some("kubia"));
        assert_eq!(args.output, Some(Output::Wide));
        assert!(args.watch);
        let Command::Get(args) = parse(&["shoal", "get", "svc", "kubia", "--output", "json"]) else { panic!() };
        assert_eq!(args.name.as_deref(), Some("kubia"));
        assert_eq!(args.output, Some(Output::Json));
        assert!(Cli::try_parse_from(["shoal", "get", "pods"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "get", "svc", "-o", "xml"]).is_err());
    }

    #[test]
    fn service_commands() {
        let Command::Delete(args) = parse(&["shoal", "delete", "svc", "kubia"]) else { panic!() };
        assert_eq!((args.kind, args.name.as_str()), (DeleteKind::Service, "kubia"));
        let Command::Delete(args) = parse(&["shoal", "delete", "module", "sha256:ab12"]) else { panic!() };
        assert_eq!((args.kind, args.name.as_str()), (DeleteKind::Module, "sha256:ab12"));
        assert!(matches!(parse(&["shoal", "gc"]), Command::Gc(_)));
        let Command::Scale(args) = parse(&["shoal", "scale", "service", "kubia", "--replicas", "5"]) else { panic!() };
        assert_eq!((args.name.as_str(), args.replicas), ("kubia", 5));
        assert!(Cli::try_parse_from(["shoal", "scale", "svc", "kubia"]).is_err(), "--replicas is required");
        assert!(Cli::try_parse_from(["shoal", "scale", "svc", "kubia", "--replicas", "-1"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "scale", "svc", "kubia", "--replicas", "1001"]).is_err());
        let Command::Describe(args) = parse(&["shoal", "describe", "service", "kubia"]) else { panic!() };
        assert_eq!(args.name, "kubia");
        assert!(Cli::try_parse_from(["shoal", "delete", "replica", "x"]).is_err());
    }

    #[test]
    fn logs_and_rollout() {
        let Command::Logs(args) = parse(&["shoal", "logs", "kubia", "-f", "--tail", "20"]) else { panic!() };
        assert_eq!((args.name.as_str(), args.follow, args.tail), ("kubia", true, Some(20)));
        let Command::Logs(args) = parse(&["shoal", "logs", "kubia-3382d9-x58q4"]) else { panic!() };
        assert_eq!((args.follow, args.tail), (false, None));

        let Command::Rollout(RolloutArgs { command: RolloutCommand::Status(args) }) =
            parse(&["shoal", "rollout", "status", "kubia"])
        else {
            panic!()
        };
        assert_eq!((args.name.as_str(), args.timeout), ("kubia", Duration::from_secs(300)));
        let Command::Rollout(RolloutArgs { command: RolloutCommand::Status(args) }) =
            parse(&["shoal", "rollout", "status", "kubia", "--timeout", "90s"])
        else {
            panic!()
        };
        assert_eq!(args.timeout, Duration::from_secs(90));
        let Command::Rollout(RolloutArgs { command: RolloutCommand::Status(args) }) =
            parse(&["shoal", "rollout", "status", "kubia", "--timeout", "0"])
        else {
            panic!()
        };
        assert_eq!(args.timeout, Duration::ZERO);
        assert!(Cli::try_parse_from(["shoal", "rollout", "status", "kubia", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn top_takes_an_optional_service() {
        let Command::Top(args) = parse(&["shoal", "top"]) else { panic!("not top") };
        assert_eq!((args.service, args.output, args.watch), (None, None, false));
        let Command::Top(args) = parse(&["shoal", "top", "kubia", "-o", "json", "-w"]) else { panic!("not top") };
        assert_eq!((args.service.as_deref(), args.output, args.watch), (Some("kubia"), Some(TopOutput::Json), true));
        let Command::Top(args) = parse(&["shoal", "top", "--watch", "--output", "json", "--server", "http://h:1"])
        else {
            panic!("not top")
        };
        assert_eq!((args.service, args.watch, args.connect.server.as_str()), (None, true, "http://h:1"));
        assert!(Cli::try_parse_from(["shoal", "top", "-o", "wide"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "top", "a", "b"]).is_err());
    }

    #[test]
    fn push_and_up_still_parse() {
        let Command::Push(args) = parse(&["shoal", "push", "hello.wasm"]) else { panic!() };
        assert_eq!(args.file, PathBuf::from("hello.wasm"));
        assert!(matches!(Cli::try_parse_from(["shoal", "up"]).unwrap().command, crate::Command::Up(_)));
    }
}
