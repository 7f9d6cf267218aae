//! The dashboard's gate, with a real HTTP client against `shoal up`: no
//! route or data without the token or a session; the session cookie from
//! a login (or a one-time link) stands for the token, only on the admin
//! listener; a cross-site change is refused. The browser test of the views
//! themselves is `tests/suite/dashboard_browser.rs` (not yet: see issue 17).

use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// A request to `url`: (status, headers, body).
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, hyper::HeaderMap, String) {
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let response = client.request(request.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// Logs in with `token` from the dashboard's own origin: the cookie
/// (`shoal_session=…`), or the status and body of the refusal.
async fn login(shoal: &Shoal, token: &str) -> Result<String, (u16, String)> {
    let origin = shoal.server();
    let (status, headers, body) = send(
        "POST",
        &format!("{origin}/login"),
        &[("content-type", "application/x-www-form-urlencoded"), ("origin", &origin)],
        &format!("token={token}"),
    )
    .await;
    if status != 303 {
        return Err((status, body));
    }
    let cookie = headers.get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    Ok(cookie.split(';').next().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_needs_the_token_or_a_session_and_refuses_cross_site_changes() {
    let dir = Scratch::new("dashboard");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 2"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    let admin = shoal.server();

    // Without the token or a session: 401 everywhere; a browser asking for
    // the page gets the login form, and no data.
    for path in ["/", "/assets/app.js", "/assets/style.css", "/v1/stream", "/v1/history?service=kubia", "/v1/services"]
    {
        let (status, _, body) = send("GET", &format!("{admin}{path}"), &[], "").await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(!body.contains("kubia"), "{path}: {body}");
    }
    let (status, headers, body) = send("GET", &format!("{admin}/"), &[("accept", "text/html")], "").await;
    assert_eq!(status, 401);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(body.contains(r#"<form method="post" action="/login">"#), "{body}");

    // A wrong token: the form again, with the error, and no session.
    let (status, body) = login(&shoal, "not-the-token").await.unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("Wrong token") && !body.contains("kubia"), "{body}");
    let (_, headers, _) = send("GET", &format!("{admin}/"), &[], "").await;
    assert!(headers.get("set-cookie").is_none());

    // The right token: a session cookie that opens the page, its assets
    // and the API.
    let cookie = login(&shoal, &shoal.token()).await.unwrap();
    let with_cookie = [("cookie", cookie.as_str())];
    let (status, _, body) = send("GET", &format!("{admin}/"), &with_cookie, "").await;
    assert_eq!(status, 200);
    assert!(body.contains("/assets/app.js"), "{body}");
    let (status, _, body) = send("GET", &format!("{admin}/assets/app.js"), &with_cookie, "").await;
    assert_eq!(status, 200);
    assert!(body.contains("EventSource"), "{body}");
    let (status, _, body) = send("GET", &format!("{admin}/v1/services"), &with_cookie, "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"kubia\""), "{body}");

    // A change with the cookie from another site (a forged form or fetch)
    // is refused; from the dashboard's origin it is made.
    let scale = format!("{admin}/v1/services/kubia/scale");
    let json = ("content-type", "application/json");
    for forged in [[("origin", "http://evil.example")], [("sec-fetch-site", "cross-site")]] {
        let headers = [with_cookie[0], json, forged[0]];
        let (status, _, body) = send("PUT", &scale, &headers, r#"{"replicas": 3}"#).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("cross-site request refused"), "{body}");
    }
    let (status, _, body) = send("PUT", &scale, &[with_cookie[0], json], r#"{"replicas": 3}"#).await;
    assert_eq!(status, 403, "a change with the cookie and no origin: {body}");
    let (status, _, body) =
        send("PUT", &scale, &[with_cookie[0], json, ("origin", &admin)], r#"{"replicas": 3}"#).await;
    assert_eq!(status, 200, "{body}");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let (status, _, body) =
        send("POST", &format!("{admin}/login"), &[form, ("origin", "http://evil.example")], "token=x").await;
    assert_eq!(status, 403, "a cross-site login: {body}");

    // The cookie means nothing on the gateway's port.
    let (status, _, body) = send("GET", &shoal.url("/v1/services"), &with_cookie, "").await;
    assert!(!body.contains("\"record\"") && !body.contains("EventSource"), "{status} {body}");

    // The live stream sends the services within seconds.
    let response = {
        let request = hyper::Request::get(format!("{admin}/v1/stream"))
            .header("cookie", cookie.as_str())
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        client().request(request).await.unwrap()
    };
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = response.into_body();
    let mut seen = String::new();
    let started = Instant::now();
    while !seen.contains("event: services") || !seen.contains("\"kubia\"") {
        assert!(started.elapsed() < Duration::from_secs(10), "{seen}");
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }

    // Requests show in the history within seconds.
    for _ in 0..50 {
        assert_eq!(get(&shoal.url("/"), None).await.0, 200);
    }
    let started = Instant::now();
    loop {
        let (status, _, body) = send("GET", &format!("{admin}/v1/history?service=kubia"), &with_cookie, "").await;
        assert_eq!(status, 200, "{body}");
        let points: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        if points.iter().any(|p| p["rps"].as_f64().unwrap() > 0.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, body) = send("GET", &format!("{admin}/v1/history?service=nope"), &with_cookie, "").await;
    assert_eq!(status, 404, "{body}");

    // The dashboard's apply: a manifest and a stored module; the errors
    // are the CLI's, naming the field.
    let (_, _, services) = send("GET", &format!("{admin}/v1/services"), &with_cookie, "").await;
    let services: serde_json::Value = serde_json::from_str(&services).unwrap();
    let digest = services[0]["record"]["moduleDigest"].as_str().unwrap().to_owned();
    let same_origin = [with_cookie[0], json, ("origin", admin.as_str())];
    let apply = |spec: &str| {
        serde_json::json!({ "manifest": manifest("web", "web.wasm", spec), "moduleDigest": digest }).to_string()
    };
    let (status, _, body) = send("POST", &format!("{admin}/v1/services"), &same_origin, &apply("replicas: -1")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("spec.replicas"), "{body}");
    let (status, _, body) = send(
        "POST",
        &format!("{admin}/v1/services"),
        &same_origin,
        &apply("replicas: 1\nroutes:\n  - host: web.local"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""result":"created""#), "{body}");

    // Logging out ends the session.
    let (status, _, _) = send("POST", &format!("{admin}/logout"), &[with_cookie[0], ("origin", &admin)], "").await;
    assert_eq!(status, 303);
    let (status, _, _) = send("GET", &format!("{admin}/v1/services"), &with_cookie, "").await;
    assert_eq!(status, 401);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_time_link_logs_in_once() {
    let dir = Scratch::new("dashboard-link");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    let admin = shoal.server();
    let (status, link) = shoal.admin_request("POST", "/v1/dashboard/links", None).await;
    assert_eq!(status, 200, "{link}");
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    let path = link["path"].as_str().unwrap();
    assert!(path.starts_with("/login?code="), "{path}");
    let (status, headers, _) = send("GET", &format!("{admin}{path}"), &[], "").await;
    assert_eq!(status, 303);
    let cookie = headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let (status, _, _) = send("GET", &format!("{admin}/v1/services"), &[("cookie", &cookie)], "").await;
    assert_eq!(status, 200);
    // Used once: the second visit gets the form and an explanation.
    let (status, _, body) = send("GET", &format!("{admin}{path}"), &[], "").await;
    assert_eq!(status, 401);
    assert!(body.contains("used already or has expired"), "{body}");
    // `shoal dashboard` prints such a link.
    let (ok, out, err) = shoal.cli(&["dashboard", "--no-open"]);
    assert!(ok, "{err}");
    let url = out.lines().next().unwrap();
    assert!(url.starts_with(&format!("{admin}/login?code=")), "{out}");
    let (status, headers, _) = send("GET", url, &[], "").await;
    assert_eq!(status, 303);
    assert!(headers["set-cookie"].to_str().unwrap().starts_with("shoal_session="));
    // Links need the token.
    let (status, _, _) = send("POST", &format!("{admin}/v1/dashboard/links"), &[], "").await;
    assert_eq!(status, 401);
    assert!(shoal.stop().success());
}
