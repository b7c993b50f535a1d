//! Black-box output features: units' log files (timestamps, rotation under a flood, compression,
//! the symlink attack), `logs --since`/`--grep`, and `ready = "log-line"`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Corral, is_about, is_output, msg, require_root};
use serde_json::Value;

/// The index in `c.seen` of the first line matching `pred`.
fn index_of(c: &Corral, what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    c.seen
        .iter()
        .position(pred)
        .unwrap_or_else(|| c.fail(&format!("no log line for {what}")))
}

#[test]
fn a_log_line_unit_is_ready_only_once_its_line_came_and_its_dependent_waits_for_it() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let gate = c.path("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Writes an unrelated line, then waits for the test before it says the words.
    c.unit(
        "db",
        &format!(
            r#"
            [exec]
            command = ["sh", "-c", "echo warming up; read x < {gate}; echo 'db: listening on 5432'; exec sleep 600"]
            ready = "log-line"
            ready-pattern = "listening on [0-9]+"
            "#,
            gate = gate.display()
        ),
    );
    c.unit(
        "web",
        r#"
        after = ["db"]
        [exec]
        command = ["sleep", "600"]
        "#,
    );
    c.launch(&[]);
    c.wait_log("db's first line", |l| {
        is_output(l, "db") && msg(l) == "warming up"
    });
    let db = c.status("db");
    assert_eq!(db["state"], "starting", "{db}");
    assert_eq!(db["ready"], "log-line", "{db}");
    assert_eq!(c.status("web")["state"], "inactive");
    let table = c.cli(&["status"]).stdout;
    assert!(
        table.contains("waiting for a line matching ready-pattern"),
        "{table}"
    );

    std::fs::write(&gate, "go\n").unwrap();
    c.wait_log("web started", |l| is_about(l, "web", "started"));
    let line = index_of(&c, "db's ready line", |l| {
        is_output(l, "db") && msg(l) == "db: listening on 5432"
    });
    let ready = index_of(&c, "db ready", |l| {
        is_about(l, "db", "ready (a line matched ready-pattern)")
    });
    let web = index_of(&c, "web started", |l| is_about(l, "web", "started"));
    assert!(
        line < web && ready < web,
        "db's line, then web: {line} {ready} {web}"
    );
    assert_eq!(c.status("db")["state"], "running");
}

#[test]
fn a_log_line_unit_whose_line_never_comes_fails_its_start_at_start_timeout() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "mute",
        r#"
        [exec]
        command = ["sh", "-c", "echo booting; exec sleep 600"]
        ready = "log-line"
        ready-pattern = "^ready$"
        start-timeout = "300ms"
        [restart]
        policy = "never"
        "#,
    );
    c.launch(&[]);
    c.wait_log("the start timeout", |l| {
        is_about(
            l,
            "mute",
            "not ready within start-timeout 300ms (no line matched ready-pattern)",
        )
    });
    c.wait_log("the failure", |l| is_about(l, "mute", "not restarting"));
    let status = c.status("mute");
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["last_exit"]["reason"], "start-timeout", "{status}");
}

