//! Taking over running workers (issue 21): a worker listens for a `shoal
//! up` that did not start it, and serves every gateway attached to it at
//! once, each on its own channel.

mod support;

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use shoal_gateway::link::{Link, RequestBody};
use shoal_protocol::channel::frame::{RequestHead, Scheme};
use support::*;

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are new descriptors of ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A `SOCK_SEQPACKET` connection to `path`.
fn seqpacket_to(path: &std::path::Path) -> OwnedFd {
    use std::os::unix::ffi::OsStrExt as _;
    // SAFETY: plain socket creation; sockaddr_un is plain data, filled
    // below within its size.
    unsafe {
        let fd = OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0));
        let mut address: libc::sockaddr_un = std::mem::zeroed();
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (to, from) in address.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *to = *from as libc::c_char;
        }
        let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(libc::connect(fd.as_raw_fd(), (&raw const address).cast(), length), 0);
        fd
    }
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
    let socket = shoal.data.0.join(format!("workers/{pid}.sock"));
    assert!(socket.exists(), "{} is missing", socket.display());

    // Attach as a second gateway would: new output pipes, a new channel.
    let ((out_read, out_write), (_err_read, err_write)) = (pipe(), pipe());
    let (identity, fds) =
        shoal_runtime::worker::attach::attach(&socket, &out_write, &err_write).expect("the worker takes the attach");
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
    let stranger = seqpacket_to(&socket);
    shoal_protocol::fdpass::send(stranger.as_raw_fd(), b"GET / HTTP/1.1", &[]).unwrap();
    let mut buf = [0u8; 64];
    let (len, fds) = shoal_protocol::fdpass::receive(stranger.as_raw_fd(), &mut buf).unwrap();
    assert_eq!((len, fds.len()), (0, 0), "a stranger got an answer");
    assert!(alive(pid));
    assert_eq!(get(&shoal.url("/"), None).await.0, 200);
    assert!(shoal.stop().success());
    assert!(!socket.exists(), "the worker left its socket behind");
}
