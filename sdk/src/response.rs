//! The HTTP response a handler returns.

use std::fmt;

use crate::request::{DebugHeaders, HeaderList, find_header};

/// The `Content-Type` used by [`Response::ok`] and [`Response::text`].
pub const TEXT_PLAIN_UTF8: &str = "text/plain; charset=utf-8";

/// An HTTP response, fully buffered: status, header fields and body.
///
/// Build one with [`Response::new`], [`Response::ok`] or [`Response::text`]
/// and refine it with the `with_*` methods:
///
/// ```
/// use shoal_sdk::Response;
///
/// let resp = Response::text(404, "no such page\n").with_header("Cache-Control", "no-store");
/// assert_eq!(resp.status(), 404);
/// assert_eq!(resp.header("content-type"), Some("text/plain; charset=utf-8"));
/// assert_eq!(resp.header("cache-control"), Some("no-store"));
/// assert_eq!(resp.body(), b"no such page\n");
/// ```
///
/// When sent, a `Content-Length` header is added automatically unless one
/// was set explicitly (or the status forbids a body). Headers the host
/// refuses (hop-by-hop fields such as `Connection` or `Transfer-Encoding`,
/// or syntactically invalid ones) are dropped with a warning on stderr.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: HeaderList,
    body: Vec<u8>,
}

impl Response {
    /// A response with the given status code, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    /// `200 OK` with a `text/plain; charset=utf-8` body.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::text(200, body)
    }

    /// A response with the given status and a `text/plain; charset=utf-8`
    /// body.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status).with_header("content-type", TEXT_PLAIN_UTF8).with_body(body)
    }

    /// Sets header `name` to `value`, replacing any existing values of that
    /// header (names compare case-insensitively). Use
    /// [`Response::append_header`] to send a field more than once.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let name = name.into();
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }

    /// Adds another value for header `name`, keeping existing ones.
    #[must_use]
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Replaces the status code.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (case-insensitive), if present and
    /// valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All header fields as `(name, raw value)`, in insertion order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Consumes the response and returns its body.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Splits the response into status, headers and body for sending.
    pub(crate) fn into_parts(self) -> (u16, HeaderList, Vec<u8>) {
        (self.status, self.headers, self.body)
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &DebugHeaders(&self.headers))
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

/// Whether a response with this status may carry a body (and so a
/// `Content-Length`), per RFC 9110.
pub(crate) fn status_allows_body(status: u16) -> bool {
    !matches!(status, 100..=199 | 204 | 304)
}

/// Headers to send: the user's, plus `content-length` if it is missing and
/// allowed.
pub(crate) fn wire_headers(status: u16, mut headers: HeaderList, body_len: usize) -> HeaderList {
    if status_allows_body(status) && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        headers.push(("content-length".to_owned(), body_len.to_string().into_bytes()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors() {
        let r = Response::ok("hi");
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("Content-Type"), Some(TEXT_PLAIN_UTF8));
        assert_eq!(r.body(), b"hi");

        let r = Response::new(204);
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers().count(), 0);
        assert!(r.body().is_empty());

        let r = Response::text(418, String::from("teapot")).with_status(503);
        assert_eq!(r.status(), 503);
        assert_eq!(r.into_body(), b"teapot");
    }

    #[test]
    fn with_header_replaces_append_header_adds() {
        let r = Response::ok("{}")
            .with_header("Content-Type", "application/json")
            .append_header("set-cookie", "a=1")
            .append_header("Set-Cookie", "b=2");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.headers().filter(|(n, _)| *n == "content-type" || *n == "Content-Type").count(), 1);
        let cookies: Vec<_> =
            r.headers().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| v).collect();
        assert_eq!(cookies, [&b"a=1"[..], &b"b=2"[..]]);
    }

    #[test]
    fn content_length_is_added_when_missing() {
        let h = wire_headers(200, vec![], 12);
        assert_eq!(h, [("content-length".to_owned(), b"12".to_vec())]);

        let explicit = vec![("Content-Length".to_owned(), b"3".to_vec())];
        assert_eq!(wire_headers(200, explicit.clone(), 3), explicit);

        assert!(wire_headers(204, vec![], 0).is_empty());
        assert!(wire_headers(304, vec![], 0).is_empty());
        assert_eq!(wire_headers(404, vec![], 0).len(), 1);
    }
}
