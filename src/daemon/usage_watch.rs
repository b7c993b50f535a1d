//! Wiring of the limit warnings: when to sample a unit's cgroup (a kernel memory notification,
//! or a coarse timer armed only while some running unit has a limit no notification covers),
//! and logging what `core::limit_watch` makes of each sample.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::core::limit_watch::{Concern, Notice, Sample, Thresholds, UnitWatch};
use crate::core::pressure::Observation;
use crate::core::service::after;
use crate::core::supervisor::Input;
use crate::proto::Usage;
use crate::unit::{ByteLimit, Unit, UnitName};

use super::Daemon;

pub struct UsageWatch {
    pub thresholds: Thresholds,
    interval: Duration,
    units: HashMap<UnitName, UnitWatch>,
    /// The timer: armed only while some running unit needs sampling.
    next_sample: Option<Instant>,
}

impl UsageWatch {
    pub fn new(thresholds: Thresholds, interval: Duration) -> UsageWatch {
        UsageWatch {
            thresholds,
            interval,
            units: HashMap::new(),
            next_sample: None,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_sample
    }

    /// Limit warnings under way, worded for `status`.
    pub fn warnings(&self, unit: &UnitName) -> Vec<String> {
        self.units
            .get(unit)
            .map(UnitWatch::active)
            .unwrap_or_default()
    }

    /// The concerns under way (`memory`, `pids`, `cpu-throttling`).
    pub fn concerns(&self, unit: &UnitName) -> Vec<String> {
        let Some(watch) = self.units.get(unit) else {
            return Vec::new();
        };
        Concern::ALL
            .into_iter()
            .filter(|c| watch.is_active(*c))
            .map(|c| c.as_str().to_owned())
            .collect()
    }

    /// The unit's main process is gone: its episodes end with it, silently.
    pub fn forget(&mut self, unit: &UnitName) {
        self.units.remove(unit);
    }

    fn observe(&mut self, unit: &UnitName, usage: &Usage, now: Instant) {
        let sample = Sample {
            memory_current: usage.memory_current,
            memory_max: usage.memory_max,
            pids_current: usage.pids_current,
            pids_max: usage.pids_max,
            throttled_usec: usage.cpu_throttled_usec,
        };
        let watch = self.units.entry(unit.clone()).or_default();
        for notice in watch.observe(&sample, &self.thresholds, now) {
            match notice {
                Notice::Began { concern, message } => {
                    warn!(unit = %unit, concern = concern.as_str(), "near a limit: {message}")
                }
                Notice::Ended { concern, message } => {
                    info!(unit = %unit, concern = concern.as_str(), "no longer near a limit: {message}")
                }
            }
        }
    }
}

/// How often a unit with `[oom] usage-threshold` is sampled where the kernel has no usage
/// thresholds (v2), if `--usage-interval` is longer: acting before the OOM killer needs fresher
/// figures than a warning does (docs/units.md, "Acting before the OOM killer").
pub const PRESSURE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a running unit needs the timer: a limit whose approach no kernel notification
/// announces (pids-max, cpu-quota; memory-max where there are no usage thresholds, i.e. v2).
fn needs_timer(unit: &Unit, memory_notified: bool) -> bool {
    let r = &unit.resources;
    matches!(r.pids_max, Some(Some(_)))
        || r.cpu_quota.is_some()
        || (matches!(r.memory_max, Some(ByteLimit::Bytes(_))) && !memory_notified)
}

/// Whether the unit acts on its memory usage (`[oom] usage-threshold`).
fn has_usage_threshold(unit: &Unit) -> bool {
    unit.oom
        .pressure
        .as_ref()
        .is_some_and(|p| p.usage_percent.is_some())
}

impl Daemon {
    /// A kernel memory notification of `unit`: compare its figures now.
    pub(super) fn sample_unit(&mut self, unit: &UnitName, now: Instant) {
        if let Some(usage) = self.members.sample(unit) {
            self.usage_watch.observe(unit, &usage, now);
            self.observe_pressure_usage(unit, &usage, now);
        }
    }

    /// What tells corral of the unit's `[oom]` thresholds in this run, for `status`
    /// (`PressureStatus::watched_by`); empty when nothing runs or nothing can.
    pub(super) fn pressure_watched_by(&self, unit: &Unit) -> Vec<String> {
        let (Some(policy), Some(version)) = (&unit.oom.pressure, self.members.version()) else {
            return Vec::new();
        };
        let running = self
            .sup
            .get(&unit.name)
            .is_some_and(|(_, rt)| rt.pid.is_some());
        if !running {
            return Vec::new();
        }
        let mut by = Vec::new();
        if policy.psi.is_some() && self.generations.has_pressure_trigger(&unit.name) {
            by.push("psi-trigger".to_owned());
        }
        if policy.usage_percent.is_some() {
            if self.members.notifies_usage_threshold() {
                by.push("usage-thresholds".to_owned());
            } else {
                by.push("usage-sampled".to_owned());
                if version == crate::core::cgroup_plan::Version::V2
                    && matches!(unit.resources.memory_high, Some(ByteLimit::Bytes(_)))
                {
                    by.push("memory-events".to_owned());
                }
            }
        }
        by
    }

    /// The figures of a unit with `[oom] usage-threshold`, for its episode (core/pressure.rs).
    fn observe_pressure_usage(&mut self, unit: &UnitName, usage: &Usage, now: Instant) {
        let wanted = self
            .sup
            .get(unit)
            .is_some_and(|(u, _)| has_usage_threshold(u));
        if let (true, Some(current), Some(max)) = (wanted, usage.memory_current, usage.memory_max) {
            let observation = Observation::Usage { current, max };
            self.feed(
                Input::Pressure {
                    unit: unit.clone(),
                    observation,
                },
                now,
            );
        }
    }

    /// Samples every running unit the timer is for when it is due, then arms or disarms the
    /// timer: it runs only while some running unit needs it, so an idle corral never wakes.
    pub(super) fn sample_usage(&mut self, now: Instant) {
        let notified = self.members.notifies_memory_marks();
        let watched: Vec<UnitName> = if self.members.version().is_none() {
            Vec::new()
        } else {
            // Only units with a process: this runs every turn of the loop, and the units at
            // rest can be most of them (bench/analysis.md, "Scale").
            self.sup
                .with_process()
                .filter_map(|name| self.sup.get(name))
                .filter(|(unit, rt)| rt.pid.is_some() && needs_timer(unit, notified))
                .map(|(unit, _)| unit.name.clone())
                .collect()
        };
        if watched.is_empty() {
            self.usage_watch.next_sample = None;
            return;
        }
        let acting = !self.members.notifies_usage_threshold()
            && watched
                .iter()
                .any(|u| self.sup.get(u).is_some_and(|(u, _)| has_usage_threshold(u)));
        let interval = if acting {
            self.usage_watch.interval.min(PRESSURE_SAMPLE_INTERVAL)
        } else {
            self.usage_watch.interval
        };
        match self.usage_watch.next_sample {
            Some(due) if due <= now => {
                for unit in &watched {
                    self.sample_unit(unit, now);
                }
                debug!(units = watched.len(), "usage sampled");
                self.usage_watch.next_sample = Some(after(now, interval));
            }
            Some(due) if due > after(now, interval) => {
                // A unit that acts on its usage just started: the timer comes sooner.
                self.usage_watch.next_sample = Some(after(now, interval));
            }
            Some(_) => {}
            None => self.usage_watch.next_sample = Some(after(now, interval)),
        }
    }
}
