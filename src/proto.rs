//! The control socket's protocol: one JSON object per line each way (see docs/protocol.md).

use serde::{Deserialize, Serialize};

/// Longest request line the supervisor reads; longer requests are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    Status,
    Start,
    Stop,
    Restart,
    Kill,
    Freeze,
    Thaw,
    Reload,
    Logs,
    Shutdown,
    /// The Prometheus text exposition of every unit (see docs/metrics.md).
    Metrics,
    /// Runtime instances of a template made exactly `TEMPLATE1..TEMPLATEN` (`count`).
    Scale,
    /// Answered once the named units (none: every enabled unit) are ready, or at `timeout_ms`.
    WaitReady,
}

impl Verb {
    /// Verbs a `--socket-group` peer may use: they read, never change.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Verb::Status | Verb::Logs | Verb::Metrics | Verb::WaitReady
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub verb: Verb,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<String>,
    /// start/stop/restart: answer at once instead of when the action completed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_block: bool,
    /// kill: the signal name (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// logs: how many recent lines (default 100, at most the buffer's 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
    /// logs: keep streaming new lines until the client closes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub follow: bool,
    /// logs: only lines written at or after this: a duration back from now (`10m`, `1h 30m`)
    /// or an RFC 3339 time (`2026-12-03T10:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// logs: only lines matching this regular expression (regex-lite syntax), followed lines too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
    /// shutdown: what the machine does afterwards (host init only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<crate::os::pid1::PowerAction>,
    /// scale: how many numbered instances of the template (`units`' one name) to have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// wait-ready: answer with a `timeout` error after this many milliseconds (none: wait on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// status, metrics: only units in one of these states (each may be a comma list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<String>,
    /// status, metrics: only units in one of these slices, directly or below.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Request {
    pub fn new(verb: Verb, units: Vec<String>) -> Request {
        Request {
            verb,
            units,
            no_block: false,
            signal: None,
            lines: None,
            follow: false,
            since: None,
            grep: None,
            power: None,
            count: None,
            timeout_ms: None,
            states: Vec::new(),
            slices: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Not JSON, unknown verb or field, wrong type.
    BadRequest,
    /// The request line exceeded `MAX_REQUEST_BYTES`.
    TooLarge,
    UnknownUnit,
    NotRunning,
    /// The action ran but the unit did not get where it was asked to (e.g. it failed).
    Failed,
    PermissionDenied,
    /// A bound of the control socket was reached (clients, connections or followers per user,
    /// file descriptors); the message names it.
    LimitReached,
    ShuttingDown,
    /// reload: a unit file is invalid; nothing was applied.
    Invalid,
    /// wait-ready: the units were not ready within `timeout_ms`; the message says why.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
}

/// `last_exit`: exactly what the kernel said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastExit {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "is_false", default)]
    pub core_dumped: bool,
    #[serde(skip_serializing_if = "is_false", default)]
    pub oom: bool,
    /// The main process was not corral's child (named by `MAINPID=`) and another process
    /// reaped it: it ended, with neither code nor signal known.
    #[serde(skip_serializing_if = "is_false", default)]
    pub status_unknown: bool,
    /// corral ended the run itself: `start-timeout`, `health` or `watchdog`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// `[health]` as it stands: the probe's last result and the watchdog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// What is probed: `http http://127.0.0.1:8080/healthz`, `tcp 127.0.0.1:5432`, `exec pg_isready`.
    pub probe: Option<String>,
    /// `ok` or `failed`; null before the first probe of this run.
    pub last_result: Option<String>,
    /// What the last probe saw: `HTTP 200`, `connection to ... refused`, `exited with code 1`.
    pub last_message: Option<String>,
    /// When the last probe ended (RFC 3339, UTC).
    pub last_probe_at: Option<String>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// The watchdog timeout in force (the file's `watchdog`, or the unit's `WATCHDOG_USEC=`).
    pub watchdog_ms: Option<u64>,
}

/// Live usage from the unit's cgroup; every field is null where the kernel does not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
    pub cpu_throttled_usec: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub pids_current: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    /// The memory limit in force in the kernel (null: none).
    #[serde(default)]
    pub memory_max: Option<u64>,
    /// The pids limit in force in the kernel (null: none).
    #[serde(default)]
    pub pids_max: Option<u64>,
    #[serde(default)]
    pub io_read_ops: Option<u64>,
    #[serde(default)]
    pub io_write_ops: Option<u64>,
    /// The kernel's count of OOM kills in this cgroup (since it was created).
    #[serde(default)]
    pub cgroup_oom_kills: Option<u64>,
    /// PSI `some avg10`: percent of the last 10 s in which some task waited for CPU, memory or
    /// IO. Null where the kernel has no pressure files for the cgroup (v1 without `psi_cgroupv1`).
    #[serde(default)]
    pub cpu_pressure: Option<f64>,
    #[serde(default)]
    pub memory_pressure: Option<f64>,
    #[serde(default)]
    pub io_pressure: Option<f64>,
}

