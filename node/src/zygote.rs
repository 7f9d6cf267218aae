//! The zygote: a small `shoal zygote` process, started once, that forks
//! every worker without `exec`.
//!
//! Forking `shoal up` itself was the dearest part of a start under a storm:
//! the kernel copies the page tables of a large, many-threaded process, its
//! threads then take copy-on-write faults until the child execs, and the
//! exec'd child relocates a 50 MB binary again. The zygote is the same
//! binary, exec'd once and single-threaded, waiting on a Unix socket (fd 3)
//! for requests. Each request carries, as descriptors, everything the
//! worker gets (stdin, stdout, stderr, the readiness pipe, the three of the
//! channel, and the `cgroup.procs` files of its cgroup) and its name; the
//! zygote forks and answers with the child's pid.
//!
//! The child is forked with `CLONE_PARENT`: its parent is `shoal up` (the
//! fork thread that started the zygote), not the zygote. So `shoal up`
//! reaps it and reads its exit status (through a pidfd), and a zygote that
//! dies takes no worker with it. A worker does not die with `shoal up`
//! (no `PR_SET_PDEATHSIG`): it outlives it for a grace, to be taken over. Before running
//! anything else the child joins its cgroup, puts its descriptors on 0 to 6
//! and closes every other one (the zygote's socket included), then runs
//! the worker exactly as `shoal worker` would: read the configuration from
//! stdin, load, check, report ready.
//!
//! After a replica starts, the agent asks the zygote to preload its module
//! (once per module and pool sizing): the zygote configures the engine and
//! maps and links the component, and the workers it forks from then on
//! find them in their copy of its memory (saving ~1.5 ms of a ~3 ms
//! start). A raw `clone` runs no `pthread_atfork` handler, so the child
//! does what wasmtime's would (reopen `/proc/self/pagemap`) before it uses
//! wasmtime, and keeps the zygote's other descriptors (memory images map
//! from them); once configured, it drops whatever it does not run.
//!
//! Before its first fork the zygote moves its own code and read-only data
//! onto transparent huge pages ([`code_on_huge_pages`]), which `fork`
//! shares with every child through a few page-table entries: the workers
//! do not fault the binary's pages in again one by one.
//!
//! A raw `clone` leaves glibc's cached thread id of the child's main thread
//! at the zygote's; glibc (2.34 and later) asks the kernel for the calling
//! thread's id where it signals itself (`raise`, `abort`), and threads the
//! child creates get their own, so nothing the worker does relies on the
//! stale one (`tests::a_cloned_child_aborts_itself_not_its_parent`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_protocol::config::{CHANNEL_FDS, CHANNEL_FDS_ENV, READY_FD_ENV, monotonic_nanos};
use shoal_protocol::fdpass::{receive, send};

/// The descriptor the zygote's socket is on.
const SOCKET_FD: RawFd = 3;
/// Descriptors a request carries besides the `cgroup.procs` files: stdin,
/// stdout, stderr, the readiness pipe and the channel's three.
const WORKER_FDS: usize = 7;
/// The most descriptors a request carries (a `cgroup.procs` per controller).
const MAX_FDS: usize = WORKER_FDS + 8;
/// The largest request or reply.
const MAX_MESSAGE: usize = 4096;
/// A transparent huge page (x86-64's and arm64's PMD size).
const HUGE: usize = 2 << 20;

/// What `shoal up` asks the zygote for.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Fork a worker, with the descriptors that come along.
    Fork {
        /// The worker's name (a replica's, or `standby-<n>`).
        name: String,
        /// When the node agent asked (`CLOCK_MONOTONIC`, ns), for the
        /// start's "exec" figure.
        asked_ns: u64,
    },
    /// Load a module for the workers forked from now on.
    Preload(Preload),
}

/// A module to load ahead, and the pool sizing its workers use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Preload {
    pub module: std::path::PathBuf,
    pub cache_dir: std::path::PathBuf,
    pub max_instances: u32,
    pub instance_memory: u64,
}

/// What the zygote answers.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Forked { pid: u32 },
    Preloaded,
    Failed { error: String },
}

/// What a worker gets, by the descriptor it gets it on.
pub struct WorkerFds<'a> {
    /// 0, 1, 2: its stdin (the configuration), stdout and stderr.
    pub stdio: [&'a OwnedFd; 3],
    /// 3: the readiness pipe.
    pub ready: &'a OwnedFd,
    /// 4, 5, 6: the channel to the gateway.
    pub channel: [RawFd; 3],
    /// The `cgroup.procs` files it writes itself into first.
    pub procs: &'a [std::fs::File],
}

