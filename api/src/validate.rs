//! Phase two: turn a [`RawService`] into a [`Service`], checking every value
//! and filling defaults. Each error names the field path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{ManifestError, join, key_path};
use crate::manifest::{
    API_VERSION, Autoscale, Instances, KIND, Limits, Probe, Resources, Route, RouteTls, ScaleMetric, Service,
    ServiceSpec,
};
use crate::quantity::{format_bytes, parse_cpu, parse_memory};
use crate::raw::{
    RawAutoscale, RawInstances, RawLimits, RawProbe, RawResources, RawRoute, RawService, RawSpec, StringMap,
    WholeNumber,
};

const KI: u64 = 1024;
const MI: u64 = 1024 * KI;
const GI: u64 = 1024 * MI;

/// Longest service name: replica names append `-<6 hex>-<5 chars>` and must
/// stay a valid 63-character DNS label.
const MAX_NAME_LEN: usize = 40;
/// The most replicas a service may ask for.
pub const MAX_REPLICAS: u32 = 1000;
const DEFAULT_MEMORY: u64 = 128 * MI;
const MIN_MEMORY: u64 = 16 * MI;
const DEFAULT_INSTANCE_MEMORY: u64 = 64 * MI;
const MIN_INSTANCE_MEMORY: u64 = 64 * KI;
const MAX_INSTANCE_MEMORY: u64 = 4 * GI;
const MAX_CPU_MILLIS: u32 = 1024 * 1000;
/// Requests one replica serves at once (instances), by default and at most:
/// the default is as many as fit in the replica's memory, at most this.
pub const DEFAULT_CONCURRENCY: u32 = 64;
/// Memory a worker needs besides its instances: its runtime, the loaded
/// component, connection buffers. Measured: about 2 MiB charged to an idle
/// worker's cgroup and 14 MiB resident (shared pages of the binary
/// included).
pub const WORKER_RESERVE: u64 = 16 * MI;
const MAX_CONCURRENCY: u32 = 10_000;
/// Requests that may wait for an instance per replica, by default and at most.
pub const DEFAULT_QUEUE: u32 = 256;
/// Requests per instance without `spec.instances.maxRequests`: a fresh
/// instance per request.
pub const DEFAULT_INSTANCE_REQUESTS: u32 = 1;
/// Requests per instance without `spec.instances.maxRequests` for a module
/// marked as serving many requests per instance: the most a manifest may
/// ask for.
pub const DEFAULT_REUSE_REQUESTS: u32 = MAX_INSTANCE_REQUESTS;
/// Default `spec.instances.maxIdle`.
pub const DEFAULT_INSTANCE_IDLE: Duration = Duration::from_secs(10);
/// Largest `spec.instances.maxRequests`.
pub const MAX_INSTANCE_REQUESTS: u32 = 100_000;
const MAX_QUEUE: u32 = 100_000;
/// The largest request body, by default and at most.
pub const DEFAULT_REQUEST_BODY: u64 = 16 * MI;
const MAX_REQUEST_BODY: u64 = GI;
/// Default `spec.limits.callResponseBody`.
pub const DEFAULT_CALL_RESPONSE_BODY: u64 = 64 * MI;

pub(crate) fn default_call_response_body() -> u64 {
    DEFAULT_CALL_RESPONSE_BODY
}
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
// spec.autoscale: see `Autoscale` for what each one means.
const DEFAULT_MIN_SCALE: u32 = 1;
const DEFAULT_MAX_SCALE: u32 = 10;
const DEFAULT_CONCURRENCY_TARGET: u32 = 10;
const DEFAULT_RPS_TARGET: u32 = 100;
const MAX_TARGET: u32 = 1_000_000;
const DEFAULT_TARGET_UTILIZATION: u32 = 70;
const DEFAULT_STABLE_WINDOW: Duration = Duration::from_secs(60);
const MIN_STABLE_WINDOW: Duration = Duration::from_secs(2);
const MAX_STABLE_WINDOW: Duration = Duration::from_secs(3600);
const DEFAULT_PANIC_WINDOW: Duration = Duration::from_secs(6);
const MIN_PANIC_WINDOW: Duration = Duration::from_secs(1);
const DEFAULT_PANIC_THRESHOLD: u32 = 200;
const MIN_PANIC_THRESHOLD: u32 = 110;
const MAX_PANIC_THRESHOLD: u32 = 1000;
const DEFAULT_TOLERANCE: u32 = 10;
const DEFAULT_MAX_SCALE_UP_RATE: u32 = 1000;
const DEFAULT_MAX_SCALE_DOWN_RATE: u32 = 2;
const MIN_SCALE_RATE: u32 = 2;
const MAX_SCALE_RATE: u32 = 1000;
const DEFAULT_SCALE_TO_ZERO_GRACE_PERIOD: Duration = Duration::from_secs(30);
const MAX_SCALE_TO_ZERO_GRACE_PERIOD: Duration = Duration::from_secs(3600);

