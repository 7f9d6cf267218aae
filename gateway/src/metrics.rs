//! Request metrics, kept by the gateway as it proxies and read by the control
//! plane: the autoscaler every tick, `shoal top` and `/metrics` on demand.
//!
//! - [`Meter`], one per service: requests in flight (being proxied or held
//!   by the activator), their time integral (request-seconds, so that the
//!   average concurrency over any interval is exact however short the
//!   requests), arrivals, and responses by status class.
//! - [`ReplicaStats`], one per replica: in flight, responses by status
//!   class, and a latency histogram, all atomics on the request path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the latency histogram's buckets, in seconds; a last
/// bucket holds the rest.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The status class of a response: 0 for 1xx … 4 for 5xx.
pub fn class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// The label of a status class: `"1xx"` … `"5xx"`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A service's demand, as the autoscaler measures it.
#[derive(Debug)]
pub struct Meter {
    inner: Mutex<MeterInner>,
}

#[derive(Debug)]
struct MeterInner {
    in_flight: u64,
    held: u64,
    /// Request-seconds up to `last`.
    area: f64,
    last: Instant,
    arrivals: u64,
    responses: [u64; 5],
}

/// A reading of a [`Meter`]; differences of two readings give averages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterReading {
    pub at: Instant,
    pub in_flight: u64,
    pub held: u64,
    /// Request-seconds since the meter was made.
    pub area: f64,
    pub arrivals: u64,
    pub responses: [u64; 5],
}

impl MeterReading {
    /// The average concurrency between `earlier` and this reading.
    pub fn concurrency_since(&self, earlier: &MeterReading) -> f64 {
        let seconds = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        if seconds <= 0.0 { self.in_flight as f64 } else { ((self.area - earlier.area) / seconds).max(0.0) }
    }
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            inner: Mutex::new(MeterInner {
                in_flight: 0,
                held: 0,
                area: 0.0,
                last: Instant::now(),
                arrivals: 0,
                responses: [0; 5],
            }),
        }
    }
}

impl MeterInner {
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.area += self.in_flight as f64 * elapsed;
        self.last = now.max(self.last);
    }
}

impl Meter {
    fn update(&self, f: impl FnOnce(&mut MeterInner)) {
        let mut inner = self.inner.lock().expect("meter lock");
        inner.advance(Instant::now());
        f(&mut inner);
    }

    /// A request arrived.
    pub fn begin(&self) {
        self.update(|m| {
            m.in_flight += 1;
            m.arrivals += 1;
        });
    }

    /// A request ended with `status`; 0 when the client went away before
    /// any status (not counted as a response).
    pub fn end(&self, status: u16) {
        self.update(|m| {
            m.in_flight = m.in_flight.saturating_sub(1);
            if status != 0 {
                m.responses[class(status)] += 1;
            }
        });
    }

    /// Counts a request as waiting for a replica, unless `max` already do.
    pub fn try_hold(&self, max: u64) -> bool {
        let mut held = false;
        self.update(|m| {
            if m.held < max {
                m.held += 1;
                held = true;
            }
        });
        held
    }

    /// A request stopped waiting for a replica.
    pub fn unhold(&self) {
        self.update(|m| m.held = m.held.saturating_sub(1));
    }

    pub fn read(&self) -> MeterReading {
        let mut inner = self.inner.lock().expect("meter lock");
        let now = Instant::now();
        inner.advance(now);
        MeterReading {
            at: now,
            in_flight: inner.in_flight,
            held: inner.held,
            area: inner.area,
            arrivals: inner.arrivals,
            responses: inner.responses,
        }
    }
}

