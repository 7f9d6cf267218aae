//! The autoscaler's decision: how many replicas a service needs, as a pure
//! function of its recent load and its `spec.autoscale` settings. No clock
//! and no IO: the caller measures one [`Sample`] per tick, pushes it into a
//! [`Window`] and calls [`decide`] once per tick with the service's
//! [`ScalerState`].
//!
//! The algorithm follows Knative's KPA, with the Kubernetes HPA's
//! scale-down stabilization:
//!
//! 1. **Stable mode.** Average the metric over the stable window (default
//!    60 s); the recommendation is `ceil(average / (target × utilization))`.
//!    Within the tolerance band around the current count (default ±10 %) it
//!    is the current count. Scale-ups apply at once; a scale-down goes only
//!    as low as the highest recommendation of the last stable window, so a
//!    load that oscillates faster than the window never makes the count
//!    flap.
//! 2. **Panic mode.** The panic value is the larger of the panic-window
//!    average (default 6 s) and the load sustained over the last two ticks
//!    (their minimum: a one-tick spike does not count, a step does). When it
//!    needs at least `panicThreshold` (default 200 %) of the ready
//!    replicas, panic starts: the count follows the larger of the panic and
//!    stable recommendations and never goes down. Panic ends once a whole
//!    stable window has passed without a burst.
//! 3. **Limits.** Per decision at most `maxScaleUpRate ×` the ready
//!    replicas and at least the ready replicas `/ maxScaleDownRate`; then
//!    `min..=max`.
//! 4. **Scale to zero.** With `min: 0`, no request for
//!    `scaleToZeroGracePeriod` (and none in flight) gives 0. A request to a
//!    service at zero is held by the gateway's activator, which starts the
//!    first replica without waiting for a decision.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_api::{Autoscale, ScaleMetric};

/// How often a sample is taken and a decision made.
pub const TICK: Duration = Duration::from_secs(1);

/// A service's load over one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Average requests in flight (in replicas and held by the gateway).
    pub concurrency: f64,
    /// Requests that arrived.
    pub requests: f64,
}

impl Sample {
    fn value(&self, metric: ScaleMetric, tick: Duration) -> f64 {
        match metric {
            ScaleMetric::Concurrency => self.concurrency,
            ScaleMetric::Rps => self.requests / tick.as_secs_f64(),
        }
    }

    fn idle(&self) -> bool {
        self.concurrency == 0.0 && self.requests == 0.0
    }
}

/// The last samples of one service, newest last, as many as the stable
/// window holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Window {
    tick: Duration,
    capacity: usize,
    samples: VecDeque<Sample>,
}

impl Window {
    /// An empty window for `settings`, sampled every `tick`.
    pub fn new(settings: &Autoscale, tick: Duration) -> Self {
        let capacity = ticks(settings.stable_window, tick);
        Self { tick, capacity, samples: VecDeque::with_capacity(capacity) }
    }

    /// Adds the newest sample, forgetting the oldest beyond the window.
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The average of `metric` over the newest `span` (or all samples
    /// when fewer); 0 without samples.
    fn average(&self, metric: ScaleMetric, span: Duration) -> f64 {
        let n = ticks(span, self.tick).min(self.samples.len());
        if n == 0 {
            return 0.0;
        }
        self.samples.iter().rev().take(n).map(|s| s.value(metric, self.tick)).sum::<f64>() / n as f64
    }

    /// The metric sustained over the last two samples (their minimum).
    fn sustained(&self, metric: ScaleMetric) -> f64 {
        let mut newest = self.samples.iter().rev().map(|s| s.value(metric, self.tick));
        match (newest.next(), newest.next()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            _ => 0.0,
        }
    }

    fn newest(&self) -> Option<&Sample> {
        self.samples.back()
    }
}

fn ticks(span: Duration, tick: Duration) -> usize {
    (span.as_nanos().div_ceil(tick.as_nanos().max(1)) as usize).max(1)
}

/// What the autoscaler remembers between decisions of one service.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ScalerState {
    /// Decisions made so far (the autoscaler's clock).
    tick: u64,
    /// The tick of the last burst, while panicking.
    panic_since: Option<u64>,
    /// The highest count asked for in this panic.
    max_panic: u32,
    /// Stable recommendations of the last stable window, newest last.
    recommendations: VecDeque<u32>,
    /// Ticks in a row without any request.
    idle_ticks: u64,
}

impl ScalerState {
    /// Notes a request seen outside the samples (one the activator holds),
    /// so that the idle time starts again.
    pub fn note_activity(&mut self) {
        self.idle_ticks = 0;
    }