type Result<T> = std::result::Result<T, ManifestError>;

/// The settings `spec.autoscale: {}` stands for.
impl Default for Autoscale {
    fn default() -> Self {
        Autoscale {
            min: DEFAULT_MIN_SCALE,
            max: DEFAULT_MAX_SCALE,
            metric: ScaleMetric::Concurrency,
            target: DEFAULT_CONCURRENCY_TARGET,
            target_utilization: DEFAULT_TARGET_UTILIZATION,
            stable_window: DEFAULT_STABLE_WINDOW,
            panic_window: DEFAULT_PANIC_WINDOW,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            tolerance: DEFAULT_TOLERANCE,
            max_scale_up_rate: DEFAULT_MAX_SCALE_UP_RATE,
            max_scale_down_rate: DEFAULT_MAX_SCALE_DOWN_RATE,
            scale_to_zero_grace_period: DEFAULT_SCALE_TO_ZERO_GRACE_PERIOD,
        }
    }
}

fn required(field: &str) -> ManifestError {
    ManifestError::new(field, "required field missing")
}

pub(crate) fn service(raw: RawService, manifest_dir: &Path) -> Result<Service> {
    check_exact("apiVersion", raw.api_version.as_deref(), API_VERSION)?;
    check_exact("kind", raw.kind.as_deref(), KIND)?;
    let metadata = raw.metadata.ok_or_else(|| required("metadata"))?;
    let name = metadata.name.ok_or_else(|| required("metadata.name"))?;
    if !is_dns_label(&name, MAX_NAME_LEN) {
        return Err(ManifestError::new(
            "metadata.name",
            format!(
                "{name:?} is not a valid name (lowercase letters, digits and \"-\", \
                 at most {MAX_NAME_LEN} characters)"
            ),
        ));
    }
    let labels = labels(metadata.labels.unwrap_or_default())?;
    let resource_version = metadata.resource_version.map(resource_version).transpose()?;
    let spec = spec(raw.spec.ok_or_else(|| required("spec"))?, manifest_dir)?;
    Ok(Service { name, labels, spec, resource_version })
}

