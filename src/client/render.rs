//! Human renderings: the status table and log lines.

use std::io::Write;
use std::time::SystemTime;

use crate::escape::terminal;
use crate::proto::{
    LastExit, LogLine, NamespaceStatus, ReloadReport, Stream, UnitStatus, human_size as size,
};

/// `println!` with the line escaped for the terminal: descriptions, notify status texts and
/// errors (which quote paths) come from unit files and units, and must not drive the terminal.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", terminal(&format!($($arg)*)))
    };
}

fn secs(usec: u64) -> String {
    format!("{:.2}s", usec as f64 / 1e6)
}

fn last_exit_text(exit: &LastExit) -> String {
    let mut text = match (&exit.code, &exit.signal) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => signal.clone(),
        (None, None) if exit.status_unknown => "status unknown".to_owned(),
        (None, None) => "-".to_owned(),
    };
    if exit.core_dumped {
        text.push_str(" (core)");
    }
    if exit.oom {
        text.push_str(" (oom)");
    }
    if let Some(reason) = &exit.reason {
        text.push_str(&format!(" ({reason})"));
    }
    text
}

/// What a `starting` unit waits for: its probe's last failure, its READY=1 or its ready line,
/// or its exit.
fn waiting_for(u: &UnitStatus) -> String {
    let probe_failure = u.health.as_ref().and_then(|h| {
        (h.last_result.as_deref() == Some("failed"))
            .then(|| h.last_message.clone())
            .flatten()
    });
    match (probe_failure, &u.status_text) {
        (Some(message), _) => format!("not ready: {message}"),
        (None, Some(text)) => text.clone(),
        (None, None) if u.ready.as_deref() == Some("notify") => "waiting for READY=1".to_owned(),
        (None, None) if u.ready.as_deref() == Some("log-line") => {
            "waiting for a line matching ready-pattern".to_owned()
        }
        (None, None) if u.health.as_ref().is_some_and(|h| h.probe.is_some()) => {
            "waiting for the health probe".to_owned()
        }
        (None, None) => u.description.clone().unwrap_or_default(),
    }
}

