//! The sd_notify door: one datagram socket per unit, and the sender's credentials on every message.
//!
//! The sockets live in the abstract namespace (`NOTIFY_SOCKET=@corral/...`), as systemd's
//! sd_notify and `systemd-notify` accept: no directory whose permissions a unit running as
//! another user would need, no stale files after a crash, and a name that cannot collide with
//! another corral (it carries corral's pid). The price is that a unit in its own network
//! namespace cannot reach an abstract socket; see docs/units.md for that hook.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg,
    setsockopt, socket, sockopt,
};

/// systemd reads at most this much of one datagram (its NOTIFY_BUFFER_MAX is PIPE_BUF);
/// the rest of a longer one is cut, as there.
const DATAGRAM_MAX: usize = 4096;
/// File descriptors one datagram may carry (BARRIER=1 sends one); all are closed at once.
const FDS_MAX: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("{operation} notify socket {name}: {errno}")]
pub struct NotifyError {
    operation: &'static str,
    name: String,
    errno: Errno,
}

/// A unit's `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct NotifySocket {
    fd: OwnedFd,
    /// The abstract name, without the leading NUL.
    name: String,
}

/// One datagram and who sent it, as the kernel vouches (SCM_CREDENTIALS).
#[derive(Debug)]
pub struct Datagram {
    pub bytes: Vec<u8>,
    /// `None` when the kernel attached no credentials (it always does with SO_PASSCRED).
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    /// Descriptors that came with it (`BARRIER=1` sends one). Dropping the datagram closes
    /// them, which ends the sender's barrier wait, and the sender may exit right then: so drop
    /// it only after the sender has been checked against the unit, or a live sender would be
    /// looked up as a dead one.
    pub fds: Vec<OwnedFd>,
}

impl NotifySocket {
    /// Binds the abstract datagram socket `name`, non-blocking, with SO_PASSCRED so every
    /// datagram carries its sender's pid even when the sender did not attach it.
    pub fn bind(name: &str) -> Result<NotifySocket, NotifyError> {
        let fail = |operation| {
            move |errno| NotifyError {
                operation,
                name: name.to_owned(),
                errno,
            }
        };
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(fail("creating"))?;
        let addr = UnixAddr::new_abstract(name.as_bytes()).map_err(fail("naming"))?;
        bind(fd.as_raw_fd(), &addr).map_err(fail("binding"))?;
        setsockopt(&fd, sockopt::PassCred, &true).map_err(fail("setting SO_PASSCRED on"))?;
        Ok(NotifySocket {
            fd,
            name: name.to_owned(),
        })
    }

    /// The value of `NOTIFY_SOCKET` for the unit: `@` stands for the abstract namespace.
    pub fn env_value(&self) -> String {
        format!("@{}", self.name)
    }

    /// The next datagram, or `None` when none is queued.
    pub fn recv(&self) -> Result<Option<Datagram>, Errno> {
        let mut buf = vec![0u8; DATAGRAM_MAX];
        let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; FDS_MAX]);
        let (len, pid, uid, fds) = loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let (mut pid, mut uid, mut fds) = (None, None, Vec::new());
                    for c in msg.cmsgs().into_iter().flatten() {
                        match c {
                            ControlMessageOwned::ScmCredentials(cred) => {
                                pid = Some(cred.pid());
                                uid = Some(cred.uid());
                            }
                            ControlMessageOwned::ScmRights(passed) => fds.extend(passed),
                            _ => {}
                        }
                    }
                    break (msg.bytes, pid, uid, fds);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let fds = fds
            .into_iter()
            // SAFETY: the kernel just installed `raw` in our table for us (SCM_RIGHTS, with
            // MSG_CMSG_CLOEXEC); nothing else knows it, so owning it closes it exactly once.
            .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
            .collect();
        buf.truncate(len);
        Ok(Some(Datagram {
            bytes: buf,
            pid,
            uid,
            fds,
        }))
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};

    #[test]
    fn a_datagram_arrives_with_the_senders_pid_and_passed_fds_are_closed() {
        let name = format!("corral-test/{}/notify", std::process::id());
        let sock = NotifySocket::bind(&name).unwrap();
        assert_eq!(sock.env_value(), format!("@{name}"));
        assert!(sock.recv().unwrap().is_none());

        let sender = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let to = UnixAddr::new_abstract(name.as_bytes()).unwrap();
        let (barrier_read, barrier_write) = nix::unistd::pipe().unwrap();
        let fds = [barrier_write.as_raw_fd()];
        sendmsg(
            sender.as_raw_fd(),
            &[std::io::IoSlice::new(b"READY=1\nBARRIER=1")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&to),
        )
        .unwrap();
        drop(barrier_write);
        let got = sock.recv().unwrap().unwrap();
        assert_eq!(got.bytes, b"READY=1\nBARRIER=1");
        assert_eq!(got.pid, Some(std::process::id() as i32));
        assert_eq!(got.fds.len(), 1);
        // The barrier holds while corral keeps the datagram...
        nix::fcntl::fcntl(
            &barrier_read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            nix::unistd::read(&barrier_read, &mut byte),
            Err(Errno::EAGAIN)
        );
        // ...and ends when it drops it: the reader sees EOF.
        drop(got);
        assert_eq!(nix::unistd::read(&barrier_read, &mut byte), Ok(0));
    }
}
