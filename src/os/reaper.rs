//! Reaping: collect every exited child (ours and inherited orphans) without blocking.

use nix::errno::Errno;

use crate::core::exit::Termination;

/// What one sweep of `waitpid(-1, WNOHANG)` found.
#[derive(Debug, Default)]
pub struct Reaped {
    pub exits: Vec<(i32, Termination)>,
    /// `ECHILD`: this process has no children at all any more.
    pub no_children_left: bool,
}

/// Reap until nothing more is ready; an orphan reparented to us is reaped like any child.
///
/// Raw `waitpid`: nix's decoding fails (after the kernel already reaped the child) for realtime
/// signals, which have no `Signal` variant, and that exit would be lost.
pub fn reap_all() -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only to the status integer we pass.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if let Some(termination) = termination(status) {
                reaped.exits.push((pid, termination));
            }
            continue;
        }
        if pid == 0 {
            return reaped;
        }
        match Errno::last() {
            Errno::EINTR => {}
            Errno::ECHILD => {
                reaped.no_children_left = true;
                return reaped;
            }
            _ => return reaped,
        }
    }
}

/// Decodes a raw wait status; `None` for stop and continue reports.
pub fn termination(status: libc::c_int) -> Option<Termination> {
    if libc::WIFEXITED(status) {
        Some(Termination::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Termination::Signaled {
            signal: libc::WTERMSIG(status),
            core_dumped: libc::WCOREDUMP(status),
        })
    } else {
        None
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
