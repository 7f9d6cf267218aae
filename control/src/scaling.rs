//! The autoscaler at run time: every [`TICK`] it reads each autoscaled
//! service's meter in the gateway, pushes a sample into the service's
//! window and asks [`autoscaler::decide`] for a count; the reconciler runs
//! that many replicas. The gateway's activator calls [`Scaler::activate`]
//! when a request finds a service at zero, which asks for one replica at
//! once: however many requests wait, the count goes from 0 to 1 once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_api::objects::{ScaleStatus, ServiceRecord, now_unix};
use shoal_api::{Autoscale, ServiceSpec};
use shoal_gateway::Gateway;
use shoal_gateway::metrics::MeterReading;

use crate::autoscaler::{self, Observed, Sample, ScalerState, TICK, Window};
use crate::events::EventLog;
use crate::pods::Dirty;

/// The autoscaled services and their scalers.
pub struct Scaler {
    gateway: Arc<Gateway>,
    events: Arc<EventLog>,
    /// Wakes the reconciler for the services whose count changed.
    dirty: Arc<Dirty>,
    services: Mutex<HashMap<String, Scaled>>,
}

/// One autoscaled service.
#[derive(serde::Serialize, serde::Deserialize)]
struct Scaled {
    settings: Autoscale,
    /// `spec.replicas` as last seen: a change (apply, `shoal scale`) sets
    /// the count.
    replicas_field: u32,
    window: Window,
    state: ScalerState,
    desired: u32,
    status: ScaleStatus,
    /// The gateway's meter at the last tick (this process's gateway's).
    #[serde(skip)]
    last: Option<MeterReading>,
    /// Times it went from zero to one replica.
    from_zero: u64,
    /// When a request last woke it from zero, until its replica is asked
    /// for ([`Scaler::take_activation`]).
    #[serde(skip)]
    activated: Option<std::time::Instant>,
}

impl Scaler {
    pub fn new(gateway: Arc<Gateway>, events: Arc<EventLog>, dirty: Arc<Dirty>) -> Arc<Self> {
        Arc::new(Self { gateway, events, dirty, services: Mutex::default() })
    }

    /// Follows the stored services: starts scaling new autoscaled ones at
    /// `spec.replicas`, applies changed settings, forgets the rest.
    pub fn sync(&self, records: &[ServiceRecord]) {
        self.sync_from(records, &|_| None);
    }

    /// Like [`Scaler::sync`], starting new autoscaled services at
    /// `initial` where it gives a count (a new leader of a cluster goes on
    /// from the count the placement holds).
    pub fn sync_from(&self, records: &[ServiceRecord], initial: &dyn Fn(&str) -> Option<u32>) {
        let autoscaled: std::collections::HashSet<&str> =
            records.iter().filter(|r| r.service.spec.autoscale.is_some()).map(|r| r.service.name.as_str()).collect();
        let mut services = self.services.lock().expect("scaler lock");
        services.retain(|name, _| autoscaled.contains(name.as_str()));
        for record in records {
            let spec: &ServiceSpec = &record.service.spec;
            let Some(settings) = &spec.autoscale else { continue };
            let name = &record.service.name;
            match services.get_mut(name) {
                None => {
                    let desired = initial(name).unwrap_or(spec.replicas).clamp(settings.min, settings.max);
                    services.insert(name.clone(), Scaled::new(settings, spec.replicas, desired));
                }
                Some(scaled) => {
                    let by_hand = scaled.replicas_field != spec.replicas;
                    let desired = if by_hand { spec.replicas } else { scaled.desired };
                    if scaled.settings != *settings {
                        *scaled =
                            Scaled { from_zero: scaled.from_zero, ..Scaled::new(settings, spec.replicas, desired) };
                    }
                    scaled.replicas_field = spec.replicas;
                    let clamped = desired.clamp(settings.min, settings.max);
                    if by_hand {
                        scaled.state.hold(clamped, settings, TICK);
                    }
                    if clamped != scaled.desired {
                        let reason = if by_hand {
                            format!("spec.replicas set to {}", spec.replicas)
                        } else {
                            "spec.autoscale changed".to_owned()
                        };
                        self.change(name, scaled, clamped, reason);
                    }
                }
            }
        }
    }

    /// Everything the autoscaler remembers (each service's settings,
    /// window, count, state and reason), for a successor `shoal up`
    /// ([`Scaler::restore`]): a handover must not restart the windows,
    /// which would scale a busy service down or an idle one to zero late.
    pub fn export(&self) -> serde_json::Value {
        let services = self.services.lock().expect("scaler lock");
        serde_json::to_value(&*services).unwrap_or_default()
    }

    /// Takes on what a predecessor's [`Scaler::export`] gave, before the
    /// first pass: a service whose record still has the same settings
    /// goes on from it. Something unreadable (another version's format) is
    /// reported and ignored: the windows start empty.
    pub fn restore(&self, exported: serde_json::Value) {
        match serde_json::from_value::<HashMap<String, Scaled>>(exported) {
            Ok(restored) => {
                tracing::info!(services = restored.len(), "autoscaler state taken over");
                self.services.lock().expect("scaler lock").extend(restored);
            }
            Err(error) => tracing::warn!(%error, "cannot read the predecessor's autoscaler state; starting afresh"),
        }
    }

