//! Parsing valid manifests: every field, defaults, several documents,
//! checks across services and the JSON form.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{FULL, MI, parse, parse_one, with_spec};
use shoal_api::{Resources, Route, RouteTls, Service, validate_set};

#[test]
fn full_manifest() {
    let service = parse_one(FULL);
    assert_eq!(service.name, "kubia");
    assert_eq!(service.labels, BTreeMap::from([("app".into(), "kubia".into()), ("tier".into(), "web".into())]));
    let spec = &service.spec;
    assert_eq!(spec.module, Path::new("/srv/manifests/../target/wasm32-wasip2/release/hello.wasm"));
    assert_eq!(spec.module_field, "../target/wasm32-wasip2/release/hello.wasm");
    assert_eq!(spec.replicas, 3);
    assert_eq!(
        spec.routes,
        vec![
            Route::new(Some("kubia.example.com".into()), "/api"),
            Route::new(Some("*.kubia.dev".into()), "/"),
            Route::new(None, "/health"),
        ]
    );
    assert_eq!(
        spec.env,
        BTreeMap::from([
            ("EMPTY".into(), String::new()),
            ("GREETING".into(), "hi".into()),
            ("PORT".into(), "8080".into()),
        ])
    );
    assert_eq!(spec.resources, Resources { memory: 64 * MI, cpu_millis: Some(500), instance_memory: 16 * MI });
    assert_eq!(spec.timeout, Duration::from_secs(10));
}

#[test]
fn defaults() {
    let service = parse_one(&with_spec(""));
    assert!(service.labels.is_empty());
    let spec = service.spec;
    assert_eq!(spec.module, Path::new("/srv/manifests/hello.wasm"));
    assert_eq!(spec.module_field, "hello.wasm");
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.routes, vec![Route::new(None, "/")]);
    assert!(spec.env.is_empty());
    assert_eq!(spec.resources, Resources { memory: 128 * MI, cpu_millis: None, instance_memory: 64 * MI });
    assert_eq!(spec.timeout, Duration::from_secs(30));
}

#[test]
fn absolute_module_and_small_memory_default() {
    let text = with_spec("  resources: {memory: 32Mi}\n").replace("hello.wasm", "/opt/hello.wasm");
    let spec = parse_one(&text).spec;
    assert_eq!(spec.module, Path::new("/opt/hello.wasm"));
    // The default instance cap never exceeds the replica's memory.
    assert_eq!(spec.resources.instance_memory, 32 * MI);
}

#[test]
fn quantities_from_yaml_numbers() {
    let spec =
        parse_one(&with_spec("  resources:\n    memory: 67108864\n    cpu: 0.5\n    instanceMemory: 1e6\n")).spec;
    assert_eq!(spec.resources.memory, 64 * MI);
    assert_eq!(spec.resources.cpu_millis, Some(500));
    assert_eq!(spec.resources.instance_memory, 1_000_000);
    let spec = parse_one(&with_spec("  resources:\n    cpu: 2\n    memory: 1.5Gi\n")).spec;
    assert_eq!(spec.resources.cpu_millis, Some(2000));
    assert_eq!(spec.resources.memory, 1536 * MI);
}

#[test]
fn multiple_documents() {
    let second = with_spec("  replicas: 0\n").replace("kubia", "other");
    let text = format!("---\n{FULL}---\n# just a comment\n---\n{second}---\n");
    let services = parse(&text).unwrap();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0].name, "kubia");
    assert_eq!(services[1].name, "other");
    assert_eq!(services[1].spec.replicas, 0);
    validate_set(&services).unwrap();

    // Errors name the document (1-based, counting empty ones) when there are several.
    let bad = with_spec("  replicas: 1001\n").replace("kubia", "bad");
    let text = format!("{FULL}---\n{bad}");
    let err = parse(&text).unwrap_err();
    assert_eq!(err.document, Some(2));
    assert_eq!(err.to_string(), "document 2: spec.replicas: must be between 0 and 1000, found 1001");

    // A single document: no number.
    let err = parse(&bad).unwrap_err();
    assert_eq!(err.document, None);
}

#[test]
fn no_documents() {
    for text in ["", "# nothing here\n", "---\n", "---\n---\n"] {
        let err = parse(text).unwrap_err();
        assert_eq!(err.to_string(), "no Service documents", "for {text:?}");
    }
}

#[test]
fn routes_may_require_https() {
    let service = parse_one(&with_spec(
        "  routes:\n    - {host: a.example.com, tls: required}\n    - {path: /open, tls: optional}\n    - path: /plain\n",
    ));
    let tls: Vec<RouteTls> = service.spec.routes.iter().map(|r| r.tls).collect();
    assert_eq!(tls, [RouteTls::Required, RouteTls::Optional, RouteTls::Optional]);
    // Only the non-default policy is written out.
    let json = serde_json::to_value(&service.spec.routes).unwrap();
    assert_eq!(json[0]["tls"], "required");
    assert!(json[1].get("tls").is_none());
    // The same host and path twice is refused whatever the policies.
    let err = parse(&with_spec("  routes:\n    - {path: /a, tls: required}\n    - {path: /a}\n")).unwrap_err();
    assert!(err.to_string().contains("is listed twice"), "{err}");
}

#[test]
fn set_validation() {
    let a = parse_one(FULL);
    let mut b = parse_one(&with_spec("").replace("kubia", "other"));
    b.spec.routes = vec![Route::new(None, "/x")];
    validate_set(&[a.clone(), b.clone()]).unwrap();

    let err = validate_set(&[a.clone(), b.clone(), a.clone()]).unwrap_err();
    assert_eq!(err.field, "metadata.name");
    assert!(err.to_string().contains("duplicate service name \"kubia\""), "{err}");

    // Another TLS policy does not make the same host and path another
    // route.
    let mut https_only = Route::new(Some("kubia.example.com".into()), "/api");
    https_only.tls = RouteTls::Required;
    b.spec.routes.push(https_only);
    let err = validate_set(&[a, b]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.routes[1]: route kubia.example.com/api of service \"other\" is identical to a route of service \"kubia\""
    );
}

#[test]
fn json_round_trip() {
    let service = parse_one(FULL);
    let json = serde_json::to_value(&service).unwrap();
    assert_eq!(json["spec"]["timeout"], "10s");
    assert_eq!(json["spec"]["moduleField"], "../target/wasm32-wasip2/release/hello.wasm");
    assert_eq!(json["spec"]["resources"]["cpuMillis"], 500);
    assert_eq!(json["spec"]["resources"]["instanceMemory"], 16 * MI);
    let back: Service = serde_json::from_value(json).unwrap();
    assert_eq!(back, service);

    let mut odd = service;
    odd.spec.timeout = Duration::from_millis(1500);
    let back: Service = serde_json::from_str(&serde_json::to_string(&odd).unwrap()).unwrap();
    assert_eq!(back.spec.timeout, Duration::from_millis(1500));
}
