//! Black-box control plane: logs, socket permissions, protocol robustness, exit codes, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::mpsc;

use common::{
    Corral, DEADLINE, NOBODY, NOGROUP, is_about, is_output, msg, require_root, wait_child,
};
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

/// A wait settled by another client's queued request is answered without waiting for some
/// later wake: `waiter` waits to start `x` (held back by `dep`, which never gets ready and
/// stays up when `x` is stopped, so that stop wakes nothing); the
/// `stop x` that settles it reaches corral queued behind a `stop` of `quick` on another
/// connection, so it is served only once that `stop` is answered, late in a turn.
#[test]
fn a_wait_settled_by_a_queued_request_of_another_client_is_answered() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "dep",
        "[exec]\ncommand = [\"sleep\", \"1000\"]\nready = \"notify\"\n",
    );
    c.unit(
        "x",
        "enabled = false\nrequires = [\"dep\"]\n[exec]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    c.unit("quick", "[exec]\ncommand = [\"sleep\", \"1000\"]\n");
    c.launch(&[]);
    c.wait_count("dep and quick started", 2, |l| {
        is_about(l, "dep", "started") || is_about(l, "quick", "started")
    });
    let waiter = c.connect();
    let mut waiter_reader = BufReader::new(waiter.try_clone().unwrap());
    (&waiter)
        .write_all(b"{\"verb\":\"start\",\"units\":[\"x\"]}\n")
        .unwrap();
    // The waiter's request is read before the other connection is made (one wake each).
    assert_eq!(c.status("x")["waiting_for"][0]["unit"], "dep");
    let other = c.connect();
    let mut other_reader = BufReader::new(other.try_clone().unwrap());
    (&other)
        .write_all(
            b"{\"verb\":\"stop\",\"units\":[\"quick\"]}\n{\"verb\":\"stop\",\"units\":[\"x\"]}\n",
        )
        .unwrap();
    assert_eq!(read_response(&mut other_reader)["ok"], true);
    assert_eq!(read_response(&mut other_reader)["ok"], true);
    let answer = read_response(&mut waiter_reader);
    assert_eq!(answer["ok"], false, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("x was stopped before it started"),
        "{answer}"
    );
}

// ---- hostile local peers -------------------------------------------------------------------

