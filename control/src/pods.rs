//! A pod: one replica slot with a stable name, like a Kubernetes pod whose
//! container the kubelet restarts. Its task starts the worker, puts it in
//! the gateway's rotation once ready, and when the worker exits takes it
//! out and starts it again: at once if it had been serving for at least
//! [`HEALTHY_RUN`] (a replica that was killed is replaced at once); after a
//! back-off if it failed to start or died right after (1 s, doubling,
//! capped at 60 s; 60 s of good health resets it). While it waits, its
//! state is `CrashLoopBackOff`. Told to stop, it takes the worker out
//! of rotation, waits a moment for requests already routed to it, then
//! stops it with a drain.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_api::Probe;
use shoal_api::objects::{ReplicaInfo, ReplicaState, now_unix};
use shoal_gateway::Gateway;
use shoal_gateway::link::Link;
use shoal_node::{Exit, Killer, NodeAgent, ReplicaSpec};
use tokio::sync::{Notify, watch};

use crate::events::EventLog;

/// Back-off before restarting a worker: first delay, cap, and the uptime
/// after which it resets.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// A run at least this long after becoming ready is not a crash loop.
pub const HEALTHY_RUN: Duration = Duration::from_secs(1);
/// Time between taking a replica out of rotation and signalling it, so
/// that requests the gateway already routed to it are sent before it stops
/// accepting connections.
const DEREGISTER_DELAY: Duration = Duration::from_millis(500);
/// Time a stopping worker gets to finish its in-flight requests.
pub const GRACE: Duration = Duration::from_secs(10);

/// What the rest of the control plane needs from a pod.
pub struct Pod {
    pub name: String,
    pub service: String,
    pub revision: String,
    /// The sha256 of the module it runs.
    pub digest: String,
    /// Whether it was made of a worker taken over from another `shoal up`.
    pub adopted: bool,
    status: Arc<Mutex<PodStatus>>,
    stop: watch::Sender<bool>,
    /// Set with `stop` by [`Pod::release`]: the task ends without stopping
    /// its worker, which stays in the gateway's rotation.
    released: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// A pod's observed state.
#[derive(Debug, Clone)]
pub struct PodStatus {
    pub state: ReplicaState,
    pub ready: bool,
    /// Whether the worker was ever ready (a rollout halts on a new replica
    /// that fails before it ever was).
    pub ever_ready: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Failed starts and short runs since the last long healthy run: what
    /// the back-off grows with.
    pub failures: u32,
    /// While it waits in back-off: when the next start is due.
    pub retry_at: Option<Instant>,
    pub cgroup: Option<String>,
    pub started_unix: u64,
    pub message: Option<String>,
}

/// What a pod remembers of its replica's failures, carried over to the
/// `shoal up` that takes over: the restart count, the back-off's failures,
/// and what is left of a back-off in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Memory {
    pub restarts: u32,
    pub failures: u32,
    /// Milliseconds left of the back-off before the next start (0: none).
    pub backoff_ms: u64,
}

/// The service's HTTP probes (`spec.readiness`, `spec.liveness`).
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
}

/// Shared pieces every pod task uses.
#[derive(Clone)]
pub struct PodContext {
    pub agent: Arc<NodeAgent>,
    pub gateway: Arc<Gateway>,
    pub events: Arc<EventLog>,
    /// Wakes the reconciler for a full pass.
    pub changed: Arc<Notify>,
    /// Services whose pods or count changed: a pass over just those.
    pub dirty: Arc<Dirty>,
    pub node: String,
}

impl Pod {
    /// Starts a pod running `spec`; `asked` orders its first start among
    /// those waiting (for a service woken from zero, when its first
    /// request arrived).
    pub fn start(
        ctx: PodContext,
        spec: ReplicaSpec,
        probes: Probes,
        revision: String,
        digest: String,
        (asked, memory): (Instant, Memory),
    ) -> Pod {
        Pod::spawn(ctx, spec, probes, (revision, digest), (asked, memory), None)
    }

    /// A pod for a worker taken over from another `shoal up` (`replica`,
    /// running `spec`, restarted `restarts` times so far, up for `up`): it
    /// serves at once (once its readiness probe passes, its initial delay
    /// counted from the worker's start), and is restarted like any other
    /// when it ends.
    pub fn adopt(
        ctx: PodContext,
        spec: ReplicaSpec,
        probes: Probes,
        (revision, digest): (String, String),
        (replica, memory, up): (shoal_node::Replica, Memory, Duration),
    ) -> Pod {
        let memory = Memory { backoff_ms: 0, ..memory };
        Pod::spawn(ctx, spec, probes, (revision, digest), (Instant::now(), memory), Some((replica, up)))
    }

