//! Black-box runtime instances: `corral start worker@3` with no file, `corral scale`, and both
//! across reloads of the template.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::symlink;

use common::{Corral, msg, require_root, sleeper, unit_of};
use serde_json::Value;

/// The template every test runs: its command and description expand `%i` and `%n`.
fn template(base: &str) -> String {
    format!(
        "description = \"worker %n\"\n{}",
        sleeper(&format!("{base}%i"))
    )
}

fn cmdline(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// The names `status` lists, in its order.
fn listed(c: &Corral) -> Vec<String> {
    c.ok(&["status", "--json"]).json()["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect()
}

fn is_stopped(line: &Value, unit: &str) -> bool {
    line["target"] != "unit" && unit_of(line) == unit && msg(line).starts_with("stopped")
}

/// Names of the `units` of a start/stop/scale `--json` answer, each with its state.
fn answered(out: &common::Out) -> Vec<(String, String)> {
    out.json()["units"]
        .as_array()
        .unwrap_or_else(|| panic!("no units in {out:?}"))
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn running(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| ((*n).to_owned(), "running".to_owned()))
        .collect()
}

#[test]
fn start_makes_an_instance_from_its_template_and_stop_removes_it() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("worker@", &template("100"));
    c.unit("web", &sleeper("1000"));
    c.launch(&[]);
    c.wait_exec("web", 1);
    // The template alone is no unit.
    assert_eq!(listed(&c), ["web"]);

    let out = c.ok(&["start", "worker@3", "--json"]);
    assert_eq!(answered(&out), running(&["worker@3"]));
    let pid = c.wait_exec("worker@3", 1);
    assert_eq!(cmdline(pid), "sleep\u{0}1003\u{0}");
    let status = c.status("worker@3");
    assert_eq!(status["state"], "running");
    assert_eq!(status["description"], "worker worker@3");
    assert_eq!(listed(&c), ["web", "worker@3"]);
    // A unit like any other: its logs and metrics are there.
    c.ok(&["logs", "worker@3"]);
    let metrics = c.ok(&["metrics", "worker@3"]).stdout;
    assert!(metrics.contains("unit=\"worker@3\""), "{metrics}");

    let out = c.ok(&["stop", "worker@3", "--json"]);
    assert_eq!(answered(&out), []);
    assert!(common::wait_pid_exit(pid as i32, common::DEADLINE));
    assert_eq!(listed(&c), ["web"]);
    let out = c.cli(&["status", "worker@3"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no such unit: worker@3"), "{out:?}");
    // Started again, it is made anew.
    c.ok(&["start", "worker@3"]);
    assert_eq!(cmdline(c.wait_exec("worker@3", 2)), "sleep\u{0}1003\u{0}");
}

/// The lines of `/proc/PID/cgroup` that name this test's cgroup tree.
fn cgroups_in_tree(c: &Corral, pid: i64) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&c.cgroup_root))
        .map(str::to_owned)
        .collect()
}

/// A runtime instance stopped (so removed, once down) and started again with no read of the
/// units directory between is the one the last read made: it must get its cgroup again, as a
/// fresh start of it (or a fresh `corral run`) gives it.
#[test]
fn an_instance_started_again_after_its_stop_or_scale_to_zero_is_in_its_cgroup() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("worker@", &template("100"));
    c.launch(&[]);
    c.ok(&["start", "worker@3"]);
    let first = c.wait_exec("worker@3", 1);
    let cgroups = cgroups_in_tree(&c, first);
    assert!(
        cgroups.iter().any(|l| l.contains("worker@3")),
        "the first run is in its cgroup: {cgroups:?}"
    );
    c.ok(&["stop", "worker@3"]);
    assert!(common::wait_pid_exit(first as i32, common::DEADLINE));
    assert!(listed(&c).is_empty(), "removed once down");
    c.ok(&["start", "worker@3"]);
    let second = c.wait_exec("worker@3", 2);
    assert_eq!(cgroups_in_tree(&c, second), cgroups, "the second run");

    // The same through scale: up, down to none, up again.
    c.ok(&["scale", "worker", "1"]);
    let first = c.wait_exec("worker@1", 1);
    let cgroups = cgroups_in_tree(&c, first);
    assert!(
        cgroups.iter().any(|l| l.contains("worker@1")),
        "{cgroups:?}"
    );
    c.ok(&["scale", "worker", "0"]);
    assert!(common::wait_pid_exit(first as i32, common::DEADLINE));
    c.ok(&["scale", "worker", "1"]);
    let second = c.wait_exec("worker@1", 2);
    assert_eq!(
        cgroups_in_tree(&c, second),
        cgroups,
        "the second run of worker@1"
    );
}

