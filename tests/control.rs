//! Black-box control plane: logs, socket permissions, protocol robustness, exit codes, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::mpsc;

use common::{Corral, DEADLINE, is_about, is_output, msg, require_root, wait_child};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// A service that prints to both streams, then its pid, then sleeps.
const TALKER: &str = r#"
[exec]
command = ["sh", "-c", "echo out-1; echo err-1 >&2; echo out-2; echo pid $$; exec sleep 1000"]
"#;

/// Reads one response line from a raw connection.
fn read_response(reader: &mut impl BufRead) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reading a response");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response line {line:?}: {e}"))
}

#[test]
fn logs_returns_both_streams_limits_and_follows() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&[]);
    let first = c.wait_log("talker's pid line", |l| {
        is_output(l, "talker") && msg(l).starts_with("pid ")
    });

    let all = c.ok(&["logs", "talker"]);
    for text in ["out-1", "err-1", "out-2", msg(&first)] {
        assert!(all.stdout.contains(text), "{text} missing from {all:?}");
    }
    // -n keeps the newest lines (stdout and stderr are separate pipes, so their relative
    // order is whatever corral read first: compare with the full listing, not the script).
    let newest: Vec<&str> = all.stdout.lines().rev().take(2).collect();
    let two = c.ok(&["logs", "talker", "-n", "2"]);
    assert_eq!(
        two.stdout.lines().rev().collect::<Vec<_>>(),
        newest,
        "{two:?}"
    );

    let json = c.ok(&["logs", "talker", "--json"]);
    let lines: Vec<Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    assert_eq!(lines.len(), 4, "{json:?}");
    assert!(lines.iter().all(|l| l["unit"] == "talker"));
    let stream_of =
        |text: &str| lines.iter().find(|l| l["text"] == text).unwrap()["stream"].clone();
    assert_eq!(stream_of("out-1"), "stdout");
    assert_eq!(stream_of("err-1"), "stderr");

    // Follow: the backlog first, then a line the unit prints after the follower started.
    let mut follower = c
        .cmd(&["logs", "talker", "-f", "--json", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
        }
    });
    let backlog = rx.recv_timeout(DEADLINE).expect("the follower's backlog");
    assert!(
        newest[0].ends_with(backlog["text"].as_str().unwrap()),
        "{backlog}"
    );
    // The backlog was sent, so the server has this client following now.
    c.ok(&["restart", "talker"]);
    let fresh = loop {
        let line = rx
            .recv_timeout(DEADLINE)
            .expect("a line printed after -f started");
        if line["text"].as_str().unwrap().starts_with("pid ") {
            break line;
        }
    };
    assert_ne!(
        fresh["text"],
        msg(&first),
        "the restarted unit has a new pid"
    );

    // A follower that goes away leaves the supervisor serving everyone else.
    follower.kill().unwrap();
    wait_child(&mut follower, DEADLINE).expect("the follower to die");
    c.ok(&["restart", "talker"]);
    assert_eq!(c.status("talker")["state"], "running");
}

#[test]
fn the_socket_is_private_and_other_users_are_refused() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let dir = c.socket.parent().unwrap().to_owned();
    assert_eq!(mode(&c.socket), 0o600);
    assert_eq!(mode(&dir), 0o700);

    let as_nobody = |c: &Corral| {
        let mut cmd = c.cmd(&["status", "--json"]);
        cmd.uid(65534).gid(65534);
        common::run_bounded(cmd)
    };
    // First the file permissions keep `nobody` out.
    let out = as_nobody(&c);
    assert_eq!(out.code, 4, "{out:?}");

    // With them opened up, the server's own SO_PEERCRED check still refuses.
    let open = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    open(c.root(), 0o755);
    open(&dir, 0o755);
    open(&c.socket, 0o666);
    let out = as_nobody(&c);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.json()["error"]["kind"], "permission-denied", "{out:?}");
    let refusal = c.wait_log("the refusal in the log", |l| {
        msg(l).contains("control connection refused")
    });
    assert_eq!(refusal["fields"]["uid"], 65534);
    // Root still gets in.
    c.ok(&["status"]);
}