/// The limits a unit's file asks for; null where it sets none (or "max").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub memory_swap_max: Option<u64>,
    pub cpu_quota_percent: Option<u32>,
    pub cpu_weight: Option<u32>,
    pub allowed_cpus: Option<String>,
    pub pids_max: Option<u64>,
    pub io_weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub name: String,
    pub kind: String,
    pub state: String,
    #[serde(default)]
    pub description: Option<String>,
    pub enabled: bool,
    /// Main process, as the host sees it.
    pub pid: Option<i32>,
    /// When the unit entered `state` (RFC 3339, UTC).
    pub since: String,
    pub restarts: u32,
    pub oom_kills: u32,
    pub last_exit: Option<LastExit>,
    /// Shell-style status of the last exit: the code, or 128 + signal.
    #[serde(default)]
    pub last_exit_status: Option<i32>,
    pub cgroup: Option<String>,
    /// Every limit of the unit (and of its slices) is in force in the kernel.
    pub limits_enforced: bool,
    #[serde(default)]
    pub limits_reason: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    pub usage: Usage,
    /// Paused with `corral freeze`.
    #[serde(default)]
    pub frozen: bool,
    /// Limits about to bite (e.g. memory above memory-high), worded for people.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Limit-warning episodes under way, by concern: `memory`, `pids`, `cpu-throttling`.
    #[serde(default)]
    pub near_limits: Vec<String>,
    /// The parent slice; null at the root.
    #[serde(default)]
    pub slice: Option<String>,
    /// The last OOM kill in the unit (RFC 3339), if any.
    #[serde(default)]
    pub last_oom: Option<String>,
    /// In `backoff`: milliseconds until the next restart.
    #[serde(default)]
    pub restart_in_ms: Option<u64>,
    /// Each namespace of the main process against corral's own; listed for a unit named in
    /// the request or one that asks for any namespace, empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceStatus>,
    /// `[exec] ready`: `started` or `notify`.
    #[serde(default)]
    pub ready: Option<String>,
    /// The last `STATUS=` text the unit sent over sd_notify in this run.
    #[serde(default)]
    pub status_text: Option<String>,
    /// Null when the unit has no `[health]` section.
    #[serde(default)]
    pub health: Option<HealthStatus>,
    /// For a unit that wants to be up but is `inactive`: the units it waits for (its
    /// `requires` not yet running, its `after` still on their way up); empty otherwise.
    #[serde(default)]
    pub waiting_for: Vec<WaitingFor>,
    /// Restarts by `[oom] action = "restart"` since corral started; not in `restarts`.
    #[serde(default)]
    pub pressure_restarts: u32,
    /// `[oom]` thresholds that act before the OOM killer; null without them.
    #[serde(default)]
    pub pressure: Option<PressureStatus>,
    pub error: Option<String>,
}

