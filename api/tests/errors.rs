//! Invalid manifests: each error names the field path and what is wrong.

mod common;

use std::time::Duration;

use common::{FULL, assert_error, parse, parse_one, with_spec};
use shoal_api::API_VERSION;

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    let err = parse("apiVersion: shoal.dev/v1\nspec: [\n  x: y\n").unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("invalid YAML: "), "{shown}");
    assert!(shown.contains("line 4 column 1"), "{shown}");

    let text = format!("{FULL}---\nmetadata:\n  name: a\n   bad: 1\n");
    let shown = parse(&text).unwrap_err().to_string();
    assert!(shown.starts_with("document 2: invalid YAML: "), "{shown}");
    assert!(shown.contains("line 27 column 7"), "{shown}");

    let shown = parse("a: *nowhere\n").unwrap_err().to_string();
    assert!(shown.contains("unknown anchor"), "{shown}");
    assert!(shown.contains("line 1 column 4"), "{shown}");
}

#[test]
fn unknown_fields() {
    let top = with_spec("").replace("kind:", "kinds: x\nkind:");
    assert_error(&top, "kinds", &["unknown field, expected one of apiVersion, kind, metadata, spec"]);
    let err = assert_error(
        &with_spec("  replicass: 3\n"),
        "spec.replicass",
        &[
            "unknown field, expected one of module, replicas, routes, env, resources, limits, instances, timeout, autoscale",
        ],
    );
    assert!(err.to_string().contains("(line 7, column 3)"), "{err}");
    assert_error(
        &with_spec("  resources:\n    memroy: 64Mi\n"),
        "spec.resources.memroy",
        &["unknown field", "memory, cpu, instanceMemory"],
    );
    assert_error(
        &with_spec("  routes:\n    - path: /\n    - hots: a.example.com\n"),
        "spec.routes[1].hots",
        &["unknown field, expected one of host, path, tls"],
    );
    assert_error(
        &with_spec("  routes:\n    - path: /\n      tls: always\n"),
        "spec.routes[0].tls",
        &["\"always\" is not a TLS policy", "\"required\""],
    );
    assert_error(
        &with_spec("").replace("  name: kubia", "  name: kubia\n  namespace: x"),
        "metadata.namespace",
        &["unknown field"],
    );
}

#[test]
fn type_errors_name_the_field() {
    assert_error(&with_spec("  replicas: many\n"), "spec.replicas", &["invalid type", "expected a whole number"]);
    assert_error(&with_spec("  replicas: -1\n"), "spec.replicas", &["between 0 and 1000"]);
    assert_error(&with_spec("  routes: /api\n"), "spec.routes", &["invalid type"]);
    assert_error(&with_spec("  env:\n    - A=b\n"), "spec.env", &["expected a mapping of strings to strings"]);
    assert_error(&with_spec("  env:\n    A: x\n    A: y\n"), "spec.env", &["\"A\" appears more than once"]);
    assert_error(&format!("apiVersion: shoal.dev/v1\n{}", with_spec("")), "apiVersion", &["appears more than once"]);
    let err = parse("- just\n- a list\n").unwrap_err();
    assert!(err.to_string().contains("expected a Service manifest"), "{err}");
}