fn check_exact(field: &str, found: Option<&str>, expected: &str) -> Result<()> {
    match found {
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(ManifestError::new(field, format!("expected {expected:?}, found {found:?}"))),
        None => Err(ManifestError::new(field, format!("required field missing (expected {expected:?})"))),
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, 1..=max characters.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Kubernetes label name / value: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63.
fn is_label_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `metadata.resourceVersion`: a positive whole number, or a string of
/// digits (as Kubernetes writes it).
fn resource_version(raw: serde_yaml_ng::Value) -> Result<u64> {
    let parsed = match &raw {
        serde_yaml_ng::Value::Number(number) => number.as_u64(),
        serde_yaml_ng::Value::String(text) => text.parse::<u64>().ok(),
        _ => None,
    };
    parsed.filter(|version| *version > 0).ok_or_else(|| {
        let shown = serde_yaml_ng::to_string(&raw).unwrap_or_default();
        ManifestError::new(
            "metadata.resourceVersion",
            format!("{:?} is not a resource version (a positive whole number, as `shoal get` shows it)", shown.trim()),
        )
    })
}

fn labels(raw: StringMap) -> Result<BTreeMap<String, String>> {
    for (key, value) in &raw.0 {
        let field = key_path("metadata.labels", key);
        let (prefix, name) = match key.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(|label| is_dns_label(label, 63)));
        if !prefix_ok || !is_label_name(name) {
            return Err(ManifestError::new(
                field,
                format!(
                    "{key:?} is not a valid label key (an optional DNS prefix and \"/\", then up \
                     to 63 letters, digits, \"-\", \"_\" or \".\", starting and ending with a \
                     letter or digit)"
                ),
            ));
        }
        if !value.is_empty() && !is_label_name(value) {
            return Err(ManifestError::new(
                field,
                format!(
                    "{value:?} is not a valid label value (up to 63 letters, digits, \"-\", \"_\" \
                     or \".\", starting and ending with a letter or digit)"
                ),
            ));
        }
    }
    Ok(raw.0)
}

fn spec(raw: RawSpec, manifest_dir: &Path) -> Result<ServiceSpec> {
    let module_field = raw.module.ok_or_else(|| required("spec.module"))?;
    if module_field.trim().is_empty() {
        return Err(ManifestError::new("spec.module", "must not be empty"));
    }
    if module_field.contains('\0') {
        return Err(ManifestError::new("spec.module", "must not contain NUL"));
    }
    if let Some(digest) = module_field.strip_prefix("sha256:") {
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if digest.len() != 64 || !digest.bytes().all(hex) {
            return Err(ManifestError::new(
                "spec.module",
                format!(
                    "{module_field:?} is not a module digest (\"sha256:\" and 64 lowercase hex characters, as \
                     shoal push prints and shoal get modules -o wide lists)"
                ),
            ));
        }
    }
    let replicas = match raw.replicas {
        None => None,
        Some(n) => Some(u32::try_from(n.0).ok().filter(|n| *n <= MAX_REPLICAS).ok_or_else(|| {
            ManifestError::new("spec.replicas", format!("must be between 0 and {MAX_REPLICAS}, found {}", n.0))
        })?),
    };
    let routes = match raw.routes {
        None => vec![Route::new(None, "/")],
        Some(routes) => self::routes(routes)?,
    };
    let env = env(raw.env.unwrap_or_default())?;
    let resources = resources(raw.resources)?;
    let limits = limits(raw.limits.unwrap_or_default(), &resources)?;
    let instances = instances(raw.instances.unwrap_or_default())?;
    let timeout = match raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(text) => duration(&text, MIN_TIMEOUT, MAX_TIMEOUT).map_err(|m| ManifestError::new("spec.timeout", m))?,
    };
    let autoscale = raw.autoscale.map(autoscale).transpose()?;
    let allow_outbound = raw.allow_outbound.unwrap_or_default();
    if allow_outbound.len() > MAX_OUTBOUND_RULES {
        return Err(ManifestError::new(
            "spec.allowOutbound",
            format!("{} entries; at most {MAX_OUTBOUND_RULES}", allow_outbound.len()),
        ));
    }
    crate::AllowOutbound::parse(&allow_outbound)
        .map_err(|(i, why)| ManifestError::new(format!("spec.allowOutbound[{i}]"), why))?;
    let readiness = raw.readiness.map(|p| probe(p, "spec.readiness")).transpose()?;
    let liveness = raw.liveness.map(|p| probe(p, "spec.liveness")).transpose()?;
    let replicas = match (replicas, &autoscale) {
        (None, None) => 1,
        (Some(n), None) => n,
        // Like Knative's initial scale of 1: start at one replica even when
        // min allows zero, so the first request does not wait for a cold start.
        (None, Some(a)) => a.min.max(1).min(a.max),
        (Some(n), Some(a)) if (a.min..=a.max).contains(&n) => n,
        (Some(n), Some(a)) => {
            return Err(ManifestError::new(
                "spec.replicas",
                format!("{n} is outside spec.autoscale's range {}..={}", a.min, a.max),
            ));
        }
    };
    Ok(ServiceSpec {
        module: if module_field.starts_with("sha256:") {
            PathBuf::from(&module_field)
        } else {
            manifest_dir.join(&module_field)
        },
        module_field,
        replicas,
        routes,
        env,
        resources,
        limits,
        instances,
        timeout,
        autoscale,
        allow_outbound,
        readiness,
        liveness,
    })
}

/// The longest probe path.
const MAX_PROBE_PATH: usize = 1024;

