//! The Prometheus text exposition (format 0.0.4) of the units' status: the one renderer behind
//! `corral metrics` and `GET /metrics`. Every series is listed in `SERIES` and in docs/metrics.md.

use std::fmt::Write;

use crate::proto::UnitStatus;

/// One metric family: its name, Prometheus type and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> Series {
    Series {
        name,
        kind: "gauge",
        help,
    }
}

const fn counter(name: &'static str, help: &'static str) -> Series {
    Series {
        name,
        kind: "counter",
        help,
    }
}

/// Every series corral exports, in the order it renders them.
pub const SERIES: &[Series] = &[
    gauge(
        "corral_unit_info",
        "Always 1; the labels give the unit's kind and parent slice (empty at the root).",
    ),
    gauge(
        "corral_unit_state",
        "1 for the unit's current state, 0 for every other state of its kind.",
    ),
    counter(
        "corral_unit_restarts_total",
        "Restarts of the unit since corral started.",
    ),
    counter(
        "corral_unit_oom_kills_total",
        "OOM kills in the unit since corral started (a slice: the kernel's count for its cgroup).",
    ),
    gauge(
        "corral_unit_last_exit_status",
        "Shell-style status of the last exit: the code, or 128 + signal.",
    ),
    gauge(
        "corral_unit_near_limit",
        "1 while a limit warning episode of that concern is under way.",
    ),
    counter(
        "corral_unit_pressure_actions_total",
        "Actions taken by the unit's [oom] thresholds (warn, signal or restart) since corral started.",
    ),
    counter(
        "corral_unit_pressure_restarts_total",
        "Restarts by [oom] action = \"restart\" since corral started (not failures).",
    ),
    gauge(
        "corral_unit_pressure_usage_threshold_ratio",
        "[oom] usage-threshold as a share of memory-max.",
    ),
    gauge(
        "corral_unit_memory_bytes",
        "Memory charged to the unit's cgroup now.",
    ),
    gauge(
        "corral_unit_memory_peak_bytes",
        "Highest memory charged to the unit's cgroup.",
    ),
    gauge(
        "corral_unit_memory_max_bytes",
        "The memory limit in force in the kernel.",
    ),
    counter(
        "corral_unit_cpu_usage_seconds_total",
        "CPU time used by the unit's cgroup.",
    ),
    counter(
        "corral_unit_cpu_throttled_periods_total",
        "Quota periods in which the unit was throttled (nr_throttled).",
    ),
    counter(
        "corral_unit_cpu_throttled_seconds_total",
        "Time the unit's cgroup spent throttled by its CPU quota.",
    ),
    gauge(
        "corral_unit_cpu_quota_ratio",
        "The CPU quota: CPU time allowed per wall-clock time (1.5 is one and a half CPUs).",
    ),
    gauge(
        "corral_unit_pids",
        "Processes and threads in the unit's cgroup.",
    ),
    gauge(
        "corral_unit_pids_max",
        "The pids limit in force in the kernel.",
    ),
    counter(
        "corral_unit_io_read_bytes_total",
        "Bytes read from block devices.",
    ),
    counter(
        "corral_unit_io_write_bytes_total",
        "Bytes written to block devices.",
    ),
    counter(
        "corral_unit_io_read_ops_total",
        "Read operations on block devices.",
    ),
    counter(
        "corral_unit_io_write_ops_total",
        "Write operations on block devices.",
    ),
    gauge(
        "corral_unit_pressure_some_avg10_ratio",
        "PSI: share of the last 10 s in which some task of the unit waited for the resource.",
    ),
];

/// The states of a kind, for the enum-style `corral_unit_state`.
fn states_of(kind: &str) -> &'static [&'static str] {
    if kind == "slice" {
        &["active", "inactive"]
    } else {
        &[
            "inactive", "starting", "running", "stopping", "backoff", "exited", "failed",
        ]
    }
}

/// The concerns of `corral_unit_near_limit` (core::limit_watch::Concern).
const CONCERNS: [&str; 3] = ["memory", "pids", "cpu-throttling"];

/// A label value with `\`, `"` and newline escaped as the format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Renders every unit's figures; a series whose figure the kernel did not give is left out for
/// that unit.
pub fn render(units: &[UnitStatus]) -> String {
    let figures: Vec<Figures> = units.iter().map(Figures::of).collect();
    let mut out = String::new();
    for series in 0..SERIES.len() {
        write_head(series, &mut out);
        for unit in &figures {
            unit.write(series, &mut out);
        }
    }
    out
}

