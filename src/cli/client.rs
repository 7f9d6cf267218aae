//! The admin API client: requests whose failures become one readable
//! sentence ([`ApiError`]).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ConnectArgs;
use super::connect::{ServerUrl, io_reason, token};

/// How long an ordinary request may take, from connecting to the last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long uploading a module may take.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// A failed request, as one sentence.
#[derive(Debug)]
pub enum ApiError {
    /// No connection to the server.
    Connect { server: ServerUrl, reason: String, refused: bool },
    /// The server rejected the token.
    Unauthorized { hint: String },
    /// Any other 4xx or 5xx: the server's `{"error": …}` message
    /// (`explained`), or a sentence naming the status.
    Status { status: StatusCode, message: String, explained: bool },
    /// No complete answer in time.
    Timeout { server: ServerUrl, after: Duration },
    /// The exchange failed after connecting.
    Transport { server: ServerUrl, reason: String },
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Connect { server, reason, refused } => {
                write!(f, "cannot connect to the Shoal admin API at {server}: {reason}")?;
                if *refused {
                    f.write_str(" (is shoal up running?)")?;
                }
                Ok(())
            }
            ApiError::Unauthorized { hint } => write!(f, "unauthorized: the token was rejected (check {hint})"),
            ApiError::Status { message, .. } => f.write_str(message),
            ApiError::Timeout { server, after } => {
                write!(
                    f,
                    "the Shoal admin API at {server} did not answer within {}",
                    humantime::format_duration(*after)
                )
            }
            ApiError::Transport { server, reason } => {
                write!(f, "request to the Shoal admin API at {server} failed: {reason}")
            }
        }
    }
}

impl StdError for ApiError {}

/// Whether `error` is the server's 404.
pub fn is_not_found(error: &anyhow::Error) -> bool {
    matches!(error.downcast_ref::<ApiError>(), Some(ApiError::Status { status: StatusCode::NOT_FOUND, .. }))
}

/// A 404 without the server's own message becomes `message` (the server's
/// message, when there is one, is shown as is); other errors stay.
pub fn or_not_found(error: anyhow::Error, message: impl FnOnce() -> String) -> anyhow::Error {
    match error.downcast_ref::<ApiError>() {
        Some(ApiError::Status { status: StatusCode::NOT_FOUND, explained: false, .. }) => anyhow!(message()),
        _ => error,
    }
}

/// Prefixes a server's rejection (a 4xx or 5xx) of a request with what it
/// was about; connection and token errors stay as they are.
pub fn rejected<T>(result: anyhow::Result<T>, what: impl FnOnce() -> String) -> anyhow::Result<T> {
    result.map_err(|error| match error.downcast_ref::<ApiError>() {
        Some(ApiError::Status { .. }) => error.context(what()),
        _ => error,
    })
}

/// A connection to the admin API (really: a pool, and what every request needs).
pub struct Client {
    server: ServerUrl,
    authorization: HeaderValue,
    token_hint: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// The admin API's base URL, as given.
    pub fn server(&self) -> String {
        self.server.to_string()
    }

    /// Checks the server URL and finds the token; does not connect yet.
    pub fn new(connect: &ConnectArgs) -> anyhow::Result<Self> {
        let server = ServerUrl::parse(&connect.server)?;
        let (token, token_hint) = token(connect)?;
        let authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("the API token contains characters that cannot be sent in an HTTP header"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Ok(Client { server, authorization, token_hint, http })
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get_within(path, REQUEST_TIMEOUT).await
    }

    /// `GET path`, decoded, with its own time limit (for long polls).
    pub async fn get_within<T: DeserializeOwned>(&self, path: &str, limit: Duration) -> anyhow::Result<T> {
        let body = self.call(Method::GET, path, None, limit).await?;
        self.decode(&Method::GET, path, &body)
    }

    /// `PUT path` with a JSON body, decoded.
    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let json = serde_json::to_vec(body).context("cannot encode the request")?;
        let body = self.call(Method::PUT, path, Some((json.into(), "application/json")), REQUEST_TIMEOUT).await?;
        self.decode(&Method::PUT, path, &body)
    }

    /// `POST path` with raw Wasm bytes, decoded.
    pub async fn post_wasm<T: DeserializeOwned>(&self, path: &str, bytes: Bytes) -> anyhow::Result<T> {
        let body = self.call(Method::POST, path, Some((bytes, "application/wasm")), UPLOAD_TIMEOUT).await?;
        self.decode(&Method::POST, path, &body)
    }

