//! The loop's epoll set and what each of its tokens stands for, so a wake is one `match`.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;

use crate::os::poller::{Poller, Ready};
use crate::unit::UnitName;

use super::http::Role;

/// An epoll token: chosen here, never reused, so a stale one names nothing.
pub(super) type Token = u64;

/// Everything the loop waits on. The data a source needs lives with its owner (a client with
/// the control server, a pipe with the unit's generation...), found by the same token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// The signal pipe (SIGCHLD, SIGTERM, SIGINT, SIGHUP).
    Signals,
    /// The control socket's listener.
    Listener,
    /// The units directory's inotify watch.
    Watch,
    /// The `--metrics-listen` or `--probe-listen` listener.
    HttpListener(Role),
    /// The closers of descriptors units passed finished a batch.
    Closers,
    /// A unit's stdout or stderr, or an exec probe's.
    Pipe,
    /// A spawned process's exec report (readable at its exec or when it gave up).
    ExecReport { unit: UnitName },
    /// A unit's memory events: OOM kills, memory-high, warning marks.
    MemoryEvents { unit: UnitName },
    /// A unit's PSI trigger on `memory.pressure` (v2): its memory stalls passed the threshold.
    PressureTrigger { unit: UnitName },
    /// A unit's `cgroup.events` (v2): a wake to look for units that became empty.
    Populated { unit: UnitName },
    /// The pidfd of a unit's main process named by `MAINPID=`: readable when it ended.
    NamedMain { unit: UnitName },
    /// A control client.
    Client,
    /// A connection to one of them.
    HttpClient(Role),
    /// A unit's notify socket.
    Notify { unit: UnitName },
    /// A TCP or HTTP health probe's socket.
    NetProbe,
}

/// The epoll set, the tokens it hands out and what each stands for.
pub(super) struct Sources {
    poller: Poller,
    next: Token,
    by_token: HashMap<Token, Source>,
}

impl Sources {
    pub(super) fn new() -> Result<Sources, Errno> {
        Ok(Sources {
            poller: Poller::new()?,
            next: 0,
            by_token: HashMap::new(),
        })
    }

    /// Watches `fd` for reading (and writing if asked) as `source`; its token.
    pub(super) fn add(
        &mut self,
        fd: BorrowedFd<'_>,
        source: Source,
        writable: bool,
    ) -> Result<Token, Errno> {
        let token = self.next;
        self.poller.add(fd, token, writable)?;
        self.next += 1;
        self.by_token.insert(token, source);
        Ok(token)
    }

    /// Watches `fd` for POLLPRI only (a PSI trigger) as `source`; its token.
    pub(super) fn add_priority(
        &mut self,
        fd: BorrowedFd<'_>,
        source: Source,
    ) -> Result<Token, Errno> {
        let token = self.next;
        self.poller.add_priority(fd, token)?;
        self.next += 1;
        self.by_token.insert(token, source);
        Ok(token)
    }

    /// Changes the interest of a watched fd; hang-up and error are reported even with neither.
    pub(super) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: Token,
        readable: bool,
        writable: bool,
    ) -> Result<(), Errno> {
        self.poller.modify(fd, token, readable, writable)
    }

    /// Stops watching `fd`, and forgets its token.
    pub(super) fn remove(&mut self, fd: impl AsFd, token: Token) {
        self.by_token.remove(&token);
        let _ = self.poller.remove(fd);
    }

    /// What `token` stands for; `None` once removed (a source dropped earlier in the batch).
    pub(super) fn source(&self, token: Token) -> Option<Source> {
        self.by_token.get(&token).cloned()
    }

    /// Waits until something is ready or `timeout` passes (`None`: forever).
    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> Result<Vec<Ready>, Errno> {
        self.poller.wait(timeout)
    }
}
