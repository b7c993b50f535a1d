//! Black-box hot reload: edits, editor save patterns, broken input, symlink swaps, scale, SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{
    Corral, Out, msg, reaped_pid, require_cgroup_v1, require_root, run_bounded, sleeper, unit_of,
};
use nix::sys::signal::Signal;
use serde_json::Value;

/// A service that sleeps; `arg` tells two versions of its command apart.
/// `sleeper` with a memory limit.
fn limited(arg: &str, memory_max: &str) -> String {
    format!(
        "{}[resources]\nmemory-max = \"{memory_max}\"\n",
        sleeper(arg)
    )
}

/// A supervisor message (not unit output) about `unit` that is exactly `text`.
fn says(line: &Value, unit: &str, text: &str) -> bool {
    line["target"] != "unit" && unit_of(line) == unit && msg(line) == text
}

fn is_start(line: &Value, unit: &str) -> bool {
    says(line, unit, "started")
}

fn is_stop(line: &Value, unit: &str) -> bool {
    line["target"] != "unit" && unit_of(line) == unit && msg(line).starts_with("stopped")
}

fn is_applied(line: &Value) -> bool {
    line["target"] != "unit" && msg(line) == "reload applied"
}

/// The line every reload ends with: applied, nothing changed, or refused.
fn is_reload_outcome(line: &Value) -> bool {
    let m = msg(line);
    line["target"] != "unit"
        && (m == "reload applied"
            || m == "reload: nothing changed"
            || m.starts_with("reload refused"))
}

/// A comma-joined name list of a "reload applied" line, sorted.
fn list(line: &Value, field: &str) -> Vec<String> {
    let mut names: Vec<String> = line["fields"][field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

fn strings(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    v.sort();
    v
}

/// What one "reload applied" line says, list by list.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    added: Vec<String>,
    removed: Vec<String>,
    restarted: Vec<String>,
    relimited: Vec<String>,
    updated: Vec<String>,
    unchanged: u64,
}

impl Plan {
    fn of(line: &Value) -> Plan {
        Plan {
            added: list(line, "added"),
            removed: list(line, "removed"),
            restarted: list(line, "restarted"),
            relimited: list(line, "relimited"),
            updated: list(line, "updated"),
            unchanged: line["fields"]["unchanged"]
                .as_u64()
                .unwrap_or_else(|| panic!("no unchanged count in {line}")),
        }
    }

    /// A plan that only restarts `names`, leaving `unchanged` units alone.
    fn restarts(names: &[&str], unchanged: u64) -> Plan {
        Plan {
            restarted: strings(names),
            unchanged,
            ..Plan::none()
        }
    }

    fn none() -> Plan {
        Plan {
            added: Vec::new(),
            removed: Vec::new(),
            restarted: Vec::new(),
            relimited: Vec::new(),
            updated: Vec::new(),
            unchanged: 0,
        }
    }
}

/// Waits for the next reload to finish and requires that it applied a change.
fn next_reload(c: &mut Corral) -> Plan {
    let line = c.wait_log("a reload", is_reload_outcome);
    if !is_applied(&line) {
        panic!("expected a reload that applies a change, got: {line}");
    }
    Plan::of(&line)
}

/// `corral reload ARGS` now, and the outcome line that request logged.
fn reload_now(c: &mut Corral, args: &[&str]) -> (Out, Value) {
    let out = c.cli(&[&["reload"], args].concat());
    c.wait_log("the reload request", |l| {
        msg(l) == "control request" && l["fields"]["verb"] == "Reload"
    });
    let outcome = c.wait_log("the requested reload's outcome", is_reload_outcome);
    (out, outcome)
}

/// Proves the units dir has settled: a synchronous reload finds nothing to do. Returns how
/// many log lines precede and include that reload, so counts up to it are complete.
fn settle(c: &mut Corral) -> usize {
    let (out, outcome) = reload_now(c, &["--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let plan = &out.json()["reload"];
    for field in ["added", "removed", "restarted", "relimited", "updated"] {
        assert_eq!(plan[field], serde_json::json!([]), "{field} in {out:?}");
    }
    assert_eq!(msg(&outcome), "reload: nothing changed", "{outcome}");
    c.cursor()
}

/// How many of the first `upto` log lines satisfy `pred`.
fn count(c: &Corral, upto: usize, pred: impl Fn(&Value) -> bool) -> usize {
    c.seen[..upto].iter().filter(|l| pred(l)).count()
}

/// Waits until `unit` has started `n` times in all; returns the pid of that start.
fn wait_started(c: &mut Corral, unit: &str, n: usize) -> i64 {
    let starts = c.wait_count(&format!("{unit} started"), n, |l| is_start(l, unit));
    starts[n - 1]["fields"]["pid"].as_i64().unwrap()
}

/// Every unit's pid (null without a process), by name.
fn pids(c: &Corral) -> BTreeMap<String, Value> {
    c.ok(&["status", "--json"]).json()["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap().to_owned(), u["pid"].clone()))
        .collect()
}

/// Both maps hold the same units, and every one outside `changed` kept its pid.
fn assert_same_pids_except(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
    changed: &[&str],
) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, pid) in before {
        if changed.contains(&name.as_str()) {
            assert_ne!(&after[name], pid, "{name} should have a new process");
        } else {
            assert!(pid.is_i64(), "{name} has no pid: {before:?}");
            assert_eq!(&after[name], pid, "{name} was touched");
        }
    }
}

/// Waits until corral reaped the process `pid` of `before` (pid-reuse proof, unlike /proc).
fn wait_reaped(c: &mut Corral, pid: &Value) {
    let pid = pid.as_i64().unwrap();
    c.wait_count(&format!("pid {pid} reaped"), 1, |l| {
        reaped_pid(l) == Some(pid)
    });
}

/// Launches corral on the units written so far and waits until `units` all started.
fn launch_running(c: &mut Corral, units: &[&str]) -> BTreeMap<String, Value> {
    c.launch(&[]);
    for unit in units {
        wait_started(c, unit, 1);
    }
    pids(c)
}

fn limit_in_bytes(c: &Corral, unit: &str) -> String {
    c.cgroup_read("memory", &format!("{unit}.service/memory.limit_in_bytes"))
}

#[test]
fn a_memory_max_edit_rewrites_the_cgroup_in_place() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &limited("1000", "64M"));
    c.unit("db", &sleeper("1000"));
    let before = launch_running(&mut c, &["web", "db"]);
    assert_eq!(limit_in_bytes(&c, "web"), (64u64 << 20).to_string());

    c.unit("web", &limited("1000", "32M"));
    let plan = next_reload(&mut c);
    assert_eq!(
        plan,
        Plan {
            relimited: strings(&["web"]),
            unchanged: 1,
            ..Plan::none()
        }
    );
    // The cgroup files are written after the plan is logged; this line follows the write.
    c.wait_log("web re-limited", |l| {
        says(l, "web", "limits re-applied in place")
    });
    assert_eq!(limit_in_bytes(&c, "web"), (32u64 << 20).to_string());

    let upto = settle(&mut c);
    assert_same_pids_except(&before, &pids(&c), &[]);
    assert_eq!(count(&c, upto, |l| is_start(l, "web")), 1);
    assert_eq!(count(&c, upto, |l| is_stop(l, "web")), 0);
    let web = c.status("web");
    assert_eq!(web["state"], "running", "{web}");
    assert_eq!(web["restarts"], 0, "{web}");
}

