//! The dashboard: a page and its assets on the admin listener (never the
//! gateway's), behind the same token as the API.
//!
//! A browser logs in once with the token (or a one-time link from `shoal
//! dashboard`) and gets a session cookie (`HttpOnly`, `SameSite=Strict`):
//! a random id, kept in memory here, that stands for the token in every
//! later request, page, asset or API call alike. A request authenticated
//! by the cookie that changes something must come from the dashboard's own
//! origin (`Origin` or `Sec-Fetch-Site` say so), so a cross-site POST is
//! refused even where a browser sends the cookie. Without the token or a
//! session, every route answers `401`; a browser asking for a page gets the
//! login form with it.
//!
//! The dashboard reads the same API as the CLI: `/v1/services`,
//! `/v1/history`, `/v1/top`, `/v1/events`, `/v1/logs`; `/v1/stream` sends
//! the services with their latest figures every second (server-sent
//! events), so the page updates without reloading.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AdminState, constant_time_eq};

/// The session cookie's name.
pub const COOKIE: &str = "shoal_session";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; past it, the oldest goes.
pub const MAX_SESSIONS: usize = 1024;
/// How long a one-time login link works.
pub const LINK_TTL: Duration = Duration::from_secs(60);
/// One-time links waiting to be used at once; past it, the oldest goes.
const MAX_LINKS: usize = 64;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
const LOGIN_HTML: &str = include_str!("dashboard/login.html");

/// Live sessions and one-time links, by id, with when they expire.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Instant>>,
    links: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session's id.
    pub fn open(&self) -> String {
        insert_bounded(&self.sessions, SESSION_TTL, MAX_SESSIONS)
    }

    /// Whether `id` is a live session.
    pub fn is_open(&self, id: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions
            .iter()
            .any(|(known, expires)| constant_time_eq(known.as_bytes(), id.as_bytes()) && *expires > Instant::now())
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    /// A new one-time link's code.
    pub fn link(&self) -> String {
        insert_bounded(&self.links, LINK_TTL, MAX_LINKS)
    }

    /// Uses up one-time link `code`: whether it was live.
    pub fn redeem(&self, code: &str) -> bool {
        let mut links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        links.remove(code).is_some_and(|expires| expires > Instant::now())
    }
}

/// Adds a random id expiring after `ttl` to `map`, first dropping expired
/// ids and, at `max`, the one that expires soonest.
fn insert_bounded(map: &Mutex<HashMap<String, Instant>>, ttl: Duration, max: usize) -> String {
    use rand::Rng as _;
    let bytes: [u8; 32] = rand::rng().random();
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    map.retain(|_, expires| *expires > now);
    if map.len() >= max
        && let Some(oldest) = map.iter().min_by_key(|(_, expires)| **expires).map(|(id, _)| id.clone())
    {
        map.remove(&oldest);
    }
    map.insert(id.clone(), now + ttl);
    id
}

/// The session id a request's cookie carries.
pub fn session_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// Whether a request comes from the dashboard's own origin: its `Origin`
/// is this listener (`http://` and the `Host` it was sent to), or the
/// browser says `Sec-Fetch-Site: same-origin`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin";
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => origin.strip_prefix("http://") == Some(host),
        _ => false,
    }
}

/// Whether a method changes something.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The answer to a request without the token or a session: `401`, with
/// the login form for a browser asking for a page.
pub fn unauthorized(request: &Request, problem: &str) -> Response {
    let wants_page = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_page && request.method() == Method::GET && !request.uri().path().starts_with("/v1/") {
        return login_page(StatusCode::UNAUTHORIZED, "");
    }
    super::ApiError(StatusCode::UNAUTHORIZED, problem.to_owned()).into_response()
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let error = if error.is_empty() { String::new() } else { format!(r#"<p class="error" role="alert">{error}</p>"#) };
    let page = LOGIN_HTML.replace("<!--error-->", &error);
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], page)
        .into_response()
}