/// The node agent's side: the zygote process, started on first use and
/// again if it died.
pub struct Zygote {
    exe: std::path::PathBuf,
    running: Mutex<Option<Running>>,
}

struct Running {
    socket: OwnedFd,
    child: tokio::process::Child,
    /// What it was asked to preload (once each).
    preloaded: std::collections::HashSet<Preload>,
}

impl Zygote {
    /// A zygote running `exe zygote`, not started yet.
    pub fn new(exe: &Path) -> Self {
        Self { exe: exe.to_owned(), running: Mutex::new(None) }
    }

    /// Forks a worker named `name` with `fds`; returns its pid. Blocks (a
    /// fork thread calls it); one request at a time. A zygote that died is
    /// started again, once per call.
    pub fn fork(&self, name: &str, asked_ns: u64, fds: &WorkerFds<'_>) -> io::Result<u32> {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut raw: Vec<RawFd> = fds.stdio.iter().map(|fd| fd.as_raw_fd()).collect();
        raw.push(fds.ready.as_raw_fd());
        raw.extend(fds.channel);
        raw.extend(fds.procs.iter().map(AsRawFd::as_raw_fd));
        let request =
            serde_json::to_vec(&Request::Fork { name: name.to_owned(), asked_ns }).map_err(io::Error::other)?;
        let mut last = None;
        for _ in 0..2 {
            if running.as_mut().is_none_or(|r| r.child.try_wait().ok().flatten().is_some()) {
                if let Some(mut dead) = running.take() {
                    let status = dead.child.try_wait().ok().flatten();
                    tracing::warn!(?status, "the zygote exited; starting another");
                }
                *running = Some(self.start()?);
            }
            let zygote = running.as_ref().expect("started above");
            match ask(&zygote.socket, &request, &raw) {
                Ok(Reply::Forked { pid }) => return Ok(pid),
                Ok(Reply::Failed { error }) => return Err(io::Error::other(format!("the zygote: {error}"))),
                Ok(Reply::Preloaded) => return Err(io::Error::other("the zygote answered a fork with Preloaded")),
                Err(error) => {
                    // Broken: stop it; the next round starts another.
                    if let Some(mut broken) = running.take() {
                        stop(&mut broken.child);
                    }
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the zygote did not answer")))
    }

    /// Starts `shoal zygote` with its end of a socket on fd 3, dying with
    /// Shoal, in a process group of its own.
    fn start(&self) -> io::Result<Running> {
        let (ours, theirs) = seqpacket_pair()?;
        let theirs_fd = theirs.as_raw_fd();
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .arg("zygote")
            // Room for the command line its children write there (see
            // `shoal worker`).
            .arg(" ".repeat(crate::agent::TITLE_ROOM))
            // Every symbol bound once, here, rather than lazily in each
            // child (ld.so's lookups and a write to a shared page each).
            .env("LD_BIND_NOW", "1")
            .env(READY_FD_ENV, "3")
            .env(CHANNEL_FDS_ENV, CHANNEL_FDS.map(|fd| fd.to_string()).join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own few lines, through the console (never blocking on
            // shoal up's stderr).
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes async-signal-safe system calls on a descriptor opened
        // before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                if libc::dup2(theirs_fd, SOCKET_FD) != SOCKET_FD {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        drop(theirs);
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt as _;
                let (mut stderr, mut line) = (tokio::io::BufReader::new(stderr), Vec::new());
                // To its end, whatever it holds (a reader that stopped
                // would make the zygote's next line fail, and it panic).
                while matches!(stderr.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    crate::console::err(&line);
                    line.clear();
                }
            });
        }
        Ok(Running { socket: ours, child, preloaded: std::collections::HashSet::new() })
    }

    /// Has the running zygote load `preload` for the workers it forks from
    /// now on, unless it did already. Blocks (a fork thread calls it). A
    /// failure is logged: workers then load the module themselves.
    pub fn preload(&self, preload: Preload) {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(zygote) = running.as_mut() else { return };
        if !zygote.preloaded.insert(preload.clone()) {
            return;
        }
        let request = serde_json::to_vec(&Request::Preload(preload.clone())).expect("a request serializes");
        match ask(&zygote.socket, &request, &[]) {
            Ok(Reply::Preloaded) => {}
            Ok(Reply::Failed { error }) => {
                tracing::debug!(module = %preload.module.display(), %error, "the zygote did not preload a module");
            }
            Ok(Reply::Forked { .. }) => tracing::warn!("the zygote answered a preload with Forked"),
            Err(error) => {
                tracing::warn!(%error, "the zygote did not answer; it is started again on the next fork");
                if let Some(mut broken) = running.take() {
                    stop(&mut broken.child);
                }
            }
        }
    }

    /// Stops the zygote (Shoal is stopping).
    pub fn stop(&self) {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut zygote) = running.take() {
            stop(&mut zygote.child);
        }
    }

    /// The zygote's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.as_ref().and_then(|r| r.child.id())
    }
}