#[test]
fn a_command_edit_restarts_only_that_unit() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    for unit in ["web", "db", "cache"] {
        c.unit(unit, &sleeper("1000"));
    }
    let before = launch_running(&mut c, &["web", "db", "cache"]);

    c.unit("web", &sleeper("2000"));
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 2));
    let new_pid = wait_started(&mut c, "web", 2);
    let upto = settle(&mut c);

    let after = pids(&c);
    assert_same_pids_except(&before, &after, &["web"]);
    assert_eq!(after["web"], new_pid);
    wait_reaped(&mut c, &before["web"]);
    for (unit, starts) in [("web", 2), ("db", 1), ("cache", 1)] {
        assert_eq!(count(&c, upto, |l| is_start(l, unit)), starts, "{unit}");
    }
    assert_eq!(count(&c, upto, is_applied), 1);
}

#[test]
fn touching_or_rewriting_a_file_unchanged_restarts_nothing() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    c.unit("db", &sleeper("1000"));
    let before = launch_running(&mut c, &["web", "db"]);

    let touch = run_bounded({
        let mut cmd = Command::new("touch");
        cmd.arg(c.units.join("web.toml"));
        cmd
    });
    assert_eq!(touch.code, 0, "{touch:?}");
    // The watcher saw the touch, reloaded, and found nothing to do.
    let outcome = c.wait_log("the touch's reload", is_reload_outcome);
    assert_eq!(msg(&outcome), "reload: nothing changed", "{outcome}");

    // The same bytes written again (a save without edits) are no change either.
    c.unit("db", &sleeper("1000"));
    let outcome = c.wait_log("the rewrite's reload", is_reload_outcome);
    assert_eq!(msg(&outcome), "reload: nothing changed", "{outcome}");

    let upto = settle(&mut c);
    assert_same_pids_except(&before, &pids(&c), &[]);
    for unit in ["web", "db"] {
        assert_eq!(count(&c, upto, |l| is_start(l, unit)), 1, "{unit}");
        assert_eq!(count(&c, upto, |l| is_stop(l, unit)), 0, "{unit}");
    }
    assert_eq!(count(&c, upto, is_applied), 0);
}

/// Saves a new `web.toml` the way `save` does, and requires exactly one reload that restarts
/// web (and nothing else), web starting exactly once more, and no stray units.
fn saved_once(save: impl FnOnce(&Path, &str)) {
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    c.unit("db", &sleeper("1000"));
    let before = launch_running(&mut c, &["web", "db"]);

    save(&c.units, &sleeper("2000"));
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 1));
    wait_started(&mut c, "web", 2);
    let upto = settle(&mut c);

    assert_eq!(count(&c, upto, is_applied), 1, "more than one reload");
    assert_eq!(count(&c, upto, |l| is_start(l, "web")), 2);
    assert_eq!(
        count(&c, upto, |l| l["target"] != "unit" && msg(l) == "started"),
        3,
        "only web starts again"
    );
    // Same names before and after: no temp file, backup or swap file became a unit.
    assert_same_pids_except(&before, &pids(&c), &["web"]);
    assert_eq!(c.status("web")["state"], "running");
}

