//! `spec.autoscale`: defaults, every field, each range, the checks across
//! fields and how `spec.replicas` reads with it.

mod common;

use std::time::Duration;

use common::{assert_error, parse_one, with_spec};
use shoal_api::{Autoscale, ScaleMetric, Service};

const SECOND: Duration = Duration::from_secs(1);

/// The values `autoscale: {}` gives.
fn defaults() -> Autoscale {
    Autoscale {
        min: 1,
        max: 10,
        metric: ScaleMetric::Concurrency,
        target: 10,
        target_utilization: 70,
        stable_window: 60 * SECOND,
        panic_window: 6 * SECOND,
        panic_threshold: 200,
        tolerance: 10,
        max_scale_up_rate: 1000,
        max_scale_down_rate: 2,
        scale_to_zero_grace_period: 30 * SECOND,
    }
}

/// A document whose `spec.autoscale` holds `fields` (flow style, e.g.
/// `min: 0, max: 3`), with `extra` before it under `spec:`.
fn with_autoscale(extra: &str, fields: &str) -> String {
    with_spec(&format!("{extra}  autoscale: {{{fields}}}\n"))
}

fn autoscale_of(service: &Service) -> &Autoscale {
    service.spec.autoscale.as_ref().expect("spec.autoscale should be set")
}

#[test]
fn absent_autoscale_changes_nothing() {
    let spec = parse_one(&with_spec("")).spec;
    assert_eq!(spec.autoscale, None);
    assert_eq!(spec.replicas, 1);
    let spec = parse_one(&with_spec("  replicas: 0\n")).spec;
    assert_eq!((spec.replicas, spec.autoscale), (0, None));
    // A null value, like any other section, means "not given".
    let spec = parse_one(&with_spec("  autoscale: ~\n")).spec;
    assert_eq!((spec.replicas, spec.autoscale), (1, None));
}

#[test]
fn empty_autoscale_gives_every_default() {
    let service = parse_one(&with_autoscale("", ""));
    assert_eq!(autoscale_of(&service), &defaults());
    assert_eq!(Autoscale::default(), defaults(), "Autoscale::default() is what `autoscale: {{}}` gives");
    // Initial count: min (1).
    assert_eq!(service.spec.replicas, 1);

    // Writing a default out changes nothing.
    let block = parse_one(&with_spec("  autoscale:\n    metric: concurrency\n"));
    assert_eq!(block, service);
}

#[test]
fn rps_default_target_is_100() {
    let service = parse_one(&with_autoscale("", "metric: rps"));
    assert_eq!(autoscale_of(&service), &Autoscale { metric: ScaleMetric::Rps, target: 100, ..defaults() });
    // An explicit target wins for either metric.
    let service = parse_one(&with_autoscale("", "metric: rps, target: 7"));
    assert_eq!(autoscale_of(&service).target, 7);
    let service = parse_one(&with_autoscale("", "metric: concurrency"));
    assert_eq!(autoscale_of(&service), &defaults());
}

#[test]
fn full_explicit_example() {
    let text = with_spec(
        "  replicas: 2
  autoscale:
    min: 0
    max: 20
    metric: rps
    target: 250
    targetUtilization: 80
    stableWindow: 2m
    panicWindow: 10s
    panicThreshold: 300%
    tolerance: \"5%\"
    maxScaleUpRate: 10
    maxScaleDownRate: 4
    scaleToZeroGracePeriod: 1m 30s
",
    );
    let service = parse_one(&text);
    assert_eq!(service.spec.replicas, 2);
    assert_eq!(
        autoscale_of(&service),
        &Autoscale {
            min: 0,
            max: 20,
            metric: ScaleMetric::Rps,
            target: 250,
            target_utilization: 80,
            stable_window: 120 * SECOND,
            panic_window: 10 * SECOND,
            panic_threshold: 300,
            tolerance: 5,
            max_scale_up_rate: 10,
            max_scale_down_rate: 4,
            scale_to_zero_grace_period: 90 * SECOND,
        }
    );

    // The JSON form keeps it.
    let json = serde_json::to_value(&service).unwrap();
    assert_eq!(json["spec"]["autoscale"]["stableWindow"], "2m");
    assert_eq!(json["spec"]["autoscale"]["metric"], "rps");
    assert_eq!(serde_json::from_value::<Service>(json).unwrap(), service);
}

