//! The incoming HTTP request as seen by a handler.

use std::fmt;

/// Header fields as `(name, raw value)` pairs, in wire order.
pub(crate) type HeaderList = Vec<(String, Vec<u8>)>;

/// An incoming HTTP request, fully buffered (head and body).
///
/// The SDK reads the whole request body before the handler runs, so every
/// accessor is a cheap borrow. Requests can also be built by hand with
/// [`Request::new`], which is handy for unit-testing a handler on the host:
///
/// ```
/// use shoal_sdk::Request;
///
/// let req = Request::new("POST", "/echo?x=1&name=J%C3%BCrgen+B")
///     .with_header("Content-Type", "text/plain")
///     .with_body("hello");
///
/// assert_eq!(req.method(), "POST");
/// assert_eq!(req.path(), "/echo");
/// assert_eq!(req.query(), Some("x=1&name=J%C3%BCrgen+B"));
/// assert_eq!(req.query_param("name").as_deref(), Some("Jürgen B"));
/// assert_eq!(req.header("content-type"), Some("text/plain"));
/// assert_eq!(req.body_text(), Ok("hello"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    /// The request target as received (`/path?query`).
    path_and_query: String,
    /// Byte offset of the `?` in `path_and_query`, if there is one.
    query_start: Option<usize>,
    authority: Option<String>,
    headers: HeaderList,
    body: Vec<u8>,
}

impl Request {
    /// Builds a request by hand, e.g. for tests.
    ///
    /// `path_and_query` is the request target such as `/items?id=3`; an empty
    /// string is treated as `/`. The request starts with no headers, no
    /// authority and an empty body.
    pub fn new(method: impl Into<String>, path_and_query: impl Into<String>) -> Self {
        let mut path_and_query = path_and_query.into();
        if path_and_query.is_empty() {
            path_and_query.push('/');
        }
        let query_start = path_and_query.find('?');
        Self {
            method: method.into(),
            path_and_query,
            query_start,
            authority: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends a header (builder style). Existing headers with the same name
    /// are kept, as HTTP allows repeated fields.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body (builder style).
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the authority (`host[:port]`) (builder style).
    #[must_use]
    pub fn with_authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// The request method in upper case as sent by the client, e.g. `"GET"`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path without the query string, e.g. `"/items"` for `/items?id=3`.
    /// Never empty. Not percent-decoded.
    pub fn path(&self) -> &str {
        match self.query_start {
            Some(i) => &self.path_and_query[..i],
            None => &self.path_and_query,
        }
    }

    /// The raw query string without the leading `?`, e.g. `Some("id=3")`, or
    /// `None` if the target has no `?`. Not percent-decoded.
    pub fn query(&self) -> Option<&str> {
        self.query_start.map(|i| &self.path_and_query[i + 1..])
    }

    /// The full request target as received, e.g. `"/items?id=3"`.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The value of the first query parameter called `name`, percent-decoded
    /// (`+` is decoded as a space, invalid UTF-8 is replaced with U+FFFD).
    ///
    /// A parameter present without `=` (as in `?verbose`) yields `Some("")`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?.split('&').filter(|pair| !pair.is_empty()).find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The authority (`host[:port]`) the request was addressed to, if the
    /// host supplied one.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// The first value of header `name` (matched case-insensitively), if it is
    /// present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All header fields in the order received, as `(name, raw value)`.
    /// Repeated fields appear once per value.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The complete request body (empty if the client sent none).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The request body as UTF-8 text.
    ///
    /// # Errors
    ///
    /// Returns the UTF-8 error if the body is not valid UTF-8.
    pub fn body_text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// Consumes the request and returns its body without copying.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Assembles a request from the parts read off the wire.
    pub(crate) fn from_parts(
        method: String,
        path_and_query: String,
        authority: Option<String>,
        headers: HeaderList,
        body: Vec<u8>,
    ) -> Self {
        let mut req = Self::new(method, path_and_query);
        req.authority = authority;
        req.headers = headers;
        req.body = body;
        req
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("authority", &self.authority)
            .field("headers", &DebugHeaders(&self.headers))
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Renders header values as (lossy) text rather than byte arrays.
pub(crate) struct DebugHeaders<'a>(pub(crate) &'a [(String, Vec<u8>)]);

impl fmt::Debug for DebugHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned()))).finish()
    }
}

/// First value of header `name` (case-insensitive), if valid UTF-8.
pub(crate) fn find_header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Decodes `%XX` escapes and `+` (as space) in a query component. Malformed
/// escapes are kept literally; invalid UTF-8 is replaced with U+FFFD.
fn percent_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_path_and_query() {
        let r = Request::new("GET", "/a/b?x=1&y=2");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.query(), Some("x=1&y=2"));
        assert_eq!(r.path_and_query(), "/a/b?x=1&y=2");

        let r = Request::new("GET", "/plain");
        assert_eq!(r.path(), "/plain");
        assert_eq!(r.query(), None);

        let r = Request::new("GET", "/empty?");
        assert_eq!(r.path(), "/empty");
        assert_eq!(r.query(), Some(""));

        let r = Request::new("GET", "");
        assert_eq!(r.path(), "/");
        assert_eq!(r.query(), None);

        // Only the first `?` splits.
        let r = Request::new("GET", "/q?a=?b");
        assert_eq!(r.path(), "/q");
        assert_eq!(r.query(), Some("a=?b"));
    }

    #[test]
    fn query_params() {
        let r = Request::new("GET", "/alloc?mb=16&flag&x=a%20b+c&mb=32&e=&bad=%zz%4");
        assert_eq!(r.query_param("mb").as_deref(), Some("16"));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("x").as_deref(), Some("a b c"));
        assert_eq!(r.query_param("e").as_deref(), Some(""));
        assert_eq!(r.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(Request::new("GET", "/").query_param("mb"), None);
        assert_eq!(Request::new("GET", "/?na%6De=v").query_param("name").as_deref(), Some("v"));
        assert_eq!(Request::new("GET", "/?s=%E2%9C%93%FF").query_param("s").as_deref(), Some("\u{2713}\u{FFFD}"));
    }

    #[test]
    fn header_lookup_is_case_insensitive_first_value() {
        let r = Request::new("GET", "/")
            .with_header("X-Forwarded-For", "10.0.0.1, 10.0.0.2")
            .with_header("x-forwarded-for", "192.168.0.1")
            .with_header("X-Binary", vec![0xff, 0xfe]);
        assert_eq!(r.header("x-forwarded-for"), Some("10.0.0.1, 10.0.0.2"));
        assert_eq!(r.header("X-FORWARDED-FOR"), Some("10.0.0.1, 10.0.0.2"));
        assert_eq!(r.header("x-binary"), None);
        assert_eq!(r.header("absent"), None);
        let all: Vec<_> = r.headers().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], ("x-forwarded-for", &b"192.168.0.1"[..]));
    }

    #[test]
    fn body_accessors() {
        let r = Request::new("POST", "/").with_body(vec![0xff]);
        assert!(r.body_text().is_err());
        assert_eq!(r.body(), &[0xff]);
        assert_eq!(r.into_body(), vec![0xff]);
    }

    #[test]
    fn debug_is_readable() {
        let r = Request::new("GET", "/x").with_header("a", "b");
        let s = format!("{r:?}");
        assert!(s.contains("\"/x\"") && s.contains("(\"a\", \"b\")"), "{s}");
    }
}
