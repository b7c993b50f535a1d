//! Which processes belong to a unit, and the doors to reach them: the unit's cgroup, or its
//! process group where cgroups cannot be managed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, info, warn};

use crate::core::backoff::Retry;
use crate::core::cgroup_plan::{self, Version};
use crate::core::container::{self, Budget, Ladder, Rung};
use crate::core::exit::Termination;
use crate::core::limit_watch::{HighWatch, Notice, Thresholds};
use crate::core::oom::{MainEnd, OomLedger};
use crate::core::pressure::PressureWatch;
use crate::os::cgroup::{self, Cgroups, Join};
use crate::os::process_group::ProcessGroup;
use crate::os::{reaper, spawn};
use crate::proto::Usage;
use crate::unit::{ByteLimit, DeviceSpec, Unit, UnitKind, UnitName, UnitSet};

/// How long a start waits for processes left in a unit's cgroup (by an earlier corral) to die.
const LEFTOVER_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Door {
    Cgroup(PathBuf),
    Group(ProcessGroup),
}

/// What `status` shows about a unit's cgroup.
#[derive(Debug, Clone, Default)]
pub struct CgroupFacts {
    pub cgroup: Option<String>,
    pub limits_enforced: bool,
    pub limits_reason: Option<String>,
    pub usage: Usage,
    pub frozen: bool,
    /// Limits about to bite, worded for people.
    pub warnings: Vec<String>,
}

pub struct Members {
    cgroups: Option<Cgroups>,
    /// Why limits are not enforced at all (no cgroups, no permission).
    disabled: Option<String>,
    /// The capability ladder's reading at start.
    ladder: Ladder,
    /// Below `Writable`: the tree as detected, only read (the container's own OOM counter),
    /// and the ledger of that counter, shared by every unit.
    observed: Option<(Cgroups, OomLedger)>,
    /// Where each unit's cgroup is, below R.
    paths: HashMap<UnitName, PathBuf>,
    doors: HashMap<UnitName, Door>,
    frozen: HashSet<UnitName>,
    /// Keys that did not take, per unit (slices included).
    problems: HashMap<UnitName, Vec<String>>,
    /// Cgroups to `rmdir` once their last member is gone (EBUSY until then).
    removals: BTreeMap<PathBuf, Retry>,
    /// OOM accounting per unit: the kernel's counter as last accounted for.
    oom: HashMap<UnitName, OomLedger>,
    /// The units whose ledger waits to read its counter (`OomLedger::deadline`): what the
    /// loop's every turn looks at, not every ledger (one per unit ever started).
    oom_waiting: HashSet<UnitName>,
    /// Units with `memory-high`, and whether they are above it now.
    high: HashMap<UnitName, HighWatch>,
    /// R itself is removed at exit only when corral made it and does not live in it.
    remove_root_at_exit: bool,
    /// Units in their own pid namespace: the main pid is a helper init that passes signals on.
    helpers: HashMap<UnitName, Helper>,
    /// Units told once that nothing here can watch their `pressure-threshold` (v1).
    psi_unwatched: HashSet<UnitName>,
}

/// The helper init of a unit's pid namespace, and the pipe that carries its command's status.
#[derive(Debug)]
struct Helper {
    pid: i32,
    status: OwnedFd,
}

impl Members {
    /// Detects cgroups and prepares R; on any failure supervision goes on without limits.
    pub fn new(root: Option<&Path>, units: &UnitSet) -> Members {
        Members::with_detected(cgroup::detect(root), root.is_some(), units)
    }

    /// [`Members::new`] with the detection done: tests pass a fake cgroupfs.
    fn with_detected(
        detected: Result<cgroup::Detected, cgroup::CgroupError>,
        root_given: bool,
        units: &UnitSet,
    ) -> Members {
        let paths = units
            .values()
            .map(|u| {
                let parent_of = |n: &UnitName| units.get(n).and_then(|u| u.slice.clone());
                (
                    u.name.clone(),
                    cgroup_plan::unit_cgroup(&u.name, u.kind, &parent_of),
                )
            })
            .collect();
        let mut members = Members {
            cgroups: None,
            disabled: None,
            observed: None,
            ladder: Ladder {
                version: None,
                rung: Rung::Unavailable,
                reason: None,
                at_namespace_root: false,
                read_only_mount: false,
                nsdelegate: false,
                max_descendants: None,
                max_depth: None,
                budget: Budget::default(),
            },
            paths,
            doors: HashMap::new(),
            frozen: HashSet::new(),
            problems: HashMap::new(),
            removals: BTreeMap::new(),
            oom: HashMap::new(),
            oom_waiting: HashSet::new(),
            high: HashMap::new(),
            remove_root_at_exit: root_given,
            helpers: HashMap::new(),
            psi_unwatched: HashSet::new(),
        };
        members.climb(detected);
        let summary = members.ladder.summary();
        if members.ladder.rung == Rung::Writable {
            info!("{summary}");
        } else {
            warn!("{summary}");
        }
        if let Some(report) = container::unenforced_report(&members.ladder, units) {
            warn!("{report}");
        }
        for warning in container::budget_warnings(&members.ladder, units) {
            warn!("{warning}");
        }
        members.setup_slices(units);
        members
    }

