//! The whole supervisor as a pure function: `handle(input, now) -> effects`, with dependency-aware reconciliation.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::core::signal::Signal;

use crate::core::exit::{ExitReport, SpawnFailure};
use crate::core::notify::NotifyMessage;
use crate::core::reload::{self, Change, ReloadPlan};
use crate::core::service::{Action, Event, Runtime, State, StopReason, Want};
use crate::core::unit_table::{Entry, UnitTable};
use crate::unit::{Unit, UnitKind, UnitName, UnitSet};

/// Everything that can happen to the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start(Vec<UnitName>),
    Stop(Vec<UnitName>),
    Restart(Vec<UnitName>),
    /// Runtime instances the operator no longer wants (`stop` of one, `scale` below it): each,
    /// and what requires it, goes down as on a user's stop; the instance is then forgotten, as
    /// a unit a reload removed is.
    Discard(Vec<UnitName>),
    Kill {
        unit: UnitName,
        signal: Signal,
    },
    Spawned {
        unit: UnitName,
        pid: i32,
    },
    SpawnFailed {
        unit: UnitName,
        error: SpawnFailure,
    },
    /// The process `Spawned` announced gave up before its exec (it exits 127 next).
    ExecFailed {
        pid: i32,
        error: SpawnFailure,
    },
    /// The kernel counted more OOM kills in the unit's cgroup (whichever process they took).
    OomKills {
        unit: UnitName,
        count: u32,
    },
    /// A reaped process; not necessarily one of ours (orphans are reaped too).
    Exited {
        pid: i32,
        exit: ExitReport,
    },
    /// No process of the unit is left; the daemon says so only for a unit that is stopping.
    UnitEmpty {
        unit: UnitName,
    },
    /// A notify datagram from a process the daemon found inside the unit.
    Notify {
        unit: UnitName,
        message: NotifyMessage,
    },
    /// A line of the unit's current run matched its `ready-pattern`.
    ReadyLine {
        unit: UnitName,
    },
    /// Process `pid` (the `Spawned` one) reached its exec.
    Execd {
        pid: i32,
    },
    /// A user froze or thawed the unit's processes (`corral freeze|thaw`).
    Frozen {
        unit: UnitName,
        frozen: bool,
    },
    /// Health probe `seq` of the unit finished.
    ProbeDone {
        unit: UnitName,
        seq: u64,
        ok: bool,
        message: String,
    },
    /// During a shutdown, the daemon gives up on a stopping unit whose processes outlived
    /// their SIGKILL by the bound it documents; `left` names them. Ignored outside a shutdown.
    Abandon {
        unit: UnitName,
        left: String,
    },
    /// What the daemon saw of a unit's memory: a usage reading, or its PSI trigger firing;
    /// an episode's action (core/pressure.rs) comes out as effects.
    Pressure {
        unit: UnitName,
        observation: crate::core::pressure::Observation,
    },
    /// Time passed; deadlines at or before `now` fire.
    Tick,
    Shutdown,
}

/// What the supervisor asks the OS layer to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start the unit's main process; answer with `Spawned` or `SpawnFailed`.
    Spawn { unit: Arc<Unit> },
    /// Send a signal to every process of the unit.
    Signal { unit: UnitName, signal: Signal },
    /// SIGKILL every process left in the unit.
    KillAll { unit: UnitName },
    /// Run the unit's health probe once; answer with `ProbeDone` carrying `seq`.
    Probe { unit: Arc<Unit>, seq: u64 },
    Log {
        unit: UnitName,
        warn: bool,
        message: String,
    },
    /// Re-apply the unit's limits to its cgroup in place (reload changed only limits);
    /// `previous` tells which limits were set before and must now be lifted.
    Relimit {
        unit: Arc<Unit>,
        previous: Arc<Unit>,
    },
    /// A removed unit is down and no longer known: release what the OS layer holds for it.
    Forget { unit: UnitName },
    /// Every unit is down after `Shutdown`: the daemon may clean up and exit.
    ShutdownComplete,
}

/// A request that cannot be carried out; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no such unit: {}", UnitName::join(.0, ", "))]
    UnknownUnits(Vec<UnitName>),
    #[error("unit {0} has no running process")]
    NotRunning(UnitName),
    #[error("unit {0} is a slice and has no processes")]
    IsSlice(UnitName),
    #[error("corral is shutting down")]
    ShuttingDown,
}

/// What a waiting client wants to see before it gets its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Started,
    Stopped,
}

/// All units and their runtimes; the single owner of runtime state.
#[derive(Debug)]
pub struct Supervisor {
    /// The units, and the indexes that keep an input's cost to what it touches.
    table: UnitTable,
    by_pid: HashMap<i32, UnitName>,
    shutting_down: bool,
    shutdown_reported: bool,
    /// Units a `Discard` marked removed since the last reload: their entries changed outside
    /// a reload, so `reload_changed` looks at them whatever the loader says.
    discarded: BTreeSet<UnitName>,
}

impl Supervisor {
    /// Enabled units want to be up; nothing starts before the first `handle`.
    pub fn new(units: impl IntoIterator<Item: Into<Arc<Unit>>>, now: Instant) -> Supervisor {
        let units = units.into_iter().map(Into::into);
        Supervisor {
            table: UnitTable::new(units, now),
            by_pid: HashMap::new(),
            shutting_down: false,
            shutdown_reported: false,
            discarded: BTreeSet::new(),
        }
    }

    pub fn units(&self) -> impl Iterator<Item = (&Unit, &Runtime)> {
        self.table.values().map(|e| (&**e.unit(), &e.rt))
    }

    pub fn get(&self, name: &UnitName) -> Option<(&Unit, &Runtime)> {
        self.table.get(name).map(|e| (&**e.unit(), &e.rt))
    }

    /// The unit whose main process has this pid.
    pub fn unit_of_pid(&self, pid: i32) -> Option<&UnitName> {
        self.by_pid.get(&pid)
    }

    /// Units whose main process is gone while they stop: the daemon answers with `UnitEmpty`
    /// once nothing of them is left.
    pub fn awaiting_empty(&self) -> Vec<UnitName> {
        self.table.awaiting_empty().cloned().collect()
    }

    /// Units in a state with a process (starting, running, stopping), by name: what the daemon's
    /// per-turn work looks at, never the units at rest.
    pub fn with_process(&self) -> impl Iterator<Item = &UnitName> {
        self.table.with_process()
    }

    /// Whether `name` is on its way out (removed by a reload, or discarded): stopping, then
    /// forgotten. A start of it must make it anew.
    pub fn is_removing(&self, name: &UnitName) -> bool {
        self.table.get(name).is_some_and(|e| e.removing)
    }

    /// The units a `Discard` marked removed since the last reload: a loader that kept their
    /// parse does not name them, yet the daemon's rooms may have forgotten them since.
    pub fn discarded(&self) -> &BTreeSet<UnitName> {
        &self.discarded
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The earliest moment at which `Tick` has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// What a unit that wants to be up but is `inactive` waits for, each with its state: every
    /// `requires` unit not yet running (a oneshot: not yet exited successfully) and every
    /// `after` unit still on its way up, in the order the unit file names them. Empty for a
    /// unit that is not waiting.
    pub fn waiting_for(&self, name: &UnitName) -> Vec<(UnitName, State)> {
        let Some(e) = self.table.get(name) else {
            return Vec::new();
        };
        if e.unit().kind == UnitKind::Slice
            || e.rt.want != Want::Up
            || e.rt.state != State::Inactive
        {
            return Vec::new();
        }
        let mut waits: Vec<(UnitName, State)> = Vec::new();
        for dep in e.unit().ordering_deps() {
            let blocks = if e.unit().requires.contains(dep) {
                !self.requirement_met(dep)
            } else {
                self.blocks_ordering(dep)
            };
            if blocks
                && !waits.iter().any(|(n, _)| n == dep)
                && let Some(d) = self.table.get(dep)
            {
                waits.push((dep.clone(), d.rt.state));
            }
        }
        waits
    }

    /// Whether a unit is ready, as the probe endpoints and `wait-ready` see it: a service
    /// `running` (past its readiness gate: READY=1 or its health probe), a oneshot `exited`
    /// successfully, a slice always. None: no such unit (docs/kubernetes.md, "Probes").
    pub fn is_ready(&self, name: &UnitName) -> Option<bool> {
        self.table
            .contains(name)
            .then(|| self.requirement_met(name))
    }

    /// The units among `names` that are not ready, in the order named; with no names, every
    /// enabled unit that is not ready, by name. A name that is no unit counts as not ready.
    pub fn not_ready(&self, names: &[UnitName]) -> Vec<UnitName> {
        if names.is_empty() {
            // Indexed: a client waiting on every unit asks each turn of the loop.
            return self.table.enabled_not_ready().cloned().collect();
        }
        names
            .iter()
            .filter(|n| self.is_ready(n) != Some(true))
            .cloned()
            .collect()
    }

    /// Why a unit is not ready, in a few words: its state, and its error or last exit when it
    /// failed or waits to restart (`failed: exited with code 1`).
    pub fn not_ready_because(&self, name: &UnitName) -> String {
        let Some(e) = self.table.get(name) else {
            return "no such unit".to_owned();
        };
        let rt = &e.rt;
        let state = rt.state.as_str();
        let cause = match (&rt.error, &rt.last_exit) {
            (Some(error), _) => Some(error.to_string()),
            (None, Some(exit)) if matches!(rt.state, State::Failed | State::Backoff) => {
                Some(exit.to_string())
            }
            _ => None,
        };
        match cause {
            Some(cause) => format!("{state}: {cause}"),
            None if rt.state == State::Exited && e.unit().kind == UnitKind::Service => {
                "exited (a service is ready only while it runs)".to_owned()
            }
            None => state.to_owned(),
        }
    }

    /// Every name must exist, or the whole request is refused.
    pub fn check_names(&self, names: &[UnitName]) -> Result<(), RequestError> {
        let unknown: Vec<UnitName> = names
            .iter()
            .filter(|n| !self.table.contains(n))
            .cloned()
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(RequestError::UnknownUnits(unknown))
        }
    }

