//! Human renderings: the status table and log lines.

use std::time::SystemTime;

use crate::proto::{LastExit, LogLine, Stream, UnitStatus};

fn last_exit_text(exit: &LastExit) -> String {
    let mut text = match (&exit.code, &exit.signal) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => signal.clone(),
        (None, None) => "-".to_owned(),
    };
    if exit.core_dumped {
        text.push_str(" (core)");
    }
    if exit.oom {
        text.push_str(" (oom)");
    }
    text
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
    let rows: Vec<[String; 8]> = units
        .iter()
        .map(|u| {
            let note = match (&u.error, u.restart_in_ms, &u.description) {
                (Some(error), _, _) => error.clone(),
                (None, Some(ms), _) => format!("restart in {ms} ms"),
                (None, None, Some(d)) => d.clone(),
                (None, None, None) => String::new(),
            };
            [
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
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header);
    for row in &rows {
        line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6], &row[7],
        ]);
    }
}

pub fn print_log_line(line: &LogLine, with_unit: bool) {
    let stream = match line.stream {
        Stream::Stdout => "",
        Stream::Stderr => " [stderr]",
    };
    let cont = if line.partial { " …" } else { "" };
    if with_unit {
        println!("{} {}{stream}: {}{cont}", line.time, line.unit, line.text);
    } else {
        println!("{}{stream} {}{cont}", line.time, line.text);
    }
}
