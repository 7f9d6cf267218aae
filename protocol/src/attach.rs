//! Attaching to a running worker: how a `shoal up` that did not start a
//! worker (its successor in a handover, or one started after a crash)
//! gets a channel to it. The worker's side is in `shoal-runtime`
//! (`worker::attach`); this is the client, and what both share.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelFds;
use crate::fdpass;

/// How long one attach exchange may take, on either side.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a worker answers an attach with (JSON), with the gateway's three
/// descriptors of the new channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerIdentity {
    pub service: String,
    pub replica: String,
    pub module: PathBuf,
    pub pid: u32,
    /// When it became ready (seconds since the epoch).
    pub ready_unix: u64,
}

/// The request an attach starts with.
pub const ATTACH_REQUEST: &[u8] = b"SHOAL-ATTACH 1";

/// Where a Unix socket listens: a file (`shoal up`'s handover socket), or
/// a name in Linux's abstract socket namespace (a worker's attach socket),
/// which makes no inode and goes away with the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    File(PathBuf),
    Abstract(String),
}

impl Address {
    /// As a `sockaddr_un` and its length, or an error that says it is too
    /// long.
    fn to_sockaddr(&self) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
        // SAFETY: sockaddr_un is plain data.
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        // An abstract name starts with a NUL and is as long as the length
        // given says (no NUL after it).
        let (skip, bytes) = match self {
            Address::File(path) => (0, path.as_os_str().as_bytes()),
            Address::Abstract(name) => (1, name.as_bytes()),
        };
        if skip + bytes.len() >= address.sun_path.len() {
            return Err(io::Error::other(format!(
                "{self}: longer than a Unix socket address may be ({} bytes)",
                address.sun_path.len() - 1 - skip
            )));
        }
        for (to, from) in address.sun_path[skip..].iter_mut().zip(bytes) {
            *to = *from as libc::c_char;
        }
        let length = match self {
            Address::File(_) => std::mem::size_of::<libc::sockaddr_un>(),
            Address::Abstract(_) => std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + bytes.len(),
        };
        Ok((address, length as libc::socklen_t))
    }
}

impl std::fmt::Display for Address {
    /// A file's path; an abstract name after `@`, as `ss` and
    /// `/proc/net/unix` show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::File(path) => path.display().fmt(f),
            Address::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

/// The prefix of the attach sockets of the workers of the `shoal up` that
/// runs on `data_dir`: `shoal/<device>-<inode>` of the directory, so that
/// every path to it names the same workers and no other directory does.
pub fn workers_scope(data_dir: &Path) -> io::Result<String> {
    let meta = std::fs::metadata(data_dir)?;
    Ok(format!("shoal/{:x}-{:x}", meta.dev(), meta.ino()))
}

/// The attach socket's name of worker `pid` under `scope`
/// ([`workers_scope`]): `<scope>/<pid>-<nonce>`, the nonce (random, from
/// whoever starts the worker) so that no one can take a worker's name
/// before it binds it.
pub fn worker_name(scope: &str, pid: u32, nonce: u64) -> String {
    format!("{scope}/{pid}-{nonce:016x}")
}

/// A worker's attach socket found listening ([`listening_workers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub pid: u32,
    pub address: Address,
    /// The socket's inode number, as `/proc/<pid>/fd` shows it.
    inode: u64,
}

/// The workers listening for attaches under `scope`, as `/proc/net/unix`
/// lists them (this network namespace's sockets), keeping only sockets
/// held by the process their name gives, of this user: anyone may bind an
/// abstract name, or print a row of that table (a name may hold a line
/// break), so a name alone proves nothing.
pub fn listening_workers(scope: &str) -> io::Result<Vec<Listening>> {
    let table = std::fs::read_to_string("/proc/net/unix")?;
    Ok(parse_listening(&table, scope).into_iter().filter(held_by_its_worker).collect())
}

/// Whether `listening`'s socket is one of its pid's open descriptors, and
/// that process is this user's.
fn held_by_its_worker(listening: &Listening) -> bool {
    let process = PathBuf::from(format!("/proc/{}", listening.pid));
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    if !std::fs::metadata(&process).is_ok_and(|m| m.uid() == me) {
        return false;
    }
    let socket = format!("socket:[{}]", listening.inode);
    std::fs::read_dir(process.join("fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == socket.as_str()))
    })
}

