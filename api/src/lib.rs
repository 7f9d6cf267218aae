//! # shoal-api: the Service manifest
//!
//! Shoal runs WebAssembly HTTP microservices described by Kubernetes-style
//! YAML manifests. This crate holds the manifest schema, parses it and
//! validates it. It does **no IO**: it parses text it is given, and resolves
//! `spec.module` against a directory it is given without touching the
//! filesystem.
//!
//! ```yaml
//! apiVersion: shoal.dev/v1      # required, must be exactly this
//! kind: Service                  # required, must be exactly this
//! metadata:
//!   name: kubia                  # required; DNS-1123 label, at most 40 characters
//!   labels: {app: kubia}         # optional map<string,string> (Kubernetes label syntax)
//! spec:
//!   module: ../target/wasm32-wasip2/release/hello.wasm   # required; relative to the manifest's directory
//!   replicas: 3                  # optional, default 1, 0..=1000; with autoscale: the initial count, within min..=max
//!   routes:                      # optional, default [{path: /}]; each has a host and/or a path
//!     - host: kubia.example.com  # optional; hostname (no scheme/port/path), lowercased, may start with "*."
//!       path: /api               # optional, default "/"; starts with "/", no "?" or "#"
//!   env:                         # optional map<string,string>; HOSTNAME is reserved (Shoal sets it)
//!     GREETING: hi
//!   resources:
//!     memory: 64Mi               # per replica (cgroup); default 128Mi; at least 16Mi
//!     cpu: 500m                  # per replica; "500m", "1", "0.5", 2; optional = unlimited; max 1024 cores
//!     instanceMemory: 16Mi       # per Wasm instance linear memory; default 64Mi (capped at memory); 64Ki..=4Gi
//!   limits:
//!     concurrency: 3             # instances per replica at once; default: as many as fit in (memory - 16Mi), at most 64
//!     queue: 256                 # requests waiting for an instance per replica; default 256
//!     requestBody: 16Mi          # largest request body; default 16Mi; at most 1Gi
//!     callResponseBody: 64Mi     # largest response body a call of the service receives; default 64Mi; at most 1Gi
//!   timeout: 10s                 # per request deadline (humantime); default 30s; 1ms..=1h
//!   autoscale:                   # optional; present (even `{}`): replicas follow the load; every field optional
//!     min: 0                     # fewest replicas, default 1, 0..=1000; 0 allows scale to zero (then starts at 1)
//!     max: 10                    # most replicas, default 10, 1..=1000; at least min
//!     metric: concurrency        # per replica: "concurrency" (requests in flight, default) or "rps"
//!     target: 10                 # wanted metric per replica; default 10 (concurrency) or 100 (rps); 1..=1000000
//!     targetUtilization: 70%     # percent of target to aim for; 70 or "70%"; default 70; 1..=100
//!     stableWindow: 60s          # steady-state averaging window (humantime); default 60s; 2s..=1h
//!     panicWindow: 6s            # burst detection window; default 6s (capped at stableWindow); 1s..=stableWindow
//!     panicThreshold: 200%       # percent of capacity that starts panic mode; default 200; 110..=1000
//!     tolerance: 10%             # percent change ignored; default 10; 0..=99
//!     maxScaleUpRate: 1000       # at most ready × this per decision; default 1000; 2..=1000
//!     maxScaleDownRate: 2        # at least ready ÷ this per decision; default 2; 2..=1000
//!     scaleToZeroGracePeriod: 30s  # with min 0: idle time before scaling to zero; default 30s; 0s..=1h
//!   allowOutbound:               # optional; where guests may send HTTP requests; default none
//!     - http://kubia             # scheme://host[:port]: http, https or *; a name, an IP, *.domain or *; a port or *
//!     - https://*.example.org:8443
//!   readiness:                   # optional; a new replica takes requests once GET path answers 200..=399
//!     path: /healthz             # required; path and query, starts with "/"
//!     initialDelaySeconds: 0     # before the first probe; default 0; 0..=3600
//!     periodSeconds: 10          # between probes; default 10; 1..=3600
//!     timeoutSeconds: 1          # a probe's deadline; default 1; 1..=60
//!     failureThreshold: 3        # failures in a row that count; default 3; 1..=100
//!   liveness:                    # optional, same fields; failing failureThreshold times restarts the replica
//!     path: /healthz
//! ```
//!
//! A file may hold several documents separated by `---`. Unknown fields are
//! errors everywhere. Quantities follow Kubernetes: memory accepts `Ki Mi Gi
//! Ti Pi Ei`, `k M G T P E`, plain integers, exponents (`1e6`) and fractions
//! (`1.5Gi`, rounded up to whole bytes); CPU accepts `500m` or decimal cores.
//!
//! ```
//! use std::path::Path;
//!
//! let text = "apiVersion: shoal.dev/v1\nkind: Service\nmetadata: {name: kubia}\nspec: {module: hello.wasm}\n";
//! let services = shoal_api::parse_manifests(text, Path::new("/srv"))?;
//! shoal_api::validate_set(&services)?;
//! assert_eq!(services[0].spec.module, Path::new("/srv/hello.wasm"));
//! assert_eq!(services[0].spec.resources.memory, 128 << 20);
//!
//! let err = shoal_api::parse_manifests("apiVersion: v1\n", Path::new(".")).unwrap_err();
//! assert_eq!(err.to_string(), r#"apiVersion: expected "shoal.dev/v1", found "v1""#);
//! # Ok::<(), shoal_api::ManifestError>(())
//! ```
//!
//! Every [`ManifestError`] names the field path and what is wrong, e.g.
//! `spec.resources.memory: "64Q" is not a quantity (expected e.g. 64Mi, 1Gi, 500M)`,
//! prefixed with `document 2: ` when the text has several documents.
//!
//! # Layout
//!
//! * [`manifest`] holds the validated model ([`Service`], [`ServiceSpec`],
//!   [`Route`], [`Resources`]) and the entry points [`parse_manifests`] and
//!   [`validate_set`]; its serde form (for JSON storage) is documented there.
//! * [`quantity`] holds [`parse_memory`], [`parse_cpu`], [`format_bytes`].
//! * [`error`] holds [`ManifestError`].
//! * `raw` (private) is phase one: serde structs mirroring the YAML
//!   (`deny_unknown_fields`, every field optional), read with
//!   `serde_path_to_error` so type errors carry their field path.
//! * `validate` (private) is phase two: it checks values, fills defaults and
//!   resolves the module path, producing field-path errors.

pub mod error;
pub mod manifest;
pub mod objects;
pub mod outbound;
pub mod quantity;
mod raw;
mod validate;

pub use error::ManifestError;
pub use manifest::{
    API_VERSION, Autoscale, InstancePolicy, Instances, KIND, Limits, PolicyReason, Probe, Resources, Route, RouteTls,
    ScaleMetric, Service, ServiceSpec, WORKER_RESERVE, parse_manifests, validate_set, warnings,
};
pub use objects::{
    CallUsage, CertificateUpload, CertificateView, Event, EventType, ModuleInfo, NodeStarts, NodeView,
    REVISION_HISTORY, ReplicaInfo, ReplicaState, RevisionEntry, RolloutPhase, ServiceRecord, ServiceStatus, format_age,
    now_unix,
};
pub use outbound::{AllowOutbound, OutboundRule};
pub use quantity::{format_bytes, parse_cpu, parse_memory};
pub use validate::{MAX_REPLICAS, check_host, check_name};
