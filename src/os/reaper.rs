//! Reaping: collect every exited child (ours and inherited orphans) without blocking.

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::core::exit::Termination;

/// What one sweep of `waitpid(-1, WNOHANG)` found.
#[derive(Debug, Default)]
pub struct Reaped {
    pub exits: Vec<(i32, Termination)>,
    /// `ECHILD`: this process has no children at all any more.
    pub no_children_left: bool,
}

/// Reap until nothing more is ready; an orphan reparented to us is reaped like any child.
pub fn reap_all() -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                reaped.exits.push((pid.as_raw(), Termination::Exited(code)));
            }
            Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => {
                reaped.exits.push((
                    pid.as_raw(),
                    Termination::Signaled {
                        signal,
                        core_dumped,
                    },
                ));
            }
            Ok(WaitStatus::StillAlive) => return reaped,
            // Stops and continues are not asked for (no WUNTRACED); skip anything else.
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                reaped.no_children_left = true;
                return reaped;
            }
            Err(_) => return reaped,
        }
    }
}

/// Outside PID 1, become the reaper of orphaned descendants (PR_SET_CHILD_SUBREAPER).
pub fn become_subreaper() -> Result<(), Errno> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// The pids of this process's direct children, from /proc (CONFIG_PROC_CHILDREN).
pub fn direct_children() -> Vec<i32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return children;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            children.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    children
}
