//! The validated Service model and the entry points that produce it:
//! [`parse_manifests`] (one text, any number of YAML documents) and
//! [`validate_set`] (checks across services).
//!
//! The types also implement serde so services can be stored or sent as JSON.
//! That form uses camelCase field names (`moduleField`, `cpuMillis`,
//! `instanceMemory`), byte counts as numbers and `timeout` as a humantime
//! string (`"30s"`, `"1s 500ms"`). Deserializing it does **not** re-validate.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::error::ManifestError;
pub use crate::quantity::{format_bytes, parse_cpu, parse_memory};
use crate::raw::RawService;
pub use crate::validate::{WORKER_RESERVE, warnings};

/// The only accepted `apiVersion`.
pub const API_VERSION: &str = "shoal.dev/v1";

/// The only accepted `kind`.
pub const KIND: &str = "Service";

/// A validated Service manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `metadata.name`: a DNS-1123 label of at most 40 characters.
    pub name: String,
    /// `metadata.labels` (Kubernetes label syntax), possibly empty.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `spec`.
    pub spec: ServiceSpec,
    /// `metadata.resourceVersion`, if written: apply only if the stored
    /// service is still at this version (409 Conflict if another write came
    /// in between). Never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}

/// A validated `spec`, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The Wasm component: `manifest_dir.join(module_field)`. Not
    /// canonicalized and not checked for existence (this crate does no IO).
    /// For a module named by its digest (`sha256:…`), the digest as written
    /// ([`ServiceSpec::module_digest`]).
    pub module: PathBuf,
    /// `spec.module` exactly as written, for messages.
    pub module_field: String,
    /// Desired replica count, 0..=1000 (default 1). With `autoscale`, the
    /// initial count: within `min..=max` (default `min`, but at least 1).
    pub replicas: u32,
    /// At least one route; default `[{ host: None, path: "/" }]`.
    pub routes: Vec<Route>,
    /// Extra environment variables (never contains `HOSTNAME`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Per-replica limits.
    pub resources: Resources,
    /// Request limits (absent in records stored before they existed: the
    /// defaults then).
    #[serde(default)]
    pub limits: Limits,
    /// How Wasm instances are used (absent in records stored before it
    /// existed: the defaults then).
    #[serde(default)]
    pub instances: Instances,
    /// Per-request deadline, 1ms..=1h (default 30s). Serialized as a
    /// humantime string.
    #[serde(with = "humantime_duration")]
    pub timeout: Duration,
    /// `spec.autoscale`: when present, the replica count follows the load
    /// between `min` and `max`, and `replicas` is only the initial count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// `spec.allowOutbound`: where its guests may send HTTP requests
    /// (entries checked by [`crate::AllowOutbound::parse`]); empty denies
    /// every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_outbound: Vec<String>,
    /// `spec.readiness`: a new replica takes requests only once this probe
    /// passes, and leaves the rotation while it fails. `None`: ready once
    /// started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// `spec.liveness`: a replica whose probe fails `failureThreshold`
    /// times in a row is restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
}

/// An HTTP probe (`spec.readiness`, `spec.liveness`), as Kubernetes'
/// `httpGet` probes: a `GET` of `path` sent straight to one replica; a
/// status from 200 to 399 within `timeoutSeconds` passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// Path and query, starting with `/`.
    pub path: String,
    /// Seconds from the replica's start to the first probe, 0..=3600
    /// (default 0).
    pub initial_delay_seconds: u32,
    /// Seconds between probes, 1..=3600 (default 10).
    pub period_seconds: u32,
    /// Seconds a probe may take, 1..=60 (default 1).
    pub timeout_seconds: u32,
    /// Failures in a row that count, 1..=100 (default 3).
    pub failure_threshold: u32,
}

impl Probe {
    pub fn initial_delay(&self) -> Duration {
        Duration::from_secs(self.initial_delay_seconds.into())
    }
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_seconds.into())
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.into())
    }
}

/// What the autoscaler measures per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScaleMetric {
    /// Requests in flight (including those waiting in the gateway), averaged
    /// over time.
    Concurrency,
    /// Requests per second.
    Rps,
}

