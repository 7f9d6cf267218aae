//! Taking over running workers (issue 21): a worker listens for a `shoal
//! up` that did not start it, and serves every gateway attached to it at
//! once, each on its own channel.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use shoal_gateway::link::{Link, RequestBody};
use shoal_protocol::channel::frame::{RequestHead, Scheme};

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are new descriptors of ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// `GET path` over `link`: (status, body).
async fn get_over(link: &std::sync::Arc<Link>, path: &str) -> (u16, String) {
    let head = RequestHead {
        stream: 0,
        end_stream: true,
        scheme: Scheme::Http,
        authority: "localhost".into(),
        method: http::Method::GET,
        path_and_query: path.into(),
        client: "192.0.2.7".into(),
        hops: 0,
        deadline_ms: 10_000,
        connect_ms: 0,
        headers: http::HeaderMap::from_iter([(
            http::header::HeaderName::from_static("x-forwarded-for"),
            http::HeaderValue::from_static("192.0.2.7"),
        )]),
    };
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        link.request::<http_body_util::Empty<Bytes>>(&head, RequestBody::Full(Bytes::new())),
    )
    .await
    .expect("an answer within 10 s")
    .expect("a response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("a body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_gateway_attaches_to_a_running_worker_and_both_are_served() {
    let dir = Scratch::new("attach");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    let pid = shoal.worker_pids()[0];
    let replica = shoal.replica_of(pid);
    let scope = shoal_protocol::attach::workers_scope(&shoal.data.0).unwrap();
    let listening = shoal_protocol::attach::listening_workers(&scope).unwrap();
    let pids: Vec<u32> = listening.iter().map(|l| l.pid).collect();
    assert_eq!(pids, vec![pid], "the worker does not listen");
    let socket = listening[0].address.clone();

    // Attach as a second gateway would: new output pipes, a new channel.
    let ((out_read, out_write), (_err_read, err_write)) = (pipe(), pipe());
    let (identity, fds) =
        shoal_protocol::attach::attach(&socket, &out_write, &err_write).expect("the worker takes the attach");
    drop((out_write, err_write));
    assert_eq!((identity.replica.as_str(), identity.service.as_str(), identity.pid), (replica.as_str(), "kubia", pid));
    let link = Link::open("attached", fds).expect("the new channel opens");
    let (status, body) = get_over(&link, "/").await;
    assert_eq!((status, body.clone()), (200, format!("You've hit {replica}\n")));
    // The worker's output now comes to the newest gateway.
    let mut output = std::fs::File::from(out_read);
    let line = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 4096];
        let n = output.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(line.contains("Received request from 192.0.2.7"), "{line:?}");
    // The first gateway is served all along.
    for _ in 0..5 {
        let (status, body) = get(&shoal.url("/"), None).await;
        assert_eq!((status, body.as_str()), (200, format!("You've hit {replica}\n").as_str()));
        let (status, _) = get_over(&link, "/").await;
        assert_eq!(status, 200);
    }

    // The attached gateway goes: the worker serves the first one still.
    link.close("the test is done with it");
    drop(link);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(alive(pid));
    let (status, _) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    // Something that is not an attach is answered with nothing.
    let stranger = shoal_protocol::attach::connect(&socket).unwrap();
    shoal_protocol::fdpass::send(stranger.as_raw_fd(), b"GET / HTTP/1.1", &[]).unwrap();
    let mut buf = [0u8; 64];
    let (len, fds) = shoal_protocol::fdpass::receive(stranger.as_raw_fd(), &mut buf).unwrap();
    assert_eq!((len, fds.len()), (0, 0), "a stranger got an answer");
    assert!(alive(pid));
    assert_eq!(get(&shoal.url("/"), None).await.0, 200);
    assert!(shoal.stop().success());
    assert_eq!(shoal_protocol::attach::listening_workers(&scope).unwrap(), Vec::new(), "a worker listens still");
}

/// What a [`Load`] saw.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    ok: u64,
    failed: u64,
    /// Of the failed: connections refused (or not completed).
    refused: u64,
    /// Whether the last `tail` requests of every client were answered.
    tail_ok: bool,
}

