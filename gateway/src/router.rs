//! Routing: Host and longest path prefix to a backend.
//!
//! Architecture Invariant: the router does no IO and takes no locks; the
//! gateway swaps in a new one whenever routes change.
//!
//! A request's host (lowercased, port removed) picks a tier of routes, tried
//! in order: routes for exactly that host, then wildcard routes (`*.example.com`,
//! the longest suffix first), then routes without a host. Within a tier the
//! longest path prefix wins. Prefixes match whole path segments, as
//! Kubernetes Ingress `Prefix` paths do: `/api` matches `/api` and
//! `/api/users`, not `/apis`.

use shoal_api::Route;

/// A routing table from [`Route`]s to backends of type `T`.
#[derive(Debug, Clone)]
pub struct Router<T> {
    /// Sorted by tier, then by path length, longest first.
    entries: Vec<Entry<T>>,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    host: HostMatch,
    /// The prefix without a trailing slash; empty for `/`.
    prefix: String,
    target: T,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum HostMatch {
    Exact(String),
    /// The suffix including its dot, such as `.example.com`.
    Wildcard(String),
    Any,
}

impl HostMatch {
    fn tier(&self) -> (u8, usize) {
        match self {
            HostMatch::Exact(_) => (0, 0),
            // Longer suffixes are more specific.
            HostMatch::Wildcard(suffix) => (1, usize::MAX - suffix.len()),
            HostMatch::Any => (2, 0),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            HostMatch::Any => true,
        }
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<T: Clone> Router<T> {
    /// Builds a router from routes and their targets.
    pub fn new(routes: impl IntoIterator<Item = (Route, T)>) -> Self {
        let mut entries: Vec<Entry<T>> = routes
            .into_iter()
            .map(|(route, target)| {
                let host = match route.host {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => HostMatch::Wildcard(suffix.to_ascii_lowercase()),
                        None => HostMatch::Exact(h.to_ascii_lowercase()),
                    },
                };
                let prefix = route.path.trim_end_matches('/').to_owned();
                Entry { host, prefix, target }
            })
            .collect();
        entries.sort_by(|a, b| a.host.tier().cmp(&b.host.tier()).then(b.prefix.len().cmp(&a.prefix.len())));
        Self { entries }
    }

    /// The target for a request to `host` (as sent: any case, maybe with a
    /// port; `None` when the request had none) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&T> {
        let host = host.map(normalize_host);
        self.entries
            .iter()
            .filter(|e| match &host {
                Some(h) => e.host.matches(h),
                None => e.host == HostMatch::Any,
            })
            .find(|e| prefix_matches(&e.prefix, path))
            .map(|e| &e.target)
    }

    /// Whether the router has no routes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn normalize_host(host: &str) -> String {
    let without_port = match host.rsplit_once(':') {
        // An IPv6 literal such as [::1]:8080 keeps its brackets.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: &str) -> Route {
        Route::new(host.map(str::to_owned), path.to_owned())
    }

    fn router() -> Router<&'static str> {
        Router::new([
            (route(None, "/"), "root"),
            (route(None, "/api"), "api"),
            (route(None, "/api/v2/"), "api-v2"),
            (route(Some("shop.example.com"), "/"), "shop"),
            (route(Some("shop.example.com"), "/cart"), "cart"),
            (route(Some("*.example.com"), "/"), "wild"),
            (route(Some("*.eu.example.com"), "/"), "wild-eu"),
        ])
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let r = router();
        assert_eq!(r.route(None, "/"), Some(&"root"));
        assert_eq!(r.route(None, "/api"), Some(&"api"));
        assert_eq!(r.route(None, "/api/users"), Some(&"api"));
        assert_eq!(r.route(None, "/apis"), Some(&"root"));
        assert_eq!(r.route(None, "/api/v2"), Some(&"api-v2"));
        assert_eq!(r.route(None, "/api/v2/x"), Some(&"api-v2"));
        assert_eq!(r.route(None, "/api/v20"), Some(&"api"));
    }

    #[test]
    fn host_tiers_exact_then_wildcard_then_any() {
        let r = router();
        assert_eq!(r.route(Some("shop.example.com"), "/x"), Some(&"shop"));
        assert_eq!(r.route(Some("SHOP.example.com:8080"), "/cart/1"), Some(&"cart"));
        assert_eq!(r.route(Some("blog.example.com"), "/"), Some(&"wild"));
        assert_eq!(r.route(Some("a.eu.example.com"), "/"), Some(&"wild-eu"));
        assert_eq!(r.route(Some("example.com"), "/api"), Some(&"api"));
        assert_eq!(r.route(Some("other.org"), "/"), Some(&"root"));
        assert_eq!(r.route(Some("127.0.0.1:8080"), "/"), Some(&"root"));
        assert_eq!(r.route(Some("[::1]:8080"), "/"), Some(&"root"));
    }

    #[test]
    fn no_match_without_a_catch_all() {
        let r = Router::new([(route(Some("a.test"), "/app"), 1)]);
        assert_eq!(r.route(Some("a.test"), "/"), None);
        assert_eq!(r.route(Some("b.test"), "/app"), None);
        assert_eq!(r.route(None, "/app"), None);
        assert_eq!(r.route(Some("a.test"), "/app/x"), Some(&1));
    }
}