impl fmt::Display for ScaleMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScaleMetric::Concurrency => "concurrency",
            ScaleMetric::Rps => "rps",
        })
    }
}

/// `spec.autoscale`, with every default filled in. Modelled on Knative's
/// KPA: a stable window for the steady state, a short panic window for
/// bursts, rate limits, and scale to zero after an idle grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscale {
    /// Fewest replicas, 0..=1000 (default 1); 0 allows scale to zero.
    pub min: u32,
    /// Most replicas, 1..=1000 and at least `min` (default 10).
    pub max: u32,
    /// `concurrency` (default) or `rps`.
    pub metric: ScaleMetric,
    /// Wanted value of the metric per replica, 1..=1000000 (default 10
    /// for concurrency, 100 for rps).
    pub target: u32,
    /// Percent of `target` to aim for, leaving headroom, 1..=100
    /// (default 70).
    pub target_utilization: u32,
    /// The window the steady-state decision averages over, 2s..=1h
    /// (default 60s); also how long panic mode lasts after the last burst.
    #[serde(with = "humantime_duration")]
    pub stable_window: Duration,
    /// The short window that detects bursts, 1s..=stableWindow (default 6s,
    /// or `stableWindow` if that is shorter).
    #[serde(with = "humantime_duration")]
    pub panic_window: Duration,
    /// Percent of the current capacity at which a burst starts panic mode,
    /// 110..=1000 (default 200).
    pub panic_threshold: u32,
    /// Percent difference from the current count within which no change is
    /// made, 0..=99 (100 would hold any count at zero load) (default 10).
    pub tolerance: u32,
    /// At most this many times the ready replicas per decision, 2..=1000
    /// (default 1000).
    pub max_scale_up_rate: u32,
    /// At least the ready replicas divided by this per decision, 2..=1000
    /// (default 2).
    pub max_scale_down_rate: u32,
    /// With `min: 0`: idle time (no request) before scaling to zero,
    /// 0s..=1h (default 30s).
    #[serde(with = "humantime_duration")]
    pub scale_to_zero_grace_period: Duration,
}

/// `spec.limits`: how much one replica takes on, and how big a request may
/// be. Each has a status when exceeded: `503` with `Retry-After` past the
/// queue, `413` past the body size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Requests one replica serves at once (its instances), 1..=10000
    /// (default: as many as its memory holds, at most 64). A replica never
    /// runs more than [`ServiceSpec::admitted_concurrency`].
    pub concurrency: u32,
    /// Requests that may wait for a free instance per replica, 0..=100000
    /// (default 256); past it, `503` with `Retry-After`.
    pub queue: u32,
    /// The largest request body in bytes, up to 1Gi (default 16Mi); past
    /// it, `413`.
    pub request_body: u64,
    /// The largest response body one of the service's calls may receive,
    /// up to 1Gi (default 64Mi; absent in records stored before it
    /// existed); past it, the call fails with `HTTP-response-body-size`.
    #[serde(default = "crate::validate::default_call_response_body")]
    pub call_response_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: crate::validate::DEFAULT_CONCURRENCY,
            queue: crate::validate::DEFAULT_QUEUE,
            request_body: crate::validate::DEFAULT_REQUEST_BODY,
            call_response_body: crate::validate::DEFAULT_CALL_RESPONSE_BODY,
        }
    }
}

/// `spec.instances`: whether a Wasm instance serves one request (strict
/// isolation: nothing a request leaves in guest memory is seen by the next)
/// or several (faster; the guest's globals persist between requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instances {
    /// Requests one instance serves before it is discarded, 1..=100000; 1
    /// is a fresh instance per request. `None` (not in the manifest): the
    /// module decides, see [`Instances::policy`]. An instance that trapped,
    /// ran out of memory, hit its deadline or returned without a response
    /// is never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// How long an idle instance is kept for reuse, 0s..=1h.
    #[serde(with = "humantime_duration")]
    pub max_idle: Duration,
}