#[test]
fn scale_starts_numbered_instances_and_stops_and_removes_those_above() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("worker@", &template("100"));
    // An instance given by a file is configuration: scale never removes it.
    symlink("worker@.toml", c.units.join("worker@5.toml")).unwrap();
    c.launch(&[]);
    c.wait_exec("worker@5", 1);

    let out = c.ok(&["scale", "worker", "3", "--json"]);
    assert_eq!(
        answered(&out),
        running(&["worker@1", "worker@2", "worker@3"])
    );
    for n in 1..=3 {
        let pid = c.wait_exec(&format!("worker@{n}"), 1);
        assert_eq!(cmdline(pid), format!("sleep\u{0}100{n}\u{0}"));
    }
    assert_eq!(listed(&c), ["worker@1", "worker@2", "worker@3", "worker@5"]);
    // The same scale again changes nothing and answers at once.
    assert_eq!(
        answered(&c.ok(&["scale", "worker@", "3", "--json"])),
        running(&["worker@1", "worker@2", "worker@3"])
    );

    let out = c.ok(&["scale", "worker", "1", "--json"]);
    assert_eq!(answered(&out), running(&["worker@1"]));
    // Answered once they are gone: no longer listed, and stopped.
    assert_eq!(listed(&c), ["worker@1", "worker@5"]);
    for unit in ["worker@2", "worker@3"] {
        c.wait_count(&format!("{unit} stopped"), 1, |l| is_stopped(l, unit));
    }

    let out = c.ok(&["scale", "worker", "0", "--json"]);
    assert_eq!(answered(&out), []);
    assert_eq!(listed(&c), ["worker@5"]);
    c.wait_count("worker@1 stopped", 1, |l| is_stopped(l, "worker@1"));
    assert_eq!(c.status("worker@5")["state"], "running");

    // --no-block answers before they run; the wait is then the caller's.
    let out = c.ok(&["scale", "worker", "2", "--no-block", "--json"]);
    let names: Vec<String> = answered(&out).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["worker@1", "worker@2"]);
    c.wait_exec("worker@2", 2);
}

#[test]
fn runtime_instances_follow_their_template_across_reloads() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("worker@", &template("100"));
    c.unit("web", &sleeper("1000"));
    c.launch(&[]);
    c.wait_exec("web", 1);
    c.ok(&["scale", "worker", "2"]);
    c.ok(&["start", "worker@77"]);
    let web = c.status("web")["pid"].clone();

    // An edit of the template restarts each runtime instance with the new command.
    c.unit("worker@", &template("200"));
    for (unit, arg) in [
        ("worker@1", "2001"),
        ("worker@2", "2002"),
        ("worker@77", "20077"),
    ] {
        assert_eq!(
            cmdline(c.wait_exec(unit, 2)),
            format!("sleep\u{0}{arg}\u{0}"),
            "{unit}"
        );
    }
    assert_eq!(c.status("web")["pid"], web, "web was touched");
    // `corral reload` keeps them all; a scale makes the runtime instances exactly 1..N, so
    // it removes worker@77.
    c.ok(&["reload"]);
    assert_eq!(listed(&c), ["web", "worker@1", "worker@2", "worker@77"]);
    c.ok(&["scale", "worker", "2"]);
    assert_eq!(listed(&c), ["web", "worker@1", "worker@2"]);

    // The template deleted: its runtime instances stop, and corral says why.
    std::fs::remove_file(c.units.join("worker@.toml")).unwrap();
    let gone = c.wait_log("the template's removal", |l| {
        msg(l).starts_with("the template worker@.toml is gone")
    });
    assert_eq!(gone["fields"]["instances"], "worker@1,worker@2", "{gone}");
    c.wait_count("worker@1 and worker@2 stopped", 2, |l| {
        is_stopped(l, "worker@1") || is_stopped(l, "worker@2")
    });
    c.ok(&["reload"]);
    assert_eq!(listed(&c), ["web"]);
    // Put back, the template makes nothing by itself: the set was emptied.
    c.unit("worker@", &template("300"));
    c.ok(&["reload"]);
    assert_eq!(listed(&c), ["web"]);
}