#[test]
fn a_rename_over_save_is_applied_once() {
    if !require_root() {
        return;
    }
    saved_once(|dir, text| {
        let tmp = dir.join("web.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join("web.toml")).unwrap();
    });
}

#[test]
fn a_vim_style_save_is_applied_once() {
    if !require_root() {
        return;
    }
    saved_once(|dir, text| {
        let path = |name: &str| dir.join(name);
        // Opening the file: the swap file, not TOML at all.
        std::fs::write(path(".web.toml.swp"), b"b0VIM 9.0\0\0\x01garbage").unwrap();
        // `:w` with backupcopy=no: probe that the dir is writable, move the original aside,
        // write the new file, drop the backup.
        std::fs::write(path("4913"), b"").unwrap();
        std::fs::remove_file(path("4913")).unwrap();
        std::fs::rename(path("web.toml"), path("web.toml~")).unwrap();
        let mut file = std::fs::File::create(path("web.toml")).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.sync_all().unwrap();
        drop(file);
        std::fs::remove_file(path("web.toml~")).unwrap();
        // `:q`.
        std::fs::remove_file(path(".web.toml.swp")).unwrap();
    });
}

#[test]
fn a_sed_in_place_edit_is_applied_once() {
    if !require_root() {
        return;
    }
    saved_once(|dir, text| {
        assert!(text.contains("\"2000\""));
        let mut cmd = Command::new("sed");
        cmd.arg("-i")
            .arg("s/\"1000\"/\"2000\"/")
            .arg(dir.join("web.toml"));
        let out = run_bounded(cmd);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(std::fs::read_to_string(dir.join("web.toml")).unwrap(), text);
    });
}

#[test]
fn a_file_written_in_chunks_is_applied_once() {
    if !require_root() {
        return;
    }
    saved_once(|dir, text| {
        // Cut inside the command's array: the first half alone is not valid TOML, so a reload
        // between the chunks would be refused and show up in the log.
        let (first, rest) = text.split_at(text.find("2000").unwrap());
        // No pause or fsync between the chunks: either can outlast the 100 ms debounce on a
        // loaded machine, and then corral rightly reads (and refuses) the half file.
        let mut file = std::fs::File::create(dir.join("web.toml")).unwrap();
        file.write_all(first.as_bytes()).unwrap();
        file.flush().unwrap();
        file.write_all(rest.as_bytes()).unwrap();
    });
}

#[test]
fn units_added_and_removed_in_a_burst_end_as_the_exact_set() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let kept = ["keep1", "keep2"];
    let old = ["old1", "old2", "old3"];
    let new = ["new1", "new2", "new3", "new4", "new5"];
    for unit in kept.iter().chain(&old) {
        c.unit(unit, &sleeper("1000"));
    }
    let before = launch_running(&mut c, &[&kept[..], &old[..]].concat());

    for (add, remove) in new.iter().zip(old.iter().map(Some).chain([None; 2])) {
        c.unit(add, &sleeper("1000"));
        if let Some(remove) = remove {
            std::fs::remove_file(c.units.join(format!("{remove}.toml"))).unwrap();
        }
    }
    // Debounced into one plan in practice; what must hold whatever the timing: each name is
    // added or removed exactly once, and nothing else is touched.
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    while added.len() < new.len() || removed.len() < old.len() {
        let plan = next_reload(&mut c);
        assert!(
            plan.restarted.is_empty() && plan.relimited.is_empty() && plan.updated.is_empty(),
            "{plan:?}"
        );
        added.extend(plan.added);
        removed.extend(plan.removed);
    }
    added.sort();
    removed.sort();
    assert_eq!(added, strings(&new));
    assert_eq!(removed, strings(&old));
    for unit in new {
        wait_started(&mut c, unit, 1);
    }
    for unit in old {
        c.wait_count(&format!("{unit} stopped"), 1, |l| is_stop(l, unit));
    }
    let upto = settle(&mut c);

    let after = pids(&c);
    let names: BTreeSet<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(names, kept.iter().chain(&new).copied().collect());
    for unit in kept {
        assert_eq!(after[unit], before[unit], "{unit} was touched");
    }
    for unit in new {
        assert!(after[unit].is_i64(), "{unit}: {after:?}");
        assert_eq!(count(&c, upto, |l| is_start(l, unit)), 1, "{unit}");
    }
    for unit in old {
        wait_reaped(&mut c, &before[unit]);
    }
}

#[test]
fn dotfiles_and_editor_leftovers_never_become_units() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    let before = launch_running(&mut c, &["web"]);
    // Valid units by content: only the names keep them out.
    for name in [
        ".x.toml",
        "x.toml~",
        "x.swp",
        "#x#",
        "#x.toml#",
        "x.tmp",
        "x.toml.tmp",
    ] {
        std::fs::write(c.units.join(name), sleeper("1000")).unwrap();
    }
    // Not TOML at all: never even parsed.
    std::fs::write(c.units.join(".junk.toml.swp"), b"\0\x01 not [toml").unwrap();
    let upto = settle(&mut c);
    assert_same_pids_except(&before, &pids(&c), &[]);
    assert_eq!(count(&c, upto, is_applied), 0);
    assert_eq!(c.cli(&["status", "x"]).code, 1, "x must be unknown");
}

#[test]
fn a_broken_edit_applies_nothing_until_it_is_fixed() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    c.unit("db", &sleeper("1000"));
    let before = launch_running(&mut c, &["web", "db"]);
    let web_toml = c.units.join("web.toml");

    for (text, line, needle) in [
        // The table header on line 3 is never closed.
        (format!("{}[restart\n", sleeper("2000")), 3, "web.toml"),
        // A key [exec] does not have, on line 3.
        (
            format!("{}working-directory = \"/\"\n", sleeper("2000")),
            3,
            "working-directory",
        ),
    ] {
        c.unit("web", &text);
        let outcome = c.wait_log("the broken edit's reload", is_reload_outcome);
        assert!(msg(&outcome).starts_with("reload refused"), "{outcome}");
        assert!(msg(&outcome).contains(needle), "{outcome}");

        let (out, outcome) = reload_now(&mut c, &[]);
        assert!(msg(&outcome).starts_with("reload refused"), "{outcome}");
        assert_eq!(out.code, 1, "{out:?}");
        let at = format!("{}:{line}:", web_toml.display());
        assert!(out.stderr.contains(&at), "{at} missing: {out:?}");
        assert!(out.stderr.contains(needle), "{needle} missing: {out:?}");

        let status = c.ok(&["status", "--json"]).json();
        let error = status["reload_error"]
            .as_str()
            .unwrap_or_else(|| panic!("{status}"));
        assert!(error.contains(&at), "{status}");
        let text = c.ok(&["status"]);
        assert!(text.stderr.contains(&at), "{text:?}");
    }

    // A valid edit of another unit is held back too: nothing applies while any unit is bad.
    c.unit("db", &sleeper("2000"));
    let outcome = c.wait_log("db's edit, refused", is_reload_outcome);
    assert!(msg(&outcome).starts_with("reload refused"), "{outcome}");
    assert_same_pids_except(&before, &pids(&c), &[]);
    assert!(
        !c.seen
            .iter()
            .any(|l| is_applied(l) || is_stop(l, "web") || is_stop(l, "db")),
        "a refused reload touched something"
    );

    // The fix applies everything that waited for it.
    c.unit("web", &sleeper("2000"));
    assert_eq!(next_reload(&mut c), Plan::restarts(&["db", "web"], 0));
    wait_started(&mut c, "web", 2);
    wait_started(&mut c, "db", 2);
    settle(&mut c);
    assert_same_pids_except(&before, &pids(&c), &["web", "db"]);
    let status = c.ok(&["status", "--json"]).json();
    assert!(status.get("reload_error").is_none(), "{status}");
}