/// A group `nobody` is not a member of on Debian (base-passwd fixes both).
const DAEMON_GID: u32 = 1;

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// `n` connections to `socket` made with another user's credentials. A thread of this process
/// takes them on with raw syscalls, which change only the calling thread's (libc's wrappers
/// change every thread's), so the kernel records them at each connect for SO_PEERCRED and
/// SO_PEERGROUPS and checks the socket's file permissions against them.
fn connect_as(
    socket: &std::path::Path,
    uid: u32,
    gid: u32,
    groups: &[u32],
    n: usize,
) -> Vec<std::io::Result<UnixStream>> {
    let socket = socket.to_owned();
    let groups = groups.to_vec();
    std::thread::spawn(move || {
        // SAFETY: plain id-changing syscalls on this thread alone; `groups` outlives the call.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        (0..n)
            .map(|_| {
                let stream = UnixStream::connect(&socket)?;
                stream.set_read_timeout(Some(DEADLINE))?;
                Ok(stream)
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// Sends one request line (a closed connection is fine: its answer is what matters).
fn send_line(stream: &UnixStream, line: &str) {
    let _ = (&*stream).write_all(format!("{line}\n").as_bytes());
}

/// The first answer on `stream`, or Null when it closes without one.
fn first_answer(stream: &UnixStream) -> Value {
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 => serde_json::from_str(&line).unwrap(),
        _ => Value::Null,
    }
}

const FOLLOW_TALKER: &str = r#"{"verb":"logs","units":["talker"],"follow":true}"#;

#[test]
fn a_socket_group_peer_cannot_take_every_slot_and_root_keeps_a_way_in() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&["--socket-group", "nogroup"]);
    c.wait_log("talker's pid line", |l| {
        is_output(l, "talker") && msg(l).starts_with("pid ")
    });
    set_mode(c.root(), 0o755);
    let started = std::time::Instant::now();

    // One read-only peer asks for as many followers as the socket has room for clients.
    let mut following = 0;
    let mut refusals = Vec::new();
    let mut held = Vec::new();
    for conn in connect_as(&c.socket, NOBODY, NOGROUP, &[], corral::daemon::MAX_CLIENTS) {
        let Ok(stream) = conn else {
            refusals.push(Value::Null);
            continue;
        };
        send_line(&stream, FOLLOW_TALKER);
        let answer = first_answer(&stream);
        if answer["ok"] == true {
            following += 1;
        } else {
            refusals.push(answer["error"]["kind"].clone());
        }
        held.push(stream);
    }
    assert_eq!(following, corral::daemon::MAX_FOLLOWERS_PER_UID);
    assert!(
        refusals.iter().all(|kind| kind == "limit-reached"),
        "{refusals:?}"
    );
    // While all of those are held, root gets in, and can follow too.
    c.ok(&["status"]);
    let root = c.connect();
    send_line(&root, FOLLOW_TALKER);
    assert_eq!(first_answer(&root)["ok"], true);
    drop(root);

    // Many users of the group together fill every slot but the reserve, and no more.
    use corral::daemon::{MAX_CLIENTS, MAX_CONNECTIONS_PER_UID, TRUSTED_RESERVE};
    let users = MAX_CLIENTS.div_ceil(MAX_CONNECTIONS_PER_UID) as u32 + 1;
    let (mut answered, mut full) = (0, 0);
    for uid in (NOBODY - users..NOBODY).rev() {
        for stream in connect_as(&c.socket, uid, NOGROUP, &[], MAX_CONNECTIONS_PER_UID) {
            let stream = stream.unwrap();
            send_line(&stream, r#"{"verb":"status","units":["talker"]}"#);
            let answer = first_answer(&stream);
            if answer["ok"] == true {
                answered += 1;
            } else {
                assert_eq!(answer["error"]["kind"], "limit-reached", "{answer}");
                full += 1;
            }
            held.push(stream);
        }
    }
    assert!(full > 0, "the group's users were never refused");
    // With the first user's connections, the group holds no slot of the reserve.
    let group_slots = MAX_CLIENTS - TRUSTED_RESERVE - MAX_CONNECTIONS_PER_UID;
    assert!(answered <= group_slots, "{answered} > {group_slots}");
    c.ok(&["status"]);

    // Hundreds of refusals, a few lines of log: one per REFUSAL_LOG_INTERVAL at most.
    c.ok(&["restart", "talker", "--no-block"]);
    c.wait_log("root's restart request", |l| {
        msg(l) == "control request" && l["fields"]["uid"] == 0
    });
    let logged = c
        .seen
        .iter()
        .filter(|l| msg(l).contains("control connection refused"))
        .count() as u32;
    let windows =
        started.elapsed().as_secs_f64() / corral::daemon::REFUSAL_LOG_INTERVAL.as_secs_f64();
    assert!(
        (1..=windows.ceil() as u32 + 1).contains(&logged),
        "{logged} refusals logged in {:?}",
        started.elapsed()
    );
}

#[test]
fn one_unit_named_many_times_is_answered_once() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&[]);
    c.wait_log("talker's pid line", |l| {
        is_output(l, "talker") && msg(l).starts_with("pid ")
    });
    let many = vec!["talker"; 500];
    let stream = c.connect();
    send_line(
        &stream,
        &json!({"verb": "logs", "units": many, "lines": 1000}).to_string(),
    );
    let answer = first_answer(&stream);
    assert_eq!(answer["ok"], true, "{answer}");
    // The unit printed four lines: each once, however often it was named.
    let texts: Vec<&Value> = answer["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["text"])
        .collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    send_line(
        &stream,
        &json!({"verb": "status", "units": many}).to_string(),
    );
    let answer = first_answer(&stream);
    assert_eq!(answer["units"].as_array().unwrap().len(), 1, "{answer}");
}

#[test]
fn logs_of_a_thousand_longest_lines_arrive_whole() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // 1000 lines just under the 8 KiB line cap: 8 MiB of answer, twice the output bound.
    let width = corral::daemon::MAX_LINE_BYTES - 1;
    c.unit(
        "wide",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", \"yes $(head -c {width} /dev/zero | tr '\\\\0' x) | head -n 1000; exec sleep 1000\"]\n"
        ),
    );
    c.launch(&[]);
    c.wait_count("1000 wide lines", 1000, |l| is_output(l, "wide"));
    assert!(1000 * width > corral::daemon::MAX_PENDING_OUTPUT);

    let out = c.cli(&["logs", "wide", "-n", "1000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1000);
    assert!(lines.iter().all(|l| l.ends_with(&"x".repeat(width))));

    let out = c.cli(&["logs", "wide", "-n", "1000", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1000);

    // A follower's backlog of the same size arrives whole too.
    let mut follower = c
        .cmd(&["logs", "wide", "-f", "-n", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let n = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(1000)
            .filter(|l| l.ends_with('x'))
            .count();
        let _ = tx.send(n);
    });
    assert_eq!(rx.recv_timeout(DEADLINE), Ok(1000));
    follower.kill().unwrap();
    wait_child(&mut follower, DEADLINE).expect("the follower to die");
}

/// `corral run` for `c` that is expected to refuse to start: its exit code and stderr.
fn run_refused(c: &Corral) -> common::Out {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("run")
        .arg(&c.units)
        .arg("--socket")
        .arg(&c.socket)
        .args(["--cgroup-root", &c.cgroup_root])
        .env_remove("CORRAL_SOCKET");
    common::run_bounded(cmd)
}

#[test]
fn only_a_stale_socket_is_replaced_at_the_socket_path() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let dir = c.socket.parent().unwrap().to_owned();
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o700);

    // A regular file is someone's data: left alone, and the refusal names it.
    std::fs::write(&c.socket, "precious").unwrap();
    let out = run_refused(&c);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&c.socket.display().to_string()),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&c.socket).unwrap(), "precious");
    std::fs::remove_file(&c.socket).unwrap();

    // A symlink is not followed, nor removed.
    std::os::unix::fs::symlink(c.root().join("elsewhere"), &c.socket).unwrap();
    let out = run_refused(&c);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(std::fs::symlink_metadata(&c.socket).unwrap().is_symlink());
    std::fs::remove_file(&c.socket).unwrap();

    // A socket nobody answers on is stale: replaced.
    drop(std::os::unix::net::UnixListener::bind(&c.socket).unwrap());
    assert!(c.socket.exists());
    c.unit("talker", TALKER);
    c.launch(&[]);
    c.ok(&["status"]);
}