impl Default for Instances {
    fn default() -> Self {
        Self { max_requests: None, max_idle: crate::validate::DEFAULT_INSTANCE_IDLE }
    }
}

impl Instances {
    /// The requests per instance a replica runs with, and why, given
    /// whether the module is marked as serving many requests per instance
    /// (the JS SDK marks the Node http servers it builds; see
    /// `shoal_runtime::marker`). The manifest's `maxRequests` wins; without
    /// it a marked module reuses its instances (as one Node process serves
    /// every request) and any other gets a fresh instance per request,
    /// since not every component can serve twice (a componentize-js
    /// fetch-event handler cannot).
    pub fn policy(&self, module_reuses: bool) -> InstancePolicy {
        let (max_requests, reason) = match self.max_requests {
            Some(n) => (n, PolicyReason::Manifest),
            None if module_reuses => (crate::validate::DEFAULT_REUSE_REQUESTS, PolicyReason::ModuleReuses),
            None => (crate::validate::DEFAULT_INSTANCE_REQUESTS, PolicyReason::Default),
        };
        InstancePolicy { max_requests, max_idle: self.max_idle, reason }
    }
}

/// The instance policy a service's replicas run ([`Instances::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePolicy {
    /// Requests per instance; 1 is a fresh instance per request.
    pub max_requests: u32,
    #[serde(with = "humantime_duration")]
    pub max_idle: Duration,
    pub reason: PolicyReason,
}

/// Where an [`InstancePolicy`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicyReason {
    /// `spec.instances.maxRequests`.
    Manifest,
    /// The module is marked as serving many requests per instance.
    ModuleReuses,
    /// Neither: a fresh instance per request.
    Default,
}

impl fmt::Display for InstancePolicy {
    /// `fresh per request (the default ...)` or `reused, up to N requests
    /// each, idle instances kept 10s (...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.max_requests <= 1 {
            f.write_str("a fresh instance per request")?;
        } else {
            write!(
                f,
                "reused, up to {} requests per instance, idle ones kept {}",
                self.max_requests,
                humantime::format_duration(self.max_idle)
            )?;
        }
        f.write_str(match self.reason {
            PolicyReason::Manifest => " (spec.instances)",
            PolicyReason::ModuleReuses => {
                " (default for this module: a Node http server built by shoal build; \
                 spec.instances.maxRequests: 1 for a fresh instance per request)"
            }
            PolicyReason::Default => " (default; spec.instances.maxRequests above 1 reuses instances)",
        })
    }
}

/// Where requests for a service come from: an optional host and a path
/// prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// Lowercased hostname without scheme or port, possibly a `*.` wildcard
    /// (`*.example.com`); `None` matches any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Starts with `/`, no `?` or `#` (default `/`).
    pub path: String,
    /// Whether plain HTTP may reach it (`tls: required` in a manifest:
    /// plain requests are redirected to HTTPS).
    #[serde(default, skip_serializing_if = "RouteTls::is_optional")]
    pub tls: RouteTls,
}

impl ServiceSpec {
    /// The digest (64 hex characters) when `spec.module` names a module
    /// already in the store by its digest (`sha256:…`) rather than a file.
    pub fn module_digest(&self) -> Option<&str> {
        self.module_field.strip_prefix("sha256:")
    }
}

impl Route {
    /// A route served over HTTP and HTTPS alike.
    pub fn new(host: Option<String>, path: impl Into<String>) -> Self {
        Route { host, path: path.into(), tls: RouteTls::Optional }
    }

    /// What two routes must not share: host and path (whatever their
    /// `tls`).
    pub fn key(&self) -> (Option<&str>, &str) {
        (self.host.as_deref(), &self.path)
    }
}

/// Whether a route answers plain HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteTls {
    /// HTTP and HTTPS both reach it (the default).
    #[default]
    Optional,
    /// Only HTTPS: a plain-HTTP request gets `308` to the same URL over
    /// HTTPS.
    Required,
}

impl RouteTls {
    pub fn is_optional(&self) -> bool {
        *self == RouteTls::Optional
    }
}

