//! Rendering the core's runtime facts as the protocol's `UnitStatus`.

use std::time::Instant;

use crate::core::exit::{ExitReport, Termination};
use crate::core::service::{Runtime, State};
use crate::proto::{HealthStatus, LastExit, Limits, UnitStatus};
use crate::unit::{ByteLimit, Probe, ReadyMode, Resources, Unit};

use super::clock::{Clock, millis};
use super::membership::CgroupFacts;

pub fn unit_status(
    unit: &Unit,
    rt: &Runtime,
    cgroup: CgroupFacts,
    clock: &Clock,
    now: Instant,
) -> UnitStatus {
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
            reason: rt.last_exit_cause.map(|c| c.as_str().to_owned()),
            ..last_exit(exit)
        }),
        last_exit_status: rt.last_exit.as_ref().map(ExitReport::shell_code),
        cgroup: cgroup.cgroup,
        limits_enforced: cgroup.limits_enforced,
        limits_reason: cgroup.limits_reason,
        limits: limits(&unit.resources),
        usage: cgroup.usage,
        frozen: cgroup.frozen,
        warnings: cgroup.warnings,
        last_oom: rt.last_oom_at.map(|at| clock.rfc3339(at)),
        restart_in_ms: match (rt.state, rt.deadline()) {
            (State::Backoff, Some(at)) => Some(millis(at.saturating_duration_since(now))),
            _ => None,
        },
        ready: unit.exec.as_ref().map(|_| {
            match unit.readiness.mode {
                ReadyMode::Started => "started",
                ReadyMode::Notify => "notify",
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
        error: rt.error.clone(),
    }
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
