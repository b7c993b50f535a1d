//! Observability on the real kernel (cgroup v1 here): limit warnings once per episode, throttling
//! seen in `status`, `top --once` and `metrics`, `/metrics` checked by a Prometheus parser against
//! the documented series, `top` in a real terminal (tmux), and no idle wake-ups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    BIN, Corral, DEADLINE, free_port, is_about, msg, require_cgroup_v1, run_bounded, toml_str,
};
use serde_json::Value;

fn ready() -> bool {
    require_cgroup_v1()
}

/// True when `tool --version` runs; else skips (or under CI=true fails) the calling test.
fn require_tool(tool: &str, args: &[&str], why: &str) -> bool {
    let works = Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{why} needs `{tool} {}`, and CI=true does not allow skipping",
            args.join(" ")
        );
    }
    eprintln!(
        "SKIPPED: {why} needs `{tool} {}` (see .ci/run)",
        args.join(" ")
    );
    false
}

/// A TCP port on loopback that nobody listens on right now.
/// One HTTP/1.1 exchange; returns (status line, whole head, body).
fn http(port: u16, request: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to /metrics");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("reading the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP head");
    let status = head.lines().next().unwrap_or("").to_owned();
    (status, head.to_owned(), body.to_owned())
}

fn get_metrics(port: u16) -> String {
    let (status, head, body) = http(
        port,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// The value of the sample `series{labels}` in a text exposition.
fn sample(text: &str, series_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series_and_labels))
        .and_then(|v| v.trim().parse().ok())
}

/// The rows of the metrics table in docs/metrics.md: (series, only where the kernel offers it).
fn documented_series() -> Vec<(String, bool)> {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .expect("reading docs/metrics.md");
    let series: Vec<(String, bool)> = docs
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `corral_")?;
            let name = rest.split('`').next()?;
            Some((
                format!("corral_{name}"),
                l.contains("only where the kernel offers"),
            ))
        })
        .collect();
    assert!(
        series.len() > 10,
        "docs/metrics.md lists no series? {series:?}"
    );
    series
}

/// Allocates (and touches) 95% of the unit's memory limit minus what it already uses, says
/// `held`, and frees it on SIGUSR1 (`released`).
const HOLD_95: &str = r#"
import signal
path = [l.split(':', 2)[2].strip() for l in open('/proc/self/cgroup') if l.split(':')[1] == 'memory'][0]
d = '/sys/fs/cgroup/memory' + path
limit = int(open(d + '/memory.limit_in_bytes').read())
used = int(open(d + '/memory.usage_in_bytes').read())
held = [b'a' * (int(limit * 0.95) - used)]
print('held', flush=True)
def release(*_):
    held.clear()
    print('released', flush=True)
signal.signal(signal.SIGUSR1, release)
while True:
    signal.pause()
"#;

fn is_sample_round(l: &Value) -> bool {
    msg(l) == "usage sampled"
}

fn is_memory_warning(l: &Value, unit: &str) -> bool {
    is_about(l, unit, "near a limit: memory") && l["level"] == "WARN"
}