#[test]
fn percentages_as_numbers_or_with_a_percent_sign() {
    for (written, value) in [("70", 70), ("\"70%\"", 70), ("70%", 70), ("'1%'", 1), ("100", 100), ("+5%", 5)] {
        let service = parse_one(&with_autoscale("", &format!("targetUtilization: {written}")));
        assert_eq!(autoscale_of(&service).target_utilization, value, "{written}");
    }
    let service = parse_one(&with_autoscale("", "tolerance: 0%, panicThreshold: 1000%"));
    assert_eq!((autoscale_of(&service).tolerance, autoscale_of(&service).panic_threshold), (0, 1000));

    const FIELD: &str = "spec.autoscale.targetUtilization";
    for fraction in ["0.7", "70.5%", "\"70.5\"", "1e2"] {
        assert_error(
            &with_autoscale("", &format!("targetUtilization: {fraction}")),
            FIELD,
            &["must be a whole number of percent", "(expected e.g. 70 or \"70%\")"],
        );
    }
    for text in ["lots", "70 %", "%", "70%%", "\"\"", "0x46", ".inf", "%70"] {
        assert_error(
            &with_autoscale("", &format!("targetUtilization: \"{}\"", text.trim_matches('"'))),
            FIELD,
            &["is not a percentage (expected e.g. 70 or \"70%\")"],
        );
    }
    assert_error(&with_autoscale("", "tolerance: [10]"), "spec.autoscale.tolerance", &["invalid type"]);
}