impl fmt::Display for Route {
    /// `kubia.example.com/api`, or just `/api` when any host matches.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.host {
            f.write_str(host)?;
        }
        f.write_str(&self.path)
    }
}

/// Per-replica resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Replica (cgroup) memory limit in bytes; at least 16Mi (default 128Mi).
    pub memory: u64,
    /// CPU limit in milli-cores, 1..=1_024_000; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Linear memory cap of one Wasm instance in bytes, 64Ki..=4Gi and at
    /// most `memory` (default 64Mi, or `memory` if that is smaller).
    pub instance_memory: u64,
}

impl Resources {
    /// Instances whose linear memory can all be in use at once within the
    /// replica's memory, less [`WORKER_RESERVE`] for the worker itself; at
    /// least 1 (a replica that cannot hold one still serves the requests
    /// that use less).
    pub fn instances_that_fit(&self) -> u32 {
        let room = self.memory.saturating_sub(WORKER_RESERVE);
        u32::try_from(room / self.instance_memory.max(1)).unwrap_or(u32::MAX).max(1)
    }
}

impl ServiceSpec {
    /// Requests a replica serves at once: `limits.concurrency`, but never
    /// more instances than its memory holds
    /// ([`Resources::instances_that_fit`]); the rest wait in its queue.
    pub fn admitted_concurrency(&self) -> u32 {
        self.limits.concurrency.min(self.resources.instances_that_fit())
    }
}

/// Parses and validates every Service document in `text`.
///
/// Documents are separated by `---`; empty documents are skipped, but a
/// text without any Service is an error (`no Service documents`). Relative
/// `spec.module` paths are resolved against `manifest_dir` (the directory of
/// the manifest file). Returns the first error found. Does not check
/// across services: call [`validate_set`] for that.
pub fn parse_manifests(text: &str, manifest_dir: &Path) -> Result<Vec<Service>, ManifestError> {
    // Pass 1: YAML syntax, and how many non-empty documents there are (error
    // messages only number documents when there are several).
    let mut non_empty = 0usize;
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // Stop at the first error: after one, the iterator never ends.
        match <Option<serde::de::IgnoredAny>>::deserialize(document) {
            Ok(Some(_)) => non_empty += 1,
            Ok(None) => {}
            Err(err) => {
                let number = (index > 0).then_some(index + 1);
                return Err(ManifestError::syntax(&err).in_document(number));
            }
        }
    }
    if non_empty == 0 {
        return Err(ManifestError::new("", "no Service documents"));
    }

    // Pass 2: read each document into the raw structs, then validate.
    let mut services = Vec::with_capacity(non_empty);
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = (non_empty > 1).then_some(index + 1);
        let raw: Option<RawService> = serde_path_to_error::deserialize(document)
            .map_err(|err| ManifestError::from_serde(&err).in_document(number))?;
        if let Some(raw) = raw {
            let service = crate::validate::service(raw, manifest_dir).map_err(|err| err.in_document(number))?;
            services.push(service);
        }
    }
    Ok(services)
}

/// Checks a set of services (e.g. all manifests being applied together):
/// names must be unique, and no two services may declare the identical route
/// (same host, same path).
pub fn validate_set(services: &[Service]) -> Result<(), ManifestError> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, service) in services.iter().enumerate() {
        if names.insert(&service.name, index).is_some() {
            return Err(ManifestError::new(
                "metadata.name",
                format!("duplicate service name {:?} (every service needs a unique name)", service.name),
            ));
        }
    }
    let mut owners: HashMap<(Option<&str>, &str), &str> = HashMap::new();
    for service in services {
        for (index, route) in service.spec.routes.iter().enumerate() {
            if let Some(owner) = owners.insert(route.key(), &service.name) {
                return Err(ManifestError::new(
                    format!("spec.routes[{index}]"),
                    format!("route {route} of service {:?} is identical to a route of service {owner:?}", service.name),
                ));
            }
        }
    }
    Ok(())
}

/// `Duration` as a humantime string (`"30s"`, `"1s 500ms"`).
mod humantime_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(de::Error::custom)
    }
}
