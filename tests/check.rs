//! Black-box `corral check`: diagnostics with file:line:col and exit codes, without a daemon.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Corral, run_bounded};

fn check(dir: &Path) -> common::Out {
    let mut cmd = Command::new(common::BIN);
    cmd.arg("check").arg(dir);
    run_bounded(cmd)
}

#[test]
fn malformed_toml_fails_with_file_line_and_column() {
    let c = Corral::new();
    c.unit("good", "[exec]\ncommand = [\"true\"]\n");
    // Line 3, column 1: the table header is never closed.
    c.unit("broken", "[exec]\ncommand = [\"true\"]\n[restart\n");
    let out = check(&c.units);
    assert_eq!(out.code, 1, "{out:?}");
    let prefix = format!("{}:3:", c.units.join("broken.toml").display());
    let column = out
        .stderr
        .split(&prefix)
        .nth(1)
        .unwrap_or_else(|| panic!("no {prefix}COL in {out:?}"));
    assert!(
        column.starts_with(|ch: char| ch.is_ascii_digit()),
        "{out:?}"
    );
}

#[test]
fn an_unknown_key_is_named_with_its_position() {
    let c = Corral::new();
    c.unit(
        "typo",
        "[exec]\ncommand = [\"true\"]\nworking-directory = \"/\"\n",
    );
    let out = check(&c.units);
    assert_eq!(out.code, 1, "{out:?}");
    let file = c.units.join("typo.toml");
    assert!(
        out.stderr.contains(&format!("{}:3:1", file.display())),
        "{out:?}"
    );
    assert!(out.stderr.contains("working-directory"), "{out:?}");
}

#[test]
fn valid_units_pass() {
    let c = Corral::new();
    c.unit("web", "[exec]\ncommand = [\"true\"]\n");
    c.unit(
        "setup",
        "kind = \"oneshot\"\n[exec]\ncommand = [\"true\"]\n",
    );
    let out = check(&c.units);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn the_shipped_units_and_examples_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        "units",
        "examples/slices",
        "examples/oom-restart",
        "examples/readiness",
        "examples/container/units",
        "examples/namespaces/units",
    ] {
        let out = check(&root.join(dir));
        assert_eq!(out.code, 0, "{dir}: {out:?}");
    }
}

/// A duration on `corral run`'s command line that the clock cannot add to now is refused at
/// parse time, naming the option, with the usage exit code; it never reaches the loop (where
/// `--usage-interval 500000000000y` used to abort corral on the first usage timer).
#[test]
fn an_out_of_range_duration_option_is_a_usage_error() {
    let c = Corral::new();
    // A unit with pids-max arms the usage timer at once, which is where the overflow was.
    c.unit(
        "capped",
        "[exec]\ncommand = [\"sleep\", \"1000\"]\n[resources]\npids-max = 10\n",
    );
    let table = [
        ("--usage-interval", "500000000000y"),
        ("--shutdown-timeout", "500000000000y"),
        ("--warn-throttled-per-minute", "500000000000y"),
        ("--usage-interval", "400d"),
        ("--shutdown-timeout", "99999999999999999999999s"),
    ];
    for (option, value) in table {
        let mut cmd = Command::new(common::BIN);
        cmd.arg("--socket")
            .arg(c.path("control.sock"))
            .arg("run")
            .arg(&c.units)
            .args(["--cgroup-root", "/corral-test-never-created"])
            .args([option, value]);
        let out = run_bounded(cmd);
        assert_eq!(out.code, 2, "{option} {value}: {out:?}");
        assert!(out.stderr.contains(option), "{option} {value}: {out:?}");
    }
}

/// Not the machine's init (a container's PID 1 or a plain process): an invalid units directory
/// at start is an error, exit 1, with the diagnostics, and nothing starts. (The machine's init
/// stays up instead: tests/vm.rs.)
#[test]
fn run_with_an_invalid_unit_exits_1_naming_it() {
    let c = Corral::new();
    c.unit("good", "[exec]\ncommand = [\"sleep\", \"1000\"]\n");
    c.unit("broken", "[exec]\ncommand = \"sleep 1000\"\n");
    let mut cmd = Command::new(common::BIN);
    cmd.arg("--socket")
        .arg(c.path("control.sock"))
        .arg("run")
        .arg(&c.units)
        .args(["--cgroup-root", &c.cgroup_root]);
    let out = run_bounded(cmd);
    assert_eq!(out.code, 1, "{out:?}");
    let at = format!("{}:2:11", c.units.join("broken.toml").display());
    assert!(out.stderr.contains(&at), "{at} missing: {out:?}");
    assert!(!c.cgroup_root_exists(), "something was set up: {out:?}");
}
