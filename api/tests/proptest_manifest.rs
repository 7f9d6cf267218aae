//! Property-based tests of manifest parsing (`parse_manifests`,
//! `validate_set`) and of the quantity parsers (`parse_memory`, `parse_cpu`).
//!
//! Every property runs 256 cases by default, so this file takes a few seconds
//! as part of `cargo test --workspace --release`. `PROPTEST_CASES=N` raises
//! that for a long run (see `docs/fuzzing.md`):
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test --release -p shoal-api --test proptest_manifest
//! ```
//!
//! The properties:
//!
//! * robustness: arbitrary strings, arbitrary bytes (lossy UTF-8), YAML-ish
//!   text from a grammar over the real field names, and valid manifests with
//!   random subtrees replaced never make `parse_manifests` panic; every error
//!   has a message and a field path made of known segments (or the YAML
//!   line/column); every accepted manifest satisfies the documented limits;
//! * round trip: valid manifests generated field by field (names, replicas,
//!   routes, env, labels, quantities as (n, unit), CPU as milli-cores or
//!   decimal cores, humantime timeouts, `spec.autoscale` with percentages
//!   as `70` or `70%`), written in block or flow style with any quoting,
//!   parse to exactly the generated values;
//! * mutation: one invalid field in an otherwise valid manifest (possibly
//!   among other valid documents) gives an error naming exactly that field
//!   (and that document);
//! * `validate_set` agrees with a model on duplicate names and routes;
//! * quantities: `parse_memory` / `parse_cpu` never panic, name the input in
//!   every error, and return exactly n × multiplier (checked against a
//!   big-number reference, so overflow is "too large" exactly when the true
//!   value does not fit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::contextualize_config;
use shoal_api::{
    Autoscale, ManifestError, Route, ScaleMetric, Service, parse_cpu, parse_manifests, parse_memory, validate_set,
};

const DIR: &str = "/srv/manifests";
const KI: u64 = 1 << 10;
const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

/// 256 cases per property unless `PROPTEST_CASES` says otherwise (the
/// `proptest!` macro applies the `PROPTEST_*` environment variables on top of
/// this too). No regression files: a failure prints its minimal input, which
/// belongs in a named test.
fn config() -> ProptestConfig {
    contextualize_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })
}

fn parse(text: &str) -> Result<Vec<Service>, ManifestError> {
    parse_manifests(text, Path::new(DIR))
}

// ---------------------------------------------------------------------------
// A small YAML tree and a renderer with random (but valid) layout and quoting.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// `~`, `null` or nothing at all after the key.
    Null,
    /// A string; written plain when that reads back the same, else quoted.
    Str(String),
    /// Written verbatim: numbers, and junk that may not be YAML at all.
    Raw(String),
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
}

fn s(text: impl Into<String>) -> Node {
    Node::Str(text.into())
}

fn map(entries: Vec<(&str, Node)>) -> Node {
    Node::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// How a tree is laid out.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// Spaces per block level, 1..=4.
    indent: usize,
    /// Depth from which collections are written in flow style (`{}` / `[]`).
    flow_depth: usize,
    /// Whether a block sequence under a key is indented (`key:\n  - a`) or
    /// not (`key:\n- a`).
    indent_seq: bool,
    /// Seed for per-scalar choices (quoting, how null is spelled).
    seed: u64,
}

fn style() -> impl Strategy<Value = Style> {
    (1usize..=4, prop_oneof![1 => Just(0usize), 6 => 1usize..8], any::<bool>(), any::<u64>())
        .prop_map(|(indent, flow_depth, indent_seq, seed)| Style { indent, flow_depth, indent_seq, seed })
}

struct Renderer {
    style: Style,
    rng: u64,
}

impl Renderer {
    fn new(style: Style) -> Self {
        Renderer { style, rng: style.seed | 1 }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn document(&mut self, node: &Node) -> String {
        let mut out = String::new();
        match node {
            Node::Map(entries) if !entries.is_empty() && self.style.flow_depth > 0 => self.block(node, 0, 0, &mut out),
            Node::Seq(items) if !items.is_empty() && self.style.flow_depth > 0 => self.block(node, 0, 0, &mut out),
            _ => {
                out.push_str(&self.flow(node));
                out.push('\n');
            }
        }
        out
    }

    fn scalar(&mut self, text: &str) -> String {
        let choice = self.next() % 6;
        if plain_safe(text) && choice < 3 {
            text.to_owned()
        } else if choice < 4 && text.chars().all(|c| (' '..='~').contains(&c)) {
            format!("'{}'", text.replace('\'', "''"))
        } else {
            double_quoted(text)
        }
    }

    fn null(&mut self) -> &'static str {
        ["~", "null", "Null", "NULL"][(self.next() % 4) as usize]
    }

    fn key(&mut self, key: &Node) -> String {
        match key {
            Node::Str(text) => self.scalar(text),
            Node::Raw(text) => text.clone(),
            Node::Null => self.null().to_owned(),
            other => format!("? {}\n", self.flow(other)),
        }
    }

    fn flow(&mut self, node: &Node) -> String {
        match node {
            Node::Null => self.null().to_owned(),
            Node::Str(text) => self.scalar(text),
            Node::Raw(text) => text.clone(),
            Node::Map(entries) => {
                let parts: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| {
                        let key = self.key(k);
                        let value = self.flow(v);
                        format!("{key}: {value}")
                    })
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
            Node::Seq(items) => {
                let parts: Vec<String> = items.iter().map(|item| self.flow(item)).collect();
                format!("[{}]", parts.join(", "))
            }
        }
    }

    /// Writes what follows `key:` or `-`: ` scalar\n`, or a nested block.
    fn value(&mut self, node: &Node, indent: usize, depth: usize, out: &mut String) {
        match node {
            Node::Null => {
                if self.next().is_multiple_of(2) {
                    out.push('\n');
                } else {
                    let null = self.null();
                    out.push_str(&format!(" {null}\n"));
                }
            }
            Node::Map(entries) if !entries.is_empty() && depth < self.style.flow_depth => {
                out.push('\n');
                self.block(node, indent + self.style.indent, depth, out);
            }
            Node::Seq(items) if !items.is_empty() && depth < self.style.flow_depth => {
                out.push('\n');
                let extra = if self.style.indent_seq { self.style.indent } else { 0 };
                self.block(node, indent + extra, depth, out);
            }
            _ => {
                let text = self.flow(node);
                out.push_str(&format!(" {text}\n"));
            }
        }
    }

    /// Writes a non-empty map or sequence in block style at `indent`.
    fn block(&mut self, node: &Node, indent: usize, depth: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match node {
            Node::Map(entries) => {
                for (k, v) in entries {
                    let key = self.key(k);
                    out.push_str(&format!("{pad}{key}:"));
                    self.value(v, indent, depth + 1, out);
                }
            }
            Node::Seq(items) => {
                for item in items {
                    let nested = match item {
                        Node::Map(e) => !e.is_empty(),
                        Node::Seq(e) => !e.is_empty(),
                        _ => false,
                    };
                    if nested && depth + 1 < self.style.flow_depth {
                        let mut inner = String::new();
                        self.block(item, indent + 2, depth + 1, &mut inner);
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    } else {
                        out.push_str(&format!("{pad}-"));
                        self.value(item, indent, depth + 1, out);
                    }
                }
            }
            other => {
                let text = self.flow(other);
                out.push_str(&format!("{pad}{text}\n"));
            }
        }
    }
}

/// Whether `text` can be written as a plain scalar and reads back as the same
/// string (conservatively).
fn plain_safe(text: &str) -> bool {
    let mut chars = text.chars();
    let Some(first) = chars.next() else { return false };
    (first.is_ascii_alphanumeric() || matches!(first, '/' | '.' | '_'))
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "/._+-*=%@~ ".contains(c))
        && !text.ends_with(' ')
        && !matches!(text, "null" | "Null" | "NULL" | "~")
}

fn double_quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Writes documents, each after an explicit `---`, so document n is the
/// n-th `---` (empty documents included).
fn render_documents(docs: &[Option<Node>], style: Style) -> String {
    let mut renderer = Renderer::new(style);
    let mut text = String::new();
    for doc in docs {
        text.push_str("---\n");
        match doc {
            Some(node) => text.push_str(&renderer.document(node)),
            None if renderer.next().is_multiple_of(2) => text.push_str("# nothing here\n"),
            None => {}
        }
    }
    text
}

// ---------------------------------------------------------------------------
// Checking errors and accepted services.
// ---------------------------------------------------------------------------

/// What a field path segment leads to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Schema {
    Root,
    Metadata,
    Spec,
    Route,
    Routes,
    Resources,
    Limits,
    Instances,
    Autoscale,
    /// A map with arbitrary keys: `spec.env`, `metadata.labels`.
    AnyKeys,
    Leaf,
}

fn child(schema: Schema, key: &str) -> Option<Schema> {
    use Schema::*;
    Some(match (schema, key) {
        (Root, "apiVersion" | "kind") => Leaf,
        (Root, "metadata") => Metadata,
        (Root, "spec") => Spec,
        (Metadata, "name") => Leaf,
        (Metadata, "labels") => AnyKeys,
        (Spec, "module" | "replicas" | "timeout") => Leaf,
        (Spec, "routes") => Routes,
        (Spec, "env") => AnyKeys,
        (Spec, "resources") => Resources,
        (Spec, "limits") => Limits,
        (Spec, "instances") => Instances,
        (Spec, "autoscale") => Autoscale,
        (Route, "host" | "path") => Leaf,
        (Resources, "memory" | "cpu" | "instanceMemory") => Leaf,
        (Limits, "concurrency" | "queue" | "requestBody" | "callResponseBody") => Leaf,
        (Instances, "maxRequests" | "maxIdle") => Leaf,
        (Autoscale, key) if AUTOSCALE_KEYS.contains(&key) => Leaf,
        _ => return None,
    })
}

fn has_location(message: &str) -> bool {
    // "(line 7, column 3)" from a serde error, "at line 2 column 1" from the
    // YAML parser.
    message.contains("(line ") || message.contains(" at line ")
}

