//! OOM attribution: from readings of a unit's OOM-kill counter, which kills ended its run and
//! which spared its main process. Time is a parameter; the daemon only reads the counter.
//!
//! The rule (docs/units.md, "OOM kills"): a run ends *by OOM* when the unit's counter moved
//! during the run and the main process ended within [`ATTRIBUTION_WINDOW`] of the kill,
//! whatever its exit status: SIGKILL when the main process was the victim, 137 or 1 from a shell
//! or a wrapper whose worker was. A kill that the main process outlived by longer is counted
//! and reported, and the run goes on.

use std::time::{Duration, Instant};

use crate::core::exit::{ExitReport, Termination};

/// How long after a memory event the counter is read. cgroup v1 signals as an OOM begins,
/// before the victim is chosen and the counter moves (Documentation/admin-guide/cgroup-v1/
/// memory.rst, "OOM Control"); v2's `memory.events` changes once it moved.
pub const COUNTER_GRACE: Duration = Duration::from_millis(250);

/// A main process that ends this soon after an OOM kill in its unit ended by it: a shell or
/// wrapper exits as soon as its killed worker is reaped, well inside this, while a main process
/// that meant to survive its worker's death lives on far longer.
pub const ATTRIBUTION_WINDOW: Duration = Duration::from_secs(1);

/// One unit's OOM accounting across its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomLedger {
    /// The counter value up to which kills have been counted.
    accounted: u64,
    /// The first memory event not yet followed by a counter reading.
    pending_since: Option<Instant>,
    /// When the last kill counted during the current run happened (its memory event).
    last_kill: Option<Instant>,
}

/// What a main process's end means for OOM accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MainEnd {
    /// The run ended by OOM.
    pub by_oom: bool,
    /// Kills counted now, not reported before.
    pub fresh: u32,
}

impl OomLedger {
    /// A ledger for a unit whose counter reads `counter` now (v1 counters outlive a run, and a
    /// reused cgroup keeps its v2 count: only movement counts).
    pub fn new(counter: u64) -> OomLedger {
        OomLedger {
            accounted: counter,
            pending_since: None,
            last_kill: None,
        }
    }

    /// The kernel signalled a memory event: the counter is to be read at [`Self::deadline`].
    pub fn memory_event(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// When the counter is to be read next, if a memory event is waiting for it.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending_since.map(|at| at + COUNTER_GRACE)
    }

    /// The deadline passed with the main process alive and the counter reads `counter`: the
    /// kills it shows spared the main process (so far). Returns how many to report.
    pub fn reading(&mut self, counter: Option<u64>, now: Instant) -> u32 {
        let event = self.pending_since.take().unwrap_or(now);
        let fresh = self.take_fresh(counter);
        if fresh > 0 {
            self.last_kill = Some(event);
        }
        fresh
    }

    /// The main process ended at `now` and the counter reads `counter`.
    pub fn main_ended(&mut self, counter: Option<u64>, now: Instant) -> MainEnd {
        self.pending_since = None;
        let fresh = self.take_fresh(counter);
        // Kills not yet counted happened after the last reading, which follows every memory
        // event within COUNTER_GRACE: they are recent by construction.
        let recent = self
            .last_kill
            .take()
            .is_some_and(|at| now.saturating_duration_since(at) <= ATTRIBUTION_WINDOW);
        MainEnd {
            by_oom: fresh > 0 || recent,
            fresh,
        }
    }

    fn take_fresh(&mut self, counter: Option<u64>) -> u32 {
        let Some(counter) = counter else {
            return 0;
        };
        // A counter below the ledger is a new cgroup (v2 recreated it): start over from it.
        let fresh = counter.saturating_sub(self.accounted);
        self.accounted = counter;
        u32::try_from(fresh).unwrap_or(u32::MAX)
    }
}

