//! The admin API: JSON over HTTP on its own listener (never the gateway's
//! port), every request authenticated with a bearer token.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/modules` | upload a component (raw bytes, streamed) → `ModuleInfo`; waits while [`MAX_UPLOADS`] run, `429` past the waiting line |
//! | `GET /v1/modules` | list modules |
//! | `GET /v1/modules/{digest}` | one module's info |
//! | `DELETE /v1/modules/{digest}` | delete a module; `409` naming who uses it |
//! | `POST /v1/modules/gc` | delete every module nothing uses → `{deleted, freedBytes}` |
//! | `PUT /v1/services/{name}` | apply `{manifest, moduleDigest}` → `{result, service, warnings}` |
//! | `GET /v1/services`, `GET /v1/services/{name}` | services with status |
//! | `DELETE /v1/services/{name}` | delete |
//! | `PUT /v1/services/{name}/scale` | `{replicas}` |
//! | `GET /v1/replicas[?service=]` | replicas |
//! | `GET /v1/events[?since=&wait=&object=]` | events, optionally waiting for new ones |
//! | `GET /v1/logs/{name}[?tail=&follow=]` | replica output, optionally followed |
//! | `GET /v1/certificates` | the TLS listener's default certificate and those per host (never a key) |
//! | `PUT /v1/certificates/{host}` | store `{cert, key}` (PEM) for a host → the certificate's view; `400` naming what is wrong |
//! | `GET`, `DELETE /v1/certificates/{host}` | one host's certificate; delete it |
//!
//! Errors are `{"error": "..."}` with a 4xx or 5xx status; every error a
//! handler can return is turned into a response in one place
//! ([`ApiError`]'s `IntoResponse`), and the errors axum answers by itself
//! (an unknown route, a wrong method, a body that does not decode) are
//! rewritten into the same shape by [`json_errors`].
//!
//! The listener ([`serve`]) runs the shared accept loop with defences of its
//! own: at most [`MAX_CONNECTIONS`] connections, and a header timeout that
//! also closes idle connections; at the cap, the oldest connection that is
//! idle and never authenticated is closed to make room, so anonymous
//! connections cannot lock out the CLI.

mod certificates;
mod modules;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use shoal_api::objects::{Event, ReplicaInfo, ReplicaUsage, RolloutPhase, ServiceRecord, ServiceStatus};

use crate::apply::{ApplyError, apply};
use crate::events::EventLog;
use crate::logs::{LogBook, selects};
use crate::reconciler::Controller;
use crate::store::{Expect, Store, StoreError};
use shoal_gateway::listener::Connection;

pub use modules::{MAX_MODULE_SIZE, MAX_UPLOADS};

pub mod dashboard;

/// Open connections to the admin API at most.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client of the admin API has to send a request head, from the
/// opening of its connection or the end of its previous response: also how
/// long an idle connection lasts.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request body besides module uploads (manifests, scale).
const MAX_BODY: usize = 4 << 20;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub controller: Arc<Controller>,
    pub events: Arc<EventLog>,
    pub logs: Arc<LogBook>,
    pub token: Arc<str>,
    /// Module uploads in progress ([`MAX_UPLOADS`] permits).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Module uploads waiting for their turn ([`modules::MAX_WAITING_UPLOADS`]).
    pub waiting_uploads: Arc<tokio::sync::Semaphore>,
    /// This node's cluster, in cluster mode: the API then answers for every
    /// node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// In cluster mode, the gateway that serves requests other nodes
    /// forward here (the admin listener is the cluster's internal one).
    pub peer_gateway: Option<Arc<shoal_gateway::Gateway>>,
    /// The dashboard's sessions and one-time links.
    pub sessions: Arc<dashboard::Sessions>,
    /// This node, for `/v1/nodes` on a single node.
    pub local_node: Option<shoal_api::NodeView>,
}

