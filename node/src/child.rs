//! A worker process the zygote forked: `shoal up`'s child (`CLONE_PARENT`)
//! that tokio did not spawn, watched through a pidfd. A pidfd names the
//! process itself, not its pid number, so signals never reach a process
//! that reused the number, and it turns readable when the process exits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// `waitid`'s id type for a pidfd (Linux 5.4).
const P_PIDFD: libc::idtype_t = 3;

/// A child process, its pipes, and how it ended once it did.
pub struct Child {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
    /// Its stdin (the configuration goes there).
    pub stdin: Option<pipe::Sender>,
    /// Its stdout and stderr.
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl Child {
    /// Takes charge of process `pid`, a child of this process, with the
    /// parent's ends of its stdin, stdout and stderr pipes. Must run within
    /// a tokio runtime.
    pub fn adopt(pid: u32, stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Child> {
        // SAFETY: pidfd_open takes a pid and flags. The pid is our child's
        // and we have not reaped it, so it is not anyone else's.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pidfd_open returned a new descriptor, ours alone.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the OwnedFd stays open, and the same, while the AsyncFd
        // owns it.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Child {
            pid,
            pidfd,
            status: None,
            stdin: Some(pipe::Sender::from_owned_fd(stdin)?),
            stdout: Some(pipe::Receiver::from_owned_fd(stdout)?),
            stderr: Some(pipe::Receiver::from_owned_fd(stderr)?),
        })
    }

    /// Its pid, until it has been reaped.
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid)
    }

    /// How it ended, if it did (reaping it); `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = reap(self.pidfd.get_ref(), libc::WNOHANG)?;
        }
        Ok(self.status)
    }

    /// Waits until it has ended, and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }

    /// Sends it SIGKILL, unless it was reaped already.
    pub fn start_kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if sent == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

/// Waits until process `pid`, which need not be a child of this process (a
/// worker taken over from another `shoal up`), has ended: its exit status
/// when it is our child, `None` when it is not (only its parent can read
/// that). Must run within a tokio runtime.
pub fn watch(pid: u32) -> io::Result<impl std::future::Future<Output = Option<ExitStatus>>> {
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor, ours alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd stays open, and the same, while the AsyncFd owns it.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }?;
    Ok(async move {
        // A pidfd turns readable once its process has exited.
        if let Ok(mut ready) = pidfd.readable().await {
            ready.retain_ready();
        }
        reap(pidfd.get_ref(), libc::WNOHANG).ok().flatten()
    })
}

/// `waitid` on a pidfd: the exit status once the process has ended.
fn reap(pidfd: &OwnedFd, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        // SAFETY: siginfo_t is plain data, filled by waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our pidfd with a valid siginfo pointer.
        let done = unsafe { libc::waitid(P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | flags) };
        if done != 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        // SAFETY: waitid succeeded; with WNOHANG, si_pid 0 means "still
        // running", otherwise si_code and si_status describe the exit.
        let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        // The raw wait status: `code << 8` for an exit, the signal (and
        // 0x80 for a core dump) for a kill.
        let raw = match code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => (status & 0x7f) | 0x80,
            _ => status & 0x7f,
        };
        return Ok(Some(ExitStatus::from_raw(raw)));
    }
}
