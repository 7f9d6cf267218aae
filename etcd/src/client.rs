//! The client: endpoints, failover, and one method per etcd call.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::error::{EtcdError, Failure, classify, error_chain};
use crate::types::{Lease, RangeResponse, Status, Txn, TxnResponse, key_range};
use crate::watch::Watch;
use crate::wire::{
    DeleteResp, KeepAliveResp, LeaseGrantResp, PutResp, RangeResp, StatusResp, StreamLine, TxnResp, b64, decode,
    excerpt, parse_error,
};

/// The per-request timeout unless [`Client::with_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// An etcd v3 client over etcd's gRPC-gateway JSON API (see the [crate] documentation).
///
/// Cheap to clone: clones share their connections and their idea of which endpoint works. Its
/// methods need a Tokio runtime (with the time driver enabled).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// `http://host:port`, without a trailing slash.
    endpoints: Vec<String>,
    /// `endpoints` joined with commas, for error messages.
    joined: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    /// The index of the endpoint that last worked, which requests try first.
    preferred: AtomicUsize,
}

/// How much of a 200 response an attempt reads before returning it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// All of it (a unary call).
    Full,
    /// Up to the end of its first line (a stream: keep-alive, watch).
    FirstLine,
}

/// A response with status 200, read as far as its [`Read`] says.
pub(crate) struct Opened {
    /// The index of the endpoint that answered.
    pub endpoint: usize,
    /// The rest of the body.
    pub body: Incoming,
    /// What was read of the body.
    pub buf: BytesMut,
}

impl Client {
    /// A client for these comma-separated endpoints, e.g.
    /// `"http://10.0.0.1:2379,http://10.0.0.2:2379"`. Each must be an `http://host:port` URL (the
    /// client does not speak TLS yet). Nothing is connected until the first request.
    pub fn new(endpoints: &str) -> Result<Client, EtcdError> {
        let endpoints = parse_endpoints(endpoints)?;
        Ok(Client::build(endpoints, DEFAULT_TIMEOUT, 0))
    }

    /// The same client with another timeout for each request to one endpoint (2 s by default; it
    /// is also the connect timeout). A call that fails over to other endpoints takes at most
    /// about twice this.
    pub fn with_timeout(self, timeout: Duration) -> Client {
        let preferred = self.inner.preferred.load(Ordering::Relaxed);
        Client::build(self.inner.endpoints.clone(), timeout, preferred)
    }

    fn build(endpoints: Vec<String>, timeout: Duration, preferred: usize) -> Client {
        let mut connector = HttpConnector::new();
        connector.enforce_http(true);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        // Notice a member whose host went away while a watch waits for events.
        connector.set_keepalive(Some(Duration::from_secs(10)));
        connector.set_keepalive_interval(Some(Duration::from_secs(5)));
        connector.set_keepalive_retries(Some(3));
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let joined = endpoints.join(",");
        Client { inner: Arc::new(Inner { endpoints, joined, http, timeout, preferred: AtomicUsize::new(preferred) }) }
    }

    /// The endpoints, as `http://host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// Reads `key`, or with `range_end` every key in `[key, range_end)` (see
    /// [`prefix_end`](crate::prefix_end)), as of `revision` (0 for the latest). The read is
    /// linearizable: it needs a quorum. A compacted `revision` gives [`EtcdError::Compacted`].
    pub async fn range(&self, key: &[u8], range_end: Option<&[u8]>, revision: i64) -> Result<RangeResponse, EtcdError> {
        let mut body = key_range(key, range_end);
        if revision != 0 {
            body.insert("revision".into(), json!(revision.to_string()));
        }
        let r: RangeResp = self.unary("/v3/kv/range", &Value::Object(body), true).await?;
        Ok(r.into_api(0))
    }