/// Replaces the symlink `link` with one to `target`, atomically (a new link renamed over it).
fn swap_symlink(link: &Path, target: &Path) {
    let tmp = link.with_file_name(format!(
        "{}_tmp",
        link.file_name().unwrap().to_str().unwrap()
    ));
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[test]
fn a_configmap_style_swap_of_the_data_link_is_applied() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let units = c.units.clone();
    // The kubelet's layout: files in a versioned dir, `..data` points at it, and each key is
    // a link through `..data`.
    let version = |name: &str, web: &str, db: &str| {
        let dir = units.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("web.toml"), web).unwrap();
        std::fs::write(dir.join("db.toml"), db).unwrap();
    };
    version("..v1", &limited("1000", "64M"), &sleeper("1000"));
    symlink("..v1", units.join("..data")).unwrap();
    for unit in ["web", "db"] {
        symlink(
            format!("..data/{unit}.toml"),
            units.join(format!("{unit}.toml")),
        )
        .unwrap();
    }
    let before = launch_running(&mut c, &["web", "db"]);

    version("..v2", &limited("1000", "32M"), &sleeper("2000"));
    swap_symlink(&units.join("..data"), Path::new("..v2"));
    std::fs::remove_dir_all(units.join("..v1")).unwrap();

    assert_eq!(
        next_reload(&mut c),
        Plan {
            restarted: strings(&["db"]),
            relimited: strings(&["web"]),
            ..Plan::none()
        }
    );
    c.wait_log("web re-limited", |l| {
        says(l, "web", "limits re-applied in place")
    });
    assert_eq!(limit_in_bytes(&c, "web"), (32u64 << 20).to_string());
    wait_started(&mut c, "db", 2);
    let upto = settle(&mut c);
    assert_eq!(count(&c, upto, is_applied), 1);
    assert_same_pids_except(&before, &pids(&c), &["db"]);
}

#[test]
fn a_symlinked_units_dir_swapped_atomically_is_applied_and_still_watched() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let (v1, v2) = (c.path("v1"), c.path("v2"));
    for dir in [&v1, &v2] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("db.toml"), sleeper("1000")).unwrap();
    }
    std::fs::write(v1.join("web.toml"), sleeper("1000")).unwrap();
    std::fs::write(v2.join("web.toml"), sleeper("2000")).unwrap();
    let link = c.path("current");
    symlink(&v1, &link).unwrap();
    c.units = link.clone();
    let before = launch_running(&mut c, &["web", "db"]);

    swap_symlink(&link, &v2);
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 1));
    wait_started(&mut c, "web", 2);
    // The old version goes, as the kubelet removes it.
    std::fs::remove_dir_all(&v1).unwrap();
    settle(&mut c);
    let middle = pids(&c);
    assert_same_pids_except(&before, &middle, &["web"]);

    // Edits in the directory the link now points at are seen too.
    std::fs::write(link.join("db.toml"), sleeper("3000")).unwrap();
    assert_eq!(next_reload(&mut c), Plan::restarts(&["db"], 1));
    wait_started(&mut c, "db", 2);
    settle(&mut c);
    assert_same_pids_except(&middle, &pids(&c), &["db"]);
}

#[test]
fn changing_5_of_500_units_restarts_exactly_those_5() {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let mut c = Corral::new();
    let names: Vec<String> = (0..500).map(|i| format!("u{i:03}")).collect();
    for name in &names {
        c.unit(name, &sleeper("1000"));
    }
    c.launch(&[]);
    c.wait_count("500 units started", 500, |l| {
        l["target"] != "unit" && msg(l) == "started"
    });
    let before = pids(&c);
    assert_eq!(before.len(), 500);

    let changed = ["u007", "u123", "u250", "u377", "u499"];
    for name in changed {
        c.unit(name, &sleeper("2000"));
    }
    // Usually one reload; a loaded machine may take longer than the debounce window between
    // two of the writes and split them. Either way, only the changed units restart.
    let mut restarted: Vec<String> = Vec::new();
    let mut reloads = 0;
    while restarted.len() < changed.len() {
        let plan = next_reload(&mut c);
        reloads += 1;
        assert_eq!(
            plan,
            Plan::restarts(
                &plan
                    .restarted
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                500 - plan.restarted.len() as u64
            ),
            "a reload did more than restart"
        );
        restarted.extend(plan.restarted);
    }
    restarted.sort();
    assert_eq!(restarted, strings(&changed));
    for name in changed {
        wait_started(&mut c, name, 2);
    }
    let upto = settle(&mut c);
    assert_eq!(count(&c, upto, is_applied), reloads);
    assert_eq!(
        count(&c, upto, |l| l["target"] != "unit" && msg(l) == "started"),
        505
    );
    assert_same_pids_except(&before, &pids(&c), &changed);
    eprintln!("500 units: {:?}", started.elapsed());
}