    /// The count the autoscaler wants for `service`, if it is autoscaled.
    pub fn desired(&self, service: &str) -> Option<u32> {
        self.services.lock().expect("scaler lock").get(service).map(|s| s.desired)
    }

    /// The last decision for `service`, if it is autoscaled.
    pub fn status(&self, service: &str) -> Option<ScaleStatus> {
        self.services.lock().expect("scaler lock").get(service).map(|s| s.status.clone())
    }

    /// How often each autoscaled service went from zero to one replica.
    pub fn from_zero_counts(&self) -> Vec<(String, u64)> {
        let services = self.services.lock().expect("scaler lock");
        let mut out: Vec<(String, u64)> = services.iter().map(|(n, s)| (n.clone(), s.from_zero)).collect();
        out.sort();
        out
    }

    /// A request waits for `service`, which has no ready replica: ask for
    /// one if the count is zero. Idempotent.
    pub fn activate(&self, service: &str) {
        let mut services = self.services.lock().expect("scaler lock");
        let Some(scaled) = services.get_mut(service) else { return };
        scaled.state.note_activity();
        if scaled.desired == 0 && scaled.settings.max > 0 {
            scaled.from_zero += 1;
            scaled.activated = Some(std::time::Instant::now());
            self.change(service, scaled, 1, "a request arrived".into());
        }
    }

    /// When a request woke `service` from zero, once: the reconciler puts
    /// the replica's start in line from then.
    pub fn take_activation(&self, service: &str) -> Option<std::time::Instant> {
        self.services.lock().expect("scaler lock").get_mut(service).and_then(|s| s.activated.take())
    }

    /// One tick: a sample and a decision for every autoscaled service.
    pub fn tick(&self) {
        let mut services = self.services.lock().expect("scaler lock");
        for (name, scaled) in services.iter_mut() {
            let Some(backend) = self.gateway.backend(name) else { continue };
            let reading = backend.meter.read();
            let Some(last) = scaled.last.replace(reading) else { continue };
            let elapsed = reading.at.saturating_duration_since(last.at).as_secs_f64();
            if elapsed <= 0.0 {
                continue;
            }
            // Arrivals per tick, whatever the loop's actual period was.
            let arrivals = reading.arrivals.saturating_sub(last.arrivals) as f64;
            let sample = Sample {
                concurrency: reading.concurrency_since(&last),
                requests: arrivals * TICK.as_secs_f64() / elapsed,
            };
            self.decide(name, scaled, sample, backend.replicas.len() as u32);
        }
    }

    /// One tick from samples taken elsewhere (a cluster's leader sums
    /// every gateway's): `samples` gives each service's sample and its
    /// ready replicas; a service without one gets an idle sample.
    pub fn tick_from(&self, samples: &HashMap<String, (Sample, u32)>) {
        let mut services = self.services.lock().expect("scaler lock");
        for (name, scaled) in services.iter_mut() {
            let (sample, ready) = samples.get(name).copied().unwrap_or((Sample { concurrency: 0.0, requests: 0.0 }, 0));
            self.decide(name, scaled, sample, ready);
        }
    }

    fn decide(&self, name: &str, scaled: &mut Scaled, sample: Sample, ready: u32) {
        scaled.window.push(sample);
        let observed = Observed { current: scaled.desired, ready };
        let decision = autoscaler::decide(&scaled.settings, &scaled.window, observed, &mut scaled.state);
        scaled.status.panic = decision.panic;
        scaled.status.reason = decision.reason.clone();
        if decision.desired != scaled.desired {
            self.change(name, scaled, decision.desired, decision.reason);
        }
    }

    /// Sets a new count, records it as an event and wakes the reconciler.
    fn change(&self, name: &str, scaled: &mut Scaled, desired: u32, reason: String) {
        let from = scaled.desired;
        let reason_word = match (from, desired) {
            (0, _) => "ScaledFromZero",
            (_, 0) => "ScaledToZero",
            _ => "Scaled",
        };
        self.events.normal(format!("service/{name}"), reason_word, format!("{from} → {desired} replicas: {reason}"));
        scaled.desired = desired;
        scaled.status = ScaleStatus { desired, panic: scaled.status.panic, reason, changed_unix: now_unix() };
        self.dirty.mark(name);
    }
}

impl Scaled {
    fn new(settings: &Autoscale, replicas_field: u32, desired: u32) -> Self {
        Self {
            settings: settings.clone(),
            replicas_field,
            window: Window::new(settings, TICK),
            state: ScalerState::default(),
            desired,
            status: ScaleStatus {
                desired,
                panic: false,
                reason: format!("initial count (spec.replicas {replicas_field})"),
                changed_unix: 0,
            },
            last: None,
            from_zero: 0,
            activated: None,
        }
    }
}
