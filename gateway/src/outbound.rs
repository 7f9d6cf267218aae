//! Calls from services: where a guest's outgoing request goes.
//!
//! A call comes from a replica's channel ([`crate::link`]) with the hops
//! that led to the request its guest serves and what is left of that
//! request's deadline. In order:
//!
//! 1. The caller's `spec.allowOutbound` (from its pod's spec, not from
//!    the worker) must allow the URL: else `HTTP-request-denied`, with
//!    words for the replica's log that name the entry that would allow it.
//! 2. A call one hop deeper than [`MAX_HOPS`] is answered `508 Loop
//!    Detected` by the gateway: services that call each other in a loop
//!    stop there, each caller getting the 508 in turn.
//! 3. A host that names a service (`http://kubia/…`) goes to that
//!    service exactly as a client's request does (its replicas, balancing,
//!    activator, limits, meter), never through a listener, under the
//!    sooner of the callee's timeout and the caller's remaining deadline.
//!    A one-label host that names no service fails with
//!    `destination-not-found`.
//! 4. Any other host is called over HTTP or HTTPS (rustls, with the
//!    platform's root certificates and the CA files `shoal up
//!    --outbound-ca` names), its connection and response head bounded by
//!    the caller's deadline.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shoal_api::AllowOutbound;
use shoal_protocol::channel::frame::{RequestHead, Scheme, call_error};

use crate::Gateway;
use crate::link::{BoxError, CallBody, CallHandler, CallOutcome};
use crate::proxy::{Body, message};

/// The deepest chain of calls between services: a call that would make
/// the request it starts this many hops (or more) from the client's gets
/// `508 Loop Detected`.
pub const MAX_HOPS: u8 = 8;

/// The header that carries the hops on calls to hosts outside, and is
/// read from requests coming in, so that a loop through a host outside is
/// stopped too.
pub const HOPS_HEADER: &str = "x-shoal-hops";

/// A call's deadline when its caller gave none.
const NO_DEADLINE: Duration = Duration::from_secs(3600);

/// The hops a client's request says it has made (its `x-shoal-hops`), or
/// the `508` to answer when that is too many.
#[allow(clippy::result_large_err)]
pub(crate) fn hops_header(headers: &HeaderMap) -> Result<u8, Response<Body>> {
    let Some(value) = headers.get(HOPS_HEADER) else { return Ok(0) };
    let hops = value.to_str().ok().and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(0);
    if hops >= u32::from(MAX_HOPS) {
        return Err(loop_detected(hops));
    }
    Ok(hops as u8)
}

fn loop_detected(hops: u32) -> Response<Body> {
    message(
        StatusCode::LOOP_DETECTED,
        format!(
            "508 loop detected: this request is {hops} calls from its client; Shoal stops chains of calls at {MAX_HOPS}\n"
        ),
    )
}

/// The client for calls to hosts outside: one TLS configuration (the
/// platform's roots and the extra CAs), and a pooled client for calls
/// without a connect timeout of their own.
pub struct Outside {
    tls: Arc<rustls::ClientConfig>,
    pooled: Client<HttpsConnector<HttpConnector>, CallBody>,
}

