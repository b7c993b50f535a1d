//! The OS handles of each unit's current run: made at its spawn, released in one place.
//!
//! A run (a generation) holds its main process's exec report until the exec is confirmed, the
//! memory-event fds that report its OOM kills and memory-high crossings, (v2) its PSI trigger
//! on `memory.pressure` (`[oom] pressure-threshold`), and (v2) the
//! `cgroup.events` watch that wakes the loop when its cgroup empties. The exec report goes
//! when it is read; the memory events when the main process ends (what comes after is the
//! next run's); a pidfd of a main process named by `MAINPID=` (corral is not its parent, so only
//! the pidfd tells when it ends) when it ends or another is named; the rest when the next run begins, when its start fails, or when the unit is
//! forgotten. Output pipes are not here on purpose: they outlive the run until their EOF, so
//! that what a leftover process writes still reaches the log (daemon/mod.rs, `Pipe`).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use crate::os::cgroup;
use crate::unit::UnitName;

use super::sources::{Source, Sources, Token};

/// One run of a unit, as far as the loop waits on it.
struct Generation {
    /// The main process (or the helper init of a pid namespace).
    pid: i32,
    /// Until the exec is confirmed or refused.
    exec_report: Option<(Token, OwnedFd)>,
    memory_events: Vec<(Token, OwnedFd)>,
    /// The PSI trigger: goes with the memory events (the cgroup's next run is another's).
    pressure: Option<(Token, OwnedFd)>,
    populated: Option<(Token, OwnedFd)>,
    /// A main process named by `MAINPID=`: its pid and pidfd.
    named_main: Option<(i32, Token, OwnedFd)>,
}

/// Every unit's current run.
#[derive(Default)]
pub(super) struct Generations {
    runs: HashMap<UnitName, Generation>,
}

impl Generations {
    /// A new run of `unit` with main process `pid`: whatever the last one still held goes.
    pub(super) fn begin(&mut self, sources: &mut Sources, unit: &UnitName, pid: i32) {
        self.release(sources, unit);
        self.runs.insert(
            unit.clone(),
            Generation {
                pid,
                exec_report: None,
                memory_events: Vec::new(),
                pressure: None,
                populated: None,
                named_main: None,
            },
        );
    }

    /// Watches the run's exec report; gives it back when it cannot be watched (the caller
    /// then waits for it).
    pub(super) fn watch_exec_report(
        &mut self,
        sources: &mut Sources,
        unit: &UnitName,
        report: OwnedFd,
    ) -> Result<(), OwnedFd> {
        let Some(run) = self.runs.get_mut(unit) else {
            return Err(report);
        };
        let source = Source::ExecReport { unit: unit.clone() };
        match sources.add(report.as_fd(), source, false) {
            Ok(token) => {
                run.exec_report = Some((token, report));
                Ok(())
            }
            Err(_) => Err(report),
        }
    }

    /// The pid of the unit's newest process while it has not reached its exec.
    pub(super) fn exec_pending(&self, unit: &UnitName) -> Option<i32> {
        let run = self.runs.get(unit)?;
        run.exec_report.as_ref().map(|_| run.pid)
    }

    /// The unit whose main process `pid` has not reached its exec yet, if any.
    pub(super) fn exec_pending_of(&self, pid: i32) -> Option<UnitName> {
        self.runs
            .iter()
            .find(|(_, run)| run.pid == pid && run.exec_report.is_some())
            .map(|(unit, _)| unit.clone())
    }

    /// Takes the unit's exec report out of the epoll set: its main pid and the report to read.
    pub(super) fn take_exec_report(
        &mut self,
        sources: &mut Sources,
        unit: &UnitName,
    ) -> Option<(i32, OwnedFd)> {
        let run = self.runs.get_mut(unit)?;
        let (token, report) = run.exec_report.take()?;
        sources.remove(&report, token);
        Some((run.pid, report))
    }

    /// Watches the run's memory-event fds, instead of the ones it had (new limits, new marks).
    pub(super) fn watch_memory(
        &mut self,
        sources: &mut Sources,
        unit: &UnitName,
        fds: Vec<OwnedFd>,
    ) {
        self.release_memory(sources, unit);
        let Some(run) = self.runs.get_mut(unit) else {
            return;
        };
        for fd in fds {
            let source = Source::MemoryEvents { unit: unit.clone() };
            if let Ok(token) = sources.add(fd.as_fd(), source, false) {
                run.memory_events.push((token, fd));
            }
        }
    }