#[test]
fn malformed_and_oversized_requests_are_answered_with_errors() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&[]);

    let stream = c.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream).write_all(b"this is not json\n").unwrap();
    let response = read_response(&mut reader);
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"]["kind"], "bad-request", "{response}");
    // The connection stays usable after a bad request.
    (&stream).write_all(b"{\"verb\":\"status\"}\n").unwrap();
    let response = read_response(&mut reader);
    assert_eq!(response["ok"], true, "{response}");
    assert_eq!(response["units"][0]["name"], "talker");

    let mut stream = c.connect();
    // The server may close before taking all of it; only its answer matters.
    let _ = stream.write_all(&vec![b'a'; 65 * 1024]);
    let mut rest = String::new();
    // read_to_string returns only at end of stream: the server closed the connection.
    stream
        .read_to_string(&mut rest)
        .expect("the answer, then end of stream");
    let mut lines = rest.lines();
    let response: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(response["error"]["kind"], "too-large", "{response}");
    assert_eq!(lines.next(), None);
}

#[test]
fn silent_and_vanishing_clients_do_not_block_others() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.unit(
        "slow",
        "kind = \"oneshot\"\nenabled = false\n[exec]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    c.launch(&[]);
    c.wait_log("talker's pid line", |l| {
        is_output(l, "talker") && msg(l).starts_with("pid ")
    });

    // One client says nothing, another stops mid-line: both are connected while others work.
    let _silent = c.connect();
    let mut partial = c.connect();
    partial.write_all(b"{\"verb\":").unwrap();
    assert_eq!(c.status("talker")["state"], "running");

    // A follower that disconnects mid-stream.
    let mut follower = c.connect();
    follower
        .write_all(b"{\"verb\":\"logs\",\"units\":[\"talker\"],\"follow\":true}\n")
        .unwrap();
    let mut reader = BufReader::new(follower.try_clone().unwrap());
    assert_eq!(read_response(&mut reader)["ok"], true);
    drop(reader);
    drop(follower);
    c.ok(&["restart", "talker"]);

    // A blocking start whose client vanishes before the unit gets there.
    let mut starter = c.connect();
    starter
        .write_all(b"{\"verb\":\"start\",\"units\":[\"slow\"]}\n")
        .unwrap();
    c.wait_log("slow started", |l| is_about(l, "slow", "started"));
    drop(starter);
    assert_eq!(c.status("slow")["state"], "starting");
    c.ok(&["stop", "slow"]);
    assert_eq!(c.status("slow")["state"], "inactive");

    // A client that half-closes after its request still gets the answer.
    let mut half = c.connect();
    half.write_all(b"{\"verb\":\"status\",\"units\":[\"talker\"]}\n")
        .unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let response = read_response(&mut BufReader::new(half));
    assert_eq!(response["units"][0]["state"], "running", "{response}");
}

#[test]
fn client_exit_codes() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.unit(
        "idle",
        "enabled = false\n[exec]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    c.launch(&[]);
    c.wait_log("talker started", |l| is_about(l, "talker", "started"));

    assert_eq!(c.cli(&["status", "talker"]).code, 0);
    let idle = c.cli(&["status", "idle"]);
    assert_eq!(idle.code, 3, "a named unit that is not running: {idle:?}");
    let unknown = c.cli(&["status", "no-such-unit"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("no-such-unit"), "{unknown:?}");
    assert_eq!(c.cli(&["start", "no-such-unit"]).code, 1);
    assert_eq!(c.cli(&["frobnicate"]).code, 2);
    assert_eq!(c.cli(&["status", "--no-such-option"]).code, 2);

    let never_launched = Corral::new();
    let out = common::run_bounded(never_launched.cmd(&["status"]));
    assert_eq!(out.code, 4, "a socket nobody answers on: {out:?}");
}

#[test]
fn sigterm_stops_units_in_reverse_dependency_order_and_exits_0() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let service =
        |after: &str| format!("after = [{after}]\n[exec]\ncommand = [\"sleep\", \"1000\"]\n");
    c.unit("base", &service(""));
    c.unit("middle", &service("\"base\""));
    c.unit("top", &service("\"middle\""));
    c.launch(&[]);
    c.wait_count("all three running", 3, |l| msg(l) == "started");
    c.signal(Signal::SIGTERM);
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(0));

    let stopped: Vec<&str> = c
        .seen
        .iter()
        .filter(|l| msg(l).starts_with("stopped"))
        .map(common::unit_of)
        .collect();
    assert_eq!(stopped, ["top", "middle", "base"]);
}

