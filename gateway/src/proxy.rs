//! The request path through the gateway.
//!
//! Each step, in order:
//!
//! 1. Route by Host (or the `:authority` of HTTP/2) and path: `404` if no
//!    route matches; a plain-HTTP request for a route that requires HTTPS
//!    gets `308` to the same URL on the TLS listener.
//! 2. Pick a ready replica. If there is none and the service's activator
//!    is on (autoscaled services), wait for one under the request's
//!    deadline and ask the control plane for it; past the activator's
//!    bound, or without activator, `503`.
//! 3. Rewrite the request for the worker: HTTP/1.1, hop-by-hop headers
//!    removed, `X-Forwarded-For` and `X-Forwarded-Proto` (`https` when the
//!    client came over TLS) set, `Host` kept.
//! 4. Send it on a pooled connection under the service's deadline: `504`
//!    when it passes. When the worker fails before answering (its process
//!    died, or its probes failed while the request waited), send it to
//!    another replica not tried yet if that is safe (no connection was made,
//!    or the method is idempotent, and the body was small enough to keep),
//!    as many times as there are ready replicas, at most [`MAX_TRIES`];
//!    otherwise `502`.
//! 5. Stream the response back; the replica's in-flight count ends when the
//!    body does.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use shoal_protocol::channel::frame::{RequestHead, Scheme};

use crate::balancer::{Endpoint, InFlight, Target};
use crate::client::{BoxError, LimitedBody};
use crate::link::{LinkBody, LinkError, RequestBody};
use crate::peer::Peer;
use crate::{Backend, Gateway};

/// The gateway's response body: a worker's streamed body, or a short message
/// of the gateway's own.
pub enum Body {
    /// A worker's response, counted in flight (on its replica and its
    /// service) until it ends.
    Upstream(LinkBody, Option<InFlight>, Option<Demand>),
    /// The response of a replica on another node, through that node.
    Peer(Incoming, Option<InFlight>, Option<Demand>),
    /// A message from the gateway.
    Message(Option<Bytes>),
}

/// A request counted in its service's [`crate::metrics::Meter`] until it
/// ends.
pub struct Demand {
    backend: Arc<Backend>,
    status: u16,
}

impl Demand {
    fn begin(backend: &Arc<Backend>) -> Self {
        backend.meter.begin();
        Self { backend: backend.clone(), status: 0 }
    }
}

impl Drop for Demand {
    fn drop(&mut self) {
        self.backend.meter.end(self.status);
    }
}

/// Takes a request off the service's waiting count when it stops waiting.
struct Held<'a>(&'a Backend);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.meter.unhold();
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = LinkError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, LinkError>>> {
        match self.get_mut() {
            Body::Upstream(body, in_flight, demand) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None | Some(Err(_))) = polled {
                    in_flight.take();
                    demand.take();
                }
                polled
            }
            Body::Peer(body, in_flight, demand) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None | Some(Err(_))) = polled {
                    in_flight.take();
                    demand.take();
                }
                polled.map_err(|error| LinkError::Failed(format!("the node serving the replica failed: {error}")))
            }
            Body::Message(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Upstream(body, ..) => body.is_end_stream(),
            Body::Peer(body, ..) => body.is_end_stream(),
            Body::Message(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Upstream(body, ..) => body.size_hint(),
            Body::Peer(body, ..) => body.size_hint(),
            Body::Message(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Message(None) => SizeHint::with_exact(0),
        }
    }
}

/// A response with a short plain-text body from the gateway itself.
pub fn message(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::Message(Some(text.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host header, and any
/// Host header is a valid authority without user information.
fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("400 more than one Host header\n");
    }
    match first {
        None if req.version() == Version::HTTP_11 => Err("400 missing Host header\n"),
        None => Ok(()),
        Some(value) => {
            let valid = value
                .to_str()
                .ok()
                .filter(|h| !h.contains('@') && valid_port(h))
                .is_some_and(|h| h.parse::<http::uri::Authority>().is_ok());
            if valid { Ok(()) } else { Err("400 invalid Host header\n") }
        }
    }
}

/// A port after the host, if any, is a number that fits in 16 bits.
fn valid_port(host: &str) -> bool {
    if host.ends_with(']') {
        return true;
    }
    match host.rsplit_once(':') {
        Some((_, port)) => port.parse::<u16>().is_ok(),
        None => true,
    }
}

/// The size of a request's head as sent: request target, header names and
/// values, with their separators.
pub fn head_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let fields: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    req.method().as_str().len() + target + 12 + fields
}