/// The rows of a `/proc/net/unix` table that are listening
/// (`__SO_ACCEPTCON`) seqpacket sockets named `@<scope>/<pid>-<nonce>`.
fn parse_listening(table: &str, scope: &str) -> Vec<Listening> {
    /// `__SO_ACCEPTCON` in the flags column: a listening socket.
    const ACCEPTING: u32 = 1 << 16;
    let prefix = format!("@{scope}/");
    let mut found: Vec<Listening> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let [_, _, _, flags, kind, _, inode, path] = fields[..] else { return None };
            let listening = u32::from_str_radix(flags, 16).is_ok_and(|f| f & ACCEPTING != 0);
            let seqpacket = u32::from_str_radix(kind, 16) == Ok(libc::SOCK_SEQPACKET as u32);
            if !(listening && seqpacket) {
                return None;
            }
            let (pid, nonce) = path.strip_prefix(&prefix)?.split_once('-')?;
            let pid: u32 = pid.parse().ok()?;
            let nonce = u64::from_str_radix(nonce, 16).ok()?;
            let name = worker_name(scope, pid, nonce);
            // Only the form worker_name writes ("+17", "0017" are not 17).
            (path[1..] == *name).then_some(Listening {
                pid,
                address: Address::Abstract(name),
                inode: inode.parse().ok()?,
            })
        })
        .collect();
    found.sort_by_key(|l| l.pid);
    found.dedup();
    found
}