/// Checks that `field` is a path through the manifest schema: known keys,
/// `[n]` indices, any key under `spec.env` / `metadata.labels`, and as the
/// last segment an unknown key only for "unknown field" errors (or `?`, a key
/// that is not a string, with the YAML location in the message).
fn check_field_path(field: &str, message: &str) -> Result<(), String> {
    let mut schema = Schema::Root;
    let mut rest = field;
    let mut first = true;
    while !rest.is_empty() {
        if schema == Schema::AnyKeys {
            // `.KEY` for plain keys, `["KEY"]` for others, in both phases
            // (see `regression_map_key_paths_are_quoted_alike`).
            if rest.starts_with('.') || (rest.starts_with("[\"") && rest.ends_with("\"]")) {
                return Ok(());
            }
            return Err(format!("bad map key segment {rest:?}"));
        }
        if schema == Schema::Routes {
            let Some(after) = rest.strip_prefix('[') else { return Err(format!("expected [n] at {rest:?}")) };
            let Some((digits, after)) = after.split_once(']') else { return Err(format!("unclosed [ at {rest:?}")) };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad index {digits:?}"));
            }
            schema = Schema::Route;
            rest = after;
            continue;
        }
        // An unknown key that is not a plain identifier, quoted as map keys
        // are (`metadata["a.b"]`), ends the path too.
        if rest.starts_with("[\"") && rest.ends_with("\"]") && message.starts_with("unknown field") {
            return Ok(());
        }
        let body = if first {
            rest
        } else {
            match rest.strip_prefix('.') {
                Some(body) => body,
                None => return Err(format!("expected .key at {rest:?}")),
            }
        };
        first = false;
        let end = body.find(['.', '[']).unwrap_or(body.len());
        let key = &body[..end];
        match child(schema, key) {
            Some(next) => {
                schema = next;
                rest = &body[end..];
                if schema == Schema::Leaf && !rest.is_empty() {
                    return Err(format!("path continues past a scalar field: {rest:?}"));
                }
            }
            None => {
                // An unknown key ends the path; it may itself contain dots.
                if message.starts_with("unknown field") {
                    return Ok(());
                }
                if body == "?" && has_location(message) {
                    return Ok(());
                }
                return Err(format!("unknown segment {key:?} in a {schema:?}"));
            }
        }
    }
    Ok(())
}

