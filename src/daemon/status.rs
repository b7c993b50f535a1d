//! Rendering the core's runtime facts as the protocol's `UnitStatus`.

use std::time::Instant;

use crate::core::exit::{ExitReport, Termination};
use crate::core::service::{Runtime, State};
use crate::os::namespaces::KINDS;
use crate::proto::{
    HealthStatus, LastExit, Limits, NamespaceStatus, PressureStatus, UnitStatus, WaitingFor,
};
use crate::unit::{
    ByteLimit, Namespaces, PressureAction, Probe, ReadyMode, Resources, Unit, UnitName,
};

use super::clock::{Clock, millis};
use super::membership::CgroupFacts;

/// `pressure`: the unit's `[oom]` thresholds, and its episode; `watched_by` comes from the
/// daemon, which knows what it armed for this run.
pub fn pressure_status(
    unit: &Unit,
    rt: &Runtime,
    watched_by: Vec<String>,
    clock: &Clock,
    now: Instant,
) -> Option<PressureStatus> {
    let policy = unit.oom.pressure.as_ref()?;
    let watch = &rt.pressure;
    Some(PressureStatus {
        usage_threshold_percent: policy.usage_percent,
        pressure_threshold: policy.psi.map(|p| p.to_string()),
        sustain_ms: millis(policy.sustain),
        action: policy.action.as_str().to_owned(),
        signal: match policy.action {
            PressureAction::Signal(s) => Some(s.0.to_string()),
            _ => None,
        },
        cool_down_ms: millis(policy.cool_down),
        watched_by,
        usage_percent: watch
            .last_usage
            .map(|(current, max)| crate::core::pressure::share_of(current, max)),
        episode_since: watch
            .episode_since(Some(policy), now)
            .map(|at| clock.rfc3339(at)),
        actions: watch.actions,
        last_action: watch.last_action_at.map(|at| clock.rfc3339(at)),
    })
}

/// `waiting_for`: what the core says the unit waits for before it starts.
pub fn unit_status(
    unit: &Unit,
    rt: &Runtime,
    waiting_for: Vec<(UnitName, State)>,
    cgroup: CgroupFacts,
    clock: &Clock,
    now: Instant,
) -> UnitStatus {
    let has_cgroup = cgroup.cgroup.is_some();
    UnitStatus {
        name: unit.name.to_string(),
        kind: unit.kind.as_str().to_owned(),
        state: rt.state.as_str().to_owned(),
        description: unit.description.clone(),
        enabled: unit.enabled,
        pid: rt.pid,
        since: clock.rfc3339(rt.since),
        restarts: rt.restarts,
        oom_kills: rt.oom_kills,
        last_exit: rt.last_exit.as_ref().map(|exit| LastExit {
            reason: rt
                .last_exit_cause
                .map(|c| c.as_str().to_owned())
                .or_else(|| {
                    rt.last_exit_by_pressure
                        .then(|| "memory-pressure".to_owned())
                }),
            ..last_exit(exit)
        }),
        last_exit_status: rt.last_exit.as_ref().map(ExitReport::shell_code),
        cgroup: cgroup.cgroup,
        limits_enforced: cgroup.limits_enforced,
        limits_reason: cgroup.limits_reason.map(|reason| {
            // Without a cgroup of its own, every limit the unit asks for is lost: name them.
            let lost = crate::core::container::cgroup_keys(unit);
            if !has_cgroup && !lost.is_empty() {
                format!("{reason}; not enforced: {}", lost.join(", "))
            } else {
                reason
            }
        }),
        limits: limits(&unit.resources),
        usage: cgroup.usage,
        frozen: cgroup.frozen,
        warnings: cgroup.warnings,
        near_limits: Vec::new(),
        slice: unit.slice.as_ref().map(|s| s.to_string()),
        last_oom: rt.last_oom_at.map(|at| clock.rfc3339(at)),
        restart_in_ms: match (rt.state, rt.deadline()) {
            (State::Backoff, Some(at)) => Some(millis(at.saturating_duration_since(now))),
            _ => None,
        },
        namespaces: Vec::new(),
        ready: unit.exec.as_ref().map(|_| {
            match unit.readiness.mode {
                ReadyMode::Started => "started",
                ReadyMode::Notify => "notify",
                ReadyMode::LogLine => "log-line",
            }
            .to_owned()
        }),
        status_text: rt.notify_status.clone(),
        health: unit.health.as_ref().map(|h| HealthStatus {
            probe: h.probe.as_ref().map(|p| probe_text(&p.probe)),
            last_result: rt
                .probe
                .last
                .as_ref()
                .map(|r| if r.ok { "ok" } else { "failed" }.to_owned()),
            last_message: rt.probe.last.as_ref().map(|r| r.message.clone()),
            last_probe_at: rt.probe.last.as_ref().map(|r| clock.rfc3339(r.at)),
            consecutive_failures: rt.probe.failures,
            consecutive_successes: rt.probe.successes,
            watchdog_ms: rt.watchdog_timeout(unit).map(millis),
        }),
        waiting_for: waiting_for
            .into_iter()
            .map(|(unit, state)| WaitingFor {
                unit: unit.to_string(),
                state: state.as_str().to_owned(),
            })
            .collect(),
        pressure_restarts: rt.pressure_restarts,
        pressure: None,
        error: rt.error.clone(),
    }
}

