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

/// When to sweep. Every exit of a child raises SIGCHLD, an orphan's too (reparenting resets
/// its exit signal to SIGCHLD: kernel/exit.c, `reparent_leader`), so a sweep is due after a
/// SIGCHLD and not on the loop's other wakes: each `waitpid(-1)` walks every child corral has
/// (kernel/exit.c, `do_wait_thread`), about 90 µs a call beside 1000 running units, and a
/// restart used to pay three sweeps of two calls (bench/analysis.md, "Restart beside many").
#[derive(Debug)]
pub struct Reaper {
    due: bool,
}

impl Default for Reaper {
    /// Due at once: children may have exited before the signal handler was installed (a PID 1
    /// inherits zombies).
    fn default() -> Reaper {
        Reaper { due: true }
    }
}

impl Reaper {
    /// The next turn sweeps, and does not sleep before it: a SIGCHLD arrived, or a caller must
    /// learn whether any child is left.
    pub fn sweep_soon(&mut self) {
        self.due = true;
    }

    /// Whether a sweep is due: the loop must not sleep before it (at start, the zombies
    /// inherited before the handler raise no SIGCHLD that would wake it).
    pub fn is_due(&self) -> bool {
        self.due
    }

    /// Sweeps when a SIGCHLD came since the last sweep, or when `anyway` (a caller that must
    /// learn whether any child is left); `None` when no sweep ran.
    pub fn sweep(&mut self, anyway: bool) -> Option<Reaped> {
        if !(self.due || anyway) {
            return None;
        }
        // Cleared before the sweep: a child that exits during it raises a SIGCHLD of its own.
        self.due = false;
        Some(reap_all())
    }
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

/// The pids of this process's direct children, from /proc (CONFIG_PROC_CHILDREN), numbered in
/// this process's own pid namespace.
///
/// /proc may have been mounted by an ancestor pid namespace (a container started with the host's
/// /proc): its numbers would name other processes here. `NSpid:` lists a task's pid in each
/// namespace from /proc's down to its own; a child's pid in ours is at our own depth.
pub fn direct_children() -> Vec<i32> {
    let depth = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| nspids(&status)?.len().checked_sub(1));
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
    match depth {
        // /proc is our namespace's own (or too old to say): its numbers are ours.
        None | Some(0) => children,
        Some(depth) => children
            .into_iter()
            .filter_map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                nspids(&status)?.get(depth).copied()
            })
            .collect(),
    }
}

/// The `NSpid:` line of a /proc status file: the pid in each namespace, outermost first.
fn nspids(status: &str) -> Option<Vec<i32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::{Reaper, nspids};

    #[test]
    fn a_sweep_is_due_at_start_and_after_each_sigchld_only() {
        let mut reaper = Reaper::default();
        assert!(
            reaper.due,
            "zombies inherited before the handler are swept first"
        );
        reaper.due = false;
        // No SIGCHLD and nobody asking: no `waitpid` at all (a sweep here would reap the
        // test harness's other children, so only the refusals are exercised).
        assert!(reaper.sweep(false).is_none());
        assert!(reaper.sweep(false).is_none());
        reaper.sweep_soon();
        assert!(reaper.due);
    }

    #[test]
    fn nspid_lists_the_pid_in_each_namespace_outermost_first() {
        let status = "Name:\tsleep\nTgid:\t4242\nNSpid:\t4242\t7\t1\nPPid:\t4200\n";
        assert_eq!(nspids(status), Some(vec![4242, 7, 1]));
        assert_eq!(nspids("Name:\tinit\nNSpid:\t1\n"), Some(vec![1]));
        assert_eq!(nspids("Name:\told kernel\n"), None);
    }
}
