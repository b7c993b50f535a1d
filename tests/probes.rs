//! Black-box probe endpoints for the kubelet (`--probe-listen`: `/livez`, `/readyz`,
//! `/readyz/UNIT`) and `corral wait-ready`, which the supervisor answers when units are ready.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Corral, free_port, is_about, require_cgroup_v1, require_systemd_notify};
use serde_json::Value;

/// Bounds every read of a test's HTTP client, so a broken server fails the test.
const DEADLINE: Duration = Duration::from_secs(20);

/// One request on a fresh connection; the status line, the head and the body.
fn http(port: u16, request: &[u8]) -> (String, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the probes");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("reading the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP head");
    let status = head.lines().next().unwrap_or("").to_owned();
    (status, head.to_owned(), body.to_owned())
}

/// `GET path`: the status code and the JSON body.
fn get(port: u16, path: &str) -> (u16, Value) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 10.0.0.7:{port}\r\nUser-Agent: kube-probe/1.31\r\n\r\n"
    );
    let (status, head, body) = http(port, request.as_bytes());
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {status:?}"));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (code, json)
}

/// A notify unit that sends READY=1 (with Debian's `systemd-notify`) once the test writes a
/// line into `fifo`, and a plain service that is ready as soon as it runs.
fn two_units(c: &Corral, fifo: &Path) {
    nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    c.unit(
        "db",
        &format!(
            r#"
            [exec]
            command = ["sh", "-c", "read line < {}; systemd-notify --ready; exec sleep 600"]
            ready = "notify"
            "#,
            fifo.display()
        ),
    );
    c.unit("web", "[exec]\ncommand = [\"sleep\", \"600\"]\n");
}

/// Makes `db` send READY=1 and waits until corral has taken it.
fn make_db_ready(c: &mut Corral, fifo: &Path) {
    // Opening for writing waits for db's shell to open its end: it is running by now.
    std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    c.wait_log("db ready", |l| is_about(l, "db", "ready (READY=1)"));
}

/// Launches corral with its probe listener on every address, as `export k8s --wrap` does (no
/// opt-in needed, unlike `--metrics-listen`); the tests reach it on loopback.
fn launch_with_probes(c: &mut Corral) -> u16 {
    let port = free_port();
    c.launch(&["--probe-listen", &format!("0.0.0.0:{port}")]);
    c.wait_count("the probe listener", 1, |l| {
        common::msg(l) == "serving GET /livez, /readyz and /readyz/UNIT"
    });
    port
}

#[test]
fn readyz_is_503_until_the_notify_unit_sends_ready_then_200_and_livez_is_200_throughout() {
    if !require_cgroup_v1() || !require_systemd_notify() {
        return;
    }
    let mut c = Corral::new();
    let fifo = c.path("db-go");
    two_units(&c, &fifo);
    let port = launch_with_probes(&mut c);
    c.wait_exec("web", 1);
    c.wait_exec("db", 1);

    assert_eq!(
        get(port, "/livez"),
        (200, serde_json::json!({"live": true}))
    );
    let (code, body) = get(port, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body, serde_json::json!({"ready": false, "waiting": ["db"]}));
    let (code, body) = get(port, "/readyz/db");
    assert_eq!(
        (code, &body["ready"], &body["unit"]),
        (503, &false.into(), &"db".into()),
        "{body}"
    );
    assert_eq!(body["state"], "starting");
    let (code, body) = get(port, "/readyz/web");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"unit": "web", "ready": true, "state": "running"})
    );
    // Unknown: a unit name that is no unit, and one that is no unit name at all (JSON-escaped).
    let (code, body) = get(port, "/readyz/nosuch");
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "no unit named \"nosuch\"");
    let (code, body) = get(port, "/readyz/a\"b\\c");
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "no unit named \"a\\\"b\\\\c\"");
    assert_eq!(get(port, "/readyz?verbose").0, 503);

    make_db_ready(&mut c, &fifo);
    assert_eq!(
        get(port, "/readyz"),
        (200, serde_json::json!({"ready": true}))
    );
    let (code, body) = get(port, "/readyz/db");
    assert_eq!((code, &body["ready"]), (200, &true.into()), "{body}");
    assert_eq!(get(port, "/livez").0, 200);
}

#[test]
fn bad_and_oversized_requests_are_refused_and_others_still_served() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", "[exec]\ncommand = [\"sleep\", \"600\"]\n");
    let port = launch_with_probes(&mut c);
    c.wait_exec("web", 1);
    // A slow client that has sent half its request stays open through all of this.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();

    let (status, ..) = http(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (status, ..) = http(port, b"GET /readyz\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (status, head, _) = http(port, b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed", "{head}");
    let (status, ..) = http(port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // A head that never ends: refused once past the bound, without reading the rest.
    let mut huge = b"GET /readyz HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 9 * 1024));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(&huge).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{answer}"
    );

    assert_eq!(get(port, "/readyz").0, 200);
    // The slow client finishes its request and gets its answer.
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    slow.write_all(b"\r\n").unwrap();
    let mut raw = String::new();
    slow.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    assert!(raw.ends_with("{\"ready\":true}\n"), "{raw}");
}