/// What every error must look like, whatever the input.
fn check_error(err: &ManifestError) -> Result<(), TestCaseError> {
    let shown = err.to_string();
    prop_assert!(!err.message.trim().is_empty(), "empty message: {err:?}");
    if let Some(n) = err.document {
        prop_assert!(n >= 1, "document numbers start at 1: {err:?}");
        prop_assert!(shown.starts_with(&format!("document {n}: ")), "{shown:?}");
    }
    if err.field.is_empty() {
        prop_assert!(
            has_location(&err.message) || err.message == "no Service documents",
            "an error without a field must give the YAML location: {err:?}"
        );
    } else {
        if let Err(why) = check_field_path(&err.field, &err.message) {
            return Err(TestCaseError::fail(format!("field {:?} is not a manifest path ({why}): {err:?}", err.field)));
        }
        prop_assert!(shown.contains(&format!("{}: ", err.field)), "{shown:?}");
    }
    Ok(())
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The documented limits of a validated service.
fn check_service(service: &Service) -> Result<(), TestCaseError> {
    prop_assert!(is_dns_label(&service.name, 40), "name {:?}", service.name);
    let spec = &service.spec;
    prop_assert!(!spec.module_field.trim().is_empty() && !spec.module_field.contains('\0'));
    prop_assert_eq!(&spec.module, &Path::new(DIR).join(&spec.module_field));
    prop_assert!(spec.replicas <= 1000);
    prop_assert!(!spec.routes.is_empty());
    let unique: BTreeSet<_> = spec.routes.iter().map(|r| (r.host.clone(), r.path.clone())).collect();
    prop_assert_eq!(unique.len(), spec.routes.len(), "duplicate routes {:?}", spec.routes);
    for route in &spec.routes {
        prop_assert!(route.path.starts_with('/'), "{route:?}");
        prop_assert!(!route.path.contains(['?', '#']), "{route:?}");
        prop_assert!(!route.path.chars().any(|c| c.is_whitespace() || c.is_control()), "{route:?}");
        if let Some(host) = &route.host {
            let name = host.strip_prefix("*.").unwrap_or(host);
            prop_assert!(name.split('.').all(|l| is_dns_label(l, 63)), "{route:?}");
        }
    }
    for (name, value) in &spec.env {
        prop_assert!(!name.is_empty() && name != "HOSTNAME" && !name.contains(['=', '\0']), "env {name:?}");
        prop_assert!(!value.contains('\0'));
    }
    let r = &spec.resources;
    prop_assert!(r.memory >= 16 * MI, "{r:?}");
    prop_assert!(r.cpu_millis.is_none_or(|c| (1..=1_024_000).contains(&c)), "{r:?}");
    prop_assert!((64 * KI..=4 * GI).contains(&r.instance_memory) && r.instance_memory <= r.memory, "{r:?}");
    prop_assert!((Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&spec.timeout));
    if let Some(a) = &spec.autoscale {
        let secs = Duration::from_secs;
        prop_assert!(a.min <= a.max && (1..=1000).contains(&a.max), "{a:?}");
        prop_assert!((a.min..=a.max).contains(&spec.replicas), "replicas {} outside {a:?}", spec.replicas);
        prop_assert!((1..=1_000_000).contains(&a.target), "{a:?}");
        prop_assert!((1..=100).contains(&a.target_utilization), "{a:?}");
        prop_assert!((secs(2)..=secs(3600)).contains(&a.stable_window), "{a:?}");
        prop_assert!((secs(1)..=a.stable_window).contains(&a.panic_window), "{a:?}");
        prop_assert!((110..=1000).contains(&a.panic_threshold), "{a:?}");
        prop_assert!(a.tolerance <= 99, "{a:?}");
        prop_assert!((2..=1000).contains(&a.max_scale_up_rate), "{a:?}");
        prop_assert!((2..=1000).contains(&a.max_scale_down_rate), "{a:?}");
        prop_assert!(a.scale_to_zero_grace_period <= secs(3600), "{a:?}");
    }
    Ok(())
}

/// Parses arbitrary text: no panic, and the result is well-formed either way.
fn check_any_text(text: &str) -> Result<(), TestCaseError> {
    match parse(text) {
        Ok(services) => {
            prop_assert!(!services.is_empty());
            for service in &services {
                check_service(service)?;
            }
            if let Err(err) = validate_set(&services) {
                check_error(&err)?;
            }
        }
        Err(err) => check_error(&err)?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Valid manifests.
// ---------------------------------------------------------------------------

/// A quantity as written and its value.
#[derive(Debug, Clone)]
struct Qty {
    text: String,
    value: u64,
}

const MEMORY_UNITS: [(&str, u128); 13] = [
    ("", 1),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
];

/// A memory quantity `n` + unit with a value in `lo..=hi`, sometimes with
/// leading zeros or a `+`.
fn quantity_in(lo: u64, hi: u64) -> impl Strategy<Value = Qty> {
    let (lo, hi) = (u128::from(lo), u128::from(hi));
    let units: Vec<(&'static str, u128)> =
        MEMORY_UNITS.iter().copied().filter(|(_, m)| lo.div_ceil(*m) <= hi / m).collect();
    prop::sample::select(units).prop_flat_map(move |(unit, m)| {
        (lo.div_ceil(m)..=hi / m, 0usize..3, any::<bool>()).prop_map(move |(n, zeros, plus)| {
            let sign = if plus && zeros == 0 { "+" } else { "" };
            Qty { text: format!("{sign}{}{n}{unit}", "0".repeat(zeros)), value: (n * m) as u64 }
        })
    })
}

#[derive(Debug, Clone)]
struct Cpu {
    text: String,
    millis: u32,
}

fn cpu() -> impl Strategy<Value = Cpu> {
    (1u32..=1_024_000, 0u8..6).prop_map(|(millis, form)| {
        let (cores, frac) = (millis / 1000, millis % 1000);
        let decimal = |full: bool| {
            if frac == 0 && !full {
                cores.to_string()
            } else {
                let digits = format!("{frac:03}");
                let digits = if full { &digits[..] } else { digits.trim_end_matches('0') };
                format!("{cores}.{digits}")
            }
        };
        let text = match form {
            0 => format!("{millis}m"),
            1 => decimal(false),
            2 => decimal(true),
            3 if cores == 0 => format!(".{frac:03}"),
            3 => decimal(false),
            4 => format!("{millis}e-3"),
            _ => format!("{}E-6", u64::from(millis) * 1000),
        };
        Cpu { text, millis }
    })
}

#[derive(Debug, Clone)]
struct Timeout {
    text: String,
    value: Duration,
}

const HOUR_UNITS: [&str; 5] = ["h", "hr", "hrs", "hour", "hours"];
const MINUTE_UNITS: [&str; 5] = ["m", "min", "mins", "minute", "minutes"];
const SECOND_UNITS: [&str; 5] = ["s", "sec", "secs", "second", "seconds"];
const MILLI_UNITS: [&str; 3] = ["ms", "msec", "millis"];
const MICRO_UNITS: [&str; 2] = ["us", "usec"];

/// A humantime duration in 1ms..=1h, written in one of several ways.
fn timeout() -> impl Strategy<Value = Timeout> {
    (prop_oneof![1u64..=3_600_000, Just(1), Just(3_600_000), 1u64..=60_000], 0u64..1000, 0u8..5, any::<u64>()).prop_map(
        |(ms, micros, form, pick)| {
            let spell = |units: &[&'static str], k: u32| units[((pick >> (k * 4)) % units.len() as u64) as usize];
            let sep = if (pick >> 40) & 1 == 0 { " " } else { "" };
            match form {
                0 => Timeout { text: format!("{ms}{}", spell(&MILLI_UNITS, 0)), value: Duration::from_millis(ms) },
                1 | 2 => {
                    let (h, m, sec, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
                    let all = form == 2;
                    let mut parts = Vec::new();
                    for (n, units, k) in [
                        (h, &HOUR_UNITS[..], 1),
                        (m, &MINUTE_UNITS[..], 2),
                        (sec, &SECOND_UNITS[..], 3),
                        (milli, &MILLI_UNITS[..], 4),
                    ] {
                        if n > 0 || all {
                            parts.push(format!("{n}{}", spell(units, k)));
                        }
                    }
                    Timeout { text: parts.join(sep), value: Duration::from_millis(ms) }
                }
                3 => {
                    let text = format!("{}.{:03}{}", ms / 1000, ms % 1000, spell(&SECOND_UNITS, 5));
                    Timeout { text, value: Duration::from_millis(ms) }
                }
                _ => {
                    let micros = if ms == 3_600_000 { 0 } else { micros };
                    let total = ms * 1000 + micros;
                    Timeout { text: format!("{total}{}", spell(&MICRO_UNITS, 6)), value: Duration::from_micros(total) }
                }
            }
        },
    )
}

#[derive(Debug, Clone)]
struct GenRoute {
    /// As written (any case); validated hosts are lowercased.
    host: Option<String>,
    path: Option<String>,
}

impl GenRoute {
    fn expected(&self) -> Route {
        Route::new(
            self.host.as_ref().map(|h| h.to_ascii_lowercase()),
            self.path.clone().unwrap_or_else(|| "/".to_owned()),
        )
    }

    fn node(&self) -> Node {
        let mut entries = Vec::new();
        if let Some(host) = &self.host {
            entries.push(("host", s(host)));
        }
        if let Some(path) = &self.path {
            entries.push(("path", s(path)));
        }
        map(entries)
    }
}

fn host() -> impl Strategy<Value = String> {
    (prop::collection::vec("[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", 1..4), any::<bool>(), any::<u64>()).prop_map(
        |(labels, wildcard, case)| {
            let name: String = labels
                .join(".")
                .chars()
                .enumerate()
                .map(|(i, c)| if (case >> (i % 64)) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                .collect();
            if wildcard { format!("*.{name}") } else { name }
        },
    )
}

fn route_path() -> impl Strategy<Value = String> {
    prop_oneof![Just("/".to_owned()), "(/[a-z]{1,4}){1,3}/?", "/[-A-Za-z0-9._~%!$&'()*+,;=:@é/]{0,24}",]
}

fn gen_route() -> impl Strategy<Value = GenRoute> {
    prop_oneof![
        host().prop_map(|h| GenRoute { host: Some(h), path: None }),
        route_path().prop_map(|p| GenRoute { host: None, path: Some(p) }),
        (host(), route_path()).prop_map(|(h, p)| GenRoute { host: Some(h), path: Some(p) }),
    ]
}

/// Removes routes equal (after validation) to an earlier one.
fn dedupe(routes: Vec<GenRoute>) -> Vec<GenRoute> {
    let mut seen = BTreeSet::new();
    routes.into_iter().filter(|r| seen.insert((r.expected().host, r.expected().path))).collect()
}

fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[A-Z_][A-Z0-9_]{0,12}", 1 => "[^=\\x00]{1,8}"]
        .prop_map(|n| if n == "HOSTNAME" { "HOSTNAME_".to_owned() } else { n })
}

fn label_key() -> impl Strategy<Value = String> {
    "([a-z0-9]{1,5}(\\.[a-z0-9]{1,5}){0,2}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?"
}

fn label_value() -> impl Strategy<Value = String> {
    "([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?"
}

/// The keys of `spec.autoscale`.
const AUTOSCALE_KEYS: [&str; 12] = [
    "min",
    "max",
    "metric",
    "target",
    "targetUtilization",
    "stableWindow",
    "panicWindow",
    "panicThreshold",
    "tolerance",
    "maxScaleUpRate",
    "maxScaleDownRate",
    "scaleToZeroGracePeriod",
];

/// A whole number in `lo..=hi`, often at an edge.
fn whole_in(lo: u32, hi: u32) -> impl Strategy<Value = u32> {
    prop_oneof![2 => lo..=hi, 1 => Just(lo), 1 => Just(hi)]
}

/// A percentage and how it is written: `70`, `70%`, `"70"` or `"70%"`.
#[derive(Debug, Clone)]
struct Percent {
    node: Node,
    value: u32,
}

fn percent_in(lo: u32, hi: u32) -> impl Strategy<Value = Percent> {
    (whole_in(lo, hi), 0u8..4).prop_map(|(value, form)| {
        let node = match form {
            0 => Node::Raw(value.to_string()),
            1 => Node::Raw(format!("{value}%")),
            2 => s(value.to_string()),
            _ => s(format!("{value}%")),
        };
        Percent { node, value }
    })
}

/// A valid `spec.autoscale`, every field possibly left out.
#[derive(Debug, Clone)]
struct GenAutoscale {
    min: Option<u32>,
    max: Option<u32>,
    metric: Option<ScaleMetric>,
    target: Option<u32>,
    target_utilization: Option<Percent>,
    stable_window: Option<Timeout>,
    panic_window: Option<Timeout>,
    panic_threshold: Option<Percent>,
    tolerance: Option<Percent>,
    max_scale_up_rate: Option<u32>,
    max_scale_down_rate: Option<u32>,
    scale_to_zero_grace_period: Option<Timeout>,
}

/// `min` and `max`, each possibly left out, with min <= max once defaulted
/// (1 and 10).
fn scale_bounds() -> impl Strategy<Value = (Option<u32>, Option<u32>)> {
    (prop::option::of(prop_oneof![0u32..=3, 0u32..=1000]), any::<bool>()).prop_flat_map(|(min, write_max)| {
        let lo = min.unwrap_or(1).max(1);
        let max = if write_max || lo > 10 {
            prop_oneof![Just(lo), lo..=1000, lo..=(lo + 10).min(1000)].prop_map(Some).boxed()
        } else {
            Just(None).boxed()
        };
        (Just(min), max)
    })
}

/// `stableWindow` and `panicWindow`, each possibly left out, with
/// 1s <= panic <= stable and 2s <= stable once defaulted (60s, and 6s
/// capped at the stable window).
fn scale_windows() -> impl Strategy<Value = (Option<Timeout>, Option<Timeout>)> {
    let window = || timeout().prop_filter("under 1s", |t| t.value >= Duration::from_secs(1));
    (window(), window(), any::<bool>(), any::<bool>()).prop_map(|(a, b, write_stable, write_panic)| {
        let (panic, stable) = if a.value <= b.value { (a, b) } else { (b, a) };
        let stable = (write_stable && stable.value >= Duration::from_secs(2)).then_some(stable);
        let limit = stable.as_ref().map_or(Duration::from_secs(60), |t| t.value);
        let panic = (write_panic && panic.value <= limit).then_some(panic);
        (stable, panic)
    })
}

fn gen_autoscale() -> impl Strategy<Value = GenAutoscale> {
    (
        scale_bounds(),
        prop::option::of(prop_oneof![Just(ScaleMetric::Concurrency), Just(ScaleMetric::Rps)]),
        prop::option::of(whole_in(1, 1_000_000)),
        prop::option::of(percent_in(1, 100)),
        scale_windows(),
        prop::option::of(percent_in(110, 1000)),
        prop::option::of(percent_in(0, 99)),
        prop::option::of(whole_in(2, 1000)),
        prop::option::of(whole_in(2, 1000)),
        prop::option::of(prop_oneof![Just(Timeout { text: "0s".into(), value: Duration::ZERO }), timeout()]),
    )
        .prop_map(
            |(
                (min, max),
                metric,
                target,
                target_utilization,
                (stable_window, panic_window),
                panic_threshold,
                tolerance,
                max_scale_up_rate,
                max_scale_down_rate,
                scale_to_zero_grace_period,
            )| GenAutoscale {
                min,
                max,
                metric,
                target,
                target_utilization,
                stable_window,
                panic_window,
                panic_threshold,
                tolerance,
                max_scale_up_rate,
                max_scale_down_rate,
                scale_to_zero_grace_period,
            },
        )
}

impl GenAutoscale {
    /// The documented defaults for what is left out.
    fn expected(&self) -> Autoscale {
        let secs = Duration::from_secs;
        let metric = self.metric.unwrap_or(ScaleMetric::Concurrency);
        let stable_window = self.stable_window.as_ref().map_or(secs(60), |t| t.value);
        Autoscale {
            min: self.min.unwrap_or(1),
            max: self.max.unwrap_or(10),
            metric,
            target: self.target.unwrap_or(match metric {
                ScaleMetric::Concurrency => 10,
                ScaleMetric::Rps => 100,
            }),
            target_utilization: self.target_utilization.as_ref().map_or(70, |p| p.value),
            stable_window,
            panic_window: self.panic_window.as_ref().map_or(secs(6).min(stable_window), |t| t.value),
            panic_threshold: self.panic_threshold.as_ref().map_or(200, |p| p.value),
            tolerance: self.tolerance.as_ref().map_or(10, |p| p.value),
            max_scale_up_rate: self.max_scale_up_rate.unwrap_or(1000),
            max_scale_down_rate: self.max_scale_down_rate.unwrap_or(2),
            scale_to_zero_grace_period: self.scale_to_zero_grace_period.as_ref().map_or(secs(30), |t| t.value),
        }
    }

    fn node(&self) -> Node {
        let number = |n: &Option<u32>| n.map(|n| Node::Raw(n.to_string()));
        let percent = |p: &Option<Percent>| p.as_ref().map(|p| p.node.clone());
        let duration = |t: &Option<Timeout>| t.as_ref().map(|t| s(&t.text));
        let entries = [
            ("min", number(&self.min)),
            ("max", number(&self.max)),
            ("metric", self.metric.map(|m| s(m.to_string()))),
            ("target", number(&self.target)),
            ("targetUtilization", percent(&self.target_utilization)),
            ("stableWindow", duration(&self.stable_window)),
            ("panicWindow", duration(&self.panic_window)),
            ("panicThreshold", percent(&self.panic_threshold)),
            ("tolerance", percent(&self.tolerance)),
            ("maxScaleUpRate", number(&self.max_scale_up_rate)),
            ("maxScaleDownRate", number(&self.max_scale_down_rate)),
            ("scaleToZeroGracePeriod", duration(&self.scale_to_zero_grace_period)),
        ];
        map(entries.into_iter().filter_map(|(k, v)| Some((k, v?))).collect())
    }
}

/// A valid service, field by field, with what parsing it must give.
#[derive(Debug, Clone)]
struct GenService {
    name: String,
    labels: BTreeMap<String, String>,
    module: String,
    /// The value and how it is written (decimal or hex).
    replicas: Option<(u32, bool)>,
    routes: Option<Vec<GenRoute>>,
    /// `None` is written as a null value, which reads as "".
    env: BTreeMap<String, Option<String>>,
    memory: Option<Qty>,
    cpu: Option<Cpu>,
    instance_memory: Option<Qty>,
    timeout: Option<Timeout>,
    /// With it, `replicas` is within its `min..=max`.
    autoscale: Option<GenAutoscale>,
    /// Seed for the order of keys in each mapping.
    order: u64,
}

fn memory_and_instance() -> impl Strategy<Value = (Option<Qty>, Option<Qty>)> {
    prop::option::weighted(0.7, quantity_in(16 * MI, u64::MAX)).prop_flat_map(|memory| {
        let limit = memory.as_ref().map_or(128 * MI, |q| q.value).min(4 * GI);
        (Just(memory), prop::option::weighted(0.6, quantity_in(64 * KI, limit)))
    })
}

fn gen_service() -> impl Strategy<Value = GenService> {
    (
        "[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?",
        prop::collection::btree_map(label_key(), label_value(), 0..3),
        "(\\.\\./|/)?[A-Za-z0-9_ é-]{1,10}(/[A-Za-z0-9_. é-]{1,10}){0,2}\\.wasm",
        prop::option::of((0u32..=1000, any::<bool>())),
        prop::option::weighted(0.7, prop::collection::vec(gen_route(), 1..6).prop_map(dedupe)),
        prop::collection::btree_map(env_name(), prop::option::weighted(0.8, "[^\\x00]{0,12}"), 0..5),
        memory_and_instance(),
        prop::option::of(cpu()),
        prop::option::of(timeout()),
        prop::option::weighted(0.3, gen_autoscale()),
        any::<u64>(),
    )
        .prop_map(
            |(
                name,
                labels,
                module,
                replicas,
                routes,
                env,
                (memory, instance_memory),
                cpu,
                timeout,
                autoscale,
                order,
            )| {
                let replicas = match (&autoscale, replicas) {
                    (Some(a), Some((n, hex))) => {
                        let a = a.expected();
                        Some((n.clamp(a.min, a.max), hex))
                    }
                    (_, replicas) => replicas,
                };
                GenService {
                    name,
                    labels,
                    module,
                    replicas,
                    routes,
                    env,
                    memory,
                    cpu,
                    instance_memory,
                    timeout,
                    autoscale,
                    order,
                }
            },
        )
}

impl GenService {
    fn node(&self) -> Node {
        let mut metadata = vec![("name", s(&self.name))];
        if !self.labels.is_empty() {
            metadata.push(("labels", map(self.labels.iter().map(|(k, v)| (k.as_str(), s(v))).collect())));
        }
        let mut spec = vec![("module", s(&self.module))];
        if let Some((n, hex)) = self.replicas {
            spec.push(("replicas", Node::Raw(if hex { format!("0x{n:x}") } else { n.to_string() })));
        }
        if let Some(routes) = &self.routes {
            spec.push(("routes", Node::Seq(routes.iter().map(GenRoute::node).collect())));
        }
        if !self.env.is_empty() {
            let entries = self.env.iter().map(|(k, v)| (k.as_str(), v.as_ref().map_or(Node::Null, s))).collect();
            spec.push(("env", map(entries)));
        }
        let mut resources = Vec::new();
        if let Some(q) = &self.memory {
            resources.push(("memory", s(&q.text)));
        }
        if let Some(c) = &self.cpu {
            resources.push(("cpu", s(&c.text)));
        }
        if let Some(q) = &self.instance_memory {
            resources.push(("instanceMemory", s(&q.text)));
        }
        if !resources.is_empty() {
            spec.push(("resources", map(resources)));
        }
        if let Some(t) = &self.timeout {
            spec.push(("timeout", s(&t.text)));
        }
        if let Some(a) = &self.autoscale {
            spec.push(("autoscale", a.node()));
        }
        let mut root = map(vec![
            ("apiVersion", s("shoal.dev/v1")),
            ("kind", s("Service")),
            ("metadata", map(metadata)),
            ("spec", map(spec)),
        ]);
        shuffle(&mut root, &mut self.order.clone());
        root
    }

    fn expected_routes(&self) -> Vec<Route> {
        match &self.routes {
            None => vec![Route::new(None, "/")],
            Some(routes) => routes.iter().map(GenRoute::expected).collect(),
        }
    }

    /// Compares a parsed service with what was generated.
    fn check(&self, got: &Service) -> Result<(), TestCaseError> {
        prop_assert_eq!(&got.name, &self.name);
        prop_assert_eq!(&got.labels, &self.labels);
        let spec = &got.spec;
        prop_assert_eq!(&spec.module_field, &self.module);
        prop_assert_eq!(&spec.module, &Path::new(DIR).join(&self.module));
        let autoscale = self.autoscale.as_ref().map(GenAutoscale::expected);
        let replicas = match (self.replicas, &autoscale) {
            (Some((n, _)), _) => n,
            (None, None) => 1,
            // The initial count: min, but at least 1.
            (None, Some(a)) => a.min.max(1).min(a.max),
        };
        prop_assert_eq!(spec.replicas, replicas);
        prop_assert_eq!(&spec.autoscale, &autoscale);
        prop_assert_eq!(&spec.routes, &self.expected_routes());
        let env: BTreeMap<String, String> =
            self.env.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
        prop_assert_eq!(&spec.env, &env);
        let memory = self.memory.as_ref().map_or(128 * MI, |q| q.value);
        prop_assert_eq!(spec.resources.memory, memory, "memory {:?}", self.memory);
        prop_assert_eq!(spec.resources.cpu_millis, self.cpu.as_ref().map(|c| c.millis), "cpu {:?}", self.cpu);
        let instance = self.instance_memory.as_ref().map_or((64 * MI).min(memory), |q| q.value);
        prop_assert_eq!(spec.resources.instance_memory, instance, "instanceMemory {:?}", self.instance_memory);
        prop_assert_eq!(spec.timeout, self.timeout.as_ref().map_or(Duration::from_secs(30), |t| t.value));
        Ok(())
    }
}

/// Permutes the entries of every mapping (sequences keep their order).
fn shuffle(node: &mut Node, seed: &mut u64) {
    match node {
        Node::Map(entries) => {
            for i in (1..entries.len()).rev() {
                *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                entries.swap(i, ((*seed >> 33) % (i as u64 + 1)) as usize);
            }
            for (_, v) in entries {
                shuffle(v, seed);
            }
        }
        Node::Seq(items) => items.iter_mut().for_each(|item| shuffle(item, seed)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Mutations: one invalid field.
// ---------------------------------------------------------------------------

/// Where an unknown key is added.
#[derive(Debug, Clone, Copy)]
enum Parent {
    Root,
    Metadata,
    Spec,
    Route(usize),
    Resources,
    Autoscale,
}

#[derive(Debug, Clone)]
enum Mutation {
    Memory(String),
    Cpu(String),
    InstanceMemory(String),
    Timeout(String),
    Name(String),
    ApiVersion(String),
    Kind(String),
    /// Written verbatim.
    Replicas(String),
    UnknownKey(Parent, String),
    RoutePath(usize, String),
    RouteHost(usize, String),
    /// A route with neither host nor path.
    EmptyRoute(usize),
    /// A copy of route n (host in upper case, `/` written or left out).
    DuplicateRoute(usize),
    EmptyRoutes,
    Hostname(String),
    EnvName(String),
    LabelKey(String),
    DuplicateEnvKey,
    /// A key given twice: (path of the mapping, key).
    DuplicateField(&'static str, &'static str),
    Missing(&'static str, &'static str),
    /// A value of the wrong type at (path of the mapping, key).
    WrongType(&'static str, &'static str, Node),
    /// A bad value for `spec.autoscale.<key>`, and a word of the message.
    AutoscaleValue(&'static str, Node, &'static str),
    /// `spec.autoscale`: (min, max) with max < min.
    MaxBelowMin(u32, u32),
    /// `spec.autoscale`: (stableWindow, panicWindow) in seconds, panic longer.
    PanicAboveStable(u64, u64),
    /// (min, max, replicas) with replicas outside min..=max.
    ReplicasOutsideScale(u32, u32, u32),
}

fn bad_memory() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,4}(Q|mi|KB|kb|b|B|iB|Kii|e|E\\+|ki| Mi|\\.\\.|Mi\\.)",
        (0u64..16 * MI).prop_map(|n| n.to_string()),
        (1u64..16).prop_map(|n| format!("{n}Mi")),
        (16u64..100_000).prop_map(|n| format!("{n}Ei")),
        prop::sample::select(vec!["-1Gi", "", "Mi", "1e6Mi", "128m", "0x10", "64 Mi", "1e30", "½Gi", "NaN", ".inf"])
            .prop_map(str::to_owned),
    ]
}

fn bad_cpu() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0", "0m", "0.0", "1.0005", "0.5m", "0.0001", "1Gi", "1x", "1e3m", "-1", "", "1025", "5000000", "1k", "m",
        ])
        .prop_map(str::to_owned),
        "[0-9]{1,3}\\.[0-9]{3}[1-9]",
        (1_024_001u64..=10_000_000_000).prop_map(|n| format!("{n}m")),
    ]
}

fn bad_instance_memory() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..64 * KI).prop_map(|n| n.to_string()),
        (0u64..64).prop_map(|n| format!("{n}Ki")),
        (4 * GI + 1..=64 * GI).prop_map(|n| n.to_string()),
        (5u64..1000).prop_map(|n| format!("{n}Gi")),
        prop::sample::select(vec!["64Q", "", "lots", "1e", "-64Mi"]).prop_map(str::to_owned),
    ]
}

