//! Signals as events: signal-hook flags plus a self-pipe the event loop polls.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;

/// The signals the supervisor acts on. As PID 1 none of them has a default action, so each
/// must be handled here or it is silently dropped by the kernel.
/// The kernel's form of a signal the core asked for; `None` for a number nix does not name
/// (the core's signals are all named, so this does not happen).
pub fn to_os(signal: crate::core::signal::Signal) -> Option<Signal> {
    Signal::try_from(signal.number()).ok()
}

pub const HANDLED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGCHLD,
];

pub struct SignalEvents {
    wake: UnixStream,
    flags: Vec<(Signal, Arc<AtomicBool>)>,
}

impl SignalEvents {
    pub fn install() -> std::io::Result<SignalEvents> {
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for signal in HANDLED {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal as i32, Arc::clone(&flag))?;
            signal_hook::low_level::pipe::register(signal as i32, notify.try_clone()?)?;
            flags.push((signal, flag));
        }
        Ok(SignalEvents { wake, flags })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The signals that arrived since the last call (each at most once: they coalesce).
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut buf = [0u8; 256];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::AcqRel))
            .map(|(signal, _)| *signal)
            .collect()
    }
}
