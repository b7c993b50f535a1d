//! The one epoll set of the event loop, keyed by caller-chosen u64 tokens.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

pub struct Poller {
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

/// What a ready fd is ready for.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// Hang-up or error: read until EOF, then drop.
    pub closed: bool,
}

impl Poller {
    pub fn new() -> Result<Poller, Errno> {
        Ok(Poller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            events: vec![EpollEvent::empty(); 256],
        })
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, writable: bool) -> Result<(), Errno> {
        self.epoll
            .add(fd, EpollEvent::new(interest(true, writable), token))
    }

    /// Watches `fd` for POLLPRI only: a PSI trigger (psi.rst, "Userspace monitor usage").
    pub fn add_priority(&self, fd: BorrowedFd<'_>, token: u64) -> Result<(), Errno> {
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLPRI, token))
    }

    /// Changes the interest; hang-up and error are reported even with neither.
    pub fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        readable: bool,
        writable: bool,
    ) -> Result<(), Errno> {
        let mut event = EpollEvent::new(interest(readable, writable), token);
        self.epoll.modify(fd, &mut event)
    }

    pub fn remove(&self, fd: impl AsFd) -> Result<(), Errno> {
        self.epoll.delete(fd)
    }

    /// Wait until something is ready or `timeout` passes (`None`: forever).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Vec<Ready>, Errno> {
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            // Round up so a deadline 0.4 ms away does not spin at timeout 0.
            Some(d) => {
                let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
            }
        };
        let n = match self.epoll.wait(&mut self.events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e),
        };
        Ok(self.events[..n]
            .iter()
            .map(|e| {
                let flags = e.events();
                Ready {
                    token: e.data(),
                    readable: flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLPRI),
                    writable: flags.contains(EpollFlags::EPOLLOUT),
                    closed: flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR),
                }
            })
            .collect())
    }
}

fn interest(readable: bool, writable: bool) -> EpollFlags {
    let mut flags = EpollFlags::empty();
    if readable {
        flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
    }
    if writable {
        flags |= EpollFlags::EPOLLOUT;
    }
    flags
}
