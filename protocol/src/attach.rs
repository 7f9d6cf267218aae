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

/// `path` as a Unix socket address, or an error that says it is too long.
pub fn socket_address(path: &Path) -> io::Result<libc::sockaddr_un> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= address.sun_path.len() {
        return Err(io::Error::other(format!(
            "{}: longer than a Unix socket path may be ({} bytes)",
            path.display(),
            address.sun_path.len() - 1
        )));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, from) in address.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    Ok(address)
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

/// A blocking `SOCK_SEQPACKET` connection to the socket at `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let address = socket_address(path)?;
    let socket = seqpacket(0)?;
    let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
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
/// `shoal up`'s handover socket); its file is removed when dropped.
pub struct SeqpacketListener {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
    path: PathBuf,
    /// The socket file's device and inode.
    file: Option<(u64, u64)>,
}

impl SeqpacketListener {
    /// Listens on `path` (a stale file there is replaced), mode 0600.
    pub fn bind(path: &Path) -> io::Result<SeqpacketListener> {
        let address = socket_address(path)?;
        let _ = std::fs::remove_file(path);
        let fd = seqpacket(libc::SOCK_NONBLOCK)?;
        let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `address` is a valid sockaddr_un of `length` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&raw const address).cast(), length) } != 0 {
            return Err(io::Error::last_os_error());
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        // SAFETY: listen on our own bound socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a socket this value owns, open until it drops.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        let file = std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
        Ok(SeqpacketListener { fd, path: path.to_path_buf(), file })
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
        let now = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino())).ok();
        if now.is_some() && now == self.file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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
/// connects to `path`, hands over the write ends of the new output pipes,
/// and returns the worker's identity and the gateway's end of the new
/// channel.
pub fn attach(path: &Path, stdout: &OwnedFd, stderr: &OwnedFd) -> io::Result<(WorkerIdentity, ChannelFds)> {
    let socket = connect(path)?;
    set_timeouts(socket.as_raw_fd());
    fdpass::send(socket.as_raw_fd(), ATTACH_REQUEST, &[stdout.as_raw_fd(), stderr.as_raw_fd()])?;
    let mut buf = vec![0u8; 64 * 1024];
    let (len, fds) = fdpass::receive(socket.as_raw_fd(), &mut buf)?;
    let Ok([segment, wake_me, wake_peer]) = <[OwnedFd; 3]>::try_from(fds) else {
        return Err(io::Error::other(format!("{}: the worker refused the attach", path.display())));
    };
    let identity: WorkerIdentity = serde_json::from_slice(&buf[..len]).map_err(io::Error::other)?;
    Ok((identity, ChannelFds { segment, wake_me, wake_peer }))
}