/// A unit's `[oom]` thresholds, what watches them, and the actions taken (docs/protocol.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureStatus {
    /// `usage-threshold`: percent of memory-max.
    pub usage_threshold_percent: Option<u32>,
    /// `pressure-threshold`: `some 20% over 5s`.
    pub pressure_threshold: Option<String>,
    pub sustain_ms: u64,
    /// `warn`, `restart` or `signal`.
    pub action: String,
    /// The signal of `action = "signal"`.
    pub signal: Option<String>,
    pub cool_down_ms: u64,
    /// What tells corral, for this run: `psi-trigger` (v2 `memory.pressure`),
    /// `usage-thresholds` (v1 `memory.usage_in_bytes` eventfds), `usage-sampled`
    /// (the usage timer, v2), `memory-events` (v2 `memory.events`, with memory-high).
    pub watched_by: Vec<String>,
    /// memory.current as a percent of the limit in force, at the last reading of this run.
    pub usage_percent: Option<u64>,
    /// When the episode under way began (RFC 3339); null when none is.
    pub episode_since: Option<String>,
    /// Actions taken since corral started (each `warn`, `signal` or `restart`).
    pub actions: u32,
    pub last_action: Option<String>,
}

/// A unit another one waits for before it starts, and that unit's state now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingFor {
    pub unit: String,
    pub state: String,
}

/// One namespace of a unit, for auditing its isolation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    /// pid, net, mount, uts, ipc, user or cgroup.
    pub kind: String,
    /// The unit file asks for a new one.
    pub requested: bool,
    /// The inode of the main process's namespace (null when nothing runs).
    pub inode: Option<u64>,
    /// It differs from corral's own (null when nothing runs).
    pub isolated: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 with microseconds, UTC.
    pub time: String,
    pub unit: String,
    pub stream: Stream,
    pub text: String,
    /// The line was longer than the per-line cap and was split here.
    #[serde(default, skip_serializing_if = "is_false")]
    pub partial: bool,
}

/// Every response line. Exactly one of the payload fields is present on success.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<UnitStatus>>,
    /// logs without follow: the lines, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LogLine>>,
    /// logs with follow: one line per response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<LogLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// reload: what was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    /// metrics: the Prometheus text exposition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// status: the last reload failed; the units keep running their last good definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
    /// status: what corral may do with cgroups here (docs/container.md, "The ladder").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<CgroupsReport>,
}

/// The capability ladder's reading, as `status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupsReport {
    /// `writable`, `read-only`, `no-permission` or `unavailable`.
    pub rung: String,
    /// What detection saw, worded for people.
    pub summary: String,
    /// How to reach `writable`, when corral stands lower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

/// What a reload did, unit by unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    pub relimited: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: usize,
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(ErrorBody {
                kind,
                message: message.into(),
            }),
            ..Response::default()
        }
    }

    pub fn units(units: Vec<UnitStatus>) -> Response {
        Response {
            ok: true,
            units: Some(units),
            ..Response::default()
        }
    }

    pub fn message(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Response::default()
        }
    }

    /// One JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"ok":false,"error":{"kind":"failed","message":"response not serializable"}}"#
                .to_vec()
        });
        line.push(b'\n');
        line
    }
}

/// 1536 -> "1.5K": powers of 1024, as unit files write sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_group_peers_get_the_read_verbs_only() {
        let read = [Verb::Status, Verb::Logs, Verb::Metrics, Verb::WaitReady];
        for verb in [
            Verb::Status,
            Verb::Start,
            Verb::Stop,
            Verb::Restart,
            Verb::Kill,
            Verb::Freeze,
            Verb::Thaw,
            Verb::Reload,
            Verb::Logs,
            Verb::Shutdown,
            Verb::Metrics,
            Verb::Scale,
            Verb::WaitReady,
        ] {
            assert_eq!(verb.is_read_only(), read.contains(&verb), "{verb:?}");
        }
    }
}
