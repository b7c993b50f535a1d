//! The capability ladder: what the cgroup tree corral was given lets it enforce, the budget of
//! the container (or slice) it runs in, and what each unit loses where limits cannot be
//! enforced. Pure: the daemon reads the files (os/cgroup/access.rs) and logs the lines.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::core::cgroup_plan::Version;
use crate::core::graph::DepGraph;
use crate::proto::human_size;
use crate::unit::{ByteLimit, Unit, UnitKind, UnitName, UnitSet};

/// The rung corral stands on, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rung {
    /// corral made its cgroups: every limit is enforced.
    Writable,
    /// `/sys/fs/cgroup` is mounted read-only (a container runtime's default).
    ReadOnly,
    /// The tree is writable in principle but not by corral (not root, or not delegated).
    NoPermission,
    /// No cgroup file system corral can use (none mounted, or its own cgroup not visible).
    Unavailable,
}

impl Rung {
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Writable => "writable",
            Rung::ReadOnly => "read-only",
            Rung::NoPermission => "no-permission",
            Rung::Unavailable => "unavailable",
        }
    }

    /// How to climb to `Writable`, for the report.
    pub fn remedy(self) -> &'static str {
        match self {
            Rung::Writable => "",
            Rung::ReadOnly => {
                "give the container a writable cgroup tree: Docker `--security-opt writable-cgroups=true` \
                 (or --privileged), Podman `--security-opt unmask=/sys/fs/cgroup`, containerd 2.1 \
                 `cgroup_writable = true`, Kubernetes `securityContext.cgroupOptions.mountMode: Writable` \
                 (KEP-5474); see docs/container.md"
            }
            Rung::NoPermission => {
                "run corral as root, or delegate the subtree to its user (chown the cgroup directory and \
                 its cgroup.procs, cgroup.subtree_control); see docs/cgroups.md"
            }
            Rung::Unavailable => "mount a cgroup file system (cgroup2 at /sys/fs/cgroup)",
        }
    }
}

/// The limits in force above corral's units: the tightest of every level from R up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    pub memory_max: Option<u64>,
    /// CPU time per period, both in microseconds.
    pub cpu_quota: Option<(u64, u64)>,
    pub pids_max: Option<u64>,
    /// `cpuset.cpus.effective` (v2) or `cpuset.effective_cpus` (v1).
    pub cpus: Option<String>,
}

/// What detection found, rung by rung (docs/container.md, "The ladder").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    pub version: Option<Version>,
    pub rung: Rung,
    /// Why corral stands below `Writable`, as the kernel said it.
    pub reason: Option<String>,
    /// corral's cgroup reads `/`: the root of a private cgroup namespace (or of the host).
    pub at_namespace_root: bool,
    pub read_only_mount: bool,
    pub nsdelegate: bool,
    /// `cgroup.max.descendants` and `cgroup.max.depth` in force at R (v2), when not `max`.
    pub max_descendants: Option<u64>,
    pub max_depth: Option<u64>,
    pub budget: Budget,
}

impl Ladder {
    /// One line for the log and `status`: the rung and what was seen on the way.
    pub fn summary(&self) -> String {
        let version = match self.version {
            Some(Version::V1) => "cgroup v1",
            Some(Version::V2) => "cgroup v2",
            None => "no cgroups",
        };
        let mut seen = vec![version.to_owned()];
        if self.at_namespace_root {
            seen.push("corral's cgroup is / (a private cgroup namespace)".to_owned());
        }
        if self.read_only_mount {
            seen.push("mounted read-only".to_owned());
        }
        if self.nsdelegate {
            seen.push("nsdelegate".to_owned());
        }
        if let Some(n) = self.max_descendants {
            seen.push(format!("cgroup.max.descendants {n}"));
        }
        if let Some(n) = self.max_depth {
            seen.push(format!("cgroup.max.depth {n}"));
        }
        let budget = self.budget.describe();
        if !budget.is_empty() {
            seen.push(format!("budget {budget}"));
        }
        let mut line = format!("cgroups {}: {}", self.rung.as_str(), seen.join(", "));
        if let Some(reason) = &self.reason {
            line.push_str(&format!(" ({reason})"));
        }
        line
    }
}

