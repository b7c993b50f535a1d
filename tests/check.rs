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

/// `--cgroup-root` is a path inside the cgroup hierarchies: `..` in it would lead out of them
/// (`/../x` made a directory `x` on the tmpfs that holds the v1 hierarchies, and corral ran its
/// units' cgroups there), so it is a usage error, naming the option.
#[test]
fn a_cgroup_root_that_leads_out_of_the_hierarchy_is_a_usage_error() {
    let c = Corral::new();
    c.unit("any", "[exec]\ncommand = [\"sleep\", \"1000\"]\n");
    for value in [
        "/../corral-test-escaped",
        "..",
        "/corral-test-a/../../corral-test-escaped",
    ] {
        let mut cmd = Command::new(common::BIN);
        cmd.arg("--socket")
            .arg(c.path("control.sock"))
            .arg("run")
            .arg(&c.units)
            .args(["--cgroup-root", value]);
        let out = run_bounded(cmd);
        assert_eq!(out.code, 2, "{value}: {out:?}");
        assert!(out.stderr.contains("--cgroup-root"), "{value}: {out:?}");
    }
    assert!(!Path::new("/sys/fs/cgroup/corral-test-escaped").exists());
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

#[test]
fn a_limit_that_can_only_break_the_unit_fails_check_with_its_range() {
    let c = Corral::new();
    // memory-max = "0" used to pass, and the unit then never ran and said nothing.
    c.unit(
        "web",
        "[exec]\ncommand = [\"true\"]\n[resources]\nmemory-max = \"0\"\npids-max = 0\n",
    );
    c.unit(
        "io",
        "[exec]\ncommand = [\"true\"]\n[[resources.io]]\ndevice = \"8:0\"\nread-bps = 0\n",
    );
    c.unit(
        "pids",
        "[exec]\ncommand = [\"true\"]\n[resources]\npids-max = 99999999\ncpu-quota = \"0%\"\n",
    );
    let out = check(&c.units);
    assert_eq!(out.code, 1, "{out:?}");
    let at = |unit: &str, pos: &str| format!("{}:{pos}: error: ", c.units.join(unit).display());
    for want in [
        format!(
            "{}resources.memory-max: 0 is out of range 1M..=1024T",
            at("web.toml", "4:14")
        ),
        format!(
            "{}resources.pids-max: 0 is out of range 1..=4194304",
            at("web.toml", "5:12")
        ),
        format!(
            "{}resources.io[0].read-bps: 0 is out of range 1..=1024T",
            at("io.toml", "5:12")
        ),
        format!(
            "{}resources.pids-max: 99999999 is out of range 1..=4194304",
            at("pids.toml", "4:12")
        ),
        format!(
            "{}resources.cpu-quota: 0% is out of range 1%..=1000000%",
            at("pids.toml", "5:13")
        ),
    ] {
        assert!(out.stderr.contains(&want), "no {want:?} in {out:?}");
    }
}

/// Bytes that would act on a terminal: a colour change, a window title, a screen clear.
fn assert_no_terminal_sequences(text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters in {text:?}"
    );
}

#[test]
fn names_with_terminal_sequences_are_printed_escaped() {
    let c = Corral::new();
    let evil = "a\u{1b}[31mred\u{1b}]0;owned\u{7}";
    std::fs::write(
        c.units.join(format!("{evil}.toml")),
        "[exec]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    // A value quoting a sequence is named in the message too.
    c.unit(
        "web",
        "[exec]\ncommand = [\"true\"]\nuser = \"x\\u001b[2Jy\"\n",
    );
    let out = check(&c.units);
    assert_eq!(out.code, 1, "{out:?}");
    assert_no_terminal_sequences(&out.stderr);
    assert!(
        out.stderr
            .contains("a\\x1b[31mred\\x1b]0;owned\\x07.toml: error: invalid unit name"),
        "{out:?}"
    );
    assert!(out.stderr.contains("no such user `x\\x1b[2Jy`"), "{out:?}");

    // The directory's own name, in the OK line.
    let dir = c.root().join("units\u{1b}[2J");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("web.toml"), "[exec]\ncommand = [\"true\"]\n").unwrap();
    let out = check(&dir);
    assert_eq!(out.code, 0, "{out:?}");
    assert_no_terminal_sequences(&out.stdout);
    assert!(out.stdout.contains("units\\x1b[2J: 1 unit OK"), "{out:?}");
}

