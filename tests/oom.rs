//! OOM kills on the real kernel: classified from the unit's own counter, restarted per policy, counted when they spare the main process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Corral, is_about, require_cgroup_v1, require_root, shell, sleeper};
use serde_json::json;

/// Allocates (and touches) 200 MiB: far past any limit these tests set.
const HOG: &str = r#"["python3", "-c", "x = b'a' * (200 << 20)"]"#;

fn ready() -> bool {
    require_root() && require_cgroup_v1()
}

#[test]
fn a_unit_over_memory_max_is_oom_killed_reported_and_restarted_with_backoff() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "hog",
        &format!(
            "[exec]\ncommand = {HOG}\n[resources]\nmemory-max = \"32M\"\n[restart]\ndelay = \"100ms\"\nstart-limit-burst = 10\n"
        ),
    );
    c.launch(&[]);
    c.wait_log("the first OOM kill", |l| {
        is_about(l, "hog", "OOM kill of the unit's main process")
    });
    c.wait_log("its backoff", |l| {
        is_about(l, "hog", "(OOM kill); restarting in")
    });
    c.wait_log("the second OOM kill", |l| {
        is_about(l, "hog", "OOM kill of the unit's main process")
    });
    let status = c.status("hog");
    assert_eq!(
        status["last_exit"],
        json!({"signal": "SIGKILL", "oom": true}),
        "{status}"
    );
    assert!(status["oom_kills"].as_u64().unwrap() >= 2, "{status}");
    assert!(status["restarts"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["last_oom"].is_string(), "{status}");
}

#[test]
fn on_oom_restarts_after_an_oom_kill_but_not_after_exit_1() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "hog",
        &format!(
            "[exec]\ncommand = {HOG}\n[resources]\nmemory-max = \"32M\"\n[restart]\npolicy = \"on-oom\"\ndelay = \"100ms\"\n"
        ),
    );
    c.unit(
        "quitter",
        "[exec]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\n[resources]\nmemory-max = \"32M\"\n[restart]\npolicy = \"on-oom\"\n",
    );
    c.launch(&[]);
    c.wait_log("quitter ends", |l| {
        is_about(l, "quitter", "exited with code 1; not restarting")
    });
    c.wait_log("the hog restarts", |l| {
        is_about(l, "hog", "(OOM kill); restarting in")
    });
    let quitter = c.status("quitter");
    assert_eq!(quitter["state"], "failed", "{quitter}");
    assert_eq!(quitter["restarts"], 0, "{quitter}");
    assert_eq!(quitter["oom_kills"], 0, "{quitter}");
}

#[test]
fn sigkill_from_outside_and_exit_137_are_never_oom() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    let limited = "[resources]\nmemory-max = \"32M\"\n[restart]\npolicy = \"never\"\n";
    c.unit("victim", &format!("{}{limited}", sleeper("1000")));
    c.unit("outsider", &format!("{}{limited}", sleeper("1000")));
    c.unit("liar", &format!("{}{limited}", shell("exit 137")));
    c.launch(&[]);
    c.wait_count("exit 137", 1, |l| {
        is_about(l, "liar", "exited with code 137")
    });
    let liar = c.status("liar");
    assert_eq!(liar["last_exit"], json!({"code": 137}), "{liar}");
    assert_eq!(liar["oom_kills"], 0, "{liar}");
    c.ok(&["start", "victim", "outsider"]);
    c.ok(&["kill", "victim", "--signal", "SIGKILL"]);
    let pid = c.status("outsider")["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for unit in ["victim", "outsider"] {
        c.wait_count("the kill", 1, |l| {
            is_about(l, unit, "killed by SIGKILL; not restarting")
        });
        let status = c.status(unit);
        assert_eq!(
            status["last_exit"],
            json!({"signal": "SIGKILL"}),
            "{status}"
        );
        assert_eq!(status["oom_kills"], 0, "{status}");
    }
}

#[test]
fn an_oom_kill_that_spares_the_main_process_is_counted_and_the_unit_keeps_running() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "parent",
        r#"
        [exec]
        command = ["sh", "-c", "python3 -c \"x = b'a' * (200 << 20)\"; echo child ended $?; exec sleep 1000"]
        [resources]
        memory-max = "32M"
        "#,
    );
    c.launch(&[]);
    let pid_before = c.status("parent")["pid"].clone();
    c.wait_log("the child's OOM kill", |l| {
        is_about(
            l,
            "parent",
            "OOM kill of a process of the unit (the main process lives)",
        )
    });
    let status = c.status("parent");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["pid"], pid_before, "{status}");
    assert_eq!(status["oom_kills"], 1, "{status}");
    assert_eq!(status["restarts"], 0, "{status}");
    assert!(status["last_exit"].is_null(), "{status}");
}

/// The way many people write commands: a shell runs the real program. When the program is
/// OOM-killed, the shell exits 137 (or a wrapper exits 1); the run still ended by OOM
/// (docs/units.md, "OOM kills"), as Kubernetes and systemd report it.
#[test]
fn a_shell_wrapper_whose_worker_is_oom_killed_ended_by_oom() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    let hog = "python3 -c \\\"x = b'a' * (200 << 20)\\\"";
    c.unit(
        "wrapped",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", \"{hog}; exit $?\"]\n[resources]\nmemory-max = \"32M\"\n[restart]\npolicy = \"on-oom\"\ndelay = \"100ms\"\n"
        ),
    );
    c.unit(
        "wrapper1",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", \"{hog} || exit 1\"]\n[resources]\nmemory-max = \"32M\"\n[restart]\npolicy = \"on-oom\"\ndelay = \"100ms\"\n"
        ),
    );
    c.launch(&[]);
    // Both units are OOM-killed at about the same time: each one's lines are looked for in the
    // whole log, since the other's may come first.
    for (unit, code) in [("wrapped", 137), ("wrapper1", 1)] {
        c.wait_count("the worker's OOM kill ends the run", 1, |l| {
            is_about(
                l,
                unit,
                "OOM kill of a process of the unit, and the main process ended with it",
            )
        });
        c.wait_count("on-oom restarts it", 1, |l| {
            is_about(
                l,
                unit,
                &format!("exited with code {code} (OOM kill); restarting in"),
            )
        });
        let status = c.status(unit);
        assert_eq!(
            status["last_exit"],
            json!({"code": code, "oom": true}),
            "{status}"
        );
        assert!(status["oom_kills"].as_u64().unwrap() >= 1, "{status}");
    }
}
