//! Services call services: a guest's outgoing request to `http://<service>/`
//! reaches that service's replicas through the gateway (balancing, the
//! activator, deadlines), other URLs only when `spec.allowOutbound` lists
//! them, and loops between services end with `508`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The frontend sample on `/frontend`, with extra spec lines.
fn frontend(dir: &Scratch, name: &str, spec: &str) -> std::path::PathBuf {
    dir.write(&format!("{name}.yaml"), manifest(name, FRONTEND_WASM, spec))
}

/// The replica names in a frontend's answer (`1: 200 You've hit kubia-…`).
fn kubia_names(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.split("You've hit ").nth(1)).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frontend_reaches_every_kubia_replica_and_wakes_kubia_from_zero() {
    let dir = Scratch::new("calls-frontend");
    let kubia = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 3"));
    let front = frontend(&dir, "frontend", "routes:\n  - path: /frontend\nallowOutbound:\n  - http://kubia");
    let mut shoal = Shoal::start(&["-f", kubia.to_str().unwrap(), "-f", front.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    shoal.wait_ready("frontend");

    let client = client();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let (status, body) = get_with(&client, &shoal.url("/frontend"), None).await;
        assert_eq!(status, 200, "{body}");
        let names = kubia_names(&body);
        assert_eq!(names.len(), 2, "{body}");
        seen.extend(names);
    }
    assert_eq!(seen.len(), 3, "the calls reached {seen:?}, not all 3 kubia replicas");
    // Counted as calls of frontend to kubia, and as kubia's requests.
    let (_, metrics) = shoal.admin_get("/metrics").await;
    assert!(metrics.contains("shoal_calls_total{caller=\"frontend\",target=\"kubia\",code=\"2xx\"} 60"), "{metrics}");
    assert!(metrics.contains("shoal_service_requests_total{service=\"kubia\",code=\"2xx\"} 60"), "{metrics}");
    let (ok, describe, _) = shoal.cli(&["describe", "service", "frontend"]);
    assert!(ok, "{describe}");
    assert!(describe.contains("Outbound:      http://kubia\n"), "{describe}");
    let calls = describe.split("Calls:\n").nth(1).unwrap_or_else(|| panic!("no calls in:\n{describe}"));
    let row: Vec<&str> = calls.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..8], ["frontend", "kubia", "60", "0", "0", "0", "0", "0"], "{describe}");
    let (ok, top, _) = shoal.cli(&["top"]);
    assert!(ok, "{top}");
    assert!(top.lines().any(|l| l.starts_with("frontend") && l.contains(" kubia ")), "{top}");

    // kubia scales to zero; a call to it wakes it, as a client's request does.
    let zero = dir.write(
        "kubia-zero.yaml",
        manifest("kubia", HELLO_WASM, "autoscale:\n  min: 0\n  max: 3\n  scaleToZeroGracePeriod: 1s"),
    );
    let (ok, out, err) = shoal.cli(&["apply", "-f", zero.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    shoal.wait_for_line(|l| l.contains("service/kubia ScaledToZero"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while shoal.replicas().iter().any(|r| r["service"] == "kubia") {
        assert!(Instant::now() < deadline, "kubia replicas left at zero:\n{}", shoal.dump());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = get(&shoal.url("/frontend"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kubia_names(&body).len(), 2, "{body}");
    shoal.wait_for_output(|l| l.contains("service/kubia ScaledFromZero"));
    assert!(shoal.stop().success());
}

/// A loopback server that answers `hello from outside`, or 4 KiB of `x`
/// for a path that starts with `/big` (chunked for `/big-chunked`).
async fn answering_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer = if head.starts_with("GET /big-chunked") {
                    let chunk = "x".repeat(4096);
                    format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1000\r\n{chunk}\r\n0\r\n\r\n")
                } else {
                    let body =
                        if head.starts_with("GET /big") { "x".repeat(4096) } else { "hello from outside".to_owned() };
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// A loopback server that reads requests and never answers; reports when
/// a connection it took was closed by the caller.
async fn silent_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (closed, closes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = closed.send(Instant::now());
            });
        }
    });
    (port, closes)
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_go_only_where_the_manifest_allows_and_end_at_the_callers_deadline() {
    let open = answering_server().await;
    let (silent, mut closes) = silent_server().await;
    // Ports nothing listens on: one not listed, one listed.
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (denied, closed) = (free_port(), free_port());
    let dir = Scratch::new("calls-allow");
    let front = frontend(
        &dir,
        "frontend",
        &format!(
            "timeout: 3s\nlimits:\n  callResponseBody: 1Ki\nallowOutbound:\n  - http://127.0.0.1:{open}\n  - \
             http://127.0.0.1:{silent}\n  - http://127.0.0.1:{closed}"
        ),
    );
    let mut shoal = Shoal::start(&["-f", front.to_str().unwrap()]);
    shoal.wait_ready("frontend");

    let (status, body) = get(&shoal.url(&format!("/call?url=http://127.0.0.1:{open}/x")), None).await;
    assert_eq!((status, body.as_str()), (200, "200\nhello from outside"));

    let (status, body) = get(&shoal.url(&format!("/call?url=http://127.0.0.1:{denied}/secret")), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "the guest did not get the denied error: {body}");
    shoal.wait_for_output(|l| {
        l.contains(&format!("call denied: GET http://127.0.0.1:{denied}/secret is not allowed by spec.allowOutbound"))
            && l.contains(&format!("add \"http://127.0.0.1:{denied}\" to spec.allowOutbound"))
    });
    let (_, metrics) = shoal.admin_get("/metrics").await;
    let denied_line =
        format!("shoal_calls_total{{caller=\"frontend\",target=\"http://127.0.0.1:{denied}\",code=\"denied\"}} 1");
    assert!(metrics.contains(&denied_line), "{denied_line} missing:\n{metrics}");
    // Responses past spec.limits.callResponseBody fail, declared or not.
    for path in ["big", "big-chunked"] {
        let (status, body) = get(&shoal.url(&format!("/call?url=http://127.0.0.1:{open}/{path}")), None).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body.contains("HttpResponseBodySize"), "{path}: {body}");
    }
    shoal.wait_for_output(|l| l.contains("the response body is larger than spec.limits.callResponseBody (1Ki)"));
    // A connection refused reaches the guest as such.
    let (status, body) = get(&shoal.url(&format!("/call?url=http://127.0.0.1:{closed}/")), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("ConnectionRefused"), "{body}");
    // Calls by service name need the permission too.
    let (status, body) = get(&shoal.url("/call?url=http://frontend/"), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");

    // A host that never answers is cut when the caller's 3 s are nearly
    // up, in time for the guest to answer with the error.
    let started = Instant::now();
    let (status, body) = get(&shoal.url(&format!("/call?url=http://127.0.0.1:{silent}/")), None).await;
    let took = started.elapsed();
    eprintln!("the call to a silent host ended after {took:?}: {status} {body}");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpResponseTimeout"), "{body}");
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(8), "{took:?}");
    let closed = tokio::time::timeout(Duration::from_secs(5), closes.recv())
        .await
        .expect("the call's connection to the silent host was not closed")
        .unwrap();
    assert!(closed.duration_since(started) < Duration::from_secs(8));
    // The replica serves on.
    let (status, _) = get(&shoal.url(&format!("/call?url=http://127.0.0.1:{open}/")), None).await;
    assert_eq!(status, 200);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loop_between_two_services_ends_with_508_and_leaves_no_request_behind() {
    let dir = Scratch::new("calls-loop");
    // Each hop holds an instance of its service while it waits: room for
    // the whole chain.
    let spec = |name: &str, next: &str| {
        format!(
            "routes:\n  - host: {name}.local\nenv:\n  NEXT: http://{next}/chain\nallowOutbound:\n  - http://{next}\n\
             resources:\n  memory: 128Mi\n  instanceMemory: 8Mi\ntimeout: 20s"
        )
    };
    let a = frontend(&dir, "a", &spec("a", "b"));
    let b = frontend(&dir, "b", &spec("b", "a"));
    let mut shoal = Shoal::start(&["-f", a.to_str().unwrap(), "-f", b.to_str().unwrap()]);
    shoal.wait_ready("a");
    shoal.wait_ready("b");

    let started = Instant::now();
    let (status, body) = get(&shoal.url("/chain"), Some("a.local")).await;
    eprintln!("the loop ended after {:?}: {body}", started.elapsed());
    assert_eq!(status, 508, "{body}");
    assert!(body.contains("508 loop detected"), "{body}");
    // a → b → a … : every service answered on the way back.
    let hops = body.matches(" -> ").count();
    assert_eq!(hops, usize::from(shoal_gateway::MAX_HOPS), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // Nothing of the loop is left in flight.
    let (status, metrics) = shoal.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for service in ["a", "b"] {
        let line = format!("shoal_service_requests_in_flight{{service=\"{service}\"}} 0");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(shoal.stop().success());
}

/// A loopback HTTPS server with the test certificate of
/// `tests/fixtures/tls` (for 127.0.0.1, signed by its `ca.pem`), answering
/// every request with `hello over tls`.
async fn tls_server() -> u16 {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = "hello over tls";
                let answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn https_calls_trust_the_machines_roots_and_the_cas_shoal_up_is_given() {
    let port = tls_server().await;
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
    let dir = Scratch::new("calls-tls");
    let front = frontend(&dir, "frontend", &format!("allowOutbound:\n  - https://127.0.0.1:{port}"));
    let url = format!("/call?url=https://127.0.0.1:{port}/secure");

    // Without the test CA, its certificate is not trusted.
    let mut shoal = Shoal::start(&["-f", front.to_str().unwrap()]);
    shoal.wait_ready("frontend");
    let (status, body) = get(&shoal.url(&url), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TlsCertificateError"), "{body}");
    shoal.wait_for_output(|l| l.contains(&format!("call to https://127.0.0.1:{port}/secure failed")));
    assert!(shoal.stop().success());

    let mut shoal = Shoal::start(&["-f", front.to_str().unwrap(), "--outbound-ca", ca]);
    shoal.wait_ready("frontend");
    let (status, body) = get(&shoal.url(&url), None).await;
    assert_eq!((status, body.as_str()), (200, "200\nhello over tls"));
    assert!(shoal.stop().success());

    // A CA file that holds no certificate stops `shoal up` with its name.
    let empty = dir.write("empty.pem", "not a certificate\n");
    let data = Scratch::new("calls-tls-data");
    let (status, _, err) = run_shoal(&["up", "--outbound-ca", empty.to_str().unwrap()], &data.0);
    assert!(!status.success());
    assert!(err.contains(&format!("{}: no PEM certificate in it", empty.display())), "{err}");
}