impl Budget {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.memory_max {
            parts.push(format!("memory.max {}", human_size(m)));
        }
        if let Some((quota, period)) = self.cpu_quota {
            parts.push(format!("cpu {}%", quota * 100 / period.max(1)));
        }
        if let Some(p) = self.pids_max {
            parts.push(format!("pids.max {p}"));
        }
        if let Some(c) = &self.cpus {
            parts.push(format!("cpus {c}"));
        }
        parts.join(", ")
    }
}

/// The keys of `unit` that only a cgroup enforces, as the unit file spells them.
pub fn cgroup_keys(unit: &Unit) -> Vec<&'static str> {
    let r = &unit.resources;
    let set = [
        ("cpu-quota", r.cpu_quota.is_some()),
        ("cpu-weight", r.cpu_weight.is_some()),
        ("allowed-cpus", r.allowed_cpus.is_some()),
        ("memory-max", r.memory_max.is_some()),
        ("memory-high", r.memory_high.is_some()),
        ("memory-swap-max", r.memory_swap_max.is_some()),
        ("pids-max", r.pids_max.is_some()),
        ("io-weight", r.io_weight.is_some()),
        ("io", !r.io.is_empty()),
        ("oom.group-kill", unit.oom.group_kill),
    ];
    set.into_iter()
        .filter_map(|(key, on)| on.then_some(key))
        .collect()
}

/// Below `Writable`: one line naming, per unit, the keys that are not enforced, and the switch
/// that would enforce them. `None` when nothing is lost.
pub fn unenforced_report(ladder: &Ladder, units: &UnitSet) -> Option<String> {
    if ladder.rung == Rung::Writable {
        return None;
    }
    let lost: Vec<String> = units
        .values()
        .filter_map(|u| {
            let keys = cgroup_keys(u);
            (!keys.is_empty()).then(|| format!("{}: {}", u.name, keys.join(", ")))
        })
        .collect();
    if lost.is_empty() {
        return None;
    }
    Some(format!(
        "not enforced: {}; to enforce them, {}",
        lost.join("; "),
        ladder.rung.remedy()
    ))
}

/// Warnings about units that cannot fit the budget: a unit's limit above the container's, a
/// sum of memory-max over it (an OOM of the whole container then kills corral too), and more
/// cgroups or levels than `cgroup.max.descendants` / `max.depth` allow.
pub fn budget_warnings(ladder: &Ladder, units: &UnitSet) -> Vec<String> {
    let mut warnings = Vec::new();
    let bytes = |l: Option<ByteLimit>| match l {
        Some(ByteLimit::Bytes(n)) => Some(n),
        _ => None,
    };
    if let Some(budget) = ladder.budget.memory_max {
        let mut sum: u64 = 0;
        for unit in units.values() {
            let Some(max) = bytes(unit.resources.memory_max) else {
                continue;
            };
            if unit.kind != UnitKind::Slice {
                sum = sum.saturating_add(max);
            }
            if max > budget {
                warnings.push(format!(
                    "{}: memory-max {} is above the {} corral runs in (memory.max {}): the tighter one applies",
                    unit.name,
                    human_size(max),
                    container_word(ladder),
                    human_size(budget)
                ));
            }
        }
        if sum > budget {
            warnings.push(format!(
                "the units' memory-max add up to {}, above the {}'s memory.max {}: if they all grow, \
                 the kernel OOM-kills inside the whole {}, corral included",
                human_size(sum),
                container_word(ladder),
                human_size(budget),
                container_word(ladder)
            ));
        }
    }
    if let Some(budget) = ladder.budget.pids_max {
        for unit in units.values() {
            if let Some(Some(max)) = unit.resources.pids_max
                && max > budget
            {
                warnings.push(format!(
                    "{}: pids-max {max} is above the {}'s pids.max {budget}: the tighter one applies",
                    unit.name,
                    container_word(ladder)
                ));
            }
        }
    }
    // corral.scope, one cgroup per unit and per slice.
    let cgroups = u64::try_from(units.len())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    if let Some(limit) = ladder.max_descendants
        && cgroups > limit
    {
        warnings.push(format!(
            "{cgroups} cgroups are needed (one per unit and slice, and corral.scope), but cgroup.max.descendants is {limit}: the last units to start cannot get one"
        ));
    }
    if let Some(limit) = ladder.max_depth {
        let depth = units
            .values()
            .map(|u| slice_depth(u, units) + 1)
            .max()
            .unwrap_or(0);
        if depth > limit {
            warnings.push(format!(
                "the deepest unit is {depth} cgroups below corral's root, but cgroup.max.depth is {limit}"
            ));
        }
    }
    warnings
}