fn probe(raw: RawProbe, field: &str) -> Result<Probe> {
    let path = raw.path.ok_or_else(|| required(&format!("{field}.path")))?;
    if !path.starts_with('/') {
        return Err(ManifestError::new(format!("{field}.path"), format!("{path:?} must start with \"/\"")));
    }
    if path.len() > MAX_PROBE_PATH {
        return Err(ManifestError::new(format!("{field}.path"), format!("longer than {MAX_PROBE_PATH} bytes")));
    }
    // What a request line carries: visible ASCII (anything else
    // percent-encoded), and no fragment.
    if let Some(bad) = path.chars().find(|c| !c.is_ascii_graphic() || *c == '#') {
        return Err(ManifestError::new(
            format!("{field}.path"),
            format!("{path:?} contains {bad:?} (percent-encode it; no spaces or \"#\")"),
        ));
    }
    Ok(Probe {
        path,
        initial_delay_seconds: count(raw.initial_delay_seconds, 0, 0, 3600, &format!("{field}.initialDelaySeconds"))?,
        period_seconds: count(raw.period_seconds, 10, 1, 3600, &format!("{field}.periodSeconds"))?,
        timeout_seconds: count(raw.timeout_seconds, 1, 1, 60, &format!("{field}.timeoutSeconds"))?,
        failure_threshold: count(raw.failure_threshold, 3, 1, 100, &format!("{field}.failureThreshold"))?,
    })
}

/// Checks a service name as `metadata.name` is checked; the reason it is
/// refused.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if is_dns_label(name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (lowercase letters, digits and \"-\", not at either end, at most \
             {MAX_NAME_LEN} characters)"
        ))
    }
}

/// The most `spec.allowOutbound` entries.
const MAX_OUTBOUND_RULES: usize = 256;

fn instances(raw: RawInstances) -> Result<Instances> {
    let max_requests = match raw.max_requests {
        None => None,
        some => Some(count(some, DEFAULT_INSTANCE_REQUESTS, 1, MAX_INSTANCE_REQUESTS, "spec.instances.maxRequests")?),
    };
    let max_idle = match raw.max_idle {
        None => DEFAULT_INSTANCE_IDLE,
        Some(text) => duration(&text, Duration::ZERO, Duration::from_secs(3600))
            .map_err(|m| ManifestError::new("spec.instances.maxIdle", m))?,
    };
    Ok(Instances { max_requests, max_idle })
}

/// A whole number in `min..=max`, or `default` when absent.
fn count(value: Option<WholeNumber>, default: u32, min: u32, max: u32, field: &str) -> Result<u32> {
    match value {
        None => Ok(default),
        Some(n) => u32::try_from(n.0)
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| ManifestError::new(field, format!("must be between {min} and {max}, found {}", n.0))),
    }
}

/// A whole percentage in `min..=max`, written `70` or `"70%"`, or `default`
/// when absent.
fn percent(text: Option<&str>, default: u32, min: u32, max: u32, field: &str) -> Result<u32> {
    let Some(text) = text else { return Ok(default) };
    let number = text.strip_suffix('%').unwrap_or(text);
    let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        // A fraction (or an exponent) gets its own hint.
        let problem = if number.parse::<f64>().is_ok_and(f64::is_finite) {
            "must be a whole number of percent"
        } else {
            "is not a percentage"
        };
        return Err(ManifestError::new(field, format!("{text:?} {problem} (expected e.g. 70 or \"70%\")")));
    }
    // All digits: too many of them is out of range like any other value.
    number
        .parse::<i128>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ManifestError::new(field, format!("must be between {min}% and {max}%, found {number}%")))
}

