//! API objects shared by the control plane's server and the CLI: what is
//! stored ([`ServiceRecord`], [`ModuleInfo`]) and what is reported
//! ([`ServiceStatus`], [`ReplicaInfo`], [`Event`]).
//!
//! They serialize as camelCase JSON (`moduleDigest`, `createdUnix`); enums
//! as their PascalCase names (`"CrashLoopBackOff"`, `"Warning"`). Times are
//! whole seconds since the Unix epoch. Nothing here does IO; [`now_unix`]
//! reads the clock, and that is all.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{InstancePolicy, Instances, Limits, Probe, Resources, Route, Service};

/// A service as stored: the validated manifest plus what the control plane
/// adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    /// The manifest as applied. `spec.module` is informational here (the
    /// path the user applied); the module that runs is `module_digest`.
    pub service: Service,
    /// Lowercase hex sha256 of the component.
    pub module_digest: String,
    /// Starts at 1; +1 on every change of the spec (not on a re-apply of the
    /// same spec).
    pub generation: u64,
    /// When the service was first applied.
    pub created_unix: u64,
    /// When the record last changed.
    pub updated_unix: u64,
    /// The store's revision of the record's last write: a later write that
    /// names it fails with 409 Conflict if another write came in between.
    /// Filled in on every read; never stored. 0 for a record not read from
    /// a store.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_version: u64,
    /// What ran before the last change of revision, for `shoal rollout
    /// undo` (and the dashboard's roll back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<PreviousRevision>>,
    /// The service's revisions, oldest first, the current one last; at most
    /// [`REVISION_HISTORY`] (`shoal rollout history`, `rollout undo
    /// --to-revision`). Empty for a service stored before histories were
    /// kept, until its next change of revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionEntry>,
}

/// Revisions a service's history keeps (Kubernetes' default
/// `revisionHistoryLimit`).
pub const REVISION_HISTORY: usize = 10;

/// One revision of a service, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionEntry {
    /// 1, 2, 3…, in the order the revisions were rolled out; going back to
    /// an older one makes a new number, as in Kubernetes.
    pub number: u64,
    /// Its [`ServiceRecord::revision`].
    pub revision: String,
    /// The manifest it was applied with.
    pub service: Service,
    pub module_digest: String,
    /// When it was applied.
    pub applied_unix: u64,
    /// What changed from the revision before (`created`, `module`, `env,
    /// timeout`, `rolled back to 2`…).
    pub change: String,
}

/// A service's previous revision: its manifest and module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousRevision {
    pub service: Service,
    pub module_digest: String,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl ServiceRecord {
    /// The revision: the first 6 hex characters of a sha256 over what
    /// replicas are made from: the module digest, `spec.env`,
    /// `spec.resources`, `spec.limits`, `spec.instances`, `spec.timeout` and
    /// the probes (the last three only when set, so that older records keep
    /// their revisions).
    ///
    /// Replicas and routes are left out, so scaling or re-routing a service
    /// does not replace its replicas (as in Kubernetes, where only a change
    /// of the pod template makes a new revision).
    pub fn revision(&self) -> String {
        /// The hashed fields, serialized as JSON: field order is fixed by
        /// the struct, and `BTreeMap` orders the environment.
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Template<'a> {
            module_digest: &'a str,
            env: &'a BTreeMap<String, String>,
            resources: &'a Resources,
            limits: &'a Limits,
            #[serde(skip_serializing_if = "is_default")]
            instances: &'a Instances,
            timeout: Duration,
            #[serde(skip_serializing_if = "Option::is_none")]
            readiness: Option<&'a Probe>,
            #[serde(skip_serializing_if = "Option::is_none")]
            liveness: Option<&'a Probe>,
        }
        // Services stored before `instances` existed keep their revision.
        fn is_default(instances: &&Instances) -> bool {
            **instances == Instances::default()
        }
        let spec = &self.service.spec;
        let template = Template {
            module_digest: &self.module_digest,
            env: &spec.env,
            resources: &spec.resources,
            limits: &spec.limits,
            instances: &spec.instances,
            timeout: spec.timeout,
            readiness: spec.readiness.as_ref(),
            liveness: spec.liveness.as_ref(),
        };
        let json = serde_json::to_vec(&template).expect("strings, maps and integers serialize");
        let digest = Sha256::digest(&json);
        digest[..3].iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// A stored module (a Wasm component), addressed by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleInfo {
    /// Lowercase hex sha256 of the bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// When these bytes were first stored.
    pub created_unix: u64,
}

