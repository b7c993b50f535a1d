//! How a unit's main process ended, kept lossless, and what the restart policy makes of it.

use crate::core::signal::Signal;
use crate::unit::RestartPolicy;

/// What `waitpid` said, without interpretation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Exited(i32),
    /// The raw signal number: realtime signals (34..=64) have no `Signal` variant.
    Signaled {
        signal: i32,
        core_dumped: bool,
    },
    /// It ended as a child of another process, which reaped it: a main process named by
    /// `MAINPID=` that is not corral's child. Its pidfd said it ended; nothing says how.
    Unknown,
}

/// One end of a main process: the kernel's word plus whether the unit's OOM counter moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    pub termination: Termination,
    /// True only when the kernel's oom_kill counter of the unit moved across this run.
    pub oom: bool,
}

impl ExitReport {
    pub fn code(code: i32) -> ExitReport {
        ExitReport {
            termination: Termination::Exited(code),
            oom: false,
        }
    }

    pub fn signal(signal: Signal) -> ExitReport {
        ExitReport {
            termination: Termination::Signaled {
                signal: signal.number(),
                core_dumped: false,
            },
            oom: false,
        }
    }

    /// Whether the process died of SIGKILL.
    pub fn is_sigkill(&self) -> bool {
        matches!(self.termination, Termination::Signaled { signal, .. } if signal == Signal::SIGKILL.number())
    }

    /// A clean exit: a listed exit code and no OOM kill.
    pub fn is_success(&self, success_exit_codes: &[i32]) -> bool {
        match self.termination {
            Termination::Exited(code) => !self.oom && success_exit_codes.contains(&code),
            // Not known to be clean: `on-failure` restarts a daemon that vanished.
            Termination::Signaled { .. } | Termination::Unknown => false,
        }
    }

    /// The shell's view of the status: the code, or 128 + signal number.
    pub fn shell_code(&self) -> i32 {
        match self.termination {
            Termination::Exited(code) => code,
            Termination::Signaled { signal, .. } => 128 + signal,
            // What a shell reports for a status it could not learn.
            Termination::Unknown => 255,
        }
    }
}

impl std::fmt::Display for ExitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.termination {
            Termination::Exited(code) => write!(f, "exited with code {code}")?,
            Termination::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {}", signal_name(signal))?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
            }
            Termination::Unknown => {
                f.write_str("ended, status unknown (it was not corral's child)")?
            }
        }
        if self.oom {
            f.write_str(" (OOM kill)")?;
        }
        Ok(())
    }
}

/// Why a start never reached its exec: the kernel's errno where one is known, and the words
/// `status` shows. The core decides from the errno, never from the words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    pub errno: Option<i32>,
    pub message: String,
}

impl SpawnFailure {
    pub fn new(errno: Option<i32>, message: impl Into<String>) -> SpawnFailure {
        SpawnFailure {
            errno,
            message: message.into(),
        }
    }

    /// A resource that comes back: fork(2) refused at pids-max or RLIMIT_NPROC (EAGAIN), memory
    /// (ENOMEM), descriptors (EMFILE, ENFILE), an interrupted call. Worth another start after
    /// the backoff; anything else (no such command, no permission, a bad path) fails the unit
    /// until someone changes something.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.errno,
            Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::EINTR)
        )
    }
}

impl std::fmt::Display for SpawnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// `SIGTERM`, `SIGRTMIN+6`, or `signal 99` for a number Linux does not name.
pub fn signal_name(signal: i32) -> String {
    const SIGRTMIN: i32 = 34;
    const SIGRTMAX: i32 = 64;
    match Signal::from_number(signal) {
        Some(s) => s.as_str().to_owned(),
        None if (SIGRTMIN..=SIGRTMAX).contains(&signal) => {
            format!("SIGRTMIN+{}", signal - SIGRTMIN)
        }
        None => format!("signal {signal}"),
    }
}

/// Whether `policy` restarts a unit after `exit` (docs/units.md, `[restart]`: OOM kills are failures and abnormal).
pub fn policy_restarts(
    policy: RestartPolicy,
    exit: &ExitReport,
    success_exit_codes: &[i32],
) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !exit.is_success(success_exit_codes),
        RestartPolicy::OnAbnormal => {
            exit.oom || matches!(exit.termination, Termination::Signaled { .. })
        }
        RestartPolicy::OnOom => exit.oom,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RestartPolicy::*;

    fn oom_kill() -> ExitReport {
        ExitReport {
            termination: Termination::Signaled {
                signal: Signal::SIGKILL.number(),
                core_dumped: false,
            },
            oom: true,
        }
    }

    #[test]
    fn policy_table() {
        let ok = ExitReport::code(0);
        let fail = ExitReport::code(1);
        let listed = ExitReport::code(3);
        let killed = ExitReport::signal(Signal::SIGKILL);
        let vanished = ExitReport {
            termination: Termination::Unknown,
            oom: false,
        };
        let codes = [0, 3];
        // (policy, exit, restarts?)
        let table = [
            (Never, ok, false),
            (Never, fail, false),
            (Never, oom_kill(), false),
            (OnFailure, ok, false),
            (OnFailure, listed, false),
            (OnFailure, fail, true),
            (OnFailure, killed, true),
            (OnFailure, oom_kill(), true),
            (OnFailure, vanished, true),
            (OnAbnormal, ok, false),
            (OnAbnormal, fail, false),
            (OnAbnormal, killed, true),
            (OnAbnormal, oom_kill(), true),
            (OnAbnormal, vanished, false),
            (OnOom, fail, false),
            (OnOom, killed, false),
            (OnOom, oom_kill(), true),
            (Always, ok, true),
            (Always, fail, true),
            (Always, oom_kill(), true),
            (Never, vanished, false),
            (OnOom, vanished, false),
        ];
        for (policy, exit, want) in table {
            assert_eq!(
                policy_restarts(policy, &exit, &codes),
                want,
                "{policy:?} after {exit}"
            );
        }
    }

    #[test]
    fn an_oom_kill_is_never_a_success_even_with_a_listed_code() {
        let exit = ExitReport {
            termination: Termination::Exited(0),
            oom: true,
        };
        assert!(!exit.is_success(&[0]));
    }

    #[test]
    fn realtime_signals_keep_their_number_and_get_a_name() {
        assert_eq!(signal_name(40), "SIGRTMIN+6");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(99), "signal 99");
    }

    #[test]
    fn only_resources_that_come_back_make_a_spawn_failure_transient() {
        for (errno, transient) in [
            (Some(libc::EAGAIN), true),
            (Some(libc::ENOMEM), true),
            (Some(libc::EMFILE), true),
            (Some(libc::ENFILE), true),
            (Some(libc::ENOENT), false),
            (Some(libc::EACCES), false),
            (Some(libc::EPERM), false),
            (None, false),
        ] {
            assert_eq!(
                SpawnFailure::new(errno, "x").is_transient(),
                transient,
                "{errno:?}"
            );
        }
    }

    #[test]
    fn shell_code_is_128_plus_signal() {
        assert_eq!(ExitReport::signal(Signal::SIGKILL).shell_code(), 137);
        assert_eq!(ExitReport::code(7).shell_code(), 7);
    }
}