    /// What this pod remembers of its replica's failures.
    pub fn memory(&self) -> Memory {
        let s = self.status();
        let left = s.retry_at.map_or(Duration::ZERO, |at| at.saturating_duration_since(Instant::now()));
        Memory {
            restarts: s.restarts,
            failures: s.failures,
            backoff_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn spawn(
        ctx: PodContext,
        spec: ReplicaSpec,
        probes: Probes,
        (revision, digest): (String, String),
        (asked, memory): (Instant, Memory),
        adopted: Option<(shoal_node::Replica, Duration)>,
    ) -> Pod {
        let status = Arc::new(Mutex::new(PodStatus {
            state: ReplicaState::Starting,
            ready: false,
            ever_ready: false,
            pid: None,
            restarts: memory.restarts,
            failures: memory.failures,
            retry_at: None,
            cgroup: None,
            started_unix: now_unix(),
            message: None,
        }));
        let adopted_worker = adopted.is_some();
        let (stop, stop_rx) = watch::channel(false);
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (gateway, service, name) = (ctx.gateway.clone(), spec.service.clone(), spec.name.clone());
        let halt = Halt { stop: stop_rx, released: released.clone() };
        let run = run(ctx, spec.clone(), probes, status.clone(), halt, (asked, memory, adopted));
        let task = tokio::spawn(async move {
            if !run.await {
                // The replica is gone for good: so are its figures.
                gateway.forget_replica(&service, &name);
            }
        });
        let adopted = adopted_worker;
        Pod { name: spec.name, service: spec.service, revision, digest, adopted, status, stop, released, task }
    }

    /// Lets go of the worker without stopping it, for another `shoal up`
    /// that takes it over: the task ends at once (once a start in progress
    /// is done), the worker stays in this gateway's rotation for the
    /// requests this process still serves. [`Pod::finished`] tells when.
    /// One already stopping goes on stopping.
    pub fn release(&self) {
        if *self.stop.borrow() {
            return;
        }
        self.released.store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop.send_replace(true);
    }

    /// Whether [`Pod::release`] let it go (it was not stopping).
    pub fn released(&self) -> bool {
        self.released.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Asks the pod to stop; [`Pod::finished`] tells when it has.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        let mut status = self.status.lock().expect("pod lock");
        status.state = ReplicaState::Terminating;
        status.ready = false;
    }

    /// Whether stopping was asked.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Whether the pod's task has ended (its worker exited and was cleaned up).
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the pod's task has ended.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub fn status(&self) -> PodStatus {
        self.status.lock().expect("pod lock").clone()
    }

    /// The pod as the API shows it.
    pub fn info(&self, node: &str) -> ReplicaInfo {
        let s = self.status();
        ReplicaInfo {
            name: self.name.clone(),
            service: self.service.clone(),
            revision: self.revision.clone(),
            state: s.state,
            ready: s.ready,
            node: node.to_owned(),
            pid: s.pid,
            restarts: s.restarts,
            cgroup: s.cgroup,
            started_unix: s.started_unix,
            message: s.message,
        }
    }
}

/// Services whose pods changed (a start, a readiness change, an exit) or
/// whose autoscaler changed their count since the last pass. Waking the
/// reconciler for them runs a pass over just those services: with a
/// thousand services, a full pass for each of a storm's replica starts
/// kept a core busy.
#[derive(Default)]
pub struct Dirty {
    services: Mutex<std::collections::HashSet<String>>,
    notify: Notify,
}

impl Dirty {
    /// Marks `service` and wakes the reconciler.
    pub fn mark(&self, service: &str) {
        let mut services = self.services.lock().expect("dirty lock");
        if !services.contains(service) {
            services.insert(service.to_owned());
        }
        drop(services);
        self.notify.notify_one();
    }

    /// Waits until a service is marked.
    pub async fn marked(&self) {
        self.notify.notified().await;
    }

