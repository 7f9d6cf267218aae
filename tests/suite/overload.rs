//! Overload: the gateway's memory stays bounded with 2,000 client
//! connections open, and it keeps serving.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_open_connections_keep_memory_bounded() {
    const CONNECTIONS: usize = 2000;
    let files = raise_open_files();
    if files < (CONNECTIONS as u64) * 2 + 200 {
        eprintln!("SKIPPED: the open-files limit is {files}, too low for {CONNECTIONS} connections and their peers");
        return;
    }
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let (status, _) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    let before = rss_kib(shoal.pid());

    // 2,000 keep-alive connections, each having made one request.
    let addr = shoal.addr;
    let connections = tokio::task::spawn_blocking(move || {
        let mut open = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\nHost: kubia.test\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
            open.push(stream);
        }
        open
    })
    .await
    .unwrap();
    let during = rss_kib(shoal.pid());
    let per_connection = (during.saturating_sub(before)) * 1024 / CONNECTIONS as u64;
    eprintln!(
        "gateway RSS: {before} KiB before, {during} KiB with {CONNECTIONS} connections ({per_connection} B each)"
    );
    assert!(during - before < 96 * 1024, "RSS grew by {} KiB for {CONNECTIONS} idle connections", during - before);

    // It still serves new clients.
    for _ in 0..20 {
        let (status, _) = get(&shoal.url("/"), None).await;
        assert_eq!(status, 200);
    }
    drop(connections);
    assert!(shoal.stop().success());
}