/// The `# HELP` and `# TYPE` lines of `SERIES[series]`.
pub fn write_head(series: usize, out: &mut String) {
    if let Some(s) = SERIES.get(series) {
        let _ = writeln!(out, "# HELP {} {}", s.name, s.help);
        let _ = writeln!(out, "# TYPE {} {}", s.name, s.kind);
    }
}

/// One unit's figures, kept as small as the text needs them: a large exposition is written
/// series by series (the format groups each family's samples), so every unit's figures are
/// held while the text is not (`corral metrics` streams it, docs/protocol.md).
#[derive(Debug, Clone)]
pub struct Figures {
    /// The `unit="..."` label, escaped.
    unit: Box<str>,
    kind: &'static str,
    slice: Box<str>,
    /// An index into `states_of(kind)`; none when the state is not one of its kind's.
    state: Option<u8>,
    /// The value of each single-sample series, by its index in `SERIES`.
    values: [Option<f64>; SERIES.len()],
    near: [bool; CONCERNS.len()],
    pressure: [Option<f64>; 3],
    /// `[oom]`'s action (`warn`, `signal`, `restart`) and how often it was taken.
    pressure_actions: Option<(Box<str>, f64)>,
}

impl Figures {
    pub fn of(u: &UnitStatus) -> Figures {
        let usage = &u.usage;
        // The kinds of docs/units.md; the label and the states follow from the kind.
        let kind = match u.kind.as_str() {
            "slice" => "slice",
            "oneshot" => "oneshot",
            _ => "service",
        };
        let mut values = [None; SERIES.len()];
        for (i, series) in SERIES.iter().enumerate() {
            let f = |v: Option<u64>| v.map(|v| v as f64);
            values[i] = match series.name {
                "corral_unit_restarts_total" => Some(f64::from(u.restarts)),
                "corral_unit_oom_kills_total" => {
                    if u.kind == "slice" {
                        f(usage.cgroup_oom_kills)
                    } else {
                        Some(f64::from(u.oom_kills))
                    }
                }
                "corral_unit_last_exit_status" => u.last_exit_status.map(f64::from),
                "corral_unit_memory_bytes" => f(usage.memory_current),
                "corral_unit_memory_peak_bytes" => f(usage.memory_peak),
                "corral_unit_memory_max_bytes" => f(usage.memory_max),
                "corral_unit_cpu_usage_seconds_total" => f(usage.cpu_usage_usec).map(|v| v / 1e6),
                "corral_unit_cpu_throttled_periods_total" => f(usage.nr_throttled),
                "corral_unit_cpu_throttled_seconds_total" => {
                    f(usage.cpu_throttled_usec).map(|v| v / 1e6)
                }
                "corral_unit_cpu_quota_ratio" => {
                    u.limits.cpu_quota_percent.map(|p| f64::from(p) / 100.0)
                }
                "corral_unit_pids" => f(usage.pids_current),
                "corral_unit_pids_max" => f(usage.pids_max),
                "corral_unit_io_read_bytes_total" => f(usage.io_read_bytes),
                "corral_unit_io_write_bytes_total" => f(usage.io_write_bytes),
                "corral_unit_io_read_ops_total" => f(usage.io_read_ops),
                "corral_unit_io_write_ops_total" => f(usage.io_write_ops),
                "corral_unit_pressure_restarts_total" => {
                    u.pressure.as_ref().map(|_| f64::from(u.pressure_restarts))
                }
                "corral_unit_pressure_usage_threshold_ratio" => u
                    .pressure
                    .as_ref()
                    .and_then(|p| p.usage_threshold_percent)
                    .map(|p| f64::from(p) / 100.0),
                _ => None,
            };
        }
        Figures {
            unit: escape(&u.name).into(),
            kind,
            slice: escape(u.slice.as_deref().unwrap_or_default()).into(),
            state: states_of(&u.kind)
                .iter()
                .position(|s| *s == u.state)
                .and_then(|i| u8::try_from(i).ok()),
            values,
            near: CONCERNS.map(|c| u.near_limits.iter().any(|n| n == c)),
            pressure: [usage.cpu_pressure, usage.memory_pressure, usage.io_pressure],
            pressure_actions: u.pressure.as_ref().map(|p| {
                let action = match &p.signal {
                    Some(_) => "signal",
                    None => p.action.as_str(),
                };
                (escape(action).into(), f64::from(p.actions))
            }),
        }
    }

