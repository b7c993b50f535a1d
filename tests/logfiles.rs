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
