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
    let mut out = String::new();
    for series in SERIES {
        let _ = writeln!(out, "# HELP {} {}", series.name, series.help);
        let _ = writeln!(out, "# TYPE {} {}", series.name, series.kind);
        for unit in units {
            for (labels, value) in samples(series.name, unit) {
                let mut label_text = format!("unit=\"{}\"", escape(&unit.name));
                for (key, val) in labels {
                    let _ = write!(label_text, ",{key}=\"{}\"", escape(&val));
                }
                let _ = writeln!(out, "{}{{{label_text}}} {}", series.name, number(value));
            }
        }
    }
    out
}

/// Integers print without a fraction; everything else as Rust's shortest round-trip form.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

type Labels = Vec<(&'static str, String)>;

fn samples(name: &str, u: &UnitStatus) -> Vec<(Labels, f64)> {
    let usage = &u.usage;
    let plain = |v: Option<u64>| v.map(|v| (Vec::new(), v as f64)).into_iter().collect();
    let seconds = |usec: Option<u64>| {
        usec.map(|v| (Vec::new(), v as f64 / 1e6))
            .into_iter()
            .collect()
    };
    match name {
        "corral_unit_info" => vec![(
            vec![
                ("kind", u.kind.clone()),
                ("slice", u.slice.clone().unwrap_or_default()),
            ],
            1.0,
        )],
        "corral_unit_state" => states_of(&u.kind)
            .iter()
            .map(|s| {
                (
                    vec![("state", (*s).to_owned())],
                    if *s == u.state { 1.0 } else { 0.0 },
                )
            })
            .collect(),
        "corral_unit_restarts_total" => plain(Some(u64::from(u.restarts))),
        "corral_unit_oom_kills_total" => plain(if u.kind == "slice" {
            usage.cgroup_oom_kills
        } else {
            Some(u64::from(u.oom_kills))
        }),
        "corral_unit_last_exit_status" => u
            .last_exit_status
            .map(|s| (Vec::new(), f64::from(s)))
            .into_iter()
            .collect(),
        "corral_unit_near_limit" => CONCERNS
            .iter()
            .map(|c| {
                let on = u.near_limits.iter().any(|n| n == c);
                (
                    vec![("concern", (*c).to_owned())],
                    if on { 1.0 } else { 0.0 },
                )
            })
            .collect(),
        "corral_unit_pressure_actions_total" => u
            .pressure
            .as_ref()
            .map(|p| {
                let action = match &p.signal {
                    Some(_) => "signal",
                    None => p.action.as_str(),
                };
                (vec![("action", action.to_owned())], f64::from(p.actions))
            })
            .into_iter()
            .collect(),
        "corral_unit_pressure_restarts_total" => u
            .pressure
            .as_ref()
            .map(|_| (Vec::new(), f64::from(u.pressure_restarts)))
            .into_iter()
            .collect(),
        "corral_unit_pressure_usage_threshold_ratio" => u
            .pressure
            .as_ref()
            .and_then(|p| p.usage_threshold_percent)
            .map(|p| (Vec::new(), f64::from(p) / 100.0))
            .into_iter()
            .collect(),
        "corral_unit_memory_bytes" => plain(usage.memory_current),
        "corral_unit_memory_peak_bytes" => plain(usage.memory_peak),
        "corral_unit_memory_max_bytes" => plain(usage.memory_max),
        "corral_unit_cpu_usage_seconds_total" => seconds(usage.cpu_usage_usec),
        "corral_unit_cpu_throttled_periods_total" => plain(usage.nr_throttled),
        "corral_unit_cpu_throttled_seconds_total" => seconds(usage.cpu_throttled_usec),
        "corral_unit_cpu_quota_ratio" => u
            .limits
            .cpu_quota_percent
            .map(|p| (Vec::new(), f64::from(p) / 100.0))
            .into_iter()
            .collect(),
        "corral_unit_pids" => plain(usage.pids_current),
        "corral_unit_pids_max" => plain(usage.pids_max),
        "corral_unit_io_read_bytes_total" => plain(usage.io_read_bytes),
        "corral_unit_io_write_bytes_total" => plain(usage.io_write_bytes),
        "corral_unit_io_read_ops_total" => plain(usage.io_read_ops),
        "corral_unit_io_write_ops_total" => plain(usage.io_write_ops),
        "corral_unit_pressure_some_avg10_ratio" => [
            ("cpu", usage.cpu_pressure),
            ("memory", usage.memory_pressure),
            ("io", usage.io_pressure),
        ]
        .into_iter()
        .filter_map(|(resource, percent)| {
            percent.map(|p| (vec![("resource", resource.to_owned())], p / 100.0))
        })
        .collect(),
        _ => Vec::new(),
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
