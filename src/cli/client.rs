//! The admin API client: the server URL, the token, and requests whose
//! failures become one readable sentence ([`ApiError`]).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ConnectArgs;

/// Where `shoal up` serves its admin API by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8081";

/// How long an ordinary request may take, from connecting to the last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long uploading a module may take.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// A parsed `--server`: `http://host[:port]` plus an optional path prefix,
/// without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl ServerUrl {
    /// Accepts `http://host[:port][/prefix]`, or `host:port` (taken as
    /// http). Rejects https and anything that is not a URL, saying why.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let bad = |why: &str| anyhow!("--server {text:?}: {why} (expected e.g. {DEFAULT_SERVER})");
        if text.is_empty() {
            return Err(bad("empty"));
        }
        let with_scheme = match text.split_once("://") {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => text.to_owned(),
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(anyhow!(
                    "--server {text:?}: the admin API speaks plain HTTP, not https; use http://HOST:PORT \
                     (through an SSH tunnel or a TLS-terminating proxy from another machine)"
                ));
            }
            Some((scheme, _)) => return Err(bad(&format!("unsupported scheme {scheme:?}, only http:// is"))),
            None => format!("http://{text}"),
        };
        let uri: Uri = with_scheme.parse().map_err(|_| bad("not an http:// URL"))?;
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("user names in the URL are not supported (use --token)"));
        }
        if uri.query().is_some() || with_scheme.contains('#') {
            return Err(bad("a query or fragment is not allowed"));
        }
        let prefix = uri.path().trim_end_matches('/');
        Ok(ServerUrl(format!("http://{authority}{prefix}")))
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Percent-encodes one path segment or query value.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A failed request, as one sentence.
#[derive(Debug)]
pub enum ApiError {
    /// No connection to the server.
    Connect { server: ServerUrl, reason: String, refused: bool },
    /// The server rejected the token.
    Unauthorized { hint: String },
    /// Any other 4xx or 5xx: the server's `{"error": …}` message.
    Status { status: StatusCode, message: String },
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

/// Prefixes a server's rejection (a 4xx or 5xx) of a request with what it
/// was about; connection and token errors stay as they are.
pub fn rejected<T>(result: anyhow::Result<T>, what: impl FnOnce() -> String) -> anyhow::Result<T> {
    result.map_err(|error| match error.downcast_ref::<ApiError>() {
        Some(ApiError::Status { .. }) => error.context(what()),
        _ => error,
    })
}

/// Reads the token: `--token`/`SHOAL_TOKEN`, else `<data-dir>/token`.
/// Returns the token and, for messages, where else it could come from.
fn token(connect: &ConnectArgs) -> anyhow::Result<(String, String)> {
    let data_dir = connect.data_dir.clone().unwrap_or_else(crate::up::default_data_dir);
    let file = data_dir.join("token");
    let hint = format!("--token, SHOAL_TOKEN or {}", file.display());
    if let Some(token) = connect.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        return Ok((token.to_owned(), hint));
    }
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => Ok((text.trim().to_owned(), hint)),
        Ok(_) => Err(anyhow!("the token file {} is empty (shoal up writes it when it starts)", file.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(no_token(&file)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(anyhow!(
            "cannot read the API token from {}: permission denied (shoal up runs as another user?); \
             run this as that user, or pass the token with --token or SHOAL_TOKEN",
            file.display()
        )),
        Err(e) => Err(anyhow!("cannot read the API token from {}: {}", file.display(), io_reason(&e))),
    }
}

fn no_token(file: &std::path::Path) -> anyhow::Error {
    anyhow!(
        "no API token: shoal up writes it to <data-dir>/token when it starts, and {} does not exist; \
         run this as the user running shoal up (with --data-dir or SHOAL_DATA_DIR if shoal up has another \
         data directory), or pass the token with --token or SHOAL_TOKEN",
        file.display()
    )
}

/// An io error without the `(os error N)` tail, starting lowercase.
pub fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(end) => &text[..end],
        None => &text,
    };
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| first.to_lowercase().chain(chars).collect())
}

