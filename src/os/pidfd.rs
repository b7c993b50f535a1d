//! Process file descriptors (pidfd_open(2)): how corral learns that a process it is not the
//! parent of has ended.
//!
//! A unit may name a main process with `MAINPID=` that is not corral's child; if the unit's own
//! process reaps it, no SIGCHLD and no waitpid ever tells corral. A pidfd becomes readable when
//! its process exits (Linux 5.3, pidfd_open(2)), whoever reaps it, and it names that process
//! alone: a pid the kernel hands out again later is not the pidfd's.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::wait::{Id, WaitPidFlag, waitid};

/// A pidfd for `pid`, close-on-exec (pidfds always are). ESRCH: no such process.
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a readable pidfd's process left for corral to learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It is corral's child (by birth, or reparented to corral as subreaper or PID 1) and waits
    /// to be reaped: the reaper will collect its status.
    ToReap,
    /// Another process is its parent: it ended, and its status is not corral's to read.
    Elsewhere,
    /// It has not ended.
    Running,
}

/// Looks at the process behind `pidfd` without reaping it (waitid P_PIDFD with WNOWAIT).
pub fn ended(pidfd: &OwnedFd) -> Ended {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::PIDFd(pidfd.as_fd()), flags) {
        Ok(nix::sys::wait::WaitStatus::StillAlive) => Ended::Running,
        Ok(_) => Ended::ToReap,
        // Not our child. Whether it ended is the pidfd's readability, asked with poll.
        Err(Errno::ECHILD) if has_exited(pidfd) => Ended::Elsewhere,
        Err(_) => Ended::Running,
    }
}

/// Whether the pidfd is readable now, that is its process has exited.
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
        Ok(n) if n > 0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child of ours: readable at its exit, and left for the reaper.
    #[test]
    fn a_child_that_exited_is_left_to_the_reaper() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = open(child.id() as i32).unwrap();
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE).unwrap();
        assert_eq!(ended(&fd), Ended::ToReap);
        // WNOWAIT left its status for the real wait.
        assert!(child.wait().unwrap().success());
    }

    /// A grandchild reaped by its own parent: corral learns that it ended, and nothing else.
    #[test]
    fn a_process_reaped_by_another_parent_ended_elsewhere() {
        let (read, write) = nix::unistd::pipe().unwrap();
        // sh starts `sleep`, prints its pid, waits for it, then lingers until stdin closes.
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3 & echo $!; wait $!; read _"])
            .stdout(std::process::Stdio::from(write))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(std::fs::File::from(read)),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let fd = open(grandchild).unwrap();
        assert_eq!(ended(&fd), Ended::Running);
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE).unwrap();
        assert_eq!(ended(&fd), Ended::Elsewhere);
        drop(parent.stdin.take());
        parent.wait().unwrap();
    }

    #[test]
    fn no_such_process_is_esrch() {
        // Above the kernel's largest pid_max (2^22): never a process.
        let e = open(1 << 23).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }
}