/// Kills a zygote and waits (at most 5 s) until it is gone.
fn stop(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends one request and reads its reply.
fn ask(socket: &OwnedFd, request: &[u8], fds: &[RawFd]) -> io::Result<Reply> {
    send(socket.as_raw_fd(), request, fds)?;
    let mut buf = [0u8; MAX_MESSAGE];
    let (len, received) = receive(socket.as_raw_fd(), &mut buf)?;
    drop(received);
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the zygote closed its socket"));
    }
    serde_json::from_slice(&buf[..len]).map_err(|e| io::Error::other(format!("a bad reply from the zygote: {e}")))
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two ints of `fds`.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded: both descriptors are open and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The zygote's life (`shoal zygote`): forks a worker for each request on
/// fd 3 until the socket closes, and runs `worker(name, since_asked)` in
/// each child, whose return value is the child's exit code; runs
/// `preload` for each module it is asked to load ahead. Returns the
/// zygote's exit code.
pub fn serve(worker: fn(&str, Duration) -> i32, preload: fn(&Preload) -> Result<(), String>) -> i32 {
    // SAFETY: `shoal up` put the zygote's socket on this descriptor for it
    // alone.
    let socket = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    // Before any fork, so that every worker shares the huge pages; off with
    // SHOAL_ZYGOTE_HUGE_PAGES=0 (a profiler then names the workers' symbols
    // from the binary's file mapping).
    let wanted = std::env::var_os("SHOAL_ZYGOTE_HUGE_PAGES").is_none_or(|value| value != "0");
    if wanted && let Err(error) = code_on_huge_pages() {
        eprintln!("shoal zygote: its code stays on small pages (workers start a little slower): {error}");
    }
    // Descriptors 4 to 6 held open, so that nothing the zygote opens (the
    // memory images of preloaded modules) lands on a number its children
    // give to their channel.
    let mut placeholders = Vec::new();
    for fd in SOCKET_FD + 1..WORKER_FDS as RawFd {
        // SAFETY: F_GETFD only asks whether `fd` is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            match std::fs::File::open("/dev/null").map(OwnedFd::from) {
                // SAFETY: dup2 onto a free number from a descriptor we own.
                Ok(null) if null.as_raw_fd() == fd || unsafe { libc::dup2(null.as_raw_fd(), fd) } == fd => {
                    placeholders.push(null);
                }
                _ => {
                    eprintln!("shoal zygote: cannot hold descriptor {fd}");
                    return 1;
                }
            }
        }
    }
    let mut buf = [0u8; MAX_MESSAGE];
    loop {
        let (len, fds) = match receive(socket.as_raw_fd(), &mut buf) {
            Ok((0, _)) => return 0,
            Ok(message) => message,
            Err(error) => {
                eprintln!("shoal zygote: cannot read a request: {error}");
                return 1;
            }
        };
        let reply = match serde_json::from_slice::<Request>(&buf[..len]) {
            Err(error) => Reply::Failed { error: format!("a bad request: {error}") },
            Ok(Request::Preload(module)) => match preload(&module) {
                Ok(()) => Reply::Preloaded,
                Err(error) => Reply::Failed { error },
            },
            Ok(Request::Fork { .. }) if fds.len() < WORKER_FDS || fds.len() > MAX_FDS => {
                Reply::Failed { error: format!("{} descriptors came with the request", fds.len()) }
            }
            Ok(Request::Fork { name, asked_ns }) => match raw_clone(libc::CLONE_PARENT) {
                Ok(0) => child(&name, asked_ns, fds, worker),
                Ok(pid) => Reply::Forked { pid },
                Err(error) => Reply::Failed { error: format!("cannot fork: {error}") },
            },
        };
        drop(fds);
        let bytes = serde_json::to_vec(&reply).expect("a reply serializes");
        if let Err(error) = send(socket.as_raw_fd(), &bytes, &[]) {
            eprintln!("shoal zygote: cannot answer: {error}");
            return 1;
        }
    }
}