impl AdminState {
    /// The state of an admin API over these parts.
    pub fn new(
        store: Arc<dyn Store>,
        controller: Arc<Controller>,
        events: Arc<EventLog>,
        logs: Arc<LogBook>,
        token: &str,
    ) -> Self {
        Self {
            store,
            controller,
            events,
            logs,
            token: token.into(),
            uploads: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS)),
            waiting_uploads: Arc::new(tokio::sync::Semaphore::new(modules::MAX_WAITING_UPLOADS)),
            cluster: None,
            peer_gateway: None,
            sessions: Arc::default(),
            local_node: None,
        }
    }

    /// The API of a node in `cluster`, whose listener also takes the
    /// requests other nodes forward to `gateway`'s replicas.
    pub fn with_cluster(self, cluster: Arc<crate::cluster::Cluster>, gateway: Arc<shoal_gateway::Gateway>) -> Self {
        Self { cluster: Some(cluster), peer_gateway: Some(gateway), ..self }
    }

    /// A single node's API lists this node (name, addresses, capacity; the
    /// rest is filled in when asked).
    pub fn with_local_node(self, node: shoal_api::NodeView) -> Self {
        Self { local_node: Some(node), ..self }
    }
}

/// A service with its status, as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub record: ServiceRecord,
    pub status: ServiceStatus,
}

/// An error as the API returns it.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "admin API error");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// `429` with `Retry-After: 1`.
    fn busy(message: impl Into<String>) -> Self {
        ApiError(StatusCode::TOO_MANY_REQUESTS, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidDigest(digest) => {
                ApiError::bad_request(format!("{:?} is not a module digest", modules::cut(&digest, 72)))
            }
            StoreError::DiskFull { .. } => {
                tracing::error!(%error, "store error");
                ApiError(StatusCode::INSUFFICIENT_STORAGE, error.to_string())
            }
            StoreError::Conflict { ref key, .. } => {
                // As Kubernetes words it, naming the object rather than its key.
                let object = match key.strip_prefix(crate::store::SERVICES) {
                    Some(name) => format!("service {name:?}"),
                    None => key.clone(),
                };
                let message = error.to_string().replacen(key.as_str(), &object, 1);
                ApiError(StatusCode::CONFLICT, format!("operation cannot be fulfilled: {message}"))
            }
            StoreError::Unavailable { .. } => {
                tracing::warn!(%error, "store unavailable");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{error}; the change was not confirmed (check it with shoal get once the store is back)"),
                )
            }
            error => ApiError::internal(error.to_string()),
        }
    }
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("{what} {name:?} not found"))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = shoal_gateway::listener::ServeConfig {
        name: "admin API",
        max_connections: MAX_CONNECTIONS,
        evict_untrusted: true,
        header_timeout: HEADER_TIMEOUT,
        idle_timeout: None,
        drain_timeout: Duration::from_secs(5),
        http2: false,
        tls: None,
        max_headers: 100,
        closing: None,
    };
    let (peer_gateway, token) = (state.peer_gateway.clone(), state.token.clone());
    let router = router(state);
    // Each connection's requests carry it, so that the token check can
    // mark it trusted. In a cluster, requests forwarded by other nodes'
    // gateways (marked by their header) go to this node's gateway.
    let make = move |connection: &Connection| {
        let (service, connection) = (hyper_util::service::TowerToHyperService::new(router.clone()), connection.clone());
        let (peer_gateway, token) = (peer_gateway.clone(), token.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| -> Answer {
            match &peer_gateway {
                Some(gateway) if request.headers().contains_key(shoal_gateway::peer::FORWARD_HEADER) => {
                    Box::pin(from_peer(gateway.clone(), token.clone(), connection.clone(), request))
                }
                _ => {
                    request.extensions_mut().insert(connection.clone());
                    Box::pin(hyper::service::Service::call(&service, request))
                }
            }
        })
    };
    shoal_gateway::listener::serve(listener, config, make, shutdown).await
}

/// The admin listener's answer to one request.
type Answer = std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

