//! `/metrics`: the gateway's request figures, the replicas' CPU and memory,
//! and the autoscaler's counts, in the Prometheus text format
//! (prometheus-client). The figures are read at scrape time from what the
//! gateway and the controller already keep; nothing on the request path
//! knows about Prometheus. The names are stable and listed in the README.

use std::collections::HashMap;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shoal_gateway::ServiceSnapshot;
use shoal_gateway::metrics::{CLASSES, CallSnapshot, LATENCY_BUCKETS, ReplicaSnapshot};
use shoal_node::Usage;

/// Per-service figures the controller adds to the gateway's.
#[derive(Debug, Clone, Default)]
pub struct ServiceFigures {
    pub desired: u32,
    pub ready: u32,
    pub panic: bool,
    pub from_zero: u64,
    /// `spec.autoscale.scaleToZeroGracePeriod`, for autoscaled services.
    pub scale_to_zero_grace: Option<std::time::Duration>,
}

/// Everything one scrape reports.
#[derive(Debug, Default)]
pub struct Scrape {
    pub services: Vec<ServiceSnapshot>,
    pub figures: HashMap<String, ServiceFigures>,
    pub usage: HashMap<String, Usage>,
    /// Calls from services, by caller and target.
    pub calls: Vec<CallSnapshot>,
    /// The node's standby pool and start gate.
    pub starts: shoal_node::StartStatus,
    /// TLS handshakes by (result, version), when the gateway has a TLS
    /// listener.
    pub handshakes: Option<[(&'static str, &'static str, u64); 4]>,
    /// The TLS listener's certificates: host (`None`: the default) and
    /// expiry (Unix seconds).
    pub certificates: Vec<(Option<String>, i64)>,
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let service_label = |s: &ServiceSnapshot| vec![("service", s.name.clone())];
        let replica_label = |s: &ServiceSnapshot, r: &str| vec![("service", s.name.clone()), ("replica", r.to_owned())];