#[test]
fn sighup_and_corral_reload_read_the_directory_themselves() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // web.toml links to a file outside the units dir: editing it wakes no watcher, so only
    // SIGHUP or `corral reload` can pick the edit up.
    let source = c.path("web-source.toml");
    std::fs::write(&source, sleeper("1000")).unwrap();
    symlink(&source, c.units.join("web.toml")).unwrap();
    c.unit("db", &sleeper("1000"));
    let before = launch_running(&mut c, &["web", "db"]);

    std::fs::write(&source, sleeper("2000")).unwrap();
    c.signal(Signal::SIGHUP);
    c.wait_log("SIGHUP noticed", |l| msg(l).starts_with("SIGHUP received"));
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 1));
    wait_started(&mut c, "web", 2);

    std::fs::write(&source, limited("2000", "48M")).unwrap();
    let (out, outcome) = reload_now(&mut c, &["--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(is_applied(&outcome), "{outcome}");
    assert_eq!(
        out.json()["reload"],
        serde_json::json!({
            "added": [], "removed": [], "restarted": [], "relimited": ["web"],
            "updated": [], "unchanged": 1
        }),
        "{out:?}"
    );
    c.wait_log("web re-limited", |l| {
        says(l, "web", "limits re-applied in place")
    });
    assert_eq!(limit_in_bytes(&c, "web"), (48u64 << 20).to_string());

    // Without --json: one human line.
    let text = c.ok(&["reload"]);
    assert_eq!(
        text.stdout.trim(),
        "reload applied: 0 added, 0 removed, 0 restarted, 0 re-limited, 0 updated, 2 unchanged"
    );
    let after = pids(&c);
    assert_same_pids_except(&before, &after, &["web"]);
}

#[test]
fn a_removed_unit_stops_and_loses_its_cgroup_and_an_added_slice_gets_one() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    c.unit("db", &sleeper("1000"));
    let before = launch_running(&mut c, &["web", "db"]);
    assert!(c.cgroup_exists("db.service"));

    std::fs::remove_file(c.units.join("db.toml")).unwrap();
    assert_eq!(
        next_reload(&mut c),
        Plan {
            removed: strings(&["db"]),
            unchanged: 1,
            ..Plan::none()
        }
    );
    c.wait_log("db stopped", |l| is_stop(l, "db"));
    c.wait_log("db's cgroup removed", |l| {
        msg(l) == "removed"
            && l["fields"]["cgroup"]
                .as_str()
                .is_some_and(|p| p.ends_with("/db.service"))
    });
    assert!(!c.cgroup_exists("db.service"), "db's cgroup is left");
    wait_reaped(&mut c, &before["db"]);
    assert_eq!(c.cli(&["status", "db"]).code, 1, "db must be unknown now");

    c.unit(
        "pool",
        "kind = \"slice\"\n[resources]\npids-max = 20\nmemory-max = \"256M\"\n",
    );
    c.unit("worker", &format!("slice = \"pool\"\n{}", sleeper("1000")));
    assert_eq!(
        next_reload(&mut c),
        Plan {
            added: strings(&["pool", "worker"]),
            unchanged: 1,
            ..Plan::none()
        }
    );
    assert_eq!(c.cgroup_read("pids", "pool.slice/pids.max"), "20");
    assert_eq!(
        c.cgroup_read("memory", "pool.slice/memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );
    assert_eq!(c.status("pool")["state"], "active");
    let worker = wait_started(&mut c, "worker", 1);
    // Without clone3 into the cgroup, the child writes itself in after the fork: by its exec.
    c.wait_exec("worker", 1);
    let procs = c.cgroup_read("pids", "pool.slice/worker.service/cgroup.procs");
    assert!(
        procs.lines().any(|p| p == worker.to_string()),
        "worker {worker} not in its cgroup: {procs:?}"
    );

    // A slice's limits are rewritten in place too, its members untouched.
    c.unit(
        "pool",
        "kind = \"slice\"\n[resources]\npids-max = 30\nmemory-max = \"256M\"\n",
    );
    assert_eq!(
        next_reload(&mut c),
        Plan {
            relimited: strings(&["pool"]),
            unchanged: 2,
            ..Plan::none()
        }
    );
    c.wait_log("pool re-limited", |l| {
        says(l, "pool", "limits re-applied in place")
    });
    assert_eq!(c.cgroup_read("pids", "pool.slice/pids.max"), "30");
    let upto = settle(&mut c);
    assert_eq!(count(&c, upto, |l| is_start(l, "worker")), 1);
    assert_eq!(pids(&c)["worker"], worker);
    assert_eq!(pids(&c)["web"], before["web"]);
}

#[test]
fn a_unit_put_back_while_it_is_still_stopping_comes_back() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // Ignores SIGTERM (an ignored signal stays ignored across exec), so its stop takes the
    // whole stop timeout.
    let stubborn = "[exec]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; exec sleep 1000\"]\n\
                    [stop]\ntimeout = \"1s\"\n";
    c.unit("slow", stubborn);
    c.unit("web", &sleeper("1000"));
    launch_running(&mut c, &["slow", "web"]);

    std::fs::remove_file(c.units.join("slow.toml")).unwrap();
    assert_eq!(
        next_reload(&mut c),
        Plan {
            removed: strings(&["slow"]),
            unchanged: 1,
            ..Plan::none()
        }
    );
    // Back before the stop timeout: the file is there again, so the unit must be too.
    c.unit("slow", stubborn);
    assert_eq!(
        next_reload(&mut c),
        Plan {
            added: strings(&["slow"]),
            unchanged: 1,
            ..Plan::none()
        }
    );
    c.wait_log("slow killed at its stop timeout", |l| {
        unit_of(l) == "slow" && msg(l).contains("did not stop within")
    });
    let pid = wait_started(&mut c, "slow", 2);
    settle(&mut c);
    let status = c.status("slow");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["pid"], pid, "{status}");
}

#[test]
fn settings_without_a_process_change_touch_no_process_and_enabling_starts_a_unit() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    c.unit("idle", &format!("enabled = false\n{}", sleeper("1000")));
    let before = launch_running(&mut c, &["web"]);
    assert_eq!(before["idle"], Value::Null);

    c.unit(
        "web",
        &format!(
            "description = \"edited\"\n{}[restart]\npolicy = \"always\"\n[stop]\ntimeout = \"3s\"\n",
            sleeper("1000")
        ),
    );
    c.unit("idle", &sleeper("1000"));
    assert_eq!(
        next_reload(&mut c),
        Plan {
            updated: strings(&["idle", "web"]),
            ..Plan::none()
        }
    );
    let idle = wait_started(&mut c, "idle", 1);
    let upto = settle(&mut c);
    let after = pids(&c);
    assert_eq!(after["web"], before["web"]);
    assert_eq!(after["idle"], idle);
    assert_eq!(count(&c, upto, |l| is_start(l, "web")), 1);
}

