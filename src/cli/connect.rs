//! Where the admin API is and how to authenticate: `--server` parsing, the
//! token lookup (`--token`, `SHOAL_TOKEN`, `<data-dir>/token`), and the
//! small text helpers requests need.

use std::fmt;
use std::io;

use anyhow::anyhow;
use hyper::Uri;

use super::ConnectArgs;

/// Where `shoal up` serves its admin API by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8081";

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

/// Reads the token: `--token`/`SHOAL_TOKEN`, else `<data-dir>/token`.
/// Returns the token and, for messages, where else it could come from.
pub fn token(connect: &ConnectArgs) -> anyhow::Result<(String, String)> {
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
    fn token_sources() {
        let dir = std::env::temp_dir().join(format!("shoal-cli-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = token(&connect(None, dir.clone())).unwrap_err().to_string();
        assert!(err.starts_with("no API token: shoal up writes it to <data-dir>/token when it starts"), "{err}");
        assert!(err.contains(&dir.join("token").display().to_string()), "{err}");
        assert!(err.contains("--token or SHOAL_TOKEN"), "{err}");
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        assert_eq!(token(&connect(None, dir.clone())).unwrap().0, "s3cret");
        assert_eq!(token(&connect(Some("flag"), dir.clone())).unwrap().0, "flag");
        assert_eq!(token(&connect(Some(""), dir.clone())).unwrap().0, "s3cret", "empty flag = none");
        std::fs::write(dir.join("token"), "\n").unwrap();
        assert!(token(&connect(None, dir.clone())).unwrap_err().to_string().contains("is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