/// `GET /`: the dashboard (behind the token check).
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/app.js`.
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /assets/style.css`.
pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-content-type-options"), "nosniff"),
            (header::HeaderName::from_static("x-frame-options"), "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
            ),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login` (a form with `token`): a session cookie and on to the
/// dashboard, or the form again with what was wrong. Open to anyone, like
/// any login; only a same-origin form is taken.
pub async fn login(State(state): State<AdminState>, headers: HeaderMap, form: axum::Form<LoginForm>) -> Response {
    if !same_origin(&headers) {
        return super::ApiError(StatusCode::FORBIDDEN, "cross-site request refused".into()).into_response();
    }
    if !constant_time_eq(form.token.trim().as_bytes(), state.token.as_bytes()) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "Wrong token. It is in the file <code>token</code> of the data directory of <code>shoal up</code>.",
        );
    }
    signed_in(&state)
}

#[derive(Deserialize)]
pub struct LinkQuery {
    code: Option<String>,
}

/// `GET /login?code=…`: a one-time link from `shoal dashboard`; without a
/// code, the login form.
pub async fn login_link(State(state): State<AdminState>, Query(q): Query<LinkQuery>) -> Response {
    match q.code {
        Some(code) if state.sessions.redeem(&code) => signed_in(&state),
        Some(_) => login_page(
            StatusCode::UNAUTHORIZED,
            "This link was used already or has expired (links work once, within a minute). Run <code>shoal dashboard</code> again, or enter the token.",
        ),
        None => login_page(StatusCode::OK, ""),
    }
}

fn signed_in(state: &AdminState) -> Response {
    let id = state.sessions.open();
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: ends the session.
pub async fn logout(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_of(&headers) {
        state.sessions.close(id);
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("shoal_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

/// `POST /v1/dashboard/links`: a one-time login link, for `shoal
/// dashboard`.
pub async fn new_link(State(state): State<AdminState>) -> axum::Json<serde_json::Value> {
    let code = state.sessions.link();
    axum::Json(serde_json::json!({ "path": format!("/login?code={code}"), "expiresInSeconds": LINK_TTL.as_secs() }))
}

#[derive(Deserialize)]
pub struct StreamQuery {
    /// Also a `service` event for this service: its replicas with their
    /// usage, its events and its log tail.
    service: Option<String>,
}

/// `GET /v1/stream[?service=NAME]`: server-sent events, a `services` event
/// every second with what `GET /v1/services` answers and each service's
/// latest point of history; with `service`, a `service` event too.
pub async fn stream(State(state): State<AdminState>, Query(q): Query<StreamQuery>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let ticks = tokio_stream_interval(Duration::from_secs(1));
    let events = futures::StreamExt::then(ticks, move |_| {
        let (state, service) = (state.clone(), q.service.clone());
        async move {
            let mut events = vec![services_event(&state).await];
            if let Some(name) = service {
                let detail = super::service_detail(&state, &name).await.to_string();
                events.push(Ok(Event::default().event("service").data(detail)));
            }
            futures::stream::iter(events)
        }
    });
    let events = futures::StreamExt::flatten(events);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

async fn services_event(state: &AdminState) -> Result<axum::response::sse::Event, std::convert::Infallible> {
    use axum::response::sse::Event;
    {
        {
            let state = state.clone();
            let services = super::service_views(&state).await.unwrap_or_default();
            let latest: HashMap<String, crate::history::Point> = services
                .iter()
                .filter_map(|view| {
                    let name = &view.record.service.name;
                    state.controller.history(name, 0).last().map(|p| (name.clone(), *p))
                })
                .collect();
            let data = serde_json::json!({ "services": services, "latest": latest });
            Ok(Event::default().event("services").data(data.to_string()))
        }
    }
}

/// A stream that yields at once, then every `period`.
fn tokio_stream_interval(period: Duration) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(None::<tokio::time::Interval>, move |interval| async move {
        let mut interval = interval.unwrap_or_else(|| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        interval.tick().await;
        Some(((), Some(interval)))
    })
}
