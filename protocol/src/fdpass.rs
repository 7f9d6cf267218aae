//! Messages with descriptors over Unix sockets (`SCM_RIGHTS`): how the
//! node agent hands a new worker its pipes and channel through the zygote,
//! and how a worker and the `shoal up` that attaches to it exchange a new
//! channel.

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 16;

/// Room for the control message of [`MAX_FDS`] descriptors, aligned.
#[repr(C)]
union ControlBuffer {
    bytes: [u8; 256],
    _align: libc::cmsghdr,
}

/// Sends `bytes` as one message, with `fds` passed along (`SCM_RIGHTS`).
pub fn send(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "too many descriptors for one message");
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    let mut control = ControlBuffer { bytes: [0; 256] };
    // SAFETY: msghdr is plain data; every field used is set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE and CMSG_LEN compute sizes; the buffer holds
        // CMSG_SPACE(16 fds) = 88 bytes, less than 256.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        message.msg_control = (&raw mut control).cast();
        message.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes of `control`, enough
        // for one header and `fds`; CMSG_FIRSTHDR returns its start.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(header).cast::<RawFd>(), fds.len());
        }
    }
    loop {
        // SAFETY: `message` points at live buffers for the whole call.
        let sent = unsafe { libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Receives one message into `buf`: its length (0: the peer closed) and
/// the descriptors that came with it (close-on-exec).
pub fn receive(socket: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = ControlBuffer { bytes: [0; 256] };
    // SAFETY: msghdr is plain data; every field used is set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = (&raw mut control).cast();
    message.msg_controllen = std::mem::size_of::<ControlBuffer>() as _;
    let len = loop {
        // SAFETY: `message` points at live buffers for the whole call.
        let len = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
        if len >= 0 {
            break len as usize;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled `message.msg_control` with well-formed
    // headers (msg_controllen says how much); the CMSG macros walk them,
    // and each SCM_RIGHTS payload holds descriptors now open in this
    // process, owned by nothing else.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                for i in 0..payload / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    if message.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::other("a message with descriptors was cut short"));
    }
    Ok((len, fds))
}
