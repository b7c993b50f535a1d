//! `corral top`: a live view of usage against limits, slices with their units beneath, read
//! through the control socket (`status`) once per interval; CPU % comes from the difference
//! of two samples. The terminal handling is a few ANSI sequences and termios raw mode.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::termios::{self, SetArg, Termios};
use serde::Serialize;

use crate::proto::{UnitStatus, Verb, human_size};

use super::{ClientError, Connection, exit_code, request};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    Cpu,
    Memory,
}

pub struct Options {
    pub once: bool,
    pub json: bool,
    pub sort: SortKey,
    pub interval: Duration,
    /// Only these units (names or glob patterns), states and slices: filtered by the
    /// supervisor, so a view of a few units among thousands costs a few rows a frame.
    pub units: Vec<String>,
    pub states: Vec<String>,
    pub slices: Vec<String>,
}

/// The status of every unit, and when it was taken.
pub struct Snapshot {
    pub at: Instant,
    pub units: Vec<UnitStatus>,
}

/// One line of the view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub unit: String,
    pub kind: String,
    pub slice: Option<String>,
    /// 0 at the root, 1 below a top-level slice, ...
    pub depth: usize,
    pub state: String,
    /// Percent of one CPU over the last interval; null on the first sample.
    pub cpu_percent: Option<f64>,
    pub cpu_quota_percent: Option<u32>,
    pub memory_current: Option<u64>,
    pub memory_max: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub cpu_throttled_usec: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_max: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub near_limits: Vec<String>,
    /// `[oom] usage-threshold`, shown beside memory-max (`64.0M@90%`).
    pub pressure_threshold_percent: Option<u32>,
    /// A memory-pressure episode is under way (the state is marked as near a limit).
    pub pressure_episode: bool,
}

/// `before`: the unit's CPU time in the previous snapshot.
fn cpu_percent(
    prev: Option<&Snapshot>,
    before: Option<u64>,
    now: &Snapshot,
    unit: &UnitStatus,
) -> Option<f64> {
    let prev = prev?;
    let before = before?;
    let after = unit.usage.cpu_usage_usec?;
    let wall = now.at.checked_duration_since(prev.at)?.as_micros() as f64;
    // A counter that went back is a new cgroup (a restart): no figure this time.
    (wall > 0.0 && after >= before).then(|| (after - before) as f64 / wall * 100.0)
}

/// The rows of a frame: siblings sorted by `sort` (largest first, then by name), each slice
/// followed by what lies below it.
pub fn rows(prev: Option<&Snapshot>, now: &Snapshot, sort: SortKey) -> Vec<Row> {
    let mut children: BTreeMap<Option<String>, Vec<Row>> = BTreeMap::new();
    // Looked up per unit: sets and maps, so a frame of N units costs N, not N².
    let names: HashSet<&str> = now.units.iter().map(|u| u.name.as_str()).collect();
    let cpu_before: HashMap<&str, Option<u64>> = prev
        .map(|p| {
            p.units
                .iter()
                .map(|u| (u.name.as_str(), u.usage.cpu_usage_usec))
                .collect()
        })
        .unwrap_or_default();
    for u in &now.units {
        // A unit whose slice is unknown (e.g. removed by a reload) is shown at the root.
        let parent = u.slice.clone().filter(|s| names.contains(s.as_str()));
        children.entry(parent).or_default().push(Row {
            unit: u.name.clone(),
            kind: u.kind.clone(),
            slice: u.slice.clone(),
            depth: 0,
            state: u.state.clone(),
            cpu_percent: cpu_percent(
                prev,
                cpu_before.get(u.name.as_str()).copied().flatten(),
                now,
                u,
            ),
            cpu_quota_percent: u.limits.cpu_quota_percent,
            memory_current: u.usage.memory_current,
            memory_max: u.usage.memory_max.or(u.limits.memory_max),
            nr_throttled: u.usage.nr_throttled,
            cpu_throttled_usec: u.usage.cpu_throttled_usec,
            pids_current: u.usage.pids_current,
            pids_max: u.usage.pids_max.or(u.limits.pids_max),
            io_read_bytes: u.usage.io_read_bytes,
            io_write_bytes: u.usage.io_write_bytes,
            near_limits: u.near_limits.clone(),
            pressure_threshold_percent: u.pressure.as_ref().and_then(|p| p.usage_threshold_percent),
            pressure_episode: u
                .pressure
                .as_ref()
                .is_some_and(|p| p.episode_since.is_some()),
        });
    }
    for siblings in children.values_mut() {
        siblings.sort_by(|a, b| {
            let key = |r: &Row| match sort {
                SortKey::Cpu => r.cpu_percent.unwrap_or(-1.0),
                SortKey::Memory => r.memory_current.map_or(-1.0, |m| m as f64),
            };
            key(b)
                .partial_cmp(&key(a))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.unit.cmp(&b.unit))
        });
    }
    let mut out = Vec::new();
    walk(&mut children, None, 0, &mut out);
    out
}