#[test]
fn memory_held_above_the_threshold_warns_once_per_episode_and_recovers() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    // pids-max arms the sampling timer, so the unit is looked at many times while it stays up
    // there; the memory warning itself comes from the kernel's threshold eventfd.
    c.unit(
        "hog",
        &format!(
            "[exec]\ncommand = [\"python3\", \"-c\", {}]\n[resources]\nmemory-max = \"128M\"\npids-max = 64\n",
            toml_str(HOLD_95)
        ),
    );
    c.launch(&["--usage-interval", "200ms"]);
    // The kernel's threshold event comes while the unit allocates, before it says `held`.
    let warning = c
        .wait_count("the memory warning", 1, |l| is_memory_warning(l, "hog"))
        .remove(0);
    c.wait_log("the unit holds its memory", |l| {
        common::is_output(l, "hog") && msg(l) == "held"
    });
    let text = msg(&warning);
    assert!(text.contains("of memory-max 128.0M"), "{warning}");
    assert!(text.contains("at or above 90%"), "{warning}");
    // Several more looks at the unit while it stays above the mark: still one warning.
    for round in 0..5 {
        c.wait_log(
            &format!("sampling round {round} after the warning"),
            is_sample_round,
        );
    }
    let warnings = c
        .seen
        .iter()
        .filter(|l| is_memory_warning(l, "hog"))
        .count();
    assert_eq!(warnings, 1, "one warning per episode, not one per sample");
    let status = c.status("hog");
    assert_eq!(
        status["near_limits"],
        serde_json::json!(["memory"]),
        "{status}"
    );
    let listed = status["warnings"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|w| w.as_str().unwrap().contains("of memory-max 128.0M")),
        "{status}"
    );
    let metrics = c.ok(&["metrics", "hog"]).stdout;
    assert_eq!(
        sample(
            &metrics,
            "corral_unit_near_limit{unit=\"hog\",concern=\"memory\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let detail = c.ok(&["status", "hog"]).stdout;
    assert!(detail.contains("warning   memory"), "{detail}");

    // The episode ends when the memory goes: one recovery line, and status clears.
    c.ok(&["kill", "hog", "--signal", "SIGUSR1"]);
    let recovered = c.wait_log("the recovery line", |l| {
        is_about(l, "hog", "no longer near a limit: memory")
    });
    assert!(msg(&recovered).contains("back below 85%"), "{recovered}");
    let status = c.status("hog");
    assert_eq!(status["near_limits"], serde_json::json!([]), "{status}");
    assert_eq!(status["warnings"], serde_json::json!([]), "{status}");
}

#[test]
fn a_raised_memory_max_ends_the_episode_at_once() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    let unit = |max: &str| {
        format!(
            "[exec]\ncommand = [\"python3\", \"-c\", {}]\n[resources]\nmemory-max = \"{max}\"\n",
            toml_str(HOLD_95)
        )
    };
    c.unit("hog", &unit("96M"));
    c.launch(&[]);
    c.wait_count("the memory warning", 1, |l| is_memory_warning(l, "hog"));
    c.wait_log("the unit holds its memory", |l| {
        common::is_output(l, "hog") && msg(l) == "held"
    });
    c.unit("hog", &unit("512M"));
    c.ok(&["reload"]);
    let recovered = c.wait_log("the recovery line", |l| {
        is_about(l, "hog", "no longer near a limit: memory")
    });
    assert!(
        msg(&recovered).contains("of memory-max 512.0M"),
        "{recovered}"
    );
    let status = c.status("hog");
    assert_eq!(status["near_limits"], serde_json::json!([]), "{status}");
    assert_eq!(status["restarts"], 0, "relimited in place: {status}");
}

#[test]
fn a_unit_near_pids_max_warns_once() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    // The shell and eight sleeps: 9 of 10.
    c.unit(
        "forks",
        "[exec]\ncommand = [\"sh\", \"-c\", \"for i in 1 2 3 4 5 6 7 8; do sleep 100000 & done; echo forked; wait\"]\n[resources]\npids-max = 10\n",
    );
    c.launch(&["--usage-interval", "200ms"]);
    let is_pids_warning =
        |l: &Value| is_about(l, "forks", "near a limit: 9 of pids-max 10") && l["level"] == "WARN";
    c.wait_log("the pids warning", is_pids_warning);
    for round in 0..5 {
        c.wait_log(
            &format!("sampling round {round} after the warning"),
            is_sample_round,
        );
    }
    assert_eq!(c.seen.iter().filter(|l| is_pids_warning(l)).count(), 1);
    assert_eq!(
        c.status("forks")["near_limits"],
        serde_json::json!(["pids"])
    );
}

