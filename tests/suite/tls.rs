//! HTTPS at the gateway (`shoal up --tls-listen`): HTTP/2 and HTTP/1.1 by
//! ALPN, certificates per host chosen by SNI, rotation without a restart,
//! routes that require HTTPS, and bad certificates and bad clients refused
//! with clear messages. Certificates are made here (rcgen), clients are
//! rustls and hyper.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::tls::{Conn, TestCa, any_certificate, https_get};
use crate::support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// `shoal up` with HTTPS on a free port and `args`.
fn start_https(args: &[&str]) -> Shoal {
    let mut all = vec!["--tls-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Shoal::start(&all)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_h2_and_http1_by_alpn_to_clients_that_verify() {
    let dir = Scratch::new("tls-alpn");
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["localhost"], -1, 90).write(&dir, "localhost");
    let mut shoal = start_https(&["--tls-cert", &cert, "--tls-key", &key]);
    shoal.wait_ready("kubia");
    let https = shoal.https_addr();

    // A client that verifies the certificate against the CA, offering h2
    // first, gets HTTP/2 over TLS 1.3.
    let mut conn = Conn::open(https, ca.client(&[H2, H1]), "localhost").await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(H2));
    assert_eq!(conn.version, Some(rustls::ProtocolVersion::TLSv1_3));
    for _ in 0..3 {
        let answer = conn.get("localhost", "/").await.unwrap();
        assert_eq!((answer.status, answer.version), (200, hyper::Version::HTTP_2), "{answer:?}");
        assert!(answer.body.starts_with("You've hit kubia-"), "{answer:?}");
    }
    // One that offers only HTTP/1.1 gets it, on the same port.
    let mut conn = Conn::open(https, ca.client(&[H1]), "localhost").await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(H1));
    let answer = conn.get("localhost", "/").await.unwrap();
    assert_eq!((answer.status, answer.version), (200, hyper::Version::HTTP_11), "{answer:?}");
    // And one without ALPN, over TLS 1.2, too.
    let (answer, _) =
        https_get(https, any_certificate(&[], Some(&rustls::version::TLS12)), "localhost", "/").await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    // Plain HTTP still works beside it.
    assert_eq!(get(&shoal.url("/"), None).await.0, 200);

    let (_, metrics) = shoal.admin_get("/metrics").await;
    assert!(metrics.contains("shoal_tls_handshakes_total{result=\"ok\",version=\"TLSv1.3\"} 2"), "{metrics}");
    assert!(metrics.contains("shoal_tls_handshakes_total{result=\"ok\",version=\"TLSv1.2\"} 1"), "{metrics}");
    assert!(metrics.contains("shoal_tls_certificate_expiry_timestamp_seconds{host=\"(default)\"}"), "{metrics}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_picks_each_hosts_certificate_and_a_wildcard_covers_one_label() {
    let dir = Scratch::new("tls-sni");
    let ca = TestCa::new();
    let default = ca.leaf(&["localhost"], -1, 90);
    let (cert, key) = default.write(&dir, "default");
    let mut shoal = start_https(&["--tls-cert", &cert, "--tls-key", &key]);
    shoal.wait_ready("kubia");
    let https = shoal.https_addr();

    let a = ca.leaf(&["a.test"], -1, 90);
    let b = ca.leaf(&["b.test"], -1, 30);
    let wild = ca.leaf(&["*.w.test"], -1, 60);
    for (host, leaf, name) in [("a.test", &a, "a"), ("b.test", &b, "b"), ("*.w.test", &wild, "wild")] {
        let (cert, key) = leaf.write(&dir, name);
        let (ok, out, err) = shoal.cli(&["tls", "add", host, "--cert", &cert, "--key", &key]);
        assert!(ok, "{err}");
        assert!(out.contains(&format!("certificate/{host} added")), "{out}");
    }
    let served = |sni: &'static str| {
        let config = any_certificate(&[H1], None);
        async move { https_get(https, config, sni, "/").await.map(|(answer, cert)| (answer.status, cert)).unwrap() }
    };
    assert_eq!(served("a.test").await, (200, a.der.clone()));
    assert_eq!(served("b.test").await, (200, b.der.clone()));
    assert_eq!(served("x.w.test").await, (200, wild.der.clone()));
    // A wildcard covers one label: not two, not none.
    assert_eq!(served("y.x.w.test").await.1, default.der);
    assert_eq!(served("w.test").await.1, default.der);
    // A host without a certificate, and a client that names none (an IP
    // address sends no SNI), get the default.
    assert_eq!(served("unknown.test").await.1, default.der);
    assert_eq!(served("127.0.0.1").await.1, default.der);
    // A client that verifies accepts a host's certificate.
    let (answer, _) = https_get(https, ca.client(&[H2]), "a.test", "/").await.unwrap();
    assert_eq!(answer.status, 200);

    // Listed with names and expiry; no key anywhere in what the API says.
    let (ok, table, _) = shoal.cli(&["get", "certs"]);
    assert!(ok);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("HOST") && lines[0].contains("EXPIRES"), "{table}");
    assert!(lines[1].starts_with("(default)") && lines[1].contains("--tls-cert"), "{table}");
    for host in ["*.w.test", "a.test", "b.test"] {
        assert!(lines.iter().any(|l| l.starts_with(host) && l.contains("store") && l.contains("(in ")), "{table}");
    }
    let (ok, json, _) = shoal.cli(&["get", "certs", "-o", "json"]);
    assert!(ok);
    let (_, api) = shoal.admin_get("/v1/certificates").await;
    let (_, one) = shoal.admin_get("/v1/certificates/a.test").await;
    for text in [&json, &api, &one] {
        assert!(!text.contains("PRIVATE KEY") && !text.contains("\"key"), "a key in what the API says: {text}");
    }
    let views: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(views.len(), 4);
    let (_, metrics) = shoal.admin_get("/metrics").await;
    assert!(metrics.contains("shoal_tls_certificate_expiry_timestamp_seconds{host=\"*.w.test\"}"), "{metrics}");

    // Deleted: its host gets the default from the next connection on.
    let (ok, out, err) = shoal.cli(&["tls", "delete", "a.test"]);
    assert!(ok && out.contains("certificate/a.test deleted"), "{out}{err}");
    assert_eq!(served("a.test").await.1, default.der);
    let (ok, _, err) = shoal.cli(&["tls", "delete", "a.test"]);
    assert!(!ok && err.contains("certificate \"a.test\" not found"), "{err}");

    // Certificates are in the store: a restart serves them again.
    let data = shoal.stop_keep_data();
    let mut shoal =
        Shoal::start_in(data, &["--tls-listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key], |_| {});
    shoal.wait_ready("kubia");
    let https = shoal.https_addr();
    let (_, cert) = https_get(https, any_certificate(&[H1], None), "b.test", "/").await.unwrap();
    assert_eq!(cert, b.der);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_rotated_under_load_fails_no_request() {
    let dir = Scratch::new("tls-rotate");
    let ca = TestCa::new();
    let mut shoal = start_https(&[]);
    shoal.wait_ready("kubia");
    let https = shoal.https_addr();
    let first = ca.leaf(&["a.test"], -1, 90);
    let (cert, key) = first.write(&dir, "v0");
    assert!(shoal.cli(&["tls", "add", "a.test", "--cert", &cert, "--key", &key]).0);

    // A keep-alive connection opened on the first certificate.
    let mut kept = Conn::open(https, any_certificate(&[H1], None), "a.test").await.unwrap();
    assert_eq!(kept.cert, first.der);

    // Four clients, each a new connection (a new handshake) per request,
    // until told to stop.
    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let problems = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, problems) = (stop.clone(), ok.clone(), failed.clone(), problems.clone());
        clients.push(tokio::spawn(async move {
            let config = any_certificate(&[H2, H1], None);
            while !stop.load(Ordering::SeqCst) {
                match https_get(https, config.clone(), "a.test", "/").await {
                    Ok((answer, _)) if answer.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    Ok((answer, _)) => {
                        problems.lock().unwrap().push(format!("{} {}", answer.status, answer.body));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                    Err(error) => {
                        problems.lock().unwrap().push(error);
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    let mut last = first;
    for round in 1..=5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let next = ca.leaf(&["a.test"], -1, 90 + round);
        let (cert, key) = next.write(&dir, &format!("v{round}"));
        let (ok, out, err) = shoal.cli(&["tls", "add", "a.test", "--cert", &cert, "--key", &key]);
        assert!(ok && out.contains("certificate/a.test replaced"), "{out}{err}");
        // A new connection gets the new certificate at once.
        let (_, served) = https_get(https, any_certificate(&[H1], None), "a.test", "/").await.unwrap();
        assert_eq!(served, next.der, "round {round}: a new connection got an old certificate");
        last = next;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("rotation under load: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0, "requests failed during rotation: {:?}", problems.lock().unwrap());
    assert!(ok >= 20, "too few requests ran during the rotation: {ok}");
    // The connection opened before goes on, on its certificate.
    let answer = kept.get("a.test", "/").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_ne!(kept.cert, last.der);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_that_requires_https_redirects_plain_requests() {
    let dir = Scratch::new("tls-required");
    let spec =
        "routes:\n  - {host: secure.test, tls: required}\n  - {host: open.test}\nresources: {instanceMemory: 8Mi}";
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, spec));
    let mut shoal = start_https(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    let https = shoal.https_addr();

    let request = hyper::Request::post(shoal.url("/inspect/x?y=1"))
        .header("host", "secure.test")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"kept")))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 308);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("https://secure.test:{}/inspect/x?y=1", https.port()));

    // Over HTTPS it is served, and the guest is told so.
    let (answer, _) = https_get(https, any_certificate(&[H2], None), "secure.test", "/inspect/x?y=1").await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("x-forwarded-proto: https"), "{}", answer.body);
    // A route that does not require it answers plain HTTP, and says so.
    let (status, body) = get(&shoal.url("/inspect"), Some("open.test")).await;
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_certificates_are_refused_naming_the_file() {
    let dir = Scratch::new("tls-bad");
    let ca = TestCa::new();
    let mut shoal = start_https(&[]);
    shoal.wait_ready("kubia");
    let good = ca.leaf(&["a.test"], -1, 90);
    let other = ca.leaf(&["a.test"], -1, 90);
    let (cert, key) = good.write(&dir, "good");
    let (_, other_key) = other.write(&dir, "other");
    let (expired_cert, expired_key) = ca.leaf(&["a.test"], -90, -1).write(&dir, "expired");
    let (future_cert, future_key) = ca.leaf(&["a.test"], 2, 90).write(&dir, "future");
    let (soon_cert, soon_key) = ca.leaf(&["a.test"], -1, 5).write(&dir, "soon");
    let junk = dir.write("junk.pem", "this is not PEM\n").display().to_string();
    let add = |host: &str, cert: &str, key: &str| shoal.cli(&["tls", "add", host, "--cert", cert, "--key", key]);

    let cases: [(&str, &str, &str, &[&str]); 7] = [
        ("a.test", &cert, &other_key, &["other.key does not match", "good.crt", "does not match the certificate"]),
        ("a.test", &expired_cert, &expired_key, &["expired.crt: the certificate expired on"]),
        ("a.test", &future_cert, &future_key, &["future.crt: the certificate is not valid yet"]),
        ("a.test", &junk, &key, &["junk.pem: not a PEM certificate"]),
        ("a.test", &cert, &junk, &["junk.pem: not a PEM private key"]),
        ("a.test", &key, &cert, &["good.key: not a PEM certificate", "swapped"]),
        ("b.test", &cert, &key, &["good.crt: the certificate is not valid for b.test: it names a.test"]),
    ];
    for (host, cert, key, wanted) in cases {
        let (ok, _, err) = add(host, cert, key);
        assert!(!ok, "{cert} {key} was accepted");
        for want in wanted {
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }
    let (ok, _, err) = shoal.cli(&["tls", "add", "a.test", "--cert", "/nonexistent.crt", "--key", &key]);
    assert!(!ok && err.contains("cannot read the certificate /nonexistent.crt"), "{err}");
    // Nothing of that was stored.
    let (_, list) = shoal.admin_get("/v1/certificates").await;
    assert!(!list.contains("a.test"), "{list}");
    // The API refuses the same, naming the field.
    let body = serde_json::json!({ "cert": good.cert_pem, "key": other.key_pem }).to_string();
    let (status, answer) = shoal.admin_request("PUT", "/v1/certificates/a.test", Some(body)).await;
    assert_eq!(status, 400);
    assert!(answer.contains("key does not match cert"), "{answer}");

    // Close to its expiry: stored, with a warning.
    let (ok, out, err) = add("a.test", &soon_cert, &soon_key);
    assert!(ok, "{err}");
    assert!(out.contains("certificate/a.test added"), "{out}");
    assert!(err.contains("warning: ") && err.contains("expires in 5 days"), "{err}");
    assert!(shoal.stop().success());

    // shoal up refuses bad default certificates before starting anything.
    let data = Scratch::new("tls-bad-up");
    for (cert, key, want) in [
        (&expired_cert, &expired_key, "expired.crt: the certificate expired on".to_owned()),
        (&cert, &other_key, "does not match".to_owned()),
        (&junk, &key, "junk.pem: not a PEM certificate".to_owned()),
    ] {
        let (status, _, err) =
            run_shoal(&["up", "--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key], &data.0);
        assert!(!status.success() && err.contains(&want), "{err}");
    }
    let (status, _, err) = run_shoal(&["up", "--tls-cert", &cert, "--tls-key", &key], &data.0);
    assert!(!status.success() && err.contains("--tls-listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_stalled_handshakes_close_only_their_own_connection() {
    let mut shoal = start_https(&[]);
    shoal.wait_ready("kubia");
    let https = shoal.https_addr();

    // Plain HTTP to the TLS port: the handshake fails, the connection
    // closes (after a TLS alert at most).
    let mut plain = tokio::net::TcpStream::connect(https).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open after garbage");
    assert!(!buf.starts_with(b"HTTP/"), "answered HTTP on the TLS port: {buf:?}");

    // A client that connects and says nothing is cut at the header timeout
    // (10 s), while others are served meanwhile.
    let started = Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(https).await.unwrap();
    let (answer, _) = https_get(https, any_certificate(&[H2], None), "localhost", "/").await.unwrap();
    assert_eq!(answer.status, 200);
    let read = tokio::time::timeout(Duration::from_secs(30), stalled.read(&mut [0u8; 64])).await;
    let took = started.elapsed();
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a stalled handshake was not cut: {read:?}");
    assert!(took >= Duration::from_secs(5), "cut after {took:?}, before the header timeout");
    // A ClientHello trickled a byte a second (after a record header that
    // announces 512 bytes) is cut the same way.
    let mut trickle = tokio::net::TcpStream::connect(https).await.unwrap();
    trickle.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let started = Instant::now();
    let cut = loop {
        if trickle.write_all(&[0x00]).await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_secs(1), trickle.read(&mut [0u8; 64])).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    assert!(cut, "a trickled handshake was never cut");

    let (_, metrics) = shoal.admin_get("/metrics").await;
    let count = |result: &str| -> u64 {
        let prefix = format!("shoal_tls_handshakes_total{{result=\"{result}\",version=\"\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    assert!(count("failed") >= 1 && count("timeout") >= 2, "{metrics}");
    // Still serving.
    let (answer, _) = https_get(https, any_certificate(&[H1], None), "localhost", "/").await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(shoal.stop().success());
}