#[test]
fn exit_with_takes_the_units_exit_code() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "job",
        "[exec]\ncommand = [\"sh\", \"-c\", \"exit 7\"]\n[restart]\npolicy = \"never\"\n",
    );
    c.unit("bystander", "[exec]\ncommand = [\"sleep\", \"1000\"]\n");
    c.launch(&["--exit-with", "job"]);
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(7));
    assert!(
        c.seen.iter().any(|l| is_about(l, "bystander", "stopped")),
        "the other unit was stopped on the way out"
    );
}

#[test]
fn exit_with_a_killed_unit_gives_128_plus_the_signal() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "job",
        "[exec]\ncommand = [\"sleep\", \"1000\"]\n[restart]\npolicy = \"never\"\n",
    );
    c.launch(&["--exit-with", "job"]);
    c.wait_log("job started", |l| is_about(l, "job", "started"));
    c.ok(&["kill", "job", "--signal", "SIGKILL"]);
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(128 + 9));
    assert!(
        c.seen
            .iter()
            .any(|l| msg(l).contains("--exit-with") && l["fields"]["code"] == json!(137)),
        "corral logs why it exits"
    );
}

#[test]
fn requests_queued_on_one_connection_are_answered_in_order() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&[]);
    let stream = c.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // A blocking restart and a status in one write: the status waits for the restart's answer.
    (&stream)
        .write_all(b"{\"verb\":\"restart\",\"units\":[\"talker\"]}\n{\"verb\":\"status\"}\n")
        .unwrap();
    let restart = read_response(&mut reader);
    assert_eq!(restart["ok"], true, "{restart}");
    assert_eq!(restart["units"][0]["state"], "running", "{restart}");
    let status = read_response(&mut reader);
    assert_eq!(status["units"][0]["name"], "talker", "{status}");
    // The same after a half-close: both are still answered.
    let stream = c.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream)
        .write_all(b"{\"verb\":\"restart\",\"units\":[\"talker\"]}\n{\"verb\":\"status\"}")
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_response(&mut reader)["ok"], true);
    assert_eq!(read_response(&mut reader)["units"][0]["name"], "talker");
}

/// A unit's description, its notify status and its output reach the operator's terminal
/// through `status` and `logs`: their escape sequences are shown, never obeyed.
#[test]
fn status_and_logs_print_terminal_sequences_escaped() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "shouty",
        "description = \"web \\u001b]0;owned\\u0007\\u001b[2J\"\n\
         [exec]\ncommand = [\"sh\", \"-c\", \"printf 'red\\\\033[31m\\\\n'; exec sleep 1000\"]\n",
    );
    c.launch(&[]);
    c.wait_log("shouty's output", |l| {
        is_output(l, "shouty") && msg(l).starts_with("red")
    });
    let raw = |text: &str| text.chars().any(|ch| ch.is_control() && ch != '\n');
    for args in [&["status"][..], &["status", "shouty"], &["logs", "shouty"]] {
        let out = c.ok(args);
        assert!(!raw(&out.stdout), "corral {args:?} printed raw: {out:?}");
    }
    let table = c.ok(&["status"]);
    assert!(
        table.stdout.contains("web \\x1b]0;owned\\x07\\x1b[2J"),
        "{table:?}"
    );
    let details = c.ok(&["status", "shouty"]);
    assert!(
        details.stdout.contains("  web \\x1b]0;owned\\x07\\x1b[2J"),
        "{details:?}"
    );
    let logs = c.ok(&["logs", "shouty"]);
    assert!(logs.stdout.contains("red\\x1b[31m"), "{logs:?}");
    // --json keeps the text as it was: JSON escapes it, and scripts want the bytes.
    let json = c.ok(&["logs", "shouty", "--json"]);
    assert!(json.stdout.contains("red\\u001b[31m"), "{json:?}");

    // A file named with a sequence makes the next reload fail; `status` repeats the error.
    std::fs::write(
        c.units.join("evil\u{1b}]0;owned\u{7}.toml"),
        "[exec]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    c.wait_log("the refused reload", |l| {
        msg(l).starts_with("reload refused")
    });
    let out = c.ok(&["status"]);
    assert!(!raw(&out.stderr), "corral status printed raw: {out:?}");
    assert!(
        out.stderr
            .contains("evil\\x1b]0;owned\\x07.toml: error: invalid unit name"),
        "{out:?}"
    );
}
