//! `shoal up`'s stdout and stderr: a reader who stops reading them (a
//! terminal paused with Ctrl-S, a pipe into a program that hangs) holds
//! neither the gateway nor the admin API up. Lines that do not fit are
//! dropped, counted, and the count is printed once the output drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_who_stops_reading_shoals_output_does_not_stop_the_gateway() {
    let dir = Scratch::new("output");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    shoal.pause_output();
    // Each request prints a line of ~53 bytes (the replica's name and
    // kubia's "Received request from …"): 40,000 are ~2.1 MB, past the
    // pipe (64 KiB), the reader's buffer and the console's (1 MiB).
    // Before the console, the gateway stopped answering after ~1,000.
    const REQUESTS: u64 = 40_000;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (ok, failed, url) = (ok.clone(), failed.clone(), shoal.url("/"));
            tokio::spawn(async move {
                let client = client();
                // (The first failure ends the run.)
                while failed.load(Ordering::SeqCst) == 0 && ok.load(Ordering::SeqCst) < REQUESTS {
                    match tokio::time::timeout(Duration::from_secs(10), get_with(&client, &url, None)).await {
                        Ok((200, _)) => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a client task");
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{ok} requests answered 200, {failed} not, in {:?}, output unread", started.elapsed());
    assert_eq!(failed, 0, "requests failed while shoal's output was not read");
    assert!(ok >= REQUESTS);
    // The admin API answers too, the log book kept the latest lines, and
    // the control plane acts (its events are printed, its log written, as
    // the new replica starts).
    let (cli_ok, logs, _) = shoal.cli(&["logs", "kubia", "--tail", "5"]);
    assert!(cli_ok);
    assert_eq!(logs.lines().filter(|l| l.contains("Received request from")).count(), 5, "{logs}");
    let (cli_ok, _, err) = shoal.cli(&["scale", "service", "kubia", "--replicas", "2"]);
    assert!(cli_ok, "{err}");
    shoal.eventually(&["get", "services", "kubia"], |out| {
        out.lines().any(|l| l.split_whitespace().take(2).eq(["kubia", "2/2"]))
    });

    // Read again: the output drains, and says how much of it went missing.
    shoal.resume_output();
    const NOTICE: &str = "line(s) of output dropped here: stdout was not read fast enough";
    shoal.wait_for_output(|l| l.contains(NOTICE));
    let dropped: u64 = shoal
        .dump()
        .lines()
        .filter(|l| l.contains(NOTICE))
        .map(|note| note.trim_start_matches("shoal: ").split(' ').next().unwrap().parse::<u64>().expect(note))
        .sum();
    assert!(dropped > 0 && dropped < ok, "{dropped} lines dropped of {ok}");
    shoal.wait_for_output(|l| l.contains("service/kubia Ready: 2/2"));
    // Every request's line is printed or counted as dropped.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let printed = shoal.dump().lines().filter(|l| l.contains("Received request from")).count() as u64;
        if printed + dropped >= ok {
            break;
        }
        assert!(Instant::now() < deadline, "{printed} lines printed and {dropped} dropped of {ok} requests");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(shoal.stop().success());
    shoal.wait_for_output(|l| l == "shoal: stopped");
}