/// The zygote's own code and read-only data, moved onto anonymous
/// transparent huge pages (the 2 MiB-aligned part of each read-only
/// mapping of the binary): each child then shares them through a handful
/// of page-middle-directory entries that `fork` copies, where a file
/// mapping's entries are not copied and every child faulted its pages of
/// the binary in again (~100 faults, the largest part of a worker's start
/// after the kernel's own work; see ARCHITECTURE.md, "The zygote's code on
/// huge pages"). Does nothing where transparent huge pages are off.
fn code_on_huge_pages() -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    // SAFETY: PR_GET_THP_DISABLE only reads this process's flag.
    let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) } == 1;
    if !(enabled.contains("[always]") || enabled.contains("[madvise]")) || disabled {
        return Ok(());
    }
    // Under strict overcommit the kernel could refuse to charge the copy
    // while `mremap` moves it, after it unmapped the original: this code.
    if std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|mode| mode.trim() == "2") {
        return Ok(());
    }
    let exe_path = std::fs::read_link("/proc/self/exe")?;
    let exe = std::fs::File::open("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(offset), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.nth(2))
        else {
            continue;
        };
        // Readable and not writable (r-x or r--): not data, nor a gap.
        if Path::new(path) != exe_path || !perms.starts_with('r') || perms.as_bytes().get(1) != Some(&b'-') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(offset)) =
            (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16), u64::from_str_radix(offset, 16))
        else {
            continue;
        };
        let (from, to) = (start.next_multiple_of(HUGE), end & !(HUGE - 1));
        if to <= from {
            continue;
        }
        let code = perms.starts_with("r-x");
        let prot = if code { libc::PROT_READ | libc::PROT_EXEC } else { libc::PROT_READ };
        // Code is read from the file, not from memory: a uprobe or a
        // debugger's breakpoint in memory must not be copied into it.
        // Read-only data may have been relocated in memory: copied as is.
        let file_offset = offset + (from - start) as u64;
        let fill = |copy: &mut [u8]| -> io::Result<()> {
            if code {
                exe.read_exact_at(copy, file_offset)
            } else {
                // SAFETY: `from..to` is this mapping's readable part.
                copy.copy_from_slice(unsafe { std::slice::from_raw_parts(from as *const u8, to - from) });
                Ok(())
            }
        };
        // SAFETY: the range is this process's mapping of its own binary,
        // read-only, so nothing writes it meanwhile; the copy holds the same
        // bytes, so code running from it (this function's included) runs on.
        unsafe { move_onto_huge_pages(from, to - from, prot, fill)? };
    }
    Ok(())
}

