//! `corral export`: a units directory translated into another platform's objects (Kubernetes,
//! systemd), pure functions of the validated units with a warning for every key the target
//! cannot express.

pub mod k8s;
pub mod systemd;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::core::graph::dependency_graph;
use crate::unit::{ByteLimit, Unit, UnitKind, UnitName, UnitSet};

/// A key of a unit that the target platform cannot express, or expresses only approximately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The unit the key belongs to; `None` for a property of the whole set (its dependency graph).
    pub unit: Option<UnitName>,
    /// The key as a dotted path, as diagnostics write it (`resources.memory-high`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.unit {
            Some(unit) => write!(f, "{unit}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// The warnings of one export, in the order they were found.
#[derive(Debug, Default)]
pub(crate) struct Warnings(Vec<Warning>);

impl Warnings {
    fn unit(&mut self, unit: &UnitName, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Warning {
            unit: Some(unit.clone()),
            key: key.into(),
            message: message.into(),
        });
    }

    fn global(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Warning {
            unit: None,
            key: key.into(),
            message: message.into(),
        });
    }

    fn into_vec(self) -> Vec<Warning> {
        self.0
    }
}

/// The units an export carries: every enabled service and oneshot, and whatever they `require`
/// (corral starts a required unit even when it is disabled). Slices are not in this set.
pub(crate) fn started_units(units: &UnitSet) -> BTreeSet<UnitName> {
    let mut todo: Vec<&UnitName> = units
        .values()
        .filter(|u| u.kind != UnitKind::Slice && u.enabled)
        .map(|u| &u.name)
        .collect();
    let mut started = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !started.insert(name.clone()) {
            continue;
        }
        if let Some(unit) = units.get(name) {
            todo.extend(
                unit.requires
                    .iter()
                    .filter(|r| units.get(*r).is_some_and(|u| u.kind != UnitKind::Slice)),
            );
        }
    }
    started
}

/// The units `unit` waits for before it starts, slices left out (ordering against a slice has
/// no effect, and the loader already warned).
pub(crate) fn start_deps<'a>(unit: &'a Unit, units: &'a UnitSet) -> BTreeSet<&'a UnitName> {
    unit.ordering_deps()
        .filter(|d| units.get(*d).is_some_and(|u| u.kind != UnitKind::Slice))
        .collect()
}

/// How long an orderly shutdown of `units` can take: corral stops dependents before what they
/// depend on, units side by side at once, so the worst case is the heaviest chain of stop
/// timeouts through the dependency graph (slices take no time of their own).
pub(crate) fn shutdown_chain(units: &UnitSet) -> Duration {
    let graph = dependency_graph(units);
    // A validated set has no cycle; should one slip through, the plain sum bounds every chain.
    let Ok(order) = graph.topological_order() else {
        return units.values().map(|u| stop_time(u)).sum();
    };
    let mut longest: BTreeMap<&UnitName, Duration> = BTreeMap::new();
    for name in &order {
        let Some(unit) = units.get(name) else {
            continue;
        };
        let before = graph
            .dependencies_of(name)
            .filter_map(|d| longest.get(d))
            .max()
            .copied()
            .unwrap_or_default();
        longest.insert(name, before + stop_time(unit));
    }
    longest.values().max().copied().unwrap_or_default()
}

fn stop_time(unit: &Unit) -> Duration {
    match unit.kind {
        UnitKind::Slice => Duration::ZERO,
        UnitKind::Service | UnitKind::Oneshot => unit.stop.timeout,
    }
}

/// Whole seconds, rounded up: both platforms count some timeouts in seconds, and rounding down
/// would make a timeout shorter than the unit asked for.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A byte count in the largest binary unit that divides it (`256Mi`), as both Kubernetes
/// quantities and systemd sizes (with `binary_suffixes`) take it.
pub(crate) fn binary_size(bytes: u64, suffixes: [&str; 4]) -> String {
    const UNITS: [u64; 4] = [1 << 40, 1 << 30, 1 << 20, 1 << 10];
    for (unit, suffix) in UNITS.iter().zip(suffixes) {
        if bytes >= *unit && bytes.is_multiple_of(*unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// The default restart tuning of a unit's kind, to tell the keys a unit set from the defaults.
fn restart_tuning_is_default(unit: &Unit) -> bool {
    let d = crate::unit::RestartConfig::default_for(unit.kind);
    let r = &unit.restart;
    r.delay == d.delay
        && r.max_delay == d.max_delay
        && r.reset_after == d.reset_after
        && r.start_limit_burst == d.start_limit_burst
        && r.start_limit_interval == d.start_limit_interval
}

pub(crate) fn byte_limit(limit: ByteLimit) -> Option<u64> {
    match limit {
        ByteLimit::Bytes(n) => Some(n),
        ByteLimit::Max => None,
    }
}

#[cfg(test)]
mod tests;