fn autoscale(raw: RawAutoscale) -> Result<Autoscale> {
    const MIN: &str = "spec.autoscale.min";
    const MAX: &str = "spec.autoscale.max";
    const METRIC: &str = "spec.autoscale.metric";
    const STABLE: &str = "spec.autoscale.stableWindow";
    const PANIC: &str = "spec.autoscale.panicWindow";
    const GRACE: &str = "spec.autoscale.scaleToZeroGracePeriod";

    let min = count(raw.min, DEFAULT_MIN_SCALE, 0, MAX_REPLICAS, MIN)?;
    let max = count(raw.max, DEFAULT_MAX_SCALE, 1, MAX_REPLICAS, MAX)?;
    if max < min {
        let found = if raw.max.is_some() { max.to_string() } else { format!("the default {max}") };
        return Err(ManifestError::new(MAX, format!("must be at least {MIN} ({min}), found {found}")));
    }
    let metric = match raw.metric.as_deref() {
        None | Some("concurrency") => ScaleMetric::Concurrency,
        Some("rps") => ScaleMetric::Rps,
        Some(other) => {
            return Err(ManifestError::new(METRIC, format!("{other:?} is not a metric (expected concurrency or rps)")));
        }
    };
    let default_target = match metric {
        ScaleMetric::Concurrency => DEFAULT_CONCURRENCY_TARGET,
        ScaleMetric::Rps => DEFAULT_RPS_TARGET,
    };
    let target = count(raw.target, default_target, 1, MAX_TARGET, "spec.autoscale.target")?;
    let target_utilization = percent(
        raw.target_utilization.as_deref(),
        DEFAULT_TARGET_UTILIZATION,
        1,
        100,
        "spec.autoscale.targetUtilization",
    )?;
    let stable_window = match &raw.stable_window {
        None => DEFAULT_STABLE_WINDOW,
        Some(text) => {
            duration(text, MIN_STABLE_WINDOW, MAX_STABLE_WINDOW).map_err(|m| ManifestError::new(STABLE, m))?
        }
    };
    let panic_window = match &raw.panic_window {
        // Never longer than a short stable window.
        None => DEFAULT_PANIC_WINDOW.min(stable_window),
        Some(text) => {
            let panic_window = parse_duration(text).map_err(|m| ManifestError::new(PANIC, m))?;
            let stable = match &raw.stable_window {
                Some(text) => text.clone(),
                None => humantime::format_duration(stable_window).to_string(),
            };
            if panic_window < MIN_PANIC_WINDOW {
                return Err(ManifestError::new(PANIC, format!("{text:?} must be between 1s and {STABLE} ({stable})")));
            }
            if panic_window > stable_window {
                return Err(ManifestError::new(
                    PANIC,
                    format!("{text} exceeds {STABLE} ({stable}): the panic window must fit in the stable window"),
                ));
            }
            panic_window
        }
    };
    let panic_threshold = percent(
        raw.panic_threshold.as_deref(),
        DEFAULT_PANIC_THRESHOLD,
        MIN_PANIC_THRESHOLD,
        MAX_PANIC_THRESHOLD,
        "spec.autoscale.panicThreshold",
    )?;
    let tolerance = percent(raw.tolerance.as_deref(), DEFAULT_TOLERANCE, 0, 99, "spec.autoscale.tolerance")?;
    let max_scale_up_rate = count(
        raw.max_scale_up_rate,
        DEFAULT_MAX_SCALE_UP_RATE,
        MIN_SCALE_RATE,
        MAX_SCALE_RATE,
        "spec.autoscale.maxScaleUpRate",
    )?;
    let max_scale_down_rate = count(
        raw.max_scale_down_rate,
        DEFAULT_MAX_SCALE_DOWN_RATE,
        MIN_SCALE_RATE,
        MAX_SCALE_RATE,
        "spec.autoscale.maxScaleDownRate",
    )?;
    let scale_to_zero_grace_period = match &raw.scale_to_zero_grace_period {
        None => DEFAULT_SCALE_TO_ZERO_GRACE_PERIOD,
        Some(text) => {
            duration(text, Duration::ZERO, MAX_SCALE_TO_ZERO_GRACE_PERIOD).map_err(|m| ManifestError::new(GRACE, m))?
        }
    };
    Ok(Autoscale {
        min,
        max,
        metric,
        target,
        target_utilization,
        stable_window,
        panic_window,
        panic_threshold,
        tolerance,
        max_scale_up_rate,
        max_scale_down_rate,
        scale_to_zero_grace_period,
    })
}

fn limits(raw: RawLimits, resources: &Resources) -> Result<Limits> {
    // By default, as many instances as the replica's memory holds.
    let fit = resources.instances_that_fit().min(DEFAULT_CONCURRENCY);
    let concurrency = count(raw.concurrency, fit, 1, MAX_CONCURRENCY, "spec.limits.concurrency")?;
    let queue = count(raw.queue, DEFAULT_QUEUE, 0, MAX_QUEUE, "spec.limits.queue")?;
    let request_body = body_limit(raw.request_body.as_deref(), DEFAULT_REQUEST_BODY, "spec.limits.requestBody")?;
    let call_response_body =
        body_limit(raw.call_response_body.as_deref(), DEFAULT_CALL_RESPONSE_BODY, "spec.limits.callResponseBody")?;
    Ok(Limits { concurrency, queue, request_body, call_response_body })
}

