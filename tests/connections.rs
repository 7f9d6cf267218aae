//! Connection floods: no number of anonymous connections to the admin API
//! starves the gateway, the control loop or the CLI; the gateway's own cap
//! closes new connections at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

// Its own test binary: 20,000 client sockets would take the open-files
// limit of a process other tests share.
#[allow(dead_code)]
#[path = "suite/support/mod.rs"]
mod support;

use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The admin API's header timeout (`shoal_control::admin::HEADER_TIMEOUT`).
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How one attacking connection ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// Closed by the server this long after it opened.
    Closed(Duration),
    /// Could not connect (the accept queue was full for too long).
    Refused,
    /// Still open when the attack stopped.
    Open,
}

/// Opens a connection to `addr` and holds it: idle (sends nothing), or
/// sending a request head one header line per second, never finishing it.
async fn attacker(addr: SocketAddr, slow: bool, stop: Arc<AtomicBool>) -> Ended {
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await else {
        return Ended::Refused;
    };
    let opened = Instant::now();
    let mut buf = [0u8; 256];
    if slow {
        let _ = stream.write_all(b"GET /v1/services HTTP/1.1\r\nHost: admin\r\n").await;
    }
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                // Closed (or answered and closed): the server let go.
                Ok(0) | Err(_) => return Ended::Closed(opened.elapsed()),
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if stop.load(Ordering::SeqCst) {
                    return Ended::Open;
                }
                if slow && stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return Ended::Closed(opened.elapsed());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_idle_and_ten_thousand_slow_connections_to_the_admin_api_starve_nothing() {
    let limit = raise_open_files();
    if limit < 4096 {
        eprintln!("SKIPPED: the open-files limit ({limit}) is too low for this test");
        return;
    }
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");

    // Valid traffic on the gateway throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (url, stop, ok, failed) = (shoal.url("/"), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                match tokio::time::timeout(Duration::from_secs(5), get_with(&client, &url, None)).await {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // 20,000 connections, no token: half idle, half with a head that never
    // ends; opened 200 at a time.
    let attackers_stop = Arc::new(AtomicBool::new(false));
    let opening = Arc::new(tokio::sync::Semaphore::new(200));
    let mut attackers = Vec::new();
    for n in 0..20_000 {
        let permit = opening.clone().acquire_owned().await.unwrap();
        let (admin, stop) = (shoal.admin, attackers_stop.clone());
        attackers.push(tokio::spawn(async move {
            // Only the connect holds a permit: held connections do not.
            let connected = tokio::spawn(attacker(admin, n % 2 == 1, stop));
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(permit);
            connected.await.unwrap()
        }));
    }

    // Meanwhile the CLI answers within 2 s, and no replica goes unready.
    for _ in 0..3 {
        let started = Instant::now();
        let (ok, out, err) = shoal.cli(&["get", "services"]);
        let took = started.elapsed();
        assert!(ok, "shoal get svc failed under the flood: {err}");
        assert!(took < Duration::from_secs(2), "shoal get svc took {took:?} under the flood");
        assert!(out.contains("kubia") && out.contains("3/3"), "{out}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (_, replicas, _) = shoal.cli(&["get", "replicas"]);
    assert_eq!(replicas.matches("1/1").count(), 3, "{replicas}");

    // Every attacking connection is closed by the server, within the header
    // timeout (evicted sooner, most of them).
    let watch_until = Instant::now() + ADMIN_HEADER_TIMEOUT + Duration::from_secs(5);
    while Instant::now() < watch_until && !attackers.iter().all(|a| a.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    attackers_stop.store(true, Ordering::SeqCst);
    let (mut closed, mut refused, mut open, mut slowest) = (0, 0, 0, Duration::ZERO);
    for attacker in attackers {
        match attacker.await.unwrap() {
            Ended::Closed(after) => {
                closed += 1;
                slowest = slowest.max(after);
            }
            Ended::Refused => refused += 1,
            Ended::Open => open += 1,
        }
    }
    eprintln!("attackers: {closed} closed by the server (the last after {slowest:?}), {refused} refused, {open} open");
    assert_eq!(open, 0, "connections outlived the header timeout");
    assert!(slowest <= ADMIN_HEADER_TIMEOUT + Duration::from_secs(3), "a connection was held {slowest:?}");

    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("gateway during the flood: {ok} × 200, {failed} failed");
    assert_eq!(failed, 0, "gateway requests failed during the flood");
    assert!(ok > 50, "{ok}");
    assert!(!shoal.dump().contains("Unready"), "a replica went unready:\n{}", shoal.dump());
    assert!(!shoal.dump().contains("Too many open files"), "{}", shoal.dump());
    // And the CLI still works afterwards, with the token.
    let (ok, _, err) = shoal.cli(&["get", "services"]);
    assert!(ok, "{err}");
    assert!(shoal.stop().success());
}

/// Whether the server closed `stream` without answering, within 2 s.
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: kubia\r\n\r\n").await;
    matches!(tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_closes_connections_past_its_cap_at_once() {
    let mut shoal = Shoal::start(&["--max-connections", "20"]);
    shoal.wait_ready("kubia");
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(shoal.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: kubia\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        held.push(stream);
    }
    // The 21st is closed without an answer; the 20 keep working.
    let mut extra = TcpStream::connect(shoal.addr).await.unwrap();
    assert!(closed_at_once(&mut extra).await, "a connection past the cap was served");
    let first = &mut held[0];
    first.write_all(b"GET / HTTP/1.1\r\nHost: kubia\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    shoal.wait_for_output(|line| line.contains("connection limit reached"));
    // Room again once some close.
    held.truncate(10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    drop(held);
    assert!(shoal.stop().success());
}