    /// Climbs the capability ladder (core/container.rs) as far as the kernel lets corral: R
    /// prepared means every limit is enforced; otherwise the rung and the kernel's reason.
    fn climb(&mut self, detected: Result<cgroup::Detected, cgroup::CgroupError>) {
        let mut detected = match detected {
            Ok(detected) => detected,
            Err(e) => {
                let reason = format!("cgroups unavailable ({e})");
                warn!("{reason}; units run without resource limits");
                self.ladder.reason = Some(e.to_string());
                self.disabled = Some(reason);
                return;
            }
        };
        let (budget, max_descendants, max_depth) = detected.cgroups.budget();
        self.ladder = Ladder {
            version: Some(detected.cgroups.version()),
            rung: Rung::Writable,
            reason: None,
            at_namespace_root: detected.at_namespace_root,
            read_only_mount: detected.read_only,
            nsdelegate: detected.nsdelegate,
            max_descendants,
            max_depth,
            budget,
        };
        // A mount's flags alone can lie (a read-write mount under a user namespace, or R that
        // already exists on a read-only one): a cgroup made and removed below R tells.
        let probe = Path::new("corral-probe.scope");
        let prepared = detected.cgroups.prepare_root().and_then(|notes| {
            detected.cgroups.create(probe, false)?;
            let _ = detected.cgroups.remove(probe);
            Ok(notes)
        });
        match prepared {
            Ok(notes) => {
                for note in notes {
                    info!("cgroups: {note}");
                }
                info!(
                    version = ?detected.cgroups.version(),
                    root = %detected.cgroups.display(Path::new("")),
                    "managing cgroups"
                );
                self.cgroups = Some(detected.cgroups);
            }
            Err(e) => {
                // A mkdir refused tells more than the mount's flags: under a user namespace
                // a read-write mount can still refuse corral.
                let (rung, reason) = if cgroup::is_read_only_error(&e) {
                    (
                        Rung::ReadOnly,
                        format!("the cgroup file system is read-only ({e})"),
                    )
                } else if cgroup::is_permission_error(&e) {
                    (
                        Rung::NoPermission,
                        format!("no permission to manage cgroups ({e})"),
                    )
                } else {
                    (Rung::Unavailable, format!("cgroups unavailable ({e})"))
                };
                warn!("{reason}; units run without resource limits");
                self.ladder.rung = rung;
                self.ladder.reason = Some(e.to_string());
                self.disabled = Some(reason);
                // The container's own counter can still be read: OOM kills are inferred.
                if let Some(counter) = detected.cgroups.oom_kills(Path::new("")) {
                    self.observed = Some((detected.cgroups, OomLedger::new(counter)));
                }
            }
        }
    }

    /// What detection found of the cgroup tree, for `status`.
    pub fn cgroups_report(&self) -> crate::proto::CgroupsReport {
        let rung = self.ladder.rung;
        crate::proto::CgroupsReport {
            rung: rung.as_str().to_owned(),
            summary: self.ladder.summary(),
            remedy: (rung != Rung::Writable).then(|| rung.remedy().to_owned()),
        }
    }

    /// Slices exist for as long as corral runs, parents first, each with its limits.
    fn setup_slices(&mut self, units: &UnitSet) {
        let Some(cgroups) = &self.cgroups else {
            return;
        };
        let mut slices: Vec<&Unit> = units
            .values()
            .map(|u| &**u)
            .filter(|u| u.kind == UnitKind::Slice)
            .collect();
        slices.sort_by_key(|u| {
            self.paths
                .get(&u.name)
                .map_or(0, |p| p.components().count())
        });
        for slice in slices {
            let Some(rel) = self.paths.get(&slice.name) else {
                continue;
            };
            let problems = match cgroups.create(rel, true) {
                Ok(()) => cgroup::apply(&**cgroups, rel, &plan_for(slice, cgroups.version())),
                Err(e) => vec![format!("creating the slice's cgroup: {e}")],
            };
            report(&slice.name, &problems);
            self.problems.insert(slice.name.clone(), problems);
        }
    }

    /// A reload's new set of units: paths of added and changed units. Removed units keep
    /// theirs until `forget`; running units keep the door they were started with.
    pub fn update_units(&mut self, units: &UnitSet) {
        for u in units.values() {
            let parent_of = |n: &UnitName| units.get(n).and_then(|u| u.slice.clone());
            let rel = cgroup_plan::unit_cgroup(&u.name, u.kind, &parent_of);
            if self.paths.get(&u.name) == Some(&rel) {
                continue;
            }
            // A moved slice's old cgroup goes once the units below have left it.
            if let Some(old) = self.paths.insert(u.name.clone(), rel.clone())
                && old != rel
                && u.kind == UnitKind::Slice
                && self.cgroups.is_some()
            {
                self.schedule_removal(old, Instant::now());
            }
        }
        let added_slices: UnitSet = units
            .iter()
            .filter(|(n, u)| u.kind == UnitKind::Slice && !self.problems.contains_key(*n))
            .map(|(n, u)| (n.clone(), u.clone()))
            .collect();
        self.setup_slices(&added_slices);
    }

    /// [`Members::update_units`] for a reload whose loader named what may have changed, with
    /// no slice among them (a slice's move moves the units below it: the daemon then asks for
    /// `update_units`): only those named can have a new path, and every slice is set up
    /// already (each got its problems at its setup), so the rest is not looked at.
    pub fn update_changed_units(&mut self, units: &UnitSet, changed: &BTreeSet<UnitName>) {
        let parent_of = |n: &UnitName| units.get(n).and_then(|u| u.slice.clone());
        for u in changed.iter().filter_map(|n| units.get(n)) {
            debug_assert!(u.kind != UnitKind::Slice, "a changed slice: update_units");
            let rel = cgroup_plan::unit_cgroup(&u.name, u.kind, &parent_of);
            if self.paths.get(&u.name) != Some(&rel) {
                self.paths.insert(u.name.clone(), rel);
            }
        }
    }

