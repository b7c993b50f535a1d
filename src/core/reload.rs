//! Reload as a pure diff: old units x new units -> what to start, stop, restart, re-limit.

use std::collections::{BTreeMap, BTreeSet};

use crate::core::cgroup_plan::unit_cgroup;
use crate::unit::{Unit, UnitKind, UnitName, UnitSet};

/// What a reload does to each unit. Every name of either set is in exactly one list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadPlan {
    pub added: Vec<UnitName>,
    pub removed: Vec<UnitName>,
    /// `[exec]` (user included), `[namespaces]`, `[sandbox]`, `slice` or `kind` changed.
    pub restarted: Vec<UnitName>,
    /// Only `[resources]` / `[oom]` changed (and perhaps settings that need no process
    /// change): the cgroup files are rewritten in place.
    pub relimited: Vec<UnitName>,
    /// Settings that take effect without touching the process (restart policy, stop
    /// timeout, ordering, description, enabled) changed.
    pub updated: Vec<UnitName>,
    pub unchanged: Vec<UnitName>,
}

impl ReloadPlan {
    pub fn is_noop(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.restarted.is_empty()
            && self.relimited.is_empty()
            && self.updated.is_empty()
    }
}

/// How one unit changed between two versions of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Restart,
    Relimit,
    Update,
    None,
}

/// docs/units.md, "What a reload restarts": what a process was started with decides a restart; limits are rewritten in place.
/// The same `Unit` (a reload that reused the parse of unchanged files: unit/cache.rs) is
/// `None` without comparing a field.
pub fn change(old: &Unit, new: &Unit) -> Change {
    if std::ptr::eq(old, new) {
        Change::None
    } else if old.exec != new.exec
        || old.namespaces != new.namespaces
        || old.sandbox != new.sandbox
        || old.slice != new.slice
        || old.kind != new.kind
        || old.readiness != new.readiness
        || old.health != new.health
    {
        Change::Restart
    } else if old.resources != new.resources || old.oom != new.oom {
        Change::Relimit
    } else if old != new {
        Change::Update
    } else {
        Change::None
    }
}

/// What a reload from the units `old` to `new` does to each.
pub fn diff<'a>(old: impl IntoIterator<Item = &'a Unit>, new: &UnitSet) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let old: BTreeMap<&UnitName, &Unit> = old.into_iter().map(|u| (&u.name, u)).collect();
    let old_parent = |n: &UnitName| old.get(n).and_then(|u| u.slice.clone());
    let new_parent = |n: &UnitName| new.get(n).and_then(|u| u.slice.clone());
    // Whether the cgroup of the slice `s` moved, once per slice.
    let mut slice_moved: BTreeMap<UnitName, bool> = BTreeMap::new();
    let mut moved_slice = |s: &UnitName| {
        *slice_moved.entry(s.clone()).or_insert_with(|| {
            unit_cgroup(s, UnitKind::Slice, &old_parent)
                != unit_cgroup(s, UnitKind::Slice, &new_parent)
        })
    };
    for (name, unit) in &old {
        let Some(next) = new.get(*name) else {
            plan.removed.push((*name).clone());
            continue;
        };
        // A slice moved above the unit moves its cgroup: only a restart puts the
        // processes there. (A unit whose own `slice` changed restarts anyway.)
        let moved = match (&unit.slice, &next.slice) {
            (Some(a), Some(b)) if a == b => moved_slice(a),
            _ => false,
        };
        let list = match change(unit, next.as_ref()) {
            _ if moved => &mut plan.restarted,
            Change::Restart => &mut plan.restarted,
            Change::Relimit => &mut plan.relimited,
            Change::Update => &mut plan.updated,
            Change::None => &mut plan.unchanged,
        };
        list.push((*name).clone());
    }
    // Every name of `new` that is not one of the old names kept is added: none when the
    // counts say so (the usual reload), without looking each up.
    let kept = old.len() - plan.removed.len();
    if new.len() > kept {
        plan.added = new
            .keys()
            .filter(|n| !old.contains_key(n))
            .cloned()
            .collect();
    }
    plan
}

/// Whether a slice, in `old` or in `new`, is among the `changed` names: its move can move the
/// cgroups of units that did not change, so whoever works from the changed names alone
/// (`diff_changed`, the daemon's cgroup paths) must look at every unit then.
pub fn a_slice_among<'a>(
    changed: &BTreeSet<UnitName>,
    old: impl Fn(&UnitName) -> Option<&'a Unit>,
    new: &UnitSet,
) -> bool {
    let is_slice = |u: Option<&Unit>| u.is_some_and(|u| u.kind == UnitKind::Slice);
    changed
        .iter()
        .any(|n| is_slice(old(n)) || is_slice(new.get(n).map(|u| &**u)))
}