#[test]
fn bad_instance_names_and_missing_templates_are_refused_naming_why() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("worker@", &template("100"));
    c.unit("web", &sleeper("1000"));
    c.launch(&[]);
    c.wait_exec("web", 1);
    let long = format!("worker@{}", "9".repeat(250));
    // A usage error (the request itself is wrong) exits 2; a unit that cannot be, 1.
    for (args, code, want) in [
        (
            vec!["start", "worker@a b"],
            1,
            "\"worker@a b\" is not a unit name (unit names use only letters, digits and `_ . @ -`)",
        ),
        (
            vec!["start", "worker@"],
            1,
            "`worker@` is a template, never started itself (name one of its instances, such as `worker@1`)",
        ),
        (
            vec!["start", "@3"],
            1,
            "invalid unit name \"@3\": nothing before `@`",
        ),
        (
            vec!["start", long.as_str()],
            1,
            "more than the 250 a unit file's name allows",
        ),
        (
            vec!["start", "ghost@3"],
            1,
            "no unit ghost@3, and no template `ghost@` to make it from:",
        ),
        (vec!["start", "nothing"], 1, "no such unit: nothing"),
        (vec!["scale", "ghost", "2"], 1, "no template `ghost@`:"),
        (
            vec!["scale", "worker@2", "2"],
            1,
            "scale takes a template's name (`worker` or `worker@`), not \"worker@2\"",
        ),
        (
            vec!["scale", "worker", "100001"],
            2,
            "more than the 100000 instances scale makes of one template",
        ),
    ] {
        let out = c.cli(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(want),
            "{args:?}: want {want:?} in {out:?}"
        );
    }
    // The missing template's error names the file looked for.
    let out = c.cli(&["start", "ghost@3"]);
    let file = c.units.join("ghost@.toml");
    assert!(
        out.stderr
            .contains(&format!("{} is no file", file.display())),
        "{out:?}"
    );
    // A start naming a good instance beside a bad name applies nothing.
    let out = c.cli(&["start", "worker@1", "ghost@1"]);
    assert_eq!(out.code, 1, "{out:?}");
    // An instance whose name the template cannot take is refused with the template's line.
    c.unit(
        "host@",
        "[exec]\ncommand = [\"sleep\", \"1000\"]\n[namespaces]\nhostname = \"h-%i\"\n",
    );
    c.ok(&["reload"]);
    let out = c.cli(&["start", "host@a_b"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("host@.toml:4:12: error: in instance")
            && out.stderr.contains("invalid host name \"h-a_b\""),
        "{out:?}"
    );
    assert_eq!(listed(&c), ["web"]);
    c.ok(&["scale", "worker", "1"]);
    // An invalid units directory refuses a start or scale that must read it; nothing is
    // applied. Scaling down reads nothing, so it still works.
    c.unit("broken", "[exec]\ncommand = 3\n");
    for args in [&["start", "worker@2"][..], &["scale", "worker", "2"]] {
        let out = c.cli(args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("broken.toml:2:11: error: exec.command"),
            "{args:?}: {out:?}"
        );
        assert_eq!(listed(&c), ["web", "worker@1"], "{args:?}");
    }
    c.ok(&["scale", "worker", "0"]);
    assert_eq!(listed(&c), ["web"]);
}

#[test]
fn a_file_takes_a_runtime_instance_over_and_a_restart_of_corral_forgets_the_rest() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("worker@", &template("100"));
    c.unit("web", &sleeper("1000"));
    c.launch(&[]);
    c.wait_exec("web", 1);
    c.ok(&["scale", "worker", "2"]);
    let first = c.wait_exec("worker@2", 1);

    // A file for worker@2 (a symlink to the template: the same unit) takes it over untouched;
    // scale then no longer removes it.
    symlink("worker@.toml", c.units.join("worker@2.toml")).unwrap();
    c.wait_log("the file's takeover", |l| {
        unit_of(l) == "worker@2" && msg(l) == "a file of its own now defines this runtime instance"
    });
    c.ok(&["scale", "worker", "0"]);
    assert_eq!(listed(&c), ["web", "worker@2"]);
    assert_eq!(c.status("worker@2")["pid"], first);

    c.ok(&["start", "worker@9"]);
    c.wait_exec("worker@9", 1);
    c.ok(&["shutdown"]);
    c.wait_exit();
    // The runtime instances lived in corral's memory: the files' units come back, not they.
    c.launch(&[]);
    c.wait_exec("worker@2", 2);
    assert_eq!(listed(&c), ["web", "worker@2"]);
}
