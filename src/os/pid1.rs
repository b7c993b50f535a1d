//! PID 1 facts: whether corral is the machine's real init, and how such an init ends (it never
//! exits: the kernel panics when PID 1 does).

use nix::sys::reboot::{RebootMode, reboot};

/// What the machine does after a host init's shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    Poweroff,
    Reboot,
}

/// The inode of the initial pid namespace's `/proc/<pid>/ns/pid`, fixed by the kernel
/// (`PROC_PID_INIT_INO` in include/linux/proc_ns.h).
const INITIAL_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// PID 1 of the initial pid namespace. `/proc/self/ns/pid` names our own namespace whichever
/// pid namespace mounted /proc (a container started with the host's /proc sees the host's
/// kthreadd as pid 2, so pid 2's parentage proves nothing there). Without /proc/self/ns, pid 2
/// (kthreadd) having no parent tells the initial namespace.
pub fn is_host_init() -> bool {
    if std::process::id() != 1 {
        return false;
    }
    match nix::sys::stat::stat("/proc/self/ns/pid") {
        Ok(stat) => stat.st_ino == INITIAL_PID_NS_INODE,
        Err(_) => std::fs::read_to_string("/proc/2/status").is_ok_and(|status| {
            status
                .lines()
                .any(|line| line.split_whitespace().eq(["PPid:", "0"]))
        }),
    }
}

/// Flushes file systems and powers off or reboots. Returns only if the kernel refused, and then
/// the caller must not exit either.
pub fn power(action: PowerAction) -> nix::Error {
    nix::unistd::sync();
    let mode = match action {
        PowerAction::Poweroff => RebootMode::RB_POWER_OFF,
        PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
    };
    match reboot(mode) {
        Err(e) => e,
        // reboot(2) does not return on success.
        Ok(never) => match never {},
    }
}

/// What a host init does when it cannot supervise at all (no epoll set, no socket): it must not
/// exit, so it stays, reaping the orphans the kernel hands it, until the machine is reset.
pub fn wait_forever() -> ! {
    loop {
        // No child now: one may come (an orphan), so look again later. Nothing else is left
        // to do, and a blocked PID 1 without handlers would miss SIGCHLD.
        if let Err(nix::errno::Errno::ECHILD) =
            nix::sys::wait::waitpid(None::<nix::unistd::Pid>, None)
        {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