fn bad_timeout() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0s",
            "0ms",
            "999us",
            "1h 1ms",
            "2h",
            "61m",
            "3601s",
            "10",
            "abc",
            "-1s",
            "",
            "1 fortnight",
            "1.5",
            "999999ns",
            "1d",
            "1h 1ns",
        ])
        .prop_map(str::to_owned),
        (3_600_001u64..1_000_000_000).prop_map(|n| format!("{n}ms")),
        (0u64..1_000_000).prop_map(|n| format!("{n}ns")),
    ]
}

fn bad_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,3}[A-Z][a-z]{0,3}",
        "-[a-z0-9]{1,5}",
        "[a-z0-9]{1,5}-",
        "[a-z]{41,60}",
        "[a-z]{1,5}[._ /:][a-z]{1,5}",
        Just(String::new()),
    ]
}

fn bad_replicas() -> impl Strategy<Value = String> {
    prop_oneof![
        (1001i64..=i64::MAX).prop_map(|n| n.to_string()),
        (i64::MIN..0).prop_map(|n| n.to_string()),
        Just(u64::MAX.to_string()),
        Just("99999999999999999999999999".to_owned()),
        prop::sample::select(vec!["1.5", "'3'", "three", "[1]", "{a: 1}", "true", ".inf", "1e3", "\"\"", "0x3e9"])
            .prop_map(str::to_owned),
    ]
}

fn bad_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.][a-z0-9/]{0,8}",
        Just(String::new()),
        "/[a-z]{0,4}[?#][a-z=]{0,4}",
        "/[a-z]{0,4}[ \\t\\x07\\x7f\\u{85}\\u{a0}][a-z]{0,4}",
    ]
}

