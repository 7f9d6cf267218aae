//! Property-based tests of the gateway's routing table, `Router`, against a
//! brute-force reference model written from the documented semantics
//! (`gateway/src/router.rs`):
//!
//! * the request's host is compared case-insensitively, with a `:port`
//!   (digits) and a trailing `.` removed; a request without a host only
//!   matches routes without one;
//! * host tiers, tried in order: routes for exactly that host, then wildcard
//!   routes `*.suffix` (the host has at least one more label; the longest
//!   suffix first), then routes without a host;
//! * within a tier the longest path prefix wins, matching whole segments
//!   (`/api` matches `/api` and `/api/x`, not `/apis`; a route's trailing
//!   `/` does not count).
//!
//! Every property runs 256 cases by default; `PROPTEST_CASES=N` raises that
//! for a long run (see `docs/fuzzing.md`):
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test --release -p shoal-gateway --test proptest_router
//! ```

use std::cmp::Reverse;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::contextualize_config;
use shoal_api::Route;
use shoal_gateway::Router;

/// 256 cases per property unless `PROPTEST_CASES` says otherwise (the
/// `proptest!` macro applies the `PROPTEST_*` environment variables on top of
/// this too). No regression files: a failure prints its minimal input, which
/// belongs in a named test.
fn config() -> ProptestConfig {
    contextualize_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })
}

// ---------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------

/// How specific a route's match is; smaller is better. Compared as a tuple:
/// host tier (0 exact, 1 wildcard, 2 any host), then the longer wildcard
/// suffix, then the longer path prefix (in segments).
type Rank = (u8, Reverse<usize>, Reverse<usize>);

/// The request host as routes see it: lowercase, without `:port` or a
/// trailing dot. An IPv6 literal keeps its brackets.
fn model_host(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    let without_port = if lower.starts_with('[') {
        match lower.find(']') {
            Some(end) if lower[end + 1..].strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) => {
                lower[..=end].to_owned()
            }
            _ => lower,
        }
    } else {
        match lower.split_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
            _ => lower,
        }
    };
    without_port.strip_suffix('.').map(str::to_owned).unwrap_or(without_port)
}

/// The segments a route's path prefix must match: `/api/` → `["", "api"]`,
/// `/` → `[""]`.
fn route_segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').collect()
}

/// How `route` matches the request, if it does.
fn rank(route: &Route, host: Option<&str>, path: &str) -> Option<Rank> {
    let (tier, suffix) = match (&route.host, host) {
        (None, _) => (2, 0),
        (Some(_), None) => return None,
        (Some(pattern), Some(raw)) => {
            let request = model_host(raw);
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                // At least one label before ".suffix".
                Some(suffix) => {
                    let before = request.strip_suffix(suffix)?.strip_suffix('.')?;
                    if before.is_empty() {
                        return None;
                    }
                    (1, suffix.len())
                }
                None if request == pattern => (0, 0),
                None => return None,
            }
        }
    };
    let wanted = route_segments(&route.path);
    let segments: Vec<&str> = path.split('/').collect();
    if !segments.starts_with(&wanted) {
        return None;
    }
    Some((tier, Reverse(suffix), Reverse(wanted.len())))
}

/// Brute force: the indexes of the routes with the best rank (ascending),
/// and that rank.
fn model(routes: &[Route], host: Option<&str>, path: &str) -> (Vec<usize>, Option<Rank>) {
    let ranked: Vec<(usize, Rank)> =
        routes.iter().enumerate().filter_map(|(i, r)| rank(r, host, path).map(|k| (i, k))).collect();
    let best = ranked.iter().map(|(_, k)| *k).min();
    (ranked.iter().filter(|(_, k)| Some(*k) == best).map(|(i, _)| *i).collect(), best)
}

fn router(routes: &[Route]) -> Router<usize> {
    Router::new(routes.iter().cloned().enumerate().map(|(i, r)| (r, i)))
}

// ---------------------------------------------------------------------------
// Strategies: small alphabets so that hosts collide and prefixes overlap.
// ---------------------------------------------------------------------------

