//! A unit's membership as a process group (the spawn makes the main process a session leader).
//!
//! This is the door the cgroup backend replaces: a process that calls `setsid` escapes a
//! process group but never its cgroup.

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(pub i32);

impl ProcessGroup {
    /// Signal every member; an empty group is not an error.
    pub fn signal(self, signal: Signal) -> Result<(), Errno> {
        match killpg(Pid::from_raw(self.0), signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// No process is left in the group (signal 0 checks without sending). A zombie still
    /// counts until it is reaped.
    pub fn is_empty(self) -> bool {
        killpg(Pid::from_raw(self.0), None) == Err(Errno::ESRCH)
    }
}