    /// `POST path` without a body, decoded.
    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.call(Method::POST, path, None, REQUEST_TIMEOUT).await?;
        self.decode(&Method::POST, path, &body)
    }

    /// `DELETE path`, decoded.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.call(Method::DELETE, path, None, REQUEST_TIMEOUT).await?;
        self.decode(&Method::DELETE, path, &body)
    }

    /// `GET path`, handing each chunk of the body to `sink` as it arrives,
    /// until the server ends it (never, for a followed log).
    pub async fn stream(&self, path: &str, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> anyhow::Result<()> {
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.send(Method::GET, path, None))
            .await
            .map_err(|_| self.timeout(REQUEST_TIMEOUT))??;
        let response = self.check(response, REQUEST_TIMEOUT).await?;
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.transport(&e))?;
            if let Some(data) = frame.data_ref() {
                sink(data)?;
            }
        }
        Ok(())
    }

    /// One request, its status checked, its whole body read, within `limit`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        limit: Duration,
    ) -> Result<Bytes, ApiError> {
        let exchange = async {
            let response = self.send(method, path, body).await?;
            let response = self.check(response, limit).await?;
            let collected = response.into_body().collect().await.map_err(|e| self.transport(&e))?;
            Ok(collected.to_bytes())
        };
        tokio::time::timeout(limit, exchange).await.map_err(|_| self.timeout(limit))?
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Response<Incoming>, ApiError> {
        let uri = format!("{}{path}", self.server);
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("shoal/", env!("CARGO_PKG_VERSION")));
        if let Some((_, content_type)) = &body {
            request = request.header(header::CONTENT_TYPE, *content_type);
        }
        let request = request.body(Full::new(body.map(|(bytes, _)| bytes).unwrap_or_default())).map_err(|e| {
            ApiError::Transport { server: self.server.clone(), reason: format!("bad request {uri}: {e}") }
        })?;
        self.http.request(request).await.map_err(|error| {
            if error.is_connect() {
                let refused = io_kind(&error) == Some(io::ErrorKind::ConnectionRefused);
                ApiError::Connect { server: self.server.clone(), reason: innermost(&error), refused }
            } else {
                self.transport(&error)
            }
        })
    }

    /// Passes a success through; turns anything else into an [`ApiError`].
    async fn check(&self, response: Response<Incoming>, limit: Duration) -> Result<Response<Incoming>, ApiError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ApiError::Unauthorized { hint: self.token_hint.clone() });
        }
        let body = tokio::time::timeout(limit, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let (message, explained) = error_message(status, &body);
        Err(ApiError::Status { status, message, explained })
    }

    fn decode<T: DeserializeOwned>(&self, method: &Method, path: &str, body: &[u8]) -> anyhow::Result<T> {
        serde_json::from_slice(body).map_err(|e| {
            anyhow!(
                "unexpected answer from the Shoal admin API at {} to {method} {path}: {e} \
                 (is it the same version of Shoal as this CLI?)",
                self.server
            )
        })
    }

    fn timeout(&self, after: Duration) -> ApiError {
        ApiError::Timeout { server: self.server.clone(), after }
    }

    fn transport(&self, error: &(dyn StdError + 'static)) -> ApiError {
        ApiError::Transport { server: self.server.clone(), reason: innermost(error) }
    }
}

/// The message of an error response: the server's `{"error": "…"}` as is
/// (and `true`), or a sentence naming the status and what the body starts
/// with.
pub fn error_message(status: StatusCode, body: &[u8]) -> (String, bool) {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(ErrorBody { error }) = serde_json::from_slice(body) {
        return (error, true);
    }
    let text = String::from_utf8_lossy(body);
    let first = text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
    let first: String = first.chars().take(200).collect();
    let message = if first.is_empty() {
        format!("the Shoal admin API answered {status}")
    } else {
        format!("the Shoal admin API answered {status}: {first}")
    };
    (message, false)
}

/// The kind of the io error in `error`'s chain, if there is one.
fn io_kind(error: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        cause = current.source();
    }
    None
}

/// The most specific message in `error`'s chain: the first io error's
/// (lowercase, without `(os error N)`), else the last cause's.
fn innermost(error: &(dyn StdError + 'static)) -> String {
    let mut cause = error;
    loop {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return io_reason(io);
        }
        match cause.source() {
            Some(next) => cause = next,
            None => return cause.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, br#"{"error":"service \"x\" not found"}"#),
            ("service \"x\" not found".to_owned(), true)
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"<html>\n<h1>bad gateway</h1>"),
            ("the Shoal admin API answered 502 Bad Gateway: <html>".to_owned(), false)
        );
        assert_eq!(
            error_message(StatusCode::INTERNAL_SERVER_ERROR, b""),
            ("the Shoal admin API answered 500 Internal Server Error".to_owned(), false)
        );
        let bare = || {
            anyhow::Error::new(ApiError::Status {
                status: StatusCode::NOT_FOUND,
                message: "x".into(),
                explained: false,
            })
        };
        let explained =
            ApiError::Status { status: StatusCode::NOT_FOUND, message: "the server's".into(), explained: true };
        assert_eq!(or_not_found(bare(), || "service \"x\" not found".into()).to_string(), "service \"x\" not found");
        assert_eq!(or_not_found(explained.into(), || "mine".into()).to_string(), "the server's");
        assert!(is_not_found(&bare()));
        let unauthorized = ApiError::Unauthorized { hint: "--token, SHOAL_TOKEN or /d/token".into() };
        assert_eq!(
            unauthorized.to_string(),
            "unauthorized: the token was rejected (check --token, SHOAL_TOKEN or /d/token)"
        );
        let refused = ApiError::Connect {
            server: ServerUrl::parse(crate::cli::connect::DEFAULT_SERVER).unwrap(),
            reason: "connection refused".into(),
            refused: true,
        };
        assert_eq!(
            refused.to_string(),
            "cannot connect to the Shoal admin API at http://127.0.0.1:8081: connection refused (is shoal up running?)"
        );
        let e = io::Error::from_raw_os_error(111);
        assert_eq!(io_reason(&e), "connection refused");
    }
}