fn bad_host() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "http://a.test",
            "a.test:80",
            "a.test/x",
            "a.*.test",
            "*",
            "*.",
            "-a.test",
            "a-.test",
            "a..test",
            "a_b.test",
            "a b",
            "a.test.",
            "**.test",
            "*.*.test",
            "é.test",
        ])
        .prop_map(str::to_owned),
        "[a-z]{64,70}\\.test",
        "[a-z]{1,4}:[0-9]{1,5}",
    ]
}

/// Every key the schema knows, at any level (with `AUTOSCALE_KEYS`).
const KNOWN_KEYS: [&str; 26] = [
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "labels",
    "spec",
    "module",
    "replicas",
    "routes",
    "host",
    "path",
    "env",
    "resources",
    "memory",
    "cpu",
    "instanceMemory",
    "timeout",
    "limits",
    "concurrency",
    "queue",
    "requestBody",
    "callResponseBody",
    "instances",
    "maxRequests",
    "maxIdle",
    "autoscale",
];

fn junk_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_]{0,10}",
        prop::sample::select(vec![
            "Replicas",
            "apiversion",
            "instance_memory",
            "Host",
            "name ",
            "métadata",
            "a.b",
            "0",
            "spec ",
            "Kind",
            "API_VERSION",
            "routes[0]",
            "-",
            "=",
        ])
        .prop_map(str::to_owned),
    ]
    .prop_map(|k| {
        if KNOWN_KEYS.contains(&k.as_str()) || AUTOSCALE_KEYS.contains(&k.as_str()) { format!("{k}_x") } else { k }
    })
}

fn bad_autoscale_value() -> impl Strategy<Value = Mutation> {
    let raw = |text: &str| Node::Raw(text.to_owned());
    prop::sample::select(vec![
        ("min", raw("-1"), "must be between 0 and 1000, found -1"),
        ("min", raw("1001"), "must be between 0 and 1000, found 1001"),
        ("min", s("few"), "expected a whole number"),
        ("max", raw("0"), "must be between 1 and 1000, found 0"),
        ("max", raw("1001"), "must be between 1 and 1000, found 1001"),
        ("metric", s("cpu"), "\"cpu\" is not a metric (expected concurrency or rps)"),
        ("metric", s("RPS"), "expected concurrency or rps"),
        ("metric", s(""), "expected concurrency or rps"),
        ("target", raw("0"), "must be between 1 and 1000000, found 0"),
        ("target", raw("1000001"), "must be between 1 and 1000000, found 1000001"),
        ("target", raw("1.5"), "expected a whole number"),
        ("targetUtilization", raw("0"), "must be between 1% and 100%, found 0%"),
        ("targetUtilization", s("101%"), "must be between 1% and 100%, found 101%"),
        ("targetUtilization", raw("0.5"), "must be a whole number of percent"),
        ("targetUtilization", raw("70.5%"), "must be a whole number of percent"),
        ("targetUtilization", s("lots"), "\"lots\" is not a percentage"),
        ("stableWindow", s("1s"), "\"1s\" must be between 2s and 1h"),
        ("stableWindow", s("61m"), "\"61m\" must be between 2s and 1h"),
        ("stableWindow", raw("60"), "\"60\" is not a duration"),
        ("panicWindow", s("999ms"), "\"999ms\" must be between 1s and spec.autoscale.stableWindow"),
        ("panicWindow", s("2h"), "2h exceeds spec.autoscale.stableWindow"),
        ("panicWindow", s("soon"), "\"soon\" is not a duration"),
        ("panicThreshold", raw("109"), "must be between 110% and 1000%, found 109%"),
        ("panicThreshold", s("1001%"), "must be between 110% and 1000%, found 1001%"),
        ("tolerance", raw("-1"), "must be between 0% and 99%, found -1%"),
        ("tolerance", s("100%"), "must be between 0% and 99%, found 100%"),
        ("maxScaleUpRate", raw("1"), "must be between 2 and 1000, found 1"),
        ("maxScaleUpRate", raw("1001"), "must be between 2 and 1000, found 1001"),
        ("maxScaleDownRate", raw("1"), "must be between 2 and 1000, found 1"),
        ("maxScaleDownRate", raw("0x3e9"), "must be between 2 and 1000, found 1001"),
        ("scaleToZeroGracePeriod", s("1h 1s"), "\"1h 1s\" must be between 0s and 1h"),
        ("scaleToZeroGracePeriod", s("-1s"), "\"-1s\" is not a duration"),
    ])
    .prop_map(|(key, value, word)| Mutation::AutoscaleValue(key, value, word))
}

fn autoscale_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => bad_autoscale_value(),
        1 => (1u32..1000).prop_flat_map(|max| (max + 1..=1000, Just(max))).prop_map(|(min, max)| Mutation::MaxBelowMin(min, max)),
        1 => (2u64..3600).prop_flat_map(|stable| (Just(stable), stable + 1..=7200))
            .prop_map(|(stable, panic)| Mutation::PanicAboveStable(stable, panic)),
        // Three numbers, sorted: replicas is the smallest or the largest,
        // strictly outside the other two.
        1 => (0u32..=1000, 0u32..=1000, 0u32..=1000, any::<bool>()).prop_filter_map(
            "replicas must be strictly outside",
            |(a, b, c, below)| {
                let mut v = [a, b, c];
                v.sort_unstable();
                let [x, y, z] = v;
                if below {
                    (x < y).then_some(Mutation::ReplicasOutsideScale(y, z, x))
                } else {
                    (y < z && y >= 1).then_some(Mutation::ReplicasOutsideScale(x, y, z))
                }
            },
        ),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = 0usize..8;
    prop_oneof![
        bad_memory().prop_map(Mutation::Memory),
        bad_cpu().prop_map(Mutation::Cpu),
        bad_instance_memory().prop_map(Mutation::InstanceMemory),
        bad_timeout().prop_map(Mutation::Timeout),
        bad_name().prop_map(Mutation::Name),
        prop::sample::select(vec!["v1", "shoal.dev/v2", "Shoal.dev/v1", "", "shoal.dev/v1 "])
            .prop_map(|v| Mutation::ApiVersion(v.to_owned())),
        prop::sample::select(vec!["service", "Deployment", "", "Service "]).prop_map(|v| Mutation::Kind(v.to_owned())),
        bad_replicas().prop_map(Mutation::Replicas),
        (
            prop_oneof![
                Just(Parent::Root),
                Just(Parent::Metadata),
                Just(Parent::Spec),
                index.clone().prop_map(Parent::Route),
                Just(Parent::Resources),
                Just(Parent::Autoscale),
            ],
            junk_key()
        )
            .prop_map(|(p, k)| Mutation::UnknownKey(p, k)),
        (index.clone(), bad_path()).prop_map(|(i, p)| Mutation::RoutePath(i, p)),
        (index.clone(), bad_host()).prop_map(|(i, h)| Mutation::RouteHost(i, h)),
        index.clone().prop_map(Mutation::EmptyRoute),
        index.prop_map(Mutation::DuplicateRoute),
        Just(Mutation::EmptyRoutes),
        "[^\\x00]{0,8}".prop_map(Mutation::Hostname),
        prop_oneof![Just(String::new()), "[A-Z]{0,3}=[A-Z]{0,3}", "[A-Z]{0,3}\\x00[A-Z]{0,3}"]
            .prop_map(Mutation::EnvName),
        prop_oneof![
            "-[a-z]{1,4}",
            "[a-z]{1,4} [a-z]{1,4}",
            "[a-z]{1,3}/[a-z]{1,3}/[a-z]{1,3}",
            "[a-z]{64,70}",
            "[a-z]{1,3}_/x"
        ]
        .prop_map(Mutation::LabelKey),
        Just(Mutation::DuplicateEnvKey),
        prop::sample::select(vec![
            ("", "apiVersion"),
            ("", "kind"),
            ("metadata", "name"),
            ("spec", "module"),
            ("spec", "env"),
            ("spec", "timeout"),
            ("spec.autoscale", "stableWindow"),
        ])
        .prop_map(|(p, k)| Mutation::DuplicateField(p, k)),
        prop::sample::select(vec![
            ("", "apiVersion"),
            ("", "kind"),
            ("", "metadata"),
            ("metadata", "name"),
            ("", "spec"),
            ("spec", "module"),
        ])
        .prop_map(|(p, k)| Mutation::Missing(p, k)),
        prop::sample::select(vec![
            ("", "metadata", Node::Seq(vec![s("a")])),
            ("", "spec", s("x")),
            ("", "apiVersion", map(vec![("a", s("b"))])),
            ("metadata", "name", Node::Seq(vec![])),
            ("metadata", "labels", Node::Seq(vec![s("a=b")])),
            ("spec", "module", Node::Seq(vec![s("a.wasm")])),
            ("spec", "replicas", s("three")),
            ("spec", "routes", s("/")),
            ("spec", "env", Node::Seq(vec![s("A=b")])),
            ("spec", "resources", s("64Mi")),
            ("spec", "timeout", map(vec![("s", Node::Raw("10".into()))])),
            ("spec.resources", "memory", Node::Seq(vec![s("64Mi")])),
            ("spec.env", "TYPE_ERR", Node::Seq(vec![])),
            ("spec", "autoscale", s("x")),
            ("spec", "autoscale", Node::Seq(vec![s("min")])),
            ("spec.autoscale", "min", s("few")),
            ("spec.autoscale", "metric", Node::Seq(vec![s("rps")])),
            ("spec.autoscale", "panicWindow", map(vec![("s", Node::Raw("1".into()))])),
            ("spec.autoscale", "tolerance", Node::Seq(vec![s("10%")])),
        ])
        .prop_map(|(p, k, v)| Mutation::WrongType(p, k, v)),
        autoscale_mutation(),
    ]
}

/// The mapping at a dotted path (`""`, `spec`, `spec.resources`), created
/// when missing.
fn map_at<'a>(root: &'a mut Node, path: &str) -> &'a mut Vec<(Node, Node)> {
    let mut node = root;
    for key in path.split('.').filter(|k| !k.is_empty()) {
        let Node::Map(entries) = node else { panic!("not a mapping at {path}") };
        let position = match entries.iter().position(|(k, _)| *k == s(key)) {
            Some(p) => p,
            None => {
                entries.push((s(key), Node::Map(Vec::new())));
                entries.len() - 1
            }
        };
        node = &mut entries[position].1;
        if !matches!(node, Node::Map(_)) {
            *node = Node::Map(Vec::new());
        }
    }
    match node {
        Node::Map(entries) => entries,
        _ => unreachable!(),
    }
}