/// Headers that describe one connection and must not be forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Marks a request that came over TLS.
#[derive(Clone, Copy)]
struct Secure;

impl Gateway {
    /// The answer to a plain-HTTP request for a route that requires HTTPS:
    /// `308` to the same URL on the TLS listener (the method and body are
    /// kept by the client), or `503` when there is none.
    fn to_https<B>(&self, req: &Request<B>, host: Option<&str>) -> Response<Body> {
        let Some(port) = self.https_port() else {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 this route requires HTTPS, and the gateway has no TLS listener (shoal up --tls-listen)\n",
            );
        };
        // The host as the client named it, without its port.
        let name = match host {
            Some(host) if host.starts_with('[') => host.split_once(']').map_or(host, |(ip, _)| ip).to_owned() + "]",
            Some(host) => host.rsplit_once(':').map_or(host, |(name, _)| name).to_owned(),
            None => {
                return message(StatusCode::BAD_REQUEST, "400 this route requires HTTPS; the request names no host\n");
            }
        };
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location =
            if port == 443 { format!("https://{name}{target}") } else { format!("https://{name}:{port}{target}") };
        let Ok(value) = HeaderValue::from_str(&location) else {
            return message(StatusCode::BAD_REQUEST, "400 invalid Host header\n");
        };
        let mut response = message(StatusCode::PERMANENT_REDIRECT, format!("308 HTTPS only: {location}\n"));
        response.headers_mut().insert(header::LOCATION, value);
        response
    }

    /// Handles one client request.
    pub(crate) async fn proxy(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        client: SocketAddr,
        secure: bool,
    ) -> Response<Body> {
        if let Err(problem) = check_host(&req) {
            return message(StatusCode::BAD_REQUEST, problem);
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
        let router = self.router();
        let Some(routed) = router.route(host.as_deref(), req.uri().path()) else {
            return message(StatusCode::NOT_FOUND, "404 no route for this host and path\n");
        };
        if routed.https_only && !secure {
            return self.to_https(&req, host.as_deref());
        }
        let backend = routed.backend.clone();
        if secure {
            req.extensions_mut().insert(Secure);
        }
        // A request that comes back to Shoal through a host outside (a
        // call that went out and came back in) still counts its hops.
        let hops = match crate::outbound::hops_header(req.headers()) {
            Ok(hops) => hops,
            Err(response) => return response,
        };
        self.route_to(&backend, req, host, Some(client.ip()), hops, None).await
    }

    /// Sends a routed request to `backend` and counts it in its meter
    /// until its response ends.
    pub(crate) async fn route_to<B>(
        &self,
        backend: &Arc<Backend>,
        req: Request<B>,
        host: Option<String>,
        client: Option<IpAddr>,
        hops: u8,
        deadline: Option<tokio::time::Instant>,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let mut demand = Demand::begin(backend);
        let response = self.forward(backend, req, host, client, hops, deadline, false).await;
        demand.status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = match body {
            Body::Upstream(body, in_flight, _) => Body::Upstream(body, in_flight, Some(demand)),
            Body::Peer(body, in_flight, _) => Body::Peer(body, in_flight, Some(demand)),
            message => message,
        };
        Response::from_parts(parts, body)
    }

    /// Handles a request another node's gateway forwarded here, on the
    /// internal listener, after its secret was checked: it goes to one of
    /// this node's own replicas of the service it names, under what is
    /// left of its deadline, and is not counted in the service's demand
    /// (the first gateway counted it).
    pub async fn serve_peer(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        use crate::peer::{CLIENT_HEADER, DEADLINE_HEADER, FORWARD_HEADER, SECRET_HEADER};
        let headers = req.headers_mut();
        let service = headers.remove(FORWARD_HEADER);
        let client = headers.remove(CLIENT_HEADER).and_then(|v| v.to_str().ok()?.parse::<IpAddr>().ok());
        let left = headers.remove(DEADLINE_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        headers.remove(SECRET_HEADER);
        let hops = match crate::outbound::hops_header(req.headers()) {
            Ok(hops) => hops,
            Err(response) => return response,
        };
        let Some(backend) = service.as_ref().and_then(|s| s.to_str().ok()).and_then(|s| self.backend(s)) else {
            return not_taken("503 this node does not know the service\n");
        };
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
        let cap = left.map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms));
        self.forward(&backend, req, host, client, hops, cap, true).await
    }

    /// A ready replica of `backend`, waiting for one when the activator is
    /// on; only one on this node for a request from a peer.
    async fn replica(
        &self,
        backend: &Backend,
        deadline: tokio::time::Instant,
        from_peer: bool,
    ) -> Result<Arc<Endpoint>, Response<Body>> {
        if from_peer {
            return backend.replicas.pick_local().ok_or_else(|| not_taken("503 no ready replica on this node\n"));
        }
        if let Some(endpoint) = backend.replicas.pick() {
            return Ok(endpoint);
        }
        let mut successor = self.successor.address.subscribe();
        if successor.borrow_and_update().is_some() {
            return Err(handed_off());
        }
        let max_held = backend.max_held();
        if max_held == 0 {
            return Err(message(StatusCode::SERVICE_UNAVAILABLE, "503 no ready replica\n"));
        }
        let mut ready = backend.replicas.watch();
        if !backend.meter.try_hold(max_held) {
            let mut response = message(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("503 no ready replica, and {max_held} requests are already waiting for one\n"),
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(response);
        }
        let _held = Held(backend);
        self.activate(&backend.name);
        loop {
            if let Some(endpoint) = backend.replicas.pick() {
                return Ok(endpoint);
            }
            // Removed, or no replica can start (a bad module, a halted
            // rollout): the control plane turned the activator off.
            if backend.max_held() == 0 {
                return Err(message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 no ready replica, and none can start now (see `shoal describe service`)\n",
                ));
            }
            if successor.borrow_and_update().is_some() {
                return Err(handed_off());
            }
            let changed = async {
                tokio::select! {
                    changed = ready.changed() => changed.map_err(|_| ()),
                    // This process handed over: the successor starts the
                    // replica this request waits for.
                    _ = successor.changed() => Ok(()),
                }
            };
            match tokio::time::timeout_at(deadline, changed).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(message(StatusCode::SERVICE_UNAVAILABLE, "503 the service was removed\n")),
                Err(_) => {
                    return Err(message(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "503 no replica became ready within the service's timeout ({})\n",
                            humantime::format_duration(backend.timeout())
                        ),
                    ));
                }
            }
        }
    }

    /// Sends a routed request to a replica of `backend`, under the
    /// service's deadline or `cap` if sooner (a call's caller's, or what
    /// a peer left of it). `client` is `None` for a call from another
    /// service. A request `from_peer` was rewritten by the first gateway
    /// and goes only to a replica on this node.
    #[allow(clippy::too_many_arguments)]
    async fn forward<B>(
        &self,
        backend: &Backend,
        mut req: Request<B>,
        host: Option<String>,
        client: Option<IpAddr>,
        hops: u8,
        cap: Option<tokio::time::Instant>,
        from_peer: bool,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let timeout = backend.timeout();
        let mut deadline = tokio::time::Instant::now() + timeout;
        if let Some(cap) = cap {
            deadline = deadline.min(cap);
        }
        let endpoint = match self.replica(backend, deadline, from_peer).await {
            Ok(endpoint) => endpoint,
            // Once only: a request the predecessor passed here is not
            // passed on again.
            Err(response)
                if response.extensions().get::<HandedOff>().is_some()
                    && !req.headers().contains_key(HANDED_OFF_HEADER) =>
            {
                return self.to_successor(req, deadline).await;
            }
            Err(response) => return response,
        };

        let proto = if req.extensions().get::<Secure>().is_some() { "https" } else { "http" };
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        // `x-shoal-*` is Shoal's own (it once carried readiness probes;
        // the hops travel in the channel's frame).
        headers.remove("x-shoal-probe");
        headers.remove(HANDED_OFF_HEADER);
        headers.remove(crate::outbound::HOPS_HEADER);
        if let Some(value) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.entry(header::HOST).or_insert(value);
        }
        if let Some(client) = client.filter(|_| !from_peer) {
            let ip = client.to_string();
            let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(previous) => format!("{previous}, {ip}"),
                None => ip,
            };
            if let Ok(value) = HeaderValue::from_str(&forwarded) {
                headers.insert("x-forwarded-for", value);
            }
            headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
        }

        // Bodies over the service's limit: 413 before anything is sent when
        // the length is declared; cut off (then 413) when it is not.
        let max_body = backend.max_body();
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return too_large(max_body);
        }
        // Empty and small bodies are buffered so that the request can be
        // sent again; larger ones stream and are never retried.
        let (mut parts, body) = req.into_parts();
        let (replay, mut streaming) = if body.is_end_stream() {
            (Some(Bytes::new()), None)
        } else if body.size_hint().exact().is_some_and(|n| n <= MAX_REPLAY_BODY) {
            match http_body_util::BodyExt::collect(body).await {
                Ok(collected) => (Some(collected.to_bytes()), None),
                Err(_) => return message(StatusCode::BAD_REQUEST, "400 bad request body\n"),
            }
        } else {
            (None, Some(body))
        };
        let exceeded = Arc::new(AtomicBool::new(false));
        let broken = Arc::new(AtomicBool::new(false));
        let head = RequestHead {
            stream: 0,
            end_stream: true,
            // What the guest's wasi:http request says its scheme is.
            scheme: if proto == "https" { Scheme::Https } else { Scheme::Http },
            authority: host.unwrap_or_default(),
            method: parts.method.clone(),
            path_and_query: parts.uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            client: client.map(|ip| ip.to_string()).unwrap_or_default(),
            hops,
            deadline_ms: u32::try_from(deadline.saturating_duration_since(tokio::time::Instant::now()).as_millis())
                .unwrap_or(u32::MAX)
                .max(1),
            connect_ms: 0,
            headers: std::mem::take(&mut parts.headers),
        };

        // Each ready replica tried at most once, at most MAX_TRIES in all,
        // when trying again is safe. (`tried` allocates only once a try
        // failed.)
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut endpoint = endpoint;
        loop {
            let body = match (&replay, streaming.take()) {
                (Some(bytes), _) => RequestBody::Full(bytes.clone()),
                (None, Some(body)) => RequestBody::Stream(LimitedBody {
                    body,
                    remaining: max_body,
                    exceeded: exceeded.clone(),
                    broken: broken.clone(),
                }),
                (None, None) => break,
            };
            let mut in_flight = endpoint.track();
            let outcome = match &endpoint.target {
                Target::Remote(peer) => self.send_to_peer(peer, &backend.name, &head, body, deadline).await,
                // Failed after it was picked: nothing was sent to it.
                Target::Local(link) if endpoint.is_failed() || link.is_down() => {
                    Attempt::Failed { connected: false, reason: "the replica stopped answering".to_owned() }
                }
                Target::Local(link) => tokio::select! {
                    result = tokio::time::timeout_at(deadline, link.request(&head, body)) => match result {
                        Ok(Ok(response)) => Attempt::Answered(response),
                        Ok(Err(LinkError::NotTaken(reason))) => Attempt::Failed { connected: false, reason },
                        Ok(Err(LinkError::Failed(reason))) => Attempt::Failed { connected: true, reason },
                        Err(_) => Attempt::TimedOut,
                    },
                    // Its probes failed: it is stuck (stopped, overloaded);
                    // the request may or may not have reached the guest.
                    () = endpoint.failed() => Attempt::Failed {
                        connected: true,
                        reason: "the replica stopped answering its readiness probes".to_owned(),
                    },
                },
            };
            match outcome {
                Attempt::Answered(response) => {
                    let (mut head, body) = response.into_parts();
                    in_flight.answered(head.status.as_u16());
                    strip_hop_by_hop(&mut head.headers);
                    return Response::from_parts(head, Body::Upstream(body, Some(in_flight), None));
                }
                Attempt::Remote(response) => {
                    let (mut head, body) = response.into_parts();
                    in_flight.answered(head.status.as_u16());
                    strip_hop_by_hop(&mut head.headers);
                    return Response::from_parts(head, Body::Peer(body, Some(in_flight), None));
                }
                Attempt::Failed { connected, reason } => {
                    in_flight.answered(StatusCode::BAD_GATEWAY.as_u16());
                    drop(in_flight);
                    match self.next_try(
                        backend,
                        &mut tried,
                        &endpoint,
                        &parts.method,
                        replay.is_some(),
                        connected,
                        &reason,
                        &exceeded,
                        &broken,
                        max_body,
                    ) {
                        Ok(next) => endpoint = next,
                        Err(response) => return *response,
                    }
                }
                Attempt::TimedOut => {
                    in_flight.answered(StatusCode::GATEWAY_TIMEOUT.as_u16());
                    let node = endpoint.peer().map(|peer| peer.node.as_str());
                    tracing::warn!(service = %backend.name, replica = %endpoint.name, ?node, ?timeout, "deadline exceeded");
                    return gateway_timeout();
                }
            }
        }
        bad_gateway()
    }

    /// After a try failed: the replica to try next, or the answer to give
    /// (`413`, `400` for the client's own fault, else `502`). Trying again
    /// is safe when nothing reached the replica (no connection), or the
    /// method is idempotent; and the body is still at hand (`replayable`).
    #[allow(clippy::too_many_arguments)]
    fn next_try(
        &self,
        backend: &Backend,
        tried: &mut Vec<Arc<Endpoint>>,
        failed: &Arc<Endpoint>,
        method: &http::Method,
        replayable: bool,
        connected: bool,
        reason: &str,
        exceeded: &AtomicBool,
        broken: &AtomicBool,
        max_body: u64,
    ) -> Result<Arc<Endpoint>, Box<Response<Body>>> {
        if exceeded.load(Ordering::SeqCst) {
            return Err(Box::new(too_large(max_body)));
        }
        if broken.load(Ordering::SeqCst) {
            tracing::debug!(service = %backend.name, %reason, "client sent a broken body");
            return Err(Box::new(message(StatusCode::BAD_REQUEST, "400 bad request body\n")));
        }
        let safe = replayable && (!connected || is_idempotent(method));
        tried.push(failed.clone());
        let next = if safe && tried.len() < MAX_TRIES {
            let names: Vec<&str> = tried.iter().map(|e| e.name.as_str()).collect();
            backend.replicas.pick_excluding(&names)
        } else {
            None
        };
        tracing::warn!(
            service = %backend.name, replica = %failed.name, error = %reason, retry = next.is_some(),
            "replica failed"
        );
        next.ok_or_else(|| Box::new(bad_gateway()))
    }

    /// Sends a request to a replica of `service` on another node, through
    /// that node's internal listener. A node that cannot be reached is
    /// ejected for a while.
    async fn send_to_peer<B>(
        &self,
        peer: &Peer,
        service: &str,
        head: &RequestHead,
        body: RequestBody<LimitedBody<B>>,
        deadline: tokio::time::Instant,
    ) -> Attempt
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        use crate::peer::{CLIENT_HEADER, DEADLINE_HEADER, FORWARD_HEADER, NOT_TAKEN_HEADER, SECRET_HEADER};
        use http_body_util::BodyExt as _;
        let Some(peers) = self.peers.get() else {
            return Attempt::Failed { connected: false, reason: "this node is not in a cluster".to_owned() };
        };
        let uri = match format!("http://{}{}", peer.address, head.path_and_query).parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(error) => {
                return Attempt::Failed {
                    connected: false,
                    reason: format!("bad address {:?}: {error}", peer.address),
                };
            }
        };
        let body: crate::peer::PeerBody = match body {
            RequestBody::Full(bytes) => http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed_unsync(),
            RequestBody::Stream(body) => body.boxed_unsync(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        *headers = head.headers.clone();
        if !head.authority.is_empty()
            && !headers.contains_key(header::HOST)
            && let Ok(value) = HeaderValue::from_str(&head.authority)
        {
            headers.insert(header::HOST, value);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_millis().max(1);
        for (name, value) in [
            (FORWARD_HEADER, service.to_owned()),
            (SECRET_HEADER, peers.secret.clone()),
            (CLIENT_HEADER, head.client.clone()),
            (DEADLINE_HEADER, left.to_string()),
            (crate::outbound::HOPS_HEADER, head.hops.to_string()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        match tokio::time::timeout_at(deadline, peers.client.request(req)).await {
            Err(_) => Attempt::TimedOut,
            Ok(Err(error)) => {
                peer.eject();
                let connected = !error.is_connect();
                let mut reason = format!("node {} ({}): {error}", peer.node, peer.address);
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    reason.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                Attempt::Failed { connected, reason }
            }
            Ok(Ok(response)) if response.headers().contains_key(NOT_TAKEN_HEADER) => Attempt::Failed {
                connected: false,
                reason: format!("node {} has no ready replica of {service} now", peer.node),
            },
            Ok(Ok(response)) if response.status() == StatusCode::UNAUTHORIZED => {
                peer.eject();
                Attempt::Failed {
                    connected: false,
                    reason: format!("node {} refused this node's cluster secret", peer.node),
                }
            }
            Ok(Ok(response)) => Attempt::Remote(response),
        }
    }
}

/// Marks the answer of [`Gateway::replica`] that means: no replica here,
/// and this process handed over; the request goes to the successor.
#[derive(Clone, Copy)]
struct HandedOff;

/// Marks a request a gateway that handed over passed to its successor.
const HANDED_OFF_HEADER: &str = "x-shoal-handed-off";

fn handed_off() -> Response<Body> {
    let mut response = message(StatusCode::SERVICE_UNAVAILABLE, "503 no ready replica\n");
    response.extensions_mut().insert(HandedOff);
    response
}

impl Gateway {
    /// Passes a request that found no ready replica, after this process
    /// handed over ([`Gateway::hand_off`]), to the successor's gateway, as
    /// it arrived (the successor routes it again).
    async fn to_successor<B>(&self, req: Request<B>, deadline: tokio::time::Instant) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt as _;
        let Some(address) = *self.successor.address.borrow() else {
            return message(StatusCode::SERVICE_UNAVAILABLE, "503 no ready replica\n");
        };
        let client = self.successor.client.get_or_init(|| {
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.set_connect_timeout(Some(crate::peer::CONNECT_TIMEOUT));
            http.set_nodelay(true);
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(http)
        });
        let (mut parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("http://{address}{target}").parse::<http::Uri>() else {
            return message(StatusCode::BAD_REQUEST, "400 bad request target\n");
        };
        if let Some(authority) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            parts.headers.entry(header::HOST).or_insert(authority);
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(HANDED_OFF_HEADER, HeaderValue::from_static("1"));
        let body: crate::peer::PeerBody = body.map_err(Into::into).boxed_unsync();
        match tokio::time::timeout_at(deadline, client.request(Request::from_parts(parts, body))).await {
            Err(_) => gateway_timeout(),
            Ok(Err(error)) => {
                tracing::warn!(%address, %error, "cannot pass a request to the successor");
                message(StatusCode::BAD_GATEWAY, "502 bad gateway: this Shoal handed over, and its successor failed\n")
            }
            Ok(Ok(response)) => {
                let (mut head, body) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                Response::from_parts(head, Body::Peer(body, None, None))
            }
        }
    }
}

/// The answer to a peer when no replica here took its request: it ran
/// nowhere, and the peer sends it elsewhere.
fn not_taken(text: &'static str) -> Response<Body> {
    let mut response = message(StatusCode::SERVICE_UNAVAILABLE, text);
    response.headers_mut().insert(crate::peer::NOT_TAKEN_HEADER, HeaderValue::from_static("1"));
    response
}

fn bad_gateway() -> Response<Body> {
    message(StatusCode::BAD_GATEWAY, "502 bad gateway: the replica failed\n")
}

fn gateway_timeout() -> Response<Body> {
    message(StatusCode::GATEWAY_TIMEOUT, "504 gateway timeout: the service did not answer in time\n")
}

/// How one try of a request ended.
enum Attempt {
    Answered(Response<LinkBody>),
    /// A replica on another node answered, through its node.
    Remote(Response<Incoming>),
    /// The replica failed before answering; `connected` when the request
    /// may have reached it.
    Failed {
        connected: bool,
        reason: String,
    },
    TimedOut,
}

fn too_large(limit: u64) -> Response<Body> {
    message(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("413 request body too large (the limit is {})\n", shoal_api::format_bytes(limit)),
    )
}

/// Requests of these methods may be sent twice without changing the
/// outcome (RFC 9110 §9.2.2).
fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::PUT | http::Method::DELETE
    )
}

/// The largest request body buffered for a possible retry.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// The most replicas one request is sent to.
const MAX_TRIES: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_host_header() {
        let request = |hosts: &[&str]| {
            let mut builder = Request::get("/");
            for host in hosts {
                builder = builder.header(header::HOST, *host);
            }
            builder.body(()).unwrap()
        };
        assert!(check_host(&request(&["kubia.test"])).is_ok());
        assert!(check_host(&request(&["127.0.0.1:8080"])).is_ok());
        assert!(check_host(&request(&["[::1]:8080"])).is_ok());
        assert!(check_host(&request(&["[::1]"])).is_ok());
        assert!(check_host(&request(&[])).is_err());
        assert!(check_host(&request(&["a.test", "b.test"])).is_err());
        assert!(check_host(&request(&["a.test:port"])).is_err());
        assert!(check_host(&request(&["user@a.test"])).is_err());
        assert!(check_host(&request(&["a b.test"])).is_err());
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }
}