impl Outside {
    /// Trusts the platform's root certificates and those in `extra_cas`
    /// (PEM files). Fails, naming the file, on a CA file that cannot be
    /// read or holds no certificate.
    pub fn new(extra_cas: &[std::path::PathBuf]) -> anyhow::Result<Outside> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        for path in extra_cas {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("{}: cannot read CA certificates: {e}", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{}: no PEM certificate in it", path.display());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| anyhow::anyhow!("{}: not a CA certificate: {e}", path.display()))?;
            }
        }
        if added == 0 && extra_cas.is_empty() {
            tracing::warn!("no root certificates found on this machine: HTTPS calls to hosts outside will fail");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("cannot configure TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = Arc::new(tls);
        let pooled = client(&tls, None);
        Ok(Outside { tls, pooled })
    }
}

/// A client over HTTP and HTTPS, with a connect timeout when given.
fn client(
    tls: &Arc<rustls::ClientConfig>,
    connect: Option<Duration>,
) -> Client<HttpsConnector<HttpConnector>, CallBody> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(connect);
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((**tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// The service a replica belongs to, for its calls.
struct Caller {
    service: String,
    allow: AllowOutbound,
    /// The largest response body one call receives.
    max_response: u64,
}

impl Gateway {
    /// What serves the calls of a replica of `service`, allowed by its
    /// `spec.allowOutbound`.
    /// `spec.allowOutbound`, its responses bounded by `max_response`
    /// bytes (`spec.limits.callResponseBody`).
    pub fn call_handler(self: &Arc<Self>, service: &str, allow_outbound: &[String], max_response: u64) -> CallHandler {
        let caller = Arc::new(Caller {
            service: service.to_owned(),
            // Validated with the manifest; a list that no longer parses
            // allows nothing.
            allow: AllowOutbound::parse(allow_outbound).unwrap_or_default(),
            max_response,
        });
        // Weak: the gateway holds the link (through its endpoints) that
        // holds this handler.
        let gateway: Weak<Gateway> = Arc::downgrade(self);
        Arc::new(move |head, body| {
            let (gateway, caller) = (gateway.upgrade(), caller.clone());
            Box::pin(async move {
                match gateway {
                    Some(gateway) => gateway.call(&caller, head, body).await,
                    None => CallOutcome::Fail(call_error::UNAVAILABLE, "Shoal is shutting down".to_owned()),
                }
            })
        })
    }

    async fn call(self: Arc<Self>, caller: &Caller, head: RequestHead, body: CallBody) -> CallOutcome {
        let started = tokio::time::Instant::now();
        let (outcome, target) = self.place_call(caller, head, body).await;
        let outcome = limit_response(outcome, caller.max_response);
        if let Some((target, internal)) = target {
            let stats = self.call_stats(&caller.service, &target, internal);
            match &outcome {
                CallOutcome::Response(response) => stats.answered(response.status().as_u16(), started.elapsed()),
                CallOutcome::Fail(call_error::DENIED, _) => stats.denied(),
                CallOutcome::Fail(..) => stats.failed(),
            }
        }
        outcome
    }

    /// Sends a call where it goes; returns its outcome and its target for
    /// the figures (a service's name, or `scheme://host:port`; none for a
    /// call without a valid host).
    async fn place_call(
        self: &Arc<Self>,
        caller: &Caller,
        head: RequestHead,
        body: CallBody,
    ) -> (CallOutcome, Option<(String, bool)>) {
        let https = head.scheme == Scheme::Https;
        let scheme = if https { "https" } else { "http" };
        let authority = match head.authority.parse::<http::uri::Authority>() {
            Ok(authority) => authority,
            Err(_) => return (CallOutcome::Fail(call_error::URI, format!("{:?} is not a host", head.authority)), None),
        };
        let url = format!("{scheme}://{authority}{}", head.path_and_query);
        let host = authority.host().to_ascii_lowercase();
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let backend = self.backend(&host);
        let internal = backend.is_some();
        let target = Some(if internal { (host.clone(), true) } else { (format!("{scheme}://{host}:{port}"), false) });
        if caller.allow.allowing(https, &host, port).is_none() {
            let entry =
                if port == default_port { format!("{scheme}://{host}") } else { format!("{scheme}://{host}:{port}") };
            let why = format!(
                "{} {url} is not allowed by spec.allowOutbound; add \"{entry}\" to spec.allowOutbound of service {} to allow it",
                head.method, caller.service
            );
            return (CallOutcome::Fail(call_error::DENIED, why), target);
        }
        let hops = head.hops.saturating_add(1);
        if hops >= MAX_HOPS {
            tracing::warn!(caller = %caller.service, %url, hops, "call loop stopped");
            return (answer(loop_detected(u32::from(hops))), target);
        }
        let wait = if head.deadline_ms == 0 { NO_DEADLINE } else { Duration::from_millis(head.deadline_ms.into()) };
        let deadline = tokio::time::Instant::now() + wait;

        let mut request = Request::new(body);
        *request.method_mut() = head.method;
        *request.headers_mut() = head.headers;
        if let Some(backend) = backend {
            *request.uri_mut() = match head.path_and_query.parse::<Uri>() {
                Ok(uri) => uri,
                Err(_) => return (CallOutcome::Fail(call_error::URI, format!("{url}: the path is not valid")), target),
            };
            let response =
                self.route_to(&backend, request, Some(authority.to_string()), None, hops, Some(deadline)).await;
            return (answer(response), target);
        }
        if !host.contains('.') && host != "localhost" && !host.starts_with('[') {
            let why = format!("{url}: there is no service named {host:?} (a call by name needs the service to exist)");
            return (CallOutcome::Fail(call_error::NOT_FOUND, why), target);
        }
        *request.uri_mut() = match url.parse::<Uri>() {
            Ok(uri) => uri,
            Err(_) => return (CallOutcome::Fail(call_error::URI, format!("{url} is not a valid URL")), target),
        };
        request.headers_mut().insert(HOPS_HEADER, HeaderValue::from(u16::from(hops)));
        let connect = (head.connect_ms > 0).then(|| Duration::from_millis(head.connect_ms.into()).min(wait));
        (self.external(request, &url, connect, deadline).await, target)
    }

    /// Calls a host outside: on the pooled client, or, when the guest set
    /// a connect timeout, on a client of its own with that timeout.
    async fn external(
        &self,
        request: Request<CallBody>,
        url: &str,
        connect: Option<Duration>,
        deadline: tokio::time::Instant,
    ) -> CallOutcome {
        let outside = match self.outside() {
            Ok(outside) => outside,
            Err(error) => return CallOutcome::Fail(call_error::INTERNAL, format!("{url}: {error:#}")),
        };
        let sent = match connect {
            None => outside.pooled.request(request),
            Some(connect) => client(&outside.tls, Some(connect)).request(request),
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(response)) => {
                CallOutcome::Response(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
            }
            Ok(Err(error)) => {
                let (code, why) = classify(&error);
                CallOutcome::Fail(code, format!("{url}: {why}"))
            }
            Err(_) => {
                CallOutcome::Fail(call_error::TIMEOUT, format!("{url}: no response within the caller's deadline"))
            }
        }
    }
}

/// A response body larger than its caller may receive: past `limit`
/// bytes it ends in [`ResponseTooLarge`], which the link sends as
/// `CALL_FAIL` with `RESPONSE_TOO_LARGE`. A response that declares a
/// larger length fails before its head goes.
fn limit_response(outcome: CallOutcome, limit: u64) -> CallOutcome {
    let CallOutcome::Response(response) = outcome else { return outcome };
    let declared =
        response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return CallOutcome::Fail(call_error::RESPONSE_TOO_LARGE, ResponseTooLarge(limit).to_string());
    }
    CallOutcome::Response(response.map(|body| Capped { body, left: limit, limit }.boxed_unsync()))
}

/// Why a call's response body was cut.
#[derive(Debug, thiserror::Error)]
#[error("the response body is larger than spec.limits.callResponseBody ({})", shoal_api::format_bytes(*.0))]
pub struct ResponseTooLarge(pub u64);

/// A body that fails past `left` more bytes.
struct Capped {
    body: crate::link::BoxBody,
    left: u64,
    limit: u64,
}

impl http_body::Body for Capped {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            if len > self.left {
                let limit = self.limit;
                return std::task::Poll::Ready(Some(Err(Box::new(ResponseTooLarge(limit)))));
            }
            self.left -= len;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A gateway response as a call's answer.
fn answer(response: Response<Body>) -> CallOutcome {
    CallOutcome::Response(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
}

/// The TLS error in `error`, looking into the I/O errors that wrap it
/// (hyper-rustls wraps tokio-rustls's, which wraps rustls's).
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    tls_error(inner)
}

/// The `CALL_FAIL` code and words for a failed call to a host outside.
fn classify(error: &hyper_util::client::legacy::Error) -> (u8, String) {
    let mut text = error.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        if let Some(tls) = tls_error(cause) {
            let code = match tls {
                rustls::Error::InvalidCertificate(_) => call_error::TLS_CERTIFICATE,
                _ => call_error::TLS,
            };
            return (code, text);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            let code = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => call_error::REFUSED,
                std::io::ErrorKind::TimedOut => call_error::CONNECT_TIMEOUT,
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => call_error::UNAVAILABLE,
                _ if text.contains("dns error") || text.contains("failed to lookup") => call_error::DNS,
                _ => call_error::TERMINATED,
            };
            return (code, text);
        }
        source = cause.source();
    }
    let code = if error.is_connect() {
        if text.contains("dns error") { call_error::DNS } else { call_error::REFUSED }
    } else {
        call_error::PROTOCOL
    };
    (code, text)
}
