//! The client commands: kubectl-style access to the admin API of `shoal up`
//! (`apply`, `push`, `get`, `describe`, `delete`, `scale`, `logs`,
//! `rollout status`, `top`).
//!
//! # Layout
//!
//! * this file: the entry point [`run`] (a tokio current-thread runtime per
//!   invocation) and the one-line error report;
//! * `args`: the clap arguments of every command;
//! * `connect`: `--server`, the token; `client`: requests and API errors;
//! * `apply`: `apply` and `push` (manifest files, documents, modules);
//! * `get`, `describe`, `logs`, `rollout`, `manage` (`delete`, `scale`,
//!   `gc`), `top`;
//! * `table` and `rows`: pure formatting (aligned tables, ages, sizes);
//! * `progress`: status lines for steps over 2 s on a terminal.
//!
//! Every error ends the command with exit status 1 and one line
//! `error: <reason>` on stderr.

mod apply;
mod args;
mod client;
mod connect;
mod describe;
mod get;
mod logs;
mod manage;
mod progress;
mod rollout;
mod rows;
mod table;
mod tls;
mod top;

use std::process::ExitCode;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use shoal_api::objects::{ServiceRecord, ServiceStatus};

pub use self::args::*;

/// A service as the admin API returns it: the stored record and its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub record: ServiceRecord,
    pub status: ServiceStatus,
}

/// Runs a client command; prints `error: …` and returns failure on error.
pub fn run(command: Command) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(dispatch(command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`shoal logs -f | head`): not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Apply(args) => apply::apply(args).await,
        Command::Push(args) => apply::push(args).await,
        Command::Dashboard(args) => dashboard(args).await,
        Command::Get(args) => get::get(args).await,
        Command::Describe(args) => describe::describe(args).await,
        Command::Delete(args) => manage::delete(args).await,
        Command::Gc(args) => manage::gc(args).await,
        Command::Scale(args) => manage::scale(args).await,
        Command::Logs(args) => logs::logs(args).await,
        Command::Rollout(RolloutArgs { command: RolloutCommand::Status(args) }) => rollout::status(args).await,
        Command::Rollout(RolloutArgs { command: RolloutCommand::Undo(args) }) => rollout::undo(args).await,
        Command::Rollout(RolloutArgs { command: RolloutCommand::History(args) }) => rollout::history(args).await,
        Command::Top(args) => top::top(args).await,
        Command::Tls(TlsArgs { command: TlsCommand::Add(args) }) => tls::add(args).await,
        Command::Tls(TlsArgs { command: TlsCommand::Delete(args) }) => tls::delete(args).await,
    }
}

/// Writes `text` to stdout and flushes (so that watches and follows show
/// up at once, and a closed pipe is noticed).
pub(crate) fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Collapses line breaks so an error is reported on one line.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r']).map(str::trim).filter(|part| !part.is_empty()).collect::<Vec<_>>().join(" ")
}

/// `shoal dashboard`: a one-time login link, printed, and opened with
/// `xdg-open` where there is a display to open it on.
async fn dashboard(args: args::DashboardArgs) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Link {
        path: String,
    }
    let client = client::Client::new(&args.connect)?;
    let link: Link = client.post("/v1/dashboard/links").await?;
    let url = format!("{}{}", client.server(), link.path);
    println!("{url}");
    println!("(the link logs in once, within a minute)");
    let display = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !args.no_open && display {
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !opened.is_ok_and(|status| status.success()) {
            eprintln!("shoal: cannot start a browser (xdg-open); open the link yourself");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_reported_on_one_line() {
        assert_eq!(one_line("a\nb\r\n  c\n"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }
}
