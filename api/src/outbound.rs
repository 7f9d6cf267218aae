//! `spec.allowOutbound`: where a service's guests may send HTTP requests.
//!
//! Each entry is `scheme://host[:port]`, in the spirit of Spin's
//! `allowed_outbound_hosts`:
//!
//! - scheme: `http`, `https`, or `*` (either);
//! - host: a name (`kubia`, `api.example.com`), an IP address (`127.0.0.1`,
//!   `[::1]`), `*.example.org` (any name under `example.org`, not
//!   `example.org` itself), or `*` (any host);
//! - port: a number, or `*` (any); without one, the scheme's default (80
//!   for `http`, 443 for `https`; either for `*`).
//!
//! Nothing else: a path, a query, user information or an empty host make
//! the entry an error. Matching is on the URL the guest wrote, before any
//! name is resolved: `http://kubia` allows calls to the service `kubia`.
//! An empty list (the default) denies every call.

use std::fmt;

/// One parsed `spec.allowOutbound` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    /// `None`: either scheme.
    scheme: Option<Secure>,
    host: HostPattern,
    /// `None`: any port.
    port: PortPattern,
    /// The entry as written, for messages.
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secure {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.org`: the suffix `.example.org`, lowercased.
    Subdomains(String),
    /// A name or address, lowercased (IPv6 in brackets).
    Exact(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Any,
    /// The scheme's default port.
    Default,
    Exact(u16),
}

impl OutboundRule {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<OutboundRule, String> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!("{text:?} has no scheme: write it as scheme://host[:port], e.g. \"http://kubia\" or \"https://api.example.com\"")
        })?;
        let scheme = match scheme {
            "http" => Some(Secure::Http),
            "https" => Some(Secure::Https),
            "*" => None,
            other => return Err(format!("{text:?}: the scheme {other:?} is not http, https or *")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(at) = authority.find(['/', '?', '#']) {
            return Err(format!("{text:?}: an entry names scheme, host and port only; remove {:?}", &authority[at..]));
        }
        if authority.contains('@') {
            return Err(format!("{text:?}: an entry cannot carry user information"));
        }
        let (host, port) = split_port(authority).map_err(|why| format!("{text:?}: {why}"))?;
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_name(suffix).map_err(|why| format!("{text:?}: {why}"))?;
            HostPattern::Subdomains(format!(".{suffix}"))
        } else if host.starts_with('[') {
            let inner = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            if inner.and_then(|h| h.parse::<std::net::Ipv6Addr>().ok()).is_none() {
                return Err(format!("{text:?}: {host:?} is not an IPv6 address in brackets"));
            }
            HostPattern::Exact(host)
        } else {
            check_name(&host).map_err(|why| format!("{text:?}: {why}"))?;
            HostPattern::Exact(host)
        };
        Ok(OutboundRule { scheme, host, port, text: text.to_owned() })
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry.
    /// `host` as in a URL (IPv6 in brackets), any case; `https` is the
    /// only secure scheme.
    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        let scheme_ok = match self.scheme {
            None => true,
            Some(Secure::Https) => https,
            Some(Secure::Http) => !https,
        };
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            HostPattern::Exact(exact) => host == exact,
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Exact(p) => p == port,
            PortPattern::Default => match self.scheme {
                None => port == 80 || port == 443,
                Some(_) => port == if https { 443 } else { 80 },
            },
        };
        scheme_ok && host_ok && port_ok
    }

    /// The entry as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for OutboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A service's whole `spec.allowOutbound`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowOutbound {
    rules: Vec<OutboundRule>,
}

impl AllowOutbound {
    /// Parses every entry; the error names the first bad one's index.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowOutbound, (usize, String)> {
        let rules = entries
            .iter()
            .enumerate()
            .map(|(i, e)| OutboundRule::parse(e.as_ref()).map_err(|why| (i, why)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowOutbound { rules })
    }

    /// The entry that allows `scheme://host:port`, if one does.
    pub fn allowing(&self, https: bool, host: &str, port: u16) -> Option<&OutboundRule> {
        self.rules.iter().find(|rule| rule.allows(https, host, port))
    }

    /// Whether the list is empty (every call denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Splits `host[:port]` (IPv6 in brackets).
fn split_port(authority: &str) -> Result<(&str, PortPattern), String> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) if end + 1 == authority.len() => (authority, None),
            Some(end) => match authority[end + 1..].strip_prefix(':') {
                Some(port) => (&authority[..=end], Some(port)),
                None => return Err("characters after the IPv6 address".to_owned()),
            },
            None => return Err("an IPv6 address without its closing ']'".to_owned()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty (write * for any host)".to_owned());
    }
    let port = match port {
        None => PortPattern::Default,
        Some("*") => PortPattern::Any,
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => PortPattern::Exact(p),
            _ => return Err(format!("the port {port:?} is not a number in 1..=65535 or *")),
        },
    };
    Ok((host, port))
}