// Known bugs, reproduced; run with `cargo test --test reload -- --ignored`.

#[test]
fn a_removed_limit_is_lifted_in_place() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &format!("{}pids-max = 10\n", limited("1000", "64M")));
    let before = launch_running(&mut c, &["web"]);
    c.unit("web", &sleeper("1000"));
    assert_eq!(
        next_reload(&mut c),
        Plan {
            relimited: strings(&["web"]),
            ..Plan::none()
        }
    );
    c.wait_log("web re-limited", |l| {
        says(l, "web", "limits re-applied in place")
    });
    assert_eq!(pids(&c)["web"], before["web"]);
    assert_eq!(c.cgroup_read("pids", "web.service/pids.max"), "max");
    // The kernel's "no limit" on v1: the largest page-aligned i64.
    let unlimited = c.cgroup_read("memory", "memory.limit_in_bytes");
    assert_eq!(limit_in_bytes(&c, "web"), unlimited);
}

#[test]
fn a_score_adjust_edit_reaches_the_running_process() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let unit = |adj: i32| format!("{}[oom]\nscore-adjust = {adj}\n", sleeper("1000"));
    c.unit("web", &unit(100));
    let before = launch_running(&mut c, &["web"]);
    let pid = before["web"].as_i64().unwrap();
    assert_eq!(c.wait_exec("web", 1), pid);
    let score = || {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(score(), "100");
    c.unit("web", &unit(200));
    next_reload(&mut c);
    settle(&mut c);
    // In place (docs/units.md, "What a reload restarts": an [oom] edit restarts nothing), or else by a restart.
    if pids(&c)["web"] == before["web"] {
        assert_eq!(score(), "200");
    }
}

#[test]
fn moving_a_slice_moves_the_services_below_it() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("a", "kind = \"slice\"\n");
    c.unit("b", "kind = \"slice\"\n");
    c.unit("inner", "kind = \"slice\"\nslice = \"a\"\n");
    c.unit("w", &format!("slice = \"inner\"\n{}", sleeper("1000")));
    launch_running(&mut c, &["w"]);

    c.unit("inner", "kind = \"slice\"\nslice = \"b\"\n");
    next_reload(&mut c);
    // The restart's start comes once the old process is gone and its cgroup empty.
    let w = wait_started(&mut c, "w", 2);
    // Without clone3 into the cgroup (v1), the child writes itself into each hierarchy after
    // the fork, in hierarchy order (blkio, cpu, ..., memory, pids): only its exec says it is in
    // all of them. Waiting for `started` alone saw it in blkio and cpu but not yet in pids.
    assert_eq!(c.wait_exec("w", 2), w);
    let procs = c.cgroup_read("pids", "b.slice/inner.slice/w.service/cgroup.procs");
    assert!(
        procs.lines().any(|p| p == w.to_string()),
        "w ({w}) is not below the slice's new place; status says {}",
        c.status("w")["cgroup"]
    );
}

/// A passwd user the test creates and removes (also on drop): `useradd` from Debian's passwd.
struct TmpUser {
    name: String,
}

impl TmpUser {
    fn new(tag: &str, uid: Option<u32>) -> TmpUser {
        let name = format!("corral-tmp-{}-{tag}", std::process::id());
        let mut cmd = Command::new("useradd");
        cmd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if let Some(uid) = uid {
            cmd.args(["--uid", &uid.to_string()]);
        }
        cmd.arg(&name);
        let out = run_bounded(cmd);
        assert_eq!(out.code, 0, "useradd {name}: {out:?}");
        TmpUser { name }
    }

    fn uid(&self) -> u32 {
        nix::unistd::User::from_name(&self.name)
            .unwrap()
            .unwrap_or_else(|| panic!("{} is not in passwd", self.name))
            .uid
            .as_raw()
    }

    /// `userdel --force`: the user goes from passwd while its processes still run.
    fn remove(&self) {
        let mut cmd = Command::new("userdel");
        cmd.args(["--force", &self.name]);
        let out = run_bounded(cmd);
        assert_eq!(out.code, 0, "userdel {}: {out:?}", self.name);
    }
}

impl Drop for TmpUser {
    fn drop(&mut self) {
        if nix::unistd::User::from_name(&self.name).is_ok_and(|u| u.is_some()) {
            // --force warns on stderr when the user's processes still run (the unit, stopped
            // when the Corral drops later): the user goes anyway.
            let _ = Command::new("userdel")
                .args(["--force", &self.name])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn require_useradd() -> bool {
    if !require_root() {
        return false;
    }
    if common::in_path("useradd").is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the credential reload tests need useradd (Debian's passwd), and CI=true does not allow skipping them"
    );
    eprintln!("SKIPPED: the credential reload tests need useradd");
    false
}

fn uid_of(pid: i64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `user` is resolved when the units are read: a reload after the user left passwd is refused
/// with the file, line and key, and the running unit keeps its definition and its process.
#[test]
fn a_reload_that_cannot_resolve_a_user_is_refused_with_file_line_and_key() {
    if !require_useradd() {
        return;
    }
    let user = TmpUser::new("gone", None);
    let mut c = Corral::new();
    c.unit(
        "svc",
        &format!("{}user = \"{}\"\n", sleeper("2000"), user.name),
    );
    c.launch(&[]);
    let pid = c.wait_exec("svc", 1);
    assert_eq!(uid_of(pid), user.uid());
    user.remove();

    let (out, outcome) = reload_now(&mut c, &[]);
    assert!(msg(&outcome).starts_with("reload refused"), "{outcome}");
    assert_eq!(out.code, 1, "{out:?}");
    let at = format!("{}:3:", c.units.join("svc.toml").display());
    assert!(out.stderr.contains(&at), "{at} missing: {out:?}");
    assert!(out.stderr.contains("exec.user"), "{out:?}");
    assert!(out.stderr.contains(&user.name), "{out:?}");
    let status = c.status("svc");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["pid"], pid, "{status}");
    let all = c.ok(&["status", "--json"]).json();
    assert!(
        all["reload_error"]
            .as_str()
            .is_some_and(|e| e.contains(&at)),
        "{all}"
    );
}

/// A user whose uid changed in passwd is a changed unit at the next reload: it restarts under
/// the new uid, and the plan says so.
#[test]
fn a_reload_after_a_uid_change_restarts_the_unit_under_the_new_uid() {
    if !require_useradd() {
        return;
    }
    let first = TmpUser::new("moved", None);
    let old_uid = first.uid();
    let mut c = Corral::new();
    c.unit(
        "svc",
        &format!("{}user = \"{}\"\n", sleeper("2000"), first.name),
    );
    c.launch(&[]);
    let pid = c.wait_exec("svc", 1);
    assert_eq!(uid_of(pid), old_uid);
    first.remove();
    // The same name, another uid: one no passwd entry has.
    let new_uid = (old_uid + 1000..old_uid + 2000)
        .find(|uid| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid)).is_ok_and(|u| u.is_none())
        })
        .expect("a free uid");
    let second = TmpUser::new("moved", Some(new_uid));