fn walk(
    children: &mut BTreeMap<Option<String>, Vec<Row>>,
    parent: Option<String>,
    depth: usize,
    out: &mut Vec<Row>,
) {
    let Some(siblings) = children.remove(&parent) else {
        return;
    };
    for mut row in siblings {
        row.depth = depth;
        let name = row.unit.clone();
        let is_slice = row.kind == "slice";
        out.push(row);
        if is_slice {
            walk(children, Some(name), depth + 1, out);
        }
    }
}

const COLUMNS: [&str; 11] = [
    "UNIT",
    "STATE",
    "CPU%",
    "QUOTA",
    "MEMORY",
    "MEM-MAX",
    "THROTTLED",
    "THR-TIME",
    "PIDS",
    "PIDS-MAX",
    "IO R/W",
];

fn dash() -> String {
    "-".to_owned()
}

fn cells(row: &Row) -> [String; 11] {
    let size = |v: Option<u64>| v.map_or_else(dash, human_size);
    let count = |v: Option<u64>| v.map_or_else(dash, |n| n.to_string());
    let mut name = format!("{}{}", "  ".repeat(row.depth), row.unit);
    if row.kind == "slice" {
        name.push('/');
    }
    let mut state = row.state.clone();
    if !row.near_limits.is_empty() || row.pressure_episode {
        state.push('!');
    }
    let mut memory_max = size(row.memory_max);
    if let Some(percent) = row.pressure_threshold_percent {
        memory_max.push_str(&format!("@{percent}%"));
    }
    [
        name,
        state,
        row.cpu_percent.map_or_else(dash, |p| format!("{p:.1}")),
        row.cpu_quota_percent.map_or_else(dash, |q| format!("{q}%")),
        size(row.memory_current),
        memory_max,
        count(row.nr_throttled),
        row.cpu_throttled_usec
            .map_or_else(dash, |us| format!("{:.1}s", us as f64 / 1e6)),
        count(row.pids_current),
        count(row.pids_max),
        match (row.io_read_bytes, row.io_write_bytes) {
            (None, None) => dash(),
            (r, w) => format!("{}/{}", size(r), size(w)),
        },
    ]
}

/// The frame as lines: a title, the column header, one line per row; each at most `width`
/// characters and at most `height` lines in all.
pub fn frame(rows: &[Row], sort: SortKey, width: usize, height: usize) -> Vec<String> {
    // humantime panics before 1970 (a machine whose clock was never set may be there).
    let clock = humantime::format_rfc3339_seconds(SystemTime::now().max(SystemTime::UNIX_EPOCH))
        .to_string();
    let time = clock.get(11..19).unwrap_or(&clock);
    let sort_name = match sort {
        SortKey::Cpu => "cpu",
        SortKey::Memory => "memory",
    };
    let title = format!(
        "corral top  {time} UTC  {} units  sorted by {sort_name}  (c: cpu, m: memory, q: quit)",
        rows.len()
    );
    let table: Vec<[String; 11]> = rows.iter().map(cells).collect();
    let mut widths = COLUMNS.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 11]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == 0 {
                out.push_str(&format!("{cell:<width$}", width = widths[i]));
            } else {
                out.push_str(&format!("  {cell:>width$}", width = widths[i]));
            }
        }
        out
    };
    let mut lines = vec![title, line(COLUMNS)];
    for row in &table {
        lines.push(line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6], &row[7], &row[8],
            &row[9], &row[10],
        ]));
    }
    lines.truncate(height.max(1));
    lines
        .into_iter()
        .map(|l| l.chars().take(width).collect())
        .collect()
}

