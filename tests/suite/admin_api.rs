//! The admin API's answers to what it does not expect: every error is
//! `{"error": …}`, the bearer scheme is case-insensitive, a malformed digest
//! is the client's `400` with the input cut short, and `apply` warns about
//! limits that cannot hold.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// `method path` on the admin API with `authorization` and `body`:
/// (status, content type, body).
async fn raw(
    shoal: &Shoal,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut request = hyper::Request::builder().method(method).uri(format!("{}{path}", shoal.server()));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let response = client.request(request.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, String::from_utf8_lossy(&body).into_owned())
}

/// The message of a `{"error": …}` body, checking its shape.
fn error_of(status: u16, content_type: &str, body: &str) -> String {
    assert!(content_type.starts_with("application/json"), "{status} as {content_type:?}: {body}");
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{status}: {body}: {e}"));
    value["error"].as_str().unwrap_or_else(|| panic!("{status}: no error field: {body}")).to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_error_is_json_and_the_bearer_scheme_is_case_insensitive() {
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let token = shoal.token();

    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, _, body) = raw(&shoal, "GET", "/v1/services", Some(&format!("{scheme} {token}")), "").await;
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let auth = format!("Bearer {token}");
    let auth = Some(auth.as_str());
    let long = "a".repeat(5000);
    // (method, path, authorization, body, status, what the error says)
    type Case<'a> = (&'a str, String, Option<&'a str>, &'a str, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/v1/services".into(), None, "", 401, "missing bearer token"),
        ("GET", "/v1/services".into(), Some("Basic dXNlcjpwYXNz"), "", 401, "missing bearer token"),
        ("GET", "/v1/services".into(), Some("Bearer wrong"), "", 401, "wrong token"),
        ("GET", "/v1/nope".into(), auth, "", 404, "no such API route: GET /v1/nope"),
        ("PATCH", "/v1/services".into(), auth, "", 405, "method PATCH is not allowed on /v1/services"),
        ("PUT", "/v1/services/kubia".into(), auth, "{not json", 400, ""),
        ("PUT", "/v1/services/kubia/scale".into(), auth, r#"{"replicas": "many"}"#, 422, "replicas"),
        ("GET", "/v1/services/nope".into(), auth, "", 404, "service \"nope\" not found"),
        ("GET", "/v1/modules/..%2F..%2Fetc".into(), auth, "", 400, "is not a module digest"),
        ("GET", format!("/v1/modules/{long}"), auth, "", 400, "is not a module digest"),
        ("DELETE", format!("/v1/modules/sha256:{}", "0".repeat(64)), auth, "", 404, "not found"),
    ];
    for (method, path, authorization, body, want, says) in cases {
        let (status, content_type, answer) = raw(&shoal, method, &path, authorization, body).await;
        assert_eq!(status, want, "{method} {}: {answer}", &path[..path.len().min(60)]);
        let message = error_of(status, &content_type, &answer);
        assert!(message.contains(says), "{method} {}: {message}", &path[..path.len().min(60)]);
        assert!(message.len() < 300, "an error quotes too much: {message}");
    }
    // The attacker's string is cut in the log too, and is no ERROR.
    let output = shoal.dump();
    assert!(!output.contains(&long[..200]), "the whole input reached the log");
    assert!(!output.lines().any(|l| l.contains(" ERROR ")), "{output}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_warns_about_instances_that_cannot_all_fit_in_a_replicas_memory() {
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let dir = Scratch::new("warn");
    let file = dir.write(
        "svc.yaml",
        manifest(
            "api",
            HELLO_WASM,
            "routes:\n  - path: /api\nresources:\n  memory: 128Mi\n  instanceMemory: 64Mi\nlimits:\n  concurrency: 64",
        ),
    );
    let (ok, out, err) = shoal.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, "service/api created\n");
    assert_eq!(
        err.trim_end(),
        format!(
            "Warning: {}: service \"api\": spec.limits.concurrency: 64 instances of up to 64Mi \
             (spec.resources.instanceMemory) cannot fit in 128Mi (spec.resources.memory) with the worker's own \
             16Mi; a replica runs at most 1 at once and queues the rest",
            file.display()
        )
    );
    // Without concurrency the default is what fits: no warning.
    dir.write("svc.yaml", manifest("api", HELLO_WASM, "routes:\n  - path: /api\nresources:\n  instanceMemory: 16Mi"));
    let (ok, _, err) = shoal.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(err, "");
    let (_, json, _) = shoal.cli(&["get", "services", "api", "-o", "json"]);
    assert!(json.contains("\"concurrency\": 7"), "(128Mi - 16Mi) / 16Mi = 7 instances: {json}");
    assert!(shoal.stop().success());
}