/// Replaces `len` bytes at `at` (2 MiB-aligned, read-only) with an
/// anonymous copy on transparent huge pages, filled by `fill`, with
/// protection `prot`. Leaves the original in place, and returns the error,
/// if the copy cannot be made on huge pages.
///
/// # Safety
///
/// `at..at + len` must be mapped read-only and not change while this runs,
/// and `fill` must write the bytes it holds.
unsafe fn move_onto_huge_pages(
    at: usize,
    len: usize,
    prot: libc::c_int,
    fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    // SAFETY: fresh anonymous mappings, only this function's.
    unsafe {
        let raw = libc::mmap(
            std::ptr::null_mut(),
            len + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // The 2 MiB-aligned part, so that mremap moves whole huge pages.
        let raw = raw as usize;
        let copy = raw.next_multiple_of(HUGE);
        if copy > raw {
            libc::munmap(raw as *mut libc::c_void, copy - raw);
        }
        if raw + len + HUGE > copy + len {
            libc::munmap((copy + len) as *mut libc::c_void, raw + len + HUGE - (copy + len));
        }
        let copy = copy as *mut libc::c_void;
        let fail = |copy: *mut libc::c_void, error: io::Error| {
            libc::munmap(copy, len);
            Err(error)
        };
        if libc::madvise(copy, len, libc::MADV_HUGEPAGE) != 0 {
            return fail(copy, io::Error::last_os_error());
        }
        if let Err(error) = fill(std::slice::from_raw_parts_mut(copy.cast::<u8>(), len)) {
            return fail(copy, error);
        }
        // Huge pages, or nothing: on small pages every fork would copy
        // thousands more page-table entries than the file mapping costs.
        // MADV_COLLAPSE (Linux 6.1) says so, collapsing what it can;
        // EINVAL is an older kernel, where the setting checked above stands.
        if libc::madvise(copy, len, libc::MADV_COLLAPSE) != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINVAL) {
                return fail(copy, error);
            }
        }
        if libc::mprotect(copy, len, prot) != 0 {
            return fail(copy, io::Error::last_os_error());
        }
        let placed = libc::mremap(copy, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, at as *mut libc::c_void);
        if placed == libc::MAP_FAILED {
            return fail(copy, io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `clone(flags | SIGCHLD)` as a system call: a fork (the zygote passes
/// `CLONE_PARENT`, so that the child is its sibling). Returns 0 in the
/// child, the child's pid in the caller.
fn raw_clone(flags: libc::c_int) -> io::Result<u32> {
    // SAFETY: without CLONE_VM the child gets a copy of the address space,
    // as with fork; the zygote is single-threaded, so no lock is held by a
    // thread that does not exist in the child. The null stack and
    // pointers mean "the same stack" and "no tid to store".
    let pid = unsafe {
        libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    };
    if pid < 0 { Err(io::Error::last_os_error()) } else { Ok(pid as u32) }
}

/// The forked child: leaves Shoal's process group, joins its cgroup, takes
/// its descriptors, closes the rest, and becomes the worker. Never returns.
fn child(name: &str, asked_ns: u64, fds: Vec<OwnedFd>, worker: fn(&str, Duration) -> i32) -> ! {
    let fds: Vec<RawFd> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
    let fail = |what: &str| -> ! {
        let error = io::Error::last_os_error();
        let line = format!("worker {name}: cannot start: {what}: {error}\n");
        // SAFETY: fd 2 or the stderr passed is open; a failed write is
        // ignored (nobody else could be told).
        unsafe {
            libc::write(fds[2], line.as_ptr().cast(), line.len());
            libc::_exit(1)
        }
    };
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        // No PR_SET_PDEATHSIG: a worker outlives the `shoal up` that
        // started it for a grace, to be taken over (it exits once no
        // gateway has a channel to it and none attached within the grace;
        // a standby, once its stdin closes).
        if libc::setpgid(0, 0) != 0 {
            fail("setpgid");
        }
        for &procs in &fds[WORKER_FDS..] {
            if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                fail("joining its cgroup");
            }
        }
        // Out of the way first (a source may sit on a target number), then
        // onto 0 to 6, where dup2 clears close-on-exec.
        let mut moved = [0; WORKER_FDS];
        for (to, &from) in moved.iter_mut().zip(&fds[..WORKER_FDS]) {
            *to = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 100);
            if *to < 0 {
                fail("moving its descriptors");
            }
        }
        // dup2 onto 3 closed the zygote's socket there.
        for (target, &from) in (0..).zip(&moved) {
            if libc::dup2(from, target) != target {
                fail("placing its descriptors");
            }
        }
        // The originals (those below 7 were just replaced) and the copies.
        // The zygote's other descriptors stay: the modules it preloaded map
        // their memory images from them.
        for &fd in fds.iter().chain(&moved) {
            if fd >= WORKER_FDS as RawFd {
                libc::close(fd);
            }
        }
    }
    let since = Duration::from_nanos(monotonic_nanos().saturating_sub(asked_ns));
    let code = worker(name, since);
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_and_bytes_pass_through_the_socket() {
        let (a, b) = seqpacket_pair().unwrap();
        let file = tempfile_with(b"passed along");
        send(a.as_raw_fd(), b"hello", &[file.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let (len, fds) = receive(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..len], b"hello");
        assert_eq!(fds.len(), 1);
        let mut text = String::new();
        use std::io::{Read as _, Seek as _};
        let mut received = std::fs::File::from(fds.into_iter().next().unwrap());
        received.rewind().unwrap();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "passed along");
        // Closed: a zero-length read.
        drop(a);
        assert_eq!(receive(b.as_raw_fd(), &mut buf).unwrap().0, 0);
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        use std::io::Write as _;
        let path = std::env::temp_dir().join(format!("shoal-zygote-test-{}", std::process::id()));
        let mut file = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.write_all(bytes).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn a_cloned_child_aborts_itself_not_its_parent() {
        // The same clone as the zygote's, without CLONE_PARENT so that this
        // test can reap the child. glibc's cached thread id in the child is
        // this thread's; abort must still signal the child.
        let pid = match raw_clone(0) {
            Ok(0) => std::process::abort(),
            Ok(pid) => pid,
            Err(error) => panic!("clone: {error}"),
        };
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid status pointer.
        let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        assert_eq!(reaped, pid as libc::pid_t);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT, "status {status:#x}");
        // And this process is alive: the abort did not reach it.
    }
}