/// A new `SOCK_SEQPACKET` Unix socket, close-on-exec, with `flags` added
/// (`SOCK_NONBLOCK`, say).
pub fn seqpacket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A blocking `SOCK_SEQPACKET` connection to the socket at `address`.
pub fn connect(address: &Address) -> io::Result<OwnedFd> {
    let (address, length) = address.to_sockaddr()?;
    let socket = seqpacket(0)?;
    // A connect waits while the listener's backlog is full: at most this
    // long (`SO_SNDTIMEO` bounds it), so a listener that never accepts
    // cannot hold the caller.
    set_timeouts(socket.as_raw_fd());
    // SAFETY: `address` is a valid sockaddr_un of `length` bytes.
    if unsafe { libc::connect(socket.as_raw_fd(), (&raw const address).cast(), length) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Bounds blocking sends and receives on `socket` by [`EXCHANGE_TIMEOUT`].
pub fn set_timeouts(socket: libc::c_int) {
    set_timeouts_to(socket, EXCHANGE_TIMEOUT);
}

/// Bounds blocking sends and receives on `socket` by `timeout` (whole
/// seconds; zero: no bound).
pub fn set_timeouts_to(socket: libc::c_int, timeout: Duration) {
    let timeout = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: 0 };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: sets a timeval option on a socket the caller holds.
        unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                option,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

/// A listening `SOCK_SEQPACKET` Unix socket (a worker's attach socket,
/// `shoal up`'s handover socket); its file, if it has one, is removed when
/// dropped.
pub struct SeqpacketListener {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
    /// The socket file's path, device and inode.
    file: Option<(PathBuf, (u64, u64))>,
}

impl SeqpacketListener {
    /// Listens on `address`: a file (a stale one there is replaced) gets
    /// mode 0600; an abstract name has no permissions, so whoever accepts
    /// checks the peer's user.
    pub fn bind(address: &Address) -> io::Result<SeqpacketListener> {
        let (sockaddr, length) = address.to_sockaddr()?;
        if let Address::File(path) = address {
            let _ = std::fs::remove_file(path);
        }
        let fd = seqpacket(libc::SOCK_NONBLOCK)?;
        // SAFETY: `sockaddr` is a valid sockaddr_un of `length` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&raw const sockaddr).cast(), length) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Address::File(path) = address {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        // SAFETY: listen on our own bound socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a socket this value owns, open until it drops.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        let file = match address {
            Address::File(path) => std::fs::metadata(path).map(|m| (path.clone(), (m.dev(), m.ino()))).ok(),
            Address::Abstract(_) => None,
        };
        Ok(SeqpacketListener { fd, file })
    }

    /// The next connection (blocking, close-on-exec).
    pub async fn accept(&self) -> io::Result<OwnedFd> {
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: accept4 on our listening socket; no address wanted.
            let fd = unsafe {
                libc::accept4(
                    self.fd.get_ref().as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: a new descriptor that nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => guard.clear_ready(),
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => return Err(error),
            }
        }
    }
}

impl SeqpacketListener {
    /// Closes the socket and leaves its file: another process bound its
    /// own at the same path (the file of a socket bound in its place may
    /// have the same inode number, on tmpfs).
    pub fn close_leaving_file(mut self) {
        self.file = None;
    }
}

impl Drop for SeqpacketListener {
    fn drop(&mut self) {
        // Only if the file is still ours.
        let Some((path, file)) = &self.file else { return };
        if std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *file) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether a peer of user `uid` may attach or be attached to: this
/// process's own user, or root.
pub fn trusted_uid(uid: libc::uid_t) -> bool {
    // SAFETY: getuid has no preconditions.
    uid == unsafe { libc::getuid() } || uid == 0
}

/// The user id of the process at the other end of `socket`.
pub fn peer_uid(socket: libc::c_int) -> io::Result<libc::uid_t> {
    peer_credentials(socket).map(|c| c.uid)
}

/// The process id, user and group of the process at the other end of
/// `socket`.
pub fn peer_credentials(socket: libc::c_int) -> io::Result<libc::ucred> {
    // SAFETY: ucred is plain data.
    let mut credentials: libc::ucred = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of `length` bytes.
    let got = unsafe {
        libc::getsockopt(socket, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut credentials).cast(), &mut length)
    };
    if got != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(credentials)
}

/// The client's side (`shoal up` attaching to a worker it did not start):
/// connects to `address`, checks that the listener is a process of this
/// user (or root), hands over the write ends of the new output pipes, and
/// returns the worker's identity and the gateway's end of the new channel.
/// A worker whose identity names another process than the one listening
/// is refused: anyone may bind an abstract name.
pub fn attach(address: &Address, stdout: &OwnedFd, stderr: &OwnedFd) -> io::Result<(WorkerIdentity, ChannelFds)> {
    let socket = connect(address)?;
    let listener = peer_credentials(socket.as_raw_fd())?;
    if !trusted_uid(listener.uid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{address}: listened on by uid {}, not a worker of this user", listener.uid),
        ));
    }
    fdpass::send(socket.as_raw_fd(), ATTACH_REQUEST, &[stdout.as_raw_fd(), stderr.as_raw_fd()])?;
    let mut buf = vec![0u8; 64 * 1024];
    let (len, fds) = fdpass::receive(socket.as_raw_fd(), &mut buf)?;
    let Ok([segment, wake_me, wake_peer]) = <[OwnedFd; 3]>::try_from(fds) else {
        return Err(io::Error::other(format!("{address}: the worker refused the attach")));
    };
    let identity: WorkerIdentity = serde_json::from_slice(&buf[..len]).map_err(io::Error::other)?;
    if i64::from(identity.pid) != i64::from(listener.pid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{address}: pid {} answered as worker pid {}", listener.pid, identity.pid),
        ));
    }
    Ok((identity, ChannelFds { segment, wake_me, wake_peer }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_workers_are_the_listening_seqpacket_sockets_of_the_scope() {
        let table = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0005 01 1001 @shoal/803-2a/4242-00000000000000ff
0000000000000000: 00000003 00000000 00000000 0005 03 1002 @shoal/803-2a/4242-00000000000000ff
0000000000000000: 00000002 00000000 00010000 0005 01 1003 @shoal/803-2a/17-0123456789abcdef
0000000000000000: 00000002 00000000 00010000 0005 01 1004 @shoal/803-2b/99-0000000000000001
0000000000000000: 00000002 00000000 00010000 0001 01 1005 @shoal/803-2a/55-0000000000000001
0000000000000000: 00000002 00000000 00000000 0005 01 1006 @shoal/803-2a/66-0000000000000001
0000000000000000: 00000002 00000000 00010000 0005 01 1007 /var/shoal/workers/77.sock
0000000000000000: 00000002 00000000 00010000 0005 01 1008 @shoal/803-2a/x-0000000000000001
0000000000000000: 00000002 00000000 00010000 0005 01 1009 @shoal/803-2a/0018-0000000000000001
0000000000000000: 00000002 00000000 00010000 0005 01 1010 @shoal/803-2a/19-1
0000000000000000: 00000002 00000000 00010000 0005 01 1011 @shoal/803-2a/20
0000000000000000: 00000002 00000000 00000000 0001 03 1012
";
        // The accepted connection's row (state 03, not listening) names the
        // same address; another scope, a stream socket, a socket bound and
        // not listening, a file, a name that is not a pid, a pid or nonce
        // not written as worker_name writes it, and no nonce are not ours.
        let found = parse_listening(table, "shoal/803-2a");
        let seen: Vec<(u32, String, u64)> = found.iter().map(|l| (l.pid, l.address.to_string(), l.inode)).collect();
        assert_eq!(
            seen,
            vec![
                (17, "@shoal/803-2a/17-0123456789abcdef".to_owned(), 1003),
                (4242, "@shoal/803-2a/4242-00000000000000ff".to_owned(), 1001)
            ]
        );
    }

    #[test]
    fn an_abstract_address_is_its_name_after_a_nul_and_no_more() {
        let (sockaddr, length) = Address::Abstract("shoal/1-2/3".into()).to_sockaddr().unwrap();
        let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        assert_eq!(length as usize, offset + 1 + "shoal/1-2/3".len());
        assert_eq!(sockaddr.sun_path[0], 0);
        assert_eq!(sockaddr.sun_path[1] as u8, b's');
        let long = Address::Abstract("x".repeat(200)).to_sockaddr().unwrap_err();
        assert!(long.to_string().contains("longer than a Unix socket address may be (106 bytes)"), "{long}");
    }

    #[test]
    fn a_worker_attach_socket_is_found_while_its_process_holds_it_and_gone_when_it_closes() {
        let scope = format!("shoal-test/{}", std::process::id());
        let me = std::process::id();
        let name = worker_name(&scope, me, 7);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let _entered = runtime.enter();
        let listener = SeqpacketListener::bind(&Address::Abstract(name.clone())).unwrap();
        let found = listening_workers(&scope).unwrap();
        assert_eq!(
            found.iter().map(|l| (l.pid, l.address.clone())).collect::<Vec<_>>(),
            vec![(me, Address::Abstract(name.clone()))]
        );
        // A name whose pid is not the process holding the socket is not
        // listed: here pid 1's name, bound by this process.
        let impostor = SeqpacketListener::bind(&Address::Abstract(worker_name(&scope, 1, 7))).unwrap();
        assert_eq!(listening_workers(&scope).unwrap().len(), 1);
        drop(impostor);
        // A second bind of a name in use fails: nobody takes a live
        // worker's name.
        let taken = SeqpacketListener::bind(&Address::Abstract(name.clone())).err().unwrap();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
        drop(listener);
        assert_eq!(listening_workers(&scope).unwrap(), Vec::new());
        let refused = connect(&Address::Abstract(name)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn an_attach_answered_by_another_process_than_the_worker_it_names_is_refused() {
        // Anyone may bind an abstract name: here a process (this test)
        // answers as if it were worker pid 1.
        let scope = format!("shoal-test-impostor/{}", std::process::id());
        let address = Address::Abstract(worker_name(&scope, 1, 1));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let listener = runtime.block_on(async { SeqpacketListener::bind(&address) }).unwrap();
        let client = std::thread::spawn({
            let address = address.clone();
            move || {
                let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
                attach(&address, &null(), &null())
            }
        });
        let connection = runtime.block_on(listener.accept()).unwrap();
        let mut buf = [0u8; 256];
        let (len, _pipes) = fdpass::receive(connection.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..len], ATTACH_REQUEST);
        let identity = WorkerIdentity {
            service: "kubia".into(),
            replica: "kubia-1".into(),
            module: "kubia.wasm".into(),
            pid: 1,
            ready_unix: 0,
        };
        let files: Vec<std::fs::File> = (0..3).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        fdpass::send(connection.as_raw_fd(), &serde_json::to_vec(&identity).unwrap(), &fds).unwrap();
        let refused = client.join().unwrap().unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied, "{refused}");
        let expected = format!("pid {} answered as worker pid 1", std::process::id());
        assert!(refused.to_string().contains(&expected), "{refused}");
    }
}