fn set(root: &mut Node, path: &str, key: &str, value: Node) {
    let entries = map_at(root, path);
    match entries.iter_mut().find(|(k, _)| *k == s(key)) {
        Some(entry) => entry.1 = value,
        None => entries.push((s(key), value)),
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

/// The error path of a map entry (`spec.env.A`, `spec.env["A=B"]`), as
/// documented for `ManifestError`.
fn key_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain { format!("{parent}.{key}") } else { format!("{parent}[{key:?}]") }
}

/// Applies `mutation` to `service`: the tree to write, the field the error
/// must name and words its message must contain.
fn mutate(service: &GenService, mutation: &Mutation) -> (Node, String, Vec<String>) {
    let mut root = service.node();
    let mut routes: Vec<Node> =
        service.routes.as_ref().map_or_else(Vec::new, |r| r.iter().map(GenRoute::node).collect());
    let route_count = routes.len();
    // Clamps a route index to an existing route, or one past the end.
    let at = |i: usize| i % (route_count + 1);
    let set_routes = |root: &mut Node, routes: Vec<Node>| set(root, "spec", "routes", Node::Seq(routes));
    let resources = "spec.resources";
    let autoscale = "spec.autoscale";
    let (field, words): (String, Vec<String>) = match mutation {
        Mutation::Memory(v) => {
            set(&mut root, resources, "memory", s(v));
            ("spec.resources.memory".into(), vec![format!("{v:?}")])
        }
        Mutation::Cpu(v) => {
            set(&mut root, resources, "cpu", s(v));
            ("spec.resources.cpu".into(), vec![format!("{v:?}")])
        }
        Mutation::InstanceMemory(v) => {
            set(&mut root, resources, "instanceMemory", s(v));
            ("spec.resources.instanceMemory".into(), vec![format!("{v:?}")])
        }
        Mutation::Timeout(v) => {
            set(&mut root, "spec", "timeout", s(v));
            ("spec.timeout".into(), vec![format!("{v:?}")])
        }
        Mutation::Name(v) => {
            set(&mut root, "metadata", "name", s(v));
            ("metadata.name".into(), vec![format!("{v:?}")])
        }
        Mutation::ApiVersion(v) => {
            set(&mut root, "", "apiVersion", s(v));
            ("apiVersion".into(), vec![format!("found {v:?}")])
        }
        Mutation::Kind(v) => {
            set(&mut root, "", "kind", s(v));
            ("kind".into(), vec![format!("found {v:?}")])
        }
        Mutation::Replicas(v) => {
            set(&mut root, "spec", "replicas", Node::Raw(v.clone()));
            ("spec.replicas".into(), vec![])
        }
        Mutation::UnknownKey(parent, key) => {
            let path = match parent {
                Parent::Root => String::new(),
                Parent::Metadata => "metadata".into(),
                Parent::Spec => "spec".into(),
                Parent::Resources => resources.into(),
                Parent::Autoscale => autoscale.into(),
                Parent::Route(i) => {
                    let i = at(*i);
                    if i == route_count {
                        routes.push(map(vec![("path", s("/junk"))]));
                    }
                    if let Node::Map(entries) = &mut routes[i] {
                        entries.insert(0, (s(key), s("x")));
                    }
                    set_routes(&mut root, routes);
                    format!("spec.routes[{i}]")
                }
            };
            if !matches!(parent, Parent::Route(_)) {
                let entries = map_at(&mut root, &path);
                let position = entries.len() / 2;
                entries.insert(position, (s(key), s("junk")));
            }
            // Quoted like any map key when it is not a plain identifier.
            let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let field = if plain { join(&path, key) } else { format!("{path}[{key:?}]") };
            (field, vec!["unknown field".into()])
        }
        Mutation::RoutePath(i, p) => {
            let i = at(*i);
            if i == route_count {
                routes.push(map(vec![("path", s(p))]));
            } else {
                let host = service.routes.as_ref().unwrap()[i].host.clone();
                let mut entries = vec![("path", s(p))];
                if let Some(h) = host {
                    entries.insert(0, ("host", s(h)));
                }
                routes[i] = map(entries);
            }
            set_routes(&mut root, routes);
            (format!("spec.routes[{i}].path"), vec![])
        }
        Mutation::RouteHost(i, h) => {
            let i = at(*i);
            let path = if i == route_count { None } else { service.routes.as_ref().unwrap()[i].path.clone() };
            let route = GenRoute { host: Some(h.clone()), path };
            if i == route_count {
                routes.push(route.node());
            } else {
                routes[i] = route.node();
            }
            set_routes(&mut root, routes);
            (format!("spec.routes[{i}].host"), vec![])
        }
        Mutation::EmptyRoute(i) => {
            let i = at(*i);
            if i == route_count {
                routes.push(Node::Map(Vec::new()));
            } else {
                routes[i] = Node::Map(Vec::new());
            }
            set_routes(&mut root, routes);
            (format!("spec.routes[{i}]"), vec!["needs a host and/or a path".into()])
        }
        Mutation::DuplicateRoute(i) => {
            let original = match &service.routes {
                Some(r) => r[*i % r.len()].clone(),
                None => {
                    let first = GenRoute { host: None, path: Some("/".into()) };
                    routes.push(first.node());
                    first
                }
            };
            let copy = GenRoute {
                host: original.host.as_ref().map(|h| h.to_ascii_uppercase()),
                path: match original.path.as_deref() {
                    None => Some("/".into()),
                    Some("/") if original.host.is_some() => None,
                    Some(p) => Some(p.into()),
                },
            };
            routes.push(copy.node());
            let index = routes.len() - 1;
            set_routes(&mut root, routes);
            (format!("spec.routes[{index}]"), vec!["listed twice".into()])
        }
        Mutation::EmptyRoutes => {
            set_routes(&mut root, Vec::new());
            ("spec.routes".into(), vec!["at least one route".into()])
        }
        Mutation::Hostname(v) => {
            map_at(&mut root, "spec.env").push((s("HOSTNAME"), s(v)));
            ("spec.env.HOSTNAME".into(), vec!["reserved".into()])
        }
        Mutation::EnvName(name) => {
            map_at(&mut root, "spec.env").push((s(name), s("v")));
            (key_path("spec.env", name), vec![])
        }
        Mutation::LabelKey(key) => {
            map_at(&mut root, "metadata.labels").push((s(key), s("v")));
            (key_path("metadata.labels", key), vec!["not a valid label key".into()])
        }
        Mutation::DuplicateEnvKey => {
            let env = map_at(&mut root, "spec.env");
            env.push((s("DUP"), s("1")));
            env.push((s("DUP"), s("2")));
            ("spec.env".into(), vec!["\"DUP\" appears more than once".into()])
        }
        Mutation::DuplicateField(path, key) => {
            let entries = map_at(&mut root, path);
            let existing = entries.iter().find(|(k, _)| *k == s(*key)).map(|(_, v)| v.clone());
            let value = existing.clone().unwrap_or_else(|| if *key == "env" { Node::Map(Vec::new()) } else { s("1s") });
            if existing.is_none() {
                entries.push((s(*key), value.clone()));
            }
            entries.push((s(*key), value));
            (join(path, key), vec!["appears more than once".into()])
        }
        Mutation::Missing(path, key) => {
            map_at(&mut root, path).retain(|(k, _)| *k != s(*key));
            (join(path, key), vec!["required field missing".into()])
        }
        Mutation::WrongType(path, key, value) => {
            set(&mut root, path, key, value.clone());
            (join(path, key), vec![])
        }
        Mutation::AutoscaleValue(key, value, word) => {
            set(&mut root, autoscale, key, value.clone());
            (join(autoscale, key), vec![(*word).to_owned()])
        }
        Mutation::MaxBelowMin(min, max) => {
            set(&mut root, autoscale, "min", Node::Raw(min.to_string()));
            set(&mut root, autoscale, "max", Node::Raw(max.to_string()));
            ("spec.autoscale.max".into(), vec![format!("must be at least spec.autoscale.min ({min}), found {max}")])
        }
        Mutation::PanicAboveStable(stable, panic) => {
            set(&mut root, autoscale, "stableWindow", s(format!("{stable}s")));
            set(&mut root, autoscale, "panicWindow", s(format!("{panic}s")));
            (
                "spec.autoscale.panicWindow".into(),
                vec![format!("{panic}s exceeds spec.autoscale.stableWindow ({stable}s)")],
            )
        }
        Mutation::ReplicasOutsideScale(min, max, replicas) => {
            set(&mut root, autoscale, "min", Node::Raw(min.to_string()));
            set(&mut root, autoscale, "max", Node::Raw(max.to_string()));
            set(&mut root, "spec", "replicas", Node::Raw(replicas.to_string()));
            ("spec.replicas".into(), vec![format!("{replicas} is outside spec.autoscale's range {min}..={max}")])
        }
    };
    (root, field, words)
}

// ---------------------------------------------------------------------------
// YAML-ish text from a grammar over the real field names.
// ---------------------------------------------------------------------------

const FIELD_NAMES: [&str; 20] = [
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "spec",
    "module",
    "replicas",
    "routes",
    "host",
    "path",
    "env",
    "resources",
    "memory",
    "cpu",
    "instanceMemory",
    "timeout",
    "autoscale",
    "min",
    "max",
    "panicWindow",
];

const JUNK_KEYS: [&str; 16] = [
    "",
    "x",
    "apiversion",
    "Spec",
    "<<",
    "?",
    "- a",
    "a: b",
    "1",
    "~",
    "&a k",
    "*a",
    "!t k",
    "#c",
    "labels",
    "HOSTNAME",
];

const VALUES: [&str; 32] = [
    "shoal.dev/v1",
    "Service",
    "kubia",
    "hello.wasm",
    "64Mi",
    "1.5Gi",
    "500m",
    "0.5",
    "10s",
    "1m 30s",
    "/api",
    "/",
    "*.example.com",
    "Example.COM",
    "3",
    "1000",
    "1001",
    "-1",
    "1e6",
    "0x10",
    "HOSTNAME",
    "16Ei",
    "128m",
    "0",
    "1h",
    "",
    "api?x",
    "a b",
    "é",
    "9999999999999999999999",
    "70%",
    "6s",
];

const RAW_JUNK: [&str; 28] = [
    "|",
    ">",
    "|-\n  text",
    "&a",
    "&a x",
    "*a",
    "*b",
    "!!str",
    "!!binary x",
    "!!int x",
    "!!float",
    "!custom x",
    "\"open",
    "'open",
    "[",
    "]",
    "{",
    "}",
    "{a: [}",
    "---",
    "...",
    "%YAML 1.2",
    "? x",
    ": y",
    "- - -",
    "@",
    "`",
    "\t",
];

fn fuzz_scalar() -> impl Strategy<Value = Node> {
    prop_oneof![
        3 => prop::sample::select(VALUES.to_vec()).prop_map(s),
        2 => prop::sample::select(VALUES.to_vec()).prop_map(|v| Node::Raw(v.to_owned())),
        2 => prop::sample::select(RAW_JUNK.to_vec()).prop_map(|v| Node::Raw(v.to_owned())),
        1 => "[ -~]{0,12}".prop_map(Node::Raw),
        1 => any::<String>().prop_map(Node::Str),
        1 => Just(Node::Null),
        1 => any::<i64>().prop_map(|n| Node::Raw(n.to_string())),
    ]
}

fn fuzz_key() -> impl Strategy<Value = Node> {
    prop_oneof![
        6 => prop::sample::select(FIELD_NAMES.to_vec()).prop_map(s),
        1 => prop::sample::select(FIELD_NAMES.to_vec()).prop_map(|k| Node::Raw(k.to_owned())),
        2 => prop::sample::select(JUNK_KEYS.to_vec()).prop_map(s),
        1 => prop::sample::select(JUNK_KEYS.to_vec()).prop_map(|k| Node::Raw(k.to_owned())),
        1 => fuzz_scalar(),
    ]
}

fn fuzz_node() -> impl Strategy<Value = Node> {
    fuzz_scalar().prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            3 => prop::collection::vec((fuzz_key(), inner.clone()), 0..6).prop_map(Node::Map),
            1 => prop::collection::vec(inner, 0..5).prop_map(Node::Seq),
        ]
    })
}