/// One replica's request figures, shared by its endpoints over time (a
/// replica that leaves the rotation and returns keeps counting).
#[derive(Debug, Default)]
pub struct ReplicaStats {
    pub(crate) in_flight: AtomicU64,
    responses: [AtomicU64; 5],
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A copy of a replica's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaSnapshot {
    pub in_flight: u64,
    pub responses: [u64; 5],
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS`], then the rest.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    pub sum_seconds: f64,
}

impl ReplicaStats {
    /// Records a finished request.
    pub fn observe(&self, status: u16, duration: Duration) {
        self.responses[class(status)].fetch_add(1, Ordering::Relaxed);
        let seconds = duration.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ReplicaSnapshot {
        ReplicaSnapshot {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            responses: std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed)),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl ReplicaSnapshot {
    /// Finished requests.
    pub fn count(&self) -> u64 {
        self.responses.iter().sum()
    }

    /// The `q` quantile (0..=1) of the latencies of the requests that
    /// finished between `earlier` and this snapshot, in seconds,
    /// interpolated within its bucket; `None` without requests.
    pub fn quantile_since(&self, earlier: &ReplicaSnapshot, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().zip(&earlier.buckets).map(|(a, b)| a.saturating_sub(*b)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0u64;
        for (index, &count) in counts.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let lower = if index == 0 { 0.0 } else { LATENCY_BUCKETS[index - 1] };
                // The last bucket has no upper bound: report its lower one.
                let Some(&upper) = LATENCY_BUCKETS.get(index) else { return Some(lower) };
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += count;
        }
        None
    }
}

/// Calls from one service to one target (a service, or a host outside):
/// responses by status class with the time to their head, and calls that
/// got no response.
#[derive(Debug, Default)]
pub struct CallStats {
    responses: ReplicaStats,
    failed: AtomicU64,
    denied: AtomicU64,
}

/// A copy of a [`CallStats`] with what it counts.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSnapshot {
    /// The calling service.
    pub caller: String,
    /// The called service's name, or `scheme://host:port` outside.
    pub target: String,
    /// Whether the target is a service.
    pub internal: bool,
    /// Responses by status class; the latencies are to the response head.
    pub responses: ReplicaSnapshot,
    /// Calls that got no response (refused, timed out, unreachable…).
    pub failed: u64,
    /// Calls `spec.allowOutbound` did not allow.
    pub denied: u64,
}

impl CallStats {
    /// A call answered with `status`, its head after `duration`.
    pub fn answered(&self, status: u16, duration: Duration) {
        self.responses.observe(status, duration);
    }

    /// A call that got no response.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A call the allow-list refused.
    pub fn denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, caller: &str, target: &str, internal: bool) -> CallSnapshot {
        CallSnapshot {
            caller: caller.to_owned(),
            target: target.to_owned(),
            internal,
            responses: self.responses.snapshot(),
            failed: self.failed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!([class(101), class(200), class(302), class(404), class(503)], [0, 1, 2, 3, 4]);
        assert_eq!(class(0), 0);
        assert_eq!(class(999), 4);
    }

    #[test]
    fn the_meter_integrates_concurrency() {
        let meter = Meter::default();
        let start = meter.read();
        meter.begin();
        meter.begin();
        std::thread::sleep(Duration::from_millis(200));
        let mid = meter.read();
        // Two requests in flight for the whole interval.
        let concurrency = mid.concurrency_since(&start);
        assert!((1.8..=2.01).contains(&concurrency), "{concurrency}");
        meter.end(200);
        meter.end(503);
        std::thread::sleep(Duration::from_millis(50));
        let end = meter.read();
        assert_eq!(end.arrivals, 2);
        assert_eq!(end.responses, [0, 1, 0, 0, 1]);
        assert_eq!(end.in_flight, 0);
        assert!(end.concurrency_since(&mid) < 0.01);
    }

    #[test]
    fn quantiles_come_from_the_interval_only() {
        let stats = ReplicaStats::default();
        for _ in 0..1000 {
            stats.observe(200, Duration::from_millis(7));
        }
        let earlier = stats.snapshot();
        for _ in 0..99 {
            stats.observe(200, Duration::from_micros(300));
        }
        stats.observe(500, Duration::from_millis(300));
        let later = stats.snapshot();
        assert_eq!(later.count(), 1100);
        assert_eq!(later.responses[4], 1);
        let p50 = later.quantile_since(&earlier, 0.5).unwrap();
        assert!(p50 <= 0.0005, "{p50}");
        // The 100th of 100 requests lies in the 0.25..0.5 s bucket.
        let p100 = later.quantile_since(&earlier, 1.0).unwrap();
        assert!((0.25..=0.5).contains(&p100), "{p100}");
        assert_eq!(later.quantile_since(&later, 0.99), None);
    }
}