    /// Puts `value` at `key`, attached to `lease` (0 for none), and returns the put's revision.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let body = json!({"key": b64(key), "value": b64(value), "lease": lease.to_string()});
        let r: PutResp = self.unary("/v3/kv/put", &body, true).await?;
        Ok(r.revision())
    }

    /// Deletes `key`, or with `range_end` every key in `[key, range_end)`, and returns the store's
    /// revision after it and how many keys were deleted.
    pub async fn delete(&self, key: &[u8], range_end: Option<&[u8]>) -> Result<(i64, i64), EtcdError> {
        let body = Value::Object(key_range(key, range_end));
        let r: DeleteResp = self.unary("/v3/kv/deleterange", &body, true).await?;
        Ok((r.revision(), r.deleted))
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse, EtcdError> {
        let r: TxnResp = self.unary("/v3/kv/txn", &txn.to_json(), true).await?;
        r.into_api().map_err(|e| EtcdError::Protocol(format!("POST /v3/kv/txn at {}: {e}", self.current())))
    }

    /// Grants a lease of `ttl_seconds` (etcd may raise a TTL below its minimum).
    pub async fn lease_grant(&self, ttl_seconds: i64) -> Result<Lease, EtcdError> {
        let body = json!({"TTL": ttl_seconds.to_string(), "ID": "0"});
        let r: LeaseGrantResp = self.unary("/v3/lease/grant", &body, true).await?;
        if !r.error.is_empty() {
            return Err(EtcdError::Server { code: 2, message: r.error });
        }
        Ok(Lease { id: r.id, ttl: r.ttl })
    }

    /// Renews a lease once: `Some(ttl)` with its new TTL in seconds, or `None` when the lease is
    /// gone (expired or revoked; its keys are deleted). Call it well within the TTL, e.g. every
    /// TTL / 3.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        const PATH: &str = "/v3/lease/keepalive";
        let body = Bytes::from(json!({"ID": id.to_string()}).to_string());
        let opened = self.open(PATH, body, true, Read::FirstLine).await?;
        let line_end = opened.buf.iter().position(|&b| b == b'\n').unwrap_or(opened.buf.len());
        let line = &opened.buf[..line_end];
        let decoded = decode::<StreamLine<KeepAliveResp>>(line)
            .and_then(|l| l.result.ok_or_else(|| "no result in the response".to_string()));
        match decoded {
            Ok(r) if r.ttl > 0 => Ok(Some(r.ttl)),
            Ok(_) => Ok(None),
            Err(e) => Err(self.protocol(opened.endpoint, PATH, &e, line)),
        }
        // Dropping `opened.body` closes the stream if etcd did not end it.
    }

    /// Revokes a lease, deleting its keys. Revoking a lease that does not exist (any more) is not
    /// an error.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let body = json!({"ID": id.to_string()});
        match self.unary::<IgnoredAny>("/v3/lease/revoke", &body, true).await {
            Ok(_) => Ok(()),
            Err(EtcdError::Server { code: 5, .. }) => Ok(()),
            Err(EtcdError::Server { message, .. }) if message.contains("requested lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Compacts the store's history up to `revision`: older revisions can no longer be read or
    /// watched from. Compacting at or below the current compaction gives
    /// [`EtcdError::Compacted`], and above the current revision a [`EtcdError::Server`] error
    /// ("required revision is a future revision").
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let body = json!({"revision": revision.to_string()});
        self.unary::<IgnoredAny>("/v3/kv/compaction", &body, true).await.map(|_| ())
    }

    /// The status of the member that answers (the one that last worked). This works on a member
    /// without a leader (`leader` is then 0), unlike every other call.
    pub async fn status(&self) -> Result<Status, EtcdError> {
        let r: StatusResp = self.unary("/v3/maintenance/status", &json!({}), false).await?;
        Ok(r.into())
    }

    /// Watches `key`, or with `range_end` every key in `[key, range_end)`, from `start_revision`
    /// (0 for "from now on"), in a task of the current Tokio runtime (so this must be called
    /// within one). See [`Watch`].
    pub fn watch(&self, key: &[u8], range_end: Option<&[u8]>, start_revision: i64) -> Watch {
        let mut create = key_range(key, range_end);
        if start_revision != 0 {
            create.insert("start_revision".into(), json!(start_revision.to_string()));
        }
        let body = Bytes::from(json!({ "create_request": create }).to_string());
        Watch::start(self.clone(), body)
    }

    pub(crate) fn endpoint(&self, index: usize) -> &str {
        &self.inner.endpoints[index]
    }

    fn current(&self) -> &str {
        let i = self.inner.preferred.load(Ordering::Relaxed) % self.inner.endpoints.len();
        self.endpoint(i)
    }

    fn protocol(&self, endpoint: usize, path: &str, error: &str, body: &[u8]) -> EtcdError {
        EtcdError::Protocol(format!(
            "POST {}{path}: cannot decode the response ({error}): {}",
            self.endpoint(endpoint),
            excerpt(body)
        ))
    }

    async fn unary<T: DeserializeOwned>(&self, path: &str, body: &Value, require_leader: bool) -> Result<T, EtcdError> {
        let opened = self.open(path, Bytes::from(body.to_string()), require_leader, Read::Full).await?;
        decode(&opened.buf).map_err(|e| self.protocol(opened.endpoint, path, &e, &opened.buf))
    }

    /// Sends a request to the endpoint that last worked, failing over to the next ones in order
    /// on connection errors, timeouts and no-quorum errors, each within the timeout and all
    /// within twice the timeout. When all fail, the error's detail lists each endpoint's error.
    pub(crate) async fn open(
        &self,
        path: &str,
        body: Bytes,
        require_leader: bool,
        read: Read,
    ) -> Result<Opened, EtcdError> {
        let inner = &*self.inner;
        let n = inner.endpoints.len();
        let first = inner.preferred.load(Ordering::Relaxed) % n;
        let deadline = Instant::now() + inner.timeout * 2;
        let mut failures = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let limit = left.min(inner.timeout);
            let attempt = self.attempt(index, path, body.clone(), require_leader, read);
            let detail = match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(opened)) => {
                    inner.preferred.store(index, Ordering::Relaxed);
                    return Ok(opened);
                }
                Ok(Err(Failure::Fatal(e))) => {
                    inner.preferred.store(index, Ordering::Relaxed);
                    return Err(e);
                }
                Ok(Err(Failure::Unavailable(detail))) => detail,
                Err(_) => format!("POST {}{path}: no response within {} ms", inner.endpoints[index], limit.as_millis()),
            };
            tracing::debug!(%detail, "etcd endpoint failed");
            failures.push(detail);
        }
        // Every endpoint's error, the last one last.
        let detail = if failures.is_empty() {
            format!("no time to try an endpoint within the timeout ({:?})", inner.timeout)
        } else {
            failures.join("; ")
        };
        Err(EtcdError::Unavailable { endpoints: inner.joined.clone(), detail })
    }

    /// One request to one endpoint.
    async fn attempt(
        &self,
        index: usize,
        path: &str,
        body: Bytes,
        require_leader: bool,
        read: Read,
    ) -> Result<Opened, Failure> {
        let endpoint = self.endpoint(index);
        let context = format!("POST {endpoint}{path}");
        let mut request = Request::post(format!("{endpoint}{path}")).header(header::CONTENT_TYPE, "application/json");
        if require_leader {
            // gRPC metadata `hasleader: true`: fail at once, and end streams, without a leader.
            request = request.header("grpc-metadata-hasleader", "true");
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Failure::Fatal(EtcdError::Protocol(format!("{context}: cannot build the request: {e}"))))?;
        let response = self
            .inner
            .http
            .request(request)
            .await
            .map_err(|e| Failure::Unavailable(format!("{context}: {}", error_chain(&e))))?;
        let status = response.status();
        let mut body = response.into_body();
        let mut buf = BytesMut::new();
        let read = if status == StatusCode::OK { read } else { Read::Full };
        while !(read == Read::FirstLine && buf.contains(&b'\n')) {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(Failure::Unavailable(format!("{context}: reading the response: {}", error_chain(&e))));
                }
            }
        }
        if status != StatusCode::OK {
            return Err(match parse_error(&buf) {
                Some((code, message)) => classify(code, &message, &context),
                None => Failure::Fatal(EtcdError::Protocol(format!("{context}: HTTP {status}: {}", excerpt(&buf)))),
            });
        }
        if read == Read::FirstLine {
            // A stream reports errors as a line of its 200 response.
            let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
            if let Some((code, message)) = parse_error(&buf[..line_end]) {
                return Err(classify(code, &message, &context));
            }
        }
        Ok(Opened { endpoint: index, body, buf })
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

