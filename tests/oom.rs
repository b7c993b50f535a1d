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

/// Grows by 2 MiB (written, so charged) every 100 ms until something stops it; its SIGTERM
/// handler appends to the marker file `argv[1]` and exits 0. A run that finds the marker
/// already there stays small, so what follows a graceful restart is quiet.
const GROWER: &str = r#"
import os, signal, sys, time
marker = sys.argv[1]
def term(*_):
    with open(marker, "a") as f:
        f.write("graceful\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
if os.path.exists(marker):
    print("after the restart: staying small", flush=True)
    while True:
        time.sleep(1000)
print("growing", flush=True)
chunks = []
while True:
    chunks.append(b"x" * (2 << 20))
    time.sleep(0.1)
"#;

fn grower_unit(marker: &std::path::Path, oom: &str) -> String {
    format!(
        "[exec]\ncommand = [\"python3\", \"-c\", {}, {}]\n[resources]\nmemory-max = \"64M\"\n[restart]\ndelay = \"100ms\"\n[oom]\n{oom}",
        common::toml_str(GROWER),
        common::toml_str(&marker.to_string_lossy()),
    )
}

/// cgroup v1 has no per-cgroup PSI here: `usage-threshold` is watched by the kernel's usage
/// thresholds (memory.usage_in_bytes eventfds), and the restart comes before any OOM kill.
#[test]
fn a_unit_growing_past_its_usage_threshold_is_restarted_gracefully_before_the_oom_killer() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    let marker = c.path("grower.marker");
    c.unit(
        "grower",
        &grower_unit(&marker, "usage-threshold = \"50%\"\naction = \"restart\"\n"),
    );
    c.launch(&[]);
    c.wait_log("the pressure action", |l| {
        is_about(
            l,
            "grower",
            "restarting before the OOM killer acts (not a failure)",
        )
    });
    c.wait_log("the graceful stop", |l| {
        is_about(
            l,
            "grower",
            "stopped for a memory-pressure restart (exited with code 0)",
        )
    });
    c.wait_log("the next run", |l| {
        common::is_output(l, "grower") && common::msg(l) == "after the restart: staying small"
    });
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "graceful\n");
    let status = c.status("grower");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["oom_kills"], 0, "{status}");
    assert_eq!(status["restarts"], 0, "{status}");
    assert_eq!(status["pressure_restarts"], 1, "{status}");
    assert_eq!(
        status["last_exit"],
        json!({"code": 0, "reason": "memory-pressure"}),
        "{status}"
    );
    let pressure = &status["pressure"];
    assert_eq!(
        pressure["watched_by"],
        json!(["usage-thresholds"]),
        "{status}"
    );
    assert_eq!(pressure["usage_threshold_percent"], 50, "{status}");
    assert_eq!(pressure["action"], "restart", "{status}");
    assert_eq!(pressure["actions"], 1, "{status}");
    let text = c.ok(&["status", "grower"]).stdout;
    assert!(
        text.contains("restart at usage 50% of memory-max; watched by usage-thresholds"),
        "{text}"
    );
    let metrics = c.ok(&["metrics"]).stdout;
    assert!(
        metrics.contains("corral_unit_pressure_restarts_total{unit=\"grower\"} 1"),
        "{metrics}"
    );
}

/// `action = "warn"` only warns: the kernel's OOM killer still ends the run, as without the key.
#[test]
fn a_unit_whose_pressure_action_is_warn_is_warned_about_then_oom_killed() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    let marker = c.path("warned.marker");
    c.unit(
        "warned",
        &grower_unit(&marker, "usage-threshold = \"50%\"\naction = \"warn\"\n"),
    );
    c.launch(&[]);
    c.wait_log("the warning", |l| {
        is_about(l, "warned", "an OOM kill may follow (action warn)")
    });
    c.wait_log("the OOM kill", |l| {
        is_about(l, "warned", "OOM kill of the unit's main process")
    });
    assert!(!marker.exists(), "no SIGTERM reached the unit");
    let status = c.status("warned");
    assert!(status["oom_kills"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["pressure_restarts"], 0, "{status}");
    assert_eq!(status["pressure"]["actions"], 1, "{status}");
}

/// A reload that adds `[oom]` keys to a running unit applies them in place (no restart for the
/// reload itself), re-arms the kernel's usage thresholds and judges the unit's usage at once.
#[test]
fn a_reload_that_adds_a_usage_threshold_acts_on_the_running_unit_in_place() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    let holder = "[exec]\ncommand = [\"python3\", \"-c\", \"import signal, sys, time\\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\\nx = b'x' * (40 << 20)\\nprint('held', flush=True)\\ntime.sleep(1000)\"]\n[resources]\nmemory-max = \"64M\"\n";
    c.unit("holder", holder);
    c.launch(&[]);
    c.wait_log("the unit holds 40M", |l| {
        common::is_output(l, "holder") && common::msg(l) == "held"
    });
    let pid = c.status("holder")["pid"].clone();
    assert!(c.status("holder")["pressure"].is_null());
    c.unit(
        "holder",
        &format!("{holder}[oom]\nusage-threshold = \"50%\"\naction = \"restart\"\n"),
    );
    // The file watcher may apply it first; either way one reload re-limits the unit.
    c.ok(&["reload"]);
    c.wait_log("the reload applied in place", |l| {
        common::msg(l) == "reload applied" && l["fields"]["relimited"] == "holder"
    });
    c.wait_log("the pressure restart", |l| {
        is_about(
            l,
            "holder",
            "stopped for a memory-pressure restart (exited with code 0)",
        )
    });
    c.wait_count("the next run holds again", 2, |l| {
        common::is_output(l, "holder") && common::msg(l) == "held"
    });
    let status = c.status("holder");
    assert_ne!(status["pid"], pid, "{status}");
    assert_eq!(status["pressure_restarts"], 1, "{status}");
    assert_eq!(status["restarts"], 0, "{status}");
    assert_eq!(status["oom_kills"], 0, "{status}");
}

/// cgroup v1 has no per-cgroup PSI here: a `pressure-threshold` is accepted, said once to be
/// unwatched, and `status` lists nothing watching it.
#[test]
fn a_pressure_threshold_on_cgroup_v1_is_said_to_be_unwatched() {
    if !ready() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "calm",
        &format!(
            "{}[oom]\npressure-threshold = \"some 10% over 2s\"\naction = \"restart\"\n",
            sleeper("1000")
        ),
    );
    c.launch(&[]);
    c.wait_log("the warning", |l| {
        is_about(
            l,
            "calm",
            "pressure-threshold \"some 10% over 2s\" is not watched",
        )
    });
    let status = c.status("calm");
    assert_eq!(status["pressure"]["watched_by"], json!([]), "{status}");
    assert_eq!(
        status["pressure"]["pressure_threshold"], "some 10% over 2s",
        "{status}"
    );
}
