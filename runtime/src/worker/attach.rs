//! The attach socket: how a `shoal up` that did not start this worker (its
//! successor in a handover, or one started after a crash) reaches it.
//!
//! A client connects (`SOCK_SEQPACKET`) and sends [`ATTACH_REQUEST`] with
//! the write ends of its new stdout and stderr pipes. The worker makes a
//! new channel, answers its [`WorkerIdentity`] (JSON) with the gateway's
//! three descriptors of that channel, points its own stdout and stderr at
//! the new pipes, and serves the new channel beside those it already has.
//! The socket is a name in the abstract namespace, which has no
//! permissions: a peer of another user is refused here (root aside), and
//! the client checks that the listener is this worker.

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};

use shoal_protocol::attach::{self, ATTACH_REQUEST, WorkerIdentity};
use shoal_protocol::channel::{Channel, ChannelFds, Side};
use shoal_protocol::fdpass;

/// One attach, on `connection` (blocking: run it off the runtime): checks
/// the peer, reads the request and its pipes, makes a new channel, answers
/// `identity` with the gateway's end, and moves stdout and stderr to the
/// new pipes. Returns the worker's end of the new channel.
pub(crate) fn exchange(connection: OwnedFd, identity: &WorkerIdentity) -> io::Result<Channel> {
    let socket = connection.as_raw_fd();
    attach::set_timeouts(socket);
    let peer = attach::peer_uid(socket)?;
    if !attach::trusted_uid(peer) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("an attach from uid {peer} refused")));
    }
    let mut buf = [0u8; 256];
    let (len, pipes) = fdpass::receive(socket, &mut buf)?;
    if &buf[..len] != ATTACH_REQUEST {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not an attach request"));
    }
    let (gateway, worker) = ChannelFds::create(&identity.replica)?;
    let answer = serde_json::to_vec(identity).map_err(io::Error::other)?;
    let fds = [gateway.segment.as_raw_fd(), gateway.wake_me.as_raw_fd(), gateway.wake_peer.as_raw_fd()];
    fdpass::send(socket, &answer, &fds)?;
    drop(gateway);
    // Output goes to whoever attached last.
    if let [stdout, stderr] = &pipes[..] {
        // SAFETY: dup2 onto this process's own stdout and stderr.
        unsafe {
            libc::dup2(stdout.as_raw_fd(), 1);
            libc::dup2(stderr.as_raw_fd(), 2);
        }
    }
    Channel::open(worker, Side::Worker).map_err(io::Error::other)
}