/// Where corral has no cgroup per unit (a read-only cgroup tree, docs/container.md), the only
/// counter is the container's own, shared by every unit: a kill it shows is attributed to a
/// main process that ended the way an OOM victim or its shell does (SIGKILL, or exit 137), and
/// reported as inferred. Any other end keeps the kill counted for nobody.
pub fn inferred_from_container(end: MainEnd, termination: Termination) -> MainEnd {
    let report = ExitReport {
        termination,
        oom: false,
    };
    let ended_like_a_kill = report.is_sigkill() || report.shell_code() == 137;
    MainEnd {
        by_oom: end.fresh > 0 && ended_like_a_kill,
        fresh: if ended_like_a_kill { end.fresh } else { 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One step of a run, as the daemon reports it.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// A memory event at this many ms into the run.
        Event(u64),
        /// The deadline's reading, at this many ms, of this counter value.
        Reading(u64, u64),
        /// The main process ends at this many ms with the counter at this value.
        End(u64, u64),
    }

    /// Replays `steps` from a counter at 0; returns what the run's end said and every kill
    /// reported along the way (spared ones first, then the end's fresh ones).
    fn replay(steps: &[Step]) -> (MainEnd, u32) {
        let t0 = Instant::now();
        let mut ledger = OomLedger::new(0);
        let mut reported = 0;
        for step in steps {
            match *step {
                Step::Event(at) => ledger.memory_event(t0 + ms(at)),
                Step::Reading(at, counter) => {
                    assert!(ledger.deadline().is_some_and(|d| d <= t0 + ms(at)));
                    reported += ledger.reading(Some(counter), t0 + ms(at));
                }
                Step::End(at, counter) => {
                    let end = ledger.main_ended(Some(counter), t0 + ms(at));
                    return (end, reported + end.fresh);
                }
            }
        }
        panic!("no end in {steps:?}")
    }

    #[test]
    fn attribution_table() {
        use Step::*;
        // (case, steps, ended by OOM?, kills counted)
        let table: &[(&str, &[Step], bool, u32)] = &[
            (
                "direct SIGKILL of the main process, reaped before the reading",
                &[Event(0), End(5, 1)],
                true,
                1,
            ),
            (
                "shell wrapper exits 137 right after its worker's kill",
                &[Event(0), End(20, 1)],
                true,
                1,
            ),
            (
                "wrapper exits 1 after the reading already counted the kill",
                &[Event(0), Reading(250, 1), End(600, 1)],
                true,
                1,
            ),
            (
                "the main process outlives its worker's kill: counted, not fatal",
                &[Event(0), Reading(250, 1), End(60_000, 1)],
                false,
                1,
            ),
            (
                "a user's SIGKILL with no counter movement is never an OOM",
                &[End(5_000, 0)],
                false,
                0,
            ),
            (
                "a memory event without a kill (v1 near the limit) is not an OOM",
                &[Event(0), Reading(250, 0), End(300, 0)],
                false,
                0,
            ),
            (
                "two OOMs in one run: a spared worker, later the main process",
                &[Event(0), Reading(250, 1), Event(30_000), End(30_010, 2)],
                true,
                2,
            ),
            (
                "two kills seen by one reading are both counted",
                &[Event(0), Reading(250, 2), End(400, 2)],
                true,
                2,
            ),
            (
                "a kill with no memory event (no watch) still counts at the end",
                &[End(10_000, 1)],
                true,
                1,
            ),
        ];
        for (case, steps, by_oom, kills) in table {
            let (end, counted) = replay(steps);
            assert_eq!(end.by_oom, *by_oom, "{case}: {steps:?}");
            assert_eq!(counted, *kills, "{case}: {steps:?}");
        }
    }

    #[test]
    fn the_containers_counter_blames_only_an_end_that_looks_like_a_kill() {
        let moved = MainEnd {
            by_oom: true,
            fresh: 1,
        };
        let still = MainEnd {
            by_oom: false,
            fresh: 0,
        };
        let sigkill = Termination::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(inferred_from_container(moved, sigkill), moved);
        assert_eq!(
            inferred_from_container(moved, Termination::Exited(137)),
            moved
        );
        assert_eq!(
            inferred_from_container(moved, Termination::Exited(1)),
            still
        );
        assert_eq!(inferred_from_container(still, sigkill), still);
    }

    #[test]
    fn a_new_run_does_not_inherit_the_last_runs_kill() {
        let t0 = Instant::now();
        let mut ledger = OomLedger::new(3);
        ledger.memory_event(t0);
        assert_eq!(ledger.main_ended(Some(4), t0 + ms(5)).fresh, 1);
        // The restart comes after a short backoff and ends cleanly, inside the last kill's
        // window: the kill belonged to the run before.
        let end = ledger.main_ended(Some(4), t0 + ms(200));
        assert_eq!(
            end,
            MainEnd {
                by_oom: false,
                fresh: 0
            }
        );
    }

    #[test]
    fn the_reading_is_due_a_grace_after_the_first_event_of_a_burst() {
        let t0 = Instant::now();
        let mut ledger = OomLedger::new(0);
        assert_eq!(ledger.deadline(), None);
        ledger.memory_event(t0);
        ledger.memory_event(t0 + ms(100));
        assert_eq!(ledger.deadline(), Some(t0 + COUNTER_GRACE));
        ledger.reading(Some(0), t0 + COUNTER_GRACE);
        assert_eq!(ledger.deadline(), None);
    }

    #[test]
    fn an_unreadable_counter_counts_nothing_and_loses_nothing() {
        let t0 = Instant::now();
        let mut ledger = OomLedger::new(0);
        ledger.memory_event(t0);
        assert_eq!(ledger.reading(None, t0 + COUNTER_GRACE), 0);
        assert_eq!(ledger.main_ended(Some(1), t0 + ms(2_000)).fresh, 1);
    }
}