const ROUTE_HOSTS: [&str; 11] = [
    "a.test",
    "A.Test",
    "b.a.test",
    "test",
    "c.test",
    "*.test",
    "*.a.test",
    "*.b.a.test",
    "*.TEST",
    "*.c.test",
    "x.b.a.test",
];
/// Path segments, `a` and `b` repeated so that prefixes often overlap.
const SEGMENTS: [&str; 13] = ["a", "a", "a", "a", "b", "b", "b", "ab", "A", "", "a%2Fb", "%61", "é"];
const LABELS: [&str; 6] = ["a", "b", "c", "x", "test", "TEST"];
/// Request host names close to the route hosts: equal, one label more, one
/// label less.
const NEAR_HOSTS: [&str; 12] = [
    "a.test",
    "b.a.test",
    "x.b.a.test",
    "y.x.b.a.test",
    "test",
    "c.test",
    "x.c.test",
    "x.test",
    "x.a.test",
    "b.test",
    "a.b.test",
    "atest",
];

/// A validated-looking path: `/`, segments from a small alphabet, maybe a
/// trailing `/`.
fn route_path() -> impl Strategy<Value = String> {
    (prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 0..4), any::<bool>()).prop_map(
        |(segments, slash)| {
            let mut path = String::from("/");
            path.push_str(&segments.join("/"));
            if slash && !path.ends_with('/') {
                path.push('/');
            }
            path
        },
    )
}

fn route() -> impl Strategy<Value = Route> {
    (prop::option::weighted(0.6, prop::sample::select(ROUTE_HOSTS.to_vec())), route_path())
        .prop_map(|(host, path)| Route::new(host.map(str::to_owned), path))
}

fn routes() -> impl Strategy<Value = Vec<Route>> {
    prop::collection::vec(route(), 0..20)
}

/// A request host: labels from the same alphabet in random case, maybe a
/// trailing dot, maybe a port; or an IP literal, an empty host, or none.
fn request_host() -> impl Strategy<Value = Option<String>> {
    let labels = prop_oneof![
        prop::collection::vec(prop::sample::select(LABELS.to_vec()), 1..5).prop_map(|l| l.join(".")),
        prop::sample::select(NEAR_HOSTS.to_vec()).prop_map(str::to_owned),
    ];
    let name = (labels, any::<u64>(), any::<bool>(), prop::option::of(prop_oneof![Just(String::new()), "[0-9]{1,5}"]))
        .prop_map(|(labels, case, dot, port)| {
            let mut host: String = labels
                .chars()
                .enumerate()
                .map(|(i, c)| if (case >> (i % 64)) & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            if dot {
                host.push('.');
            }
            if let Some(port) = port {
                host.push(':');
                host.push_str(&port);
            }
            host
        });
    prop_oneof![
        8 => name.prop_map(Some),
        1 => prop::sample::select(vec!["", "[::1]", "[::1]:8080", "127.0.0.1:80", "a.test:http", ":80", ".test"])
            .prop_map(|h| Some(h.to_owned())),
        1 => Just(None),
    ]
}

/// A request path: segments from the same alphabet (and `.`/`..`), with
/// `//`, trailing slashes; sometimes no leading `/`, `*` or empty.
fn request_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        6 => prop::sample::select(SEGMENTS.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec![".", "..", "%", "%2F", "a?x=1", "a#f", "abc"]).prop_map(str::to_owned),
    ];
    prop_oneof![
        10 => (prop::collection::vec(segment, 0..5), any::<bool>()).prop_map(|(segments, slash)| {
            let mut path = format!("/{}", segments.join("/"));
            if slash {
                path.push('/');
            }
            path
        }),
        1 => prop::sample::select(vec!["", "*", "a", "a/b", "//", "///a"]).prop_map(str::to_owned),
    ]
}