    /// A count set by hand (`shoal scale`, a changed `spec.replicas`): it
    /// stands for a stable window unless the load needs more, the way a
    /// count the autoscaler chose does.
    pub fn hold(&mut self, count: u32, settings: &Autoscale, tick: Duration) {
        self.recommendations.clear();
        self.recommendations.extend(std::iter::repeat_n(count, ticks(settings.stable_window, tick)));
    }
}

/// The service as it is now.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    /// The count last asked for.
    pub current: u32,
    /// Replicas in the gateway's rotation.
    pub ready: u32,
}

/// A decision: the count to run, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub panic: bool,
    pub reason: String,
}

/// Decides the replica count for the tick whose sample was just pushed
/// into `window`.
pub fn decide(settings: &Autoscale, window: &Window, observed: Observed, state: &mut ScalerState) -> Decision {
    state.tick += 1;
    let now = state.tick;
    let stable_ticks = ticks(settings.stable_window, window.tick);
    let metric = settings.metric;
    let per_replica = f64::from(settings.target) * f64::from(settings.target_utilization) / 100.0;
    let ready = observed.ready.max(1);
    let current = observed.current;

    if window.newest().is_some_and(Sample::idle) {
        state.idle_ticks += 1;
    } else {
        state.idle_ticks = 0;
    }

    let stable_value = window.average(metric, settings.stable_window);
    let panic_value = window.average(metric, settings.panic_window).max(window.sustained(metric));
    let stable_wanted = pods(stable_value, per_replica);
    let panic_wanted = pods(panic_value, per_replica);

    // Stable recommendation, with the tolerance band around the current count.
    let mut recommendation = stable_wanted;
    if current > 0 && recommendation != current {
        let ratio = stable_value / (f64::from(current) * per_replica);
        if (ratio - 1.0).abs() <= f64::from(settings.tolerance) / 100.0 {
            recommendation = current;
        }
    }
    state.recommendations.push_back(recommendation);
    while state.recommendations.len() > stable_ticks {
        state.recommendations.pop_front();
    }

    // Panic mode: begins or extends on a burst, ends a stable window after
    // the last one.
    let over_threshold =
        f64::from(panic_wanted) / f64::from(ready) >= f64::from(settings.panic_threshold) / 100.0 && panic_wanted > 0;
    if over_threshold {
        state.panic_since = Some(now);
    } else if state.panic_since.is_some_and(|since| now - since >= stable_ticks as u64) {
        state.panic_since = None;
        state.max_panic = 0;
    }
    let panicking = state.panic_since.is_some();

    let unit = match metric {
        ScaleMetric::Concurrency => "in flight",
        ScaleMetric::Rps => "requests/s",
    };
    let target_text = format!("target {} × {}%", settings.target, settings.target_utilization);
    let (mut desired, mut reason) = if panicking {
        let wanted = panic_wanted.max(stable_wanted).max(state.max_panic).max(current);
        state.max_panic = wanted;
        let window_text = humantime::format_duration(settings.panic_window);
        (wanted, format!("panic: {panic_value:.1} {unit} over {window_text}, {target_text} per replica"))
    } else {
        let window_text = humantime::format_duration(settings.stable_window);
        let wanted = if recommendation >= current {
            recommendation
        } else {
            // Scale down only as far as the last stable window allows.
            state.recommendations.iter().copied().max().unwrap_or(recommendation).min(current)
        };
        (wanted, format!("{stable_value:.1} {unit} over {window_text}, {target_text} per replica"))
    };

    // Scale to zero after the grace period without any request.
    let idle_for = window.tick.saturating_mul(u32::try_from(state.idle_ticks).unwrap_or(u32::MAX));
    if settings.min == 0 && !panicking && state.idle_ticks > 0 && idle_for >= settings.scale_to_zero_grace_period {
        let reason = format!("no requests for {}", humantime::format_duration(idle_for));
        return Decision { desired: 0, panic: false, reason };
    }

    // Within min..=max (at least 1 while there is load or replicas).
    let floor = settings.min.max(u32::from(desired > 0 || current > 0)).min(settings.max);
    let clamped = desired.clamp(floor, settings.max);
    if clamped != desired {
        let bound = if clamped > desired { "min" } else { "max" };
        reason.push_str(&format!("; held at {bound} {clamped}"));
        desired = clamped;
    }

    // Rate limits relative to the ready replicas.
    let up_limit = ready.saturating_mul(settings.max_scale_up_rate);
    let down_limit = observed.ready.div_ceil(settings.max_scale_down_rate);
    if desired > up_limit && desired > current {
        desired = up_limit.max(current);
        reason.push_str(&format!("; limited to {}× the {} ready", settings.max_scale_up_rate, observed.ready));
    }
    if desired < down_limit && desired < current {
        desired = down_limit.min(current);
        reason.push_str(&format!("; limited to the {} ready / {}", observed.ready, settings.max_scale_down_rate));
    }
    Decision { desired, panic: panicking, reason }
}