fn parse_endpoints(spec: &str) -> Result<Vec<String>, EtcdError> {
    if spec.trim().is_empty() {
        return Err(EtcdError::InvalidEndpoint("no endpoints given (expected e.g. http://127.0.0.1:2379)".into()));
    }
    spec.split(',')
        .map(|part| {
            let part = part.trim();
            if part.is_empty() {
                Err(EtcdError::InvalidEndpoint(format!("empty endpoint in {spec:?}")))
            } else {
                parse_endpoint(part)
            }
        })
        .collect()
}

fn parse_endpoint(part: &str) -> Result<String, EtcdError> {
    let invalid = |why: &str| EtcdError::InvalidEndpoint(format!("{part:?}: {why}"));
    let uri: Uri = part.parse().map_err(|e| invalid(&format!("not a URL ({e}); expected http://host:port")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(invalid("TLS to etcd is not supported yet; use an http:// endpoint")),
        Some(other) => return Err(invalid(&format!("unsupported scheme {other:?}; expected http://host:port"))),
        None => return Err(invalid("no scheme; expected http://host:port")),
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("no host; expected http://host:port"));
    };
    if authority.host().is_empty() {
        return Err(invalid("no host; expected http://host:port"));
    }
    if authority.as_str().contains('@') {
        return Err(invalid("user information in the URL is not supported"));
    }
    if authority.port_u16().is_none() {
        return Err(invalid("no port; expected http://host:port (etcd's client port is usually 2379)"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("a path or query is not expected; expected http://host:port"));
    }
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(spec: &str) -> String {
        match Client::new(spec) {
            Err(EtcdError::InvalidEndpoint(message)) => message,
            other => panic!("{spec:?}: expected InvalidEndpoint, got {other:?}"),
        }
    }

    #[test]
    fn parses_endpoints() {
        let c = Client::new("http://127.0.0.1:2379, http://etcd-1.local:32379/").unwrap();
        assert_eq!(c.endpoints(), ["http://127.0.0.1:2379", "http://etcd-1.local:32379"]);
        let c = Client::new("http://[::1]:2379").unwrap();
        assert_eq!(c.endpoints(), ["http://[::1]:2379"]);
    }

    #[test]
    fn rejects_bad_endpoints() {
        assert!(invalid("").contains("no endpoints"));
        assert!(invalid("  ").contains("no endpoints"));
        let m = invalid("https://127.0.0.1:2379");
        assert!(m.contains("https://127.0.0.1:2379") && m.contains("TLS"), "{m}");
        let m = invalid("http://127.0.0.1:2379,127.0.0.1:2380");
        assert!(m.contains("\"127.0.0.1:2380\"") && !m.contains("2379"), "{m}");
        assert!(invalid("http://127.0.0.1").contains("no port"));
        assert!(invalid("http://127.0.0.1:2379,,http://b:1").contains("empty endpoint"));
        assert!(invalid("http://a:1/v3").contains("path"));
        assert!(invalid("unix://etcd:1").contains("unsupported scheme"));
        assert!(invalid("http://user@a:1").contains("user information"));
        assert!(invalid("http://a b:1").contains("not a URL"));
    }

    #[test]
    fn with_timeout_keeps_the_endpoints() {
        let c = Client::new("http://a:1,http://b:2").unwrap().with_timeout(Duration::from_millis(300));
        assert_eq!(c.endpoints().len(), 2);
        assert_eq!(c.inner.timeout, Duration::from_millis(300));
    }
}
