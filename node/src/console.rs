//! `shoal up`'s own stdout and stderr, written by a thread per stream, so
//! that whoever reads them can never stall the platform.
//!
//! Everything `shoal up` prints goes through here: its event lines, its
//! log (`tracing`), and the output of every replica, which the node agent
//! forwards line by line. Written directly, a reader that stops reading (a
//! terminal paused with Ctrl-S, a pipe into a program that hangs, a full
//! journal) fills the pipe, and then every thread that prints blocks in
//! `write`: the tasks forwarding replica output first, then the runtime
//! threads under them, and the gateway stops answering. (Measured before
//! this module: with stdout a pipe nobody read, kubia's gateway answered
//! 944 requests and then none.) Here a write only appends to a bounded
//! buffer; a thread per stream empties it into the real stream and is the
//! only one that blocks. When a buffer is full, new lines are dropped and
//! counted, and once the stream drains a line says how many went missing,
//! where they went missing, as container runtimes' non-blocking log modes
//! do. Shoal's own lines have room of their own beyond the replicas'
//! ([`OWN_RESERVE`]), so a flood of replica output does not hide them.
//! Replica output is also kept in the log book (`shoal logs`, the last
//! [`LOG_LINES_KEPT`] lines of each replica), which this does not touch.
//! Each stream keeps its own order; a line on stdout and one on stderr
//! may come out in either order.

use std::io::Write as _;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes of replica output a stream holds for its writer at most; past
/// it, replica lines are dropped.
pub const BUFFER: usize = 1 << 20;
/// Room kept beyond [`BUFFER`] for Shoal's own lines (events, its log,
/// panics): they are dropped only once this much of them waits too, so
/// that a flood of replica output does not hide what the platform says.
pub const OWN_RESERVE: usize = 256 << 10;

/// Lines of each replica the control plane's log book keeps (for the
/// notice; `shoal_control::logs::LINES_PER_REPLICA` checks it is the same).
pub const LOG_LINES_KEPT: usize = 1000;

/// One of `shoal up`'s two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Stdout,
    Stderr,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Stdout => "stdout",
            Target::Stderr => "stderr",
        }
    }

    fn write_all(self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Target::Stderr => std::io::stderr().lock().write_all(bytes),
        }
    }
}

#[derive(Default)]
struct Pending {
    /// Bytes waiting for the writer.
    bytes: Vec<u8>,
    /// Lines dropped since the writer last took `bytes`, and where in
    /// `bytes` they would have been.
    dropped: u64,
    dropped_at: usize,
    /// The writer holds bytes it has not written yet.
    writing: bool,
    /// The writer waits for bytes (on `arrived`).
    idle: bool,
    /// Callers of `flush` waiting (on `written`).
    flushing: usize,
    /// The writer thread runs.
    started: bool,
}

struct Stream {
    target: Target,
    pending: Mutex<Pending>,
    /// Signalled when bytes arrive to an idle writer.
    arrived: Condvar,
    /// Signalled when the writer has written everything, to `flush`.
    written: Condvar,
}

/// How long the writer, woken by new output, lets more gather before it
/// writes: under load a stream costs a wake-up and a `write` per this
/// much time, not per line or per replica's batch. (Waking it for every
/// batch of every replica put a thread more on the run queue hundreds of
/// times a second, and kubia's p99 through the gateway rose from 2.6–4.4
/// to 5.4–8.4 ms.)
const GATHER: Duration = Duration::from_millis(10);