/// A host name or IPv4 address: dot-separated labels of letters, digits
/// and hyphens (underscores too, as some names have), none empty.
fn check_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok { Ok(()) } else { Err(format!("{name:?} is not a host name, an IP address, *.domain or *")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> OutboundRule {
        OutboundRule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn entries_match_scheme_host_and_port() {
        let kubia = rule("http://kubia");
        assert!(kubia.allows(false, "kubia", 80));
        assert!(kubia.allows(false, "KUBIA", 80));
        assert!(!kubia.allows(true, "kubia", 443), "https is another scheme");
        assert!(!kubia.allows(false, "kubia", 8080), "the default port only");
        assert!(!kubia.allows(false, "kubia.example.com", 80));

        let api = rule("https://api.example.com");
        assert!(api.allows(true, "api.example.com", 443));
        assert!(!api.allows(false, "api.example.com", 80));

        let wild = rule("https://*.example.org:8443");
        assert!(wild.allows(true, "a.example.org", 8443));
        assert!(wild.allows(true, "a.b.example.org", 8443));
        assert!(!wild.allows(true, "example.org", 8443), "the apex is not a subdomain");
        assert!(!wild.allows(true, "badexample.org", 8443));
        assert!(!wild.allows(true, "a.example.org", 443));

        let local = rule("http://127.0.0.1:*");
        assert!(local.allows(false, "127.0.0.1", 41234));
        let v6 = rule("http://[::1]:8080");
        assert!(v6.allows(false, "[::1]", 8080));
        let any = rule("*://*:*");
        assert!(any.allows(true, "anything", 1) && any.allows(false, "x.y", 65535));
        let either = rule("*://kubia");
        assert!(either.allows(false, "kubia", 80) && either.allows(true, "kubia", 443));
        assert!(rule("http://kubia/").allows(false, "kubia", 80), "a trailing slash is no path");
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (text, says) in [
            ("kubia", "no scheme"),
            ("ftp://kubia", "not http, https or *"),
            ("http://kubia/api", "remove \"/api\""),
            ("http://kubia?x=1", "remove"),
            ("http://user@kubia", "user information"),
            ("http://", "host is empty"),
            ("http://:80", "host is empty"),
            ("http://kubia:http", "not a number"),
            ("http://kubia:0", "not a number"),
            ("http://kubia:70000", "not a number"),
            ("http://ku bia", "not a host name"),
            ("http://*.", "not a host name"),
            ("http://[::1", "closing"),
            ("http://[zz]", "IPv6"),
            ("http://a..b", "not a host name"),
        ] {
            let error = OutboundRule::parse(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
        let (index, _) = AllowOutbound::parse(&["http://kubia", "bad"]).unwrap_err();
        assert_eq!(index, 1);
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let list = AllowOutbound::parse::<&str>(&[]).unwrap();
        assert!(list.is_empty());
        assert!(list.allowing(false, "kubia", 80).is_none());
        let list = AllowOutbound::parse(&["http://a", "http://kubia"]).unwrap();
        assert_eq!(list.allowing(false, "kubia", 80).map(OutboundRule::as_str), Some("http://kubia"));
    }
}