    /// The main process ended: its memory events are no longer this run's to report.
    pub(super) fn release_memory(&mut self, sources: &mut Sources, unit: &UnitName) {
        if let Some(run) = self.runs.get_mut(unit) {
            for (token, fd) in run.memory_events.drain(..).chain(run.pressure.take()) {
                sources.remove(&fd, token);
            }
        }
    }

    /// Watches the run's PSI trigger (POLLPRI), instead of the one it had (new keys).
    pub(super) fn watch_pressure(
        &mut self,
        sources: &mut Sources,
        unit: &UnitName,
        fd: Option<OwnedFd>,
    ) {
        self.release_pressure(sources, unit);
        let (Some(run), Some(fd)) = (self.runs.get_mut(unit), fd) else {
            return;
        };
        let source = Source::PressureTrigger { unit: unit.clone() };
        if let Ok(token) = sources.add_priority(fd.as_fd(), source) {
            run.pressure = Some((token, fd));
        }
    }

    /// The trigger goes: its cgroup is gone (the kernel then reports an error at every
    /// wait), or the unit's keys no longer ask for it.
    pub(super) fn release_pressure(&mut self, sources: &mut Sources, unit: &UnitName) {
        if let Some((token, fd)) = self.runs.get_mut(unit).and_then(|r| r.pressure.take()) {
            sources.remove(&fd, token);
        }
    }

    /// Whether the run's memory pressure comes from a PSI trigger (for `status`).
    pub(super) fn has_pressure_trigger(&self, unit: &UnitName) -> bool {
        self.runs.get(unit).is_some_and(|r| r.pressure.is_some())
    }

    /// Watches the run's `cgroup.events`.
    pub(super) fn watch_populated(&mut self, sources: &mut Sources, unit: &UnitName, fd: OwnedFd) {
        let Some(run) = self.runs.get_mut(unit) else {
            return;
        };
        let source = Source::Populated { unit: unit.clone() };
        if let Ok(token) = sources.add(fd.as_fd(), source, false) {
            run.populated = Some((token, fd));
        }
    }

    /// Watches `pidfd`, of the main process `pid` that `MAINPID=` named, instead of any
    /// earlier one.
    pub(super) fn watch_named_main(
        &mut self,
        sources: &mut Sources,
        unit: &UnitName,
        pid: i32,
        pidfd: OwnedFd,
    ) {
        let Some(run) = self.runs.get_mut(unit) else {
            return;
        };
        if let Some((_, token, fd)) = run.named_main.take() {
            sources.remove(&fd, token);
        }
        let source = Source::NamedMain { unit: unit.clone() };
        if let Ok(token) = sources.add(pidfd.as_fd(), source, false) {
            run.named_main = Some((pid, token, pidfd));
        }
    }

    /// Takes the named main process's pidfd out of the epoll set: its pid and pidfd.
    pub(super) fn take_named_main(
        &mut self,
        sources: &mut Sources,
        unit: &UnitName,
    ) -> Option<(i32, OwnedFd)> {
        let (pid, token, fd) = self.runs.get_mut(unit)?.named_main.take()?;
        sources.remove(&fd, token);
        Some((pid, fd))
    }

    /// Empties the memory-event or `cgroup.events` fd behind `token`, so that level-triggered
    /// epoll does not wake again for the same event. False if the run no longer has it.
    pub(super) fn drain(&self, unit: &UnitName, token: Token) -> bool {
        let Some(run) = self.runs.get(unit) else {
            return false;
        };
        let fd = run
            .memory_events
            .iter()
            .chain(run.populated.as_ref())
            .find(|(t, _)| *t == token)
            .map(|(_, fd)| fd);
        match fd {
            Some(fd) => {
                cgroup::drain(fd);
                true
            }
            None => false,
        }
    }

    /// The run is over for good (its start failed, or the unit is forgotten): every handle it
    /// still holds leaves the epoll set and is closed.
    pub(super) fn release(&mut self, sources: &mut Sources, unit: &UnitName) {
        let Some(run) = self.runs.remove(unit) else {
            return;
        };
        let Generation {
            exec_report,
            memory_events,
            pressure,
            populated,
            named_main,
            ..
        } = run;
        for (token, fd) in exec_report
            .into_iter()
            .chain(memory_events)
            .chain(pressure)
            .chain(populated)
            .chain(named_main.map(|(_, token, fd)| (token, fd)))
        {
            sources.remove(&fd, token);
        }
    }
}