impl Stream {
    const fn new(target: Target) -> Stream {
        Stream {
            target,
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                dropped: 0,
                dropped_at: 0,
                writing: false,
                idle: false,
                flushing: 0,
                started: false,
            }),
            arrived: Condvar::new(),
            written: Condvar::new(),
        }
    }

    /// Appends `bytes` (whole lines) for the writer, or drops them if the
    /// buffer holds `limit` bytes. Never blocks on the stream.
    fn push(&'static self, bytes: &[u8], limit: usize) {
        if bytes.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().expect("console lock");
        if !pending.started {
            // The writer starts with the first line; without it (no thread
            // could be made) lines are dropped and counted, and the next
            // line tries again: never written here, on a caller's thread.
            let spawned = std::thread::Builder::new()
                .name(format!("shoal-{}", self.target.name()))
                .spawn(move || self.write_out());
            pending.started = spawned.is_ok();
        }
        // One push larger than the whole buffer is taken when nothing else
        // waits (a replica's one long read): the buffer holds one such push
        // at most beside what it holds.
        if !pending.started || (!pending.bytes.is_empty() && pending.bytes.len() + bytes.len() > limit) {
            if pending.dropped == 0 {
                pending.dropped_at = pending.bytes.len();
            }
            pending.dropped += lines(bytes);
        } else {
            pending.bytes.extend_from_slice(bytes);
        }
        if pending.idle {
            pending.idle = false;
            self.arrived.notify_one();
        }
    }

    /// The writer thread: takes what is pending and writes it, for good.
    fn write_out(&self) {
        loop {
            {
                let mut pending = self.pending.lock().expect("console lock");
                pending.writing = false;
                if pending.flushing > 0 {
                    self.written.notify_all();
                }
                while pending.bytes.is_empty() && pending.dropped == 0 {
                    pending.idle = true;
                    pending = self.arrived.wait(pending).expect("console lock");
                }
                pending.idle = false;
                pending.writing = true;
            }
            std::thread::sleep(GATHER);
            let (bytes, dropped, at) = {
                let mut pending = self.pending.lock().expect("console lock");
                let dropped = std::mem::take(&mut pending.dropped);
                let at = std::mem::take(&mut pending.dropped_at);
                (std::mem::take(&mut pending.bytes), dropped, at)
            };
            // A stream that fails (closed) is given up quietly, as
            // `println!` would not be: nothing else may stop for it.
            let _ = self.target.write_all(&bytes[..at.min(bytes.len())]);
            if dropped > 0 {
                let note = format!(
                    "shoal: {dropped} line(s) of output dropped here: {} was not read fast enough \
                     (`shoal logs` keeps each replica's last {} lines)\n",
                    self.target.name(),
                    LOG_LINES_KEPT,
                );
                let _ = self.target.write_all(note.as_bytes());
            }
            if at < bytes.len() {
                let _ = self.target.write_all(&bytes[at..]);
            }
        }
    }

    /// Waits until everything pushed so far is written, until `deadline`
    /// at most.
    fn flush(&self, deadline: Instant) -> bool {
        let mut pending = self.pending.lock().expect("console lock");
        pending.flushing += 1;
        while pending.started && (!pending.bytes.is_empty() || pending.dropped > 0 || pending.writing) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            pending = self.written.wait_timeout(pending, left).expect("console lock").0;
        }
        pending.flushing -= 1;
        !pending.started || (pending.bytes.is_empty() && pending.dropped == 0 && !pending.writing)
    }
}

/// The lines in `bytes`: its newlines, and one for an unfinished last line.
fn lines(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

static STDOUT: Stream = Stream::new(Target::Stdout);
static STDERR: Stream = Stream::new(Target::Stderr);

/// Writes whole lines of a replica's output to stdout without blocking.
pub fn replica_out(bytes: &[u8]) {
    STDOUT.push(bytes, BUFFER);
}

/// Writes whole lines of a replica's output to stderr without blocking.
pub fn replica_err(bytes: &[u8]) {
    STDERR.push(bytes, BUFFER);
}

/// Writes whole lines of Shoal's own to stderr without blocking.
pub fn err(bytes: &[u8]) {
    STDERR.push(bytes, BUFFER + OWN_RESERVE);
}

/// Prints one line of Shoal's own (a newline is added) to stdout without
/// blocking.
pub fn println(line: std::fmt::Arguments<'_>) {
    let mut text = line.to_string();
    text.push('\n');
    STDOUT.push(text.as_bytes(), BUFFER + OWN_RESERVE);
}

/// Prints one line of Shoal's own (a newline is added) to stderr without
/// blocking.
pub fn eprintln(line: std::fmt::Arguments<'_>) {
    let mut text = line.to_string();
    text.push('\n');
    err(text.as_bytes());
}

/// `println!` onto the console's stdout: a file that imports it as
/// `println` (`use shoal_node::console_println as println;`) prints through
/// the console everywhere, with nothing to remember at each line.
#[macro_export]
macro_rules! console_println {
    () => {
        $crate::console::println(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::console::println(format_args!($($arg)*))
    };
}

/// `eprintln!` onto the console's stderr (see [`console_println!`]).
#[macro_export]
macro_rules! console_eprintln {
    () => {
        $crate::console::eprintln(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::console::eprintln(format_args!($($arg)*))
    };
}

/// Waits until everything printed so far is written out (for the last
/// lines before the process exits), `limit` at most in all: a stream
/// nobody reads does not hold the exit up. Whether all was written.
pub fn flush(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let out = STDOUT.flush(deadline);
    STDERR.flush(deadline) && out
}

/// Makes panics print through the console's stderr (std's default hook
/// writes to stderr directly, and would block the panicking thread, a
/// runtime thread perhaps, behind a reader who stopped reading): the
/// same message and, with `RUST_BACKTRACE` set, the backtrace.
pub fn take_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        let location = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => format!("stack backtrace:\n{backtrace}"),
            _ => "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n".to_owned(),
        };
        err(format!("\nthread '{name}' panicked{location}:\n{message}\n{backtrace}").as_bytes());
    }));
}

/// A `tracing` writer (`MakeWriter`) onto the console's stderr: each event,
/// formatted, is one write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        err(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_and_an_unfinished_one() {
        assert_eq!(lines(b"a\nb\n"), 2);
        assert_eq!(lines(b"a\nb"), 2);
        assert_eq!(lines(b"\n"), 1);
        assert_eq!(lines(b""), 0);
    }
}
