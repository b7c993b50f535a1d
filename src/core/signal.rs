//! Signals as the pure core and the unit model name them: a Linux signal number, no syscall.
//!
//! The daemon turns one into nix's `Signal` at the door to the kernel (os/signals.rs).

use std::fmt;

/// A signal Linux names (1..=31). Realtime signals have no name and are not sent by corral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

/// Every named signal, in number order (the numbers are this architecture's, from libc).
const NAMED: [(i32, &str); 31] = [
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGKILL, "SIGKILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGSTKFLT, "SIGSTKFLT"),
    (libc::SIGCHLD, "SIGCHLD"),
    (libc::SIGCONT, "SIGCONT"),
    (libc::SIGSTOP, "SIGSTOP"),
    (libc::SIGTSTP, "SIGTSTP"),
    (libc::SIGTTIN, "SIGTTIN"),
    (libc::SIGTTOU, "SIGTTOU"),
    (libc::SIGURG, "SIGURG"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGWINCH, "SIGWINCH"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
    (libc::SIGSYS, "SIGSYS"),
];

impl Signal {
    pub const SIGHUP: Signal = Signal(libc::SIGHUP);
    pub const SIGINT: Signal = Signal(libc::SIGINT);
    pub const SIGQUIT: Signal = Signal(libc::SIGQUIT);
    pub const SIGKILL: Signal = Signal(libc::SIGKILL);
    pub const SIGTERM: Signal = Signal(libc::SIGTERM);
    pub const SIGUSR1: Signal = Signal(libc::SIGUSR1);

    /// The named signal with this number.
    pub fn from_number(number: i32) -> Option<Signal> {
        NAMED
            .iter()
            .any(|(n, _)| *n == number)
            .then_some(Signal(number))
    }

    /// The signal of a full name, `SIGTERM` (exact case).
    pub fn from_name(name: &str) -> Option<Signal> {
        NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(number, _)| Signal(*number))
    }

    pub fn number(self) -> i32 {
        self.0
    }

    /// `SIGTERM`.
    pub fn as_str(self) -> &'static str {
        NAMED
            .iter()
            .find(|(n, _)| *n == self.0)
            .map_or("SIG?", |(_, name)| name)
    }

    /// Every name, for a hint to someone who misspelled one.
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMED.iter().map(|(_, name)| *name)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_agree_and_only_named_signals_exist() {
        assert_eq!(Signal::from_name("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(Signal::SIGKILL.number(), 9);
        assert_eq!(Signal::from_number(2), Some(Signal::SIGINT));
        assert_eq!(Signal::SIGQUIT.as_str(), "SIGQUIT");
        assert_eq!(Signal::from_number(0), None);
        assert_eq!(
            Signal::from_number(34),
            None,
            "realtime signals have no name"
        );
        assert_eq!(Signal::from_name("TERM"), None, "the full name only");
        for (number, name) in NAMED {
            assert_eq!(Signal::from_name(name).map(Signal::number), Some(number));
        }
        assert_eq!(Signal::names().count(), 31);
    }
}