#[test]
fn a_file_name_that_is_not_utf8_is_shown_byte_by_byte() {
    use std::os::unix::ffi::OsStrExt;
    let c = Corral::new();
    c.unit("web", "[exec]\ncommand = [\"true\"]\n");
    let name = std::ffi::OsStr::from_bytes(b"b\xff\x1b[2J.toml");
    std::fs::write(c.units.join(name), "[exec]\ncommand = [\"true\"]\n").unwrap();
    let out = check(&c.units);
    assert_eq!(out.code, 0, "{out:?}");
    assert_no_terminal_sequences(&out.stderr);
    assert!(
        out.stderr
            .contains("b\\xff\\x1b[2J.toml: warning: ignored: the file name is not UTF-8"),
        "{out:?}"
    );
}

fn check_show(dir: &Path, unit: &str) -> common::Out {
    let mut cmd = Command::new(common::BIN);
    cmd.arg("check").arg(dir).arg("--show").arg(unit);
    run_bounded(cmd)
}

#[test]
fn show_prints_the_merged_unit_with_where_each_key_came_from() {
    let c = Corral::new();
    c.unit(
        "web",
        "description = \"static site\"\n[exec]\ncommand = [\"serve\"]\n[resources]\nmemory-max = \"512M\"\npids-max = 64\n",
    );
    std::fs::create_dir(c.units.join("web.toml.d")).unwrap();
    std::fs::write(
        c.units.join("web.toml.d/10-mem.toml"),
        "[resources]\nmemory-max = \"1G\"\n",
    )
    .unwrap();
    std::fs::write(
        c.units.join("web.toml.d/20-env.toml"),
        "[exec.env]\nMODE = \"prod\\u001b]0;pwned\\u0007\"\n",
    )
    .unwrap();
    let out = check_show(&c.units, "web");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "# merged from web.toml, web.toml.d/10-mem.toml, web.toml.d/20-env.toml\n\
         description = \"static site\"  # from web.toml:1\n\
         \n\
         [exec]\n\
         command = [\"serve\"]  # from web.toml:3\n\
         \n\
         [exec.env]\n\
         MODE = \"prod\\u001B]0;pwned\\u0007\"  # from web.toml.d/20-env.toml:2\n\
         \n\
         [resources]\n\
         memory-max = \"1G\"  # from web.toml.d/10-mem.toml:2\n\
         pids-max = 64  # from web.toml:6\n",
        "{out:?}"
    );
    assert_no_terminal_sequences(&out.stdout);
}

#[test]
fn show_of_an_instance_expands_it_and_a_bad_drop_in_fails_naming_its_line() {
    let c = Corral::new();
    c.unit(
        "worker@",
        "description = \"worker %i\"\n[exec]\ncommand = [\"work\", \"--id\", \"%i\"]\n",
    );
    std::os::unix::fs::symlink("worker@.toml", c.units.join("worker@3.toml")).unwrap();
    let out = check_show(&c.units, "worker@3");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "# merged from worker@.toml\n\
         description = \"worker 3\"  # from worker@.toml:1\n\
         \n\
         [exec]\n\
         command = [\"work\", \"--id\", \"3\"]  # from worker@.toml:3\n",
        "{out:?}"
    );
    // `check` itself counts the instance, not the template.
    let out = check(&c.units);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.ends_with(": 1 unit OK\n"), "{out:?}");

    std::fs::create_dir(c.units.join("worker@.toml.d")).unwrap();
    std::fs::write(
        c.units.join("worker@.toml.d/10-mem.toml"),
        "[resources]\npids-max = 0\n",
    )
    .unwrap();
    let out = check_show(&c.units, "worker@3");
    assert_eq!(out.code, 1, "{out:?}");
    // Shown anyway, the bad value with its origin; the error names the drop-in's line.
    assert!(
        out.stdout
            .contains("pids-max = 0  # from worker@.toml.d/10-mem.toml:2"),
        "{out:?}"
    );
    let at = format!(
        "{}:2:12: error:",
        c.units.join("worker@.toml.d/10-mem.toml").display()
    );
    assert!(out.stderr.contains(&at), "{out:?}");

    let out = check_show(&c.units, "nope");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no unit `nope` here"), "{out:?}");
}