    /// This unit's samples of `SERIES[series]`, one line each.
    pub fn write(&self, series: usize, out: &mut String) {
        let Some(Series { name, .. }) = SERIES.get(series) else {
            return;
        };
        let unit = &self.unit;
        match *name {
            "corral_unit_info" => {
                let _ = writeln!(
                    out,
                    "{name}{{unit=\"{unit}\",kind=\"{}\",slice=\"{}\"}} 1",
                    self.kind, self.slice
                );
            }
            "corral_unit_state" => {
                for (i, state) in states_of(self.kind).iter().enumerate() {
                    let on = self.state == u8::try_from(i).ok();
                    let _ = writeln!(
                        out,
                        "{name}{{unit=\"{unit}\",state=\"{state}\"}} {}",
                        u8::from(on)
                    );
                }
            }
            "corral_unit_near_limit" => {
                for (concern, on) in CONCERNS.iter().zip(self.near) {
                    let _ = writeln!(
                        out,
                        "{name}{{unit=\"{unit}\",concern=\"{concern}\"}} {}",
                        u8::from(on)
                    );
                }
            }
            "corral_unit_pressure_actions_total" => {
                if let Some((action, count)) = &self.pressure_actions {
                    let _ = writeln!(
                        out,
                        "{name}{{unit=\"{unit}\",action=\"{action}\"}} {}",
                        number(*count)
                    );
                }
            }
            "corral_unit_pressure_some_avg10_ratio" => {
                for (resource, percent) in ["cpu", "memory", "io"].iter().zip(self.pressure) {
                    if let Some(p) = percent {
                        let _ = writeln!(
                            out,
                            "{name}{{unit=\"{unit}\",resource=\"{resource}\"}} {}",
                            number(p / 100.0)
                        );
                    }
                }
            }
            _ => {
                if let Some(value) = self.values[series] {
                    let _ = writeln!(out, "{name}{{unit=\"{unit}\"}} {}", number(value));
                }
            }
        }
    }
}

/// Integers print without a fraction; everything else as Rust's shortest round-trip form.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Limits, Usage};

    fn unit(name: &str) -> UnitStatus {
        UnitStatus {
            name: name.to_owned(),
            kind: "service".to_owned(),
            state: "running".to_owned(),
            pid: Some(42),
            restarts: 2,
            oom_kills: 1,
            last_exit_status: Some(137),
            limits_enforced: true,
            limits: Limits {
                cpu_quota_percent: Some(150),
                ..Limits::default()
            },
            usage: Usage {
                memory_current: Some(1024),
                cpu_usage_usec: Some(1_500_000),
                memory_pressure: Some(2.5),
                ..Usage::default()
            },
            near_limits: vec!["memory".to_owned()],
            slice: Some("front".to_owned()),
            ..UnitStatus::default()
        }
    }

    #[test]
    fn renders_families_with_help_type_and_labels() {
        let text = render(&[unit("web")]);
        for line in [
            "# HELP corral_unit_memory_bytes Memory charged to the unit's cgroup now.",
            "# TYPE corral_unit_memory_bytes gauge",
            "corral_unit_memory_bytes{unit=\"web\"} 1024",
            "# TYPE corral_unit_restarts_total counter",
            "corral_unit_restarts_total{unit=\"web\"} 2",
            "corral_unit_info{unit=\"web\",kind=\"service\",slice=\"front\"} 1",
            "corral_unit_state{unit=\"web\",state=\"running\"} 1",
            "corral_unit_state{unit=\"web\",state=\"failed\"} 0",
            "corral_unit_cpu_usage_seconds_total{unit=\"web\"} 1.5",
            "corral_unit_cpu_quota_ratio{unit=\"web\"} 1.5",
            "corral_unit_last_exit_status{unit=\"web\"} 137",
            "corral_unit_near_limit{unit=\"web\",concern=\"memory\"} 1",
            "corral_unit_near_limit{unit=\"web\",concern=\"pids\"} 0",
            "corral_unit_pressure_some_avg10_ratio{unit=\"web\",resource=\"memory\"} 0.025",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Figures the kernel did not give are left out, not written as 0.
        assert!(!text.contains("corral_unit_pids_max{"), "{text}");
        assert!(!text.contains("resource=\"cpu\""), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_series_is_documented_and_every_documented_series_exists() {
        let docs = include_str!("../docs/metrics.md");
        let documented: Vec<&str> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `corral_"))
            .filter_map(|rest| rest.split('`').next())
            .collect();
        let ours: Vec<String> = SERIES
            .iter()
            .map(|s| s.name.trim_start_matches("corral_").to_owned())
            .collect();
        assert_eq!(
            documented, ours,
            "docs/metrics.md and metrics::SERIES differ"
        );
    }
}
