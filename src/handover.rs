//! Handing a running `shoal up` over to its successor, the way nginx
//! upgrades its binary: no connection refused, no request dropped, no
//! replica restarted.
//!
//! A `shoal up` listens on `<data dir>/shoal.sock` (`SOCK_SEQPACKET`,
//! mode 0600, a peer of another user refused). A new `shoal up` on the same
//! data directory connects to it before it opens the store, and:
//!
//! 1. sends [`Message::Hello`] with the handover format and its version;
//! 2. the running one (the predecessor) refuses a format it does not
//!    speak, or a handover it cannot make (a cluster node), with
//!    [`Message::Refused`]; otherwise it stops its admin API, lets go of
//!    its pods (their workers run on, still in its gateway's rotation),
//!    takes the autoscaler's state and the restart counts, closes the
//!    store, and answers [`Message::Offer`] with its listening sockets'
//!    descriptors (`SCM_RIGHTS`);
//! 3. the successor opens the store, takes the workers over through their
//!    attach sockets, waits until they are in its gateway's rotation,
//!    serves on the same listening sockets (both processes accept on them
//!    for a moment) and sends [`Message::Serving`];
//! 4. the predecessor stops accepting (the kernel's queue of each socket
//!    is shared, so a connection it no longer accepts is the successor's),
//!    answers each open HTTP/1.1 connection's next request with
//!    `Connection: close`, passes requests that wait for a replica to the
//!    successor (on a listener of the successor's own, named in
//!    `Serving`), drains, and exits, leaving the workers.
//!
//! If the successor fails after the offer, the predecessor goes on serving
//! with the replicas it has (without a control plane) and waits for
//! another successor: the steps above are safe to take twice.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};
use shoal_control::reconciler::Succession;
use shoal_protocol::attach::{self, Address, SeqpacketListener};
use shoal_protocol::fdpass;
// Everything `shoal up` prints goes through the console, which never blocks
// on a reader who stops reading (shoal_node::console).
use shoal_node::{console_eprintln as eprintln, console_println as println};

/// The socket's name in the data directory.
const SOCKET: &str = "shoal.sock";
/// The format of the messages below. A `shoal up` refuses to hand over to
/// one that speaks another (and says which to stop first).
pub const FORMAT: u32 = 1;
/// How long the predecessor may take to offer (drain its admin API, let go
/// of its pods, close the store).
const OFFER_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest message.
const MAX_MESSAGE: usize = 64 * 1024;

/// One message of the exchange, as JSON in one packet.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Message {
    Hello {
        format: u32,
        version: String,
        pid: u32,
    },
    Refused {
        reason: String,
    },
    /// With one descriptor per listener, in order, and last a memory file
    /// holding the [`Succession`] as JSON (it may be larger than a packet).
    Offer {
        listeners: Vec<Shared>,
    },
    /// With the address where the predecessor passes requests that wait
    /// for a replica: a loopback listener of the successor's gateway that
    /// only it accepts on (sent to the shared listener, the kernel could
    /// give such a request back to the predecessor, still accepting).
    Serving {
        gateway: SocketAddr,
    },
}

/// What a passed listening socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Gateway,
    Admin,
    Tls,
}

impl Role {
    fn flag(self) -> &'static str {
        match self {
            Role::Gateway => "--listen",
            Role::Admin => "--admin-listen",
            Role::Tls => "--tls-listen",
        }
    }
}

/// A listening socket offered to the successor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shared {
    pub role: Role,
    pub address: SocketAddr,
}

fn socket_path(data_dir: &Path) -> Address {
    Address::File(data_dir.join(SOCKET))
}

fn send(socket: &OwnedFd, message: &Message, fds: &[RawFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    fdpass::send(socket.as_raw_fd(), &bytes, fds)
}

fn receive(socket: &OwnedFd) -> io::Result<(Message, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (len, fds) = fdpass::receive(socket.as_raw_fd(), &mut buf)?;
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other shoal up closed the handover socket"));
    }
    let message = serde_json::from_slice(&buf[..len])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not a handover message: {e}")))?;
    Ok((message, fds))
}

/// The successor's side: what the predecessor handed over.
pub struct Inheritance {
    socket: OwnedFd,
    /// The predecessor's process id.
    pub predecessor: u32,
    listeners: Vec<(Shared, OwnedFd)>,
    pub succession: Succession,
}