#[test]
fn bad_quantities() {
    assert_error(
        &with_spec("  resources: {memory: 64Q}\n"),
        "spec.resources.memory",
        &[r#""64Q" is not a quantity (expected e.g. 64Mi, 1Gi, 500M)"#],
    );
    assert_error(
        &with_spec("  resources: {memory: 8Mi}\n"),
        "spec.resources.memory",
        &["\"8Mi\" is below the minimum of 16Mi"],
    );
    assert_error(&with_spec("  resources: {memory: 128m}\n"), "spec.resources.memory", &["did you mean \"128Mi\""]);
    assert_error(&with_spec("  resources: {cpu: lots}\n"), "spec.resources.cpu", &[r#""lots" is not a CPU quantity"#]);
    assert_error(&with_spec("  resources: {cpu: 0.0001}\n"), "spec.resources.cpu", &["less than 1m"]);
    assert_error(&with_spec("  resources: {cpu: 0}\n"), "spec.resources.cpu", &["must be greater than 0"]);
    assert_error(&with_spec("  resources: {cpu: 1025}\n"), "spec.resources.cpu", &["maximum of 1024 cores"]);
    assert_error(
        &with_spec("  resources: {instanceMemory: 1Ki}\n"),
        "spec.resources.instanceMemory",
        &["between 64Ki and 4Gi"],
    );
}

#[test]
fn instance_memory_above_memory() {
    assert_error(
        &with_spec("  resources:\n    memory: 64Mi\n    instanceMemory: 128Mi\n"),
        "spec.resources.instanceMemory",
        &["128Mi exceeds spec.resources.memory (64Mi)"],
    );
}

#[test]
fn missing_and_wrong_header_fields() {
    let err = assert_error(&with_spec("").replace("  module: hello.wasm\n", "  replicas: 2\n"), "spec.module", &[]);
    assert_eq!(err.to_string(), "spec.module: required field missing");
    let wrong = with_spec("").replace("shoal.dev/v1", "v1");
    let err = assert_error(&wrong, "apiVersion", &[]);
    assert_eq!(err.to_string(), r#"apiVersion: expected "shoal.dev/v1", found "v1""#);
    assert_error(
        &with_spec("").replace("apiVersion: shoal.dev/v1\n", ""),
        "apiVersion",
        &["required field missing", API_VERSION],
    );
    assert_error(
        &with_spec("").replace("kind: Service", "kind: Deployment"),
        "kind",
        &[r#"expected "Service", found "Deployment""#],
    );
    assert_error(&with_spec("").replace("metadata:\n  name: kubia\n", ""), "metadata", &["required field missing"]);
    assert_error("apiVersion: shoal.dev/v1\nkind: Service\nmetadata: {name: a}\n", "spec", &["required field missing"]);
}

#[test]
fn bad_names_and_labels() {
    let err = assert_error(&with_spec("").replace("kubia", "Kubia_1"), "metadata.name", &[]);
    assert_eq!(
        err.to_string(),
        r#"metadata.name: "Kubia_1" is not a valid name (lowercase letters, digits and "-", at most 40 characters)"#
    );
    for name in ["-a", "a-", "\"\"", &"a".repeat(41)] {
        assert_error(&with_spec("").replace("kubia", name), "metadata.name", &["not a valid name"]);
    }
    parse_one(&with_spec("").replace("kubia", &"a".repeat(40)));
    assert_error(
        &with_spec("").replace("name: kubia", "name: kubia\n  labels: {\"a b\": x}"),
        "metadata.labels[\"a b\"]",
        &["not a valid label key"],
    );
    assert_error(
        &with_spec("").replace("name: kubia", "name: kubia\n  labels: {app: \"x y\"}"),
        "metadata.labels.app",
        &["not a valid label value"],
    );
    let ok =
        parse_one(&with_spec("").replace("name: kubia", "name: kubia\n  labels: {app.kubernetes.io/name: Kubia_1.0}"));
    assert_eq!(ok.labels["app.kubernetes.io/name"], "Kubia_1.0");
}

#[test]
fn env_rules() {
    let err = assert_error(&with_spec("  env: {HOSTNAME: x}\n"), "spec.env.HOSTNAME", &["reserved"]);
    assert!(err.to_string().contains("Shoal sets it"), "{err}");
    assert_error(&with_spec("  env: {\"A=B\": x}\n"), "spec.env[\"A=B\"]", &["must not contain \"=\""]);
    assert_error(&with_spec("  env: {\"\": x}\n"), "spec.env[\"\"]", &["must not be empty"]);
    assert_error(&with_spec("  env: {A: \"x\\0y\"}\n"), "spec.env.A", &["NUL"]);
}

#[test]
fn route_rules() {
    assert_error(&with_spec("  routes:\n    - path: api\n"), "spec.routes[0].path", &[r#"must start with "/""#]);
    assert_error(&with_spec("  routes:\n    - path: /a?b=1\n"), "spec.routes[0].path", &["\"?\" or \"#\""]);
    assert_error(
        &with_spec("  routes:\n    - path: /\n    - host: kubia.example.com:8080\n"),
        "spec.routes[1].host",
        &["must not include a port"],
    );
    assert_error(
        &with_spec("  routes:\n    - host: https://kubia.example.com\n"),
        "spec.routes[0].host",
        &["must not include a scheme"],
    );
    assert_error(
        &with_spec("  routes:\n    - host: kubia.example.com/api\n"),
        "spec.routes[0].host",
        &["must not include a path"],
    );
    for host in ["a..b", "-a.com", "a*.com", "*", "kubia_1.com", "*.*.com"] {
        assert_error(&with_spec(&format!("  routes:\n    - host: \"{host}\"\n")), "spec.routes[0].host", &[]);
    }
    assert_error(&with_spec("  routes:\n    - {}\n"), "spec.routes[0]", &["host and/or a path"]);
    assert_error(&with_spec("  routes: []\n"), "spec.routes", &["at least one route"]);
    assert_error(&with_spec("  routes:\n    - path: /a\n    - path: /a\n"), "spec.routes[1]", &["listed twice"]);
}

#[test]
fn timeouts() {
    let spec = parse_one(&with_spec("  timeout: 500ms\n")).spec;
    assert_eq!(spec.timeout, Duration::from_millis(500));
    let spec = parse_one(&with_spec("  timeout: 1m\n")).spec;
    assert_eq!(spec.timeout, Duration::from_secs(60));
    assert_error(
        &with_spec("  timeout: 10\n"),
        "spec.timeout",
        &["\"10\" is not a duration (expected e.g. 10s, 500ms, 1m)"],
    );
    assert_error(&with_spec("  timeout: 2h\n"), "spec.timeout", &["between 1ms and 1h"]);
    assert_error(&with_spec("  timeout: 0s\n"), "spec.timeout", &["between 1ms and 1h"]);
}

#[test]
fn allow_outbound_entries_are_checked_and_kept() {
    let service = parse_one(&with_spec("  allowOutbound: [\"http://kubia\", \"https://*.example.org:8443\"]\n"));
    assert_eq!(service.spec.allow_outbound, ["http://kubia", "https://*.example.org:8443"]);
    let json = serde_json::to_string(&service.spec).unwrap();
    let back: shoal_api::ServiceSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back.allow_outbound, service.spec.allow_outbound);
    assert!(parse_one(&with_spec("")).spec.allow_outbound.is_empty(), "denied by default");

    assert_error(
        &with_spec("  allowOutbound: [\"http://kubia\", \"kubia\"]\n"),
        "spec.allowOutbound[1]",
        &["\"kubia\" has no scheme", "scheme://host[:port]"],
    );
    assert_error(
        &with_spec("  allowOutbound: [\"http://kubia/api\"]\n"),
        "spec.allowOutbound[0]",
        &["names scheme, host and port only", "remove \"/api\""],
    );
    assert_error(&with_spec("  allowOutbound: http://kubia\n"), "spec.allowOutbound", &["sequence"]);
}
