//! `spec.readiness` and `spec.liveness`: defaults, every field, each range,
//! and that a probe is part of the revision (changing it rolls out).

mod common;

use common::{assert_error, parse_one, with_spec};
use shoal_api::Probe;

#[test]
fn a_probe_needs_only_a_path_and_gets_kubernetes_defaults() {
    let service = parse_one(&with_spec("  readiness: {path: /healthz}\n"));
    let expected = Probe {
        path: "/healthz".into(),
        initial_delay_seconds: 0,
        period_seconds: 10,
        timeout_seconds: 1,
        failure_threshold: 3,
    };
    assert_eq!(service.spec.readiness, Some(expected));
    assert_eq!(service.spec.liveness, None);
    let service = parse_one(&with_spec(
        "  liveness: {path: /live?deep=1, initialDelaySeconds: 5, periodSeconds: 2, timeoutSeconds: 3, failureThreshold: 1}\n",
    ));
    let liveness = service.spec.liveness.expect("spec.liveness");
    assert_eq!(
        (liveness.path.as_str(), liveness.initial_delay_seconds, liveness.period_seconds, liveness.timeout_seconds),
        ("/live?deep=1", 5, 2, 3)
    );
    assert_eq!(liveness.failure_threshold, 1);
    // Without probes, nothing is probed (and the JSON form has no field).
    let plain = parse_one(&with_spec(""));
    assert!(plain.spec.readiness.is_none() && plain.spec.liveness.is_none());
    assert!(!serde_json::to_string(&plain.spec).unwrap().contains("readiness"));
}

#[test]
fn bad_probes_name_the_field() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("readiness: {periodSeconds: 1}", "spec.readiness.path", &["required field missing"]),
        ("readiness: {path: healthz}", "spec.readiness.path", &[r#""healthz" must start with "/""#]),
        ("liveness: {path: /a b}", "spec.liveness.path", &["contains ' '", "percent-encode"]),
        ("liveness: {path: '/x#frag'}", "spec.liveness.path", &["contains '#'"]),
        ("readiness: {path: /h, periodSeconds: 0}", "spec.readiness.periodSeconds", &["between 1 and 3600, found 0"]),
        ("readiness: {path: /h, timeoutSeconds: 61}", "spec.readiness.timeoutSeconds", &["between 1 and 60"]),
        ("liveness: {path: /h, failureThreshold: 0}", "spec.liveness.failureThreshold", &["between 1 and 100"]),
        ("liveness: {path: /h, initialDelaySeconds: -1}", "spec.liveness.initialDelaySeconds", &["found -1"]),
        ("readiness: {path: /h, period: 5}", "spec.readiness.period", &["unknown field", "periodSeconds"]),
        ("readiness: /healthz", "spec.readiness", &["invalid type", "a mapping with path"]),
    ];
    for (fields, field, words) in cases {
        assert_error(&with_spec(&format!("  {fields}\n")), field, words);
    }
    let long = format!("  readiness: {{path: /{}}}\n", "a".repeat(1024));
    assert_error(&with_spec(&long), "spec.readiness.path", &["longer than 1024 bytes"]);
}