/// Asks a `shoal up` running on `data_dir`, if any, to hand over: `None`
/// when none listens there (none runs, or it crashed), an error when it
/// refuses or fails.
pub fn take_over(data_dir: &Path) -> anyhow::Result<Option<Inheritance>> {
    let path = socket_path(data_dir);
    let socket = match attach::connect(&path) {
        Ok(socket) => socket,
        Err(error)
            if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED))
                || error.kind() == io::ErrorKind::Other =>
        {
            return Ok(None);
        }
        Err(error) => {
            bail!("cannot reach the shoal up running on {} ({}): {error}", data_dir.display(), path)
        }
    };
    let predecessor = attach::peer_credentials(socket.as_raw_fd()).map_or(0, |c| u32::try_from(c.pid).unwrap_or(0));
    let me = std::process::id();
    println!("shoal: a shoal up (pid {predecessor}) runs on {}; taking over from it", data_dir.display());
    attach::set_timeouts_to(socket.as_raw_fd(), OFFER_TIMEOUT);
    let hello = Message::Hello { format: FORMAT, version: env!("CARGO_PKG_VERSION").to_owned(), pid: me };
    send(&socket, &hello, &[]).map_err(|e| anyhow!("cannot ask pid {predecessor} to hand over: {e}"))?;
    let (answer, fds) = receive(&socket).map_err(|e| anyhow!("pid {predecessor} did not hand over: {e}"))?;
    match answer {
        Message::Offer { listeners } if listeners.len() + 1 == fds.len() => {
            let mut fds = fds;
            let state = fds.pop().expect("the state's descriptor");
            if !fds.iter().all(|fd| is(fd, libc::S_IFSOCK)) || !is(&state, libc::S_IFREG) {
                bail!("pid {predecessor} offered descriptors that are not listening sockets and a state file");
            }
            let succession = read_succession(state)
                .map_err(|e| anyhow!("cannot read the state pid {predecessor} handed over: {e}"))?;
            let listeners = listeners.into_iter().zip(fds).collect();
            Ok(Some(Inheritance { socket, predecessor, listeners, succession }))
        }
        Message::Refused { reason } => {
            bail!("the shoal up running on {} (pid {predecessor}) refused to hand over: {reason}", data_dir.display())
        }
        other => bail!("pid {predecessor} answered the handover with {other:?}"),
    }
}

impl Inheritance {
    /// The predecessor's listening socket for `role`, if it listens on
    /// `wanted` (or on any port of its address, when `wanted` has port 0).
    /// One that is not wanted is closed with the predecessor, and says so.
    pub fn listener(&mut self, role: Role, wanted: Option<SocketAddr>) -> Option<std::net::TcpListener> {
        let index = self.listeners.iter().position(|(shared, _)| shared.role == role)?;
        let (shared, fd) = self.listeners.remove(index);
        let matches = wanted.is_some_and(|wanted| {
            wanted == shared.address || (wanted.port() == 0 && wanted.ip() == shared.address.ip())
        });
        if !matches {
            let now = wanted.map_or_else(|| "none".to_owned(), |w| w.to_string());
            println!(
                "shoal: {} was {} and is now {now}: the old listener closes with pid {}",
                role.flag(),
                shared.address,
                self.predecessor
            );
            return None;
        }
        Some(std::net::TcpListener::from(fd))
    }

    /// Tells the predecessor this process serves, with its gateway at
    /// `gateway`: it stops accepting, drains and exits.
    pub fn serving(self, gateway: SocketAddr) -> io::Result<()> {
        send(&self.socket, &Message::Serving { gateway }, &[])
    }
}

/// `succession` as JSON in a new memory file.
fn write_succession(succession: &Succession) -> io::Result<OwnedFd> {
    use std::io::Write as _;
    use std::os::fd::FromRawFd as _;
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"shoal-handover".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(&serde_json::to_vec(succession).map_err(io::Error::other)?)?;
    Ok(file.into())
}

/// The most state a predecessor may hand over.
const MAX_STATE: u64 = 64 << 20;