fn snapshot(conn: &mut Connection, opts: &Options) -> Result<Snapshot, String> {
    let mut request = request(Verb::Status, &opts.units);
    request.states = opts.states.clone();
    request.slices = opts.slices.clone();
    let response = conn.call(&request).map_err(|e| e.to_string())?;
    let at = Instant::now();
    match (response.ok, response.units) {
        (true, Some(units)) => Ok(Snapshot { at, units }),
        _ => Err(response
            .error
            .map_or_else(|| "no answer".to_owned(), |e| e.message)),
    }
}

pub fn run(conn: &mut Connection, opts: &Options) -> Result<i32, ClientError> {
    if opts.once {
        return once(conn, opts);
    }
    let stdin = std::io::stdin();
    let saved = match termios::tcgetattr(stdin.as_fd()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("corral: top needs a terminal on stdin ({e}); use --once for scripts");
            return Ok(exit_code::USAGE);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        // The flag ends the loop, which restores the terminal before exiting.
        let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
    }
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    // Output keeps its newline translation off in raw mode: frames end lines with \r\n.
    let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
    let mut out = std::io::stdout();
    // Alternate screen, hidden cursor: the shell's screen comes back intact afterwards.
    let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
    let result = live(conn, opts, &stop);
    let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
    let _ = out.flush();
    restore(&saved);
    match result {
        Ok(()) => Ok(exit_code::OK),
        Err(message) => {
            eprintln!("corral: {message}");
            Ok(exit_code::FAILED)
        }
    }
}

fn restore(saved: &Termios) {
    let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
}

fn terminal_size() -> (usize, usize) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize struct we pass; stdout stays open throughout.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 && size.ws_row > 0 {
        (usize::from(size.ws_col), usize::from(size.ws_row))
    } else {
        (80, 24)
    }
}

fn live(conn: &mut Connection, opts: &Options, stop: &AtomicBool) -> Result<(), String> {
    let mut sort = opts.sort;
    let mut prev: Option<Snapshot> = None;
    let mut now = snapshot(conn, opts)?;
    let mut out = std::io::stdout();
    loop {
        let (width, height) = terminal_size();
        let lines = frame(&rows(prev.as_ref(), &now, sort), sort, width, height);
        // Home, then each line followed by erase-to-end-of-line, then erase below: whatever
        // the last frame left (a longer line, more rows) is gone without a flashing clear.
        let mut text = String::from("\x1b[H");
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                text.push_str("\r\n");
            }
            text.push_str(line);
            text.push_str("\x1b[K");
        }
        text.push_str("\x1b[J");
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing to the terminal: {e}"))?;
        let next_at = now.at + opts.interval;
        // Keys until the next frame is due.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let left = next_at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match read_key(left) {
                Some(b'q' | b'Q' | 3 | 4) => return Ok(()),
                Some(b'c' | b'C') => {
                    sort = SortKey::Cpu;
                    break;
                }
                Some(b'm' | b'M') => {
                    sort = SortKey::Memory;
                    break;
                }
                _ => {}
            }
        }
        if Instant::now() >= next_at {
            prev = Some(std::mem::replace(&mut now, snapshot(conn, opts)?));
        }
    }
}

/// One byte from stdin, waiting at most `timeout`; `None` when none came (or a signal).
fn read_key(timeout: Duration) -> Option<u8> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, ms) {
        Ok(n) if n > 0 => {
            let mut byte = [0u8; 1];
            match nix::unistd::read(stdin.as_fd(), &mut byte) {
                Ok(1) => Some(byte[0]),
                // End of input: nobody can press q any more.
                Ok(_) => Some(b'q'),
                Err(_) => None,
            }
        }
        _ => None,
    }
}