fn fuzz_document() -> impl Strategy<Value = Option<Node>> {
    prop_oneof![
        6 => prop::collection::vec((fuzz_key(), fuzz_node()), 0..6).prop_map(|e| Some(Node::Map(e))),
        1 => fuzz_node().prop_map(Some),
        1 => Just(None),
    ]
}

/// Small edits to rendered text: insert a character, delete one, duplicate or
/// drop a line, change its indentation, add a `---`.
fn corrupt(text: &str, edits: &[(Index, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (index, op, c) in edits {
        let len = chars.len();
        let at = if len == 0 { 0 } else { index.index(len + 1) };
        let line_start = chars[..at].iter().rposition(|&c| c == '\n').map_or(0, |p| p + 1);
        let line_end = chars[at..].iter().position(|&c| c == '\n').map_or(len, |p| at + p + 1);
        match op % 6 {
            0 => chars.insert(at, *c),
            1 if at < len => {
                chars.remove(at);
            }
            2 => {
                let line: Vec<char> = chars[line_start..line_end].to_vec();
                insert_chars(&mut chars, line_start, &line);
            }
            3 => {
                chars.drain(line_start..line_end);
            }
            4 => chars.insert(line_start, ' '),
            _ => insert_chars(&mut chars, line_start, &['-', '-', '-', '\n']),
        }
    }
    chars.into_iter().collect()
}

fn insert_chars(chars: &mut Vec<char>, at: usize, new: &[char]) {
    let tail = chars.split_off(at);
    chars.extend_from_slice(new);
    chars.extend(tail);
}

fn yaml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(" \t\n:-#&*!|>'\"{}[],?%@`~.\\0aZ".chars().collect::<Vec<_>>()),
        1 => any::<char>(),
    ]
}

/// A node of `root` chosen by pre-order position.
fn nth_node(root: &mut Node, mut n: usize) -> &mut Node {
    fn walk<'a>(node: &'a mut Node, n: &mut usize) -> Result<&'a mut Node, ()> {
        if *n == 0 {
            return Ok(node);
        }
        *n -= 1;
        match node {
            Node::Map(entries) => {
                for (_, v) in entries.iter_mut() {
                    if let Ok(found) = walk(v, n) {
                        return Ok(found);
                    }
                }
                Err(())
            }
            Node::Seq(items) => {
                for item in items.iter_mut() {
                    if let Ok(found) = walk(item, n) {
                        return Ok(found);
                    }
                }
                Err(())
            }
            _ => Err(()),
        }
    }
    let count = count_nodes(root);
    n %= count;
    walk(root, &mut n).expect("n < node count")
}