/// A connection to the admin API (really: a pool, and what every request needs).
pub struct Client {
    server: ServerUrl,
    authorization: HeaderValue,
    token_hint: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Client {
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
        Err(ApiError::Status { status, message: error_message(status, &body) })
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

/// The message of an error response: the server's `{"error": "…"}` as is,
/// or a sentence naming the status and what the body starts with.
pub fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(ErrorBody { error }) = serde_json::from_slice(body) {
        return error;
    }
    let text = String::from_utf8_lossy(body);
    let first = text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
    let first: String = first.chars().take(200).collect();
    if first.is_empty() {
        format!("the Shoal admin API answered {status}")
    } else {
        format!("the Shoal admin API answered {status}: {first}")
    }
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

/// For tests: a client whose token is given (no file lookup).
#[cfg(test)]
pub fn token_for_tests(connect: &ConnectArgs) -> anyhow::Result<String> {
    token(connect).map(|(token, _)| token)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn connect(token: Option<&str>, data_dir: PathBuf) -> ConnectArgs {
        ConnectArgs { server: DEFAULT_SERVER.into(), token: token.map(Into::into), data_dir: Some(data_dir) }
    }

    #[test]
    fn server_urls() {
        let ok = |text: &str| ServerUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).0;
        assert_eq!(ok("http://127.0.0.1:8081"), "http://127.0.0.1:8081");
        assert_eq!(ok("http://127.0.0.1:8081/"), "http://127.0.0.1:8081");
        assert_eq!(ok("HTTP://localhost:9000/shoal/"), "http://localhost:9000/shoal");
        assert_eq!(ok("localhost:8081"), "http://localhost:8081");
        assert_eq!(ok("http://[::1]:8081"), "http://[::1]:8081");
        let err = |text: &str| ServerUrl::parse(text).unwrap_err().to_string();
        assert!(err("https://example.com").contains("plain HTTP, not https"), "{}", err("https://example.com"));
        assert!(err("ftp://example.com").contains("unsupported scheme \"ftp\""));
        assert!(err("not a url").contains("not an http:// URL"), "{}", err("not a url"));
        assert!(err("http://").contains("not an http:// URL") || err("http://").contains("no host"));
        assert!(err("").contains("empty"));
        assert!(err("http://x:1/?a=b").contains("query"));
        assert!(err("http://user:pw@x:1").contains("user names"));
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("kubia-3382d9"), "kubia-3382d9");
        assert_eq!(encode("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(encode("service/kubia"), "service%2Fkubia");
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, br#"{"error":"service \"x\" not found"}"#),
            "service \"x\" not found"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"<html>\n<h1>bad gateway</h1>"),
            "the Shoal admin API answered 502 Bad Gateway: <html>"
        );
        assert_eq!(
            error_message(StatusCode::INTERNAL_SERVER_ERROR, b""),
            "the Shoal admin API answered 500 Internal Server Error"
        );
        let unauthorized = ApiError::Unauthorized { hint: "--token, SHOAL_TOKEN or /d/token".into() };
        assert_eq!(
            unauthorized.to_string(),
            "unauthorized: the token was rejected (check --token, SHOAL_TOKEN or /d/token)"
        );
        let refused = ApiError::Connect {
            server: ServerUrl::parse(DEFAULT_SERVER).unwrap(),
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

    #[test]
    fn token_sources() {
        let dir = std::env::temp_dir().join(format!("shoal-cli-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = token_for_tests(&connect(None, dir.clone())).unwrap_err().to_string();
        assert!(err.starts_with("no API token: shoal up writes it to <data-dir>/token when it starts"), "{err}");
        assert!(err.contains(&dir.join("token").display().to_string()), "{err}");
        assert!(err.contains("--token or SHOAL_TOKEN"), "{err}");
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        assert_eq!(token_for_tests(&connect(None, dir.clone())).unwrap(), "s3cret");
        assert_eq!(token_for_tests(&connect(Some("flag"), dir.clone())).unwrap(), "flag");
        assert_eq!(token_for_tests(&connect(Some(""), dir.clone())).unwrap(), "s3cret", "empty flag = none");
        std::fs::write(dir.join("token"), "\n").unwrap();
        assert!(token_for_tests(&connect(None, dir.clone())).unwrap_err().to_string().contains("is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