/// A request another node's gateway forwarded to a replica here: served
/// by this node's gateway if it carries the cluster's secret.
async fn from_peer(
    gateway: Arc<shoal_gateway::Gateway>,
    token: Arc<str>,
    connection: Connection,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, std::convert::Infallible> {
    let secret = request.headers().get(shoal_gateway::peer::SECRET_HEADER).map(|v| v.as_bytes());
    if !secret.is_some_and(|secret| constant_time_eq(secret, token.as_bytes())) {
        let problem = "unauthorized: a forwarded request needs the cluster's secret";
        return Ok(ApiError(StatusCode::UNAUTHORIZED, problem.into()).into_response());
    }
    connection.trust();
    Ok(gateway.serve_peer(request).await.map(Body::new))
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The admin API's routes, behind the token check.
pub fn router(state: AdminState) -> Router {
    // The login is open to anyone (it checks the token itself).
    let login = Router::new()
        .route("/login", get(dashboard::login_link).post(dashboard::login))
        .route("/logout", post(dashboard::logout))
        .with_state(state.clone());
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::app_js))
        .route("/assets/style.css", get(dashboard::style_css))
        .route("/v1/stream", get(dashboard::stream))
        .route("/v1/dashboard/links", post(dashboard::new_link))
        .route("/v1/certificates", get(certificates::list))
        .route("/v1/certificates/{host}", get(certificates::get).put(certificates::put).delete(certificates::delete))
        .route("/v1/modules", get(modules::list).post(modules::upload))
        .route("/v1/modules/gc", post(modules::gc))
        .route("/v1/modules/{digest}", get(modules::get).delete(modules::delete))
        .route("/v1/modules/{digest}/content", get(modules::content))
        .route("/v1/services", get(list_services).post(apply_named_by_manifest))
        .route("/v1/services/{name}", get(get_service).put(apply_service).delete(delete_service))
        .route("/v1/services/{name}/scale", put(scale_service))
        .route("/v1/services/{name}/rollback", post(rollback_service))
        .route("/v1/replicas", get(list_replicas))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{name}", get(get_node))
        .route("/v1/top", get(top))
        .route("/v1/history", get(history))
        .route("/v1/calls", get(calls))
        .route("/metrics", get(metrics))
        .route("/v1/events", get(list_events))
        .route("/v1/logs/{name}", get(logs))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
        .merge(login)
        .layer(middleware::from_fn(json_errors))
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such API route: {} {}", request.method(), modules::cut(request.uri().path(), 100)),
    )
}

/// Rewrites the errors axum answers by itself (a wrong method, a body or
/// query that does not decode, a body over the limit) as `{"error": …}`,
/// like every other error of the API.
async fn json_errors(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), modules::cut(request.uri().path(), 100));
    let response = next.run(request).await;
    let status = response.status();
    // JSON already, or a page for a browser (the dashboard's login).
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => format!("method {method} is not allowed on {path}"),
        (_, true) => format!("{} {method} {path}", status.canonical_reason().unwrap_or("error")),
        (_, false) => text,
    };
    let mut rewritten = (status, Json(serde_json::json!({ "error": message }))).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