    let (out, outcome) = reload_now(&mut c, &["--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(msg(&outcome), "reload applied", "{outcome}");
    assert_eq!(
        out.json()["reload"]["restarted"],
        serde_json::json!(["svc"])
    );
    let pid = c.wait_exec("svc", 2);
    assert_eq!(uid_of(pid), second.uid());
    drop(first);
}

/// Waits for a reload that found no units directory at all (it was deleted or moved away),
/// so the watch has had to cope with the path naming nothing.
fn wait_refused_for_a_missing_dir(c: &mut Corral) {
    let line = c.wait_log(
        "a reload refused for the missing directory",
        is_reload_outcome,
    );
    assert!(
        msg(&line).starts_with("reload refused") && line.to_string().contains("units directory"),
        "{line}"
    );
}

#[test]
fn a_units_dir_deleted_and_created_again_is_still_watched() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    launch_running(&mut c, &["web"]);

    // `rm -rf units && mkdir units`, with corral looking in between.
    std::fs::remove_dir_all(&c.units).unwrap();
    wait_refused_for_a_missing_dir(&mut c);
    std::fs::create_dir(&c.units).unwrap();
    c.unit("db", &sleeper("1000"));
    wait_started(&mut c, "db", 1);
    c.wait_log("web stopped, its file gone", |l| is_stop(l, "web"));
    settle(&mut c);

    // The new directory is the one watched: an edit there is applied on its own.
    c.unit("db", &sleeper("2000"));
    assert_eq!(next_reload(&mut c), Plan::restarts(&["db"], 0));
    wait_started(&mut c, "db", 2);
}

#[test]
fn a_new_units_dir_renamed_into_place_is_watched() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    let before = launch_running(&mut c, &["web"]);

    // A deploy: the new version is built beside the old one, the old moved away, the new
    // renamed to the path.
    let new = c.root().join("units.new");
    let old = c.root().join("units.old");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("web.toml"), sleeper("1000")).unwrap();
    std::fs::write(new.join("db.toml"), sleeper("1000")).unwrap();
    std::fs::rename(&c.units, &old).unwrap();
    wait_refused_for_a_missing_dir(&mut c);
    std::fs::rename(&new, &c.units).unwrap();
    assert_eq!(
        next_reload(&mut c),
        Plan {
            added: strings(&["db"]),
            unchanged: 1,
            ..Plan::none()
        }
    );
    wait_started(&mut c, "db", 1);
    settle(&mut c);

    // Edits in the old directory are no longer the units; edits at the path are.
    std::fs::write(old.join("web.toml"), sleeper("3000")).unwrap();
    c.unit("web", &sleeper("2000"));
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 1));
    wait_started(&mut c, "web", 2);
    let upto = settle(&mut c);
    assert_eq!(count(&c, upto, |l| is_start(l, "web")), 2);
    assert_ne!(pids(&c)["web"], before["web"]);
}

#[test]
fn a_units_dir_below_a_swapped_release_symlink_is_applied_and_still_watched() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // `current -> releases/1`, the units in `current/units`: a deploy swaps `current`, and the
    // units directory (not a symlink itself) is a new one.
    for (release, arg) in [("1", "1000"), ("2", "2000")] {
        let units = c.root().join("releases").join(release).join("units");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(units.join("web.toml"), sleeper(arg)).unwrap();
        std::fs::write(units.join("db.toml"), sleeper("1000")).unwrap();
    }
    let current = c.root().join("current");
    symlink("releases/1", &current).unwrap();
    c.units = current.join("units");
    let before = launch_running(&mut c, &["web", "db"]);

    swap_symlink(&current, Path::new("releases/2"));
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 1));
    wait_started(&mut c, "web", 2);
    settle(&mut c);
    let middle = pids(&c);
    assert_same_pids_except(&before, &middle, &["web"]);

    // The release now current is the one watched.
    std::fs::write(c.units.join("db.toml"), sleeper("3000")).unwrap();
    assert_eq!(next_reload(&mut c), Plan::restarts(&["db"], 1));
    wait_started(&mut c, "db", 2);
}

/// Puts `files` (name, text) in place as `units/<dir>` in one rename, so the watcher sees one
/// change however fast it is.
fn put_dir(c: &Corral, dir: &str, files: &[(&str, &str)]) {
    let staging = c.root().join(format!("staging-{dir}"));
    std::fs::create_dir(&staging).unwrap();
    for (name, text) in files {
        std::fs::write(staging.join(name), text).unwrap();
    }
    std::fs::rename(&staging, c.units.join(dir)).unwrap();
}