fn once(conn: &mut Connection, opts: &Options) -> Result<i32, ClientError> {
    let first = match snapshot(conn, opts) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("corral: {message}");
            return Ok(exit_code::FAILED);
        }
    };
    std::thread::sleep(opts.interval);
    let second = match snapshot(conn, opts) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("corral: {message}");
            return Ok(exit_code::FAILED);
        }
    };
    let rows = rows(Some(&first), &second, opts.sort);
    if opts.json {
        println!(
            "{}",
            serde_json::json!({ "sort": opts.sort, "interval_ms": opts.interval.as_millis() as u64, "rows": rows })
        );
    } else {
        for line in frame(&rows, opts.sort, usize::MAX, usize::MAX) {
            println!("{}", line.trim_end());
        }
    }
    Ok(exit_code::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Usage;

    fn status(name: &str, kind: &str, slice: Option<&str>, cpu: u64, mem: u64) -> UnitStatus {
        UnitStatus {
            name: name.to_owned(),
            kind: kind.to_owned(),
            state: if kind == "slice" { "active" } else { "running" }.to_owned(),
            limits_enforced: true,
            usage: Usage {
                cpu_usage_usec: Some(cpu),
                memory_current: Some(mem),
                ..Usage::default()
            },
            slice: slice.map(str::to_owned),
            ..UnitStatus::default()
        }
    }

    fn snap(at: Instant, units: Vec<UnitStatus>) -> Snapshot {
        Snapshot { at, units }
    }

    #[test]
    fn slices_hold_their_units_and_siblings_sort_by_the_key() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let before = snap(
            t0,
            vec![
                status("back", "slice", None, 0, 0),
                status("db", "service", Some("back"), 0, 0),
                status("cache", "service", Some("back"), 0, 0),
                status("lone", "service", None, 0, 0),
            ],
        );
        let after = snap(
            t1,
            vec![
                // 100 ms of CPU in 1 s: 10%; the slice counts its units.
                status("back", "slice", None, 600_000, 300),
                status("db", "service", Some("back"), 100_000, 200),
                status("cache", "service", Some("back"), 500_000, 100),
                status("lone", "service", None, 900_000, 500),
            ],
        );
        let by_cpu: Vec<(String, usize, Option<f64>)> = rows(Some(&before), &after, SortKey::Cpu)
            .into_iter()
            .map(|r| (r.unit, r.depth, r.cpu_percent))
            .collect();
        assert_eq!(
            by_cpu,
            [
                ("lone".to_owned(), 0, Some(90.0)),
                ("back".to_owned(), 0, Some(60.0)),
                ("cache".to_owned(), 1, Some(50.0)),
                ("db".to_owned(), 1, Some(10.0)),
            ]
        );
        let by_memory: Vec<String> = rows(Some(&before), &after, SortKey::Memory)
            .into_iter()
            .map(|r| r.unit)
            .collect();
        assert_eq!(by_memory, ["lone", "back", "db", "cache"]);
        // The first frame has no CPU figure yet.
        assert!(
            rows(None, &after, SortKey::Cpu)
                .iter()
                .all(|r| r.cpu_percent.is_none())
        );
    }

    #[test]
    fn frames_fit_the_terminal() {
        let now = snap(
            Instant::now(),
            vec![
                status("front", "slice", None, 0, 0),
                status("web", "service", Some("front"), 0, 1536),
            ],
        );
        let lines = frame(&rows(None, &now, SortKey::Cpu), SortKey::Cpu, 200, 10);
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("corral top"), "{lines:?}");
        assert!(lines[1].starts_with("UNIT"), "{lines:?}");
        assert!(lines[2].starts_with("front/ "), "{lines:?}");
        assert!(lines[3].starts_with("  web "), "{lines:?}");
        assert!(lines[3].contains("1.5K"), "{lines:?}");
        let small = frame(&rows(None, &now, SortKey::Cpu), SortKey::Cpu, 20, 3);
        assert_eq!(small.len(), 3);
        assert!(small.iter().all(|l| l.chars().count() <= 20), "{small:?}");
    }

    #[test]
    fn a_usage_threshold_shows_beside_memory_max_and_an_episode_marks_the_state() {
        let t0 = Instant::now();
        let mut web = status("web", "service", None, 0, 50 << 20);
        web.usage.memory_max = Some(64 << 20);
        web.pressure = Some(crate::proto::PressureStatus {
            usage_threshold_percent: Some(90),
            episode_since: Some("2026-12-03T10:00:00Z".to_owned()),
            ..crate::proto::PressureStatus::default()
        });
        let rows = rows(None, &snap(t0, vec![web]), SortKey::Cpu);
        let cells = cells(&rows[0]);
        assert_eq!(cells[1], "running!");
        assert_eq!(cells[5], "64.0M@90%");
    }
}