/// Rejects requests without the right bearer token, before any handler runs.
/// The scheme is case-insensitive (RFC 9110 §11.1). A connection that
/// presented the token is trusted: it is not evicted to make room for new
/// connections.
async fn authenticate(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            if let Some(connection) = request.extensions().get::<Connection>() {
                connection.trust();
            }
            next.run(request).await
        }
        Some(_) => dashboard::unauthorized(&request, "unauthorized: wrong token"),
        // The dashboard's session cookie stands for the token; what it
        // changes must come from the dashboard's own origin.
        None => match dashboard::session_of(request.headers()) {
            Some(id) if state.sessions.is_open(id) => {
                if dashboard::is_unsafe(request.method()) && !dashboard::same_origin(request.headers()) {
                    return ApiError(StatusCode::FORBIDDEN, "cross-site request refused".into()).into_response();
                }
                next.run(request).await
            }
            Some(_) => dashboard::unauthorized(&request, "unauthorized: the session has ended; log in again"),
            None => dashboard::unauthorized(&request, "unauthorized: missing bearer token"),
        },
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn view(state: &AdminState, record: ServiceRecord) -> ServiceView {
    let status = state.controller.status(&record.service.name).unwrap_or_else(|| ServiceStatus {
        name: record.service.name.clone(),
        desired: record.service.spec.replicas,
        ready: 0,
        updated: 0,
        available: 0,
        revision: record.revision(),
        generation: record.generation,
        observed_generation: 0,
        rollout: RolloutPhase::Progressing,
        message: None,
        routes: record.service.spec.routes.clone(),
        scale: None,
        instances: None,
    });
    // In a cluster, this node's status counts its own replicas: the
    // service's are every node's.
    let status = match cluster_replicas(state) {
        Some(replicas) => {
            let revision = record.revision();
            let mine: Vec<&ReplicaInfo> = replicas.iter().filter(|r| r.service == record.service.name).collect();
            let ready = mine.iter().filter(|r| r.ready).count() as u32;
            let updated = mine.iter().filter(|r| r.revision == revision).count() as u32;
            // The leader's autoscaler decides an autoscaled service's count.
            let scale = match (&record.service.spec.autoscale, &state.cluster) {
                (Some(_), Some(cluster)) => cluster.scale_status(&record.service.name),
                _ => None,
            };
            let desired = scale.as_ref().map_or(record.service.spec.replicas, |s| s.desired);
            let status = ServiceStatus { scale: scale.or(status.scale), ..status };
            let rollout = if ready == desired && updated == desired && mine.len() as u32 == desired {
                RolloutPhase::Complete
            } else if status.rollout == RolloutPhase::Halted {
                RolloutPhase::Halted
            } else {
                RolloutPhase::Progressing
            };
            ServiceStatus { desired, ready, available: ready, updated, rollout, ..status }
        }
        None => status,
    };
    // A status from before the latest change does not describe it yet.
    let status = if status.observed_generation < record.generation {
        ServiceStatus { rollout: RolloutPhase::Progressing, generation: record.generation, ..status }
    } else {
        status
    };
    ServiceView { record, status }
}

async fn list_services(State(state): State<AdminState>) -> ApiResult<Vec<ServiceView>> {
    Ok(Json(service_views(&state).await?))
}

/// Every service with its status, as `GET /v1/services` answers.
async fn service_views(state: &AdminState) -> Result<Vec<ServiceView>, ApiError> {
    let records = state.store.services()?;
    Ok(records.into_iter().map(|r| view(state, r)).collect())
}

