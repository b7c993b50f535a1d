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

/// PID 1 of the initial pid namespace: the kernel's own threads are then visible, and pid 2
/// (kthreadd) has no parent. In a container's pid namespace pid 2, if any, is a child of ours.
pub fn is_host_init() -> bool {
    std::process::id() == 1
        && std::fs::read_to_string("/proc/2/status").is_ok_and(|status| {
            status
                .lines()
                .any(|line| line.split_whitespace().eq(["PPid:", "0"]))
        })
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