    /// Feed one input; returns the effects to perform, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Result<Vec<Effect>, RequestError> {
        let mut effects = Vec::new();
        match input {
            Input::Start(names) => {
                self.refuse_during_shutdown()?;
                self.check_names(&names)?;
                for name in self.expand_slices(&names) {
                    self.pull_up(&name, now);
                }
            }
            Input::Stop(names) => {
                self.check_names(&names)?;
                for name in self.expand_slices(&names) {
                    self.push_down(&name);
                }
            }
            Input::Discard(names) => {
                self.check_names(&names)?;
                for name in &names {
                    self.push_down(name);
                    if let Some(e) = self.table.get_mut(name) {
                        e.removing = true;
                        self.discarded.insert(name.clone());
                    }
                }
            }
            Input::Restart(names) => {
                self.refuse_during_shutdown()?;
                self.check_names(&names)?;
                for name in self.expand_slices(&names) {
                    let active = self
                        .table
                        .get(&name)
                        .is_some_and(|e| e.rt.state.has_process());
                    if active {
                        if let Some(e) = self.table.get_mut(&name) {
                            e.rt.want = Want::Up;
                        }
                        self.feed(&name, Event::Stop(StopReason::Restart), now, &mut effects);
                    } else {
                        self.pull_up(&name, now);
                    }
                }
            }
            Input::Kill { unit, signal } => {
                self.check_names(std::slice::from_ref(&unit))?;
                let entry = self
                    .table
                    .get(&unit)
                    .ok_or_else(|| RequestError::UnknownUnits(vec![unit.clone()]))?;
                if entry.unit().kind == UnitKind::Slice {
                    return Err(RequestError::IsSlice(unit));
                }
                if entry.rt.pid.is_none() {
                    return Err(RequestError::NotRunning(unit));
                }
                effects.push(Effect::Signal { unit, signal });
            }
            Input::Spawned { unit, pid } => {
                self.by_pid.insert(pid, unit.clone());
                self.feed(&unit, Event::Spawned { pid }, now, &mut effects);
            }
            Input::SpawnFailed { unit, error } => {
                self.feed(&unit, Event::SpawnFailed { error }, now, &mut effects);
            }
            Input::ExecFailed { pid, error } => {
                // A unit already on its way down takes the exit (127) that follows as its end.
                let starting = self
                    .by_pid
                    .get(&pid)
                    .and_then(|unit| self.table.get(unit))
                    .is_some_and(|e| matches!(e.rt.state, State::Starting | State::Running));
                if starting && let Some(unit) = self.by_pid.remove(&pid) {
                    self.feed(&unit, Event::SpawnFailed { error }, now, &mut effects);
                }
            }
            Input::Exited { pid, exit } => {
                if let Some(unit) = self.by_pid.remove(&pid) {
                    self.feed(&unit, Event::Exited(exit), now, &mut effects);
                }
            }
            Input::UnitEmpty { unit } => {
                self.feed(&unit, Event::UnitEmpty, now, &mut effects);
            }
            Input::Notify { unit, message } => {
                self.feed(&unit, Event::Notify(message), now, &mut effects);
            }
            Input::ReadyLine { unit } => {
                self.feed(&unit, Event::ReadyLine, now, &mut effects);
            }
            Input::Execd { pid } => {
                if let Some(unit) = self.by_pid.get(&pid).cloned() {
                    self.feed(&unit, Event::Execd, now, &mut effects);
                }
            }
            Input::Frozen { unit, frozen } => {
                self.feed(&unit, Event::Frozen(frozen), now, &mut effects);
            }
            Input::ProbeDone {
                unit,
                seq,
                ok,
                message,
            } => {
                let event = Event::ProbeDone { seq, ok, message };
                self.feed(&unit, event, now, &mut effects);
            }
            Input::OomKills { unit, count } => {
                if let Some(e) = self.table.get_mut(&unit) {
                    e.rt.record_oom_kills(count, now);
                }
            }
            Input::Abandon { unit, left } => {
                if self.shutting_down {
                    self.by_pid.retain(|_, u| *u != unit);
                    self.feed(&unit, Event::Abandoned { left }, now, &mut effects);
                }
            }
            Input::Pressure { unit, observation } => {
                self.feed(&unit, Event::Pressure(observation), now, &mut effects);
            }
            Input::Tick => {}
            Input::Shutdown => {
                self.shutting_down = true;
                // Once per corral's life, so a scan of every unit; only those that change are touched.
                let up: Vec<UnitName> = self
                    .table
                    .values()
                    .filter(|e| e.rt.want != Want::Down)
                    .map(|e| e.unit().name.clone())
                    .collect();
                for name in up {
                    if let Some(e) = self.table.get_mut(&name) {
                        e.rt.want = Want::Down;
                    }
                }
            }
        }
        self.settle(now, &mut effects);
        Ok(effects)
    }

    /// Applies a new, valid set of units as one plan (docs/operations.md, "Reload"): added units start, removed ones
    /// stop and are forgotten, changed processes restart, changed limits are re-applied in
    /// place, and nothing else is touched.
    pub fn reload(&mut self, units: UnitSet, now: Instant) -> (ReloadPlan, Vec<Effect>) {
        // why: a unit still stopping after an earlier reload removed it is already gone; in the
        // old set, its file put back would read as "unchanged" and the unit be forgotten once down.
        let current = self.table.values().filter(|e| !e.removing);
        let plan = reload::diff(current.map(|e| &**e.unit()), &units);
        let mut units = units;
        let added: Vec<(UnitName, Arc<Unit>)> = plan
            .added
            .iter()
            .filter_map(|n| units.remove_entry(n))
            .collect();
        let effects = self.apply_reload(&plan, added, units, now);
        (plan, effects)
    }

    /// [`Supervisor::reload`] for a loader that knows what changed: `changed` names every unit
    /// of `units` that is not the very `Unit` this supervisor holds (added, changed), and every
    /// unit it holds that `units` lacks (removed); other names may be in it too. Every other
    /// unit is left as it is, unlooked at (core/reload.rs, `diff_changed`): the same plan and
    /// effects as `reload(units)`, at the cost of the changed units (and one walk of the names
    /// for the plan's `unchanged` list).
    pub fn reload_changed(
        &mut self,
        units: &UnitSet,
        changed: &BTreeSet<UnitName>,
        now: Instant,
    ) -> (ReloadPlan, Vec<Effect>) {
        let with_discarded;
        let changed = if self.discarded.is_empty() {
            changed
        } else {
            with_discarded = changed.union(&self.discarded).cloned().collect();
            &with_discarded
        };
        #[cfg(debug_assertions)]
        self.assert_the_rest_is_kept(units, changed);
        let table = &self.table;
        let plan = reload::diff_changed(
            |n| table.get(n).filter(|e| !e.removing).map(|e| &**e.unit()),
            || table.values().filter(|e| !e.removing).map(|e| &**e.unit()),
            units,
            changed,
        );
        let added: Vec<(UnitName, Arc<Unit>)> = plan
            .added
            .iter()
            .filter_map(|n| units.get_key_value(n))
            .map(|(n, u)| (n.clone(), Arc::clone(u)))
            .collect();
        // A slice's move restarts units that did not change (the plan is then a full diff's).
        let looked_at: BTreeSet<&UnitName> = changed.iter().chain(&plan.restarted).collect();
        let rest: Vec<(UnitName, Arc<Unit>)> = looked_at
            .into_iter()
            .filter(|n| !plan.added.contains(n))
            .filter_map(|n| units.get_key_value(n))
            .map(|(n, u)| (n.clone(), Arc::clone(u)))
            .collect();
        let effects = self.apply_reload(&plan, added, rest, now);
        (plan, effects)
    }

    /// `reload_changed`'s promise, checked in debug builds: every unit not named is the same
    /// `Unit` in `units` as here (not removing), or in neither.
    #[cfg(debug_assertions)]
    fn assert_the_rest_is_kept(&self, units: &UnitSet, changed: &BTreeSet<UnitName>) {
        for (name, unit) in units.iter().filter(|(n, _)| !changed.contains(*n)) {
            let held = self.table.get(name).filter(|e| !e.removing);
            assert!(
                held.is_some_and(|e| Arc::ptr_eq(e.unit(), unit)),
                "reload_changed: {name} is not named changed but is not the unit held"
            );
        }
        for e in self.table.values().filter(|e| !e.removing) {
            let name = &e.unit().name;
            assert!(
                changed.contains(name) || units.contains_key(name),
                "reload_changed: {name} is gone but not named changed"
            );
        }
    }

    /// Applies a reload's plan: `added` are the plan's added units, `rest` (in name order) the
    /// other units of the new set that may differ from the ones held.
    fn apply_reload(
        &mut self,
        plan: &ReloadPlan,
        added: Vec<(UnitName, Arc<Unit>)>,
        rest: impl IntoIterator<Item = (UnitName, Arc<Unit>)>,
        now: Instant,
    ) -> Vec<Effect> {
        self.discarded.clear();
        let mut effects = Vec::new();
        for name in &plan.removed {
            if let Some(e) = self.table.get_mut(name) {
                e.removing = true;
                e.rt.want = Want::Down;
            }
        }
        for (name, unit) in added {
            match self.table.get_mut(&name) {
                // Put back while its removal's stop runs: it keeps its process until that
                // exits, then comes up under the new definition.
                Some(e) => {
                    e.removing = false;
                    e.rt.want = if unit.enabled { Want::Up } else { Want::Down };
                    self.table.replace_unit(&name, unit);
                }
                None => self.table.insert(Entry::new(unit, now)),
            }
        }
        for (name, unit) in rest {
            let Some(e) = self.table.get(&name) else {
                continue;
            };
            // The very unit it had (a reload that did not read its files again): nothing to do.
            if Arc::ptr_eq(e.unit(), &unit) && !plan.restarted.contains(&name) {
                continue;
            }
            let change = if plan.restarted.contains(&name) {
                Change::Restart
            } else {
                reload::change(e.unit(), &unit)
            };
            let newly_enabled = unit.enabled && !e.unit().enabled;
            let Some(previous) = self.table.replace_unit(&name, unit) else {
                continue;
            };
            let Some(e) = self.table.get_mut(&name) else {
                continue;
            };
            if previous.oom.pressure != e.unit().oom.pressure {
                let unit = Arc::clone(e.unit());
                e.rt.pressure.reconfigure(unit.oom.pressure.as_ref(), now);
            }
            match change {
                Change::Restart if e.rt.state.has_process() => {
                    self.feed(&name, Event::Stop(StopReason::Restart), now, &mut effects);
                }
                Change::Restart => {
                    // A unit that failed under its old definition gets a fresh try.
                    if e.rt.want == Want::Up && e.rt.state == State::Failed {
                        e.rt.reset_for_user_start(now);
                    }
                    if e.unit().kind == UnitKind::Slice {
                        effects.push(Effect::Relimit {
                            unit: Arc::clone(e.unit()),
                            previous,
                        });
                    }
                }
                Change::Relimit => effects.push(Effect::Relimit {
                    unit: Arc::clone(e.unit()),
                    previous,
                }),
                Change::Update | Change::None => {}
            }
            if let Some(e) = self.table.get_mut(&name)
                && newly_enabled
                && !self.shutting_down
            {
                e.rt.want = Want::Up;
            }
        }
        self.settle(now, &mut effects);
        effects
    }

    /// After any input: deadlines, reconciliation, forgetting removed units, shutdown's end.
    ///
    /// Each step reads the table's indexes (unit_table.rs), which `sync` brings up to date
    /// from the units the input touched: the cost is that of what changed, not of every unit.
    fn settle(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        self.table.sync();
        self.fire_deadlines(now, effects);
        self.pull_requirements();
        self.reconcile(now, effects);
        self.table.sync();
        for name in self.table.forgettable() {
            self.table.remove(&name);
            effects.push(Effect::Forget { unit: name });
        }
        if self.shutting_down && !self.shutdown_reported && self.all_down() {
            self.shutdown_reported = true;
            // Once: a scan of every unit.
            let slices: Vec<UnitName> = self
                .table
                .values()
                .filter(|e| e.unit().kind == UnitKind::Slice)
                .map(|e| e.unit().name.clone())
                .collect();
            for name in slices {
                if let Some(e) = self.table.get_mut(&name) {
                    e.rt.state = State::Inactive;
                    e.rt.since = now;
                }
            }
            effects.push(Effect::ShutdownComplete);
        }
        self.table.sync();
        #[cfg(test)]
        self.table.assert_indexes_match_a_full_scan();
    }

    /// Whether a client waiting for `goal` on `name` can have its answer: `Some(Ok)` done,
    /// `Some(Err(why))` it will not get there, `None` keep waiting.
    pub fn settled(&self, name: &UnitName, goal: Goal) -> Option<Result<(), String>> {
        let Some(e) = self.table.get(name) else {
            // Removed by a reload (or, a runtime instance, by a stop or scale) while a client
            // waited: it will never get there.
            return Some(match goal {
                Goal::Stopped => Ok(()),
                Goal::Started => Err(format!(
                    "{name} was removed (from the units directory, or by a stop or scale)"
                )),
            });
        };
        let rt = &e.rt;
        match goal {
            Goal::Stopped => matches!(
                rt.state,
                State::Inactive | State::Exited | State::Failed | State::Active
            )
            .then_some(Ok(())),
            Goal::Started => match rt.state {
                State::Running | State::Exited | State::Active => Some(Ok(())),
                State::Failed => Some(Err(failure_text(name, rt))),
                State::Inactive if rt.want == Want::Down => {
                    Some(Err(format!("{name} was stopped before it started")))
                }
                State::Inactive => self
                    .unstartable_because(e)
                    .map(|why| Err(format!("{name} cannot start: {why}"))),
                _ => None,
            },
        }
    }

    fn refuse_during_shutdown(&self) -> Result<(), RequestError> {
        if self.shutting_down {
            Err(RequestError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// A slice named in start/stop/restart stands for every unit below it.
    fn expand_slices(&self, names: &[UnitName]) -> Vec<UnitName> {
        let mut out = BTreeSet::new();
        for name in names {
            out.insert(name.clone());
            if self
                .table
                .get(name)
                .is_some_and(|e| e.unit().kind == UnitKind::Slice)
            {
                for e in self.table.values() {
                    if self.is_below(e.unit(), name) {
                        out.insert(e.unit().name.clone());
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    fn is_below(&self, unit: &Unit, slice: &UnitName) -> bool {
        let mut parent = unit.slice.as_ref();
        // Bounded by the number of units: validation rejects slice cycles, this guards anyway.
        for _ in 0..=self.table.len() {
            match parent {
                Some(p) if p == slice => return true,
                Some(p) => parent = self.table.get(p).and_then(|e| e.unit().slice.as_ref()),
                None => return false,
            }
        }
        false
    }

    /// A user's start: this unit and everything it requires want to be up, with a clean slate.
    fn pull_up(&mut self, name: &UnitName, now: Instant) {
        let mut todo = vec![name.clone()];
        let mut seen = BTreeSet::new();
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(e) = self.table.get_mut(&n) {
                e.rt.want = Want::Up;
                e.rt.reset_for_user_start(now);
                todo.extend(e.unit().requires.iter().cloned());
            }
        }
    }

    /// A unit that wants to be up pulls up what it requires, directly or through others,
    /// whatever their `enabled` says (docs/units.md#ordering-after-and-requires): an enabled
    /// unit at boot or added by a reload, as a user's start does. `after` alone pulls nothing.
    /// Nothing is pulled during shutdown, nor a unit a reload removed. A user's stop of a
    /// required unit also takes down what requires it (`push_down`), so it is not pulled back.
    ///
    /// Only units that changed, or whose requirement changed, since the last settle can have
    /// a requirement to pull: every other pair was settled then (the table's pull candidates).
    fn pull_requirements(&mut self) {
        let candidates = self.table.take_pull_candidates();
        if self.shutting_down {
            return;
        }
        let wanted_down = |sup: &Supervisor, dep: &UnitName| {
            sup.table
                .get(dep)
                .is_some_and(|d| d.rt.want == Want::Down && !d.removing)
        };
        // Usually empty: this runs after every input, so it allocates only when it pulls.
        let mut todo: Vec<UnitName> = candidates
            .iter()
            .filter_map(|n| self.table.get(n))
            .filter(|e| e.rt.want == Want::Up && !e.removing)
            .flat_map(|e| e.unit().requires.iter())
            .filter(|dep| wanted_down(self, dep))
            .cloned()
            .collect();
        while let Some(dep) = todo.pop() {
            if let Some(d) = self.table.get_mut(&dep)
                && d.rt.want == Want::Down
            {
                d.rt.want = Want::Up;
                let next: Vec<UnitName> = d.unit().requires.clone();
                todo.extend(next.into_iter().filter(|n| wanted_down(self, n)));
            }
        }
        // The reference: a scan of every unit finds nothing left to pull.
        #[cfg(test)]
        for e in self.table.values() {
            if e.rt.want == Want::Up && !e.removing {
                for dep in &e.unit().requires {
                    assert!(
                        !wanted_down(self, dep),
                        "{} wants up but its requirement {dep} was not pulled",
                        e.unit().name
                    );
                }
            }
        }
    }

    /// A user's stop: this unit and everything that requires it want to be down.
    fn push_down(&mut self, name: &UnitName) {
        let mut todo = vec![name.clone()];
        let mut seen = BTreeSet::new();
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(e) = self.table.get_mut(&n) {
                e.rt.want = Want::Down;
            }
            let requiring = self.table.dependents(&n).filter(|d| {
                self.table
                    .get(d)
                    .is_some_and(|e| e.unit().requires.contains(&n))
            });
            todo.extend(requiring.cloned());
        }
    }

    fn feed(&mut self, name: &UnitName, event: Event, now: Instant, effects: &mut Vec<Effect>) {
        let Some(e) = self.table.get_mut(name) else {
            return;
        };
        let pid_before = e.rt.pid;
        let actions = e.transition(event, now);
        // MAINPID= moved the main process: its exit is now the one that counts.
        if let (Some(old), Some(new)) = (pid_before, e.rt.pid)
            && old != new
        {
            self.by_pid.remove(&old);
            self.by_pid.insert(new, name.clone());
        }
        let Some(e) = self.table.get(name) else {
            return;
        };
        for action in actions {
            effects.push(match action {
                Action::Spawn => Effect::Spawn {
                    unit: Arc::clone(e.unit()),
                },
                Action::Signal(signal) => Effect::Signal {
                    unit: name.clone(),
                    signal,
                },
                Action::KillAll => Effect::KillAll { unit: name.clone() },
                Action::Probe { seq } => Effect::Probe {
                    unit: Arc::clone(e.unit()),
                    seq,
                },
                Action::Note { warn, message } => Effect::Log {
                    unit: name.clone(),
                    warn,
                    message,
                },
            });
        }
    }

    fn fire_deadlines(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        // By name, as a scan of every unit would have found them; a unit's event changes only
        // its own deadline, so the list taken first stays true while it is fed.
        #[cfg(test)]
        self.table.assert_indexes_match_a_full_scan();
        let due = self.table.due(now);
        for name in due {
            self.feed(&name, Event::DeadlineReached, now, effects);
        }
    }

    /// Drive every unit towards what it wants, in dependency order, until nothing changes.
    fn reconcile(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        // Each pass changes at least one unit's state, and each unit can change only a few
        // times per input; the bound guards against a bug turning into a hung PID 1.
        for _ in 0..=(4 * self.table.len() + 4) {
            let Some((name, event)) = self.next_step() else {
                return;
            };
            self.feed(&name, event, now, effects);
        }
    }

    /// The first unit (by name) that has something to do, and what.
    ///
    /// Only candidates are looked at (every unit with a step is one: unit_table.rs), in name
    /// order; one found to have nothing to do is dropped, so each is looked at once per change
    /// near it. The tests check the answer against a scan of every unit.
    fn next_step(&mut self) -> Option<(UnitName, Event)> {
        self.table.sync();
        #[cfg(test)]
        let expected = self.first_step_of_every_unit();
        let found = loop {
            let Some(name) = self.table.pop_candidate() else {
                break None;
            };
            if let Some(event) = self.table.get(&name).and_then(|e| self.step_of(e)) {
                self.table.put_back_candidate(name.clone());
                break Some((name, event));
            }
        };
        #[cfg(test)]
        assert_eq!(found, expected, "the candidates missed a unit with a step");
        found
    }

    /// What the unit has to do next towards what it wants, if anything.
    fn step_of(&self, e: &Entry) -> Option<Event> {
        if e.unit().kind == UnitKind::Slice {
            return None;
        }
        let rt = &e.rt;
        match (rt.want, rt.state) {
            (Want::Up, State::Inactive) if self.may_start(e) => Some(Event::Start),
            (Want::Up, State::Starting | State::Running) if self.lost_a_requirement(e) => {
                Some(Event::Stop(StopReason::Dependency))
            }
            (Want::Down, State::Starting | State::Running)
                if !self.has_dependents_still_stopping(&e.unit().name) =>
            {
                let reason = if self.shutting_down {
                    StopReason::Shutdown
                } else {
                    StopReason::User
                };
                Some(Event::Stop(reason))
            }
            (Want::Down, State::Backoff | State::Exited | State::Failed) => {
                Some(Event::Stop(StopReason::User))
            }
            _ => None,
        }
    }

    /// The step a scan of every unit by name finds, as the reconciler did before its index:
    /// the tests' reference, checked against the candidates at every step (with every unit
    /// that has a step being a candidate).
    #[cfg(test)]
    fn first_step_of_every_unit(&self) -> Option<(UnitName, Event)> {
        let mut first = None;
        for e in self.table.values() {
            if let Some(event) = self.step_of(e) {
                let name = &e.unit().name;
                assert!(
                    self.table.is_candidate(name),
                    "{name} has a step ({event:?}) but is no candidate"
                );
                first.get_or_insert((name.clone(), event));
            }
        }
        first
    }

    fn may_start(&self, e: &Entry) -> bool {
        let after_clear = e.unit().after.iter().all(|dep| !self.blocks_ordering(dep));
        let requires_met = e
            .unit()
            .requires
            .iter()
            .all(|dep| self.requirement_met(dep));
        after_clear && requires_met
    }

    /// `after` orders only among units on their way up: a dep wanted down, running,
    /// exited or failed does not hold anyone back.
    fn blocks_ordering(&self, dep: &UnitName) -> bool {
        self.table.get(dep).is_some_and(|d| {
            d.rt.want == Want::Up
                && !matches!(
                    d.rt.state,
                    State::Running | State::Exited | State::Failed | State::Active
                )
        })
    }

    /// A required service is running; a required oneshot has exited successfully.
    fn requirement_met(&self, dep: &UnitName) -> bool {
        self.table.get(dep).is_some_and(Entry::is_ready)
    }

    fn lost_a_requirement(&self, e: &Entry) -> bool {
        e.unit()
            .requires
            .iter()
            .any(|dep| !self.requirement_met(dep))
    }

    /// Why a unit that wants up cannot start as things stand (a required unit is down for good).
    fn unstartable_because(&self, e: &Entry) -> Option<String> {
        e.unit().requires.iter().find_map(|dep| {
            let d = self.table.get(dep)?;
            let dead = match d.rt.state {
                State::Failed => true,
                State::Exited => d.unit().kind == UnitKind::Service,
                State::Inactive => d.rt.want == Want::Down,
                _ => false,
            };
            dead.then(|| format!("required unit {dep} is {}", d.rt.state.as_str()))
        })
    }

    /// Reverse dependency order on stop: a unit waits for units that depend on it and are
    /// themselves going down.
    fn has_dependents_still_stopping(&self, name: &UnitName) -> bool {
        self.table
            .dependents(name)
            .filter_map(|d| self.table.get(d))
            .any(|d| {
                d.rt.state == State::Stopping
                    || (d.rt.want == Want::Down && d.rt.state.has_process())
            })
    }

    fn all_down(&self) -> bool {
        self.table.with_process().next().is_none()
    }
}

fn failure_text(name: &UnitName, rt: &Runtime) -> String {
    match (&rt.error, &rt.last_exit) {
        (Some(error), _) => format!("{name} failed: {error}"),
        (None, Some(exit)) => format!("{name} failed: {exit}"),
        (None, None) => format!("{name} failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures::{name, oneshot, service};
    use std::time::Duration;

    /// A fake OS: spawns get sequential pids; returns the names spawned, in order.
    fn run(sup: &mut Supervisor, input: Input, now: Instant, next_pid: &mut i32) -> Vec<Effect> {
        follow_up(sup, Vec::new(), vec![input], now, next_pid)
    }

    /// `reload`, with the fake OS answering its effects as `run` does.
    fn run_reload(
        sup: &mut Supervisor,
        units: UnitSet,
        now: Instant,
        next_pid: &mut i32,
    ) -> Vec<Effect> {
        let (_, effects) = sup.reload(units, now);
        follow_up(sup, effects, Vec::new(), now, next_pid)
    }

    /// Answers `first` (already returned by the supervisor), then feeds `queue` and every
    /// answer to what it returns until nothing is left; returns every effect, in order.
    fn follow_up(
        sup: &mut Supervisor,
        first: Vec<Effect>,
        mut queue: Vec<Input>,
        now: Instant,
        next_pid: &mut i32,
    ) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut pending = Some(first);
        loop {
            let effects = match pending.take() {
                Some(effects) => effects,
                None => match queue.pop() {
                    Some(input) => sup.handle(input, now).expect("request accepted"),
                    None => break,
                },
            };
            for effect in &effects {
                match effect {
                    Effect::Spawn { unit } => {
                        *next_pid += 1;
                        queue.insert(
                            0,
                            Input::Spawned {
                                unit: unit.name.clone(),
                                pid: *next_pid,
                            },
                        );
                    }
                    // A unit killed after its main process was reaped is empty at once here.
                    Effect::KillAll { unit }
                        if sup.get(unit).is_some_and(|(_, rt)| rt.pid.is_none()) =>
                    {
                        queue.insert(0, Input::UnitEmpty { unit: unit.clone() });
                    }
                    _ => {}
                }
            }
            all.extend(effects);
        }
        all
    }

    fn spawned(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Spawn { unit } => Some(unit.name.to_string()),
                _ => None,
            })
            .collect()
    }

    fn signalled(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Signal { unit, .. } => Some(unit.to_string()),
                _ => None,
            })
            .collect()
    }

    fn state(sup: &Supervisor, n: &str) -> State {
        sup.get(&name(n)).expect("unit").1.state
    }

    fn pid(sup: &Supervisor, n: &str) -> i32 {
        sup.get(&name(n)).expect("unit").1.pid.expect("pid")
    }

    #[test]
    fn after_waits_for_a_oneshot_to_exit_successfully() {
        let t0 = Instant::now();
        let mut web = service("web");
        web.after = vec![name("migrate")];
        let mut sup = Supervisor::new([web, oneshot("migrate")], t0);
        let mut pids = 0;
        let effects = run(&mut sup, Input::Tick, t0, &mut pids);
        assert_eq!(spawned(&effects), vec!["migrate"]);
        assert_eq!(state(&sup, "web"), State::Inactive);
        let exit = Input::Exited {
            pid: pid(&sup, "migrate"),
            exit: ExitReport::code(0),
        };
        let effects = run(&mut sup, exit, t0, &mut pids);
        assert_eq!(spawned(&effects), vec!["web"]);
        assert_eq!(state(&sup, "web"), State::Running);
    }

    fn notify(unit: &str, datagram: &[u8]) -> Input {
        Input::Notify {
            unit: name(unit),
            message: NotifyMessage::parse(datagram),
        }
    }

    #[test]
    fn after_and_requires_wait_for_readiness_not_the_spawn() {
        let t0 = Instant::now();
        let mut db = service("db");
        db.readiness.mode = crate::unit::ReadyMode::Notify;
        let mut web = service("web");
        web.after = vec![name("db")];
        let mut api = service("api");
        api.requires = vec![name("db")];
        let mut sup = Supervisor::new([db, web, api], t0);
        let mut pids = 0;
        let effects = run(&mut sup, Input::Tick, t0, &mut pids);
        assert_eq!(spawned(&effects), vec!["db"]);
        assert_eq!(state(&sup, "db"), State::Starting);
        assert_eq!(
            sup.settled(&name("db"), Goal::Started),
            None,
            "start waits too"
        );
        let later = t0 + Duration::from_secs(1);
        let effects = run(&mut sup, notify("db", b"READY=1"), later, &mut pids);
        assert_eq!(spawned(&effects), vec!["api", "web"]);
        assert_eq!(sup.settled(&name("db"), Goal::Started), Some(Ok(())));
    }

    #[test]
    fn readiness_is_running_for_a_service_a_success_for_a_oneshot_and_counts_enabled_units() {
        let t0 = Instant::now();
        let mut db = service("db");
        db.readiness.mode = crate::unit::ReadyMode::Notify;
        let mut spare = service("spare");
        spare.enabled = false;
        let migrate = oneshot("migrate");
        let web = service("web");
        let mut sup = Supervisor::new([db, spare, migrate, web], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let exec = |sup: &mut Supervisor, unit: &str, pids: &mut i32| {
            let pid = pid(sup, unit);
            run(sup, Input::Execd { pid }, t0, pids);
        };
        exec(&mut sup, "web", &mut pids);
        // db waits for READY=1, migrate has not exited, spare is disabled.
        let table: [(&str, Option<bool>); 5] = [
            ("db", Some(false)),
            ("migrate", Some(false)),
            ("web", Some(true)),
            ("spare", Some(false)),
            ("nosuch", None),
        ];
        for (unit, want) in table {
            assert_eq!(sup.is_ready(&name(unit)), want, "{unit}");
        }
        assert_eq!(sup.not_ready(&[]), vec![name("db"), name("migrate")]);
        assert_eq!(
            sup.not_ready(&[name("web"), name("spare"), name("nosuch")]),
            vec![name("spare"), name("nosuch")]
        );
        assert_eq!(sup.not_ready_because(&name("db")), "starting");
        run(&mut sup, notify("db", b"READY=1"), t0, &mut pids);
        let exit = Input::Exited {
            pid: pid(&sup, "migrate"),
            exit: ExitReport::code(0),
        };
        run(&mut sup, exit, t0, &mut pids);
        assert!(sup.not_ready(&[]).is_empty());
        // A service that failed is not ready, and says why.
        let exit = Input::Exited {
            pid: pid(&sup, "web"),
            exit: ExitReport::code(3),
        };
        run(&mut sup, exit, t0, &mut pids);
        assert_eq!(sup.not_ready(&[]), vec![name("web")]);
        assert!(
            sup.not_ready_because(&name("web"))
                .starts_with("backoff: exited with code 3"),
            "{}",
            sup.not_ready_because(&name("web"))
        );
    }

    #[test]
    fn a_dependent_of_a_log_line_unit_starts_once_its_line_matched() {
        let t0 = Instant::now();
        let mut db = service("db");
        db.readiness.mode = crate::unit::ReadyMode::LogLine;
        db.readiness.pattern = regex_lite::Regex::new("ready")
            .ok()
            .map(crate::unit::LinePattern);
        let mut web = service("web");
        web.after = vec![name("db")];
        let mut sup = Supervisor::new([db, web], t0);
        let mut pids = 0;
        let effects = run(&mut sup, Input::Tick, t0, &mut pids);
        assert_eq!(spawned(&effects), vec!["db"]);
        assert_eq!(sup.settled(&name("db"), Goal::Started), None);
        let line = Input::ReadyLine { unit: name("db") };
        let effects = run(&mut sup, line, t0 + Duration::from_secs(1), &mut pids);
        assert_eq!(spawned(&effects), vec!["web"]);
        assert_eq!(state(&sup, "db"), State::Running);
        assert_eq!(sup.settled(&name("db"), Goal::Started), Some(Ok(())));
    }

    #[test]
    fn mainpid_hands_the_units_fate_to_the_new_main_process() {
        let t0 = Instant::now();
        let mut db = service("db");
        db.readiness.mode = crate::unit::ReadyMode::Notify;
        let mut sup = Supervisor::new([db], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let launcher = pid(&sup, "db");
        run(
            &mut sup,
            notify("db", b"MAINPID=500\nREADY=1"),
            t0,
            &mut pids,
        );
        assert_eq!(sup.unit_of_pid(500), Some(&name("db")));
        assert_eq!(sup.unit_of_pid(launcher), None);
        // The launcher's exit is no longer the unit's...
        let exit = Input::Exited {
            pid: launcher,
            exit: ExitReport::code(0),
        };
        run(&mut sup, exit, t0, &mut pids);
        assert_eq!(state(&sup, "db"), State::Running);
        // ...the new main process's is.
        let exit = Input::Exited {
            pid: 500,
            exit: ExitReport::code(1),
        };
        run(&mut sup, exit, t0, &mut pids);
        assert_eq!(state(&sup, "db"), State::Backoff);
    }

    #[test]
    fn after_does_not_wait_for_a_disabled_unit() {
        let t0 = Instant::now();
        let mut web = service("web");
        web.after = vec![name("db")];
        let mut db = service("db");
        db.enabled = false;
        let mut sup = Supervisor::new([web, db], t0);
        let effects = run(&mut sup, Input::Tick, t0, &mut 0);
        assert_eq!(spawned(&effects), vec!["web"]);
    }

    /// How `app` depends on `db` in a row of the matrix below.
    #[derive(Debug, Clone, Copy)]
    enum Tie {
        After,
        Requires,
    }

    /// What happens in a row of the matrix below.
    #[derive(Debug, Clone, Copy)]
    enum Moment {
        /// corral starts with `app` enabled.
        Boot,
        /// `app` is disabled; a user starts it.
        Start,
        /// A reload adds `app`, enabled.
        ReloadAdds,
        /// A reload turns a disabled `app` to enabled.
        ReloadEnables,
        /// Both came up at boot (`app` enabled); a user stops `db`.
        StopDb,
    }

    /// One row: `db` enabled or not, the tie, the moment; then which units start and which
    /// stop in that moment, in order, and where both end up.
    struct Row {
        db_enabled: bool,
        tie: Tie,
        moment: Moment,
        started: &'static [&'static str],
        stopped: &'static [&'static str],
        db: State,
        app: State,
    }

    /// Every stop the fake OS sees answered by the unit's exit, until nothing is signalled.
    fn exit_when_signalled(
        sup: &mut Supervisor,
        mut effects: Vec<Effect>,
        now: Instant,
        pids: &mut i32,
    ) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut to_exit: Vec<String> = Vec::new();
        loop {
            to_exit.extend(signalled(&effects));
            all.append(&mut effects);
            if to_exit.is_empty() {
                return all;
            }
            let unit = to_exit.remove(0);
            let exit = Input::Exited {
                pid: pid(sup, &unit),
                exit: ExitReport::signal(Signal::SIGTERM),
            };
            effects = run(sup, exit, now, pids);
        }
    }

    #[test]
    fn enabled_after_and_requires_at_boot_start_reload_and_a_users_stop() {
        use Moment::*;
        use State::{Inactive, Running};
        use Tie::*;
        #[rustfmt::skip]
        let rows = [
            // `after` orders among units on their way up and pulls nothing; `requires` pulls
            // what it requires up first, enabled or not (docs/units.md#ordering).
            Row { db_enabled: true, tie: After, moment: Boot, started: &["db", "app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: true, tie: Requires, moment: Boot, started: &["db", "app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: false, tie: After, moment: Boot, started: &["app"], stopped: &[], db: Inactive, app: Running },
            Row { db_enabled: false, tie: Requires, moment: Boot, started: &["db", "app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: true, tie: After, moment: Start, started: &["app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: true, tie: Requires, moment: Start, started: &["app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: false, tie: After, moment: Start, started: &["app"], stopped: &[], db: Inactive, app: Running },
            Row { db_enabled: false, tie: Requires, moment: Start, started: &["db", "app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: true, tie: After, moment: ReloadAdds, started: &["app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: true, tie: Requires, moment: ReloadAdds, started: &["app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: false, tie: After, moment: ReloadAdds, started: &["app"], stopped: &[], db: Inactive, app: Running },
            Row { db_enabled: false, tie: Requires, moment: ReloadAdds, started: &["db", "app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: true, tie: After, moment: ReloadEnables, started: &["app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: true, tie: Requires, moment: ReloadEnables, started: &["app"], stopped: &[], db: Running, app: Running },
            Row { db_enabled: false, tie: After, moment: ReloadEnables, started: &["app"], stopped: &[], db: Inactive, app: Running },
            Row { db_enabled: false, tie: Requires, moment: ReloadEnables, started: &["db", "app"], stopped: &[], db: Running, app: Running },
            // A user's stop of db: `after` lets app run on; `requires` stops app first, and
            // both stay down (app no longer wants db up, so nothing pulls it back).
            Row { db_enabled: true, tie: After, moment: StopDb, started: &[], stopped: &["db"], db: Inactive, app: Running },
            Row { db_enabled: true, tie: Requires, moment: StopDb, started: &[], stopped: &["app", "db"], db: Inactive, app: Inactive },
            Row { db_enabled: false, tie: After, moment: StopDb, started: &[], stopped: &[], db: Inactive, app: Running },
            Row { db_enabled: false, tie: Requires, moment: StopDb, started: &[], stopped: &["app", "db"], db: Inactive, app: Inactive },
        ];
        for row in rows {
            let t0 = Instant::now();
            let what = format!(
                "db enabled {}, {:?}, {:?}",
                row.db_enabled, row.tie, row.moment
            );
            let mut db = service("db");
            db.enabled = row.db_enabled;
            let mut app = service("app");
            match row.tie {
                After => app.after = vec![name("db")],
                Requires => app.requires = vec![name("db")],
            }
            app.enabled = !matches!(row.moment, Start | ReloadEnables);
            let mut pids = 0;
            let booted_with = match row.moment {
                ReloadAdds => vec![db.clone()],
                _ => vec![db.clone(), app.clone()],
            };
            let mut sup = Supervisor::new(booted_with, t0);
            let boot = run(&mut sup, Input::Tick, t0, &mut pids);
            let effects = match row.moment {
                Boot => boot,
                Start => run(&mut sup, Input::Start(vec![name("app")]), t0, &mut pids),
                ReloadAdds => run_reload(&mut sup, set(vec![db, app]), t0, &mut pids),
                ReloadEnables => {
                    app.enabled = true;
                    run_reload(&mut sup, set(vec![db, app]), t0, &mut pids)
                }
                StopDb => {
                    let effects = run(&mut sup, Input::Stop(vec![name("db")]), t0, &mut pids);
                    exit_when_signalled(&mut sup, effects, t0, &mut pids)
                }
            };
            assert_eq!(spawned(&effects), row.started, "started: {what}");
            assert_eq!(signalled(&effects), row.stopped, "stopped: {what}");
            assert_eq!(
                (state(&sup, "db"), state(&sup, "app")),
                (row.db, row.app),
                "states: {what}"
            );
            // Nothing is left to happen: a unit down stays down, and nobody waits in vain.
            assert_eq!(sup.next_deadline(), None, "{what}");
            let effects = run(
                &mut sup,
                Input::Tick,
                t0 + Duration::from_secs(60),
                &mut pids,
            );
            assert!(spawned(&effects).is_empty(), "{what}: {effects:?}");
            for unit in ["db", "app"] {
                let (u, rt) = sup.get(&name(unit)).expect("unit");
                if u.enabled && rt.state == Inactive && rt.want == Want::Up {
                    panic!("{what}: enabled {unit} is inactive, wants up and nothing moves");
                }
            }
        }
    }

    #[test]
    fn a_chain_of_disabled_requirements_comes_up_in_order_and_says_what_it_waits_for() {
        let t0 = Instant::now();
        let mut a = service("a");
        a.requires = vec![name("b")];
        let mut b = service("b");
        b.requires = vec![name("c")];
        b.enabled = false;
        let mut c = service("c");
        c.enabled = false;
        c.readiness.mode = crate::unit::ReadyMode::Notify;
        let mut sup = Supervisor::new([a, b, c], t0);
        let mut pids = 0;
        let effects = run(&mut sup, Input::Tick, t0, &mut pids);
        assert_eq!(spawned(&effects), vec!["c"]);
        assert_eq!(
            sup.waiting_for(&name("a")),
            vec![(name("b"), State::Inactive)]
        );
        assert_eq!(
            sup.waiting_for(&name("b")),
            vec![(name("c"), State::Starting)]
        );
        assert_eq!(
            sup.waiting_for(&name("c")),
            vec![],
            "c is starting, not waiting"
        );
        let effects = run(&mut sup, notify("c", b"READY=1"), t0, &mut pids);
        assert_eq!(spawned(&effects), vec!["b", "a"]);
        for unit in ["a", "b", "c"] {
            assert_eq!(state(&sup, unit), State::Running, "{unit}");
            assert!(sup.waiting_for(&name(unit)).is_empty(), "{unit}");
        }
    }

    #[test]
    fn a_disabled_requirement_that_crashes_comes_back_and_its_dependent_with_it() {
        let t0 = Instant::now();
        let mut app = service("app");
        app.requires = vec![name("db")];
        let mut db = service("db");
        db.enabled = false;
        let mut sup = Supervisor::new([app, db], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let crash = Input::Exited {
            pid: pid(&sup, "db"),
            exit: ExitReport::code(1),
        };
        let effects = run(&mut sup, crash, t0, &mut pids);
        let effects = exit_when_signalled(&mut sup, effects, t0, &mut pids);
        assert_eq!(signalled(&effects), vec!["app"]);
        assert_eq!(
            (state(&sup, "db"), state(&sup, "app")),
            (State::Backoff, State::Inactive)
        );
        assert_eq!(
            sup.waiting_for(&name("app")),
            vec![(name("db"), State::Backoff)]
        );
        let later = sup.next_deadline().expect("db's backoff");
        let effects = run(&mut sup, Input::Tick, later, &mut pids);
        assert_eq!(spawned(&effects), vec!["db", "app"]);

        // A user's stop of db takes app down for good; a user's restart of app brings both.
        let effects = run(&mut sup, Input::Stop(vec![name("db")]), later, &mut pids);
        exit_when_signalled(&mut sup, effects, later, &mut pids);
        assert!(
            sup.waiting_for(&name("app")).is_empty(),
            "app does not wait: it was stopped"
        );
        let effects = run(
            &mut sup,
            Input::Restart(vec![name("app")]),
            later,
            &mut pids,
        );
        assert_eq!(spawned(&effects), vec!["db", "app"]);

        // A user's restart of db restarts app behind it.
        let effects = run(&mut sup, Input::Restart(vec![name("db")]), later, &mut pids);
        let effects = exit_when_signalled(&mut sup, effects, later, &mut pids);
        assert_eq!(signalled(&effects), vec!["db", "app"]);
        assert_eq!(spawned(&effects), vec!["db", "app"]);
    }

    #[test]
    fn a_unit_waiting_on_after_names_only_what_is_on_its_way_up() {
        let t0 = Instant::now();
        let mut app = service("app");
        app.after = vec![name("db"), name("cache")];
        app.requires = vec![name("db")];
        let mut db = service("db");
        db.readiness.mode = crate::unit::ReadyMode::Notify;
        let mut cache = service("cache");
        cache.enabled = false;
        let mut sup = Supervisor::new([app, db, cache], t0);
        run(&mut sup, Input::Tick, t0, &mut 0);
        // db is named once (after and requires), cache not at all: nothing wants it up.
        assert_eq!(
            sup.waiting_for(&name("app")),
            vec![(name("db"), State::Starting)]
        );
    }

    #[test]
    fn starting_a_unit_pulls_up_what_it_requires_first() {
        let t0 = Instant::now();
        let mut web = service("web");
        web.requires = vec![name("db")];
        web.enabled = false;
        let mut db = service("db");
        db.enabled = false;
        let mut sup = Supervisor::new([web, db], t0);
        let effects = run(&mut sup, Input::Start(vec![name("web")]), t0, &mut 0);
        assert_eq!(spawned(&effects), vec!["db", "web"]);
        assert_eq!(sup.settled(&name("web"), Goal::Started), Some(Ok(())));
    }

    #[test]
    fn an_exec_failure_after_spawned_fails_a_running_unit_but_not_a_stopping_one() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([service("web"), service("db")], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let web = pid(&sup, "web");
        let failed = |pid| Input::ExecFailed {
            pid,
            error: SpawnFailure::new(
                Some(libc::ENOENT),
                "in the child, chdir to working-dir failed: ENOENT",
            ),
        };
        run(&mut sup, failed(web), t0, &mut pids);
        let (_, rt) = sup.get(&name("web")).expect("web");
        assert_eq!((rt.state, rt.pid), (State::Failed, None));
        assert!(rt.error.as_deref().is_some_and(|e| e.contains("chdir")));
        // The child's exit 127 that follows belongs to nobody now.
        let exit = Input::Exited {
            pid: web,
            exit: ExitReport::code(127),
        };
        run(&mut sup, exit, t0, &mut pids);
        assert_eq!(state(&sup, "web"), State::Failed);

        // A unit already stopping takes the exit that follows as its end, as for any exit.
        let db = pid(&sup, "db");
        run(&mut sup, Input::Stop(vec![name("db")]), t0, &mut pids);
        run(&mut sup, failed(db), t0, &mut pids);
        assert_eq!(state(&sup, "db"), State::Stopping);
        let exit = Input::Exited {
            pid: db,
            exit: ExitReport::code(127),
        };
        run(&mut sup, exit, t0, &mut pids);
        assert_eq!(state(&sup, "db"), State::Inactive);
    }

    #[test]
    fn a_failed_requirement_stops_the_dependent_and_it_returns_with_it() {
        let t0 = Instant::now();
        let mut web = service("web");
        web.requires = vec![name("db")];
        let mut sup = Supervisor::new([web, service("db")], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let db_pid = pid(&sup, "db");
        let web_pid = pid(&sup, "web");
        let crash = Input::Exited {
            pid: db_pid,
            exit: ExitReport::code(1),
        };
        let effects = run(&mut sup, crash, t0, &mut pids);
        assert_eq!(state(&sup, "db"), State::Backoff);
        assert_eq!(signalled(&effects), vec!["web"]);
        let gone = Input::Exited {
            pid: web_pid,
            exit: ExitReport::signal(Signal::SIGTERM),
        };
        run(&mut sup, gone, t0, &mut pids);
        assert_eq!(state(&sup, "web"), State::Inactive);
        let later = sup.next_deadline().expect("backoff deadline");
        let effects = run(&mut sup, Input::Tick, later, &mut pids);
        assert_eq!(spawned(&effects), vec!["db", "web"]);
        assert_eq!(sup.get(&name("db")).expect("db").1.restarts, 1);
        assert_eq!(sup.get(&name("web")).expect("web").1.restarts, 0);
    }

    #[test]
    fn a_user_stop_of_a_requirement_stops_dependents_first_and_for_good() {
        let t0 = Instant::now();
        let mut web = service("web");
        web.requires = vec![name("db")];
        let mut sup = Supervisor::new([web, service("db")], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let (db_pid, web_pid) = (pid(&sup, "db"), pid(&sup, "web"));
        let effects = run(&mut sup, Input::Stop(vec![name("db")]), t0, &mut pids);
        assert_eq!(signalled(&effects), vec!["web"], "db waits for web");
        let effects = run(
            &mut sup,
            Input::Exited {
                pid: web_pid,
                exit: ExitReport::code(0),
            },
            t0,
            &mut pids,
        );
        assert_eq!(signalled(&effects), vec!["db"]);
        run(
            &mut sup,
            Input::Exited {
                pid: db_pid,
                exit: ExitReport::code(0),
            },
            t0,
            &mut pids,
        );
        assert_eq!(state(&sup, "db"), State::Inactive);
        assert_eq!(state(&sup, "web"), State::Inactive);
        assert_eq!(sup.next_deadline(), None);
    }

    #[test]
    fn shutdown_stops_in_reverse_dependency_order_then_reports_completion() {
        let t0 = Instant::now();
        let mut app = service("app");
        app.after = vec![name("cache")];
        let mut cache = service("cache");
        cache.after = vec![name("db")];
        let mut sup = Supervisor::new([app, cache, service("db")], t0);
        let mut pids = 0;
        let effects = run(&mut sup, Input::Tick, t0, &mut pids);
        assert_eq!(spawned(&effects), vec!["db", "cache", "app"]);
        let mut order = signalled(&run(&mut sup, Input::Shutdown, t0, &mut pids));
        for n in ["app", "cache", "db"] {
            let exit = Input::Exited {
                pid: pid(&sup, n),
                exit: ExitReport::signal(Signal::SIGTERM),
            };
            let effects = run(&mut sup, exit, t0, &mut pids);
            order.extend(signalled(&effects));
            assert_eq!(
                effects.contains(&Effect::ShutdownComplete),
                n == "db",
                "after {n}"
            );
        }
        assert_eq!(order, vec!["app", "cache", "db"]);
        assert!(sup.handle(Input::Start(vec![name("db")]), t0).is_err());
    }

    #[test]
    fn a_stop_a_restart_and_a_shutdown_wait_until_the_unit_is_empty() {
        let t0 = Instant::now();
        let mut app = service("app");
        app.after = vec![name("db")];
        let mut sup = Supervisor::new([app, service("db")], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let reaped = |sup: &Supervisor, n: &str| Input::Exited {
            pid: pid(sup, n),
            exit: ExitReport::signal(Signal::SIGTERM),
        };
        let empty = |n: &str| Input::UnitEmpty { unit: name(n) };

        // stop: the main process is reaped, but the unit is stopping until it is empty.
        sup.handle(Input::Stop(vec![name("app")]), t0)
            .expect("stop");
        let effects = sup.handle(reaped(&sup, "app"), t0).expect("exit");
        assert!(effects.contains(&Effect::KillAll { unit: name("app") }));
        assert_eq!(state(&sup, "app"), State::Stopping);
        assert_eq!(sup.awaiting_empty(), vec![name("app")]);
        assert_eq!(sup.settled(&name("app"), Goal::Stopped), None);
        sup.handle(empty("app"), t0).expect("empty");
        assert_eq!(state(&sup, "app"), State::Inactive);
        assert_eq!(sup.settled(&name("app"), Goal::Stopped), Some(Ok(())));
        assert!(sup.awaiting_empty().is_empty());

        // restart: the new process starts only once the old one's leftovers are gone.
        let old = pid(&sup, "db");
        run(&mut sup, Input::Restart(vec![name("db")]), t0, &mut pids);
        let effects = sup.handle(reaped(&sup, "db"), t0).expect("exit");
        assert_eq!(spawned(&effects), Vec::<String>::new());
        let effects = run(&mut sup, empty("db"), t0, &mut pids);
        assert_eq!(spawned(&effects), vec!["db"]);
        assert_ne!(pid(&sup, "db"), old);

        // Empty before the reap (v2 empties a cgroup at exit, before the parent reaps): the
        // reap then ends the stop at once.
        run(&mut sup, Input::Start(vec![name("app")]), t0, &mut pids);
        sup.handle(Input::Shutdown, t0).expect("shutdown");
        sup.handle(empty("app"), t0).expect("empty");
        assert_eq!(state(&sup, "app"), State::Stopping);
        let effects = sup.handle(reaped(&sup, "app"), t0).expect("exit");
        assert_eq!(state(&sup, "app"), State::Inactive);
        assert_eq!(
            signalled(&effects),
            vec!["db"],
            "db stops after app is empty"
        );
        let effects = sup.handle(reaped(&sup, "db"), t0).expect("exit");
        assert!(
            !effects.contains(&Effect::ShutdownComplete),
            "db is not empty yet"
        );
        let effects = sup.handle(empty("db"), t0).expect("empty");
        assert!(effects.contains(&Effect::ShutdownComplete));
    }

    #[test]
    fn a_shutdown_abandons_a_unit_whose_processes_outlive_sigkill() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([service("stuck")], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let main = pid(&sup, "stuck");
        // Outside a shutdown a stop waits for as long as it takes: nothing is abandoned.
        let abandon = || Input::Abandon {
            unit: name("stuck"),
            left: "pid 1".to_owned(),
        };
        run(&mut sup, abandon(), t0, &mut pids);
        assert_eq!(state(&sup, "stuck"), State::Running);
        run(&mut sup, Input::Shutdown, t0, &mut pids);
        let later = t0 + Duration::from_secs(60);
        let effects = run(&mut sup, Input::Tick, later, &mut pids);
        assert!(effects.contains(&Effect::KillAll {
            unit: name("stuck")
        }));
        // Neither an exit nor emptiness comes: the daemon gives up, and the shutdown goes on.
        let effects = run(&mut sup, abandon(), later, &mut pids);
        assert!(effects.contains(&Effect::ShutdownComplete), "{effects:?}");
        let (_, rt) = sup.get(&name("stuck")).expect("unit");
        assert!(!rt.state.has_process(), "{:?}", rt.state);
        assert!(rt.error.as_deref().is_some_and(|e| e.contains("pid 1")));
        // Its late exit belongs to nobody.
        let exit = Input::Exited {
            pid: main,
            exit: ExitReport::code(0),
        };
        assert!(run(&mut sup, exit, later, &mut pids).is_empty());
    }

    #[test]
    fn unknown_names_refuse_the_whole_request() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([service("web")], t0);
        run(&mut sup, Input::Tick, t0, &mut 0);
        let err = sup
            .handle(Input::Stop(vec![name("web"), name("nope")]), t0)
            .expect_err("unknown unit");
        assert_eq!(err, RequestError::UnknownUnits(vec![name("nope")]));
        assert_eq!(state(&sup, "web"), State::Running);
    }

    #[test]
    fn restart_stops_then_starts_without_counting_an_automatic_restart() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([service("web")], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let old = pid(&sup, "web");
        run(&mut sup, Input::Restart(vec![name("web")]), t0, &mut pids);
        assert_eq!(sup.settled(&name("web"), Goal::Started), None);
        let effects = run(
            &mut sup,
            Input::Exited {
                pid: old,
                exit: ExitReport::signal(Signal::SIGTERM),
            },
            t0,
            &mut pids,
        );
        assert_eq!(spawned(&effects), vec!["web"]);
        assert_ne!(pid(&sup, "web"), old);
        assert_eq!(sup.get(&name("web")).expect("web").1.restarts, 0);
        assert_eq!(sup.settled(&name("web"), Goal::Started), Some(Ok(())));
    }

    fn pressured_web(sustain: Duration) -> Unit {
        let mut web = service("web");
        web.resources.memory_max = Some(crate::unit::ByteLimit::Bytes(100 << 20));
        web.oom.pressure = Some(crate::unit::PressurePolicy {
            usage_percent: Some(90),
            psi: None,
            sustain,
            action: crate::unit::PressureAction::Restart,
            cool_down: Duration::from_secs(60),
        });
        web
    }

    fn usage_of(unit: &str, mib: u64) -> Input {
        Input::Pressure {
            unit: name(unit),
            observation: crate::core::pressure::Observation::Usage {
                current: mib << 20,
                max: 100 << 20,
            },
        }
    }

    #[test]
    fn a_pressure_restart_goes_through_handle_stops_then_starts_and_counts_apart() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([pressured_web(Duration::ZERO)], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let old = pid(&sup, "web");
        let effects = run(&mut sup, usage_of("web", 95), t0, &mut pids);
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::Signal { signal, .. } if *signal == Signal::SIGTERM)),
            "{effects:?}"
        );
        assert_eq!(state(&sup, "web"), State::Stopping);
        let effects = run(
            &mut sup,
            Input::Exited {
                pid: old,
                exit: ExitReport::signal(Signal::SIGTERM),
            },
            t0,
            &mut pids,
        );
        assert_eq!(spawned(&effects), vec!["web"]);
        let (_, rt) = sup.get(&name("web")).expect("web");
        assert_eq!((rt.restarts, rt.pressure_restarts), (0, 1));
        assert!(rt.last_exit_by_pressure);
        assert_eq!(rt.pressure.actions, 1);
        // Within the cool-down the new run's episode waits.
        let effects = run(&mut sup, usage_of("web", 95), t0, &mut pids);
        assert!(spawned(&effects).is_empty() && state(&sup, "web") == State::Running);
        assert_eq!(sup.next_deadline(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_reload_that_removes_the_keys_cancels_the_episode_waiting_for_its_sustain() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([pressured_web(Duration::from_secs(5))], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        run(&mut sup, usage_of("web", 95), t0, &mut pids);
        assert_eq!(sup.next_deadline(), Some(t0 + Duration::from_secs(5)));
        let mut plain = pressured_web(Duration::from_secs(5));
        plain.oom.pressure = None;
        let effects = run_reload(&mut sup, set(vec![plain]), t0, &mut pids);
        assert!(
            effects.iter().all(|e| matches!(e, Effect::Relimit { .. })),
            "only the limits are re-applied: {effects:?}"
        );
        assert_eq!(sup.next_deadline(), None);
        run(
            &mut sup,
            Input::Tick,
            t0 + Duration::from_secs(6),
            &mut pids,
        );
        assert_eq!(state(&sup, "web"), State::Running);
    }

    #[test]
    fn waiting_for_a_start_that_cannot_happen_gets_an_error() {
        let t0 = Instant::now();
        let mut web = service("web");
        web.requires = vec![name("db")];
        let mut sup = Supervisor::new([web, service("db")], t0);
        let effects = sup.handle(Input::Tick, t0).expect("tick");
        assert_eq!(spawned(&effects), vec!["db"]);
        assert_eq!(sup.settled(&name("web"), Goal::Started), None);
        let failed = Input::SpawnFailed {
            unit: name("db"),
            error: SpawnFailure::new(Some(libc::ENOENT), "no such file"),
        };
        sup.handle(failed, t0).expect("accepted");
        assert_eq!(state(&sup, "db"), State::Failed);
        let settled = sup.settled(&name("web"), Goal::Started);
        assert!(
            matches!(settled, Some(Err(ref m)) if m.contains("required unit db is failed")),
            "{settled:?}"
        );
    }

    #[test]
    fn kill_needs_a_running_process() {
        let t0 = Instant::now();
        let mut web = service("web");
        web.enabled = false;
        let mut sup = Supervisor::new([web], t0);
        let err = sup.handle(
            Input::Kill {
                unit: name("web"),
                signal: Signal::SIGTERM,
            },
            t0,
        );
        assert_eq!(err, Err(RequestError::NotRunning(name("web"))));
    }

    fn set(units: Vec<Unit>) -> UnitSet {
        units
            .into_iter()
            .map(|u| (u.name.clone(), Arc::new(u)))
            .collect()
    }

    #[test]
    fn reload_restarts_changed_processes_relimits_and_forgets_removed_units() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([service("web"), service("db"), service("old")], t0);
        let mut pids = 0;
        run(&mut sup, Input::Tick, t0, &mut pids);
        let (web, db, old) = (pid(&sup, "web"), pid(&sup, "db"), pid(&sup, "old"));
        let mut new_web = service("web");
        if let Some(exec) = &mut new_web.exec {
            exec.command = vec!["sleep".into(), "1".into()];
        }
        let mut new_db = service("db");
        new_db.resources.pids_max = Some(Some(8));
        let (plan, effects) = sup.reload(set(vec![new_web, new_db, service("extra")]), t0);
        assert_eq!(plan.restarted, vec![name("web")]);
        assert_eq!(plan.relimited, vec![name("db")]);
        assert_eq!(plan.removed, vec![name("old")]);
        assert_eq!(plan.added, vec![name("extra")]);
        assert_eq!(spawned(&effects), vec!["extra"]);
        assert_eq!(signalled(&effects), vec!["web", "old"]);
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::Relimit { unit, .. } if unit.name == name("db")))
        );
        assert_eq!(pid(&sup, "db"), db, "re-limited in place");
        for (p, exit) in [
            (web, ExitReport::signal(Signal::SIGTERM)),
            (old, ExitReport::code(0)),
        ] {
            let effects = run(&mut sup, Input::Exited { pid: p, exit }, t0, &mut pids);
            if p == old {
                assert!(effects.contains(&Effect::Forget { unit: name("old") }));
            } else {
                assert_eq!(spawned(&effects), vec!["web"]);
            }
        }
        assert!(sup.get(&name("old")).is_none());
        let web_now = sup.get(&name("web")).expect("web");
        assert_eq!(web_now.0.exec.as_ref().map(|e| e.command.len()), Some(2));
        assert_eq!(
            web_now.1.restarts, 0,
            "a reload restart is no automatic restart"
        );
    }

    #[test]
    fn reload_with_nothing_changed_touches_nothing() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([service("web")], t0);
        run(&mut sup, Input::Tick, t0, &mut 0);
        let (plan, effects) = sup.reload(set(vec![service("web")]), t0);
        assert!(plan.is_noop());
        assert!(effects.is_empty(), "{effects:?}");
    }

    /// One row: the instance's moment when discarded, and what follows: signalled at once,
    /// forgotten at once, and whether a reload put it back before it was down.
    #[test]
    fn a_discarded_instance_goes_down_then_is_forgotten_unless_a_reload_puts_it_back() {
        #[derive(Debug, Clone, Copy)]
        enum At {
            Running,
            Inactive,
            RunningPutBack,
        }
        use At::{Inactive, Running, RunningPutBack};
        struct Row {
            moment: At,
            signalled: bool,
            forgotten_at_once: bool,
            forgotten_after_exit: bool,
        }
        #[rustfmt::skip]
        let rows = [
            Row { moment: Running, signalled: true, forgotten_at_once: false, forgotten_after_exit: true },
            Row { moment: Inactive, signalled: false, forgotten_at_once: true, forgotten_after_exit: true },
            // `scale` up again while the discarded instance still stops: it comes back.
            Row { moment: RunningPutBack, signalled: true, forgotten_at_once: false, forgotten_after_exit: false },
        ];
        for row in rows {
            let t0 = Instant::now();
            let mut w = service("w@1");
            w.enabled = !matches!(row.moment, Inactive);
            let mut sup = Supervisor::new([w.clone(), service("web")], t0);
            let mut pids = 0;
            run(&mut sup, Input::Tick, t0, &mut pids);
            let before = sup.get(&name("w@1")).and_then(|(_, rt)| rt.pid);
            let web = pid(&sup, "web");
            let effects = run(&mut sup, Input::Discard(vec![name("w@1")]), t0, &mut pids);
            let what = format!("{:?}", row.moment);
            assert_eq!(
                !signalled(&effects).is_empty(),
                row.signalled,
                "{what}: {effects:?}"
            );
            assert_eq!(
                effects.contains(&Effect::Forget { unit: name("w@1") }),
                row.forgotten_at_once,
                "{what}"
            );
            assert_eq!(
                sup.get(&name("w@1")).is_none(),
                row.forgotten_at_once,
                "{what}"
            );
            if let Some(p) = before {
                assert!(sup.is_removing(&name("w@1")), "{what}");
                assert_eq!(sup.settled(&name("w@1"), Goal::Stopped), None, "{what}");
                if matches!(row.moment, RunningPutBack) {
                    run_reload(
                        &mut sup,
                        set(vec![w.clone(), service("web")]),
                        t0,
                        &mut pids,
                    );
                    assert!(!sup.is_removing(&name("w@1")), "{what}");
                }
                let exit = Input::Exited {
                    pid: p,
                    exit: ExitReport::signal(Signal::SIGTERM),
                };
                let effects = run(&mut sup, exit, t0, &mut pids);
                let put_back = matches!(row.moment, RunningPutBack);
                assert_eq!(
                    spawned(&effects).is_empty(),
                    !put_back,
                    "{what}: {effects:?}"
                );
            }
            assert_eq!(
                sup.get(&name("w@1")).is_none(),
                row.forgotten_after_exit,
                "{what}"
            );
            if row.forgotten_after_exit {
                assert_eq!(
                    sup.settled(&name("w@1"), Goal::Stopped),
                    Some(Ok(())),
                    "{what}"
                );
            }
            // Nothing else was touched.
            assert_eq!(pid(&sup, "web"), web, "{what}");
        }
    }

    #[test]
    fn a_discard_naming_an_unknown_unit_applies_nothing() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new([service("w@1")], t0);
        run(&mut sup, Input::Tick, t0, &mut 0);
        let err = sup.handle(Input::Discard(vec![name("w@1"), name("w@2")]), t0);
        assert_eq!(err, Err(RequestError::UnknownUnits(vec![name("w@2")])));
        assert_eq!(state(&sup, "w@1"), State::Running);
        assert!(!sup.is_removing(&name("w@1")));
    }

    /// Every duration a unit file takes, at the largest value its syntax accepts, parsed and
    /// driven through a start, a failed run, the restart backoff, a stop and its timeout: each
    /// deadline saturates (`service::after`) instead of overflowing `Instant + Duration`.
    #[test]
    fn the_largest_durations_a_unit_file_takes_saturate_every_deadline() {
        // The largest each key takes (docs/units.md: durations up to 365d); larger ones are
        // refused when the unit is read (unit::tests, the numeric ranges).
        const HUGE: &str = "365d";
        let rows = [
            format!("[exec]\ncommand = [\"x\"]\nstart-timeout = \"{HUGE}\"\nready = \"notify\""),
            format!("[restart]\ndelay = \"{HUGE}\"\nmax-delay = \"{HUGE}\""),
            format!("[restart]\nreset-after = \"{HUGE}\"\nstart-limit-interval = \"{HUGE}\""),
            format!("[stop]\ntimeout = \"{HUGE}\""),
            format!("[health]\ntcp = \"127.0.0.1:1\"\ninterval = \"{HUGE}\""),
            format!("[health]\ntcp = \"127.0.0.1:1\"\ninitial-delay = \"{HUGE}\""),
            format!("[health]\ntcp = \"127.0.0.1:1\"\ntimeout = \"{HUGE}\""),
            format!("[health]\nwatchdog = \"{HUGE}\""),
            // Validation multiplies the period by the percentage.
            "[resources]\ncpu-quota = \"1000000%\"\ncpu-quota-period = \"1s\"".to_owned(),
        ];
        let users = crate::unit::MemoryUserDb::new();
        for row in rows {
            let text = if row.starts_with("[exec]") {
                row.clone()
            } else {
                format!("[exec]\ncommand = [\"x\"]\n{row}")
            };
            let (unit, _) = crate::unit::parse_unit(
                &name("web"),
                std::path::Path::new("web.toml"),
                &text,
                &users,
            )
            .unwrap_or_else(|d| panic!("{row}: {d:?}"));
            let t0 = Instant::now();
            let mut sup = Supervisor::new([unit], t0);
            let mut next_pid = 100;
            run(&mut sup, Input::Tick, t0, &mut next_pid);
            let main = pid(&sup, "web");
            // An sd_notify watchdog change far beyond any clock, then a failed run.
            let ping = NotifyMessage::parse(b"WATCHDOG_USEC=18446744073709551615");
            run(
                &mut sup,
                Input::Notify {
                    unit: name("web"),
                    message: ping,
                },
                t0,
                &mut next_pid,
            );
            assert!(sup.next_deadline().is_none_or(|d| d >= t0), "{row}");
            run(
                &mut sup,
                Input::Exited {
                    pid: main,
                    exit: ExitReport::code(1),
                },
                t0,
                &mut next_pid,
            );
            run(&mut sup, Input::Tick, t0, &mut next_pid);
            assert!(sup.next_deadline().is_none_or(|d| d >= t0), "{row}");
            run(&mut sup, Input::Stop(vec![name("web")]), t0, &mut next_pid);
            run(&mut sup, Input::Tick, t0, &mut next_pid);
            assert!(sup.next_deadline().is_none_or(|d| d >= t0), "{row}");
            run(&mut sup, Input::Shutdown, t0, &mut next_pid);
            assert!(sup.next_deadline().is_none_or(|d| d >= t0), "{row}");
        }
    }

    /// A small xorshift generator: the randomized scenarios below are the same on every run.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, below: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % below as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.roll(100) < percent
        }
    }

    /// Units a..h with random kinds, `enabled`, and `after`/`requires` along a random order
    /// (so without cycles, as validation guarantees).
    fn random_units(dice: &mut Dice) -> Vec<Unit> {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut order: Vec<&str> = names.to_vec();
        for i in (1..order.len()).rev() {
            order.swap(i, dice.roll(i + 1));
        }
        let mut units = Vec::new();
        for (i, n) in order.iter().enumerate() {
            let mut u = if dice.chance(25) {
                oneshot(n)
            } else {
                service(n)
            };
            u.enabled = dice.chance(60);
            for dep in &order[..i] {
                if dice.chance(20) {
                    u.after.push(name(dep));
                }
                if dice.chance(15) {
                    u.requires.push(name(dep));
                }
            }
            units.push(u);
        }
        units
    }

    /// The incremental reconciler against a scan of every unit, over random scenarios: the
    /// checks run inside the supervisor at every step under `cfg(test)` (`next_step` against
    /// `first_step_of_every_unit`, the pulls, and every index after each input), and here the
    /// public answers that read the indexes.
    #[test]
    fn the_incremental_reconciler_takes_the_steps_a_scan_of_every_unit_takes() {
        let mut spawns = 0;
        let mut stops = 0;
        for seed in 1..=300u64 {
            let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let t0 = Instant::now();
            let mut now = t0;
            let mut sup = Supervisor::new(random_units(&mut dice), t0);
            // Indexed before the first input too: the daemon may ask before it feeds one.
            sup.table.assert_indexes_match_a_full_scan();
            let mut queue = vec![Input::Tick];
            let mut next_pid = 0;
            for _ in 0..80 {
                let input = match queue.pop() {
                    Some(input) => input,
                    None => {
                        let names: Vec<UnitName> =
                            sup.units().map(|(u, _)| u.name.clone()).collect();
                        let pick = |dice: &mut Dice| names[dice.roll(names.len())].clone();
                        let running: Vec<i32> = sup.units().filter_map(|(_, rt)| rt.pid).collect();
                        // With every unit forgotten, only a reload brings some back.
                        let roll = if names.is_empty() { 7 } else { dice.roll(12) };
                        match roll {
                            0 => Input::Start(vec![pick(&mut dice)]),
                            1 => Input::Stop(vec![pick(&mut dice)]),
                            2 => Input::Restart(vec![pick(&mut dice)]),
                            3 | 4 if !running.is_empty() => Input::Exited {
                                pid: running[dice.roll(running.len())],
                                exit: match dice.roll(3) {
                                    0 => ExitReport::code(0),
                                    1 => ExitReport::code(1),
                                    _ => ExitReport::signal(Signal::SIGKILL),
                                },
                            },
                            5 if !running.is_empty() => Input::Execd {
                                pid: running[dice.roll(running.len())],
                            },
                            6 if dice.chance(20) => Input::Discard(vec![pick(&mut dice)]),
                            7 if names.is_empty() || dice.chance(30) => {
                                let units = random_units(&mut dice);
                                let keep = dice.roll(units.len()) + 1;
                                let units = set(units.into_iter().take(keep).collect());
                                let (_, effects) = sup.reload(units, now);
                                queue.extend(answers(&sup, &effects, &mut next_pid));
                                continue;
                            }
                            8 if dice.chance(10) => Input::Shutdown,
                            9 => Input::Abandon {
                                unit: pick(&mut dice),
                                left: "1 process".into(),
                            },
                            _ => {
                                now += Duration::from_millis(dice.roll(3000) as u64);
                                Input::Tick
                            }
                        }
                    }
                };
                let Ok(effects) = sup.handle(input, now) else {
                    continue;
                };
                spawns += effects
                    .iter()
                    .filter(|e| matches!(e, Effect::Spawn { .. }))
                    .count();
                stops += effects
                    .iter()
                    .filter(|e| matches!(e, Effect::Signal { .. }))
                    .count();
                queue.extend(answers(&sup, &effects, &mut next_pid));
                // The stops waiting for an empty unit get it (in name order, as the daemon).
                if dice.chance(50) {
                    queue.extend(
                        sup.awaiting_empty()
                            .into_iter()
                            .map(|unit| Input::UnitEmpty { unit }),
                    );
                }
                let scanned: Vec<UnitName> = sup
                    .units()
                    .filter(|(_, rt)| rt.state == State::Stopping && rt.pid.is_none())
                    .map(|(u, _)| u.name.clone())
                    .collect();
                assert_eq!(sup.awaiting_empty(), scanned, "seed {seed}");
                let earliest = sup.units().filter_map(|(_, rt)| rt.deadline()).min();
                assert_eq!(sup.next_deadline(), earliest, "seed {seed}");
                let with_process: Vec<&UnitName> = sup.with_process().collect();
                let scanned: Vec<&UnitName> = sup
                    .units()
                    .filter(|(_, rt)| rt.state.has_process())
                    .map(|(u, _)| &u.name)
                    .collect();
                assert_eq!(with_process, scanned, "seed {seed}");
                let not_ready: Vec<UnitName> = sup
                    .units()
                    .filter(|(u, _)| u.enabled && sup.is_ready(&u.name) != Some(true))
                    .map(|(u, _)| u.name.clone())
                    .collect();
                assert_eq!(sup.not_ready(&[]), not_ready, "seed {seed}");
            }
        }
        // The scenarios did start and stop units (the checks above ran on real work).
        assert!(
            spawns > 1000 && stops > 300,
            "{spawns} spawns, {stops} stops"
        );
    }

    /// The fake OS's answers to effects: a pid for each spawn, emptiness for a unit killed
    /// after its main process was reaped.
    /// A loader's next read of the directory after `held` (its last): each unit kept (the very
    /// `Unit`), copied unchanged, edited (a restart, a limit or a setting), or removed; names
    /// added; slices s1..s3 (each below a lower one or none) hold some services. Valid as the
    /// loader checks: a unit whose slice is not a slice of the new set is edited out of it.
    fn next_read(dice: &mut Dice, held: &UnitSet) -> UnitSet {
        let services = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let slices = ["s1", "s2", "s3"];
        let mut new = UnitSet::new();
        for (n, u) in held {
            match dice.roll(20) {
                0..=10 => {
                    new.insert(n.clone(), Arc::clone(u));
                }
                11 | 12 => {}
                13 => {
                    new.insert(n.clone(), Arc::new((**u).clone()));
                }
                _ => {
                    let mut u = (**u).clone();
                    match dice.roll(5) {
                        0 if u.kind != UnitKind::Slice => {
                            if let Some(exec) = &mut u.exec {
                                exec.command.push("x".into());
                            }
                        }
                        1 => u.resources.pids_max = Some(Some(dice.roll(50) as u64 + 1)),
                        2 => u.enabled = !u.enabled,
                        3 => u.description = Some(format!("d{}", dice.roll(9))),
                        _ => u.slice = None,
                    }
                    new.insert(n.clone(), Arc::new(u));
                }
            }
        }
        for (i, n) in slices.iter().enumerate() {
            if !new.contains_key(&name(n)) && dice.chance(30) {
                let mut s = crate::core::fixtures::unit(n, UnitKind::Slice);
                if i > 0 && dice.chance(50) {
                    s.slice = Some(name(slices[dice.roll(i)]));
                }
                new.insert(name(n), Arc::new(s));
            }
        }
        for n in services {
            if !new.contains_key(&name(n)) && dice.chance(25) {
                let mut u = if dice.chance(25) {
                    oneshot(n)
                } else {
                    service(n)
                };
                u.enabled = dice.chance(60);
                if dice.chance(50) {
                    u.slice = Some(name(slices[dice.roll(slices.len())]));
                }
                if dice.chance(20) {
                    u.after.push(name(services[dice.roll(services.len())]));
                }
                new.insert(name(n), Arc::new(u));
            }
        }
        // Edited once more when its slice is gone, or no longer a slice (the chain is valid).
        let is_slice =
            |set: &UnitSet, s: &UnitName| set.get(s).is_some_and(|u| u.kind == UnitKind::Slice);
        loop {
            let broken: Vec<UnitName> = new
                .iter()
                .filter(|(_, u)| u.slice.as_ref().is_some_and(|s| !is_slice(&new, s)))
                .map(|(n, _)| n.clone())
                .collect();
            if broken.is_empty() {
                break;
            }
            for n in broken {
                if let Some(u) = new.get(&n) {
                    let mut u = (**u).clone();
                    u.slice = None;
                    new.insert(n, Arc::new(u));
                }
            }
        }
        new
    }

    /// `reload_changed` against `reload`, over random scenarios: two supervisors fed the same
    /// inputs, one reloading each read in full, the other with the names the loader would say
    /// changed (those not the very `Unit` of its last read, and a few more at random); the
    /// plans, the effects and every unit's state must be the same at every step. Discards
    /// between reads (the instance the loader still keeps) and slices that move are in them.
    #[test]
    fn reload_changed_gives_the_plan_and_effects_of_a_full_reload() {
        let (mut reloads, mut kept, mut moved, mut put_back) = (0, 0, 0, 0);
        for seed in 1..=300u64 {
            let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let t0 = Instant::now();
            let mut now = t0;
            let mut held = next_read(&mut dice, &UnitSet::new());
            let mut full = Supervisor::new(held.values().cloned(), t0);
            let mut part = Supervisor::new(held.values().cloned(), t0);
            let (mut pid_full, mut pid_part) = (0, 0);
            let mut queue = vec![Input::Tick];
            for step in 0..60 {
                let what = format!("seed {seed} step {step}");
                let input = match queue.pop() {
                    Some(input) => input,
                    None => {
                        let names: Vec<UnitName> =
                            full.units().map(|(u, _)| u.name.clone()).collect();
                        let running: Vec<i32> = full.units().filter_map(|(_, rt)| rt.pid).collect();
                        let roll = if names.is_empty() { 0 } else { dice.roll(10) };
                        let pick = |dice: &mut Dice| names[dice.roll(names.len())].clone();
                        match roll {
                            0..=2 => {
                                let new = next_read(&mut dice, &held);
                                let mut changed: BTreeSet<UnitName> = held
                                    .keys()
                                    .chain(new.keys())
                                    .filter(|n| match (held.get(*n), new.get(*n)) {
                                        (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                                        _ => true,
                                    })
                                    .cloned()
                                    .collect();
                                kept += new.keys().filter(|n| !changed.contains(*n)).count();
                                // More names than needed are allowed.
                                for n in ["a", "c", "s2", "z"] {
                                    if dice.chance(10) {
                                        changed.insert(name(n));
                                    }
                                }
                                put_back += usize::from(!part.discarded.is_empty());
                                let (plan_full, effects_full) = full.reload(new.clone(), now);
                                let (plan_part, effects_part) =
                                    part.reload_changed(&new, &changed, now);
                                assert_eq!(plan_full, plan_part, "{what}");
                                assert_eq!(effects_full, effects_part, "{what}");
                                reloads += 1;
                                moved += usize::from(
                                    plan_full.restarted.iter().any(|n| !changed.contains(n)),
                                );
                                queue.extend(answers(&full, &effects_full, &mut pid_full));
                                answers(&part, &effects_part, &mut pid_part);
                                held = new;
                                continue;
                            }
                            3 => Input::Start(vec![pick(&mut dice)]),
                            4 => Input::Stop(vec![pick(&mut dice)]),
                            5 if !running.is_empty() => Input::Exited {
                                pid: running[dice.roll(running.len())],
                                exit: ExitReport::code(dice.roll(2) as i32),
                            },
                            6 if !running.is_empty() => Input::Execd {
                                pid: running[dice.roll(running.len())],
                            },
                            7 if dice.chance(30) => Input::Discard(vec![pick(&mut dice)]),
                            _ => {
                                now += Duration::from_millis(dice.roll(3000) as u64);
                                Input::Tick
                            }
                        }
                    }
                };
                let a = full.handle(input.clone(), now);
                let b = part.handle(input, now);
                assert_eq!(a, b, "{what}");
                if let (Ok(a), Ok(b)) = (a, b) {
                    queue.extend(answers(&full, &a, &mut pid_full));
                    answers(&part, &b, &mut pid_part);
                    if dice.chance(50) {
                        queue.extend(
                            full.awaiting_empty()
                                .into_iter()
                                .map(|unit| Input::UnitEmpty { unit }),
                        );
                    }
                }
                let state = |s: &Supervisor| format!("{:?}", s.units().collect::<Vec<_>>());
                assert_eq!(state(&full), state(&part), "{what}");
            }
        }
        // The scenarios reloaded with units kept, moved slices and discards in between.
        assert!(
            reloads > 2000 && kept > 5000 && moved > 20 && put_back > 20,
            "reloads {reloads} kept {kept} moved {moved} discarded before {put_back}"
        );
    }

    fn answers(sup: &Supervisor, effects: &[Effect], next_pid: &mut i32) -> Vec<Input> {
        let mut inputs = Vec::new();
        for effect in effects {
            match effect {
                Effect::Spawn { unit } => {
                    *next_pid += 1;
                    inputs.push(Input::Spawned {
                        unit: unit.name.clone(),
                        pid: *next_pid,
                    });
                }
                Effect::KillAll { unit }
                    if sup.get(unit).is_some_and(|(_, rt)| rt.pid.is_none()) =>
                {
                    inputs.push(Input::UnitEmpty { unit: unit.clone() });
                }
                _ => {}
            }
        }
        inputs
    }
}