#[test]
fn range_errors_name_the_field_and_the_range() {
    // (fields, field path, words of the message)
    let cases: &[(&str, &str, &[&str])] = &[
        ("min: -1", "spec.autoscale.min", &["must be between 0 and 1000, found -1"]),
        ("min: 1001, max: 1000", "spec.autoscale.min", &["must be between 0 and 1000, found 1001"]),
        ("max: 0", "spec.autoscale.max", &["must be between 1 and 1000, found 0"]),
        ("max: 1001", "spec.autoscale.max", &["must be between 1 and 1000, found 1001"]),
        ("target: 0", "spec.autoscale.target", &["must be between 1 and 1000000, found 0"]),
        ("target: 1000001", "spec.autoscale.target", &["must be between 1 and 1000000, found 1000001"]),
        ("targetUtilization: 0", "spec.autoscale.targetUtilization", &["must be between 1% and 100%, found 0%"]),
        ("targetUtilization: 101%", "spec.autoscale.targetUtilization", &["must be between 1% and 100%, found 101%"]),
        (
            "targetUtilization: 99999999999999999999999999999999999999999999",
            "spec.autoscale.targetUtilization",
            &["must be between 1% and 100%"],
        ),
        ("stableWindow: 1s", "spec.autoscale.stableWindow", &[r#""1s" must be between 2s and 1h"#]),
        ("stableWindow: 61m", "spec.autoscale.stableWindow", &[r#""61m" must be between 2s and 1h"#]),
        (
            "stableWindow: 60",
            "spec.autoscale.stableWindow",
            &[r#""60" is not a duration (expected e.g. 10s, 500ms, 1m)"#],
        ),
        (
            "panicWindow: 500ms",
            "spec.autoscale.panicWindow",
            &[r#""500ms" must be between 1s and spec.autoscale.stableWindow (1m)"#],
        ),
        ("panicWindow: soon", "spec.autoscale.panicWindow", &["\"soon\" is not a duration"]),
        ("panicThreshold: 109", "spec.autoscale.panicThreshold", &["must be between 110% and 1000%, found 109%"]),
        ("panicThreshold: 1001%", "spec.autoscale.panicThreshold", &["must be between 110% and 1000%, found 1001%"]),
        ("tolerance: -1", "spec.autoscale.tolerance", &["must be between 0% and 99%, found -1%"]),
        ("tolerance: 100%", "spec.autoscale.tolerance", &["must be between 0% and 99%, found 100%"]),
        ("maxScaleUpRate: 1", "spec.autoscale.maxScaleUpRate", &["must be between 2 and 1000, found 1"]),
        ("maxScaleUpRate: 1001", "spec.autoscale.maxScaleUpRate", &["must be between 2 and 1000, found 1001"]),
        ("maxScaleDownRate: 1", "spec.autoscale.maxScaleDownRate", &["must be between 2 and 1000, found 1"]),
        ("maxScaleDownRate: 1001", "spec.autoscale.maxScaleDownRate", &["must be between 2 and 1000, found 1001"]),
        (
            "scaleToZeroGracePeriod: 1h 1s",
            "spec.autoscale.scaleToZeroGracePeriod",
            &[r#""1h 1s" must be between 0s and 1h"#],
        ),
        ("scaleToZeroGracePeriod: -1s", "spec.autoscale.scaleToZeroGracePeriod", &["is not a duration"]),
        ("metric: cpu", "spec.autoscale.metric", &[r#""cpu" is not a metric (expected concurrency or rps)"#]),
        ("metric: RPS", "spec.autoscale.metric", &["expected concurrency or rps"]),
        ("min: many", "spec.autoscale.min", &["invalid type", "expected a whole number"]),
        ("target: 1.5", "spec.autoscale.target", &["expected a whole number"]),
    ];
    for (fields, field, words) in cases {
        assert_error(&with_autoscale("", fields), field, words);
    }
}

#[test]
fn the_edges_of_each_range_are_accepted() {
    let text = with_autoscale(
        "",
        "min: 1000, max: 1000, target: 1000000, targetUtilization: 100, stableWindow: 1h, \
         panicWindow: 1h, panicThreshold: 1000, tolerance: 99, maxScaleUpRate: 1000, \
         maxScaleDownRate: 1000, scaleToZeroGracePeriod: 1h",
    );
    let service = parse_one(&text);
    let a = autoscale_of(&service);
    assert_eq!((a.min, a.max, a.target, a.target_utilization), (1000, 1000, 1_000_000, 100));
    assert_eq!((a.stable_window, a.panic_window), (3600 * SECOND, 3600 * SECOND));
    assert_eq!((a.panic_threshold, a.tolerance, a.max_scale_up_rate, a.max_scale_down_rate), (1000, 99, 1000, 1000));
    assert_eq!(a.scale_to_zero_grace_period, 3600 * SECOND);
    assert_eq!(service.spec.replicas, 1000);

    let text = with_autoscale(
        "",
        "min: 0, max: 1, target: 1, targetUtilization: 1, stableWindow: 2s, panicWindow: 1s, \
         panicThreshold: 110, tolerance: 0, maxScaleUpRate: 2, maxScaleDownRate: 2, \
         scaleToZeroGracePeriod: 0s",
    );
    let service = parse_one(&text);
    let a = autoscale_of(&service);
    assert_eq!((a.min, a.max, a.target, a.target_utilization), (0, 1, 1, 1));
    assert_eq!((a.stable_window, a.panic_window), (2 * SECOND, SECOND));
    assert_eq!((a.panic_threshold, a.tolerance, a.max_scale_up_rate, a.max_scale_down_rate), (110, 0, 2, 2));
    assert_eq!(a.scale_to_zero_grace_period, Duration::ZERO);
}

#[test]
fn max_below_min() {
    let err = assert_error(&with_autoscale("", "min: 5, max: 3"), "spec.autoscale.max", &[]);
    assert_eq!(err.to_string(), "spec.autoscale.max: must be at least spec.autoscale.min (5), found 3");
    // Against the default max, the message says so.
    let err = assert_error(&with_autoscale("", "min: 20"), "spec.autoscale.max", &[]);
    assert_eq!(err.to_string(), "spec.autoscale.max: must be at least spec.autoscale.min (20), found the default 10");
    // Equal is fine.
    let service = parse_one(&with_autoscale("", "min: 3, max: 3"));
    assert_eq!((autoscale_of(&service).min, autoscale_of(&service).max, service.spec.replicas), (3, 3, 3));
}

#[test]
fn panic_window_longer_than_stable_window() {
    let err =
        assert_error(&with_autoscale("", "stableWindow: 30s, panicWindow: 45s"), "spec.autoscale.panicWindow", &[]);
    assert_eq!(
        err.to_string(),
        "spec.autoscale.panicWindow: 45s exceeds spec.autoscale.stableWindow (30s): \
         the panic window must fit in the stable window"
    );
    // Against the default stable window (60s).
    assert_error(
        &with_autoscale("", "panicWindow: 2m"),
        "spec.autoscale.panicWindow",
        &["2m exceeds spec.autoscale.stableWindow (1m)"],
    );
    // Equal is fine.
    let service = parse_one(&with_autoscale("", "stableWindow: 30s, panicWindow: 30s"));
    assert_eq!(autoscale_of(&service).panic_window, 30 * SECOND);
    // The default panic window (6s) never exceeds a shorter stable window.
    let service = parse_one(&with_autoscale("", "stableWindow: 3s"));
    assert_eq!((autoscale_of(&service).stable_window, autoscale_of(&service).panic_window), (3 * SECOND, 3 * SECOND));
}

#[test]
fn replicas_outside_min_max() {
    let err = assert_error(&with_autoscale("  replicas: 3\n", "min: 0, max: 2"), "spec.replicas", &[]);
    assert_eq!(err.to_string(), "spec.replicas: 3 is outside spec.autoscale's range 0..=2");
    let err = assert_error(&with_autoscale("  replicas: 1\n", "min: 2, max: 5"), "spec.replicas", &[]);
    assert_eq!(err.to_string(), "spec.replicas: 1 is outside spec.autoscale's range 2..=5");
    // Against the defaults (1..=10), including replicas: 0.
    assert_error(
        &with_autoscale("  replicas: 0\n", ""),
        "spec.replicas",
        &["0 is outside spec.autoscale's range 1..=10"],
    );
    assert_error(
        &with_autoscale("  replicas: 11\n", ""),
        "spec.replicas",
        &["11 is outside spec.autoscale's range 1..=10"],
    );
    // Out of the absolute range: the usual message.
    assert_error(
        &with_autoscale("  replicas: 1001\n", ""),
        "spec.replicas",
        &["must be between 0 and 1000, found 1001"],
    );

    // Within the range, given replicas is the initial count.
    for (replicas, fields) in [(0, "min: 0, max: 2"), (2, "min: 0, max: 2"), (5, "min: 5, max: 5"), (7, "")] {
        let service = parse_one(&with_autoscale(&format!("  replicas: {replicas}\n"), fields));
        assert_eq!(service.spec.replicas, replicas, "{fields}");
    }
}

#[test]
fn initial_count_without_replicas() {
    // min 0 starts at one replica, like Knative's initial scale of 1.
    let service = parse_one(&with_autoscale("", "min: 0"));
    assert_eq!((autoscale_of(&service).min, service.spec.replicas), (0, 1));
    let service = parse_one(&with_autoscale("", "min: 0, max: 1"));
    assert_eq!(service.spec.replicas, 1);
    // Otherwise min.
    let service = parse_one(&with_autoscale("", "min: 4"));
    assert_eq!(service.spec.replicas, 4);
    let service = parse_one(&with_autoscale("", "min: 50, max: 100"));
    assert_eq!(service.spec.replicas, 50);
}

#[test]
fn unknown_field_inside_autoscale() {
    let err = assert_error(
        &with_spec("  autoscale:\n    min: 0\n    maxReplicas: 5\n"),
        "spec.autoscale.maxReplicas",
        &["unknown field, expected one of min, max, metric, target, targetUtilization, stableWindow, panicWindow, \
             panicThreshold, tolerance, maxScaleUpRate, maxScaleDownRate, scaleToZeroGracePeriod"],
    );
    assert!(err.to_string().contains("(line 9, column 5)"), "{err}");
    // snake_case is not the manifest's spelling.
    assert_error(
        &with_autoscale("", "target_utilization: 70"),
        "spec.autoscale.target_utilization",
        &["unknown field"],
    );
}

#[test]
fn autoscale_of_the_wrong_type() {
    assert_error(
        &with_spec("  autoscale: true\n"),
        "spec.autoscale",
        &["invalid type", "expected a mapping with min, max, metric", "and scaleToZeroGracePeriod"],
    );
    assert_error(&with_spec("  autoscale:\n    - min: 1\n"), "spec.autoscale", &["invalid type"]);
}

#[test]
fn spec_lists_autoscale_among_its_fields() {
    assert_error(
        &with_spec("  autoscaling: {}\n"),
        "spec.autoscaling",
        &[
            "unknown field, expected one of module, replicas, routes, env, resources, limits, instances, timeout, autoscale",
        ],
    );
    assert_error(
        &with_spec("  - x\n").replace("spec:\n  module: hello.wasm\n", "spec:\n"),
        "spec",
        &[
            "expected a mapping with module, replicas, routes, env, resources, limits, instances, timeout, autoscale, allowOutbound, readiness and liveness",
        ],
    );
}

#[test]
fn several_documents_name_the_document() {
    let bad = with_autoscale("", "min: 5, max: 3").replace("kubia", "other");
    let text = format!("{}---\n{bad}", with_spec(""));
    let err = common::parse(&text).unwrap_err();
    assert_eq!(err.to_string(), "document 2: spec.autoscale.max: must be at least spec.autoscale.min (5), found 3");
}

#[test]
fn instances_default_to_what_the_module_supports() {
    use shoal_api::PolicyReason;
    let spec = &parse_one(&with_spec("")).spec;
    assert_eq!(spec.instances, shoal_api::Instances::default());
    assert_eq!(spec.instances.max_requests, None);
    assert_eq!(spec.instances.max_idle, Duration::from_secs(10));
    // A fresh instance per request, unless the module says it serves many.
    let fresh = spec.instances.policy(false);
    assert_eq!((fresh.max_requests, fresh.reason), (1, PolicyReason::Default));
    let reused = spec.instances.policy(true);
    assert_eq!((reused.max_requests, reused.reason), (100_000, PolicyReason::ModuleReuses));
    assert_eq!(reused.max_idle, Duration::from_secs(10));
    assert!(
        reused.to_string().starts_with("reused, up to 100000 requests per instance, idle ones kept 10s"),
        "{reused}"
    );
    let spec = &parse_one(&with_spec("  instances: {maxRequests: 1000, maxIdle: 2s}\n")).spec;
    assert_eq!(spec.instances.max_requests, Some(1000));
    assert_eq!(spec.instances.max_idle, Duration::from_secs(2));
    // The manifest wins either way.
    for module_reuses in [false, true] {
        let policy = spec.instances.policy(module_reuses);
        assert_eq!((policy.max_requests, policy.reason), (1000, PolicyReason::Manifest));
    }
    let spec = &parse_one(&with_spec("  instances: {maxRequests: 1}\n")).spec;
    let policy = spec.instances.policy(true);
    assert_eq!((policy.max_requests, policy.reason), (1, PolicyReason::Manifest));
    assert_eq!(policy.to_string(), "a fresh instance per request (spec.instances)");
    assert_error(
        &with_spec("  instances: {maxRequests: 0}\n"),
        "spec.instances.maxRequests",
        &["must be between 1 and 100000, found 0"],
    );
    assert_error(&with_spec("  instances: {maxIdle: 2h}\n"), "spec.instances.maxIdle", &["between 0s and 1h"]);
    assert_error(
        &with_spec("  instances: {reuse: 5}\n"),
        "spec.instances.reuse",
        &["unknown field", "maxRequests", "maxIdle"],
    );
}