#[test]
fn logs_since_and_grep_filter_the_buffer_and_a_follower_gets_only_matching_new_lines() {
    if !require_root() {
        return;
    }
    use std::io::BufRead;
    let mut c = Corral::new();
    let gate = c.path("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    c.unit(
        "web",
        &format!(
            r#"
            [exec]
            command = ["sh", "-c", "echo 'GET /a 200'; echo 'GET /b 500'; read x < {gate}; echo 'GET /c 500'; echo 'GET /d 200'; echo 'GET /e 500'; exec sleep 600"]
            "#,
            gate = gate.display()
        ),
    );
    c.launch(&[]);
    c.wait_log("web's second line", |l| {
        is_output(l, "web") && msg(l) == "GET /b 500"
    });
    let texts = |out: &common::Out| -> Vec<String> {
        out.stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let all = c.ok(&["logs", "web", "--json"]);
    assert_eq!(texts(&all), ["GET /a 200", "GET /b 500"]);
    let grep = c.ok(&["logs", "web", "--json", "--grep", " 5[0-9]{2}$"]);
    assert_eq!(texts(&grep), ["GET /b 500"]);
    let since_b: Value = serde_json::from_str(all.stdout.lines().nth(1).unwrap()).unwrap();
    let since = since_b["time"].as_str().unwrap();
    assert_eq!(
        texts(&c.ok(&["logs", "web", "--json", "--since", since])),
        ["GET /b 500"]
    );
    assert_eq!(
        texts(&c.ok(&["logs", "web", "--json", "--since", "1h"])),
        ["GET /a 200", "GET /b 500"]
    );
    assert!(texts(&c.ok(&["logs", "web", "--json", "--grep", "^nothing"])).is_empty());

    let bad = c.cli(&["logs", "web", "--grep", "(unclosed"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("grep: invalid regular expression"),
        "{bad:?}"
    );
    let bad = c.cli(&["logs", "web", "--since", "yesterday"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("neither a duration"), "{bad:?}");

    // A follower with --grep: the matching backlog, then only the new lines that match.
    let mut follower = c
        .cmd(&["logs", "web", "-f", "--json", "--grep", "500"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread so that a missing line fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        let line = rx.recv_timeout(common::DEADLINE).expect("a followed line");
        let line: Value = serde_json::from_str(&line).unwrap();
        line["text"].as_str().unwrap().to_owned()
    };
    assert_eq!(next(), "GET /b 500");
    std::fs::write(&gate, "go\n").unwrap();
    assert_eq!(next(), "GET /c 500");
    assert_eq!(next(), "GET /e 500", "GET /d 200 does not match");
    follower.kill().unwrap();
    follower.wait().unwrap();
}

/// The lines of a log file, gunzipped if its name ends in `.gz`.
fn file_lines(path: &std::path::Path) -> Vec<String> {
    use std::io::Read;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("gunzipping {}: {e}", path.display()));
        out
    } else {
        bytes
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `2026-12-03T10:00:00.123456Z out text` into its stamp, stream and text.
fn parse_line(line: &str) -> (&str, &str, &str) {
    let mut parts = line.splitn(3, ' ');
    let (time, stream, text) = (
        parts.next().unwrap(),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    assert!(
        humantime::parse_rfc3339(time).is_ok() && time.ends_with('Z') && time.len() == 27,
        "an RFC 3339 UTC stamp with microseconds: {line:?}"
    );
    (time, stream, text)
}

/// Shuts corral down and waits for it: the writer has written what was queued then.
fn shut_down(c: &mut Corral) {
    c.ok(&["shutdown"]);
    c.wait_exit();
}

#[test]
fn a_units_lines_land_in_its_file_and_log_dir_gives_the_others_theirs() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut c = Corral::new();
    let own = c.path("own");
    std::fs::create_dir(&own).unwrap();
    let all = c.path("all");
    c.unit(
        "web",
        &format!(
            r#"
            [exec]
            command = ["sh", "-c", "echo hello; printf 'raw \\033[31m\\377 bytes\\n' >&2; exec sleep 600"]
            [logs]
            file = "{}/web.log"
            "#,
            own.display()
        ),
    );
    c.unit(
        "api",
        r#"
        [exec]
        command = ["sh", "-c", "echo from api; exec sleep 600"]
        "#,
    );
    c.launch(&["--log-dir", all.to_str().unwrap()]);
    c.wait_count("both units' lines", 3, |l| {
        is_output(l, "web") || (is_output(l, "api") && msg(l) == "from api")
    });
    shut_down(&mut c);

    let web = std::fs::read(own.join("web.log")).unwrap();
    let text = String::from_utf8_lossy(&web);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    let out = lines.iter().find(|l| l.contains(" out ")).unwrap();
    let (_, stream, text_of_out) = parse_line(out);
    assert_eq!((stream, text_of_out), ("out", "hello"));
    // stderr's bytes as written: not escaped, not made UTF-8.
    assert!(
        web.windows(16).any(|w| w == b"raw \x1b[31m\xff bytes"),
        "{text:?}"
    );
    assert!(text.lines().any(|l| parse_line(l).1 == "err"), "{text:?}");
    let meta = std::fs::metadata(own.join("web.log")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.uid(), 0);

    let api = file_lines(&all.join("api.log"));
    assert_eq!(api.len(), 1, "{api:?}");
    let (_, stream, text_of_api) = parse_line(&api[0]);
    assert_eq!((stream, text_of_api), ("out", "from api"));
    assert!(
        !all.join("web.log").exists(),
        "web's own file wins over --log-dir"
    );
    let dir_mode = std::fs::metadata(&all).unwrap().permissions().mode() & 0o7777;
    assert_eq!(dir_mode, 0o750, "--log-dir is created 0750");
}

#[test]
fn a_flood_rotates_within_max_size_keeps_keep_compressed_files_and_status_still_answers() {
    if !require_root() {
        return;
    }
    const MAX: usize = 4096;
    const KEEP: usize = 3;
    let mut c = Corral::new();
    let logs = c.path("logs");
    std::fs::create_dir(&logs).unwrap();
    let gate = c.path("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    c.unit(
        "flood",
        &format!(
            r#"
            kind = "oneshot"
            enabled = false
            [exec]
            command = ["sh", "-c", "seq -f 'line %.0f of the flood, padded to be a little longer' 1 200000; read x < {gate}"]
            [logs]
            file = "{logs}/flood.log"
            max-size = "4K"
            keep = {KEEP}
            compress = true
            "#,
            gate = gate.display(),
            logs = logs.display()
        ),
    );
    c.launch(&[]);
    c.ok(&["start", "flood", "--no-block"]);
    // The loop answers while the flood goes on and the writer rotates and compresses.
    let mut answered_while_flooding = 0;
    for _ in 0..5 {
        let status = c.status("flood");
        assert_eq!(status["state"], "starting", "{status}");
        answered_while_flooding += 1;
    }
    assert_eq!(answered_while_flooding, 5);
    std::fs::write(&gate, "go\n").unwrap();
    c.wait_log("the flood's end", |l| is_about(l, "flood", "exited"));
    shut_down(&mut c);

    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let want: Vec<String> = std::iter::once("flood.log".to_owned())
        .chain((1..=KEEP).map(|n| format!("flood.log.{n}.gz")))
        .collect();
    assert_eq!(
        names, want,
        "the file and exactly `keep` compressed rotations"
    );
    let line_len =
        "2026-12-03T10:00:00.000000Z out line 200000 of the flood, padded to be a little longer\n"
            .len();
    let mut last_seen = 0u64;
    // Oldest first: each file's lines follow the previous file's.
    for name in want.iter().rev() {
        let path = logs.join(name);
        let lines = file_lines(&path);
        let size: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(!lines.is_empty(), "{name} is empty");
        assert!(
            size <= MAX + line_len,
            "{name}: {size} bytes, max-size {MAX}"
        );
        if name != "flood.log" {
            assert!(
                size + line_len > MAX,
                "{name} was rotated early: {size} bytes"
            );
        }
        for line in &lines {
            let (_, stream, text) = parse_line(line);
            if stream == "corral" {
                assert!(text.contains("lines dropped"), "{line}");
                continue;
            }
            assert_eq!(stream, "out", "{line}");
            let n: u64 = text
                .strip_prefix("line ")
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name}: {line:?}"));
            assert!(n > last_seen, "{name}: line {n} after {last_seen}");
            last_seen = n;
        }
    }
    assert!(
        last_seen > 190_000,
        "the newest lines are kept: {last_seen}"
    );
}

#[test]
fn a_symlink_planted_at_the_log_path_is_refused_and_its_target_untouched() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut c = Corral::new();
    let secret = c.path("secret");
    std::fs::write(&secret, "precious\n").unwrap();
    let logs = c.path("logs");
    std::fs::create_dir(&logs).unwrap();
    // A directory the unit's user could write; that user planted the link.
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink(&secret, logs.join("web.log")).unwrap();
    c.unit(
        "web",
        &format!(
            r#"
            [exec]
            command = ["sh", "-c", "echo overwrite me; exec sleep 600"]
            [logs]
            file = "{}/web.log"
            "#,
            logs.display()
        ),
    );
    c.launch(&[]);
    let refusal = c.wait_log("the refusal", |l| msg(l).contains("web.log is a symlink"));
    assert_eq!(refusal["level"], "WARN", "{refusal}");
    assert_eq!(c.status("web")["state"], "running", "the unit runs on");
    shut_down(&mut c);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "precious\n");
    let link = std::fs::symlink_metadata(logs.join("web.log")).unwrap();
    assert!(link.file_type().is_symlink(), "the link is left as it was");
}

#[test]
fn a_reload_that_adds_a_log_file_applies_it_from_the_next_line_without_a_restart() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let gate = c.path("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let logs = c.path("logs");
    std::fs::create_dir(&logs).unwrap();
    let exec = format!(
        r#"
        [exec]
        command = ["sh", "-c", "echo before; read x < {gate}; echo after; exec sleep 600"]
        "#,
        gate = gate.display()
    );
    c.unit("web", &exec);
    c.launch(&[]);
    c.wait_log("the first line", |l| {
        is_output(l, "web") && msg(l) == "before"
    });
    let pid = c.status("web")["pid"].clone();
    c.unit(
        "web",
        &format!("{exec}\n[logs]\nfile = \"{}/web.log\"\n", logs.display()),
    );
    let plan = c.ok(&["reload", "--json"]).json();
    assert_eq!(
        plan["reload"]["updated"],
        serde_json::json!(["web"]),
        "{plan}"
    );
    std::fs::write(&gate, "go\n").unwrap();
    c.wait_log("the second line", |l| {
        is_output(l, "web") && msg(l) == "after"
    });
    assert_eq!(c.status("web")["pid"], pid, "not restarted");
    shut_down(&mut c);
    let lines = file_lines(&logs.join("web.log"));
    let texts: Vec<&str> = lines.iter().map(|l| parse_line(l).2).collect();
    assert_eq!(texts, ["after"]);
}

/// `logs --grep` is bounded on the loop at 50 ms per answer, but the budget is checked only
/// between lines, and one line's match can cost far more: a line is kept up to 8 KiB and
/// regex-lite's time is the line's length times the pattern's compiled size. At the 256 KiB a
/// `ready-pattern` may take, `(?:0|1|2|3){0,1000}Q` (22 characters) took about 0.7 s per 8 KiB
/// line in a release build (1.5 s in a debug one), all of it on the loop, for anyone who may
/// read logs. `--grep` patterns now compile within 8 KiB (refused past it), where one line
/// costs at most about 15 ms (release).
#[test]
fn a_costly_grep_pattern_over_long_lines_stays_within_its_time_budget() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // Four lines of 8000 zeros each: output lines are kept up to 8 KiB.
    c.unit(
        "long",
        r#"
        [exec]
        command = ["sh", "-c", "for i in 1 2 3 4; do printf '%08000d\n' 0; done; echo done; exec sleep 600"]
        "#,
    );
    c.launch(&[]);
    c.wait_log("the last line", |l| {
        is_output(l, "long") && msg(l) == "done"
    });
    let start = std::time::Instant::now();
    c.ok(&["logs", "long", "-n", "1"]);
    let plain = start.elapsed();
    let start = std::time::Instant::now();
    let out = c.cli(&["logs", "long", "--grep", "(?:0|1|2|3){0,1000}Q"]);
    let grep = start.elapsed();
    // The documented budget is 50 ms per answer; a CLI round trip as long as a plain `logs`,
    // plus ten times that budget, is room enough for a loaded machine.
    let bound = plain + std::time::Duration::from_millis(10 * 50);
    assert!(
        grep <= bound,
        "logs --grep took {grep:?} (a plain logs {plain:?}, bound {bound:?}): {out:?}"
    );
}