#[test]
fn a_strangers_idle_connections_do_not_keep_the_kubelet_out() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", "[exec]\ncommand = [\"sleep\", \"600\"]\n");
    let port = launch_with_probes(&mut c);
    c.wait_exec("web", 1);
    // Twice as many silent connections as the listener holds, and some that sent a part.
    let mut held: Vec<TcpStream> = (0..128)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for stream in held.iter_mut().step_by(8) {
        stream.write_all(b"GET /readyz HTTP/1.1\r\n").unwrap();
    }
    // Each probe is answered while they are all still open (what the listener closed to make
    // room is the oldest of them).
    for _ in 0..3 {
        assert_eq!(
            get(port, "/readyz"),
            (200, serde_json::json!({"ready": true}))
        );
        assert_eq!(get(port, "/livez").0, 200);
    }
    drop(held);
}

#[test]
fn wait_ready_exits_0_once_ready_and_1_at_its_timeout_saying_why() {
    if !require_cgroup_v1() || !require_systemd_notify() {
        return;
    }
    let mut c = Corral::new();
    let fifo = c.path("db-go");
    two_units(&c, &fifo);
    c.unit(
        "spare",
        "enabled = false\n[exec]\ncommand = [\"sleep\", \"600\"]\n",
    );
    c.launch(&[]);
    c.wait_exec("web", 1);
    c.wait_exec("db", 1);

    // Every enabled unit (spare is disabled and not counted): db is not ready.
    let out = c.cli(&["wait-ready", "--timeout", "200ms"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("not ready after 200ms: db (starting)"),
        "{out:?}"
    );
    // A named unit that is ready answers at once.
    let out = c.cli(&["wait-ready", "web"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ready: web"), "{out:?}");
    // Named: a disabled unit is waited for like any other.
    let out = c.cli(&["wait-ready", "spare", "--timeout", "100ms"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("spare (inactive)"), "{out:?}");
    let out = c.cli(&["wait-ready", "nosuch"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("nosuch"), "{out:?}");

    // Waiting with no timeout: the answer comes when db sends READY=1, not before.
    let mut waiter = c
        .cmd(&["wait-ready", "db"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut all = c
        .cmd(&["wait-ready", "--timeout", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both requests are in before READY=1 is sent.
    c.wait_count("both wait-ready requests", 2, |l| {
        common::msg(l) == "wait-ready: waiting"
    });
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "answered before db was ready"
    );
    make_db_ready(&mut c, &fifo);
    let status = common::wait_child(&mut waiter, DEADLINE).expect("wait-ready db ended");
    assert_eq!(status.code(), Some(0));
    let status = common::wait_child(&mut all, DEADLINE).expect("wait-ready ended");
    assert_eq!(status.code(), Some(0));
    let mut text = String::new();
    all.stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "every enabled unit is ready\n");
    c.ok(&["wait-ready", "--timeout", "0s"]);
}

#[test]
fn wait_ready_keeps_waiting_for_a_unit_that_failed_and_says_so_at_the_timeout() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "bad",
        "[exec]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n[restart]\npolicy = \"never\"\n",
    );
    c.launch(&[]);
    c.wait_log("bad failed", |l| is_about(l, "bad", "exit"));
    let out = c.cli(&["wait-ready", "bad", "--timeout", "300ms"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("bad (failed: exited with code 3)"),
        "{out:?}"
    );
}

#[test]
fn wait_ready_without_a_supervisor_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let out = common::run_bounded({
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_corral"));
        cmd.arg("--socket")
            .arg(&socket)
            .args(["wait-ready", "--timeout", "1s"])
            .env_remove("CORRAL_SOCKET");
        cmd
    });
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("no supervisor answers"), "{out:?}");
}

/// `/livez` is answered by the loop itself: a stopped loop answers nothing (the kernel still
/// completes the connect, so the kubelet sees its probe time out), and answers once it runs.
#[test]
fn livez_is_not_answered_while_the_loop_is_stopped() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", "[exec]\ncommand = [\"sleep\", \"600\"]\n");
    let port = launch_with_probes(&mut c);
    c.wait_exec("web", 1);
    c.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"GET /livez HTTP/1.1\r\n\r\n").unwrap();
    // Stopped, corral cannot answer, however long this waits.
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let stopped = stream.read(&mut byte);
    // Running again before any assertion, so a failure does not leave corral stopped.
    c.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(
        stopped
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "an answer from a stopped loop: {stopped:?}"
    );
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    assert!(raw.ends_with("{\"live\":true}\n"), "{raw}");
}

/// Descriptors corral has open now.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Out of descriptors at an accept, the probe listener leaves the epoll set "until a probe
/// client leaves". When the descriptors went elsewhere (here: control connections, which a
/// local peer or a unit's passed fds can also take) and no probe client was connected, no
/// probe client ever leaves, and the listener stayed out for good once descriptors were free
/// again: /livez never answered, and the kubelet would restart a pod whose loop runs.
#[test]
fn the_probe_listener_serves_again_once_descriptors_are_free_though_no_probe_client_left() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("web", "[exec]\ncommand = [\"sleep\", \"600\"]\n");
    let port = launch_with_probes(&mut c);
    c.wait_exec("web", 1);
    let pid = c.pid();
    // Room for a few more descriptors only.
    let limit = open_fds(pid) + 4;
    let set = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(set.success(), "prlimit: {set}");
    // Control connections take them all (the rest are turned away with corral's reserve fd).
    let held: Vec<std::os::unix::net::UnixStream> = (0..16)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&c.socket).ok())
        .collect();
    c.wait_log("the control listener out of descriptors", |l| {
        common::msg(l).contains("out of file descriptors")
    });
    let stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.wait_log("the probe listener paused", |l| {
        common::msg(l).contains("the probe listener waits")
    });
    drop(stuck);
    drop(held);
    // corral closes them in its next turns; then a probe is answered (the read waits DEADLINE).
    assert_eq!(get(port, "/livez").0, 200);
}