fn container_word(ladder: &Ladder) -> &'static str {
    if ladder.at_namespace_root {
        "container"
    } else {
        "cgroup"
    }
}

fn slice_depth(unit: &Unit, units: &UnitSet) -> u64 {
    let mut depth = 0;
    let mut next = unit.slice.as_ref();
    // Bounded by the number of units: slice cycles are rejected at load, but never loop.
    while let Some(name) = next
        && depth <= units.len() as u64
    {
        depth += 1;
        next = units.get(name).and_then(|u| u.slice.as_ref());
    }
    depth
}

/// The longest time a shutdown can take: stops run in reverse dependency order, each unit
/// after its dependents, so the worst case is the heaviest chain of stop timeouts. Returns it
/// with the chain, dependents first.
pub fn longest_stop_chain(units: &UnitSet) -> (Duration, Vec<UnitName>) {
    let mut graph = DepGraph::new();
    for unit in units.values().filter(|u| u.kind != UnitKind::Slice) {
        graph.add_node(unit.name.clone());
        for dep in unit.after.iter().chain(&unit.requires) {
            if units.contains_key(dep) {
                graph.add_edge(unit.name.clone(), dep.clone());
            }
        }
    }
    let Ok(order) = graph.topological_order() else {
        return (Duration::ZERO, Vec::new());
    };
    // Dependencies come first in `order`; the chain ending at a unit is its own timeout plus
    // the heaviest chain of the units it depends on (stopped after it).
    let mut best: BTreeMap<UnitName, (Duration, Vec<UnitName>)> = BTreeMap::new();
    for name in order {
        let own = units.get(&name).map_or(Duration::ZERO, |u| u.stop.timeout);
        let (below, mut chain) = graph
            .dependencies_of(&name)
            .filter_map(|d| best.get(d))
            .max_by_key(|(d, _)| *d)
            .cloned()
            .unwrap_or_default();
        chain.insert(0, name.clone());
        best.insert(name, (below.saturating_add(own), chain));
    }
    best.into_values()
        .max_by_key(|(d, _)| *d)
        .unwrap_or_default()
}

