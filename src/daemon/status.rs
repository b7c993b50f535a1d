//! Rendering the core's runtime facts as the protocol's `UnitStatus`.

use std::time::Instant;

use crate::core::exit::{ExitReport, Termination};
use crate::core::service::{Runtime, State};
use crate::proto::{LastExit, Limits, UnitStatus};
use crate::unit::{ByteLimit, Resources, Unit};

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
        last_exit: rt.last_exit.as_ref().map(last_exit),
        last_exit_status: rt.last_exit.as_ref().map(ExitReport::shell_code),
        cgroup: cgroup.cgroup,
        limits_enforced: cgroup.limits_enforced,
        limits_reason: cgroup.limits_reason,
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
        error: rt.error.clone(),
    }
}

pub fn last_exit(exit: &ExitReport) -> LastExit {
    match exit.termination {
        Termination::Exited(code) => LastExit {
            code: Some(code),
            signal: None,
            core_dumped: false,
            oom: exit.oom,
        },
        Termination::Signaled {
            signal,
            core_dumped,
        } => LastExit {
            code: None,
            signal: Some(crate::core::exit::signal_name(signal)),
            core_dumped,
            oom: exit.oom,
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