        // Services.
        {
            let mut family = encoder.encode_descriptor(
                "shoal_service_requests",
                "Requests routed to the service, by status class (including the gateway's own 502/503/504)",
                None,
                MetricType::Counter,
            )?;
            for s in &self.services {
                for (class, count) in CLASSES.iter().zip(s.meter.responses) {
                    let mut labels = service_label(s);
                    labels.push(("code", (*class).to_owned()));
                    family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
        gauge(&mut encoder, "shoal_service_requests_in_flight", "Requests in progress, held ones included", || {
            self.services.iter().map(|s| (service_label(s), s.meter.in_flight as i64)).collect()
        })?;
        gauge(&mut encoder, "shoal_service_requests_held", "Requests waiting for a replica (activator)", || {
            self.services.iter().map(|s| (service_label(s), s.meter.held as i64)).collect()
        })?;
        gauge(&mut encoder, "shoal_service_ready_replicas", "Replicas in the gateway's rotation", || {
            self.services.iter().map(|s| (service_label(s), s.ready as i64)).collect()
        })?;
        let figure = |s: &ServiceSnapshot| self.figures.get(&s.name).cloned().unwrap_or_default();
        gauge(&mut encoder, "shoal_service_desired_replicas", "Replicas the control plane wants", || {
            self.services.iter().map(|s| (service_label(s), i64::from(figure(s).desired))).collect()
        })?;
        gauge(&mut encoder, "shoal_autoscaler_panic", "1 while the autoscaler is in panic mode", || {
            self.services.iter().map(|s| (service_label(s), i64::from(figure(s).panic))).collect()
        })?;
        {
            let mut family = encoder.encode_descriptor(
                "shoal_autoscaler_scale_from_zero",
                "Times the service went from zero replicas to one",
                None,
                MetricType::Counter,
            )?;
            for s in &self.services {
                let labels = service_label(s);
                family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&figure(s).from_zero, None)?;
            }
        }

        gauge(
            &mut encoder,
            "shoal_autoscaler_scale_to_zero_grace_seconds",
            "How long an autoscaled service stays idle before it scales to zero (when its min is 0)",
            || {
                let grace = |s: &ServiceSnapshot| figure(s).scale_to_zero_grace.map(|g| g.as_secs() as i64);
                self.services.iter().filter_map(|s| Some((service_label(s), grace(s)?))).collect()
            },
        )?;

        // The node's starts.
        let node = |value: usize| vec![(Vec::new(), value as i64)];
        let starts = &self.starts;
        gauge(&mut encoder, "shoal_standby_workers", "Standby workers waiting to become a replica", || {
            node(starts.standby)
        })?;
        gauge(
            &mut encoder,
            "shoal_standby_target",
            "The standby pool's size aimed at (from the last minute's starts)",
            || node(starts.standby_target),
        )?;
        gauge(&mut encoder, "shoal_standby_max", "The standby pool's largest size (--standby-max)", || {
            node(starts.standby_max)
        })?;
        gauge(
            &mut encoder,
            "shoal_start_concurrency",
            "Replica starts run at once at most (--start-concurrency)",
            || node(starts.gate.limit),
        )?;
        gauge(&mut encoder, "shoal_starts_in_progress", "Replica starts under way (admitted, not yet ready)", || {
            node(starts.gate.running)
        })?;
        gauge(&mut encoder, "shoal_starts_waiting", "Replica starts waiting for their turn", || {
            node(starts.gate.waiting)
        })?;
        for (name, help, value) in [
            ("shoal_replica_starts", "Replica starts so far", starts.starts),
            ("shoal_replica_starts_from_standby", "Replica starts that took a standby worker", starts.from_standby),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            family.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }

        // Replicas.
        {
            let mut family = encoder.encode_descriptor(
                "shoal_replica_requests",
                "Requests a replica finished, by status class",
                None,
                MetricType::Counter,
            )?;
            for s in &self.services {
                for (name, r) in &s.replicas {
                    for (class, count) in CLASSES.iter().zip(r.responses) {
                        let mut labels = replica_label(s, name);
                        labels.push(("code", (*class).to_owned()));
                        family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                    }
                }
            }
        }
        gauge(&mut encoder, "shoal_replica_requests_in_flight", "Requests sent to the replica, not finished", || {
            self.services
                .iter()
                .flat_map(|s| s.replicas.iter().map(move |(n, r)| (replica_label(s, n), r.in_flight as i64)))
                .collect()
        })?;
        {
            let mut family = encoder.encode_descriptor(
                "shoal_replica_request_duration_seconds",
                "Time from sending a request to the replica to the end of its response",
                None,
                MetricType::Histogram,
            )?;
            for s in &self.services {
                for (name, r) in &s.replicas {
                    histogram(&mut family, &replica_label(s, name), r)?;
                }
            }
        }
        let owner = |replica: &str| {
            self.services.iter().find(|s| s.replicas.iter().any(|(n, _)| n == replica)).map(|s| s.name.clone())
        };
        let mut usage: Vec<(&String, &Usage)> = self.usage.iter().collect();
        usage.sort_by(|a, b| a.0.cmp(b.0));
        {
            let mut family = encoder.encode_descriptor(
                "shoal_replica_cpu_seconds",
                "CPU time the replica's worker used (user and system)",
                None,
                MetricType::Counter,
            )?;
            for (name, u) in &usage {
                if let (Some(cpu), Some(service)) = (u.cpu, owner(name)) {
                    let labels = vec![("service", service), ("replica", (*name).clone())];
                    family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, f64>(&cpu.as_secs_f64(), None)?;
                }
            }
        }
        gauge(
            &mut encoder,
            "shoal_replica_memory_bytes",
            "Memory of the replica's cgroup (its resident set without one)",
            || {
                usage
                    .iter()
                    .filter_map(|(name, u)| {
                        Some((
                            vec![("service", owner(name)?), ("replica", (*name).clone())],
                            i64::try_from(u.memory?).ok()?,
                        ))
                    })
                    .collect()
            },
        )?;

        // Calls from services.
        {
            let mut family = encoder.encode_descriptor(
                "shoal_calls",
                "Calls from a service (caller) to a service or a host outside (target), by status class; \
                 failed: no response, denied: not allowed by spec.allowOutbound",
                None,
                MetricType::Counter,
            )?;
            for c in &self.calls {
                let counts = CLASSES.iter().copied().zip(c.responses.responses);
                for (code, count) in counts.chain([("failed", c.failed), ("denied", c.denied)]) {
                    let labels =
                        vec![("caller", c.caller.clone()), ("target", c.target.clone()), ("code", code.to_owned())];
                    family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "shoal_call_duration_seconds",
                "Time from a call's start to its response head",
                None,
                MetricType::Histogram,
            )?;
            for c in &self.calls {
                let labels = vec![("caller", c.caller.clone()), ("target", c.target.clone())];
                histogram(&mut family, &labels, &c.responses)?;
            }
        }

        // HTTPS.
        if let Some(handshakes) = &self.handshakes {
            let mut family = encoder.encode_descriptor(
                "shoal_tls_handshakes",
                "TLS handshakes on the gateway's TLS listener, by result (ok, failed, timeout) and version",
                None,
                MetricType::Counter,
            )?;
            for (result, version, count) in handshakes {
                let labels = vec![("result", (*result).to_owned()), ("version", (*version).to_owned())];
                family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        gauge(
            &mut encoder,
            "shoal_tls_certificate_expiry_timestamp_seconds",
            "When each certificate of the TLS listener expires (Unix time); host=\"(default)\" is the default one",
            || {
                self.certificates
                    .iter()
                    .map(|(host, expiry)| {
                        (vec![("host", host.clone().unwrap_or_else(|| "(default)".to_owned()))], *expiry)
                    })
                    .collect()
            },
        )?;
        Ok(())
    }
}

fn histogram(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &Labels,
    r: &ReplicaSnapshot,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> =
        LATENCY_BUCKETS.iter().copied().chain(std::iter::once(f64::MAX)).zip(r.buckets.iter().copied()).collect();
    family.encode_family(labels)?.encode_histogram::<NoLabelSet>(r.sum_seconds, r.buckets.iter().sum(), &buckets, None)
}

type Labels = Vec<(&'static str, String)>;

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl FnOnce() -> Vec<(Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values() {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// The scrape as Prometheus text.
pub fn encode(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}