/// A certificate of the gateway's TLS listener, as the API shows it: never
/// its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    /// The host it is served for (exact, or a `*.` wildcard); `None` for
    /// the default certificate (clients that name no host, or one without
    /// a certificate of its own).
    pub host: Option<String>,
    /// The names it is valid for (subject alternative names).
    pub names: Vec<String>,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// Its issuer's distinguished name.
    pub issuer: String,
    /// Where it came from: `store` (uploaded), `--tls-cert FILE`, or
    /// `self-signed`.
    pub origin: String,
    /// What to look at: expiring soon, expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `PUT /v1/certificates/{host}`: a PEM certificate chain and its PEM key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateUpload {
    /// The chain, leaf first.
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for CertificateUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateUpload").finish_non_exhaustive()
    }
}

/// The lifecycle state of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum ReplicaState {
    /// The worker is starting and has not reported ready yet.
    Starting,
    /// The worker reported ready and has not exited.
    Running,
    /// The worker is being stopped.
    Terminating,
    /// The worker keeps exiting; it is restarted after a back-off.
    CrashLoopBackOff,
    /// The replica will not be restarted.
    Failed,
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicaState::Starting => "Starting",
            ReplicaState::Running => "Running",
            ReplicaState::Terminating => "Terminating",
            ReplicaState::CrashLoopBackOff => "CrashLoopBackOff",
            ReplicaState::Failed => "Failed",
        })
    }
}

/// One replica of a service, as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaInfo {
    /// `<service>-<revision>-<suffix>`, e.g. `kubia-3382d9-x58q4`.
    pub name: String,
    /// The service's name.
    pub service: String,
    /// The revision it runs ([`ServiceRecord::revision`]).
    pub revision: String,
    pub state: ReplicaState,
    /// In the gateway's rotation.
    pub ready: bool,
    /// The node running it.
    pub node: String,
    /// The worker's process id, while there is a process.
    pub pid: Option<u32>,
    /// How often the worker was restarted.
    pub restarts: u32,
    /// The replica's cgroup; `None` when it runs unconfined.
    pub cgroup: Option<String>,
    pub started_unix: u64,
    /// Why it is in its state, e.g. the last exit reason.
    pub message: Option<String>,
}

/// A node of a cluster, as `shoal get nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// `--node-name`.
    pub name: String,
    /// Where other nodes reach it (`--advertise`).
    pub address: String,
    /// Its gateway's address.
    pub gateway: String,
    /// Its admin API's address.
    pub admin: String,
    /// It holds its lease: it runs replicas and is routed to.
    pub ready: bool,
    /// It holds the cluster's leadership (scheduler, rollouts, node
    /// lifecycle).
    pub leader: bool,
    /// Replicas it runs (as it last published them).
    pub replicas: u32,
    /// Memory it gives replicas, in bytes (`--capacity`, or the machine's).
    pub capacity: u64,
    /// Memory the replicas placed on it reserve, in bytes.
    pub reserved: u64,
    /// When it first joined.
    pub registered_unix: u64,
    /// When its current lease was granted (`None` while it has none).
    pub lease_granted_unix: Option<u64>,
    /// How it starts replicas (the node answering only knows its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts: Option<NodeStarts>,
}

/// A node's replica starts: its start gate and its standby pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStarts {
    /// Replicas started at once at most (`--start-concurrency`).
    pub concurrency: u32,
    /// Starts under way, and waiting for their turn.
    pub in_progress: u32,
    pub waiting: u32,
    /// Standby workers waiting now, the pool's size aimed at (one per start
    /// of the last minute, at least one), and its largest (`--standby-max`).
    pub standby: u32,
    pub standby_target: u32,
    pub standby_max: u32,
    /// Replicas started so far, and how many from a standby.
    pub started: u64,
    pub from_standby: u64,
}

/// Where a service's rollout of its current revision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum RolloutPhase {
    /// Every desired replica runs the current revision and is available.
    Complete,
    /// Replicas of the current revision are being started or old ones stopped.
    Progressing,
    /// The rollout stopped (e.g. new replicas keep failing); old replicas keep serving.
    Halted,
}

impl fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutPhase::Complete => "Complete",
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Halted => "Halted",
        })
    }
}

/// A service's observed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    /// `spec.replicas`.
    pub desired: u32,
    /// Replicas in the gateway's rotation.
    pub ready: u32,
    /// Replicas of the current revision.
    pub updated: u32,
    /// Ready replicas of the current revision.
    pub available: u32,
    /// The current revision ([`ServiceRecord::revision`]).
    pub revision: String,
    /// The record's generation.
    pub generation: u64,
    /// The generation the node last acted on.
    pub observed_generation: u64,
    pub rollout: RolloutPhase,
    /// Why the rollout is in its phase, when there is something to say.
    pub message: Option<String>,
    pub routes: Vec<Route>,
    /// The autoscaler's last decision, for services with `spec.autoscale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleStatus>,
    /// The instance policy its replicas run, once its module is prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstancePolicy>,
}