/// GETs `url` from `clients` tasks until told to stop, counting over the
/// whole run. Odd clients open a connection per request (a refused
/// connection counts, as a client would see it); even ones keep theirs
/// alive between requests, as browsers and proxies do.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Load {
    fn start(url: String, clients: usize, tail: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|n| {
                let (stop, url) = (stop.clone(), url.clone());
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let kept = client();
                    let mut recent = std::collections::VecDeque::new();
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let request = hyper::Request::get(&url).body(http_body_util::Empty::<Bytes>::new()).unwrap();
                        let sent = if n % 2 == 0 { kept.request(request) } else { client().request(request) };
                        let answer = tokio::time::timeout(Duration::from_secs(10), sent).await;
                        let good = match answer {
                            Ok(Ok(response)) => {
                                let status = response.status();
                                let good = response.into_body().collect().await.is_ok() && status == 200;
                                if !good {
                                    eprintln!("load: status {status}");
                                }
                                good
                            }
                            Ok(Err(error)) => {
                                if error.is_connect() {
                                    seen.refused += 1;
                                }
                                eprintln!("load: {error:?}");
                                false
                            }
                            Err(_) => {
                                eprintln!("load: no answer within 10 s");
                                false
                            }
                        };
                        if good {
                            seen.ok += 1
                        } else {
                            seen.failed += 1
                        }
                        recent.push_back(good);
                        if recent.len() > tail {
                            recent.pop_front();
                        }
                        if !good {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    seen.tail_ok = recent.iter().all(|good| *good);
                    seen
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut total = Seen { tail_ok: true, ..Seen::default() };
        for task in self.tasks {
            let seen = task.await.unwrap();
            total.ok += seen.ok;
            total.failed += seen.failed;
            total.refused += seen.refused;
            total.tail_ok &= seen.tail_ok;
        }
        total
    }
}

/// A free loopback address, for a gateway that successors take over at
/// the same address.
fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// The pids of `shoal`'s replicas, from its API, sorted.
fn replica_pids(shoal: &Shoal) -> Vec<u64> {
    let mut pids: Vec<u64> = shoal.replicas().iter().filter_map(|r| r["pid"].as_u64()).collect();
    pids.sort();
    pids
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workers_of_a_killed_shoal_up_are_taken_over_by_the_next_one() {
    let dir = Scratch::new("takeover");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 2"));
    let listen = free_address();
    let mut first = Shoal::start(&["--listen", &listen, "--orphan-grace", "30s", "-f", file.to_str().unwrap()]);
    first.wait_ready("kubia");
    let pids = replica_pids(&first);
    assert_eq!(pids.len(), 2);
    let load = Load::start(format!("http://{listen}/"), 4, 50);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9, and a new shoal up on the same data directory.
    // SAFETY: our own child.
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    first.wait_exit(Duration::from_secs(10)).expect("shoal survived SIGKILL");
    let data = std::mem::replace(&mut first.data, Scratch::new("moved"));
    let killed = std::time::Instant::now();
    let mut second = Shoal::start_in(data, &["--listen", &listen, "--orphan-grace", "30s"], |_| {});
    second.wait_for_output(|l| l.contains("took over 2 running worker(s) of an earlier shoal up"));
    second.wait_ready("kubia");
    eprintln!("serving again {:?} after the kill", killed.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let Seen { ok, failed, refused, tail_ok } = load.finish().await;
    eprintln!("{ok} requests answered, {failed} failed ({refused} refused) while no gateway listened");
    assert!(tail_ok, "requests still failed after the new shoal up took over");
    assert!(ok > 100, "{ok}");

    // The same workers, not new ones: same pids, no restart, each adopted.
    assert_eq!(replica_pids(&second), pids);
    assert!(second.replicas().iter().all(|r| r["restarts"] == 0 && r["ready"] == true));
    let (_, described, _) = second.cli(&["describe", "service", "kubia"]);
    assert_eq!(described.matches("taken over from an earlier shoal up").count(), 2, "{described}");
    assert!(get(&second.url("/"), None).await.1.starts_with("You've hit kubia-"));
    still_managed(second, &pids);
}

/// Checks that `shoal`'s kubia (whose replicas had `pids`) can still be
/// changed (scaled to 3), and that a clean stop stops those workers.
fn still_managed(mut shoal: Shoal, pids: &[u64]) {
    assert!(shoal.cli(&["scale", "service", "kubia", "--replicas", "3"]).0);
    shoal.eventually(&["get", "services"], |out| out.lines().any(|l| l.starts_with("kubia") && l.contains(" 3/3 ")));
    assert!(shoal.stop().success());
    for pid in pids {
        assert!(!alive(*pid as u32), "worker {pid} outlived a clean stop");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_successor_the_workers_exit_after_the_grace() {
    let dir = Scratch::new("orphans");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 2"));
    let mut shoal = Shoal::start(&["--orphan-grace", "2s", "-f", file.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    let pids = replica_pids(&shoal);
    // SAFETY: our own child.
    unsafe { libc::kill(shoal.pid() as i32, libc::SIGKILL) };
    shoal.wait_exit(Duration::from_secs(10)).expect("shoal survived SIGKILL");
    let killed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pids.iter().all(|pid| alive(*pid as u32)), "workers exited before their grace");
    while pids.iter().any(|pid| alive(*pid as u32)) {
        assert!(killed.elapsed() < Duration::from_secs(15), "workers outlived their grace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("workers gone {:?} after the kill (grace 2 s)", killed.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shoal_up_clears_the_sockets_an_older_shoal_left_in_the_data_directory() {
    let dir = Scratch::new("legacy-sockets");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    let mut first = Shoal::start(&["-f", file.to_str().unwrap()]);
    first.wait_ready("kubia");
    assert!(first.stop().success());
    // What a worker of a Shoal from before the abstract names left behind
    // when it ended without removing its file.
    let workers = first.data.0.join("workers");
    std::fs::create_dir_all(&workers).unwrap();
    let stale = workers.join("4194000.sock");
    shoal_protocol::attach::SeqpacketListener::bind(&shoal_protocol::attach::Address::File(stale.clone()))
        .unwrap()
        .close_leaving_file();
    assert!(stale.exists());
    let data = std::mem::replace(&mut first.data, Scratch::new("moved"));
    let mut next = Shoal::start_in(data, &["-f", file.to_str().unwrap()], |_| {});
    next.wait_ready("kubia");
    assert!(!workers.exists(), "{} is left", workers.display());
    assert!(next.stop().success());
}

/// Starts a `shoal up` on `current`'s data directory, which hands over to
/// it; waits until it serves and `current` has exited. Returns the new one.
fn hand_over(current: &mut Shoal, args: &[&str]) -> Shoal {
    let data = std::mem::replace(&mut current.data, Scratch::new("moved"));
    let next = Shoal::start_in(data, args, |_| {});
    let old = current.pid();
    next.wait_for_output(|l| l.contains(&format!("took over from pid {old}")));
    let status = current.wait_exit(Duration::from_secs(30)).expect("the old shoal up did not exit after handing over");
    assert!(status.success(), "{status}");
    current.wait_for_output(|l| l.contains("handed over to pid"));
    next
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_up_hands_over_five_times_under_load_without_a_failed_request() {
    let dir = Scratch::new("handover");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 2"));
    let listen = free_address();
    let mut current = Shoal::start(&["--listen", &listen, "-f", file.to_str().unwrap()]);
    current.wait_ready("kubia");
    // One replica dies once: its restart count must survive the handovers.
    let victim = replica_pids(&current)[0];
    // SAFETY: a worker this test's shoal up started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    current.eventually(&["get", "services"], |out| out.lines().any(|l| l.starts_with("kubia") && l.contains(" 2/2 ")));
    let pids = replica_pids(&current);
    assert_eq!(pids.len(), 2);
    assert!(!pids.contains(&victim));
    let load = Load::start(format!("http://{listen}/"), 4, 50);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut predecessors = Vec::new();
    for round in 1..=5 {
        let started = std::time::Instant::now();
        predecessors.push(current.pid());
        let next = hand_over(&mut current, &["--listen", &listen]);
        eprintln!("handover {round} took {:?}", started.elapsed());
        assert_eq!(replica_pids(&next), pids, "handover {round} changed the workers");
        current = next;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seen = load.finish().await;
    eprintln!("{seen:?} over 5 handovers");
    assert_eq!((seen.failed, seen.refused), (0, 0), "requests failed across the handovers");
    assert!(seen.ok > 100, "{seen:?}");
    // The same two replicas, never restarted, still managed: they can be
    // scaled, and a clean stop stops them.
    let replicas = current.replicas();
    assert_eq!(replicas.len(), 2);
    assert!(replicas.iter().all(|r| r["ready"] == true), "{replicas:?}");
    let restarts: Vec<u64> = replicas.iter().filter_map(|r| r["restarts"].as_u64()).collect();
    assert_eq!(restarts.iter().sum::<u64>(), 1, "the restart count was lost: {replicas:?}");
    still_managed(current, &pids);
    // The groups the workers were created in went with the last of them.
    for pid in predecessors {
        for root in ["/sys/fs/cgroup/memory/shoal", "/sys/fs/cgroup/shoal"] {
            let group = std::path::Path::new(root).join(format!("up-{pid}"));
            assert!(!group.exists(), "{} was left behind", group.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handover_during_a_rollout_finishes_it_without_a_failed_request() {
    let dir = Scratch::new("handover-rollout");
    // Each new replica takes 3 s to pass its readiness probe: the rollout
    // of two is under way for seconds.
    let spec = "replicas: 2\nreadiness: {path: /, initialDelaySeconds: 3, periodSeconds: 1}";
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, spec));
    let listen = free_address();
    let mut current = Shoal::start(&["--listen", &listen, "-f", file.to_str().unwrap()]);
    current.wait_ready("kubia");
    let load = Load::start(format!("http://{listen}/"), 4, 50);
    let v2 = dir.write("kubia-v2.yaml", manifest("kubia", HELLO_WASM, &format!("{spec}\nenv: {{RELEASE: two}}")));
    assert!(current.cli(&["apply", "-f", v2.to_str().unwrap()]).0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, status, _) = current.cli(&["rollout", "status", "kubia", "--timeout", "1s"]);
    assert!(!status.contains("successfully rolled out"), "the rollout ended before the handover: {status}");

    let next = hand_over(&mut current, &["--listen", &listen]);
    // The rollout goes on in the new shoal up, to its end.
    let (ok, out, err) = next.cli(&["rollout", "status", "kubia", "--timeout", "60s"]);
    assert!(ok, "{out}{err}");
    let replicas = next.replicas();
    let revisions: std::collections::HashSet<&str> = replicas.iter().filter_map(|r| r["revision"].as_str()).collect();
    assert_eq!((replicas.len(), revisions.len()), (2, 1), "{replicas:?}");
    // The new revision's replica that was starting was taken over, not
    // started again.
    assert!(next.dump().contains("taken over from an earlier shoal up"));
    let seen = load.finish().await;
    eprintln!("{seen:?} across a handover during a rollout");
    assert_eq!((seen.failed, seen.refused), (0, 0), "requests failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handover_while_a_service_wakes_from_zero_answers_the_held_requests() {
    let dir = Scratch::new("handover-zero");
    // At zero; a replica takes 2 s to be ready, so requests wait for it
    // across the handover.
    let spec = "replicas: 0\nautoscale:\n  min: 0\n  max: 2\n  scaleToZeroGracePeriod: 30s\n\
                readiness: {path: /, initialDelaySeconds: 2, periodSeconds: 1}";
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, spec));
    let listen = free_address();
    let mut current = Shoal::start(&["--listen", &listen, "-f", file.to_str().unwrap()]);
    current.wait_for_output(|l| l.contains("service/kubia"));
    assert!(current.replicas().is_empty());
    let url = format!("http://{listen}/");
    let held: Vec<_> = (0..8).map(|_| tokio::spawn(get_owned(url.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = hand_over(&mut current, &["--listen", &listen]);
    // More while the new one takes over, and after.
    let late: Vec<_> = (0..4).map(|_| tokio::spawn(get_owned(url.clone()))).collect();
    for answer in held.into_iter().chain(late) {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("You've hit kubia-"), "{body}");
    }
    // One replica woke, and it is the one the old shoal up started.
    let replicas = next.replicas();
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert!(next.dump().contains("taken over from an earlier shoal up"));
    // The autoscaler went on from the old one's state: its count (1, not
    // spec.replicas' 0) and its idle time, so no scale to zero follows
    // the handover within the 30 s grace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replicas = next.replicas();
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert_eq!(replicas[0]["ready"], true, "{replicas:?}");
    assert!(!next.dump().contains("ScaledToZero"), "{}", next.dump());
}

/// A connection to `shoal`'s handover socket (made once it serves).
async fn handover_socket(shoal: &Shoal) -> OwnedFd {
    let path = shoal_protocol::attach::Address::File(shoal.data.0.join("shoal.sock"));
    let started = std::time::Instant::now();
    loop {
        match shoal_protocol::attach::connect(&path) {
            Ok(socket) => return socket,
            Err(error) => assert!(started.elapsed() < Duration::from_secs(30), "no handover socket: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successor_that_dies_after_the_offer_leaves_the_old_one_serving_until_the_next() {
    let dir = Scratch::new("handover-dies");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 2"));
    let listen = free_address();
    let mut current = Shoal::start(&["--listen", &listen, "-f", file.to_str().unwrap()]);
    current.wait_ready("kubia");
    let pids = replica_pids(&current);
    // A successor that takes the offer and dies.
    let socket = handover_socket(&current).await;
    let hello = br#"{"hello":{"format":1,"version":"0.0.0","pid":1}}"#;
    shoal_protocol::fdpass::send(socket.as_raw_fd(), hello, &[]).unwrap();
    let offer = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let (len, fds) = shoal_protocol::fdpass::receive(socket.as_raw_fd(), &mut buf).unwrap();
        (String::from_utf8_lossy(&buf[..len]).into_owned(), fds.len())
    })
    .await
    .unwrap();
    assert!(offer.0.contains("offer"), "{offer:?}");
    assert_eq!(offer.1, 3, "gateway, admin and the state: {offer:?}");
    current.wait_for_output(|l| l.contains("failed to take over"));
    // The old one serves on with its replicas…
    for _ in 0..20 {
        assert_eq!(get(&format!("http://{listen}/"), None).await.0, 200);
    }
    // …and hands over to the next successor, which gets everything.
    let next = hand_over(&mut current, &["--listen", &listen]);
    assert_eq!(replica_pids(&next), pids);
    assert_eq!(get(&next.url("/"), None).await.0, 200);
    still_managed(next, &pids);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successor_speaking_another_handover_format_is_refused_and_nothing_stops() {
    let mut shoal = Shoal::start(&["--no-sample"]);
    shoal.wait_for_output(|l| l.contains("admin API listening"));
    let socket = handover_socket(&shoal).await;
    let hello = br#"{"hello":{"format":999,"version":"9.0.0","pid":1}}"#;
    shoal_protocol::fdpass::send(socket.as_raw_fd(), hello, &[]).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (len, _) = shoal_protocol::fdpass::receive(socket.as_raw_fd(), &mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert!(answer.contains("refused") && answer.contains("format 999"), "{answer}");
    assert!(answer.contains("stop this one first"), "{answer}");
    // Still in charge: its API answers and writes.
    assert!(shoal.cli(&["get", "services"]).0);
    let dir = Scratch::new("refused");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    assert!(shoal.cli(&["apply", "-f", file.to_str().unwrap()]).0);
    shoal.wait_ready("kubia");
    assert!(shoal.stop().success());
}

async fn get_owned(url: String) -> (u16, String) {
    get(&url, None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_keeps_its_restart_count_and_back_off_across_a_handover() {
    let dir = Scratch::new("handover-crashloop");
    let crash = wat::parse_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crash-at-start.wat")).unwrap();
    dir.write("crash.wasm", crash);
    let file = dir.write("crash.yaml", manifest("crashy", "crash.wasm", "replicas: 1"));
    let mut current = Shoal::start(&["--no-sample", "-f", file.to_str().unwrap()]);
    // Failed starts back off 1 s, 2 s, 4 s: hand over during the 4 s one.
    for delay in ["1s", "2s", "4s"] {
        let line = current.wait_for_line(|l| l.contains("FailedStart:") && l.contains("retrying in"));
        assert!(line.ends_with(&format!("retrying in {delay}")), "{line}");
    }
    let mut next = hand_over(&mut current, &[]);
    // The next failure backs off 8 s, as it would have without the
    // handover: the count of failures came along (afresh, it would be 1 s).
    let line = next.wait_for_line(|l| l.contains("FailedStart:") && l.contains("retrying in"));
    assert!(line.ends_with("retrying in 8s"), "{line}");
    let replicas = next.replicas();
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert_eq!(replicas[0]["restarts"], 4, "{replicas:?}");
}