#[test]
fn a_drop_in_added_edited_and_removed_is_applied_by_the_watch() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", &sleeper("1000"));
    c.unit("db", &sleeper("1000"));
    let before = launch_running(&mut c, &["web", "db"]);

    // A new drop-in directory: seen in the units directory.
    put_dir(&c, "web.toml.d", &[("10-cmd.toml", &sleeper("2000"))]);
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 1));
    assert_eq!(cmdline(c.wait_exec("web", 2)), "sleep\u{0}2000\u{0}");

    // An edit inside it: seen only if the drop-in directory is watched too.
    let drop_in = c.units.join("web.toml.d/10-cmd.toml");
    let tmp = c.units.join("web.toml.d/10-cmd.toml.tmp");
    std::fs::write(&tmp, sleeper("3000")).unwrap();
    std::fs::rename(&tmp, &drop_in).unwrap();
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 1));
    assert_eq!(cmdline(c.wait_exec("web", 3)), "sleep\u{0}3000\u{0}");

    // Removing it brings back the unit as its own file says.
    std::fs::remove_file(&drop_in).unwrap();
    assert_eq!(next_reload(&mut c), Plan::restarts(&["web"], 1));
    assert_eq!(cmdline(c.wait_exec("web", 4)), "sleep\u{0}1000\u{0}");

    let upto = settle(&mut c);
    assert_same_pids_except(&before, &pids(&c), &["web"]);
    assert_eq!(count(&c, upto, |l| is_start(l, "db")), 1);
}

fn cmdline(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

#[test]
fn an_edited_template_restarts_the_instances_whose_exec_changed() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("worker@", &sleeper("100%i"));
    for n in ["1", "2"] {
        symlink("worker@.toml", c.units.join(format!("worker@{n}.toml"))).unwrap();
    }
    // This instance sets its own command: the template's edit leaves it be.
    c.unit("worker@3", &sleeper("3333"));
    let before = launch_running(&mut c, &["worker@1", "worker@2", "worker@3"]);
    assert_eq!(cmdline(c.wait_exec("worker@2", 1)), "sleep\u{0}1002\u{0}");

    c.unit("worker@", &sleeper("200%i"));
    assert_eq!(
        next_reload(&mut c),
        Plan::restarts(&["worker@1", "worker@2"], 1)
    );
    for (unit, arg) in [("worker@1", "2001"), ("worker@2", "2002")] {
        assert_eq!(
            cmdline(c.wait_exec(unit, 2)),
            format!("sleep\u{0}{arg}\u{0}"),
            "{unit}"
        );
    }
    let upto = settle(&mut c);
    assert_same_pids_except(&before, &pids(&c), &["worker@1", "worker@2"]);
    assert_eq!(count(&c, upto, |l| is_start(l, "worker@3")), 1);
}

/// The command line of process `pid` ("" once it is gone).
fn command_line(pid: i64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Waits over the whole log for an exec of `unit` whose process runs `sleep ARG` (the exec's
/// line, not the start's: at the start the child may not have reached its exec yet).
fn wait_started_as(c: &mut Corral, unit: &str, arg: &str) -> i64 {
    let want = format!("sleep {arg} ");
    let line = c.wait_count(&format!("{unit}'s exec of sleep {arg}"), 1, |l| {
        l["target"] != "unit"
            && unit_of(l) == unit
            && msg(l) == "exec'd"
            && l["fields"]["pid"]
                .as_i64()
                .is_some_and(|pid| command_line(pid) == want)
    });
    line[0]["fields"]["pid"].as_i64().unwrap()
}

/// A reload reads again only the files whose identity changed (docs/operations.md, "Reload"):
/// each way a file can change is still seen. A template's edit makes its instances again (a
/// symlink to it, one with a file of its own, a runtime instance) and nothing else; an edit in
/// place with the same size, a file replaced by a rename with the same size and its old
/// mtime, and two same-size edits in quick succession (perhaps within one timestamp tick,
/// each followed at once by a reload) are each picked up.
#[test]
fn every_kind_of_change_is_seen_by_a_reload_that_reads_only_changed_files() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("w@", &sleeper("1000"));
    symlink("w@.toml", c.units.join("w@1.toml")).unwrap();
    c.unit("w@2", "description = \"the second\"\n");
    c.unit("a", &sleeper("1000"));
    c.unit("b", &sleeper("1000"));
    launch_running(&mut c, &["w@1", "w@2", "a", "b"]);
    c.ok(&["start", "w@3"]);
    wait_started(&mut c, "w@3", 1);
    settle(&mut c);

    // The template, in place, the same size.
    std::fs::write(c.units.join("w@.toml"), sleeper("2000")).unwrap();
    assert_eq!(
        next_reload(&mut c),
        Plan::restarts(&["w@1", "w@2", "w@3"], 2)
    );
    for unit in ["w@1", "w@2", "w@3"] {
        wait_started_as(&mut c, unit, "2000");
    }
    settle(&mut c);

    // `a` edited in place (same inode, same size).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(c.units.join("a.toml"))
        .unwrap();
    f.write_all(sleeper("3000").as_bytes()).unwrap();
    drop(f);
    // `b` replaced by a rename: a new inode, the same size, the old file's mtime.
    let old_mtime = std::fs::metadata(c.units.join("b.toml"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(c.units.join(".b.new"), sleeper("3000")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(c.units.join(".b.new"))
        .unwrap()
        .set_modified(old_mtime)
        .unwrap();
    std::fs::rename(c.units.join(".b.new"), c.units.join("b.toml")).unwrap();
    let (out, _) = reload_now(&mut c, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_started_as(&mut c, "a", "3000");
    wait_started_as(&mut c, "b", "3000");

    // Two same-size edits in place, each reloaded at once: the second comes within the
    // settle margin of the first read, so that read is not trusted by identity alone.
    for arg in ["4000", "5000"] {
        std::fs::write(c.units.join("a.toml"), sleeper(arg)).unwrap();
        let (out, _) = reload_now(&mut c, &[]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    wait_started_as(&mut c, "a", "5000");
    settle(&mut c);
    assert!(
        command_line(c.status("a")["pid"].as_i64().unwrap()).starts_with("sleep 5000"),
        "{}",
        c.status("a")
    );
    for unit in ["w@1", "w@2", "w@3"] {
        let pid = c.status(unit)["pid"].as_i64().unwrap();
        assert!(command_line(pid).starts_with("sleep 2000"), "{unit}");
    }
}