#[test]
fn a_socket_directory_others_can_write_to_is_refused() {
    if !require_root() {
        return;
    }
    let c = Corral::new();
    let dir = c.socket.parent().unwrap().to_owned();
    std::fs::create_dir(&dir).unwrap();
    for mode in [0o777, 0o1777, 0o770] {
        set_mode(&dir, mode);
        let out = run_refused(&c);
        assert_eq!(out.code, 1, "mode {mode:o}: {out:?}");
        assert!(
            out.stderr.contains(&dir.display().to_string()),
            "mode {mode:o}: {out:?}"
        );
        assert!(!c.socket.exists(), "mode {mode:o}");
    }
    // Owned by another user, even private.
    set_mode(&dir, 0o700);
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOGROUP)).unwrap();
    let out = run_refused(&c);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&dir.display().to_string()), "{out:?}");
}

#[test]
fn a_socket_path_through_another_users_directory_is_refused_even_behind_a_symlink() {
    if !require_root() {
        return;
    }
    let c = Corral::new();
    // `--socket theirs/link/control.sock`: `theirs` is another user's, and `link` in it points
    // to a private directory of root's. The owner of `theirs` can point `link` elsewhere at
    // any time (to a directory of theirs with a socket of theirs, which root's CLI would then
    // talk to), so the path is no safer than `theirs`, whatever `link` resolves to today.
    let theirs = c.root().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    set_mode(&theirs, 0o755);
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOGROUP)).unwrap();
    let private = c.root().join("private");
    std::fs::create_dir(&private).unwrap();
    set_mode(&private, 0o700);
    std::os::unix::fs::symlink(&private, theirs.join("link")).unwrap();
    let socket = theirs.join("link").join("control.sock");

    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("run")
        .arg(&c.units)
        .arg("--socket")
        .arg(&socket)
        .args(["--cgroup-root", &c.cgroup_root])
        .env_remove("CORRAL_SOCKET");
    let out = common::run_bounded(cmd);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&theirs.display().to_string()),
        "the refusal names the other user's directory: {out:?}"
    );
    assert!(!private.join("control.sock").exists());

    // The same through a symlink of theirs in a sticky directory of root's (as /tmp): the
    // sticky bit keeps others from removing it, not its owner from replacing it.
    let sticky = c.root().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    set_mode(&sticky, 0o1777);
    let link = sticky.join("link");
    std::os::unix::fs::symlink(&private, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOGROUP)).unwrap();
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("run")
        .arg(&c.units)
        .arg("--socket")
        .arg(link.join("control.sock"))
        .args(["--cgroup-root", &c.cgroup_root])
        .env_remove("CORRAL_SOCKET");
    let out = common::run_bounded(cmd);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&link.display().to_string()),
        "the refusal names their symlink: {out:?}"
    );
    assert!(!private.join("control.sock").exists());
}