/// `db (inactive), cache (starting)`: the units an `inactive` unit waits for, or None.
fn dependencies_waited_for(u: &UnitStatus) -> Option<String> {
    (!u.waiting_for.is_empty()).then(|| {
        u.waiting_for
            .iter()
            .map(|w| format!("{} ({})", w.unit, w.state))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The NOTE column: why the unit is where it is, else what it says of itself, else its
/// description. An enabled unit that is not running always says why (or its last exit does).
fn status_note(u: &UnitStatus) -> String {
    if let Some(error) = &u.error {
        return error.clone();
    }
    if let Some(ms) = u.restart_in_ms {
        return format!("restart in {ms} ms");
    }
    if u.state == "starting" {
        return waiting_for(u);
    }
    if let Some(deps) = dependencies_waited_for(u) {
        return format!("waiting for {deps}");
    }
    // Enabled, not waiting, yet inactive: a user's stop (or one through `requires`) holds it.
    if u.state == "inactive" && u.enabled && u.kind != "slice" {
        return "stopped".to_owned();
    }
    match (&u.status_text, &u.description) {
        (Some(text), _) => text.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => String::new(),
    }
}

/// "3m 12s" since an RFC 3339 timestamp, rounded to what a person cares about.
fn age(since: &str) -> String {
    let Ok(at) = humantime::parse_rfc3339(since) else {
        return since.to_owned();
    };
    let secs = SystemTime::now()
        .duration_since(at)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn print_status_table(units: &[UnitStatus]) {
    let mut table = StatusTable::default();
    for u in units {
        table.add(u);
    }
    table.print();
}

/// The status table, filled row by row as the answer is read: each unit's status is turned
/// into its cells at once and dropped, so a table of ten thousand units holds their cells
/// only (the column widths need every row before the first is printed).
#[derive(Default)]
pub struct StatusTable {
    rows: Vec<[Box<str>; 8]>,
}

impl StatusTable {
    pub fn add(&mut self, u: &UnitStatus) {
        let note = status_note(u);
        let row = [
            u.name.clone(),
            u.kind.clone(),
            u.state.clone(),
            u.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            age(&u.since),
            u.restarts.to_string(),
            u.last_exit
                .as_ref()
                .map_or_else(|| "-".to_owned(), last_exit_text),
            note,
        ]
        .map(|cell| Box::from(terminal(&cell).as_ref()));
        self.rows.push(row);
    }

    pub fn print(&self) {
        let header = [
            "UNIT",
            "KIND",
            "STATE",
            "PID",
            "FOR",
            "RESTARTS",
            "LAST EXIT",
            "NOTE",
        ];
        let mut widths = header.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let mut line = |cells: [&str; 8]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(header);
        for row in &self.rows {
            line([
                &row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6], &row[7],
            ]);
        }
    }
}

pub fn print_log_line(line: &LogLine, with_unit: bool) {
    let stream = match line.stream {
        Stream::Stdout => "",
        Stream::Stderr => " [stderr]",
    };
    let cont = if line.partial { " …" } else { "" };
    // A unit's output is shown, never obeyed: its escape sequences are written out.
    let text = terminal(&line.text);
    if with_unit {
        println!("{} {}{stream}: {text}{cont}", line.time, line.unit);
    } else {
        println!("{}{stream} {text}{cont}", line.time);
    }
}

/// `used / limit`, or `used` alone; `-` when the kernel does not say.
fn used_of(used: Option<u64>, limit: Option<u64>, show: fn(u64) -> String) -> String {
    match (used, limit) {
        (Some(u), Some(l)) => format!("{} / {}", show(u), show(l)),
        (Some(u), None) => format!("{} (no limit)", show(u)),
        (None, Some(l)) => format!("- / {}", show(l)),
        (None, None) => "-".to_owned(),
    }
}

/// The view of `status UNIT`: one block per unit, what an operator checks at a glance.
pub fn print_status_details(units: &[UnitStatus]) {
    for (i, u) in units.iter().enumerate() {
        print_unit_details(u, i == 0);
    }
}

/// One unit in detail, as `status UNIT` shows it; a blank line before all but the first.
pub fn print_unit_details(u: &UnitStatus, first: bool) {
    {
        if !first {
            println!();
        }
        let pid = u.pid.map_or_else(String::new, |p| format!(", pid {p}"));
        let frozen = if u.frozen { " (frozen)" } else { "" };
        say!(
            "{} ({}): {}{frozen}{pid}, for {}",
            u.name,
            u.kind,
            u.state,
            age(&u.since)
        );
        if let Some(d) = &u.description {
            say!("  {d}");
        }
        let enforced = if u.limits_enforced {
            "limits enforced".to_owned()
        } else {
            format!(
                "limits NOT enforced: {}",
                u.limits_reason.as_deref().unwrap_or("unknown reason")
            )
        };
        say!(
            "  cgroup    {} ({enforced})",
            u.cgroup.as_deref().unwrap_or("-")
        );
        let usage = &u.usage;
        let mut memory = used_of(
            usage.memory_current,
            usage.memory_max.or(u.limits.memory_max),
            size,
        );
        if let Some(peak) = usage.memory_peak {
            memory.push_str(&format!(", peak {}", size(peak)));
        }
        if let Some(high) = u.limits.memory_high {
            memory.push_str(&format!(", high {}", size(high)));
        }
        say!("  memory    {memory}");
        let mut cpu = match usage.cpu_usage_usec {
            Some(used) => format!("{} used", secs(used)),
            None => "-".to_owned(),
        };
        let running_for = humantime::parse_rfc3339(&u.since)
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .filter(|d| !d.is_zero() && u.state == "running");
        if let (Some(used), Some(wall)) = (usage.cpu_usage_usec, running_for) {
            let percent = used as f64 / wall.as_micros() as f64 * 100.0;
            cpu.push_str(&format!(" ({percent:.0}% of a CPU since start)"));
        }
        if let Some(quota) = u.limits.cpu_quota_percent {
            cpu.push_str(&format!(", quota {quota}%"));
        }
        if let (Some(throttled), Some(n)) = (usage.cpu_throttled_usec, usage.nr_throttled) {
            cpu.push_str(&format!(", throttled {} in {n} periods", secs(throttled)));
        }
        say!("  cpu       {cpu}");
        say!(
            "  pids      {}",
            used_of(
                usage.pids_current,
                usage.pids_max.or(u.limits.pids_max),
                |n| n.to_string()
            )
        );
        let ops = |n: Option<u64>| n.map_or_else(String::new, |n| format!(" in {n} ops"));
        match (usage.io_read_bytes, usage.io_write_bytes) {
            (None, None) => say!("  io        -"),
            (r, w) => say!(
                "  io        read {}{}, written {}{}",
                r.map_or_else(|| "-".to_owned(), size),
                ops(usage.io_read_ops),
                w.map_or_else(|| "-".to_owned(), size),
                ops(usage.io_write_ops)
            ),
        }
        let pressure: Vec<String> = [
            ("cpu", usage.cpu_pressure),
            ("memory", usage.memory_pressure),
            ("io", usage.io_pressure),
        ]
        .into_iter()
        .filter_map(|(what, p)| p.map(|p| format!("{what} {p:.1}%")))
        .collect();
        if !pressure.is_empty() {
            say!("  pressure  {} (some, last 10 s)", pressure.join(", "));
        }
        let last = u
            .last_exit
            .as_ref()
            .map_or_else(|| "none yet".to_owned(), last_exit_text);
        say!("  restarts  {}, last exit: {last}", u.restarts);
        if u.oom_kills > 0 {
            let times = if u.oom_kills == 1 {
                "once".to_owned()
            } else {
                format!("{} times", u.oom_kills)
            };
            let last = u
                .last_oom
                .as_deref()
                .map_or_else(String::new, |at| format!(", last {} ago", age(at)));
            let limit = u.limits.memory_max.map_or_else(|| "none".to_owned(), size);
            let peak = usage.memory_peak.map_or_else(|| "unknown".to_owned(), size);
            say!("  oom       oom-killed {times}{last} (memory-max {limit}, peak {peak})");
        }
        if let Some(p) = &u.pressure {
            say!("  pressure  {}", pressure_line(p, u.pressure_restarts));
        }
        if let Some(line) = namespaces_line(&u.namespaces) {
            say!("  isolation {line}");
        }
        for warning in &u.warnings {
            say!("  warning   {warning}");
        }
        if u.ready.as_deref() == Some("notify") || u.status_text.is_some() {
            let text = u.status_text.as_deref().unwrap_or("-");
            say!("  notify    {text}");
        }
        if let Some(health) = &u.health {
            if let Some(probe) = &health.probe {
                let last = match (&health.last_result, &health.last_message) {
                    (Some(result), Some(message)) => format!("{result}: {message}"),
                    _ => "not probed yet".to_owned(),
                };
                let streak = match health.consecutive_failures {
                    0 => String::new(),
                    1 => " (once)".to_owned(),
                    n => format!(" ({n} times in a row)"),
                };
                say!("  health    {probe}: {last}{streak}");
            }
            if let Some(ms) = health.watchdog_ms {
                say!("  watchdog  {ms} ms");
            }
        }
        if let Some(ms) = u.restart_in_ms {
            say!("  next      restart in {ms} ms");
        }
        if let Some(deps) = dependencies_waited_for(u) {
            println!("  waiting   for {deps}");
        }
        if let Some(error) = &u.error {
            say!("  error     {error}");
        }
    }
}

/// `own pid, net; shared uts, ipc, ...`: which namespaces the main process has to itself.
/// A requested namespace the process does not have is called out, never blended in.
/// `[oom]` thresholds, what watches them, and what was done: one line of `status UNIT`.
fn pressure_line(p: &crate::proto::PressureStatus, restarts: u32) -> String {
    let mut on: Vec<String> = Vec::new();
    if let Some(percent) = p.usage_threshold_percent {
        on.push(format!("usage {percent}% of memory-max"));
    }
    if let Some(psi) = &p.pressure_threshold {
        on.push(format!("stalls {psi}"));
    }
    let action = match &p.signal {
        Some(signal) => format!("signal {signal}"),
        None => p.action.clone(),
    };
    let mut line = format!("{action} at {}", on.join(" or "));
    if p.sustain_ms > 0 {
        line.push_str(&format!(" held {} ms", p.sustain_ms));
    }
    let watched = if p.watched_by.is_empty() {
        "not watched now".to_owned()
    } else {
        format!("watched by {}", p.watched_by.join(", "))
    };
    line.push_str(&format!("; {watched}"));
    if let Some(percent) = p.usage_percent {
        line.push_str(&format!("; usage {percent}%"));
    }
    if p.episode_since.is_some() {
        line.push_str("; episode under way");
    }
    line.push_str(&format!("; {} actions, {restarts} restarts", p.actions));
    line
}

fn namespaces_line(namespaces: &[NamespaceStatus]) -> Option<String> {
    if namespaces.is_empty() {
        return None;
    }
    let kinds = |pick: &dyn Fn(&NamespaceStatus) -> bool| {
        let names: Vec<&str> = namespaces
            .iter()
            .filter(|n| pick(n))
            .map(|n| n.kind.as_str())
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    if namespaces.iter().all(|n| n.isolated.is_none()) {
        return Some(format!(
            "asks for: {} (not running)",
            kinds(&|n| n.requested)
        ));
    }
    let mut line = format!(
        "own: {}; shared with corral: {}",
        kinds(&|n| n.isolated == Some(true)),
        kinds(&|n| n.isolated == Some(false))
    );
    if namespaces
        .iter()
        .any(|n| n.requested && n.isolated == Some(false))
    {
        line.push_str(&format!(
            "; REQUESTED BUT SHARED: {}",
            kinds(&|n| n.requested && n.isolated == Some(false))
        ));
    }
    Some(line)
}

/// `reload applied: 1 added (db), 0 removed, ...`.
pub fn print_reload(plan: &ReloadReport) {
    let part = |what: &str, names: &[String]| {
        if names.is_empty() {
            format!("0 {what}")
        } else {
            format!("{} {what} ({})", names.len(), names.join(", "))
        }
    };
    println!(
        "reload applied: {}, {}, {}, {}, {}, {} unchanged",
        part("added", &plan.added),
        part("removed", &plan.removed),
        part("restarted", &plan.restarted),
        part("re-limited", &plan.relimited),
        part("updated", &plan.updated),
        plan.unchanged
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::WaitingFor;

    fn unit(state: &str, enabled: bool) -> UnitStatus {
        UnitStatus {
            name: "app".to_owned(),
            kind: "service".to_owned(),
            state: state.to_owned(),
            enabled,
            description: Some("the app".to_owned()),
            ..UnitStatus::default()
        }
    }

    #[test]
    fn the_note_of_a_unit_that_is_not_running_says_why() {
        let mut waiting = unit("inactive", true);
        waiting.waiting_for = vec![
            WaitingFor {
                unit: "db".to_owned(),
                state: "inactive".to_owned(),
            },
            WaitingFor {
                unit: "cache".to_owned(),
                state: "starting".to_owned(),
            },
        ];
        assert_eq!(
            status_note(&waiting),
            "waiting for db (inactive), cache (starting)"
        );
        assert_eq!(status_note(&unit("inactive", true)), "stopped");
        // A disabled unit that nobody started is inactive as it should be.
        assert_eq!(status_note(&unit("inactive", false)), "the app");
        assert_eq!(status_note(&unit("running", true)), "the app");
        let mut failed = unit("failed", true);
        failed.error = Some("start limit hit".to_owned());
        assert_eq!(status_note(&failed), "start limit hit");
    }

    #[test]
    fn the_pressure_line_names_the_thresholds_what_watches_them_and_the_actions() {
        let p = crate::proto::PressureStatus {
            usage_threshold_percent: Some(90),
            pressure_threshold: Some("some 10% over 2s".to_owned()),
            sustain_ms: 1000,
            action: "signal".to_owned(),
            signal: Some("SIGUSR1".to_owned()),
            watched_by: vec!["psi-trigger".to_owned(), "usage-sampled".to_owned()],
            usage_percent: Some(47),
            actions: 2,
            ..crate::proto::PressureStatus::default()
        };
        assert_eq!(
            pressure_line(&p, 0),
            "signal SIGUSR1 at usage 90% of memory-max or stalls some 10% over 2s held 1000 ms; \
             watched by psi-trigger, usage-sampled; usage 47%; 2 actions, 0 restarts"
        );
    }
}
