//! corral's own log on stderr: colour only for a terminal (or when asked), `key=value` pairs
//! whole, a unit's escapes escaped, JSON one object per line with the documented fields.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::{BIN, Corral, DEADLINE, msg, require_root, toml_str, wait_child};
use serde_json::Value;

const ESC: u8 = 0x1b;

/// True when util-linux `script` runs (the pseudo-terminal tests); else skips, or under
/// CI=true fails, the calling test.
fn require_script() -> bool {
    let works = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the terminal tests of corral's log need `script` (bsdutils), and CI=true does not allow skipping"
        );
    }
    eprintln!("SKIPPED: the terminal tests of corral's log need `script` (bsdutils)");
    false
}

/// Units that make corral log, then end it: `kick` asks corral (through its socket) to start
/// `shout`, which writes a red word with raw escapes; corral exits once `kick` is done
/// (`--exit-with kick`). So the log holds a request's audit line and a unit's output line, and
/// nothing in the test has to wait for corral.
fn setup() -> Corral {
    let c = Corral::new();
    c.unit(
        "shout",
        "kind = \"oneshot\"\nenabled = false\n[exec]\ncommand = [\"printf\", \"\\\\033[31mred\\\\033[0m\\\\n\"]\n",
    );
    c.unit(
        "kick",
        &format!(
            "kind = \"oneshot\"\n[exec]\ncommand = [{}, \"--socket\", {}, \"start\", \"shout\"]\n",
            toml_str(BIN),
            toml_str(&c.socket.display().to_string())
        ),
    );
    c
}

/// The arguments of `corral run` for `setup`'s units, then `extra`.
fn run_args(c: &Corral, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        c.units.display().to_string(),
        "--socket".into(),
        c.socket.display().to_string(),
        "--cgroup-root".into(),
        c.cgroup_root.clone(),
        "--exit-with".into(),
        "kick".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Where corral's stderr goes in a run.
enum Sink {
    File,
    Pipe,
    Socket,
}

/// Runs corral (bounded) with its stderr to `sink` and `NO_COLOR` unset; returns what it wrote.
fn run_to(c: &Corral, sink: Sink, extra: &[&str], no_color: Option<&str>) -> Vec<u8> {
    let mut cmd = Command::new(BIN);
    cmd.args(run_args(c, extra))
        .env_remove("CORRAL_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let file = c.path("corral.log");
    let mut reader: Option<Box<dyn Read + Send>> = None;
    match sink {
        Sink::File => {
            cmd.stderr(std::fs::File::create(&file).unwrap());
        }
        Sink::Pipe => {
            cmd.stderr(Stdio::piped());
        }
        Sink::Socket => {
            let (ours, theirs) = UnixStream::pair().unwrap();
            cmd.stderr(Stdio::from(OwnedFd::from(theirs)));
            reader = Some(Box::new(ours));
        }
    }
    let mut child = cmd.spawn().expect("spawning corral run");
    // Our copy of the socket's far end went into `cmd`: drop it so EOF comes with corral's exit.
    drop(cmd);
    if let Some(pipe) = child.stderr.take() {
        reader = Some(Box::new(pipe));
    }
    let collected = reader.map(|mut r| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = r.read_to_end(&mut bytes);
            bytes
        })
    });
    let Some(status) = wait_child(&mut child, DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("corral did not exit within {DEADLINE:?}");
    };
    assert!(status.success(), "corral run: {status:?}");
    match collected {
        Some(thread) => thread.join().unwrap(),
        None => std::fs::read(&file).unwrap(),
    }
}

/// Runs corral under a pseudo-terminal (`script`), so its stderr is a terminal; returns what
/// the terminal received.
fn run_on_terminal(c: &Corral, extra: &[&str], no_color: Option<&str>) -> Vec<u8> {
    let quoted: Vec<String> = std::iter::once(BIN.to_owned())
        .chain(run_args(c, extra))
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut cmd = Command::new("script");
    // -q: no banner; -e: corral's exit code; the typescript is not needed, stdout has it all.
    cmd.args([
        "-q",
        "-e",
        "-c",
        &format!("exec {}", quoted.join(" ")),
        "/dev/null",
    ])
    .env("SHELL", "/bin/sh")
    .env_remove("CORRAL_LOG")
    .env_remove("NO_COLOR")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let mut child = cmd.spawn().expect("spawning script");
    let mut out = child.stdout.take().unwrap();
    let collected = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out.read_to_end(&mut bytes);
        bytes
    });
    let Some(status) = wait_child(&mut child, DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("corral under script did not exit within {DEADLINE:?}");
    };
    let bytes = collected.join().unwrap();
    assert!(
        status.success(),
        "corral under script: {status:?}\n{}",
        String::from_utf8_lossy(&bytes)
    );
    bytes
}

fn has_escape(bytes: &[u8]) -> bool {
    bytes.contains(&ESC)
}