#[test]
fn socket_group_access_needs_membership() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&["--socket-group", "nogroup"]);
    // Open the files to everyone: only the server's own check decides.
    set_mode(c.root(), 0o755);
    set_mode(c.socket.parent().unwrap(), 0o755);
    set_mode(&c.socket, 0o666);
    let status = r#"{"verb":"status"}"#;
    let ask_for = |gid: u32, groups: &[u32], request: &str| {
        let mut conns = connect_as(&c.socket, NOBODY, gid, groups, 1);
        let stream = conns.pop().unwrap().unwrap();
        send_line(&stream, request);
        first_answer(&stream)
    };
    let ask = |gid: u32, groups: &[u32]| ask_for(gid, groups, status);
    // Neither the primary group nor a supplementary one: refused.
    let stranger = ask(DAEMON_GID, &[]);
    assert_eq!(stranger["ok"], false, "{stranger}");
    assert_eq!(stranger["error"]["kind"], "permission-denied", "{stranger}");
    // A member by its primary group, or by a supplementary one.
    assert_eq!(ask(NOGROUP, &[])["ok"], true);
    assert_eq!(ask(DAEMON_GID, &[NOGROUP])["ok"], true);
    // wait-ready is a read verb: a member may wait for a unit.
    let wait = r#"{"verb":"wait-ready","units":["talker"],"timeout_ms":60000}"#;
    let answer = ask_for(NOGROUP, &[], wait);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["message"], "ready: talker", "{answer}");
}