/// The `spin` row's `nr_throttled` in `top --once --json`.
fn top_throttled(c: &Corral) -> u64 {
    let top = c
        .ok(&["top", "--once", "--json", "--interval", "200ms"])
        .json();
    let row = top["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["unit"] == "spin")
        .unwrap_or_else(|| panic!("no spin row: {top}"))
        .clone();
    assert_eq!(row["cpu_quota_percent"], 10, "{row}");
    assert!(row["cpu_percent"].as_f64().is_some(), "{row}");
    row["nr_throttled"].as_u64().unwrap()
}

/// The THROTTLED column of the `spin` line of the text `top --once`.
fn top_text_throttled(c: &Corral) -> u64 {
    let out = c.ok(&["top", "--once", "--interval", "200ms"]).stdout;
    let mut lines = out.lines();
    let _title = lines.next().unwrap();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let column = header.iter().position(|h| *h == "THROTTLED").unwrap();
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("spin "))
        .unwrap_or_else(|| panic!("no spin line:\n{out}"))
        .split_whitespace()
        .collect();
    row[column].parse().unwrap_or_else(|_| panic!("{out}"))
}

fn metrics_throttled(c: &Corral) -> f64 {
    let text = c.ok(&["metrics"]).stdout;
    sample(
        &text,
        "corral_unit_cpu_throttled_periods_total{unit=\"spin\"}",
    )
    .unwrap_or_else(|| panic!("{text}"))
}

fn status_throttled(c: &Corral) -> u64 {
    let s = c.status("spin");
    s["usage"]["nr_throttled"]
        .as_u64()
        .unwrap_or_else(|| panic!("{s}"))
}

/// Reads `figure` until it grows past its first value (bounded by DEADLINE).
fn grows<T: PartialOrd + std::fmt::Debug + Copy>(what: &str, figure: impl Fn() -> T) {
    let first = figure();
    let end = Instant::now() + DEADLINE;
    loop {
        let now = figure();
        if now > first {
            return;
        }
        assert!(Instant::now() < end, "{what} stayed at {first:?}");
    }
}

#[test]
fn a_cpu_bound_unit_under_a_quota_shows_growing_throttling_in_status_top_and_metrics() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "spin",
        "[exec]\ncommand = [\"sh\", \"-c\", \"while :; do :; done\"]\n[resources]\ncpu-quota = \"10%\"\n",
    );
    c.launch(&["--usage-interval", "200ms"]);
    c.wait_log("spin starts", |l| is_about(l, "spin", "started"));
    grows("status nr_throttled", || status_throttled(&c));
    grows("top --once --json nr_throttled", || top_throttled(&c));
    grows("top --once THROTTLED", || top_text_throttled(&c));
    grows("metrics corral_unit_cpu_throttled_periods_total", || {
        metrics_throttled(&c)
    });
    let text = c.ok(&["metrics", "spin"]).stdout;
    let throttled = sample(
        &text,
        "corral_unit_cpu_throttled_seconds_total{unit=\"spin\"}",
    );
    assert!(throttled.is_some_and(|s| s > 0.0), "{text}");
    assert_eq!(
        sample(&text, "corral_unit_cpu_quota_ratio{unit=\"spin\"}"),
        Some(0.1),
        "{text}"
    );
    // Throttled ~90% of the time, far above 1s per minute: one warning for the whole episode.
    let is_throttle_warning =
        |l: &Value| is_about(l, "spin", "near a limit: CPU throttled") && l["level"] == "WARN";
    c.wait_log("the throttling warning", is_throttle_warning);
    for round in 0..10 {
        c.wait_log(
            &format!("sampling round {round} after the warning"),
            is_sample_round,
        );
    }
    assert_eq!(c.seen.iter().filter(|l| is_throttle_warning(l)).count(), 1);
    let status = c.status("spin");
    assert_eq!(
        status["near_limits"],
        serde_json::json!(["cpu-throttling"]),
        "{status}"
    );
}