fn request() -> impl Strategy<Value = (Option<String>, String)> {
    (request_host(), request_path())
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// The router picks a route of the best rank the brute-force model finds,
    /// and among equally specific routes (same host, same prefix up to a
    /// trailing `/`) the one listed first; no match exactly when the model
    /// finds none.
    #[test]
    fn router_matches_model(routes in routes(), requests in prop::collection::vec(request(), 1..16)) {
        let router = router(&routes);
        prop_assert_eq!(router.is_empty(), routes.is_empty());
        for (host, path) in &requests {
            let got = router.route(host.as_deref(), path).copied();
            let (best, rank) = model(&routes, host.as_deref(), path);
            match got {
                None => prop_assert!(best.is_empty(), "no match for {:?} {:?}; model: {:?} {:?}", host, path, best, rank),
                Some(i) => {
                    prop_assert!(
                        best.contains(&i),
                        "{:?} {:?} went to route {} {:?}; the model's best: {:?} (rank {:?})",
                        host, path, i, routes[i], best.iter().map(|&b| &routes[b]).collect::<Vec<_>>(), rank
                    );
                    prop_assert_eq!(Some(i), best.first().copied(), "ties go to the route listed first");
                }
            }
        }
    }

    /// Adding a route changes a request's answer only to the new route: no
    /// request loses its match, and none moves to another, less specific
    /// route (a shorter prefix in the same tier, or a later tier).
    #[test]
    fn adding_a_route_only_redirects_to_it(
        routes in routes(),
        extra in route(),
        position in any::<Index>(),
        requests in prop::collection::vec(request(), 1..16),
    ) {
        let before = router(&routes);
        let at = position.index(routes.len() + 1);
        let mut grown = routes.clone();
        grown.insert(at, extra.clone());
        let after = router(&grown);
        for (host, path) in &requests {
            let (host, path) = (host.as_deref(), path.as_str());
            let old = before.route(host, path).map(|&i| if i >= at { i + 1 } else { i });
            let new = after.route(host, path).copied();
            if let Some(old) = old {
                let new = new.ok_or_else(|| TestCaseError::fail(format!("{host:?} {path:?} lost its match")))?;
                let old_rank = rank(&grown[old], host, path);
                let new_rank = rank(&grown[new], host, path);
                prop_assert!(new_rank <= old_rank, "{:?} {:?}: {:?} -> less specific {:?}", host, path, grown[old], grown[new]);
                prop_assert!(new == old || new == at, "{:?} {:?}: moved from {:?} to an old route {:?}", host, path, grown[old], grown[new]);
            } else if let Some(new) = new {
                prop_assert_eq!(new, at, "{:?} {:?} newly matched an old route", host, path);
            }
        }
    }

    /// The router ignores the order routes are listed in, except to break
    /// ties: any permutation gives an equally specific answer.
    #[test]
    fn route_order_only_breaks_ties(
        routes in routes(),
        swaps in prop::collection::vec((any::<Index>(), any::<Index>()), 0..10),
        requests in prop::collection::vec(request(), 1..16),
    ) {
        let mut shuffled = routes.clone();
        if !shuffled.is_empty() {
            for (a, b) in &swaps {
                let (a, b) = (a.index(shuffled.len()), b.index(shuffled.len()));
                shuffled.swap(a, b);
            }
        }
        let (one, two) = (router(&routes), router(&shuffled));
        for (host, path) in &requests {
            let (host, path) = (host.as_deref(), path.as_str());
            let first = one.route(host, path).map(|&i| rank(&routes[i], host, path));
            let second = two.route(host, path).map(|&i| rank(&shuffled[i], host, path));
            prop_assert_eq!(first, second, "{:?} {:?}", host, path);
        }
    }

    /// Arbitrary strings as route hosts and paths and as request hosts and
    /// paths: no panic, and any answer is one of the routes.
    #[test]
    fn arbitrary_strings_never_panic(
        routes in prop::collection::vec((prop::option::of(any::<String>()), any::<String>()), 0..8),
        requests in prop::collection::vec((prop::option::of(any::<String>()), any::<String>()), 1..8),
        valid in routes(),
    ) {
        let arbitrary: Vec<Route> = routes.into_iter().map(|(host, path)| Route::new(host, path)).collect();
        for table in [&arbitrary, &valid] {
            let router = router(table);
            for (host, path) in &requests {
                if let Some(&i) = router.route(host.as_deref(), path) {
                    prop_assert!(i < table.len());
                }
            }
        }
    }

    /// Request hosts that differ only in case, a port or a trailing dot get
    /// the same answer.
    #[test]
    fn host_case_port_and_dot_do_not_matter(
        routes in routes(),
        labels in prop::collection::vec(prop::sample::select(LABELS.to_vec()), 1..5),
        case in any::<u64>(),
        port in 0u32..70_000,
        path in request_path(),
    ) {
        let router = router(&routes);
        let plain = labels.join(".").to_ascii_lowercase();
        let cased: String = plain
            .chars()
            .enumerate()
            .map(|(i, c)| if (case >> (i % 64)) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect();
        let want = router.route(Some(&plain), &path);
        for variant in [cased.clone(), format!("{cased}:{port}"), format!("{cased}."), format!("{cased}.:{port}")] {
            prop_assert_eq!(router.route(Some(&variant), &path), want, "{:?} vs {:?}", variant, plain);
        }
    }
}