#[test]
fn running_out_of_fds_is_logged_once_and_root_gets_back_in() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&[]);
    // Measured once the unit runs: its first start opens fds (cgroup files, pipes, pidfd)
    // that a measure taken at corral's first log line would not count.
    c.wait_log("talker's pid line", |l| {
        is_output(l, "talker") && msg(l).starts_with("pid ")
    });
    // A few fds more than corral has open now (RLIMIT_NOFILE bounds fd numbers).
    let highest = std::fs::read_dir(format!("/proc/{}/fd", c.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let limit = highest + 1 + 8;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit on corral's pid with a limit that lives across the call.
    let set = unsafe { libc::prlimit(c.pid(), libc::RLIMIT_NOFILE, &rlimit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    // Connections that are answered and kept, until corral has no fd left for the next one.
    let status = r#"{"verb":"status"}"#;
    let mut held = Vec::new();
    let refusal = loop {
        assert!(
            (held.len() as u64) < limit,
            "corral accepted more clients than it has fds"
        );
        let stream = c.connect();
        send_line(&stream, status);
        let answer = first_answer(&stream);
        if answer["ok"] != true {
            break answer;
        }
        held.push(stream);
    };
    assert_eq!(refusal["error"]["kind"], "limit-reached", "{refusal}");
    // More connections in the same episode are turned away the same way, not left hanging.
    for _ in 0..5 {
        let stream = c.connect();
        send_line(&stream, status);
        assert_eq!(first_answer(&stream)["error"]["kind"], "limit-reached");
    }
    held.truncate(held.len() / 2);
    c.wait_log("the end of the episode", |l| {
        msg(l).contains("accepting control connections again")
    });
    c.ok(&["status"]);
    let warnings = c
        .seen
        .iter()
        .filter(|l| msg(l).contains("out of file descriptors"))
        .count();
    assert_eq!(warnings, 1, "one warning per episode");
}

#[test]
fn a_start_that_finds_corral_out_of_fds_says_it_is_corrals_limit() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // Runs a moment, then is started again: a start after corral's limit drops finds no fds.
    c.unit(
        "flapper",
        r#"
[exec]
command = ["sh", "-c", "echo run; exec sleep 0.2"]
[restart]
policy = "always"
delay = "50ms"
max-delay = "50ms"
start-limit-burst = 1000
"#,
    );
    c.launch(&[]);
    c.wait_log("flapper's first run", |l| {
        is_output(l, "flapper") && msg(l) == "run"
    });
    // No fd number free below the limit: a start finds only the fds its last run's end gave
    // back, and it needs more (three pipes, the cgroup's procs file).
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{}/fd", c.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .collect();
    let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
    let mut before = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on corral's pid, reading into `before`.
    let got = unsafe { libc::prlimit(c.pid(), libc::RLIMIT_NOFILE, std::ptr::null(), &mut before) };
    assert_eq!(got, 0, "{}", std::io::Error::last_os_error());
    let pid = c.pid();
    let set_limit = |limit: u64| {
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: before.rlim_max,
        };
        // SAFETY: prlimit on corral's pid with a limit that lives across the call.
        let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &rlimit, std::ptr::null_mut()) };
        assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    };
    set_limit(lowest_free);
    let line = c.wait_log("a start refused for want of fds", |l| {
        is_about(l, "flapper", "out of file descriptors")
    });
    assert!(
        msg(&line).contains("corral ran out of file descriptors")
            && msg(&line).contains(&format!("RLIMIT_NOFILE ({lowest_free})")),
        "{line}"
    );
    // Room again: the unit runs again (EMFILE is transient, so it was retried).
    set_limit(before.rlim_cur);
    let runs = c
        .seen
        .iter()
        .filter(|l| is_output(l, "flapper") && msg(l) == "run")
        .count();
    c.wait_count("flapper runs again", runs + 1, |l| {
        is_output(l, "flapper") && msg(l) == "run"
    });
}

