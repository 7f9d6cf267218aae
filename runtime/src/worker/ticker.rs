//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`] while
//! a guest may run, so that a guest's epoch deadline (a yield every tick, a
//! trap at the request's deadline) comes due.
//!
//! It is a POSIX timer (`timer_create`) that sends `SIGALRM` to the
//! worker's one thread, whose handler adds one to the epoch (an atomic add,
//! which is all `Engine::increment_epoch` does). A thread of its own used to
//! tick instead; the timer keeps the worker single-threaded, which a cold
//! start feels most: no `clone3` and thread stack to set up, and no
//! TLB-shootdown interrupts when the worker unmaps or breaks copy-on-write
//! pages (a two-threaded process's page-table changes must flush the other
//! CPU). Measured in a storm of cold starts: see ARCHITECTURE.md, "The epoch
//! ticker is a timer signal".
//!
//! The timer runs only while a guest may run (an instance slot is taken, or
//! the start check runs): the handler disarms it when it finds the worker
//! idle, and [`Ticker::wake`] arms it again, so idle replicas cost nothing
//! (their tickers once took 8 % of the machine in a storm of 300 cold
//! starts). The handler runs on the worker's thread, the one that takes
//! slots, so a slot taken before the handler looks is seen by it, and one
//! taken after finds the timer disarmed and arms it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::engine::EPOCH_TICK;

/// The process's ticker, for the signal handler. A worker serves one
/// replica, so there is one.
static TICKER: OnceLock<Ticker> = OnceLock::new();

pub(crate) struct Ticker {
    engine: wasmtime::Engine,
    /// The replica's instance slots: fewer available than `capacity` means
    /// a guest may be running.
    slots: std::sync::Arc<Semaphore>,
    capacity: usize,
    /// While the start check runs (it takes no slot).
    checking: AtomicBool,
    /// Set while the timer is disarmed.
    idle: AtomicBool,
    timer: Timer,
}

/// A `timer_t` (a pointer-sized id, only ever passed back to the kernel).
struct Timer(libc::timer_t);

// SAFETY: a timer id is a plain value; timer_settime may be called with it
// from any thread.
unsafe impl Send for Timer {}
// SAFETY: as above.
unsafe impl Sync for Timer {}

impl Ticker {
    /// Installs the `SIGALRM` handler and creates the timer, disarmed,
    /// aimed at the calling thread (which must be the one that runs guests).
    /// Once per process.
    pub(crate) fn start(
        engine: wasmtime::Engine,
        slots: std::sync::Arc<Semaphore>,
        capacity: usize,
    ) -> anyhow::Result<&'static Ticker> {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler
        // only touches atomics and calls timer_settime, which is
        // async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_tick as *const () as libc::sighandler_t;
            // Restart interrupted system calls (epoll_wait returns EINTR
            // regardless, which tokio takes as a wake-up); run on wasmtime's
            // alternate signal stack where there is one.
            action.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error())
                    .context("cannot install the epoch ticker's SIGALRM handler");
            }
            // A mask inherited with SIGALRM blocked would stop the epoch
            // (guests would neither yield nor meet their deadlines).
            let mut alarm: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut alarm);
            libc::sigaddset(&mut alarm, libc::SIGALRM);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &alarm, std::ptr::null_mut());
        }
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: a zeroed sigevent is valid; the fields set are the ones
        // SIGEV_THREAD_ID reads.
        let created = unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = libc::SIGALRM;
            event.sigev_notify_thread_id = libc::gettid();
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer)
        };
        if created != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot create the epoch ticker's timer");
        }
        let ticker = Ticker {
            engine,
            slots,
            capacity,
            checking: AtomicBool::new(false),
            idle: AtomicBool::new(true),
            timer: Timer(timer),
        };
        if TICKER.set(ticker).is_err() {
            anyhow::bail!("the epoch ticker was started twice in one process");
        }
        Ok(TICKER.get().expect("just set"))
    }

    /// Marks the start check as running (or over): it takes no slot.
    pub(crate) fn set_checking(&self, checking: bool) {
        self.checking.store(checking, Ordering::SeqCst);
        if checking {
            self.wake();
        }
    }

    /// A guest may run now: the timer ticks. Called on the guests' thread
    /// after taking a slot (or marking the check).
    pub(crate) fn wake(&self) {
        if self.idle.swap(false, Ordering::SeqCst) {
            self.set_interval(EPOCH_TICK);
        }
    }

    fn busy(&self) -> bool {
        self.slots.available_permits() < self.capacity || self.checking.load(Ordering::SeqCst)
    }

    /// Arms the timer to fire every `every`, or disarms it (zero).
    /// Async-signal-safe.
    fn set_interval(&self, every: std::time::Duration) {
        let spec = libc::timespec {
            tv_sec: every.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(every.subsec_nanos() as i32),
        };
        let value = libc::itimerspec { it_interval: spec, it_value: spec };
        // SAFETY: the timer exists for the life of the process; a failure
        // (impossible with a valid id and value) leaves it as it was.
        unsafe { libc::timer_settime(self.timer.0, 0, &value, std::ptr::null_mut()) };
    }
}

/// The `SIGALRM` handler: one tick, and the timer disarmed if no guest may
/// run.
extern "C" fn on_tick(_signal: libc::c_int) {
    let Some(ticker) = TICKER.get() else { return };
    // SAFETY: errno is thread-local; the handler keeps the interrupted
    // code's value.
    let errno = unsafe { *libc::__errno_location() };
    ticker.engine.increment_epoch();
    if !ticker.busy() {
        ticker.idle.store(true, Ordering::SeqCst);
        ticker.set_interval(std::time::Duration::ZERO);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}
