//! How corral ends: kill waits, leftovers after every unit is down, exit code, power action.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, info, warn};

use crate::core::service::{State, after};
use crate::core::supervisor::Supervisor;
use crate::os::pid1::PowerAction;
use crate::os::reaper;
use crate::unit::UnitName;

/// How long a shutdown waits for processes it sent SIGKILL: `--shutdown-timeout`, at least
/// this. A process still there after that cannot die (uninterruptible sleep, a frozen cgroup)
/// and is abandoned, so that a shutdown always ends (docs/operations.md).
const MIN_KILL_WAIT: Duration = Duration::from_secs(1);

/// After every unit is down: leftover descendants get SIGTERM, then SIGKILL at `kill_at`; what
/// is still there at `give_up_at` (set with the SIGKILL) is abandoned.
struct Leftovers {
    kill_at: Instant,
    give_up_at: Option<Instant>,
    /// Pids that got their SIGTERM (as PID 1: 0 once every process got it through kill(-1),
    /// and -1 once the SIGKILL to all was logged).
    termed: HashSet<i32>,
}

/// The end of corral, from the first SIGKILL of a stopping unit to the loop's exit.
pub(super) struct Shutdown {
    /// `--shutdown-timeout`.
    timeout: Duration,
    /// Set once every unit is down.
    leftovers: Option<Leftovers>,
    /// When each stopping unit got its first SIGKILL: a shutdown abandons the units whose
    /// processes outlive it by the kill wait.
    killed_at: HashMap<UnitName, Instant>,
    /// What `corral run` exits with (the `--exit-with` unit's code).
    pub(super) exit_code: i32,
    /// What a host init does after shutdown.
    pub(super) power: PowerAction,
}

impl Shutdown {
    pub(super) fn new(timeout: Duration) -> Shutdown {
        Shutdown {
            timeout,
            leftovers: None,
            killed_at: HashMap::new(),
            exit_code: 0,
            power: PowerAction::Poweroff,
        }
    }

    /// How long a shutdown waits for processes after their SIGKILL before it abandons them.
    fn kill_wait(&self) -> Duration {
        self.timeout.max(MIN_KILL_WAIT)
    }

    /// The unit got a SIGKILL; the first one starts its kill wait.
    pub(super) fn killed(&mut self, unit: &UnitName, now: Instant) {
        self.killed_at.entry(unit.clone()).or_insert(now);
    }

    /// Whether every unit is down and the processes left behind are being waited for.
    pub(super) fn awaits_leftovers(&self) -> bool {
        self.leftovers.is_some()
    }

    /// Every unit is down: the leftovers get the shutdown timeout from now.
    pub(super) fn units_down(&mut self, now: Instant) {
        self.leftovers = Some(Leftovers {
            kill_at: after(now, self.timeout),
            give_up_at: None,
            termed: HashSet::new(),
        });
    }

    /// During a shutdown, the stopping units whose processes outlived their SIGKILL by the
    /// kill wait: they are given up (and forgotten here), with the wait to tell. Forgets the
    /// kill times of units no longer stopping.
    pub(super) fn due_abandons(
        &mut self,
        sup: &Supervisor,
        now: Instant,
    ) -> (Vec<UnitName>, Duration) {
        self.killed_at.retain(|unit, _| {
            sup.get(unit)
                .is_some_and(|(_, rt)| rt.state == State::Stopping)
        });
        let wait = self.kill_wait();
        if !sup.is_shutting_down() {
            return (Vec::new(), wait);
        }
        let due: Vec<UnitName> = self
            .killed_at
            .iter()
            .filter(|(_, at)| after(**at, wait) <= now)
            .map(|(unit, _)| unit.clone())
            .collect();
        for unit in &due {
            self.killed_at.remove(unit);
        }
        (due, wait)
    }

    pub(super) fn next_deadline(&self, shutting_down: bool) -> Option<Instant> {
        let leftovers = self.leftovers.as_ref().and_then(|left| {
            [Some(left.kill_at), left.give_up_at]
                .into_iter()
                .flatten()
                .filter(|at| Instant::now() < *at)
                .min()
        });
        let wait = self.kill_wait();
        let abandon = self
            .killed_at
            .values()
            .filter(|_| shutting_down)
            .map(|at| after(*at, wait))
            .min();
        leftovers.into_iter().chain(abandon).min()
    }

    /// Once every unit is down, ends the processes left behind: SIGTERM, SIGKILL at the
    /// shutdown timeout, and after the kill wait gives up on what cannot die. True when
    /// corral is done.
    pub(super) fn end_leftovers(&mut self, no_children_left: bool, now: Instant) -> bool {
        let kill_wait = self.kill_wait();
        let Some(left) = &mut self.leftovers else {
            return false;
        };
        if no_children_left {
            return true;
        }
        let kill = now >= left.kill_at;
        if kill && left.give_up_at.is_none() {
            left.give_up_at = Some(after(now, kill_wait));
        }
        if left.give_up_at.is_some_and(|at| now >= at) {
            let pids = reaper::direct_children();
            warn!(
                ?pids,
                "processes outlived SIGKILL by {} (frozen, or in uninterruptible sleep): \
                 abandoned, with what descends from them",
                humantime::format_duration(kill_wait)
            );
            return true;
        }
        if std::process::id() == 1 {
            // Every process of the namespace descends from PID 1, and kill(-1) reaches
            // them all but ourselves, however deep (the pids of a /proc mounted for
            // another pid namespace would name strangers). Later forks get the SIGKILL.
            let signal = if kill {
                Some(Signal::SIGKILL)
            } else if left.termed.insert(0) {
                Some(Signal::SIGTERM)
            } else {
                None
            };
            if let Some(signal) = signal {
                // Logged once per signal: SIGKILL is repeated on every wake after it.
                if signal == Signal::SIGTERM || left.termed.insert(-1) {
                    info!("sending {} to every remaining process", signal.as_str());
                }
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), signal);
            }
            return false;
        }
        for pid in reaper::direct_children() {
            let signal = if kill {
                Some(Signal::SIGKILL)
            } else if left.termed.insert(pid) {
                Some(Signal::SIGTERM)
            } else {
                None
            };
            if let Some(signal) = signal {
                debug!(pid, "leftover process gets {}", signal.as_str());
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            }
        }
        false
    }
}
