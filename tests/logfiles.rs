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
    assert!(line < web && ready < web, "db's line, then web: {line} {ready} {web}");
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
