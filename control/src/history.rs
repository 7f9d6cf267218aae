//! The recent past of each service's figures, for the dashboard's charts:
//! one point a second per service, the last [`POINTS`] (15 minutes) kept.
//!
//! Bounded: a point is 64 bytes, so a service costs at most ~58 KiB, and a
//! thousand services ~56 MiB at the very most (an idle service's points
//! are as many, but they are only written while the service exists).
//! Points come from the gateway's meters (what `shoal top` and `/metrics`
//! read) and the service's status: the dashboard has no figure of its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use shoal_gateway::ServiceSnapshot;
use shoal_gateway::metrics::ReplicaSnapshot;

/// Points kept per service: 15 minutes at one a second.
pub const POINTS: usize = 900;

/// One service's figures over one second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// When (Unix milliseconds) the second ended.
    pub unix_ms: u64,
    /// Requests that arrived, per second.
    pub rps: f64,
    /// The 99th percentile latency of the responses that ended, in ms.
    pub p99_ms: Option<f64>,
    /// The share of responses that were 5xx (0 to 1).
    pub error_rate: f64,
    /// Requests in flight (in replicas and held) at its end.
    pub in_flight: u64,
    /// Ready replicas and the count asked for.
    pub ready: u32,
    pub desired: u32,
    /// The autoscaler was in panic mode.
    pub panic: bool,
}

/// What the history needs of a service's status besides its meters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    pub ready: u32,
    pub desired: u32,
    pub panic: bool,
}

/// Every service's recent points.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    series: HashMap<String, VecDeque<Point>>,
    /// Each service's snapshot at the last point, for the next one's
    /// differences.
    last: HashMap<String, ServiceSnapshot>,
}

impl History {
    /// Adds a point per service in `snapshot`, from its differences with
    /// the previous snapshot, at `unix_ms`; forgets services no longer in
    /// it.
    pub fn record(&self, snapshot: &[ServiceSnapshot], status: impl Fn(&str) -> Status, unix_ms: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.series.retain(|name, _| snapshot.iter().any(|s| s.name == *name));
        inner.last.retain(|name, _| snapshot.iter().any(|s| s.name == *name));
        for service in snapshot {
            let previous = inner.last.insert(service.name.clone(), service.clone());
            let Some(previous) = previous else { continue };
            let point = point(&previous, service, status(&service.name), unix_ms);
            let series = inner.series.entry(service.name.clone()).or_default();
            if series.len() == POINTS {
                series.pop_front();
            }
            series.push_back(point);
        }
    }

    /// The points of `service`, oldest first, after `since_ms` (Unix ms).
    pub fn series(&self, service: &str, since_ms: u64) -> Vec<Point> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner
            .series
            .get(service)
            .map_or_else(Vec::new, |s| s.iter().filter(|p| p.unix_ms > since_ms).copied().collect())
    }
}

/// The figures of the second between `before` and `now`.
fn point(before: &ServiceSnapshot, now: &ServiceSnapshot, status: Status, unix_ms: u64) -> Point {
    let seconds = now.meter.at.saturating_duration_since(before.meter.at).as_secs_f64();
    let arrivals = now.meter.arrivals.saturating_sub(before.meter.arrivals) as f64;
    let responses: Vec<u64> =
        now.meter.responses.iter().zip(&before.meter.responses).map(|(a, b)| a.saturating_sub(*b)).collect();
    let total: u64 = responses.iter().sum();
    // Every replica's latencies in one histogram: those present both times.
    let mut merged_now = ReplicaSnapshot::default();
    let mut merged_before = ReplicaSnapshot::default();
    for (name, stats) in &now.replicas {
        if let Some((_, earlier)) = before.replicas.iter().find(|(n, _)| n == name) {
            for (sum, count) in merged_now.buckets.iter_mut().zip(&stats.buckets) {
                *sum += count;
            }
            for (sum, count) in merged_before.buckets.iter_mut().zip(&earlier.buckets) {
                *sum += count;
            }
        }
    }
    Point {
        unix_ms,
        rps: if seconds > 0.0 { arrivals / seconds } else { 0.0 },
        p99_ms: merged_now.quantile_since(&merged_before, 0.99).map(|s| s * 1000.0),
        error_rate: if total == 0 { 0.0 } else { responses[4] as f64 / total as f64 },
        in_flight: now.meter.in_flight + now.meter.held,
        ready: status.ready,
        desired: status.desired,
        panic: status.panic,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use shoal_gateway::metrics::{LATENCY_BUCKETS, MeterReading};

    use super::*;

    /// A snapshot of service `name` at `at` after `arrivals` requests, of
    /// which `errors` answered 5xx and the rest 2xx, all in the bucket of
    /// `latency` seconds, on one replica.
    fn snapshot(name: &str, at: Instant, arrivals: u64, errors: u64, latency: f64) -> ServiceSnapshot {
        let mut responses = [0; 5];
        responses[1] = arrivals - errors;
        responses[4] = errors;
        let mut replica = ReplicaSnapshot::default();
        let bucket = LATENCY_BUCKETS.iter().position(|&b| latency <= b).unwrap();
        replica.buckets[bucket] = arrivals;
        ServiceSnapshot {
            name: name.to_owned(),
            meter: MeterReading { at, in_flight: 2, held: 1, area: 0.0, arrivals, responses },
            ready: 1,
            replicas: vec![("r1".to_owned(), replica)],
        }
    }

    #[test]
    fn a_point_is_the_difference_of_two_snapshots() {
        let history = History::default();
        let start = Instant::now();
        let status = |_: &str| Status { ready: 3, desired: 4, panic: true };
        history.record(&[snapshot("kubia", start, 0, 0, 0.004)], status, 1_000);
        assert!(history.series("kubia", 0).is_empty(), "the first snapshot only starts the differences");
        history.record(&[snapshot("kubia", start + Duration::from_secs(2), 200, 20, 0.004)], status, 3_000);
        let points = history.series("kubia", 0);
        assert_eq!(points.len(), 1);
        let point = points[0];
        assert_eq!((point.unix_ms, point.rps, point.error_rate, point.in_flight), (3_000, 100.0, 0.1, 3));
        assert_eq!((point.ready, point.desired, point.panic), (3, 4, true));
        let p99 = point.p99_ms.unwrap();
        assert!(p99 > 0.0 && p99 <= 5.0, "{p99}");
        assert!(history.series("kubia", 3_000).is_empty(), "since is exclusive");
    }

    #[test]
    fn the_history_is_bounded_and_forgets_removed_services() {
        let history = History::default();
        let start = Instant::now();
        for n in 0..POINTS as u64 + 10 {
            let at = start + Duration::from_secs(n);
            history.record(&[snapshot("a", at, n, 0, 0.01), snapshot("b", at, n, 0, 0.01)], |_| Status::default(), n);
        }
        let points = history.series("a", 0);
        assert_eq!(points.len(), POINTS);
        assert_eq!(points.last().unwrap().unix_ms, POINTS as u64 + 9);
        assert_eq!(points[0].rps, 1.0);
        history.record(&[snapshot("a", start + Duration::from_secs(5000), 0, 0, 0.01)], |_| Status::default(), 9);
        assert!(history.series("b", 0).is_empty());
        assert_eq!(history.series("a", 0).len(), POINTS, "a counter that went back adds a point of 0");
    }
}