    /// Rewrites a unit's (or slice's) cgroup files in place, without touching its processes.
    pub fn relimit(&mut self, unit: &Unit, previous: &Unit) {
        let (Some(cgroups), Some(rel)) = (&self.cgroups, self.paths.get(&unit.name)) else {
            return;
        };
        let problems = if unit.kind == UnitKind::Slice {
            match cgroups.create(rel, true) {
                Ok(()) => cgroup::apply(
                    &**cgroups,
                    rel,
                    &lifting_plan(unit, previous, cgroups.version()),
                ),
                Err(e) => vec![format!("creating the slice's cgroup: {e}")],
            }
        } else if cgroups.exists(rel) {
            cgroup::apply(
                &**cgroups,
                rel,
                &lifting_plan(unit, previous, cgroups.version()),
            )
        } else {
            // Not running: the next start writes the new limits.
            Vec::new()
        };
        // score-adjust is per process: the running ones get the new value too.
        if let (Some(adj), true) = (unit.oom.score_adjust, cgroups.exists(rel)) {
            for pid in cgroups.procs(rel).unwrap_or_default() {
                let file = format!("/proc/{pid}/oom_score_adj");
                if let Err(e) = std::fs::write(&file, adj.to_string()) {
                    warn!(unit = %unit.name, "writing {adj} to {file}: {e}");
                }
            }
        }
        report(&unit.name, &problems);
        info!(unit = %unit.name, "limits re-applied in place");
        self.problems.insert(unit.name.clone(), problems);
        match unit.resources.memory_high {
            Some(ByteLimit::Bytes(limit)) => {
                let only_above = self.version() == Some(Version::V2);
                self.high
                    .entry(unit.name.clone())
                    .and_modify(|h| h.set_limit(limit))
                    .or_insert(HighWatch::new(limit, only_above));
            }
            _ => {
                self.high.remove(&unit.name);
            }
        }
    }

    /// The spawn failed: the cgroup made for it goes again.
    pub fn spawn_failed(&mut self, unit: &UnitName, now: Instant) {
        if let (Some(_), Some(rel)) = (&self.cgroups, self.paths.get(unit)) {
            self.schedule_removal(rel.clone(), now);
            self.retry_removals(now);
        }
    }

    /// A removed unit is down: its cgroup goes, and corral forgets it.
    pub fn forget(&mut self, unit: &UnitName, now: Instant) {
        if let Some(rel) = self.paths.remove(unit)
            && self.cgroups.is_some()
        {
            self.schedule_removal(rel, now);
        }
        self.doors.remove(unit);
        self.helpers.remove(unit);
        self.problems.remove(unit);
        self.oom.remove(unit);
        self.oom_waiting.remove(unit);
        self.high.remove(unit);
        self.frozen.remove(unit);
        self.retry_removals(now);
    }

    /// Gets a unit's cgroup ready for a new main process: empties what an earlier generation
    /// left, creates it, writes its limits, and opens `cgroup.procs` for the child to join.
    /// An empty list means "no cgroup": the unit runs in its process group only.
    pub fn prepare_spawn(&mut self, unit: &Unit) -> Join {
        let (Some(cgroups), Some(rel)) = (&self.cgroups, self.paths.get(&unit.name)) else {
            return Join::default();
        };
        self.removals.remove(rel);
        self.frozen.remove(&unit.name);
        let mut problems = Vec::new();
        if cgroups.exists(rel) {
            // A cgroup left frozen (by an earlier corral) would freeze the child before exec.
            let _ = cgroups.set_frozen(rel, false);
            match empty_leftovers(&**cgroups, rel) {
                Ok(0) => {}
                Ok(n) => {
                    warn!(unit = %unit.name, "killed {n} processes left in the unit's cgroup by an earlier run")
                }
                Err(e) => problems.push(format!("emptying the unit's cgroup: {e}")),
            }
        }
        let join = match cgroups.create(rel, false) {
            Ok(()) => {
                match unit.resources.memory_high {
                    Some(ByteLimit::Bytes(limit)) => {
                        self.high.insert(
                            unit.name.clone(),
                            HighWatch::new(limit, cgroups.version() == Version::V2),
                        );
                    }
                    _ => {
                        self.high.remove(&unit.name);
                    }
                }
                self.oom.insert(
                    unit.name.clone(),
                    OomLedger::new(cgroups.oom_kills(rel).unwrap_or(0)),
                );
                self.oom_waiting.remove(&unit.name);
                problems.extend(cgroup::apply(
                    &**cgroups,
                    rel,
                    &plan_for(unit, cgroups.version()),
                ));
                match cgroups.join(rel) {
                    Ok(join) => join,
                    Err(e) => {
                        problems.push(format!("opening the unit's cgroup: {e}"));
                        Join::default()
                    }
                }
            }
            Err(e) => {
                problems.push(format!("creating the unit's cgroup: {e}"));
                Join::default()
            }
        };
        report(&unit.name, &problems);
        self.problems.insert(unit.name.clone(), problems);
        join
    }

    /// Records the new main process: its cgroup when it joined one, else its process group.
    pub fn spawned(
        &mut self,
        unit: &UnitName,
        pid: i32,
        in_cgroup: bool,
        helper_status: Option<OwnedFd>,
    ) {
        let door = match (in_cgroup, self.paths.get(unit)) {
            (true, Some(rel)) => Door::Cgroup(rel.clone()),
            _ => Door::Group(ProcessGroup(pid)),
        };
        self.doors.insert(unit.clone(), door);
        match helper_status {
            Some(status) => self.helpers.insert(unit.clone(), Helper { pid, status }),
            None => self.helpers.remove(unit),
        };
    }

    /// The main process of a pid-namespaced unit ended: what its command's end was, when the
    /// helper lived to report it.
    pub fn take_helper_exit(&mut self, unit: &UnitName) -> Option<Termination> {
        let helper = self.helpers.remove(unit)?;
        spawn::helper_exit(&helper.status).and_then(reaper::termination)
    }

