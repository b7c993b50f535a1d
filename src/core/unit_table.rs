//! The supervisor's units and the indexes that let one input cost what it touches, not O(units).
//!
//! Every change to an entry goes through this table (`get_mut`, `insert`, `remove`,
//! `replace_unit`), which records the unit as touched; `sync` then brings the indexes up to
//! date from the touched units alone. The supervisor's policy stays in supervisor.rs: this table
//! only knows which units a change can concern (docs/architecture.md, "The incremental core").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::core::service::{Action, Event, Runtime, State, Want};
use crate::unit::{Unit, UnitKind, UnitName};

#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Private: the dependents index follows it, so it changes only through `replace_unit`.
    unit: Arc<Unit>,
    pub(super) rt: Runtime,
    /// Gone from the units directory: stopped, then forgotten.
    pub(super) removing: bool,
}

impl Entry {
    pub(super) fn new(unit: Arc<Unit>, now: Instant) -> Entry {
        let want = if unit.enabled { Want::Up } else { Want::Down };
        let mut rt = Runtime::new(now, want);
        if unit.kind == UnitKind::Slice {
            rt.state = State::Active;
        }
        Entry {
            unit,
            rt,
            removing: false,
        }
    }

    pub(super) fn unit(&self) -> &Arc<Unit> {
        &self.unit
    }

    /// Ready as a requirement is met: a service running, a oneshot exited successfully, a
    /// slice always.
    pub(super) fn is_ready(&self) -> bool {
        match self.unit.kind {
            UnitKind::Service => self.rt.state == State::Running,
            UnitKind::Oneshot => self.rt.state == State::Exited,
            UnitKind::Slice => true,
        }
    }

    /// Feeds the unit's state machine one event under its current definition.
    pub(super) fn transition(&mut self, event: Event, now: Instant) -> Vec<Action> {
        self.rt.transition(event, now, &self.unit)
    }
}

/// The capacity of the touched buffer that `sync` keeps between settles.
const TOUCHED_KEPT: usize = 256;

/// The units by name, and what is derived from them.
///
/// The reconciler's invariant: **every unit that has a step to take is a candidate** (a unit's
/// step depends only on its own entry, on the entries it names in `after`/`requires`, and on
/// the entries that name it there; so a touched unit, its dependencies and its dependents
/// become candidates). The supervisor walks the candidates in name order and drops those that
/// have nothing to do, which yields the same step as a scan of every unit from the first by
/// name; its tests check the invariant against that full scan at every step.
#[derive(Debug, Default)]
pub(super) struct UnitTable {
    entries: BTreeMap<UnitName, Entry>,
    /// Changed since the last `sync` (with repeats; `sync` sorts them out).
    touched: Vec<UnitName>,
    /// For each name, the units whose `after` or `requires` names it (present or not).
    dependents: HashMap<UnitName, BTreeSet<UnitName>>,
    /// Units that may have a step (see the invariant above).
    candidates: BTreeSet<UnitName>,
    /// Units that may have to pull up a requirement: touched since the last
    /// `take_pull_candidates`, and the dependents of those.
    pull_candidates: BTreeSet<UnitName>,
    /// Each unit's `Runtime::deadline`, in time order, and what it was when last indexed.
    deadlines: BTreeSet<(Instant, UnitName)>,
    deadline_of: HashMap<UnitName, Instant>,
    /// Units in a state with a process (`State::has_process`).
    with_process: BTreeSet<UnitName>,
    /// Units stopping whose main process is gone: they wait for their cgroup to empty.
    awaiting_empty: BTreeSet<UnitName>,
    /// Units removed (by a reload or a discard) that are down: forgotten at the end of a settle.
    forgettable: BTreeSet<UnitName>,
    /// Enabled units that are not ready: what a `wait-ready` with no names waits on, each turn.
    enabled_not_ready: BTreeSet<UnitName>,
}

impl UnitTable {
    /// Every unit starts a candidate: the first settle looks at each once. Indexed at once, so
    /// the readers (`next_deadline`...) may ask before the first input.
    pub(super) fn new(units: impl IntoIterator<Item = Arc<Unit>>, now: Instant) -> UnitTable {
        // Collected, not inserted one by one: a `BTreeMap` built from an iterator fills its
        // nodes (std's bulk build), where ascending inserts leave every node they split about
        // half empty, ~160 bytes a unit (bench/analysis.md, "Where the heap goes per unit").
        let entries: BTreeMap<UnitName, Entry> = units
            .into_iter()
            .map(|unit| (unit.name.clone(), Entry::new(unit, now)))
            .collect();
        let mut table = UnitTable::default();
        for (name, entry) in &entries {
            table.link(name, &entry.unit);
        }
        table.entries = entries;
        table.sync();
        table
    }