async fn get_service(State(state): State<AdminState>, UrlPath(name): UrlPath<String>) -> ApiResult<ServiceView> {
    let record = state.store.service(&name)?.ok_or_else(|| not_found("service", &name))?;
    Ok(Json(view(&state, record)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApplyBody {
    manifest: String,
    module_digest: String,
}

#[derive(Serialize)]
struct ApplyResponse {
    result: &'static str,
    service: ServiceView,
    /// What the service asks for that works, but not as it may expect
    /// ([`shoal_api::warnings`]).
    warnings: Vec<String>,
}

async fn apply_service(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<ApplyBody>,
) -> ApiResult<ApplyResponse> {
    apply_body(state, body, Some(name)).await
}

/// `POST /v1/services`: like `PUT /v1/services/{name}`, the name taken
/// from the manifest (the dashboard's apply, which does not parse YAML).
async fn apply_named_by_manifest(
    State(state): State<AdminState>,
    Json(body): Json<ApplyBody>,
) -> ApiResult<ApplyResponse> {
    apply_body(state, body, None).await
}

/// Applies one manifest with its module; `url_name`, when given, must be
/// the manifest's name.
async fn apply_body(state: AdminState, body: ApplyBody, url_name: Option<String>) -> ApiResult<ApplyResponse> {
    let mut services =
        shoal_api::parse_manifests(&body.manifest, Path::new("/")).map_err(|e| bad_request(e.to_string()))?;
    if services.len() != 1 {
        return Err(bad_request(format!("expected one Service document, found {}", services.len())));
    }
    let service = services.remove(0);
    let name = service.name.clone();
    if let Some(url_name) = url_name
        && url_name != name
    {
        return Err(bad_request(format!("metadata.name: {name:?} does not match the name in the URL ({url_name:?})")));
    }
    let others: Vec<_> =
        state.store.services()?.into_iter().filter(|r| r.service.name != name).map(|r| r.service).collect();
    let mut all = others;
    all.push(service.clone());
    shoal_api::validate_set(&all).map_err(|e| bad_request(e.to_string()))?;
    let digest = modules::parse_digest(&body.module_digest)?;
    if let Some(named) = service.spec.module_digest()
        && named != digest
    {
        return Err(bad_request(format!(
            "spec.module names module sha256:{named} but moduleDigest is sha256:{digest}; they must agree"
        )));
    }
    let warnings = shoal_api::warnings(&service);
    // Under the module lock (held off the runtime's threads: a gc may hold
    // it through several commits): a module is not deleted between the
    // check that it exists and the service that names it.
    let (controller, store) = (state.controller.clone(), state.store.clone());
    let (applied, record) = tokio::task::spawn_blocking(move || {
        let _modules = controller.module_lock();
        apply(&*store, service, &digest)
    })
    .await
    .map_err(|e| ApiError::internal(format!("apply failed: {e}")))?
    .map_err(|e| match e {
        ApplyError::Store(e) => e.into(),
        other => bad_request(other.to_string()),
    })?;
    if applied != crate::apply::Applied::Unchanged {
        state.events.normal(
            format!("service/{name}"),
            "Applied",
            format!("{} (generation {}, revision {})", applied.as_str(), record.generation, record.revision()),
        );
        state.controller.trigger();
    }
    Ok(Json(ApplyResponse { result: applied.as_str(), service: view(&state, record), warnings }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RollbackQuery {
    /// A revision number of the service's history; default the one before
    /// the current.
    to_revision: Option<u64>,
}

/// `POST /v1/services/{name}/rollback[?toRevision=N]`: back to an earlier
/// revision (`shoal rollout undo`, the dashboard's roll back).
async fn rollback_service(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<RollbackQuery>,
) -> ApiResult<ApplyResponse> {
    if state.store.service(&name)?.is_none() {
        return Err(not_found("service", &name));
    }
    let (controller, store, target) = (state.controller.clone(), state.store.clone(), name.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        let _modules = controller.module_lock();
        crate::apply::roll_back(&*store, &target, query.to_revision)
    })
    .await
    .map_err(|e| ApiError::internal(format!("roll back failed: {e}")))?
    .map_err(|e| match e {
        ApplyError::UnknownModule(digest) => bad_request(format!(
            "that revision's module sha256:{digest} is no longer stored; push it again to roll back"
        )),
        ApplyError::NoSuchRevision(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
        ApplyError::AlreadyCurrent(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
        ApplyError::Store(e) => e.into(),
    })?;
    let Some((applied, record)) = outcome else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("service {name:?} has no previous revision to roll back to (its revision never changed)"),
        ));
    };
    state.events.normal(
        format!("service/{name}"),
        "RolledBack",
        format!(
            "back to revision {} (generation {}{})",
            record.revision(),
            record.generation,
            record.history.last().map(|entry| format!(", history number {}", entry.number)).unwrap_or_default()
        ),
    );
    state.controller.trigger();
    let warnings = shoal_api::warnings(&record.service);
    Ok(Json(ApplyResponse { result: applied.as_str(), service: view(&state, record), warnings }))
}

async fn delete_service(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<serde_json::Value> {
    if !state.store.delete_service(&name, Expect::Any)? {
        return Err(not_found("service", &name));
    }
    state.events.normal(format!("service/{name}"), "Deleted", "service deleted; stopping its replicas");
    state.controller.trigger();
    Ok(Json(serde_json::json!({ "deleted": name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    replicas: u32,
}

async fn scale_service(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<ScaleBody>,
) -> ApiResult<ServiceView> {
    if body.replicas > shoal_api::MAX_REPLICAS {
        return Err(bad_request(format!("replicas: {} is more than {}", body.replicas, shoal_api::MAX_REPLICAS)));
    }
    // Read, change, write if nothing changed it in between; else again.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut record = state.store.service(&name)?.ok_or_else(|| not_found("service", &name))?;
        if record.service.spec.replicas == body.replicas {
            return Ok(Json(view(&state, record)));
        }
        let from = record.service.spec.replicas;
        record.service.spec.replicas = body.replicas;
        record.generation += 1;
        record.updated_unix = shoal_api::objects::now_unix();
        match state.store.put_service(&record, Expect::Revision(record.resource_version)) {
            Ok(version) => record.resource_version = version,
            Err(StoreError::Conflict { .. }) if attempt < 8 => continue,
            Err(error) => return Err(error.into()),
        }
        state.events.normal(format!("service/{name}"), "Scaled", format!("replicas {from} → {}", body.replicas));
        state.controller.trigger();
        return Ok(Json(view(&state, record)));
    }
}

#[derive(Deserialize)]
struct ReplicaQuery {
    service: Option<String>,
    /// Only this node's (a peer asking, in a cluster).
    #[serde(default)]
    local: bool,
}

/// Every other node's answer to `GET path_and_query`, decoded as a list
/// (in a cluster; nothing otherwise). A node that does not answer is
/// left out, with a warning in the log.
async fn from_peers<T: serde::de::DeserializeOwned>(state: &AdminState, path_and_query: &str) -> Vec<T> {
    let Some(cluster) = &state.cluster else { return Vec::new() };
    let mut all = Vec::new();
    for (node, answer) in cluster.ask_peers(path_and_query).await {
        let decoded = match answer {
            Ok(response) => match http_body_util::BodyExt::collect(response.into_body()).await {
                Ok(body) => serde_json::from_slice::<Vec<T>>(&body.to_bytes()).map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            },
            Err(error) => Err(error),
        };
        match decoded {
            Ok(items) => all.extend(items),
            Err(error) => tracing::warn!(%node, path = path_and_query, %error, "a node did not answer"),
        }
    }
    all
}

/// `key=value` for a query string, the value percent-encoded.
fn query_pair(key: &str, value: &str) -> String {
    let encoded: String = value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{key}={encoded}")
}

async fn list_replicas(State(state): State<AdminState>, Query(q): Query<ReplicaQuery>) -> ApiResult<Vec<ReplicaInfo>> {
    match cluster_replicas(&state) {
        Some(mut replicas) => {
            replicas.retain(|r| q.service.as_ref().is_none_or(|service| r.service == *service));
            replicas.sort_by(|a, b| (&a.service, &a.node, &a.name).cmp(&(&b.service, &b.node, &b.name)));
            Ok(Json(replicas))
        }
        None => Ok(Json(state.controller.replicas(q.service.as_deref()))),
    }
}

/// What the dashboard's service page shows besides the service itself:
/// its replicas (every node's), their usage, its events (the last 30) and
/// its log tail (this node's replicas', the last 50 lines each).
async fn service_detail(state: &AdminState, name: &str) -> serde_json::Value {
    let replicas = match cluster_replicas(state) {
        Some(all) => all.into_iter().filter(|r| r.service == name).collect(),
        None => state.controller.replicas(Some(name)),
    };
    let top_query = ReplicaQuery { service: Some(name.to_owned()), local: false };
    let usage = top(State(state.clone()), Query(top_query)).await.map(|Json(u)| u).unwrap_or_default();
    let events_query = EventQuery { since: None, wait: None, object: None, local: false };
    let events = list_events(State(state.clone()), Query(events_query)).await.map(|Json(e)| e).unwrap_or_default();
    let mine = |object: &str| object == format!("service/{name}") || object.starts_with(&format!("replica/{name}-"));
    let mut events: Vec<Event> = events.into_iter().filter(|e| mine(&e.object)).collect();
    events.reverse();
    events.truncate(30);
    let logs: String = state.logs.lines(name, Some(50)).iter().map(|l| &**l).collect();
    serde_json::json!({ "name": name, "replicas": replicas, "top": usage, "events": events, "logs": logs })
}

/// In a cluster, every node's replicas: this node's as they are now, the
/// others' as they last published them.
fn cluster_replicas(state: &AdminState) -> Option<Vec<ReplicaInfo>> {
    let cluster = state.cluster.as_ref()?;
    let mut replicas = state.controller.replicas(None);
    match cluster.replicas() {
        Ok(others) => replicas.extend(others.into_iter().filter(|r| r.node != cluster.node())),
        Err(error) => tracing::warn!(%error, "cannot list the other nodes' replicas"),
    }
    Some(replicas)
}

async fn list_nodes(State(state): State<AdminState>) -> ApiResult<Vec<shoal_api::NodeView>> {
    let starts = Some(state.controller.starts());
    let Some(cluster) = &state.cluster else {
        let Some(node) = &state.local_node else {
            return Err(ApiError(StatusCode::NOT_FOUND, "this Shoal lists no node".into()));
        };
        let replicas = state.controller.replicas(None);
        let reserved = state.controller.reserved_memory();
        return Ok(Json(vec![shoal_api::NodeView {
            replicas: replicas.len() as u32,
            reserved,
            starts,
            ..node.clone()
        }]));
    };
    let mut nodes = cluster.nodes()?;
    // Only this node knows how it starts replicas.
    for node in nodes.iter_mut().filter(|n| n.name == state.controller.node()) {
        node.starts = starts;
    }
    Ok(Json(nodes))
}

async fn get_node(State(state): State<AdminState>, UrlPath(name): UrlPath<String>) -> ApiResult<shoal_api::NodeView> {
    let Json(nodes) = list_nodes(State(state)).await?;
    nodes.into_iter().find(|node| node.name == name).map(Json).ok_or_else(|| not_found("node", &name))
}

async fn top(State(state): State<AdminState>, Query(q): Query<ReplicaQuery>) -> ApiResult<Vec<ReplicaUsage>> {
    if let Some(service) = &q.service
        && state.store.service(service)?.is_none()
    {
        return Err(not_found("service", service));
    }
    let mut usage = state.controller.top(q.service.as_deref());
    if !q.local {
        let service = q.service.as_deref().map(|s| format!("&{}", query_pair("service", s))).unwrap_or_default();
        usage.extend(from_peers::<ReplicaUsage>(&state, &format!("/v1/top?local=true{service}")).await);
        usage.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    }
    Ok(Json(usage))
}

#[derive(Deserialize)]
struct HistoryQuery {
    service: String,
    /// Only points after this time (Unix milliseconds).
    since: Option<u64>,
}

/// A service's figures, one point a second over the last 15 minutes
/// ([`crate::history`]), oldest first.
async fn history(
    State(state): State<AdminState>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Vec<crate::history::Point>> {
    if state.store.service(&q.service)?.is_none() {
        return Err(not_found("service", &q.service));
    }
    Ok(Json(state.controller.history(&q.service, q.since.unwrap_or(0))))
}

async fn calls(State(state): State<AdminState>, Query(q): Query<ReplicaQuery>) -> ApiResult<Vec<shoal_api::CallUsage>> {
    if let Some(service) = &q.service
        && state.store.service(service)?.is_none()
    {
        return Err(not_found("service", service));
    }
    Ok(Json(state.controller.calls(q.service.as_deref())))
}

/// Prometheus text format, version 0.0.4 (what prometheus-client writes).
async fn metrics(State(state): State<AdminState>) -> Response {
    let text = crate::metrics::encode(state.controller.scrape());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

#[derive(Deserialize)]
struct EventQuery {
    since: Option<u64>,
    /// Seconds to wait for a new event.
    wait: Option<u64>,
    object: Option<String>,
    /// Only this node's (a peer asking, in a cluster).
    #[serde(default)]
    local: bool,
}

async fn list_events(State(state): State<AdminState>, Query(q): Query<EventQuery>) -> ApiResult<Vec<Event>> {
    let since = q.since.unwrap_or(0);
    let events = match q.wait {
        Some(wait) => {
            let wait = Duration::from_secs(wait.min(60));
            state.events.wait_since(since, q.object.as_deref(), wait).await
        }
        None => state.events.since(since, q.object.as_deref()),
    };
    // Every node's events, in time order, for a list from the start (a
    // watch's sequence numbers are this node's own).
    let events = if q.local || q.wait.is_some() || since != 0 || state.cluster.is_none() {
        events
    } else {
        let object = q.object.as_deref().map(|o| format!("&{}", query_pair("object", o))).unwrap_or_default();
        let mut all = events;
        all.extend(from_peers::<Event>(&state, &format!("/v1/events?local=true{object}")).await);
        all.sort_by_key(|e| e.time_unix);
        all
    };
    Ok(Json(events))
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
    follow: Option<bool>,
    /// Only this node's replicas (a peer asking, in a cluster).
    #[serde(default)]
    local: bool,
}

async fn logs(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let exists = state.store.service(&name)?.is_some()
        || state.controller.replicas(None).iter().any(|r| r.name == name)
        || state.logs.knows(&name)
        || cluster_replicas(&state).is_some_and(|all| all.iter().any(|r| r.name == name));
    if !exists && !q.local {
        return Err(not_found("service or replica", &name));
    }
    // In a cluster, the other nodes' replicas' output too: their answers
    // (past lines, then followed) stream beside this node's.
    let mut peers = Vec::new();
    if !q.local
        && let Some(cluster) = &state.cluster
    {
        let mut query = format!("local=true&follow={}", q.follow.unwrap_or(false));
        if let Some(tail) = q.tail {
            query.push_str(&format!("&tail={tail}"));
        }
        let path = format!("/v1/logs/{}?{query}", query_pair("n", &name).trim_start_matches("n="));
        for (node, answer) in cluster.ask_peers(&path).await {
            match answer {
                Ok(response) => peers.push(
                    http_body_util::BodyStream::new(response.into_body())
                        .filter_map(|frame| async move {
                            match frame {
                                Ok(frame) => frame.into_data().ok().map(Ok),
                                Err(error) => Some(Err(std::io::Error::other(error))),
                            }
                        })
                        .boxed(),
                ),
                Err(error) => tracing::warn!(%node, %error, "a node did not send its logs"),
            }
        }
    }
    // Subscribe before reading the buffer so that no line falls between.
    let feed = state.logs.subscribe();
    let past: String = state.logs.lines(&name, q.tail).iter().map(|l| &**l).collect();
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(past)) });
    let body = if q.follow.unwrap_or(false) {
        let follow = futures::stream::unfold((feed, name), |(mut feed, name)| async move {
            loop {
                match feed.recv().await {
                    Ok(line) if selects(&name, &line.replica) => {
                        return Some((Ok(Bytes::from(line.text.to_string())), (feed, name)));
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let note = format!("... {n} lines skipped (the reader was too slow) ...\n");
                        return Some((Ok(Bytes::from(note)), (feed, name)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        futures::StreamExt::chain(head, follow).boxed()
    } else {
        head.boxed()
    };
    let body = Body::from_stream(futures::stream::select_all(std::iter::once(body).chain(peers)));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}