/// The autoscaler's last decision for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleStatus {
    /// The replica count it asked for.
    pub desired: u32,
    /// Whether it is in panic mode (bursts: scales up, never down).
    pub panic: bool,
    /// Why, in words: `"4.2 in flight per replica over 60s, target 7 → 3"`.
    pub reason: String,
    /// When the count last changed (Unix seconds); 0 if it never did.
    pub changed_unix: u64,
}

/// One replica's live usage, as `shoal top` shows it: request figures from
/// the gateway, CPU and memory from its cgroup (or its process without one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaUsage {
    pub name: String,
    pub service: String,
    /// Requests sent to it whose responses have not finished.
    pub in_flight: u64,
    /// Requests per second over the last [`USAGE_WINDOW_SECS`].
    pub rps: f64,
    /// 99th percentile latency in milliseconds over the same window;
    /// `None` without requests.
    pub p99_ms: Option<f64>,
    /// CPU use in millicores over the same window; `None` when unknown.
    pub cpu_millis: Option<u64>,
    /// Memory in bytes (cgroup usage, or resident set without a cgroup).
    pub memory_bytes: Option<u64>,
}

/// Calls from one service to a service or a host outside, since Shoal
/// started (what `shoal top` and `shoal describe` show).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallUsage {
    /// The calling service.
    pub caller: String,
    /// The called service, or `scheme://host:port`.
    pub target: String,
    /// Whether the target is a service.
    pub internal: bool,
    /// Responses by status class, 1xx to 5xx (the gateway's own 503, 504
    /// and 508 included).
    pub responses: [u64; 5],
    /// Calls that got no response (refused, timed out, unreachable…).
    pub failed: u64,
    /// Calls `spec.allowOutbound` did not allow.
    pub denied: u64,
    /// Median time to the response head, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub p99_ms: Option<f64>,
}

/// The window `shoal top` figures cover, in seconds.
pub const USAGE_WINDOW_SECS: u64 = 10;

/// The type of an [`Event`], as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum EventType {
    Normal,
    Warning,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        })
    }
}