    pub(super) fn get(&self, name: &UnitName) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub(super) fn contains(&self, name: &UnitName) -> bool {
        self.entries.contains_key(name)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every entry, by name.
    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The entry, to change: it is recorded as touched.
    pub(super) fn get_mut(&mut self, name: &UnitName) -> Option<&mut Entry> {
        let e = self.entries.get_mut(name)?;
        self.touched.push(name.clone());
        Some(e)
    }

    /// Adds a unit (replacing none: the caller checked it is new).
    pub(super) fn insert(&mut self, entry: Entry) {
        let name = entry.unit.name.clone();
        self.link(&name, &entry.unit);
        self.entries.insert(name, entry);
    }

    /// A new unit in the reverse dependency index, and touched.
    fn link(&mut self, name: &UnitName, unit: &Unit) {
        for dep in unit.ordering_deps() {
            self.dependents
                .entry(dep.clone())
                .or_default()
                .insert(name.clone());
        }
        self.touched.push(name.clone());
    }

    /// Forgets a unit; what named it or what it named may now have a step.
    pub(super) fn remove(&mut self, name: &UnitName) -> Option<Entry> {
        let entry = self.entries.remove(name)?;
        for dep in entry.unit.ordering_deps() {
            self.unlink(dep, name);
            self.candidates.insert(dep.clone());
        }
        self.touched.push(name.clone());
        Some(entry)
    }

    /// Puts a new definition in place of the unit's; returns the old one.
    pub(super) fn replace_unit(&mut self, name: &UnitName, unit: Arc<Unit>) -> Option<Arc<Unit>> {
        let e = self.entries.get_mut(name)?;
        let previous = std::mem::replace(&mut e.unit, unit);
        let current = Arc::clone(&e.unit);
        let same_deps = previous.after == current.after && previous.requires == current.requires;
        if !same_deps {
            for dep in previous.ordering_deps() {
                self.unlink(dep, name);
                // No longer a dependency: its wait for dependents still stopping may be over.
                self.candidates.insert(dep.clone());
            }
            for dep in current.ordering_deps() {
                self.dependents
                    .entry(dep.clone())
                    .or_default()
                    .insert(name.clone());
            }
        }
        self.touched.push(name.clone());
        Some(previous)
    }

    fn unlink(&mut self, dep: &UnitName, dependent: &UnitName) {
        if let Some(set) = self.dependents.get_mut(dep) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(dep);
            }
        }
    }

    /// The units whose `after` or `requires` names `name`, by name.
    pub(super) fn dependents(&self, name: &UnitName) -> impl Iterator<Item = &UnitName> {
        self.dependents.get(name).into_iter().flatten()
    }

    /// Whether every change has been indexed.
    pub(super) fn is_synced(&self) -> bool {
        self.touched.is_empty()
    }

    /// Brings every index up to date with the units touched since the last call.
    pub(super) fn sync(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for name in &touched {
            self.reindex(name);
        }
        // Give the buffer back: a settle touches a few units many times over. Not the one the
        // first settle or a large reload grew to every unit (16 bytes a unit, kept for good).
        touched.clear();
        touched.shrink_to(TOUCHED_KEPT);
        self.touched = touched;
    }

    fn reindex(&mut self, name: &UnitName) {
        let entry = self.entries.get(name);
        let deadline = entry.and_then(|e| e.rt.deadline());
        let indexed = self.deadline_of.get(name).copied();
        if indexed != deadline {
            if let Some(old) = indexed {
                self.deadlines.remove(&(old, name.clone()));
                self.deadline_of.remove(name);
            }
            if let Some(new) = deadline {
                self.deadlines.insert((new, name.clone()));
                self.deadline_of.insert(name.clone(), new);
            }
        }
        let state = entry.map(|e| e.rt.state);
        let has_process = state.is_some_and(State::has_process);
        set_member(&mut self.with_process, name, has_process);
        let awaiting = entry.is_some_and(|e| e.rt.state == State::Stopping && e.rt.pid.is_none());
        set_member(&mut self.awaiting_empty, name, awaiting);
        let forgettable = entry.is_some_and(|e| e.removing && !has_process);
        set_member(&mut self.forgettable, name, forgettable);
        let not_ready = entry.is_some_and(|e| e.unit.enabled && !e.is_ready());
        set_member(&mut self.enabled_not_ready, name, not_ready);
        if let Some(e) = entry {
            self.candidates.insert(name.clone());
            self.pull_candidates.insert(name.clone());
            self.candidates.extend(e.unit.ordering_deps().cloned());
        }
        if let Some(dependents) = self.dependents.get(name) {
            self.candidates.extend(dependents.iter().cloned());
            self.pull_candidates.extend(dependents.iter().cloned());
        }
    }

    /// Takes the first candidate by name out of the set (the caller puts it back if it has a
    /// step). Call `sync` first.
    pub(super) fn pop_candidate(&mut self) -> Option<UnitName> {
        debug_assert!(self.is_synced());
        self.candidates.pop_first()
    }

    pub(super) fn put_back_candidate(&mut self, name: UnitName) {
        self.candidates.insert(name);
    }

    #[cfg(test)]
    pub(super) fn is_candidate(&self, name: &UnitName) -> bool {
        self.candidates.contains(name)
    }

    /// The units that may have to pull up a requirement since the last call.
    pub(super) fn take_pull_candidates(&mut self) -> BTreeSet<UnitName> {
        self.sync();
        std::mem::take(&mut self.pull_candidates)
    }

    /// The units whose deadline is at or before `now`, by name.
    pub(super) fn due(&self, now: Instant) -> Vec<UnitName> {
        debug_assert!(self.is_synced());
        let mut due: Vec<UnitName> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, name)| name.clone())
            .collect();
        due.sort_unstable();
        due
    }

    /// The earliest deadline of any unit.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        debug_assert!(self.is_synced());
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Units in a state with a process, by name.
    pub(super) fn with_process(&self) -> impl Iterator<Item = &UnitName> {
        self.with_process.iter()
    }

    pub(super) fn awaiting_empty(&self) -> impl Iterator<Item = &UnitName> {
        self.awaiting_empty.iter()
    }

    /// Enabled units that are not ready, by name.
    pub(super) fn enabled_not_ready(&self) -> impl Iterator<Item = &UnitName> {
        debug_assert!(self.is_synced());
        self.enabled_not_ready.iter()
    }

    pub(super) fn forgettable(&self) -> Vec<UnitName> {
        debug_assert!(self.is_synced());
        self.forgettable.iter().cloned().collect()
    }

    /// Checks every index against a scan of every entry (the tests call it after each input).
    #[cfg(test)]
    pub(super) fn assert_indexes_match_a_full_scan(&self) {
        assert!(self.is_synced(), "a change was not indexed");
        let deadlines: BTreeSet<(Instant, UnitName)> = self
            .entries
            .iter()
            .filter_map(|(n, e)| e.rt.deadline().map(|d| (d, n.clone())))
            .collect();
        assert_eq!(self.deadlines, deadlines, "deadlines");
        let scan = |f: &dyn Fn(&Entry) -> bool| -> BTreeSet<UnitName> {
            self.entries
                .iter()
                .filter(|(_, e)| f(e))
                .map(|(n, _)| n.clone())
                .collect()
        };
        assert_eq!(
            self.with_process,
            scan(&|e| e.rt.state.has_process()),
            "with_process"
        );
        assert_eq!(
            self.awaiting_empty,
            scan(&|e| e.rt.state == State::Stopping && e.rt.pid.is_none()),
            "awaiting_empty"
        );
        assert_eq!(
            self.forgettable,
            scan(&|e| e.removing && !e.rt.state.has_process()),
            "forgettable"
        );
        assert_eq!(
            self.enabled_not_ready,
            scan(&|e| e.unit.enabled && !e.is_ready()),
            "enabled_not_ready"
        );
        let mut dependents: HashMap<UnitName, BTreeSet<UnitName>> = HashMap::new();
        for (n, e) in &self.entries {
            for dep in e.unit.ordering_deps() {
                dependents.entry(dep.clone()).or_default().insert(n.clone());
            }
        }
        assert_eq!(self.dependents, dependents, "dependents");
        // The daemon's per-turn work reads `with_process` for the units with a main process.
        for (n, e) in &self.entries {
            assert!(
                e.rt.pid.is_none() || e.rt.state.has_process(),
                "{n} has a pid in state {:?}",
                e.rt.state
            );
        }
    }
}

fn set_member(set: &mut BTreeSet<UnitName>, name: &UnitName, member: bool) {
    if member {
        if !set.contains(name) {
            set.insert(name.clone());
        }
    } else {
        set.remove(name);
    }
}