/// Each namespace kind: asked for by the unit, and (when its main process runs, `theirs`)
/// whether it really differs from corral's.
pub fn namespace_status(
    asked: &Namespaces,
    theirs: Option<[Option<u64>; 7]>,
    ours: &[Option<u64>; 7],
) -> Vec<NamespaceStatus> {
    let requested = |kind: &str| match kind {
        "pid" => asked.pid,
        "net" => asked.net,
        "mount" => asked.mount,
        "uts" => asked.uts,
        "ipc" => asked.ipc,
        "user" => asked.user,
        "cgroup" => asked.cgroup,
        _ => false,
    };
    KINDS
        .iter()
        .enumerate()
        .map(|(i, (kind, _))| {
            let inode = theirs.and_then(|t| t[i]);
            NamespaceStatus {
                kind: (*kind).to_owned(),
                requested: requested(kind),
                inode,
                isolated: inode.map(|inode| ours[i] != Some(inode)),
            }
        })
        .collect()
}

fn probe_text(probe: &Probe) -> String {
    match probe {
        Probe::Exec(argv) => format!("exec {}", argv.join(" ")),
        Probe::Http(t) => format!("http http://{}{}", t.host, t.path),
        Probe::Tcp(addr) => format!("tcp {addr}"),
    }
}

pub fn last_exit(exit: &ExitReport) -> LastExit {
    match exit.termination {
        Termination::Exited(code) => LastExit {
            code: Some(code),
            signal: None,
            core_dumped: false,
            oom: exit.oom,
            status_unknown: false,
            reason: None,
        },
        Termination::Signaled {
            signal,
            core_dumped,
        } => LastExit {
            code: None,
            signal: Some(crate::core::exit::signal_name(signal)),
            core_dumped,
            oom: exit.oom,
            status_unknown: false,
            reason: None,
        },
        Termination::Unknown => LastExit {
            code: None,
            signal: None,
            core_dumped: false,
            oom: exit.oom,
            status_unknown: true,
            reason: None,
        },
    }
}

fn limits(r: &Resources) -> Limits {
    let bytes = |l: Option<ByteLimit>| match l {
        Some(ByteLimit::Bytes(n)) => Some(n),
        _ => None,
    };
    Limits {
        memory_max: bytes(r.memory_max),
        memory_high: bytes(r.memory_high),
        memory_swap_max: bytes(r.memory_swap_max),
        cpu_quota_percent: r.cpu_quota.map(|q| q.0),
        cpu_weight: r.cpu_weight,
        allowed_cpus: r.allowed_cpus.clone(),
        pids_max: r.pids_max.flatten(),
        io_weight: r.io_weight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_isolated_where_the_inode_differs_and_unknown_when_nothing_runs() {
        let asked = Namespaces {
            pid: true,
            net: true,
            ..Namespaces::default()
        };
        let ours = [
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            Some(6),
            Some(7),
        ];
        // The net namespace was asked for but is corral's: status must say so, not assume.
        let theirs = [Some(11), Some(2), Some(3), Some(4), Some(5), Some(6), None];
        let listed = namespace_status(&asked, Some(theirs), &ours);
        let row = |kind: &str| listed.iter().find(|n| n.kind == kind).unwrap().clone();
        assert_eq!(listed.len(), 7);
        assert_eq!(
            (row("pid").requested, row("pid").isolated),
            (true, Some(true))
        );
        assert_eq!(
            (row("net").requested, row("net").isolated),
            (true, Some(false))
        );
        assert_eq!(
            (row("uts").requested, row("uts").isolated),
            (false, Some(false))
        );
        assert_eq!(
            row("cgroup").isolated,
            None,
            "unreadable is unknown, not shared"
        );
        let stopped = namespace_status(&asked, None, &ours);
        assert!(
            stopped
                .iter()
                .all(|n| n.inode.is_none() && n.isolated.is_none())
        );
        assert!(stopped.iter().find(|n| n.kind == "pid").unwrap().requested);
    }
}