/// [`diff`] computed from the names that may have changed alone: `changed` must name every
/// unit whose `old` and `new` versions are not the very same `Unit` (present in one set only,
/// or a different value); any other name may be in it too. Both sets are valid loads (each
/// `slice` names a slice of the same set, as the loader checks). The plan is the one `diff`
/// gives: each name of `changed` is classified as there, every other name of `new` is
/// unchanged, in name order. One exception needs every unit: a changed slice can move the
/// cgroup of units that did not change (a restart), so with a slice among the changed names
/// (old or new), the plan is `diff`'s own, over `all_old`.
pub fn diff_changed<'a, I>(
    old: impl Fn(&UnitName) -> Option<&'a Unit>,
    all_old: impl FnOnce() -> I,
    new: &UnitSet,
    changed: &BTreeSet<UnitName>,
) -> ReloadPlan
where
    I: IntoIterator<Item = &'a Unit>,
{
    if a_slice_among(changed, &old, new) {
        return diff(all_old(), new);
    }
    let mut plan = ReloadPlan::default();
    // Classified as `diff` does; with no slice changed, no slice's cgroup moved.
    let mut none = BTreeSet::new();
    for name in changed {
        match (old(name), new.get(name)) {
            (None, None) => {}
            (Some(_), None) => plan.removed.push(name.clone()),
            (None, Some(_)) => plan.added.push(name.clone()),
            (Some(was), Some(next)) => match change(was, next) {
                Change::Restart => plan.restarted.push(name.clone()),
                Change::Relimit => plan.relimited.push(name.clone()),
                Change::Update => plan.updated.push(name.clone()),
                Change::None => {
                    none.insert(name);
                }
            },
        }
    }
    // Every name of `new` kept (not in `changed`), and the changed ones found the same, in
    // name order: one walk of `new` beside the few changed names.
    let mut changed_iter = changed.iter().peekable();
    plan.unchanged = Vec::with_capacity(new.len());
    for name in new.keys() {
        while changed_iter.next_if(|c| *c < name).is_some() {}
        if changed_iter.next_if(|c| *c == name).is_some() {
            if none.contains(name) {
                plan.unchanged.push(name.clone());
            }
            continue;
        }
        plan.unchanged.push(name.clone());
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures::{name, service, unit};
    use crate::unit::{ByteLimit, RestartPolicy};
    use std::sync::Arc;

    fn set(units: Vec<Unit>) -> UnitSet {
        units
            .into_iter()
            .map(|u| (u.name.clone(), Arc::new(u)))
            .collect()
    }

    #[test]
    fn each_kind_of_edit_lands_in_its_list() {
        let old = vec![
            service("same"),
            service("cmd"),
            service("mem"),
            service("policy"),
            service("gone"),
            service("moved"),
            unit("pool", UnitKind::Slice),
        ];
        let mut cmd = service("cmd");
        if let Some(exec) = &mut cmd.exec {
            exec.command = vec!["false".into()];
        }
        let mut mem = service("mem");
        mem.resources.memory_max = Some(ByteLimit::Bytes(1 << 20));
        let mut policy = service("policy");
        policy.restart.policy = RestartPolicy::Always;
        let mut moved = service("moved");
        moved.slice = Some(name("pool"));
        let mut pool = unit("pool", UnitKind::Slice);
        pool.resources.pids_max = Some(Some(10));
        let new = set(vec![
            service("same"),
            cmd,
            mem,
            policy,
            moved,
            pool,
            service("new"),
        ]);
        let plan = diff(&old, &new);
        let names = |v: &Vec<UnitName>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&plan.added), vec!["new"]);
        assert_eq!(names(&plan.removed), vec!["gone"]);
        assert_eq!(names(&plan.restarted), vec!["cmd", "moved"]);
        assert_eq!(names(&plan.relimited), vec!["mem", "pool"]);
        assert_eq!(names(&plan.updated), vec!["policy"]);
        assert_eq!(names(&plan.unchanged), vec!["same"]);
        assert!(!plan.is_noop());
    }

    #[test]
    fn moving_a_slice_restarts_the_units_below_it() {
        let mut app = service("app");
        app.slice = Some(name("inner"));
        let old = vec![
            app.clone(),
            unit("inner", UnitKind::Slice),
            unit("outer", UnitKind::Slice),
        ];
        let mut inner = unit("inner", UnitKind::Slice);
        inner.slice = Some(name("outer"));
        let new = set(vec![app, inner, unit("outer", UnitKind::Slice)]);
        let plan = diff(&old, &new);
        let names = |v: &Vec<UnitName>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&plan.restarted), vec!["app", "inner"]);
        assert_eq!(names(&plan.unchanged), vec!["outer"]);
    }

    #[test]
    fn an_identical_set_is_a_noop() {
        let units = vec![service("a"), service("b")];
        let plan = diff(&units, &set(units.clone()));
        assert!(plan.is_noop());
        assert_eq!(plan.unchanged.len(), 2);
    }

    /// A reload that kept a unit's parse hands back the very `Unit` the supervisor holds: it is
    /// unchanged without a comparison; an equal copy is unchanged too, by comparison; and a
    /// kept unit below a slice that moved is still restarted.
    #[test]
    fn the_same_unit_is_unchanged_and_still_restarts_when_its_slice_moves() {
        let mut app = service("app");
        app.slice = Some(name("inner"));
        let app = Arc::new(app);
        let kept = Arc::new(service("kept"));
        let old = [
            Arc::clone(&app),
            Arc::clone(&kept),
            Arc::new(service("copied")),
            Arc::new(unit("inner", UnitKind::Slice)),
            Arc::new(unit("outer", UnitKind::Slice)),
        ];
        assert_eq!(change(&kept, &kept), Change::None);
        let mut inner = unit("inner", UnitKind::Slice);
        inner.slice = Some(name("outer"));
        let mut new = set(vec![
            service("copied"),
            inner,
            unit("outer", UnitKind::Slice),
        ]);
        new.insert(name("app"), Arc::clone(&app));
        new.insert(name("kept"), Arc::clone(&kept));
        let plan = diff(old.iter().map(|u| &**u), &new);
        let names = |v: &Vec<UnitName>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&plan.restarted), vec!["app", "inner"]);
        assert_eq!(names(&plan.unchanged), vec!["copied", "kept", "outer"]);
    }

    /// `diff_changed` from the names that changed (and one more that did not) against `diff`:
    /// each edit in its list, the kept units unchanged without a look; a slice among the
    /// changed names gives the full diff, which restarts a kept unit below a moved slice.
    #[test]
    fn the_changed_names_alone_give_the_full_diffs_plan() {
        let kept = [
            Arc::new(service("same")),
            Arc::new(service("kept")),
            Arc::new({
                let mut app = service("app");
                app.slice = Some(name("inner"));
                app
            }),
            Arc::new(unit("inner", UnitKind::Slice)),
            Arc::new(unit("outer", UnitKind::Slice)),
        ];
        let old: Vec<Arc<Unit>> = kept
            .iter()
            .cloned()
            .chain([Arc::new(service("cmd")), Arc::new(service("gone"))])
            .collect();
        let held: BTreeMap<UnitName, &Unit> = old.iter().map(|u| (u.name.clone(), &**u)).collect();
        let mut cmd = service("cmd");
        if let Some(exec) = &mut cmd.exec {
            exec.command = vec!["false".into()];
        }
        let mut new: UnitSet = kept
            .iter()
            .map(|u| (u.name.clone(), Arc::clone(u)))
            .collect();
        new.insert(name("cmd"), Arc::new(cmd));
        new.insert(name("new"), Arc::new(service("new")));
        let plan_of = |new: &UnitSet, changed: &BTreeSet<UnitName>| {
            diff_changed(
                |n| held.get(n).copied(),
                || old.iter().map(|u| &**u),
                new,
                changed,
            )
        };
        let changed: BTreeSet<UnitName> = ["cmd", "gone", "new", "same"].map(name).into();
        let partial = plan_of(&new, &changed);
        assert_eq!(partial, diff(old.iter().map(|u| &**u), &new));
        let names = |v: &Vec<UnitName>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(&partial.unchanged),
            ["app", "inner", "kept", "outer", "same"]
        );
        // `inner` moves below `outer`: `app`, kept, restarts with it.
        let mut inner = unit("inner", UnitKind::Slice);
        inner.slice = Some(name("outer"));
        new.insert(name("inner"), Arc::new(inner));
        let changed: BTreeSet<UnitName> = ["cmd", "gone", "inner", "new"].map(name).into();
        let partial = plan_of(&new, &changed);
        assert_eq!(partial, diff(old.iter().map(|u| &**u), &new));
        assert_eq!(names(&partial.restarted), ["app", "cmd", "inner"]);
    }

    #[test]
    fn a_user_change_restarts_and_a_limit_with_it_still_restarts() {
        let old = service("web");
        let mut new = service("web");
        new.resources.pids_max = Some(Some(5));
        if let Some(exec) = &mut new.exec {
            exec.env.insert("X".into(), "1".into());
        }
        assert_eq!(change(&old, &new), Change::Restart);
    }
}