/// Something that happened to an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increases by one with every event; orders events and lets a watcher resume.
    pub seq: u64,
    pub time_unix: u64,
    pub kind: EventType,
    /// `service/kubia` or `replica/kubia-3382d9-x58q4`.
    pub object: String,
    /// A CamelCase word: `Scaled`, `Started`, `OOMKilled`, …
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// Formats an age as kubectl's `AGE` column does (apimachinery's
/// `HumanDuration`): seconds up to 2 minutes, then minutes (with seconds
/// under 10 minutes), hours from 3 hours (with minutes under 8 hours), days
/// from 2 days (with hours under 8 days), years from 2 years (with days
/// under 8 years).
///
/// ```
/// use shoal_api::objects::format_age;
/// assert_eq!(format_age(5), "5s");
/// assert_eq!(format_age(90), "90s");
/// assert_eq!(format_age(150), "2m30s");
/// assert_eq!(format_age(45 * 60), "45m");
/// assert_eq!(format_age(4 * 3600 + 20 * 60), "4h20m");
/// assert_eq!(format_age(4 * 86400), "4d");
/// ```
pub fn format_age(seconds: u64) -> String {
    /// `whole` of `unit`, plus the remainder in `small_unit` unless it is 0.
    fn two(whole: u64, unit: &str, rest: u64, small_unit: &str) -> String {
        if rest == 0 { format!("{whole}{unit}") } else { format!("{whole}{unit}{rest}{small_unit}") }
    }
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    const YEAR: u64 = 365 * DAY;
    let (minutes, hours, days, years) = (seconds / MINUTE, seconds / HOUR, seconds / DAY, seconds / YEAR);
    match seconds {
        s if s < 2 * MINUTE => format!("{s}s"),
        s if s < 10 * MINUTE => two(minutes, "m", s % MINUTE, "s"),
        s if s < 3 * HOUR => format!("{minutes}m"),
        s if s < 8 * HOUR => two(hours, "h", minutes % 60, "m"),
        s if s < 2 * DAY => format!("{hours}h"),
        s if s < 8 * DAY => two(days, "d", hours % 24, "h"),
        s if s < 2 * YEAR => format!("{days}d"),
        s if s < 8 * YEAR => two(years, "y", days % 365, "d"),
        _ => format!("{years}y"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::manifest::ServiceSpec;

    fn record() -> ServiceRecord {
        ServiceRecord {
            service: Service {
                name: "kubia".into(),
                labels: BTreeMap::new(),
                spec: ServiceSpec {
                    module: PathBuf::from("/srv/hello.wasm"),
                    module_field: "hello.wasm".into(),
                    replicas: 3,
                    routes: vec![Route::new(None, "/")],
                    env: BTreeMap::from([("GREETING".into(), "hi".into())]),
                    resources: Resources { memory: 64 << 20, cpu_millis: Some(500), instance_memory: 16 << 20 },
                    limits: Default::default(),
                    instances: Default::default(),
                    timeout: Duration::from_secs(10),
                    autoscale: None,
                    allow_outbound: Vec::new(),
                    readiness: None,
                    liveness: None,
                },
                resource_version: None,
            },
            module_digest: "ab".repeat(32),
            generation: 1,
            created_unix: 1_700_000_000,
            updated_unix: 1_700_000_000,
            resource_version: 0,
            previous: None,
            history: Vec::new(),
        }
    }

    #[test]
    fn revision_is_six_hex_characters_and_stable() {
        let revision = record().revision();
        assert_eq!(revision.len(), 6);
        assert!(revision.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{revision}");
        assert_eq!(record().revision(), revision);
    }

    #[test]
    fn revision_ignores_what_does_not_replace_replicas() {
        let base = record().revision();
        let changes: [fn(&mut ServiceRecord); 7] = [
            |r| r.service.spec.replicas = 7,
            |r| r.service.spec.routes = vec![Route::new(Some("kubia.example.com".into()), "/api")],
            |r| r.service.spec.module = PathBuf::from("/elsewhere/hello.wasm"),
            |r| {
                r.service.labels.insert("tier".into(), "web".into());
            },
            |r| r.generation = 9,
            |r| r.updated_unix += 60,
            |r| r.service.name = "other".into(),
        ];
        for (index, change) in changes.iter().enumerate() {
            let mut changed = record();
            change(&mut changed);
            assert_eq!(changed.revision(), base, "change {index} should keep the revision");
        }
    }

    #[test]
    fn revision_changes_with_the_template() {
        let base = record().revision();
        let changes: [fn(&mut ServiceRecord); 8] = [
            |r| r.module_digest = "cd".repeat(32),
            |r| {
                r.service.spec.env.insert("GREETING".into(), "hello".into());
            },
            |r| {
                r.service.spec.env.insert("EXTRA".into(), String::new());
            },
            |r| r.service.spec.resources.memory = 128 << 20,
            |r| r.service.spec.resources.cpu_millis = None,
            |r| r.service.spec.resources.instance_memory = 32 << 20,
            |r| r.service.spec.timeout = Duration::from_millis(10_500),
            |r| r.service.spec.instances.max_requests = Some(100),
        ];
        for (index, change) in changes.iter().enumerate() {
            let mut changed = record();
            change(&mut changed);
            assert_ne!(changed.revision(), base, "change {index} should make a new revision");
        }
    }

    #[test]
    fn format_age_follows_kubectl() {
        let cases = [
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (3 * 60, "3m"),
            (599, "9m59s"),
            (600, "10m"),
            (2 * 3600, "120m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (4 * 3600 + 20 * 60 + 5, "4h20m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (2 * 86400, "2d"),
            (4 * 86400 + 5 * 3600, "4d5h"),
            (8 * 86400, "8d"),
            (400 * 86400, "400d"),
            (2 * 365 * 86400, "2y"),
            (3 * 365 * 86400 + 12 * 86400, "3y12d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(format_age(seconds), expected, "format_age({seconds})");
        }
    }

    #[test]
    fn json_form() {
        let record = record();
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["moduleDigest"], "ab".repeat(32));
        assert_eq!(json["createdUnix"], 1_700_000_000);
        assert_eq!(serde_json::from_value::<ServiceRecord>(json).unwrap(), record);
        assert_eq!(serde_json::to_value(ReplicaState::CrashLoopBackOff).unwrap(), "CrashLoopBackOff");
        assert_eq!(ReplicaState::CrashLoopBackOff.to_string(), "CrashLoopBackOff");
        assert_eq!(serde_json::to_value(RolloutPhase::Halted).unwrap(), "Halted");
        assert_eq!(serde_json::to_value(EventType::Warning).unwrap(), "Warning");
        assert!(now_unix() > 1_700_000_000);
    }
}