/// A body size limit, at most 1Gi.
fn body_limit(text: Option<&str>, default: u64, field: &str) -> Result<u64> {
    let Some(text) = text else { return Ok(default) };
    let bytes = parse_memory(text).map_err(|m| ManifestError::new(field, m))?;
    if bytes > MAX_REQUEST_BODY {
        return Err(ManifestError::new(
            field,
            format!("{text:?} exceeds the maximum of {}", format_bytes(MAX_REQUEST_BODY)),
        ));
    }
    Ok(bytes)
}

fn routes(raw: Vec<RawRoute>) -> Result<Vec<Route>> {
    if raw.is_empty() {
        return Err(ManifestError::new(
            "spec.routes",
            "must list at least one route (omit routes to serve every path under \"/\")",
        ));
    }
    let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (index, raw) in raw.into_iter().enumerate() {
        let field = format!("spec.routes[{index}]");
        if raw.host.is_none() && raw.path.is_none() {
            return Err(ManifestError::new(field, "a route needs a host and/or a path"));
        }
        let host = match raw.host {
            None => None,
            Some(host) => Some(self::host(&host).map_err(|m| ManifestError::new(join(&field, "host"), m))?),
        };
        let path = raw.path.unwrap_or_else(|| "/".to_owned());
        check_path(&path).map_err(|m| ManifestError::new(join(&field, "path"), m))?;
        let tls = match raw.tls.as_deref() {
            None | Some("optional") => RouteTls::Optional,
            Some("required") => RouteTls::Required,
            Some(other) => {
                return Err(ManifestError::new(
                    join(&field, "tls"),
                    format!(
                        "{other:?} is not a TLS policy (expected \"required\": HTTPS only, or \"optional\": the default)"
                    ),
                ));
            }
        };
        let route = Route { host, path, tls };
        if let Some(first) = seen.insert((route.host.clone(), route.path.clone()), index) {
            return Err(ManifestError::new(
                field,
                format!("route {route} is listed twice (same as spec.routes[{first}])"),
            ));
        }
        routes.push(route);
    }
    Ok(routes)
}

/// Validates and lowercases a host name (a route's, or a certificate's):
/// letters, digits and `-` in dot-separated labels, or a leading `*.`
/// wildcard.
pub fn check_host(raw: &str) -> std::result::Result<String, String> {
    host(raw)
}

/// Validates and lowercases a route host.
fn host(raw: &str) -> std::result::Result<String, String> {
    if raw.is_empty() {
        return Err("must not be empty (omit host to match any host)".to_owned());
    }
    if let Some((scheme, _)) = raw.split_once("://") {
        return Err(format!("{raw:?} must not include a scheme (\"{scheme}://\"); write just the hostname"));
    }
    if raw.contains('/') {
        return Err(format!("{raw:?} must not include a path; use the route's path field"));
    }
    if raw.contains(':') {
        return Err(format!("{raw:?} must not include a port"));
    }
    let host = raw.to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    if name.contains('*') {
        return Err(format!("{raw:?}: a wildcard is only allowed as a leading \"*.\" (e.g. *.example.com)"));
    }
    if name.len() > 253 || !name.split('.').all(|label| is_dns_label(label, 63)) {
        return Err(format!("{raw:?} is not a valid hostname (dot-separated labels of letters, digits and \"-\")"));
    }
    Ok(host)
}