    /// Signals every process of the unit. A frozen unit is thawed afterwards, or the signal
    /// would wait (v1 freezes even SIGKILL).
    pub fn signal(&mut self, unit: &UnitName, signal: Signal) {
        let result = if let Some(helper) = self.helpers.get(unit) {
            // The helper passes it on to every process of its namespace, which holds them
            // all; signalling them directly as well would deliver everything twice.
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(helper.pid), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            match (self.doors.get(unit), &self.cgroups) {
                (Some(Door::Cgroup(rel)), Some(cgroups)) => {
                    cgroup::signal_all(&**cgroups, rel, signal).map_err(|e| e.to_string())
                }
                (Some(Door::Group(group)), _) => group.signal(signal).map_err(|e| e.to_string()),
                _ => Ok(()),
            }
        };
        if let Err(e) = result {
            warn!(unit = %unit, "sending {} to the unit: {e}", signal.as_str());
        }
        if self.frozen.contains(unit) {
            let _ = self.set_frozen(unit, false);
        }
    }

    /// SIGKILL to every process of the unit, then its cgroup is removed once empty.
    pub fn kill_all(&mut self, unit: &UnitName, now: Instant) {
        let result = match (self.doors.get(unit), &self.cgroups) {
            (Some(Door::Cgroup(rel)), Some(cgroups)) => {
                let rel = rel.clone();
                let killed = cgroup::kill_all(&**cgroups, &rel).map_err(|e| e.to_string());
                self.frozen.remove(unit);
                self.schedule_removal(rel, now);
                killed
            }
            (Some(Door::Group(group)), _) => {
                group.signal(Signal::SIGKILL).map_err(|e| e.to_string())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn!(unit = %unit, "killing the unit's processes: {e}");
        }
        // Not removed here but at the end of the loop's turn: a restart's spawn in the same
        // turn takes the cgroup back (`prepare_spawn` cancels the removal), which saves an
        // rmdir and a mkdir per hierarchy, 7 of each on v1.
    }

    /// Whether no process of the unit is left: its cgroup lists none (a removed cgroup is
    /// empty; the kernel lists no zombie there), or its process group has no member (where a
    /// zombie counts until corral reaps it, which wakes this check again).
    pub fn is_empty(&self, unit: &UnitName) -> bool {
        match (self.doors.get(unit), &self.cgroups) {
            (Some(Door::Cgroup(rel)), Some(cgroups)) => {
                if !cgroups.exists(rel) {
                    return true;
                }
                match cgroups.procs(rel) {
                    Ok(pids) => pids.is_empty(),
                    Err(e) => {
                        // Cannot tell: waiting for good would hang the stop.
                        warn!(unit = %unit, "cannot tell whether the unit is empty: {e}");
                        true
                    }
                }
            }
            (Some(Door::Group(group)), _) => group.is_empty(),
            _ => true,
        }
    }

    /// What of the unit is still there, for the log of a shutdown that gives up on it: its
    /// pids and its cgroup, or its process group.
    pub fn leftovers(&self, unit: &UnitName) -> String {
        match (self.doors.get(unit), &self.cgroups) {
            (Some(Door::Cgroup(rel)), Some(cgroups)) => {
                let pids = cgroups.procs(rel).unwrap_or_default();
                format!("pids {pids:?} in cgroup {}", cgroups.display(rel))
            }
            (Some(Door::Group(group)), _) => format!("process group {}", group.0),
            _ => "its main process".to_owned(),
        }
    }

    /// A wakeup for when the unit's cgroup may have become empty (v2), so that a unit whose
    /// last process is not corral's to reap is still seen empty at once.
    pub fn populated_watch(&self, unit: &UnitName) -> Option<OwnedFd> {
        let (Some(Door::Cgroup(rel)), Some(cgroups)) = (self.doors.get(unit), &self.cgroups) else {
            return None;
        };
        cgroups.populated_watch(rel).unwrap_or_else(|e| {
            debug!(unit = %unit, "no populated notification: {e}");
            None
        })
    }

    /// The unit is empty: its cgroup, queued for removal by the kill, goes now.
    pub fn emptied(&mut self, unit: &UnitName, now: Instant) {
        if let Some(Door::Cgroup(rel)) = self.doors.get(unit)
            && let Some(removal) = self.removals.get_mut(rel)
        {
            *removal = Retry::at(now);
        }
    }

    /// Whether process `pid` belongs to the unit now: a member of its cgroup, or of its
    /// process group where it has no cgroup. (A process gone already belongs to nobody.)
    pub fn contains(&self, unit: &UnitName, pid: i32) -> bool {
        match (self.doors.get(unit), &self.cgroups) {
            (Some(Door::Cgroup(rel)), Some(cgroups)) => {
                cgroups.procs(rel).is_ok_and(|procs| procs.contains(&pid))
            }
            (Some(Door::Group(group)), _) => {
                nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
                    .is_ok_and(|pgid| pgid.as_raw() == group.0)
            }
            _ => false,
        }
    }

    /// `cgroup.procs` of the unit's running generation, for a health probe to join: unlike
    /// `prepare_spawn` it neither creates nor empties anything. Empty without a cgroup.
    pub fn join_running(&self, unit: &UnitName) -> Join {
        match (self.doors.get(unit), &self.cgroups) {
            (Some(Door::Cgroup(rel)), Some(cgroups)) => cgroups.join(rel).unwrap_or_else(|e| {
                warn!(unit = %unit, "the health probe runs outside the unit's cgroup: {e}");
                Join::default()
            }),
            _ => Join::default(),
        }
    }

    pub fn is_frozen(&self, unit: &UnitName) -> bool {
        self.frozen.contains(unit)
    }

    /// Whether a signal to the unit reaches process `pid`: through the unit's helper init (whose
    /// pid it is), or because `pid` is already in its cgroup or process group.
    pub fn reaches(&self, unit: &UnitName, pid: i32) -> bool {
        self.helpers.contains_key(unit) || self.contains(unit, pid)
    }

    pub fn set_frozen(&mut self, unit: &UnitName, frozen: bool) -> Result<(), String> {
        let (Some(Door::Cgroup(rel)), Some(cgroups)) = (self.doors.get(unit), &self.cgroups) else {
            return Err(match &self.disabled {
                Some(reason) => format!("freezing needs cgroups: {reason}"),
                None => format!("{unit} has no cgroup to freeze"),
            });
        };
        cgroups.set_frozen(rel, frozen).map_err(|e| e.to_string())?;
        if frozen {
            self.frozen.insert(unit.clone());
        } else {
            self.frozen.remove(unit);
        }
        Ok(())
    }

    fn oom_counter(&self, unit: &UnitName) -> Option<u64> {
        let (cgroups, rel) = (self.cgroups.as_ref()?, self.paths.get(unit)?);
        cgroups.oom_kills(rel)
    }

    /// Opens the memory-event watch of a unit's new generation (OOM kills, memory-high, and
    /// the marks of `thresholds` below memory-max).
    pub fn memory_watch(&self, unit: &Unit, thresholds: &Thresholds) -> Vec<OwnedFd> {
        let (Some(cgroups), Some(rel)) = (&self.cgroups, self.paths.get(&unit.name)) else {
            return Vec::new();
        };
        let bytes = |limit| match limit {
            Some(ByteLimit::Bytes(n)) => Some(n),
            _ => None,
        };
        let mut marks: Vec<u64> = bytes(unit.resources.memory_high).into_iter().collect();
        if let Some(max) = bytes(unit.resources.memory_max)
            && cgroups.notifies_memory_marks()
        {
            marks.extend(thresholds.memory_marks(max));
        }
        // `[oom] usage-threshold` on v1: the kernel wakes corral as usage crosses the threshold
        // and its recovery mark. Each mark costs the start an RCU grace period (v1.rs,
        // `notifies_memory_marks`), paid only by units that ask to act before the OOM killer.
        if let (Some(max), Some(policy)) = (bytes(unit.resources.memory_max), &unit.oom.pressure)
            && cgroups.version() == Version::V1
        {
            marks.extend(
                PressureWatch::usage_marks(policy, max)
                    .into_iter()
                    .flatten(),
            );
        }
        marks.sort_unstable();
        marks.dedup();
        cgroups.memory_watch(rel, &marks).unwrap_or_else(|e| {
            warn!(unit = %unit.name, "OOM kills that spare the main process will go unnoticed: {e}");
            Vec::new()
        })
    }

    /// The PSI trigger of the unit's `[oom] pressure-threshold` on its new cgroup (v2); None
    /// without the key, without a cgroup, or where the kernel has no per-cgroup PSI.
    pub fn pressure_trigger(&mut self, unit: &Unit) -> Option<OwnedFd> {
        let psi = unit.oom.pressure.as_ref()?.psi?;
        let (Some(cgroups), Some(Door::Cgroup(rel))) = (&self.cgroups, self.doors.get(&unit.name))
        else {
            return None;
        };
        match cgroups.pressure_trigger(rel, &psi.trigger()) {
            Ok(Some(fd)) => Some(fd),
            Ok(None) => {
                if self.psi_unwatched.insert(unit.name.clone()) {
                    warn!(
                        unit = %unit.name,
                        "pressure-threshold \"{psi}\" is not watched: cgroup {:?} has no per-cgroup PSI here (usage-threshold is)",
                        cgroups.version()
                    );
                }
                None
            }
            Err(e) => {
                warn!(unit = %unit.name, "pressure-threshold \"{psi}\" is not watched: {e}");
                None
            }
        }
    }

    /// `$MEMORY_PRESSURE_WATCH` and `$MEMORY_PRESSURE_WRITE` for a unit with `[oom]
    /// pressure-threshold` whose cgroup was just prepared (v2), as systemd's
    /// `MemoryPressureWatch=` hands them: the unit's `memory.pressure`, and its trigger in
    /// base64 with the NUL the kernel needs (v2.rs, `pressure_trigger`). The file is given to
    /// the unit's user (fchown on an fd opened without following links), as systemd does, so
    /// its own process can arm the trigger; where that fails, neither variable is set.
    pub fn pressure_env(&self, unit: &Unit) -> Vec<(String, String)> {
        use base64::Engine;
        use std::os::unix::fs::OpenOptionsExt;
        let (Some(psi), Some(cgroups), Some(rel)) = (
            unit.oom.pressure.as_ref().and_then(|p| p.psi),
            &self.cgroups,
            self.paths.get(&unit.name),
        ) else {
            return Vec::new();
        };
        let Some(file) = cgroups.pressure_file(rel) else {
            return Vec::new();
        };
        let uid = spawn::host_uid(
            &unit.namespaces,
            unit.exec.as_ref().and_then(|e| e.user.as_deref()),
        );
        if uid != nix::unistd::geteuid().as_raw() {
            let given = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(&file)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    nix::unistd::fchown(&f, Some(nix::unistd::Uid::from_raw(uid)), None)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = given {
                warn!(unit = %unit.name, "no $MEMORY_PRESSURE_WATCH: giving {} to uid {uid}: {e}", file.display());
                return Vec::new();
            }
        }
        let mut trigger = psi.trigger().into_bytes();
        trigger.push(0);
        vec![
            (
                "MEMORY_PRESSURE_WATCH".to_owned(),
                file.to_string_lossy().into_owned(),
            ),
            (
                "MEMORY_PRESSURE_WRITE".to_owned(),
                base64::engine::general_purpose::STANDARD.encode(trigger),
            ),
        ]
    }

    /// A memory event woke us: an OOM kill may have happened (see core/oom.rs for when the
    /// counter is read).
    pub fn on_memory_event(&mut self, unit: &UnitName, now: Instant) {
        if let Some(ledger) = self.oom.get_mut(unit) {
            ledger.memory_event(now);
        }
        self.track_oom_wait(unit);
        self.check_memory_high(unit, now);
    }

    /// Logs the episodes above `memory-high` that this event began or ended.
    fn check_memory_high(&mut self, unit: &UnitName, now: Instant) {
        let (Some(cgroups), Some(rel)) = (&self.cgroups, self.paths.get(unit)) else {
            return;
        };
        let Some(high) = self.high.get_mut(unit) else {
            return;
        };
        let Some(current) = cgroups.usage(rel).memory_current else {
            return;
        };
        for notice in high.memory_event(current, now) {
            match notice {
                Notice::Began { message, .. } => warn!(unit = %unit, "{message}"),
                Notice::Ended { message, .. } => info!(unit = %unit, "{message}"),
            }
        }
    }

    /// The main process ended: the unit's counter now, judged by its ledger.
    pub fn on_main_exit(&mut self, unit: &UnitName, now: Instant) -> MainEnd {
        let counter = self.oom_counter(unit);
        let end = match self.oom.get_mut(unit) {
            Some(ledger) => ledger.main_ended(counter, now),
            None => MainEnd {
                by_oom: false,
                fresh: 0,
            },
        };
        self.track_oom_wait(unit);
        end
    }

    /// Without a cgroup of the unit's own: OOM kills the container's counter shows, attributed
    /// by `core::oom::inferred_from_container`; `None` where no counter can be read.
    pub fn inferred_oom_at_exit(
        &mut self,
        now: Instant,
        termination: Termination,
    ) -> Option<MainEnd> {
        let (cgroups, ledger) = self.observed.as_mut()?;
        let counter = cgroups.oom_kills(Path::new(""));
        Some(crate::core::oom::inferred_from_container(
            ledger.main_ended(counter, now),
            termination,
        ))
    }

    /// Units whose counter reading is due, with the OOM kills it shows: they took other
    /// processes of the unit, so far.
    pub fn spared_main_oom_kills(&mut self, now: Instant) -> Vec<(UnitName, u32)> {
        let due: Vec<UnitName> = self
            .oom_waiting
            .iter()
            .filter(|u| {
                self.oom
                    .get(*u)
                    .and_then(OomLedger::deadline)
                    .is_some_and(|at| at <= now)
            })
            .cloned()
            .collect();
        due.into_iter()
            .filter_map(|unit| {
                let counter = self.oom_counter(&unit);
                let fresh = self.oom.get_mut(&unit)?.reading(counter, now);
                self.track_oom_wait(&unit);
                (fresh > 0).then_some((unit, fresh))
            })
            .collect()
    }

    /// Keeps `oom_waiting` in step with the unit's ledger after a change to it.
    fn track_oom_wait(&mut self, unit: &UnitName) {
        if self.oom.get(unit).and_then(OomLedger::deadline).is_some() {
            if !self.oom_waiting.contains(unit) {
                self.oom_waiting.insert(unit.clone());
            }
        } else {
            self.oom_waiting.remove(unit);
        }
    }

    /// Queues `rel` for `rmdir`, first tried at `now`.
    fn schedule_removal(&mut self, rel: PathBuf, now: Instant) {
        self.removals.insert(rel, Retry::at(now));
    }

    /// Tries every due `rmdir`; an EBUSY one is tried again later, backing off.
    pub fn retry_removals(&mut self, now: Instant) {
        let Some(cgroups) = &self.cgroups else {
            return;
        };
        let due: Vec<PathBuf> = self
            .removals
            .iter()
            .filter(|(_, r)| r.due <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for rel in due {
            match cgroups.remove(&rel) {
                Ok(true) => {
                    debug!(cgroup = %cgroups.display(&rel), "removed");
                    self.removals.remove(&rel);
                }
                Ok(false) => {
                    if let Some(retry) = self.removals.get_mut(&rel) {
                        retry.failed(now);
                    }
                }
                Err(e) => {
                    warn!("{e}");
                    self.removals.remove(&rel);
                }
            }
        }
    }

    /// The cgroup version in use, if corral manages cgroups.
    pub fn version(&self) -> Option<Version> {
        self.cgroups.as_ref().map(|c| c.version())
    }

    /// Whether a unit's `[oom] usage-threshold` is announced by the kernel (v1 usage
    /// thresholds) rather than sampled by the usage timer (v2).
    pub fn notifies_usage_threshold(&self) -> bool {
        self.version() == Some(Version::V1)
    }

    /// Whether the kernel tells corral when memory usage crosses a mark (v1 thresholds).
    pub fn notifies_memory_marks(&self) -> bool {
        self.cgroups
            .as_ref()
            .is_some_and(|c| c.notifies_memory_marks())
    }

    /// The unit's live figures, when its cgroup exists.
    pub fn sample(&self, unit: &UnitName) -> Option<Usage> {
        let (cgroups, rel) = (self.cgroups.as_ref()?, self.paths.get(unit)?);
        cgroups.exists(rel).then(|| cgroups.usage(rel))
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let oom = self
            .oom_waiting
            .iter()
            .filter_map(|u| self.oom.get(u).and_then(OomLedger::deadline));
        self.removals.values().map(|r| r.due).chain(oom).min()
    }

    pub fn facts(&self, unit: &UnitName) -> CgroupFacts {
        self.facts_of(unit, false)
    }

    /// `facts`, for a unit whose state says it is at rest (inactive, exited or failed: its
    /// last process is gone and its cgroup removed, or queued for removal): its usage is read
    /// only while a removal is pending. Looking for a cgroup that is not there costs a stat
    /// per hierarchy (7 on v1), most of a disabled unit's status.
    pub fn facts_of(&self, unit: &UnitName, at_rest: bool) -> CgroupFacts {
        let (Some(cgroups), Some(rel)) = (&self.cgroups, self.paths.get(unit)) else {
            return CgroupFacts {
                limits_reason: self.disabled.clone(),
                ..CgroupFacts::default()
            };
        };
        // `limits_enforced` covers the slices above the unit too (proto::UnitStatus): a cap on
        // a slice that did not take leaves the unit unbounded as well. Outermost slice first.
        // The slices are the ancestors of the unit's path (cgroup_plan::unit_cgroup names each
        // `<slice>.slice`): a walk up the path, not a scan of every unit's path, so a status of
        // N units costs N walks of a few components.
        let mut slices: Vec<UnitName> = rel
            .ancestors()
            .skip(1)
            .filter_map(|dir| {
                let stem = dir.file_name()?.to_str()?.strip_suffix(".slice")?;
                let name = UnitName::new(stem)?;
                (self.paths.get(&name).map(PathBuf::as_path) == Some(dir)).then_some(name)
            })
            .collect();
        slices.reverse();
        let problems: Vec<String> = slices
            .iter()
            .flat_map(|name| {
                let own = self.problems.get(name).into_iter().flatten();
                own.map(move |p| format!("slice {name}: {p}"))
            })
            .chain(self.problems.get(unit).into_iter().flatten().cloned())
            .collect();
        CgroupFacts {
            cgroup: Some(cgroups.display(rel)),
            limits_enforced: problems.is_empty(),
            limits_reason: (!problems.is_empty()).then(|| problems.join("; ")),
            // No `exists` first: a cgroup that is gone makes every read fail, which is the
            // same empty `Usage`, and a live unit's is there (a stat per v1 hierarchy saved).
            usage: if !at_rest || self.removals.contains_key(rel) {
                cgroups.usage(rel)
            } else {
                Usage::default()
            },
            frozen: self.frozen.contains(unit),
            warnings: self
                .high
                .get(unit)
                .and_then(HighWatch::active)
                .into_iter()
                .collect(),
        }
    }

    /// At exit: every unit cgroup, then the slices deepest first, then R if corral made it.
    pub fn teardown(&mut self) {
        let Some(cgroups) = &self.cgroups else {
            return;
        };
        // Pending removals too: a moved slice's old cgroup, a forgotten unit's.
        let mut paths: Vec<&PathBuf> = self.paths.values().chain(self.removals.keys()).collect();
        paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        // One wait for the whole tree: what a shutdown abandoned (frozen, in uninterruptible
        // sleep) keeps its cgroups busy, and each must not cost a wait of its own.
        let deadline = Instant::now() + LEFTOVER_WAIT;
        for rel in paths {
            if cgroups.exists(rel) {
                let _ = cgroup::kill_all(&**cgroups, rel);
                if let Err(e) = remove_when_empty(&**cgroups, rel, deadline) {
                    warn!("{e}");
                }
            }
        }
        if self.remove_root_at_exit
            && let Err(e) = remove_when_empty(&**cgroups, Path::new(""), deadline)
        {
            warn!("{e}");
        }
    }
}

/// The plan of `unit`, with what `previous` limited and `unit` no longer does set back to
/// "no limit" (and `memory.oom.group` cleared on v2 when group-kill was dropped).
fn lifting_plan(unit: &Unit, previous: &Unit, version: Version) -> cgroup_plan::Plan {
    let resources = cgroup_plan::lift_removed(&previous.resources, &unit.resources);
    let mut plan = cgroup_plan::plan(&resources, &unit.oom, version, &resolve_device);
    if previous.oom.group_kill && !unit.oom.group_kill && version == Version::V2 {
        plan.settings.push(cgroup_plan::Setting {
            controller: cgroup_plan::Controller::Memory,
            file: "memory.oom.group",
            value: "0".to_owned(),
            key: "oom.group-kill",
        });
    }
    plan
}

fn plan_for(unit: &Unit, version: Version) -> cgroup_plan::Plan {
    cgroup_plan::plan(&unit.resources, &unit.oom, version, &resolve_device)
}

/// `/dev/vda` -> (254, 0), by stat; the device must be a block device.
fn resolve_device(spec: &DeviceSpec) -> Result<(u32, u32), String> {
    match spec {
        DeviceSpec::Number { major, minor } => Ok((*major, *minor)),
        DeviceSpec::Path(path) => {
            let stat =
                nix::sys::stat::stat(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let kind = nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode)
                & nix::sys::stat::SFlag::S_IFMT;
            if kind != nix::sys::stat::SFlag::S_IFBLK {
                return Err(format!("{} is not a block device", path.display()));
            }
            Ok((
                nix::sys::stat::major(stat.st_rdev) as u32,
                nix::sys::stat::minor(stat.st_rdev) as u32,
            ))
        }
    }
}

fn report(unit: &UnitName, problems: &[String]) {
    for problem in problems {
        warn!(unit = %unit, "limit not enforced: {problem}");
    }
}

/// Kills what an earlier generation left and waits (bounded) until it is gone. Returns how many
/// processes were there. This blocks the loop, but only on this recovery path.
fn empty_leftovers(
    cgroups: &dyn cgroup::Backend,
    rel: &Path,
) -> Result<usize, cgroup::CgroupError> {
    let found = cgroups.procs(rel)?.len();
    if found > 0 {
        cgroup::kill_all(cgroups, rel)?;
        wait_empty(cgroups, rel, Instant::now() + LEFTOVER_WAIT)?;
    }
    Ok(found)
}

fn wait_empty(
    cgroups: &dyn cgroup::Backend,
    rel: &Path,
    deadline: Instant,
) -> Result<(), cgroup::CgroupError> {
    let mut pause = Duration::from_millis(1);
    while !cgroups.procs(rel)?.is_empty() && Instant::now() < deadline {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    Ok(())
}

fn remove_when_empty(
    cgroups: &dyn cgroup::Backend,
    rel: &Path,
    deadline: Instant,
) -> Result<(), String> {
    wait_empty(cgroups, rel, deadline).map_err(|e| e.to_string())?;
    match cgroups.remove(rel) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "cgroup {} still busy at exit",
            cgroups.display(rel)
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! Membership over a fake cgroup v2 tree in a temporary directory: the files a kernel would
    //! show, written by the test where the kernel would change them.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::core::fixtures::{name, service};
    use crate::core::oom::{ATTRIBUTION_WINDOW, COUNTER_GRACE};

    const R: &str = "corral-test";

    struct FakeTree {
        dir: tempfile::TempDir,
    }

    impl FakeTree {
        /// A v2 mount with R and one unit's cgroup already holding the kernel's files.
        fn new(unit: &str) -> FakeTree {
            let tree = FakeTree {
                dir: tempfile::tempdir().unwrap(),
            };
            for level in ["", R] {
                tree.write(level, "cgroup.controllers", "cpu memory pids");
                tree.write(level, "cgroup.subtree_control", "");
            }
            let service = format!("{R}/{unit}.service");
            for file in ["cgroup.procs", "memory.max", "memory.high", "pids.max"] {
                tree.write(&service, file, "");
            }
            tree.write(
                &service,
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            );
            tree.write(&service, "memory.current", "0\n");
            tree
        }

        fn write(&self, rel: &str, file: &str, text: &str) {
            let dir = self.dir.path().join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
        }

        fn read(&self, rel: &str, file: &str) -> String {
            std::fs::read_to_string(self.dir.path().join(rel).join(file)).unwrap()
        }

        fn members(&self, units: &[Unit]) -> Members {
            let mountinfo = format!(
                "29 23 0:26 / {} rw - cgroup2 cgroup2 rw,nsdelegate\n",
                self.dir.path().display()
            );
            let detected = cgroup::detect_from(
                &mountinfo,
                "0::/elsewhere\n",
                Some(Path::new(&format!("/{R}"))),
            );
            let units = units
                .iter()
                .map(|u| (u.name.clone(), std::sync::Arc::new(u.clone())))
                .collect();
            Members::with_detected(detected, true, &units)
        }

        fn set_oom_kills(&self, unit: &str, n: u64) {
            self.write(
                &format!("{R}/{unit}.service"),
                "memory.events",
                &format!("low 0\nhigh 0\nmax 0\noom {n}\noom_kill {n}\n"),
            );
        }
    }

    /// A fake tree with `web` (memory-max 32M, memory-high 16M) spawned into it.
    fn spawned_web() -> (FakeTree, Unit, Members) {
        let tree = FakeTree::new("web");
        let web = limited("web");
        let mut members = tree.members(std::slice::from_ref(&web));
        members.prepare_spawn(&web);
        (tree, web, members)
    }

    fn limited(n: &str) -> Unit {
        let mut unit = service(n);
        unit.resources.memory_max = Some(ByteLimit::Bytes(32 << 20));
        unit.resources.memory_high = Some(ByteLimit::Bytes(16 << 20));
        unit
    }

    #[test]
    fn a_spawn_writes_the_limits_and_opens_the_cgroup_to_join() {
        let tree = FakeTree::new("web");
        let web = limited("web");
        let mut members = tree.members(std::slice::from_ref(&web));
        let join = members.prepare_spawn(&web);
        assert!(!join.is_empty(), "a cgroup to join");
        assert_eq!(
            tree.read(&format!("{R}/web.service"), "memory.max"),
            "33554432"
        );
        assert_eq!(
            tree.read(&format!("{R}/web.service"), "memory.high"),
            "16777216"
        );
        let facts = members.facts(&name("web"));
        assert!(facts.limits_enforced, "{facts:?}");
    }

    #[test]
    fn a_wrapper_that_exits_right_after_its_workers_oom_kill_ended_by_oom() {
        let (tree, web, mut members) = spawned_web();
        let t0 = Instant::now();
        members.on_memory_event(&web.name, t0);
        tree.set_oom_kills("web", 1);
        let end = members.on_main_exit(&web.name, t0 + Duration::from_millis(20));
        assert_eq!((end.by_oom, end.fresh), (true, 1));
        assert_eq!(
            members.next_deadline(),
            None,
            "the reading is settled by the exit"
        );
    }

    #[test]
    fn a_kill_the_main_process_outlives_is_counted_once_and_is_not_its_end() {
        let (tree, web, mut members) = spawned_web();
        let t0 = Instant::now();
        members.on_memory_event(&web.name, t0);
        tree.set_oom_kills("web", 1);
        assert_eq!(members.next_deadline(), Some(t0 + COUNTER_GRACE));
        assert_eq!(
            members.spared_main_oom_kills(t0 + COUNTER_GRACE),
            vec![(name("web"), 1)]
        );
        let later = t0 + ATTRIBUTION_WINDOW * 10;
        let end = members.on_main_exit(&web.name, later);
        assert_eq!((end.by_oom, end.fresh), (false, 0));
    }

    #[test]
    fn a_counter_left_by_an_earlier_run_is_not_a_new_kill() {
        let tree = FakeTree::new("web");
        tree.set_oom_kills("web", 3);
        let web = limited("web");
        let mut members = tree.members(std::slice::from_ref(&web));
        members.prepare_spawn(&web);
        let end = members.on_main_exit(&web.name, Instant::now());
        assert_eq!((end.by_oom, end.fresh), (false, 0));
    }

    #[test]
    fn memory_above_memory_high_shows_as_a_warning_until_it_falls_back() {
        let (tree, web, mut members) = spawned_web();
        let rel = format!("{R}/web.service");
        let t0 = Instant::now();
        tree.write(&rel, "memory.current", &format!("{}\n", 20 << 20));
        members.on_memory_event(&web.name, t0);
        assert_eq!(
            members.facts(&web.name).warnings,
            ["memory above memory-high (16.0M)"]
        );
        tree.write(&rel, "memory.current", &format!("{}\n", 1 << 20));
        members.on_memory_event(&web.name, t0 + Duration::from_secs(1));
        assert!(members.facts(&web.name).warnings.is_empty());
    }
}