/// Replicas needed for `value` at `per_replica` each.
fn pods(value: f64, per_replica: f64) -> u32 {
    if value <= 0.0 || per_replica <= 0.0 {
        return 0;
    }
    let wanted = (value / per_replica - 1e-9).ceil();
    if wanted >= f64::from(u32::MAX) { u32::MAX } else { wanted.max(0.0) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Autoscale {
        Autoscale { max: 100, target_utilization: 100, ..Autoscale::default() }
    }

    /// Runs the autoscaler over a load given per tick; replicas become
    /// ready at once. Returns the count after each decision.
    struct Sim {
        settings: Autoscale,
        window: Window,
        state: ScalerState,
        current: u32,
        decisions: Vec<Decision>,
    }

    impl Sim {
        fn new(settings: Autoscale, initial: u32) -> Self {
            let window = Window::new(&settings, TICK);
            Self { settings, window, state: ScalerState::default(), current: initial, decisions: Vec::new() }
        }

        fn step(&mut self, concurrency: f64) -> u32 {
            let requests = concurrency * 100.0;
            self.window.push(Sample { concurrency, requests });
            let observed = Observed { current: self.current, ready: self.current };
            let decision = decide(&self.settings, &self.window, observed, &mut self.state);
            self.current = decision.desired;
            self.decisions.push(decision);
            self.current
        }

        fn run(&mut self, ticks: usize, load: impl Fn(usize) -> f64) -> Vec<u32> {
            (0..ticks).map(|t| self.step(load(t))).collect()
        }

        fn changes(counts: &[u32]) -> usize {
            counts.windows(2).filter(|w| w[0] != w[1]).count()
        }
    }

    #[test]
    fn load_at_target_keeps_the_count() {
        let mut sim = Sim::new(settings(), 3);
        let counts = sim.run(300, |_| 30.0);
        assert!(counts.iter().all(|&c| c == 3), "{counts:?}");
        // Noise within the tolerance band changes nothing either.
        let counts = sim.run(300, |t| if t % 2 == 0 { 28.0 } else { 32.5 });
        assert!(counts.iter().all(|&c| c == 3), "{counts:?}");
        assert!(!sim.decisions.last().unwrap().panic);
    }

    #[test]
    fn a_fourfold_step_reaches_the_needed_count_within_two_decisions() {
        for base in [1u32, 2, 5] {
            let mut sim = Sim::new(settings(), base);
            sim.run(120, |_| f64::from(base) * 10.0);
            assert_eq!(sim.current, base);
            let load = f64::from(base) * 40.0;
            let counts = sim.run(2, |_| load);
            assert_eq!(counts[1], base * 4, "base {base}: {counts:?}");
            assert!(sim.decisions.last().unwrap().panic);
            assert!(sim.decisions.last().unwrap().reason.starts_with("panic"));
        }
    }

    #[test]
    fn a_one_tick_spike_does_not_panic() {
        let mut sim = Sim::new(settings(), 2);
        sim.run(120, |_| 20.0);
        // 2.5 times the load for one tick: the panic window's average needs
        // 1.5 times the replicas, and nothing was sustained.
        let counts = sim.run(10, |t| if t == 0 { 50.0 } else { 20.0 });
        assert!(sim.decisions.iter().rev().take(10).all(|d| !d.panic));
        // The spike raises the 60 s average by under 10 %: no change.
        assert!(counts.iter().all(|&c| c == 2), "{counts:?}");
    }

    #[test]
    fn no_scale_down_while_panicking() {
        let mut sim = Sim::new(settings(), 2);
        sim.run(120, |_| 20.0);
        sim.run(5, |_| 100.0);
        let peak = sim.current;
        assert_eq!(peak, 10);
        // The load drops right away: the count holds while panic lasts.
        let mut held = 0;
        for _ in 0..120 {
            let count = sim.step(5.0);
            if sim.decisions.last().unwrap().panic {
                assert_eq!(count, peak, "scaled down during panic");
                held += 1;
            }
        }
        // Panic ends a stable window after the last burst, then the count
        // falls back toward the load.
        assert!(held >= 55, "panic lasted only {held} ticks");
        assert!(sim.current < peak, "{}", sim.current);
    }

    #[test]
    fn square_waves_faster_than_the_stable_window_do_not_flap() {
        for period in [2usize, 4, 10, 16, 24, 40, 58] {
            let mut sim = Sim::new(settings(), 1);
            let wave = move |t: usize| if t % period < period / 2 { 150.0 } else { 50.0 };
            // Two stable windows to settle (the first samples fill the window), then watch five more.
            sim.run(120 + period, wave);
            let counts = sim.run(300, wave);
            assert_eq!(Sim::changes(&counts), 0, "period {period}: {counts:?}");
            assert!(sim.decisions.iter().rev().take(300).all(|d| !d.panic), "period {period} panicked");
        }
    }

    #[test]
    fn min_and_max_hold() {
        let mut capped = settings();
        capped.min = 2;
        capped.max = 5;
        let mut sim = Sim::new(capped, 2);
        let counts = sim.run(30, |_| 1000.0);
        assert!(counts.iter().all(|&c| (2..=5).contains(&c)), "{counts:?}");
        assert_eq!(sim.current, 5);
        assert!(sim.decisions.last().unwrap().reason.contains("held at max 5"));
        let counts = sim.run(400, |_| 0.0);
        assert!(counts.iter().all(|&c| (2..=5).contains(&c)), "{counts:?}");
        assert_eq!(sim.current, 2);
    }

    #[test]
    fn rate_limits_hold() {
        let mut limited = settings();
        limited.max_scale_up_rate = 2;
        limited.max_scale_down_rate = 2;
        let mut sim = Sim::new(limited, 1);
        let counts = sim.run(8, |_| 1000.0);
        // At most doubling per decision.
        let mut previous = 1;
        for &count in &counts {
            assert!(count <= previous * 2, "{counts:?}");
            previous = count;
        }
        assert_eq!(counts[..6], [2, 4, 8, 16, 32, 64], "{counts:?}");
        sim.run(200, |_| 1000.0);
        assert_eq!(sim.current, 100);
        // Down: at most halving per decision once it goes down.
        let counts = sim.run(300, |_| 10.0);
        let mut previous = 100;
        for &count in &counts {
            assert!(count * 2 >= previous, "{counts:?}");
            previous = count;
        }
        assert_eq!(sim.current, 1);
    }

    #[test]
    fn scales_to_zero_after_the_grace_period_and_back() {
        let mut zero = settings();
        zero.min = 0;
        let mut sim = Sim::new(zero, 1);
        sim.run(10, |_| 5.0);
        let counts = sim.run(40, |_| 0.0);
        // Idle for 30 ticks of 1 s: zero on the 30th, not before.
        assert!(counts[..29].iter().all(|&c| c == 1), "{counts:?}");
        assert_eq!(counts[29], 0);
        assert!(sim.decisions[10 + 29].reason.starts_with("no requests for 30s"));
        assert!(counts[29..].iter().all(|&c| c == 0));
        // Demand at zero: the first decision sees it in the windows' averages
        // (the activator has already started one replica), the second sees
        // it sustained and panics up to one replica per target.
        assert_eq!(sim.step(25.0), 1);
        assert_eq!(sim.step(25.0), 3);
        assert!(sim.decisions.last().unwrap().panic);
    }

    #[test]
    fn stays_at_zero_while_idle_and_never_below_min_otherwise() {
        let mut zero = settings();
        zero.min = 0;
        let mut sim = Sim::new(zero, 0);
        assert!(sim.run(100, |_| 0.0).iter().all(|&c| c == 0));
        let mut one = settings();
        one.min = 1;
        let mut sim = Sim::new(one, 1);
        assert!(sim.run(100, |_| 0.0).iter().all(|&c| c == 1));
        // What holds it is the minimum, not a rate limit.
        let reason = &sim.decisions.last().unwrap().reason;
        assert!(reason.ends_with("held at min 1"), "{reason}");
    }

    #[test]
    fn a_count_set_by_hand_stands_for_a_stable_window() {
        let mut sim = Sim::new(settings(), 1);
        sim.run(70, |_| 5.0);
        assert_eq!(sim.current, 1);
        sim.current = 5;
        sim.state.hold(5, &sim.settings, TICK);
        // Five replicas stay while the window remembers them, then the
        // count follows the load again.
        let counts = sim.run(59, |_| 5.0);
        assert!(counts.iter().all(|&c| c == 5), "{counts:?}");
        sim.run(10, |_| 5.0);
        assert!(sim.current < 5, "{}", sim.current);
    }

    #[test]
    fn requests_per_second_metric() {
        let mut rps = settings();
        rps.metric = ScaleMetric::Rps;
        rps.target = 100;
        rps.target_utilization = 50;
        let mut sim = Sim::new(rps, 1);
        // Sim sends 100 requests per unit of concurrency: 4 → 400 rps → 8
        // replicas at 50 each.
        sim.run(70, |_| 4.0);
        assert_eq!(sim.current, 8);
        assert!(sim.decisions.last().unwrap().reason.contains("requests/s"));
    }

    #[test]
    fn target_utilization_leaves_headroom() {
        let mut headroom = settings();
        headroom.target_utilization = 70;
        let mut sim = Sim::new(headroom, 1);
        sim.run(70, |_| 20.0);
        // 20 / (10 × 0.7) = 2.86 → 3.
        assert_eq!(sim.current, 3);
    }
}