fn check_path(path: &str) -> std::result::Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("must start with \"/\", found {path:?}"));
    }
    if path.contains(['?', '#']) {
        return Err(format!("{path:?} must not contain \"?\" or \"#\" (routes match paths only)"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{path:?} must not contain spaces or control characters"));
    }
    Ok(())
}

fn env(raw: StringMap) -> Result<BTreeMap<String, String>> {
    for (name, value) in &raw.0 {
        let field = key_path("spec.env", name);
        let problem = if name.is_empty() {
            Some("name must not be empty".to_owned())
        } else if name.contains('=') {
            Some(format!("name {name:?} must not contain \"=\""))
        } else if name.contains('\0') {
            Some("name must not contain NUL".to_owned())
        } else if name == "HOSTNAME" {
            Some("HOSTNAME is reserved: Shoal sets it to the replica name".to_owned())
        } else if value.contains('\0') {
            Some("value must not contain NUL".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ManifestError::new(field, problem));
        }
    }
    Ok(raw.0)
}

fn resources(raw: Option<RawResources>) -> Result<Resources> {
    let raw = raw.unwrap_or(RawResources { memory: None, cpu: None, instance_memory: None });
    const MEMORY: &str = "spec.resources.memory";
    const CPU: &str = "spec.resources.cpu";
    const INSTANCE: &str = "spec.resources.instanceMemory";

    let memory = match &raw.memory {
        None => DEFAULT_MEMORY,
        Some(text) => {
            let bytes = parse_memory(text).map_err(|m| ManifestError::new(MEMORY, m))?;
            if bytes < MIN_MEMORY {
                return Err(ManifestError::new(
                    MEMORY,
                    format!("{text:?} is below the minimum of {}", format_bytes(MIN_MEMORY)),
                ));
            }
            bytes
        }
    };
    let cpu_millis = match &raw.cpu {
        None => None,
        Some(text) => {
            let millis = parse_cpu(text).map_err(|m| ManifestError::new(CPU, m))?;
            if millis == 0 {
                return Err(ManifestError::new(
                    CPU,
                    format!("{text:?} must be greater than 0 (omit cpu for no limit)"),
                ));
            }
            if millis > MAX_CPU_MILLIS {
                return Err(ManifestError::new(
                    CPU,
                    format!("{text:?} exceeds the maximum of {} cores", MAX_CPU_MILLIS / 1000),
                ));
            }
            Some(millis)
        }
    };
    let instance_memory = match &raw.instance_memory {
        None => DEFAULT_INSTANCE_MEMORY.min(memory),
        Some(text) => {
            let bytes = parse_memory(text).map_err(|m| ManifestError::new(INSTANCE, m))?;
            if !(MIN_INSTANCE_MEMORY..=MAX_INSTANCE_MEMORY).contains(&bytes) {
                return Err(ManifestError::new(
                    INSTANCE,
                    format!(
                        "{text:?} must be between {} and {}",
                        format_bytes(MIN_INSTANCE_MEMORY),
                        format_bytes(MAX_INSTANCE_MEMORY)
                    ),
                ));
            }
            if bytes > memory {
                return Err(ManifestError::new(
                    INSTANCE,
                    format!(
                        "{} exceeds {MEMORY} ({}): an instance cannot be larger than its replica",
                        format_bytes(bytes),
                        format_bytes(memory)
                    ),
                ));
            }
            bytes
        }
    };
    Ok(Resources { memory, cpu_millis, instance_memory })
}

fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text).map_err(|_| format!("{text:?} is not a duration (expected e.g. 10s, 500ms, 1m)"))
}

/// A humantime duration in `min..=max`.
fn duration(text: &str, min: Duration, max: Duration) -> std::result::Result<Duration, String> {
    let duration = parse_duration(text)?;
    if !(min..=max).contains(&duration) {
        return Err(format!(
            "{text:?} must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

/// What a service asks for that works, but not as it may expect: each a
/// sentence naming the fields, for `apply` and `shoal up -f` to print.
pub fn warnings(service: &Service) -> Vec<String> {
    let spec = &service.spec;
    let resources = &spec.resources;
    let mut warnings = Vec::new();
    let (memory, instance) = (format_bytes(resources.memory), format_bytes(resources.instance_memory));
    let reserve = format_bytes(WORKER_RESERVE);
    if resources.instance_memory.saturating_add(WORKER_RESERVE) > resources.memory {
        warnings.push(format!(
            "spec.resources.instanceMemory: one instance of up to {instance} and the worker's own {reserve} do not \
             fit in {memory} (spec.resources.memory): an instance that uses all of its memory gets the replica \
             OOM-killed"
        ));
    } else if spec.limits.concurrency > spec.admitted_concurrency() {
        warnings.push(format!(
            "spec.limits.concurrency: {} instances of up to {instance} (spec.resources.instanceMemory) cannot fit \
             in {memory} (spec.resources.memory) with the worker's own {reserve}; a replica runs at most {} at \
             once and queues the rest",
            spec.limits.concurrency,
            spec.admitted_concurrency()
        ));
    }
    warnings
}