/// A warning when a shutdown may outlast the runtime's grace period: the longest chain of stop
/// timeouts, plus the leftovers' `--shutdown-timeout`, against `grace`.
pub fn grace_warning(
    units: &UnitSet,
    grace: Duration,
    shutdown_timeout: Duration,
) -> Option<String> {
    let (chain_time, chain) = longest_stop_chain(units);
    let worst = chain_time.saturating_add(shutdown_timeout);
    (worst > grace).then(|| {
        let names: Vec<&str> = chain.iter().map(UnitName::as_str).collect();
        format!(
            "a shutdown may take {} (stop timeouts along {}, then --shutdown-timeout {}), longer \
             than the grace period {}: the runtime's SIGKILL would cut it short; shorten the \
             units' [stop] timeout or lengthen the grace period",
            humantime::format_duration(worst),
            names.join(" -> "),
            humantime::format_duration(shutdown_timeout),
            humantime::format_duration(grace)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures::{name, service, unit};

    const MIB: u64 = 1 << 20;

    fn units(list: Vec<Unit>) -> UnitSet {
        list.into_iter()
            .map(|u| (u.name.clone(), std::sync::Arc::new(u)))
            .collect()
    }

    fn ladder(rung: Rung) -> Ladder {
        Ladder {
            version: Some(Version::V2),
            rung,
            reason: None,
            at_namespace_root: true,
            read_only_mount: rung == Rung::ReadOnly,
            nsdelegate: true,
            max_descendants: None,
            max_depth: None,
            budget: Budget::default(),
        }
    }

    fn limited(n: &str, memory_mib: u64) -> Unit {
        let mut u = service(n);
        u.resources.memory_max = Some(ByteLimit::Bytes(memory_mib * MIB));
        u
    }

    #[test]
    fn each_rung_below_writable_names_the_lost_keys_and_its_remedy() {
        let mut web = limited("web", 64);
        web.resources.pids_max = Some(Some(32));
        let set = units(vec![web, service("plain")]);
        assert_eq!(unenforced_report(&ladder(Rung::Writable), &set), None);
        for (rung, remedy) in [
            (Rung::ReadOnly, "writable-cgroups=true"),
            (Rung::NoPermission, "run corral as root"),
            (Rung::Unavailable, "mount a cgroup file system"),
        ] {
            let report = unenforced_report(&ladder(rung), &set).unwrap();
            assert!(
                report.starts_with("not enforced: web: memory-max, pids-max; to enforce them, "),
                "{report}"
            );
            assert!(report.contains(remedy), "{rung:?}: {report}");
            assert!(
                !report.contains("plain"),
                "a unit without limits loses nothing"
            );
        }
        // Units that ask for no limits lose nothing on any rung.
        let plain = units(vec![service("plain")]);
        assert_eq!(unenforced_report(&ladder(Rung::ReadOnly), &plain), None);
    }

    #[test]
    fn the_summary_says_what_each_rung_saw() {
        let mut l = ladder(Rung::ReadOnly);
        l.reason = Some("creating /sys/fs/cgroup/corral.scope: Read-only file system".into());
        l.max_descendants = Some(250);
        l.budget.memory_max = Some(512 * MIB);
        assert_eq!(
            l.summary(),
            "cgroups read-only: cgroup v2, corral's cgroup is / (a private cgroup namespace), \
             mounted read-only, nsdelegate, cgroup.max.descendants 250, budget memory.max 512.0M \
             (creating /sys/fs/cgroup/corral.scope: Read-only file system)"
        );
    }

    #[test]
    fn units_over_the_budget_are_warned_about_with_both_numbers() {
        let mut l = ladder(Rung::Writable);
        l.budget.memory_max = Some(256 * MIB);
        l.budget.pids_max = Some(100);
        let mut big = limited("big", 512);
        big.resources.pids_max = Some(Some(1000));
        let set = units(vec![big, limited("small", 64)]);
        let warnings = budget_warnings(&l, &set);
        assert_eq!(
            warnings,
            [
                "big: memory-max 512.0M is above the container corral runs in (memory.max 256.0M): the tighter one applies",
                "the units' memory-max add up to 576.0M, above the container's memory.max 256.0M: if they all grow, the kernel OOM-kills inside the whole container, corral included",
                "big: pids-max 1000 is above the container's pids.max 100: the tighter one applies",
            ]
        );
        // Inside the budget: nothing to say.
        let fits = units(vec![limited("a", 100), limited("b", 100)]);
        assert!(budget_warnings(&l, &fits).is_empty());
    }

    #[test]
    fn cgroup_counts_and_depth_are_checked_against_the_kernels_caps() {
        let mut l = ladder(Rung::Writable);
        l.max_descendants = Some(2);
        l.max_depth = Some(1);
        let mut inner = service("inner");
        inner.slice = Some(name("outer"));
        let set = units(vec![inner, unit("outer", UnitKind::Slice)]);
        let warnings = budget_warnings(&l, &set);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("3 cgroups are needed"), "{warnings:?}");
        assert!(warnings[1].contains("2 cgroups below"), "{warnings:?}");
    }

    #[test]
    fn the_longest_stop_chain_adds_timeouts_along_dependencies() {
        let secs = Duration::from_secs;
        let mut db = service("db");
        db.stop.timeout = secs(20);
        let mut app = service("app");
        app.requires = vec![name("db")];
        app.stop.timeout = secs(15);
        let mut web = service("web");
        web.after = vec![name("app")];
        web.stop.timeout = secs(5);
        let mut side = service("side");
        side.stop.timeout = secs(30);
        let set = units(vec![db, app, web, side]);
        let (total, chain) = longest_stop_chain(&set);
        assert_eq!(total, secs(40));
        assert_eq!(chain, [name("web"), name("app"), name("db")]);
        // Against Kubernetes' default 30 s grace: warned, naming the chain; 60 s is enough.
        let warning = grace_warning(&set, secs(30), secs(10)).unwrap();
        assert!(
            warning.starts_with("a shutdown may take 50s (stop timeouts along web -> app -> db"),
            "{warning}"
        );
        assert_eq!(grace_warning(&set, secs(60), secs(10)), None);
    }
}
