//! What orders and runs worker starts: the [`StartGate`], which admits a
//! bounded number of starts at once in the order they were asked for, and
//! the [`Forkers`], the long-lived threads every worker is forked on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

/// Admits at most `limit` starts at once; the others wait, and are
/// admitted oldest first by the instant each was asked for (for a service
/// woken from zero, when its first request arrived), not by the order
/// their callers reached the gate. A start that is slow holds one place,
/// never the others'.
pub struct StartGate {
    state: Mutex<GateState>,
}

struct GateState {
    limit: usize,
    running: usize,
    /// Waiting starts by (asked at, arrival number).
    waiting: BTreeMap<(Instant, u64), oneshot::Sender<()>>,
    arrivals: u64,
}

/// A place in the gate, given back on drop.
pub struct Admitted<'a> {
    gate: &'a StartGate,
}

/// What the gate holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounts {
    /// Starts at most at once.
    pub limit: usize,
    /// Starts admitted and not yet finished.
    pub running: usize,
    /// Starts waiting to be admitted.
    pub waiting: usize,
}

impl StartGate {
    /// A gate admitting `limit` starts at once (at least one).
    pub fn new(limit: usize) -> Self {
        Self { state: Mutex::new(GateState { limit: limit.max(1), running: 0, waiting: BTreeMap::new(), arrivals: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a place; `asked` orders the waiting starts.
    pub async fn enter(&self, asked: Instant) -> Admitted<'_> {
        let receiver = {
            let mut state = self.lock();
            if state.running < state.limit && state.waiting.is_empty() {
                state.running += 1;
                return Admitted { gate: self };
            }
            let (sender, receiver) = oneshot::channel();
            state.arrivals += 1;
            let key = (asked, state.arrivals);
            state.waiting.insert(key, sender);
            receiver
        };
        let mut waiter = Waiter { gate: self, receiver: Some(receiver) };
        let receiver = waiter.receiver.as_mut().expect("set above");
        // The sender is only dropped after a send, or when the gate is
        // dropped, which the `&self` borrow rules out.
        let _ = receiver.await;
        waiter.receiver = None;
        Admitted { gate: self }
    }

    /// Hands a freed place to the oldest waiting start, or frees it.
    fn release(&self) {
        let mut state = self.lock();
        while let Some((_, sender)) = state.waiting.pop_first() {
            if sender.send(()).is_ok() {
                return;
            }
            // Its caller gave up waiting: the next one.
        }
        state.running = state.running.saturating_sub(1);
    }

    /// The gate's counts now.
    pub fn counts(&self) -> GateCounts {
        let state = self.lock();
        GateCounts { limit: state.limit, running: state.running, waiting: state.waiting.len() }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A start waiting in the gate; if its caller stops waiting after a place
/// was handed to it, the place is passed on.
struct Waiter<'a> {
    gate: &'a StartGate,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if receiver.try_recv().is_ok() {
                self.gate.release();
            }
        }
    }
}

/// How soon a fork job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A replica waits for it.
    Start,
    /// A standby for later: runs when no start waits.
    Spare,
}

/// Work for a fork thread.
pub type ForkJob = Box<dyn FnOnce() + Send>;

/// The threads every worker is forked on, started on first use, living as
/// long as Shoal: `PR_SET_PDEATHSIG` fires when the *thread* that forked a
/// process exits (a tokio blocking thread exits after 10 s idle), and a
/// fork blocks until the child has joined its cgroup and exec'd, which
/// must not hold up a runtime thread. Several threads, so that one start's
/// kernel waits (its cgroup join, its exec) overlap the others'; jobs for
/// starts go before jobs for standbys.
pub struct Forkers {
    threads: usize,
    queue: Mutex<ForkQueue>,
    ready: Condvar,
}

#[derive(Default)]
struct ForkQueue {
    started: bool,
    starts: VecDeque<ForkJob>,
    spares: VecDeque<ForkJob>,
}

impl Forkers {
    /// `threads` fork threads (at least one), started on first use.
    pub fn new(threads: usize) -> Self {
        Self { threads: threads.max(1), queue: Mutex::default(), ready: Condvar::new() }
    }

    /// Runs `job` on a fork thread. Must be called within a tokio runtime
    /// the first time (the threads enter it: tokio::process watches the
    /// children through it).
    pub fn run(self: &std::sync::Arc<Self>, urgency: Urgency, job: ForkJob) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if !queue.started {
            queue.started = true;
            let runtime = tokio::runtime::Handle::current();
            for n in 0..self.threads {
                let (forkers, runtime) = (self.clone(), runtime.clone());
                std::thread::Builder::new()
                    .name(format!("shoal-fork-{n}"))
                    .spawn(move || {
                        let _entered = runtime.enter();
                        forkers.work();
                    })
                    .expect("cannot start a fork thread");
            }
        }
        match urgency {
            Urgency::Start => queue.starts.push_back(job),
            Urgency::Spare => queue.spares.push_back(job),
        }
        drop(queue);
        self.ready.notify_one();
    }

    fn work(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if let Some(job) = queue.starts.pop_front().or_else(|| queue.spares.pop_front()) {
                        break job;
                    }
                    queue = self.ready.wait(queue).unwrap_or_else(PoisonError::into_inner);
                }
            };
            job();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn admits_up_to_the_limit_then_oldest_asked_first() {
        let gate = Arc::new(StartGate::new(2));
        let t0 = Instant::now();
        let a = gate.enter(t0).await;
        let _b = gate.enter(t0).await;
        assert_eq!(gate.counts(), GateCounts { limit: 2, running: 2, waiting: 0 });
        // Three more wait; they reach the gate in the order late, early,
        // middle, and are admitted early, middle, late.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, offset) in [("late", 30), ("early", 10), ("middle", 20)] {
            let (waiting, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _admitted = waiting.enter(t0 + Duration::from_millis(offset)).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }));
            while gate.counts().waiting < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(gate.counts().waiting, 3);
        drop(a);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["early", "middle", "late"]);
        assert_eq!(gate.counts(), GateCounts { limit: 2, running: 1, waiting: 0 });
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_place_on() {
        let gate = Arc::new(StartGate::new(1));
        let first = gate.enter(Instant::now()).await;
        let waiting = {
            let waiting = gate.clone();
            tokio::spawn(async move {
                let _admitted = waiting.enter(Instant::now()).await;
                std::future::pending::<()>().await;
            })
        };
        while gate.counts().waiting == 0 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        drop(first);
        // The place is free again: another start is admitted at once.
        let third = tokio::time::timeout(Duration::from_secs(5), gate.enter(Instant::now())).await;
        assert!(third.is_ok(), "the place of a start that gave up was lost");
    }

    #[tokio::test]
    async fn fork_jobs_for_starts_run_before_spares() {
        let forkers = Arc::new(Forkers::new(1));
        let (order, done) = (Arc::new(Mutex::new(Vec::new())), Arc::new(tokio::sync::Notify::new()));
        // Holds the only thread while the others queue up.
        let (hold, held) = std::sync::mpsc::channel::<()>();
        forkers.run(
            Urgency::Start,
            Box::new(move || {
                let _ = held.recv();
            }),
        );
        for (urgency, name) in [(Urgency::Spare, "spare"), (Urgency::Start, "start")] {
            let (order, done) = (order.clone(), done.clone());
            forkers.run(
                urgency,
                Box::new(move || {
                    let mut order = order.lock().unwrap();
                    order.push(name);
                    if order.len() == 2 {
                        done.notify_one();
                    }
                }),
            );
        }
        hold.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), done.notified()).await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["start", "spare"]);
    }
}