    /// The services marked since the last call.
    pub fn take(&self) -> std::collections::HashSet<String> {
        std::mem::take(&mut *self.services.lock().expect("dirty lock"))
    }
}

/// What ends a pod's task: `stop` turning true; with `released` set
/// (a handover), its worker is left running.
struct Halt {
    stop: watch::Receiver<bool>,
    released: Arc<std::sync::atomic::AtomicBool>,
}

impl Halt {
    fn released(&self) -> bool {
        self.released.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Runs a pod until it is stopped or released; `true` if released (its
/// worker runs on, for another `shoal up`).
async fn run(
    ctx: PodContext,
    spec: ReplicaSpec,
    probes: Probes,
    status: Arc<Mutex<PodStatus>>,
    halt: Halt,
    (asked, memory, mut adopted): (Instant, Memory, Option<(shoal_node::Replica, Duration)>),
) -> bool {
    let mut stop = halt.stop.clone();
    let object = format!("replica/{}", spec.name);
    let update = |f: &dyn Fn(&mut PodStatus)| {
        f(&mut status.lock().expect("pod lock"));
        ctx.dirty.mark(&spec.service);
    };
    // Failed starts and short runs since the last long healthy run.
    let mut failures: u32 = memory.failures;
    // Restarts are asked for when they happen.
    let mut asked = Some(asked);
    // The rest of a back-off the predecessor's pod was in.
    if memory.backoff_ms > 0 {
        let delay = Duration::from_millis(memory.backoff_ms);
        update(&|s| {
            s.state = ReplicaState::CrashLoopBackOff;
            s.retry_at = Some(Instant::now() + delay);
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => return halt.released(),
        }
    }
    loop {
        if *stop.borrow() {
            return halt.released();
        }
        update(&|s| {
            if s.state != ReplicaState::Terminating {
                s.state = ReplicaState::Starting;
            }
            s.retry_at = None;
        });
        let delay;
        let was_adopted = adopted.is_some();
        // How long the worker has run already (an adopted one).
        let mut up = Duration::ZERO;
        let started = match adopted.take() {
            Some((replica, running)) => {
                up = running;
                Ok(replica)
            }
            None => ctx.agent.start(&spec, asked.take().unwrap_or_else(Instant::now)).await,
        };
        match started {
            Ok(mut replica) => {
                let started = Instant::now();
                let (pid, cgroup) = (replica.pid, replica.cgroup.clone());
                if *stop.borrow() {
                    if !halt.released() {
                        ctx.agent.stop(&mut replica, GRACE).await;
                    }
                    return halt.released();
                }
                let link = match replica.take_channel().map(|fds| Link::open(&replica.name, fds)) {
                    Some(Ok(link)) => link,
                    failed => {
                        let why = match failed {
                            Some(Err(error)) => format!("cannot open the worker's channel: {error}"),
                            _ => "the worker has no channel".to_owned(),
                        };
                        ctx.events.warning(&object, "FailedStart", why);
                        ctx.agent.stop(&mut replica, GRACE).await;
                        (failures, delay) = after_exit(failures, None);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                };
                link.serve_calls(ctx.gateway.call_handler(
                    &spec.service,
                    &spec.allow_outbound,
                    spec.call_response_body,
                ));
                'serving: {
                    if let Some(readiness) = &probes.readiness {
                        // Not in rotation until the service says it is ready.
                        update(&|s| {
                            s.pid = Some(pid);
                            s.cgroup = cgroup.clone();
                        });
                        let gate = tokio::select! {
                            result = first_ready(&link, readiness, up, &ctx.events, &object) => Gate::Probed(result),
                            exit = replica.wait() => Gate::Exited(exit),
                            () = stopped(&mut stop) => Gate::Stop,
                        };
                        let why = match gate {
                            Gate::Probed(Ok(())) => None,
                            Gate::Probed(Err(why)) => {
                                // Never ready: a failed start, so a rollout
                                // halts on it with this reason.
                                let exit = ctx.agent.stop(&mut replica, GRACE).await;
                                link.close(&format!("the worker {exit}"));
                                Some(why)
                            }
                            Gate::Exited(exit) => {
                                link.close(&format!("the worker {exit}"));
                                Some(format!("the worker {exit} before its readiness probe passed"))
                            }
                            Gate::Stop if halt.released() => return true,
                            Gate::Stop => {
                                let exit = ctx.agent.stop(&mut replica, GRACE).await;
                                link.close(&format!("the worker {exit}"));
                                ctx.events.normal(&object, "Stopped", format!("worker {exit}"));
                                return false;
                            }
                        };
                        if let Some(why) = why {
                            (failures, delay) = after_exit(failures, None);
                            update(&|s| {
                                s.pid = None;
                                s.restarts += 1;
                                s.message = Some(why.clone());
                            });
                            ctx.events.warning(&object, "FailedStart", format!("{why}; restarting {}", when(delay)));
                            break 'serving;
                        }
                    }
                    ctx.gateway.add_replica(&spec.service, &replica.name, link.clone());
                    update(&|s| {
                        s.state = ReplicaState::Running;
                        s.ready = true;
                        s.ever_ready = true;
                        s.pid = Some(pid);
                        s.cgroup = cgroup.clone();
                        s.started_unix = now_unix();
                    });
                    let cgroup_shown = cgroup.as_deref().unwrap_or("none (unconfined)");
                    if was_adopted {
                        let what = format!("pid {pid}, cgroup {cgroup_shown}, taken over from an earlier shoal up");
                        ctx.events.normal(&object, "Adopted", what);
                    } else {
                        let what = format!("pid {pid}, cgroup {cgroup_shown}, {}", replica.startup);
                        ctx.events.normal(&object, "Started", what);
                    }
                    let name = replica.name.clone();
                    let killer = replica.killer();
                    let rotation = Rotation {
                        ctx: &ctx,
                        service: &spec.service,
                        replica: &name,
                        link: &link,
                        update: &update,
                        object: &object,
                        down: Mutex::new((false, false)),
                    };
                    tokio::select! {
                        () = probe(&rotation, (&link, pid)) => unreachable!(),
                        () = readiness(&rotation, &link, probes.readiness.as_ref()) => unreachable!(),
                        () = liveness(&link, probes.liveness.as_ref(), &killer, &ctx.events, &object) => unreachable!(),
                        () = broken(&link, &killer, &ctx.events, &object) => unreachable!(),
                        exit = replica.wait() => {
                            link.close(&format!("the worker {exit}"));
                            ctx.gateway.remove_replica(&spec.service, &replica.name);
                            (failures, delay) = after_exit(failures, Some(started.elapsed()));
                            let reason = if exit == Exit::OomKilled { "OOMKilled" } else { "Exited" };
                            update(&|s| {
                                s.ready = false;
                                s.pid = None;
                                s.restarts += 1;
                                s.message = Some(format!("last exit: {exit}"));
                            });
                            if *stop.borrow() {
                                return halt.released();
                            }
                            ctx.events.warning(&object, reason, format!("worker {exit}; restarting {}", when(delay)));
                        }
                        () = stopped(&mut stop) => {
                            if halt.released() {
                                // Serving on in this gateway until it drains.
                                return true;
                            }
                            ctx.gateway.remove_replica(&spec.service, &replica.name);
                            tokio::time::sleep(DEREGISTER_DELAY).await;
                            let exit = ctx.agent.stop(&mut replica, GRACE).await;
                            link.close(&format!("the worker {exit}"));
                            ctx.events.normal(&object, "Stopped", format!("worker {exit}"));
                            return false;
                        }
                    }
                }
            }
            Err(error) => {
                (failures, delay) = after_exit(failures, None);
                let message = error.to_string();
                update(&|s| {
                    s.restarts += 1;
                    s.message = Some(message.clone());
                });
                ctx.events.warning(&object, "FailedStart", format!("{message}; retrying {}", when(delay)));
            }
        }
        update(&|s| s.failures = failures);
        if delay.is_zero() {
            continue;
        }
        update(&|s| {
            if s.state != ReplicaState::Terminating {
                s.state = ReplicaState::CrashLoopBackOff;
            }
            s.retry_at = Some(Instant::now() + delay);
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => return halt.released(),
        }
    }
}

/// The restart policy, as a pure function: given the failures counted so
/// far and how long the worker ran after becoming ready (`None`: it failed
/// to start), the new count and the delay before the next start. A run of
/// [`HEALTHY_RUN`] or more restarts at once; one of [`BACKOFF_RESET`] or
/// more also forgets the earlier failures; anything shorter is a failure,
/// and waits [`backoff`].
fn after_exit(failures: u32, ran: Option<Duration>) -> (u32, Duration) {
    match ran {
        Some(ran) if ran >= BACKOFF_RESET => (0, Duration::ZERO),
        Some(ran) if ran >= HEALTHY_RUN => (failures, Duration::ZERO),
        _ => {
            let failures = failures.saturating_add(1);
            (failures, backoff(failures))
        }
    }
}

/// The delay before the next start after `failures` failures in a row:
/// 1 s, doubling, capped.
fn backoff(failures: u32) -> Duration {
    BACKOFF_START.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(BACKOFF_MAX)
}

fn when(delay: Duration) -> String {
    if delay.is_zero() { "now".into() } else { format!("in {delay:?}") }
}

/// Applies a change to a pod's status and wakes the reconciler.
type StatusUpdate<'a> = dyn Fn(&dyn Fn(&mut PodStatus)) + Sync + 'a;

/// How often a running worker is probed, how long a probe may take, and
/// how many failures in a row take it out of the rotation: a worker that
/// stops answering leaves within 3 s (0.5 + 1 + 0.5 + 1).
const PROBE_PERIOD: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_FAILURES: u32 = 2;
/// Failures in a row after which a worker counts as stuck even if its
/// process runs: requests waiting on it are given up (sent elsewhere when
/// safe). A stopped process (SIGSTOP) counts as stuck at once; a merely
/// slow one keeps its requests until then.
const PROBE_STUCK: u32 = 4;

/// Whether a running replica is in the gateway's rotation: it is while its
/// worker answers on its channel and its readiness probe (if it has one)
/// passes. Each of the two takes it out; it returns when both are well.
struct Rotation<'a> {
    ctx: &'a PodContext,
    service: &'a str,
    replica: &'a str,
    link: &'a Arc<Link>,
    update: &'a StatusUpdate<'a>,
    object: &'a str,
    /// (channel failing, readiness failing).
    down: Mutex<(bool, bool)>,
}

impl Rotation<'_> {
    /// Records whether the channel (`channel: true`) or the readiness
    /// probe is failing, taking the replica out of rotation or back in
    /// when that changes; `why` says what happened, for the event.
    fn set(&self, channel: bool, failing: bool, why: &str) {
        let mut down = self.down.lock().expect("rotation lock");
        let was_in = !down.0 && !down.1;
        if channel {
            down.0 = failing;
        } else {
            down.1 = failing;
        }
        let now_in = !down.0 && !down.1;
        drop(down);
        if was_in && !now_in {
            self.ctx.gateway.remove_replica(self.service, self.replica);
            (self.update)(&|s| s.ready = false);
            self.ctx.events.warning(self.object, "Unready", format!("{why}; out of rotation"));
        } else if !was_in && now_in {
            self.ctx.gateway.add_replica(self.service, self.replica, self.link.clone());
            (self.update)(&|s| s.ready = true);
            self.ctx.events.normal(self.object, "Ready", format!("{why}; back in rotation"));
        }
    }

    fn in_rotation(&self) -> bool {
        let down = self.down.lock().expect("rotation lock");
        !down.0 && !down.1
    }
}

/// Probes a running worker's channel forever: after [`PROBE_FAILURES`]
/// failed probes in a row it leaves the gateway's rotation (its process may
/// be alive but stuck or stopped) and returns to it on the next success.
/// Requests already waiting on it are given up (sent to another replica
/// where that is safe, else `502`) only when it is stuck: its process is
/// stopped, or [`PROBE_STUCK`] probes failed; a replica that is only slow
/// finishes them.
async fn probe(rotation: &Rotation<'_>, (link, pid): (&Arc<Link>, u32)) {
    let mut failures = 0;
    let mut given_up = false;
    loop {
        tokio::time::sleep(PROBE_PERIOD).await;
        if link.probe(PROBE_TIMEOUT).await {
            if failures >= PROBE_FAILURES {
                rotation.set(true, false, "the worker answers again");
            }
            failures = 0;
            given_up = false;
        } else {
            failures += 1;
            if failures == PROBE_FAILURES {
                rotation.set(true, true, &format!("the worker did not answer {PROBE_FAILURES} probes"));
            }
            if !rotation.in_rotation() && !given_up && (failures >= PROBE_STUCK || is_stopped(pid)) {
                given_up = true;
                rotation.ctx.gateway.fail_replica(rotation.service, rotation.replica);
            }
        }
    }
}

/// How a new replica's wait for its first passing readiness probe ended.
enum Gate {
    Probed(Result<(), String>),
    Exited(Exit),
    Stop,
}

/// Probes a new replica until its readiness probe passes (`Ok`), or has
/// failed `failureThreshold` times in a row: the reason, naming the last
/// failure. Each failure is a `Unhealthy` event, as in Kubernetes. The
/// initial delay counts from the worker's start, `up` ago (an adopted
/// worker may have run a while).
async fn first_ready(
    link: &Arc<Link>,
    probe: &Probe,
    up: Duration,
    events: &EventLog,
    object: &str,
) -> Result<(), String> {
    tokio::time::sleep(probe.initial_delay().saturating_sub(up)).await;
    let mut failures = 0;
    loop {
        match link.http_probe(&probe.path, probe.timeout()).await {
            Ok(_) => return Ok(()),
            Err(why) => {
                failures += 1;
                events.warning(object, "Unhealthy", format!("readiness probe failed: {why}"));
                if failures >= probe.failure_threshold {
                    return Err(format!("readiness probe failed {failures} times in a row: {why}"));
                }
            }
        }
        tokio::time::sleep(probe.period()).await;
    }
}

/// Keeps probing a ready replica's readiness forever: `failureThreshold`
/// failures in a row take it out of rotation, one pass brings it back (as
/// Kubernetes' `successThreshold: 1`). Without a probe, waits forever.
async fn readiness(rotation: &Rotation<'_>, link: &Arc<Link>, probe: Option<&Probe>) {
    let Some(probe) = probe else { return std::future::pending().await };
    let mut failures = 0;
    loop {
        tokio::time::sleep(probe.period()).await;
        match link.http_probe(&probe.path, probe.timeout()).await {
            Ok(_) => {
                if failures >= probe.failure_threshold {
                    rotation.set(false, false, "readiness probe passed");
                }
                failures = 0;
            }
            Err(why) => {
                failures += 1;
                rotation.ctx.events.warning(rotation.object, "Unhealthy", format!("readiness probe failed: {why}"));
                if failures == probe.failure_threshold {
                    rotation.set(false, true, &format!("readiness probe failed {failures} times in a row: {why}"));
                }
            }
        }
    }
}

/// Probes a ready replica's liveness forever: `failureThreshold` failures
/// in a row kill its worker, which the pod then restarts (an `Unhealthy`
/// event says why). Without a probe, waits forever.
async fn liveness(link: &Arc<Link>, probe: Option<&Probe>, killer: &Killer, events: &EventLog, object: &str) {
    let Some(probe) = probe else { return std::future::pending().await };
    tokio::time::sleep(probe.initial_delay()).await;
    let mut failures = 0;
    loop {
        match link.http_probe(&probe.path, probe.timeout()).await {
            Ok(_) => failures = 0,
            Err(why) => {
                failures += 1;
                if failures >= probe.failure_threshold {
                    events.warning(
                        object,
                        "Unhealthy",
                        format!("liveness probe failed {failures} times in a row: {why}; restarting the replica"),
                    );
                    killer.kill();
                    return std::future::pending().await;
                }
                events.warning(object, "Unhealthy", format!("liveness probe failed: {why}"));
            }
        }
        tokio::time::sleep(probe.period()).await;
    }
}

/// Whether process `pid` is stopped (SIGSTOP, or traced): `/proc/<pid>/stat`
/// says `T` or `t`.
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state == 'T' || state == 't')
}

/// Completes never; kills the worker once it broke its channel's protocol
/// (its exit then replaces it).
async fn broken(link: &Link, killer: &Killer, events: &EventLog, object: &str) {
    link.broken().await;
    events.warning(object, "ChannelBroken", "the worker wrote what the channel protocol forbids; replacing it");
    killer.kill();
    std::future::pending::<()>().await
}

/// Completes once the pod is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_backs_off_and_sixty_seconds_of_health_reset_it() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        // Failed starts and short runs back off, doubling.
        let mut failures = 0;
        let mut delays = Vec::new();
        for ran in [None, Some(Duration::from_millis(200)), None, None, None, None] {
            let delay;
            (failures, delay) = after_exit(failures, ran);
            delays.push(delay.as_secs());
        }
        assert_eq!((failures, delays), (6, vec![1, 2, 4, 8, 16, 32]));
        // A healthy run restarts at once but remembers the loop…
        assert_eq!(after_exit(failures, secs(30)), (6, Duration::ZERO));
        assert_eq!(after_exit(6, None), (7, Duration::from_secs(60)));
        // …until it lasted 60 s: then the next failure waits 1 s again.
        let (failures, delay) = after_exit(6, secs(60));
        assert_eq!((failures, delay), (0, Duration::ZERO));
        assert_eq!(after_exit(failures, None), (1, Duration::from_secs(1)));
        assert_eq!(after_exit(failures, Some(Duration::from_millis(999))), (1, Duration::from_secs(1)));
        assert_eq!(after_exit(2, secs(1)), (2, Duration::ZERO), "a second of service is not a crash");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let delays: Vec<u64> = (1..10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
