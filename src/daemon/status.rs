//! Rendering the core's runtime facts as the protocol's `UnitStatus`.

use std::time::Instant;

use crate::core::exit::{ExitReport, Termination};
use crate::core::service::{Runtime, State};
use crate::proto::{LastExit, UnitStatus, Usage};
use crate::unit::Unit;

use super::clock::{Clock, millis};

/// Until the cgroup backend lands, membership is a process group and no limit is applied.
const NO_CGROUPS: &str = "this build does not manage cgroups yet";

pub fn unit_status(unit: &Unit, rt: &Runtime, clock: &Clock, now: Instant) -> UnitStatus {
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
        cgroup: None,
        limits_enforced: false,
        limits_reason: Some(NO_CGROUPS.to_owned()),
        usage: Usage::default(),
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
            signal: Some(signal.as_str().to_owned()),
            core_dumped,
            oom: exit.oom,
        },
    }
}