fn count_nodes(node: &Node) -> usize {
    1 + match node {
        Node::Map(entries) => entries.iter().map(|(_, v)| count_nodes(v)).sum(),
        Node::Seq(items) => items.iter().map(count_nodes).sum(),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// A big-number reference for quantities.
// ---------------------------------------------------------------------------

/// `digits × multiplier × 10^exp10` rounded up, and whether it is a whole
/// number; `None` when it does not fit in u64. Computed in decimal, digit
/// by digit, so nothing overflows on the way.
fn reference_value(digits: &str, multiplier: u64, exp10: i64) -> Option<(u64, bool)> {
    let mut number: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect(); // most significant first
    // × multiplier
    let mut carry: u128 = 0;
    for d in number.iter_mut().rev() {
        let product = u128::from(*d) * u128::from(multiplier) + carry;
        *d = (product % 10) as u32;
        carry = product / 10;
    }
    while carry > 0 {
        number.insert(0, (carry % 10) as u32);
        carry /= 10;
    }
    let first = number.iter().position(|&d| d != 0);
    let Some(first) = first else { return Some((0, true)) };
    let number = &number[first..];
    let (integer, round_up): (&[u32], bool) = if exp10 >= 0 {
        // Appending zeros: more than 20 digits never fits.
        if number.len() as i64 + exp10 > 20 {
            return None;
        }
        (number, false)
    } else {
        let drop = (-exp10) as usize;
        if drop >= number.len() {
            (&[], true)
        } else {
            let (keep, dropped) = number.split_at(number.len() - drop);
            (keep, dropped.iter().any(|&d| d != 0))
        }
    };
    let zeros = if exp10 > 0 { exp10 as usize } else { 0 };
    if integer.len() + zeros > 20 {
        return None;
    }
    let mut value: u128 = 0;
    for &d in integer.iter().chain(std::iter::repeat_n(&0, zeros)) {
        value = value * 10 + u128::from(d);
    }
    value += u128::from(round_up);
    u64::try_from(value).ok().map(|v| (v, !round_up))
}

/// A decimal number as written: integer digits and fraction digits (either
/// may be empty, not both).
#[derive(Debug, Clone)]
struct Number {
    int: String,
    frac: Option<String>,
}

impl Number {
    fn text(&self) -> String {
        let mut text = self.int.clone();
        if let Some(frac) = &self.frac {
            text.push('.');
            text.push_str(frac);
        }
        text
    }

    /// Digits and the power of ten to apply to them.
    fn digits(&self) -> (String, i64) {
        let frac = self.frac.clone().unwrap_or_default();
        (format!("{}{frac}", self.int), -(frac.len() as i64))
    }

    /// Significant digits as the parser counts them (leading zeros and
    /// trailing fraction zeros do not count).
    fn significant(&self) -> usize {
        let frac = self.frac.clone().unwrap_or_default();
        let digits = format!("{}{}", self.int, frac.trim_end_matches('0'));
        digits.trim_start_matches('0').len()
    }
}

fn number() -> impl Strategy<Value = Number> {
    let int =
        prop_oneof![Just(String::new()), Just("0".to_owned()), "[0-9]{1,3}", "[0-9]{1,25}", "0{1,3}[1-9][0-9]{0,5}"];
    let frac = prop::option::weighted(0.6, prop_oneof!["[0-9]{0,3}", "[0-9]{0,40}", "0{10,30}[1-9]{1,3}"]);
    (int, frac).prop_map(|(int, frac)| {
        // At least one digit somewhere.
        let int = if int.is_empty() && frac.as_deref().is_none_or(str::is_empty) { "7".to_owned() } else { int };
        Number { int, frac }
    })
}

// ---------------------------------------------------------------------------
// Regressions found by the properties (and by reading), fixed since; kept
// so that they stay fixed.
// ---------------------------------------------------------------------------

/// Found by `memory_decimal_matches_reference`. `parse_memory` multiplies
/// the whole mantissa by the binary unit in u128 before dividing by the
/// power of ten of the fraction (`quantity.rs`, `number.mantissa.checked_mul(
/// multiplier)`), so 21+ significant digits with `Ei` (36+ with `Ki`)
/// overflow and are reported as "too large" although the exact value fits
/// in u64. Needs a 20-digit fraction, so harmless in practice, but the
/// module promises exact arithmetic.
#[test]
fn regression_long_fraction_with_binary_unit() {
    // 3 × 2^60 + ceil(10^-20 × 2^60) = 3458764513820540928 + 1
    assert_eq!(parse_memory("3.00000000000000000001Ei"), Ok(3_458_764_513_820_540_929));
    // The case the property shrank to: ceil(0.4 × 2^30 + tiny) = 429496730.
    assert_eq!(parse_memory(".400000000000000000000000000001Gi"), Ok(429_496_730));
}

/// Found by reading `quantity.rs` while writing the reference, not by a
/// property (the inputs are over 10 kB). Exponents are clamped to ±10000
/// (`parse_exponent`), but a fraction can have more digits than that, so
/// `0.<10005 zeros>1e10010` (= 10^4) reads as 1 byte, and as "less than 1m"
/// CPU.
#[test]
fn regression_exponent_clamp_with_long_fraction() {
    let text = format!("0.{}1e10010", "0".repeat(10_005));
    assert_eq!(parse_memory(&text), Ok(10_000));
    assert_eq!(parse_cpu(&text), Ok(10_000_000));
}

/// Found by `damaged_manifests_never_panic` (`labels: {"": {}}` gave the
/// field `metadata.labels.`). Map keys in error paths are quoted by the
/// validation phase (`spec.env["a.b"]`, as `ManifestError` documents) but
/// written raw by the serde phase, so a type error under the same key gives
/// an empty last segment or a path that reads as nesting.
#[test]
fn regression_map_key_paths_are_quoted_alike() {
    let base = "apiVersion: shoal.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  module: a.wasm\n";
    for (env, field) in [(r#"{"": [1]}"#, r#"spec.env[""]"#), (r#"{"a.b": [1]}"#, r#"spec.env["a.b"]"#)] {
        let err = parse(&format!("{base}  env: {env}\n")).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Any string: no panic, and a well-formed result.
    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        check_any_text(&text)?;
    }

    /// Any bytes, read as lossy UTF-8 the way a file with bad bytes would be.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_any_text(&String::from_utf8_lossy(&bytes))?;
    }

    /// YAML-ish documents over the real field names, junk keys and values,
    /// random nesting and `---` separators, with small edits on top.
    #[test]
    fn yaml_grammar_never_panics(
        docs in prop::collection::vec(fuzz_document(), 1..4),
        style in style(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), yaml_char()), 0..4),
    ) {
        let text = corrupt(&render_documents(&docs, style), &edits);
        check_any_text(&text)?;
    }

    /// Valid manifests with random subtrees replaced by grammar junk: errors
    /// deep in the schema are well-formed, and whatever is accepted is within
    /// the documented limits.
    #[test]
    fn damaged_manifests_never_panic(
        service in gen_service(),
        damage in prop::collection::vec((any::<usize>(), fuzz_node()), 1..4),
        style in style(),
    ) {
        let mut root = service.node();
        for (position, junk) in damage {
            *nth_node(&mut root, position) = junk;
        }
        check_any_text(&render_documents(&[Some(root)], style))?;
    }

    /// A valid manifest parses to exactly the generated values, however it
    /// is laid out and quoted.
    #[test]
    fn valid_manifests_round_trip(service in gen_service(), style in style()) {
        let text = render_documents(&[Some(service.node())], style);
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n--- text:\n{text}")))?;
        prop_assert_eq!(parsed.len(), 1);
        service.check(&parsed[0])?;
        prop_assert_eq!(validate_set(&parsed), Ok(()));
    }

    /// Several valid documents (empty ones in between) parse in order.
    #[test]
    fn valid_documents_round_trip(
        services in prop::collection::vec(prop::option::weighted(0.8, gen_service()), 1..5),
        style in style(),
    ) {
        let docs: Vec<Option<Node>> = services.iter().map(|s| s.as_ref().map(GenService::node)).collect();
        let text = render_documents(&docs, style);
        let expected: Vec<&GenService> = services.iter().flatten().collect();
        match parse(&text) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.len(), expected.len());
                for (want, got) in expected.iter().zip(&parsed) {
                    want.check(got)?;
                }
            }
            Err(err) => {
                prop_assert!(expected.is_empty(), "{err}\n--- text:\n{text}");
                prop_assert_eq!(err, ManifestError::new("", "no Service documents"));
            }
        }
    }

    /// One invalid field in an otherwise valid manifest, placed among valid
    /// documents: the error names that field, and the document when there
    /// are several.
    #[test]
    fn one_bad_field_is_named(
        service in gen_service(),
        mutation in mutation(),
        others in prop::collection::vec(prop::option::weighted(0.7, gen_service()), 0..3),
        position in any::<Index>(),
        style in style(),
    ) {
        let (bad, field, words) = mutate(&service, &mutation);
        let mut docs: Vec<Option<Node>> = others.iter().map(|s| s.as_ref().map(GenService::node)).collect();
        let position = position.index(docs.len() + 1);
        docs.insert(position, Some(bad));
        let text = render_documents(&docs, style);
        let err = match parse(&text) {
            Ok(_) => return Err(TestCaseError::fail(format!("accepted; expected an error on {field}\n--- text:\n{text}"))),
            Err(err) => err,
        };
        check_error(&err)?;
        prop_assert_eq!(&err.field, &field, "{}\n--- text:\n{}", err, text);
        for word in &words {
            prop_assert!(err.message.contains(word.as_str()), "{:?} lacks {:?}", err.message, word);
        }
        let non_empty = docs.iter().filter(|d| d.is_some()).count();
        prop_assert_eq!(err.document, (non_empty > 1).then_some(position + 1), "{}", err);
    }

    /// `validate_set` against a model: the first duplicate name, else the
    /// first route that an earlier service already declared.
    #[test]
    fn validate_set_matches_model(
        services in prop::collection::vec(
            (
                gen_service(),
                prop::sample::select(vec!["a", "b", "c", "d"]),
                prop::collection::vec(
                    (
                        prop::sample::select(vec![None, Some("a.test"), Some("A.test"), Some("*.test"), Some("b.test")]),
                        prop::sample::select(vec![None, Some("/"), Some("/x"), Some("/x/")]),
                    ),
                    0..4,
                ),
            ),
            1..5,
        ),
        style in style(),
    ) {
        let services: Vec<GenService> = services
            .into_iter()
            .map(|(mut service, name, routes)| {
                service.name = name.to_owned();
                let routes: Vec<GenRoute> = routes
                    .into_iter()
                    .map(|(host, path)| GenRoute {
                        host: host.map(str::to_owned),
                        path: path.map(str::to_owned).or_else(|| host.is_none().then(|| "/".to_owned())),
                    })
                    .collect();
                service.routes = (!routes.is_empty()).then(|| dedupe(routes));
                service
            })
            .collect();
        let docs: Vec<Option<Node>> = services.iter().map(|s| Some(s.node())).collect();
        let parsed = parse(&render_documents(&docs, style)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (want, got) in services.iter().zip(&parsed) {
            want.check(got)?;
        }

        let mut names = BTreeSet::new();
        let duplicate_name = services.iter().find(|s| !names.insert(s.name.clone()));
        let expected = if let Some(dup) = duplicate_name {
            Err(("metadata.name".to_owned(), format!("{:?}", dup.name)))
        } else {
            let mut owners: std::collections::HashMap<Route, String> = std::collections::HashMap::new();
            let mut found = Ok(());
            'outer: for service in &services {
                for (i, route) in service.expected_routes().into_iter().enumerate() {
                    if let Some(owner) = owners.get(&route) {
                        found = Err((format!("spec.routes[{i}]"), format!("{owner:?}")));
                        break 'outer;
                    }
                    owners.insert(route, service.name.clone());
                }
            }
            found
        };
        match (validate_set(&parsed), expected) {
            (Ok(()), Ok(())) => {}
            (Err(err), Err((field, word))) => {
                check_error(&err)?;
                prop_assert_eq!(&err.field, &field, "{}", err);
                prop_assert!(err.message.contains(&word), "{} lacks {}", err, word);
            }
            (got, want) => return Err(TestCaseError::fail(format!("validate_set: {got:?}, model: {want:?}"))),
        }
    }

    /// `parse_memory` and `parse_cpu` never panic, and every error names the
    /// input.
    #[test]
    fn quantities_never_panic(
        text in prop_oneof![
            any::<String>(),
            "[+-]?[0-9]{0,45}(\\.[0-9]{0,45})?([eE][+-]?[0-9]{0,12}|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|u|n|[a-zA-Z]{0,3})?",
            "[0-9.eE+-]{0,20}[a-zA-Z]{0,2}",
        ]
    ) {
        for result in [parse_memory(&text).map(|_| ()), parse_cpu(&text).map(|_| ())] {
            if let Err(message) = result {
                prop_assert!(message.contains(&format!("{text:?}")), "{message:?} does not name {text:?}");
            }
        }
    }

    /// n + unit is exactly n × multiplier, or "too large" exactly when that
    /// exceeds u64.
    #[test]
    fn memory_integer_times_unit(
        n in prop_oneof![any::<u64>().prop_map(u128::from), any::<u128>(), 0u128..100_000],
        unit in 0..MEMORY_UNITS.len(),
        zeros in 0usize..3,
    ) {
        let (suffix, multiplier) = MEMORY_UNITS[unit];
        let text = format!("{}{n}{suffix}", "0".repeat(zeros));
        let result = parse_memory(&text);
        if n.to_string().len() > 38 {
            prop_assert!(result.as_ref().is_err_and(|e| e.contains("too many digits")), "{text}: {result:?}");
        } else {
            match n.checked_mul(multiplier).filter(|v| *v <= u128::from(u64::MAX)) {
                Some(want) => prop_assert_eq!(result, Ok(want as u64), "{}", text),
                None => prop_assert!(result.as_ref().is_err_and(|e| e.contains("too large")), "{text}: {result:?}"),
            }
        }
    }

    /// Decimal numbers with fractions and exponents, with any unit: the
    /// exact value rounded up to a whole byte (big-number reference).
    #[test]
    fn memory_decimal_matches_reference(
        number in number(),
        unit in 0..MEMORY_UNITS.len() + 1,
        exponent in prop_oneof![-45i64..=45, -12_000i64..=12_000],
        exponent_style in 0u8..3,
    ) {
        // The last "unit" is a decimal exponent instead of a suffix.
        let (suffix, multiplier, exp10) = if unit == MEMORY_UNITS.len() {
            let e = match exponent_style { 0 => format!("e{exponent}"), 1 => format!("E{exponent}"), _ if exponent >= 0 => format!("e+{exponent}"), _ => format!("e{exponent}") };
            (e, 1u64, exponent)
        } else {
            let (suffix, multiplier) = MEMORY_UNITS[unit];
            (suffix.to_owned(), multiplier as u64, 0)
        };
        let text = format!("{}{suffix}", number.text());
        let result = parse_memory(&text);
        if number.significant() > 38 {
            prop_assert!(result.as_ref().is_err_and(|e| e.contains("too many digits")), "{text}: {result:?}");
        } else {
            let (digits, scale) = number.digits();
            match reference_value(&digits, multiplier, scale + exp10) {
                Some((want, _)) => prop_assert_eq!(result, Ok(want), "{}", text),
                None => prop_assert!(result.as_ref().is_err_and(|e| e.contains("too large")), "{text}: {result:?}"),
            }
        }
    }

    /// CPU: milli-cores, decimal cores and exponents give exactly the
    /// milli-core count; anything finer than 1m or above u32 is an error.
    #[test]
    fn cpu_matches_reference(
        number in number(),
        form in 0u8..3,
        exponent in -8i64..=8,
    ) {
        let (suffix, exp10) = match form {
            0 => ("m".to_owned(), 0),
            1 => (String::new(), 3),
            _ => (format!("e{exponent}"), exponent + 3),
        };
        let text = format!("{}{suffix}", number.text());
        let result = parse_cpu(&text);
        let (digits, scale) = number.digits();
        if number.significant() > 38 {
            prop_assert!(result.as_ref().is_err_and(|e| e.contains("too many digits")), "{text}: {result:?}");
        } else {
            match reference_value(&digits, 1, scale + exp10) {
                Some((millis, true)) => match u32::try_from(millis) {
                    Ok(want) => prop_assert_eq!(result, Ok(want), "{}", text),
                    Err(_) => prop_assert!(result.as_ref().is_err_and(|e| e.contains("too large")), "{text}: {result:?}"),
                },
                Some((_, false)) => prop_assert!(
                    result.as_ref().is_err_and(|e| e.contains("milli-cores") || e.contains("less than 1m")),
                    "{text}: {result:?}"
                ),
                // Above u64: too large, or not whole either.
                None => prop_assert!(result.is_err(), "{text}: {result:?}"),
            }
        }
    }
}
