//! Progress for long steps on a terminal: a step that takes longer than
//! [`AFTER`] gets a status line on stderr (what it is doing, seconds so
//! far), rewritten each second, and a last line saying how long it took.
//! Off a terminal (scripts, CI logs) nothing is added.

use std::future::Future;
use std::io::IsTerminal as _;
use std::time::Duration;

use tokio::time::Instant;

/// How long a step runs before it gets a status line.
pub const AFTER: Duration = Duration::from_secs(2);

/// Runs `work`, showing `what` (e.g. `uploading app.wasm`) while it lasts
/// longer than [`AFTER`], when stderr is a terminal.
pub async fn show<T>(what: &str, work: impl Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let work = std::pin::pin!(work);
    run(what, work, (AFTER, Duration::from_secs(1)), |line| eprint!("{line}")).await
}

/// [`show`] with the terminal as `write`, the first line after `after`,
/// then one every `every`.
async fn run<T>(
    what: &str,
    mut work: std::pin::Pin<&mut impl Future<Output = T>>,
    (after, every): (Duration, Duration),
    mut write: impl FnMut(&str),
) -> T {
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at(started + after, every);
    let mut shown = false;
    loop {
        tokio::select! {
            done = &mut work => {
                if shown {
                    write(&format!("\r\x1b[K{what}: done in {:.1}s\n", started.elapsed().as_secs_f64()));
                }
                return done;
            }
            _ = ticks.tick() => {
                shown = true;
                write(&format!("\r\x1b[K{what}… {}s", started.elapsed().as_secs()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn a_long_step_gets_a_status_line_and_a_last_one_and_a_quick_one_none() {
        let mut written = String::new();
        let slow = std::pin::pin!(async {
            tokio::time::sleep(300 * MS).await;
            7
        });
        assert_eq!(run("checking app.wasm", slow, (10 * MS, 50 * MS), |line| written.push_str(line)).await, 7);
        assert!(written.starts_with("\r\x1b[Kchecking app.wasm… 0s\r\x1b[K"), "{written:?}");
        let last = written.rsplit("\r\x1b[K").next().unwrap();
        assert!(last.starts_with("checking app.wasm: done in ") && last.ends_with("s\n"), "{written:?}");
        let mut written = String::new();
        let quick = std::pin::pin!(async { 8 });
        assert_eq!(run("checking app.wasm", quick, (10 * MS, 50 * MS), |line| written.push_str(line)).await, 8);
        assert_eq!(written, "");
    }
}