/// Whether `fd` is of the file type `kind` (`S_IFSOCK`, `S_IFREG`).
fn is(fd: &OwnedFd, kind: libc::mode_t) -> bool {
    // SAFETY: stat is plain data, filled by fstat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor we own.
    unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) == 0 && stat.st_mode & libc::S_IFMT == kind }
}

/// Reads what [`write_succession`] wrote, from its start (at most
/// [`MAX_STATE`] bytes).
fn read_succession(fd: OwnedFd) -> io::Result<Succession> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::from(fd);
    file.rewind()?;
    let mut bytes = Vec::new();
    file.take(MAX_STATE).read_to_end(&mut bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The predecessor's side: where successors call.
pub struct Desk {
    listener: SeqpacketListener,
}

/// Listens for successors on `data_dir`; `None`, with a warning, when the
/// socket cannot be made (its path too long, say): this `shoal up` can then
/// only be stopped, not handed over.
pub fn open_desk(data_dir: &Path) -> Option<Desk> {
    let path = socket_path(data_dir);
    match SeqpacketListener::bind(&path) {
        Ok(listener) => Some(Desk { listener }),
        Err(error) => {
            eprintln!(
                "warning: cannot listen on {} ({error}): a new shoal up cannot take over from this one without a \
                 restart",
                path
            );
            None
        }
    }
}

impl Desk {
    /// Closes the desk, leaving the socket file: that of a successor that
    /// bound its own in place.
    pub fn close_for_successor(self) {
        self.listener.close_leaving_file();
    }
}

/// A successor asking to take over.
pub struct Caller {
    socket: OwnedFd,
    pub pid: u32,
    pub version: String,
}

impl Desk {
    /// The next successor that asks in a format this one speaks; others
    /// are refused, saying why.
    pub async fn next(&self) -> Caller {
        loop {
            let socket = match self.listener.accept().await {
                Ok(socket) => socket,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept on the handover socket");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match tokio::task::spawn_blocking(move || hello(socket)).await {
                Ok(Ok(caller)) => return caller,
                Ok(Err(error)) => tracing::warn!(%error, "a handover was refused"),
                Err(error) => tracing::warn!(%error, "the handover task failed"),
            }
        }
    }
}

/// Reads a successor's hello on `socket`, refusing another user or format.
fn hello(socket: OwnedFd) -> io::Result<Caller> {
    attach::set_timeouts(socket.as_raw_fd());
    let peer = attach::peer_uid(socket.as_raw_fd())?;
    if !attach::trusted_uid(peer) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("a handover from uid {peer} refused")));
    }
    let (message, _) = receive(&socket)?;
    match message {
        Message::Hello { format, version, pid } if format == FORMAT => Ok(Caller { socket, pid, version }),
        Message::Hello { format, version, pid } => {
            let reason = format!(
                "this shoal up ({}) hands over in format {FORMAT}, and the new one ({version}, pid {pid}) speaks \
                 format {format}: stop this one first (its workers are then stopped too)",
                env!("CARGO_PKG_VERSION")
            );
            let _ = send(&socket, &Message::Refused { reason: reason.clone() }, &[]);
            Err(io::Error::other(reason))
        }
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected a hello, got {other:?}"))),
    }
}

impl Caller {
    /// Refuses this successor, saying why.
    pub fn refuse(self, reason: &str) {
        let _ = send(&self.socket, &Message::Refused { reason: reason.to_owned() }, &[]);
    }

    /// Offers the listening sockets and the state (blocking), then waits
    /// for the successor to serve, for as long as it lives (it may take
    /// a while to get its workers in rotation; giving up on it while it
    /// still starts would leave two processes serving): the address of
    /// its gateway.
    pub fn offer(&self, listeners: &[(Shared, RawFd)], succession: &Succession) -> io::Result<SocketAddr> {
        let (shared, mut fds): (Vec<Shared>, Vec<RawFd>) = listeners.iter().cloned().unzip();
        let state = write_succession(succession)?;
        fds.push(state.as_raw_fd());
        send(&self.socket, &Message::Offer { listeners: shared }, &fds)?;
        attach::set_timeouts_to(self.socket.as_raw_fd(), Duration::ZERO);
        match receive(&self.socket)?.0 {
            Message::Serving { gateway } => Ok(gateway),
            other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected serving, got {other:?}"))),
        }
    }
}