#[test]
fn under_a_hostile_peer_root_status_answers_within_a_bound_from_the_limits() {
    use corral::daemon::{MAX_CONNECTIONS_PER_UID, MAX_FOLLOWERS_PER_UID, REQUESTS_PER_TURN};
    use std::time::{Duration, Instant};
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    for i in 0..30 {
        c.unit(
            &format!("idle-{i}"),
            "enabled = false\n[exec]\ncommand = [\"sleep\", \"1000\"]\n",
        );
    }
    c.launch(&["--socket-group", "nogroup"]);
    c.wait_log("talker's pid line", |l| {
        is_output(l, "talker") && msg(l).starts_with("pid ")
    });
    set_mode(c.root(), 0o755);
    let round_trip = || {
        let started = Instant::now();
        c.ok(&["status"]);
        started.elapsed()
    };
    let quiet = (0..3).map(|_| round_trip()).max().unwrap();

    let mut hostile: Vec<UnixStream> =
        connect_as(&c.socket, NOBODY, NOGROUP, &[], MAX_CONNECTIONS_PER_UID)
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // Flooders: pipelined status requests, written as fast as corral takes them, never read.
    let (written_tx, written_rx) = mpsc::channel();
    let flooders: Vec<UnixStream> = hostile.drain(..4).collect();
    for stream in &flooders {
        let mut stream = stream.try_clone().unwrap();
        let written_tx = written_tx.clone();
        std::thread::spawn(move || {
            // 72 KiB: more than corral reads of a client in a turn, less than the kernel's
            // socket buffer, so the first burst is taken whether corral reads or not.
            let burst = "{\"verb\":\"status\"}\n".repeat(4096);
            while stream.write_all(burst.as_bytes()).is_ok() {
                let _ = written_tx.send(());
            }
        });
    }
    // Slow readers: large answers asked for, never read.
    let mut kept = Vec::new();
    for stream in hostile.drain(..4) {
        send_line(
            &stream,
            r#"{"verb":"logs","units":["talker"],"lines":1000}"#,
        );
        send_line(&stream, r#"{"verb":"status"}"#);
        kept.push(stream);
    }
    // Followers, as many as one peer may have.
    for stream in hostile.drain(..MAX_FOLLOWERS_PER_UID) {
        send_line(&stream, FOLLOW_TALKER);
        assert_eq!(first_answer(&stream)["ok"], true);
        kept.push(stream);
    }
    // A peer passing file descriptors: the socket takes none.
    let passer = hostile.pop().unwrap();
    let fd = std::fs::File::open("/dev/null").unwrap();
    let sent = nix::sys::socket::sendmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&passer),
        &[std::io::IoSlice::new(b"{\"verb\":\"status\"}\n")],
        &[nix::sys::socket::ControlMessage::ScmRights(&[
            std::os::fd::AsRawFd::as_raw_fd(&fd),
        ])],
        nix::sys::socket::MsgFlags::empty(),
        None,
    );
    assert_eq!(sent, Err(nix::errno::Errno::EPERM));
    // The flood is under way.
    written_rx.recv_timeout(DEADLINE).unwrap();

    // Each turn of the loop serves every client at most REQUESTS_PER_TURN requests, each no
    // dearer than a quiet status round trip; root's request needs an accept turn, a read turn
    // and the turn its answer is written in.
    let clients = MAX_CONNECTIONS_PER_UID as u32;
    let bound = quiet * (3 * clients * REQUESTS_PER_TURN as u32 + 1);
    let started = Instant::now();
    let mut status = c
        .cmd(&["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = wait_child(&mut status, bound.max(Duration::from_millis(1)));
    let took = started.elapsed();
    if finished.is_none() {
        let _ = status.kill();
        let _ = status.wait();
    }
    eprintln!("root's status under load: {took:?} (quiet {quiet:?}, bound {bound:?})");
    assert!(
        finished.is_some_and(|s| s.success()),
        "root's status under load: {finished:?} after {took:?} (bound {bound:?}, quiet {quiet:?})"
    );
    for stream in &flooders {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    drop((hostile, kept));
}

#[test]
fn a_request_from_a_client_that_hangs_up_at_once_is_still_carried_out() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("talker", TALKER);
    c.launch(&[]);
    c.wait_log("talker started", |l| is_about(l, "talker", "started"));
    let stream = c.connect();
    send_line(
        &stream,
        r#"{"verb":"stop","units":["talker"],"no_block":true}"#,
    );
    drop(stream);
    c.wait_log("talker stopped", |l| is_about(l, "talker", "stopped"));
    assert_eq!(c.status("talker")["state"], "inactive");
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

/// A `--socket-group` member must not hold corral's loop with `logs --grep` alone (no hostile
/// unit needed): a grep budget per answer (50 ms) was not enough, since one peer gets
/// `MAX_CONNECTIONS_PER_UID` × `REQUESTS_PER_TURN` = 128 answers per turn, each searching any
/// unit's buffer of ordinary lines with a costly pattern for its whole 50 ms: seconds of every
/// turn, while root's `status`, /livez, watchdogs and timers waited. So a peer uid's greps share
/// `GREP_BUDGET_PER_UID` per second. The bound is the one of
/// `under_a_hostile_peer_root_status_answers_within_a_bound_from_the_limits`: each request no
/// dearer than a quiet status round trip.
#[test]
fn under_a_peer_pipelining_costly_greps_root_status_answers_within_a_bound_from_the_limits() {
    use corral::daemon::{MAX_CONNECTIONS_PER_UID, REQUESTS_PER_TURN};
    use std::time::{Duration, Instant};
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // 1000 ordinary lines of 200 bytes: a full buffer.
    c.unit(
        "chatty",
        r#"
        [exec]
        command = ["sh", "-c", "i=0; while [ $i -lt 1000 ]; do printf '%0200d\n' $i; i=$((i+1)); done; echo done; exec sleep 600"]
        "#,
    );
    c.launch(&["--socket-group", "nogroup"]);
    c.wait_log("chatty's last line", |l| {
        is_output(l, "chatty") && msg(l) == "done"
    });
    set_mode(c.root(), 0o755);
    let round_trip = || {
        let started = Instant::now();
        c.ok(&["status"]);
        started.elapsed()
    };
    let quiet = (0..3).map(|_| round_trip()).max().unwrap();

    let hostile: Vec<UnixStream> =
        connect_as(&c.socket, NOBODY, NOGROUP, &[], MAX_CONNECTIONS_PER_UID)
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // Costly (each line's match takes the line's length times ~90 states), and within the
    // compiled size `--grep` allows.
    let grep = r#"{"verb":"logs","units":["chatty"],"grep":"[0-9]{0,90}Q"}"#;
    let (answered_tx, answered_rx) = mpsc::channel();
    for stream in &hostile {
        // Pipelined: a few requests queued at once, and more as answers come back.
        let writer = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let burst = format!("{grep}\n").repeat(8);
            while (&writer).write_all(burst.as_bytes()).is_ok() {}
        });
        let reader = stream.try_clone().unwrap();
        let answered_tx = answered_tx.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(reader).lines();
            while let Some(Ok(line)) = lines.next() {
                let _ = answered_tx.send(line);
            }
        });
    }
    // The flood is under way: corral answers it (limit-reached, the grep stopped at 50 ms).
    let first = answered_rx.recv_timeout(DEADLINE).unwrap();
    assert!(first.contains("limit-reached"), "{first}");

    let clients = MAX_CONNECTIONS_PER_UID as u32;
    let bound = quiet * (3 * clients * REQUESTS_PER_TURN as u32 + 1);
    let started = Instant::now();
    let mut status = c
        .cmd(&["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = wait_child(&mut status, bound.max(Duration::from_millis(1)));
    let took = started.elapsed();
    if finished.is_none() {
        let _ = status.kill();
        let _ = status.wait();
    }
    for stream in &hostile {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    assert!(
        finished.is_some_and(|s| s.success()),
        "root's status under pipelined greps: {finished:?} after {took:?} (bound {bound:?}, quiet {quiet:?})"
    );
}