/// Parses a text exposition with prometheus_client; returns every sample name it found.
fn parse_with_prometheus_client(text: &str) -> Vec<String> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
names = set()
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        names.add(s.name)
print(json.dumps(sorted(names)))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_over_http_parse_and_carry_every_documented_series() {
    if !ready()
        || !require_tool(
            "python3",
            &["-c", "import prometheus_client.parser"],
            "parsing /metrics",
        )
    {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "back",
        "kind = \"slice\"\n[resources]\nmemory-max = \"256M\"\npids-max = 100\n",
    );
    c.unit(
        "db",
        "slice = \"back\"\n[exec]\ncommand = [\"sleep\", \"infinity\"]\n[resources]\nmemory-max = \"64M\"\npids-max = 16\ncpu-quota = \"50%\"\n\
         [oom]\nusage-threshold = \"90%\"\n",
    );
    c.unit(
        "setup",
        "kind = \"oneshot\"\n[exec]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n",
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    c.launch(&["--metrics-listen", &listen]);
    c.wait_log("db starts", |l| is_about(l, "db", "started"));
    c.wait_log("setup has run", |l| {
        is_about(l, "setup", "exited with code 3")
    });
    let body = get_metrics(port);
    let found = parse_with_prometheus_client(&body);
    for (series, optional) in documented_series() {
        if optional {
            // PSI: cgroup v1 has no pressure files unless booted with psi_cgroupv1; the VM tier
            // checks it on v2.
            continue;
        }
        assert!(
            found.contains(&series),
            "documented series {series} missing from /metrics:\n{body}"
        );
    }
    let documented: Vec<String> = documented_series().into_iter().map(|(s, _)| s).collect();
    for name in &found {
        assert!(
            documented.contains(name),
            "/metrics has {name}, which docs/metrics.md does not list"
        );
    }
    // Per unit and per slice, with limits beside usage.
    assert_eq!(
        sample(&body, "corral_unit_memory_max_bytes{unit=\"back\"}"),
        Some(256.0 * 1024.0 * 1024.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "corral_unit_pids_max{unit=\"db\"}"),
        Some(16.0)
    );
    assert_eq!(
        sample(&body, "corral_unit_last_exit_status{unit=\"setup\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&body, "corral_unit_state{unit=\"setup\",state=\"failed\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(
        body.contains("corral_unit_info{unit=\"db\",kind=\"service\",slice=\"back\"} 1"),
        "{body}"
    );
    // The CLI verb renders the same text.
    let cli = c.ok(&["metrics"]).stdout;
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(strip(&cli), strip(&body));

    // Anything but GET /metrics is refused.
    let (status, _, _) = http(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, head, _) = http(port, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(head.contains("Allow: GET"), "{head}");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let (status, _, _) = http(port, &huge);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    // ...and corral still serves afterwards.
    get_metrics(port);

    // At most 16 connections at once: a 17th is served, and the oldest silent one closed to
    // make room for it (silent connections cannot keep a scraper out).
    let mut silent: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    get_metrics(port);
    silent[0].set_read_timeout(Some(DEADLINE)).unwrap();
    let mut closed = Vec::new();
    let n = silent[0].read_to_end(&mut closed).unwrap();
    assert_eq!(n, 0, "the oldest silent connection is closed unanswered");
    drop(silent);
}

#[test]
fn metrics_listen_refuses_a_remote_address_unless_asked() {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "/nonexistent-units", "--metrics-listen", "0.0.0.0:9"]);
    let out = run_bounded(cmd);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--metrics-allow-remote"), "{out:?}");
}

/// Writes `text` to a token file in the test's dir with `mode`; returns its path.
fn token_file(c: &Corral, text: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = c.path("metrics.token");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

/// corral with one unit, serving /metrics on a free loopback port to the bearer of the token
/// `s3cret-Token_1` only; returns it and the port, once the unit started.
fn launch_with_metrics_token() -> (Corral, u16) {
    let mut c = Corral::new();
    c.unit("db", "[exec]\ncommand = [\"sleep\", \"infinity\"]\n");
    let token = token_file(&c, "s3cret-Token_1\n", 0o600);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    c.launch(&["--metrics-listen", &listen, "--metrics-token-file", &token]);
    c.wait_log("db starts", |l| is_about(l, "db", "started"));
    (c, port)
}

#[test]
fn metrics_listen_with_a_token_file_serves_only_the_bearer_of_the_token() {
    if !ready() {
        return;
    }
    // Held to the end: dropping it stops corral.
    let (_corral, port) = launch_with_metrics_token();
    let get = |auth: &str| {
        http(
            port,
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
        )
    };
    // Without the header, with another token (shorter, longer, other case), another scheme, or
    // the token without a scheme: nothing about the units.
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Bearer s3cret-Token_\r\n",
        "Authorization: Bearer s3cret-Token_12\r\n",
        "Authorization: Bearer S3CRET-TOKEN_1\r\n",
        "Authorization: Basic czNjcmV0LVRva2VuXzE=\r\n",
        "Authorization: s3cret-Token_1\r\n",
        "X-Authorization: Bearer s3cret-Token_1\r\n",
    ] {
        let (status, head, body) = get(auth);
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{auth:?}: {head}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        assert!(!body.contains("corral_unit"), "{auth:?}: {body}");
    }
    // A path other than /metrics tells a stranger nothing either.
    let (status, _, _) = http(port, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    // The bearer (scheme and header name in any case, as HTTP allows) gets the metrics.
    for auth in [
        "Authorization: Bearer s3cret-Token_1\r\n",
        "authorization: bearer   s3cret-Token_1  \r\n",
    ] {
        let (status, head, body) = get(auth);
        assert_eq!(status, "HTTP/1.1 200 OK", "{auth:?}: {head}");
        assert!(
            body.contains("corral_unit_info{unit=\"db\",kind=\"service\",slice=\"\"} 1"),
            "{body}"
        );
    }
}

#[test]
fn a_metrics_token_file_that_others_can_read_or_that_is_empty_is_refused() {
    let c = Corral::new();
    for (text, mode, why) in [
        ("s3cret\n", 0o644, "readable by every local user"),
        ("\n", 0o600, "empty"),
        ("two words\n", 0o600, "a space"),
    ] {
        let token = token_file(&c, text, mode);
        let mut cmd = Command::new(BIN);
        cmd.args([
            "run",
            "/nonexistent-units",
            "--metrics-listen",
            "127.0.0.1:9",
        ])
        .args(["--metrics-token-file", &token]);
        let out = run_bounded(cmd);
        assert_eq!(out.code, 2, "{text:?} {mode:o}: {out:?}");
        assert!(
            out.stderr.contains(&token) && out.stderr.contains(why),
            "{text:?} {mode:o}: {out:?}"
        );
    }
}

/// A private tmux server for one test, killed (only it) on drop.
struct Tmux {
    server: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.server, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("running tmux")
    }

    fn capture(&self) -> Vec<String> {
        let out = self.cmd(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Captures until `pred` holds (bounded by DEADLINE).
    fn wait_screen(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let end = Instant::now() + DEADLINE;
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < end,
                "waiting for {what}; screen:\n{}",
                screen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// A frame is the title, the column header and one row per unit, every row with all 11
/// columns: a leftover of an earlier frame would break one of these.
fn assert_clean_frame(screen: &[String], units: &[&str]) {
    assert_eq!(screen.len(), 2 + units.len(), "{}", screen.join("\n"));
    assert!(
        screen[0].starts_with("corral top "),
        "{}",
        screen.join("\n")
    );
    assert!(
        screen[0].ends_with("(c: cpu, m: memory, q: quit)"),
        "{}",
        screen.join("\n")
    );
    assert_eq!(screen[1].split_whitespace().next(), Some("UNIT"));
    assert_eq!(screen[1].split_whitespace().count(), 12, "{}", screen[1]); // "IO R/W" is two words
    for row in &screen[2..] {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields.len(), 11, "row {row:?} in\n{}", screen.join("\n"));
        assert!(
            units.contains(&fields[0].trim_end_matches('/')),
            "unknown row {row:?}"
        );
    }
}

#[test]
fn top_runs_in_a_real_terminal_and_redraws_cleanly() {
    if !ready() || !require_tool("tmux", &["-V"], "the terminal test of `corral top`") {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "back",
        "kind = \"slice\"\n[resources]\nmemory-max = \"256M\"\n",
    );
    c.unit(
        "spin",
        "slice = \"back\"\n[exec]\ncommand = [\"sh\", \"-c\", \"while :; do :; done\"]\n[resources]\ncpu-quota = \"5%\"\n",
    );
    c.unit("idle", "[exec]\ncommand = [\"sleep\", \"infinity\"]\n");
    c.launch(&[]);
    c.wait_log("spin starts", |l| is_about(l, "spin", "started"));
    let tmux = Tmux {
        server: format!("corral-test-{}", std::process::id()),
    };
    let command = format!("{BIN} --socket {} top --interval 300ms", c.socket.display());
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "132",
        "-y",
        "20",
        &command,
    ]);
    assert!(out.status.success(), "{out:?}");
    let units = ["back", "spin", "idle"];
    // The second frame has CPU figures (the first cannot).
    let first = tmux.wait_screen("a frame with CPU figures", |s| {
        s.len() == 5
            && s.iter().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.first() == Some(&"spin") && fields.get(2).is_some_and(|cpu| *cpu != "-")
            })
    });
    assert_clean_frame(&first, &units);
    // The slice comes first with its unit indented beneath it (sorted by CPU).
    let names: Vec<&str> = first[2..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["back/", "spin", "idle"], "{}", first.join("\n"));
    assert!(first[3].starts_with("  spin "), "{}", first.join("\n"));
    // A later frame (the clock in the title moved on) is just as clean.
    let later = tmux.wait_screen("a redraw", |s| s.first() != first.first() && s.len() >= 2);
    assert_clean_frame(&later, &units);
    // Keys: m sorts by memory, q quits.
    tmux.cmd(&["send-keys", "-t", "top", "m"]);
    let by_memory = tmux.wait_screen("the memory sort", |s| {
        s.first().is_some_and(|t| t.contains("sorted by memory"))
    });
    assert_clean_frame(&by_memory, &units);
    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let end = Instant::now() + DEADLINE;
    while tmux.cmd(&["has-session", "-t", "top"]).status.success() {
        assert!(Instant::now() < end, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The event loop thread's voluntary context switches: each wake-up from epoll_wait is one.
fn wakeups(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{status}"))
}

/// Waits until `clock` (a corral sampling every 200 ms) has logged `rounds` more samples: a
/// stretch of time measured by somebody else's timer, during which an idle corral should sleep.
fn let_time_pass(clock: &mut Corral, rounds: usize) {
    for round in 0..rounds {
        clock.wait_log(&format!("clock round {round}"), is_sample_round);
    }
}

#[test]
fn an_idle_corral_with_metrics_listen_never_wakes_up() {
    if !ready() {
        return;
    }
    // The subject: a running unit without limits, a slice with some (slices are not
    // sampled), metrics served, a short usage interval that would show if a timer ran.
    let mut idle = Corral::new();
    idle.unit(
        "quiet",
        "slice = \"box\"\n[exec]\ncommand = [\"sleep\", \"infinity\"]\n",
    );
    idle.unit(
        "box",
        "kind = \"slice\"\n[resources]\nmemory-max = \"64M\"\npids-max = 10\n",
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    idle.launch(&["--metrics-listen", &listen, "--usage-interval", "200ms"]);
    idle.wait_log("quiet starts", |l| is_about(l, "quiet", "started"));
    // The clock: another corral whose unit has a pids limit, so it samples every 200 ms.
    let mut clock = Corral::new();
    clock.unit(
        "ticker",
        "[exec]\ncommand = [\"sleep\", \"infinity\"]\n[resources]\npids-max = 10\n",
    );
    clock.launch(&["--usage-interval", "200ms"]);
    let pid = idle.pid();
    // Let the subject settle (its startup), then measure a stretch of five clock rounds.
    let_time_pass(&mut clock, 2);
    let before = wakeups(pid);
    let_time_pass(&mut clock, 5);
    assert_eq!(wakeups(pid), before, "corral woke up with nothing to do");

    // The measure is sensitive: a scrape and a `top` are seen as wake-ups...
    get_metrics(port);
    idle.ok(&["top", "--once", "--interval", "100ms"]);
    let after_asking = wakeups(pid);
    assert!(after_asking > before, "a scrape did not show as a wake-up");
    // ...and leave nothing behind that wakes corral later.
    let_time_pass(&mut clock, 2);
    let settled = wakeups(pid);
    let_time_pass(&mut clock, 5);
    assert_eq!(
        wakeups(pid),
        settled,
        "a scrape or top left corral waking up"
    );
    // No usage round ever ran in the subject: its whole log, once it has exited, says so.
    idle.signal(nix::sys::signal::Signal::SIGTERM);
    idle.wait_exit();
    assert!(idle.seen.iter().any(|l| msg(l) == "corral exits"));
    assert!(
        !idle.seen.iter().any(is_sample_round),
        "the idle corral sampled usage"
    );
}

/// Any local user (TCP shows corral no peer uid) can open every one of the listener's 16
/// connections and send nothing: a new connection then closes the oldest of them (after
/// reading it, so a request that has arrived is still answered), so the bearer gets in.
#[test]
fn idle_connections_of_a_stranger_do_not_lock_the_bearer_out_of_the_metrics_listener() {
    if !ready() {
        return;
    }
    // Held to the end: dropping it stops corral.
    let (_corral, port) = launch_with_metrics_token();
    // More idle connections than the listener takes; each is accepted (or refused) in turn.
    let idle: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let (status, head, _) = http(
        port,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-Token_1\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
    drop(idle);
}

/// Out of descriptors, the metrics listener stays readable but cannot accept: corral stops
/// polling it (one warning) instead of waking for ever, and serves again once a client leaves.
#[test]
fn running_out_of_fds_pauses_the_metrics_listener_once_until_a_client_leaves() {
    if !common::require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("idle", "[exec]\ncommand = [\"sleep\", \"1000\"]\n");
    let port = free_port();
    c.launch(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    c.wait_exec("idle", 1);
    // RLIMIT_NOFILE bounds the numbers of new fds (open ones above it stay): a limit of the
    // count open now plus two leaves a few free numbers at the bottom, whatever corral holds
    // higher up (the control server's reserve fd).
    let open = std::fs::read_dir(format!("/proc/{}/fd", c.pid()))
        .unwrap()
        .count() as u64;
    let limit = open + 2;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit on corral's pid with a limit that lives across the call.
    let set = unsafe { libc::prlimit(c.pid(), libc::RLIMIT_NOFILE, &rlimit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    // Idle connections take the last fds (fewer than the 16 clients allowed); the next ones
    // wait in the kernel's backlog.
    let held: Vec<TcpStream> = (0..15)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    c.wait_log("the listener paused", |l| {
        msg(l).contains("the metrics listener waits until a metrics client leaves")
    });
    // corral still answers on its control socket while paused (refusing with its reserve fd
    // counts: the loop turns).
    let out = c.cli(&["status"]);
    assert_ne!(out.code, 4, "no answer on the control socket: {out:?}");
    drop(held);
    c.wait_log("the listener back", |l| {
        msg(l) == "accepting metrics connections again"
    });
    let paused = c
        .seen
        .iter()
        .filter(|l| msg(l).contains("accepting a metrics connection"))
        .count();
    assert_eq!(paused, 1, "one warning per episode");
}