/// The audit line of kick's request and shout's output line are there, greppable.
fn assert_text_lines(bytes: &[u8], what: &str) {
    let text = String::from_utf8_lossy(bytes);
    let audit = text
        .lines()
        .find(|l| l.contains("control request"))
        .unwrap_or_else(|| panic!("{what}: no audit line in\n{text}"));
    for pair in ["uid=0 ", "pid=", "verb=Start", r#"units=["shout"]"#] {
        assert!(audit.contains(pair), "{what}: {pair:?} in {audit:?}");
    }
    // shout's raw ESC arrives as the four characters `\x1b`.
    assert!(
        text.contains(r"\x1b[31mred"),
        "{what}: shout's line in\n{text}"
    );
}

#[test]
fn corrals_own_log_to_a_file_a_pipe_or_a_socket_has_no_escape_byte() {
    if !require_root() {
        return;
    }
    for (sink, what) in [
        (Sink::File, "a file"),
        (Sink::Pipe, "a pipe"),
        (Sink::Socket, "a socket"),
    ] {
        let c = setup();
        let log = run_to(&c, sink, &[], None);
        assert!(
            !has_escape(&log),
            "ESC in the log to {what}:\n{}",
            String::from_utf8_lossy(&log)
        );
        assert_text_lines(&log, what);
    }
}

#[test]
fn corrals_own_log_is_colored_on_a_terminal_unless_no_color_or_never() {
    if !require_root() || !require_script() {
        return;
    }
    let colored = run_on_terminal(&setup(), &[], None);
    assert!(
        has_escape(&colored),
        "no colour on a terminal:\n{}",
        String::from_utf8_lossy(&colored)
    );
    // Colour never splits a key from its value.
    assert_text_lines(&colored, "a terminal");

    // no-color.org: an empty NO_COLOR is as if unset.
    let empty = run_on_terminal(&setup(), &[], Some(""));
    assert!(has_escape(&empty), "NO_COLOR= (empty) turned colour off");

    for (extra, no_color, what) in [
        (&[][..], Some("1"), "NO_COLOR=1"),
        (&["--log-color", "never"][..], None, "--log-color never"),
        (&["--log-format", "json"][..], None, "--log-format json"),
    ] {
        let plain = run_on_terminal(&setup(), extra, no_color);
        assert!(
            !has_escape(&plain),
            "ESC on a terminal with {what}:\n{}",
            String::from_utf8_lossy(&plain)
        );
        assert!(
            String::from_utf8_lossy(&plain).contains("control request"),
            "{what}: corral logged nothing?"
        );
    }
}

#[test]
fn log_color_always_colors_a_pipe_even_with_no_color() {
    if !require_root() {
        return;
    }
    for no_color in [None, Some("1")] {
        let log = run_to(&setup(), Sink::Pipe, &["--log-color", "always"], no_color);
        assert!(
            has_escape(&log),
            "no colour with --log-color always, NO_COLOR {no_color:?}:\n{}",
            String::from_utf8_lossy(&log)
        );
        assert_text_lines(&log, "--log-color always");
    }
}

#[test]
fn the_json_log_is_one_object_per_line_with_the_documented_fields() {
    if !require_root() {
        return;
    }
    let log = run_to(&setup(), Sink::Pipe, &["--log-format", "json"], None);
    assert!(!has_escape(&log), "raw ESC in the JSON log");
    let text = String::from_utf8(log).expect("the JSON log is UTF-8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&line["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(line["target"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let audit = lines
        .iter()
        .find(|l| l["fields"]["message"] == "control request")
        .expect("the audit line");
    assert_eq!(audit["fields"]["uid"], 0, "{audit}");
    assert!(audit["fields"]["pid"].as_u64().is_some(), "{audit}");
    assert_eq!(audit["fields"]["verb"], "Start", "{audit}");
    assert_eq!(audit["fields"]["units"], r#"["shout"]"#, "{audit}");
    let output = lines
        .iter()
        .find(|l| l["target"] == "unit" && l["fields"]["unit"] == "shout")
        .expect("shout's output line");
    assert_eq!(output["fields"]["stream"], "stdout");
    assert_eq!(output["fields"]["message"], "\u{1b}[31mred\u{1b}[0m");
}

#[test]
fn a_refused_state_change_from_a_read_only_peer_is_audited_too() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("idle", "[exec]\ncommand = [\"sleep\", \"600\"]\n");
    // nobody (uid 65534) in nogroup may read; the temp dir above the socket's is root's 0700.
    c.launch(&["--socket-group", "nogroup"]);
    std::fs::set_permissions(c.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = c.cmd(args);
        cmd.uid(65534).gid(65534);
        common::run_bounded(cmd)
    };
    let out = as_nobody(&["status", "--json"]);
    assert_eq!(out.code, 0, "a read verb is allowed: {out:?}");
    let out = as_nobody(&["stop", "idle"]);
    assert_eq!(out.code, 1, "{out:?}");
    let refused = c.wait_log("the refused request in the log", |l| {
        msg(l) == "control request refused"
    });
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert_eq!(refused["fields"]["uid"], 65534, "{refused}");
    assert!(refused["fields"]["pid"].as_u64().is_some(), "{refused}");
    assert_eq!(refused["fields"]["verb"], "Stop", "{refused}");
    assert_eq!(refused["fields"]["units"], r#"["idle"]"#, "{refused}");
    assert_eq!(c.status("idle")["state"], "running");
}
