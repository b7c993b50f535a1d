//! Black-box readiness and health: sd_notify (with Debian's own `systemd-notify`), start
//! timeouts, HTTP/TCP/exec probes gating readiness and restarting, and the watchdog.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{
    Corral, free_port, is_about, is_output, msg, require_cgroup_v1, require_root,
    require_systemd_notify, toml_str,
};
use serde_json::Value;

/// The index in `c.seen` of the first line matching `pred`.
fn index_of(c: &Corral, what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    c.seen
        .iter()
        .position(pred)
        .unwrap_or_else(|| c.fail(&format!("no log line for {what}")))
}

/// `systemd-notify` from Debian's `systemd` package, which .ci/run installs.
#[test]
fn a_dependent_waits_for_ready_1_sent_by_debians_systemd_notify() {
    if !require_root() || !require_systemd_notify() {
        return;
    }
    let mut c = Corral::new();
    // Ready only a second after its spawn, through the stock tool, unchanged.
    c.unit(
        "db",
        r#"
        [exec]
        command = ["sh", "-c", "sleep 1; systemd-notify --ready --status='accepting connections'; exec sleep 600"]
        ready = "notify"
        "#,
    );
    c.unit(
        "web",
        r#"
        after = ["db"]
        [exec]
        command = ["sleep", "600"]
        "#,
    );
    c.launch(&[]);
    c.wait_log("web started", |l| is_about(l, "web", "started"));

    let db_ready = index_of(&c, "db ready", |l| is_about(l, "db", "ready (READY=1)"));
    let web_started = index_of(&c, "web started", |l| is_about(l, "web", "started"));
    let db_started = index_of(&c, "db started", |l| is_about(l, "db", "started"));
    // db was spawned, spent its second starting, became ready, and only then web started.
    assert!(db_started < db_ready && db_ready < web_started);
    let db_heard = index_of(&c, "db's READY=1 datagram", |l| {
        unit_of_debug(l) == "db" && msg(l).starts_with("notify: READY=1")
    });
    assert!(db_heard < db_ready);

    let db = c.status("db");
    assert_eq!(db["state"], "running");
    assert_eq!(db["ready"], "notify");
    assert_eq!(db["status_text"], "accepting connections");
    let human = c.ok(&["status", "db"]).stdout;
    assert!(human.contains("notify    accepting connections"), "{human}");
    // `start` answers once the unit is ready, not merely spawned.
    assert_eq!(c.status("web")["state"], "running");
}

fn unit_of_debug(line: &Value) -> &str {
    line["fields"]["unit"].as_str().unwrap_or("")
}

#[test]
fn a_unit_that_never_sends_ready_fails_its_start_at_start_timeout_and_backs_off() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "mute",
        r#"
        [exec]
        command = ["sleep", "600"]
        ready = "notify"
        start-timeout = "300ms"
        [restart]
        delay = "100ms"
        "#,
    );
    c.launch(&[]);
    let spawned = c.wait_log("mute spawned", |l| is_about(l, "mute", "started"));
    let pid = spawned["fields"]["pid"].as_i64().unwrap() as i32;
    c.wait_log("the start timeout", |l| {
        is_about(
            l,
            "mute",
            "not ready within start-timeout 300ms (no READY=1)",
        )
    });
    let backoff = c.wait_log("the restart", |l| is_about(l, "mute", "restarting in"));
    assert!(
        msg(&backoff).contains("killed by SIGTERM (stopped by corral: start-timeout)"),
        "{backoff}"
    );
    assert!(
        common::wait_pid_exit(pid, common::DEADLINE),
        "the timed-out process is gone"
    );
    c.wait_log("the second try", |l| is_about(l, "mute", "started"));
    let status = c.status("mute");
    assert_eq!(status["last_exit"]["reason"], "start-timeout", "{status}");
    assert_eq!(status["last_exit"]["signal"], "SIGTERM", "{status}");
    assert!(status["restarts"].as_u64().unwrap() >= 1, "{status}");
}

#[test]
fn a_notify_message_from_a_process_outside_the_unit_is_ignored() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "svc",
        r#"
        [exec]
        command = ["sh", "-c", "echo \"socket=$NOTIFY_SOCKET\"; exec sleep 600"]
        ready = "notify"
        start-timeout = "10m"
        "#,
    );
    c.launch(&[]);
    let line = c.wait_log("the unit's NOTIFY_SOCKET", |l| {
        is_output(l, "svc") && msg(l).starts_with("socket=")
    });
    let socket = msg(&line).trim_start_matches("socket=").to_owned();
    assert!(
        socket.starts_with('/'),
        "a path, not an abstract name: {socket:?}"
    );

    // The test process (root, so it may reach the socket) is no process of the unit: its
    // READY=1 must change nothing.
    let sender = UnixDatagram::unbound().unwrap();
    sender.send_to(b"READY=1\nSTATUS=forged", &socket).unwrap();
    let me = std::process::id();
    c.wait_log("the refusal", |l| {
        is_about(
            l,
            "svc",
            &format!("ignoring a notify message from pid {me}"),
        )
    });
    let status = c.status("svc");
    assert_eq!(status["state"], "starting", "{status}");
    assert!(status["status_text"].is_null(), "{status}");
    let table = c.ok(&["status"]).stdout;
    assert!(table.contains("waiting for READY=1"), "{table}");
}

/// A tiny HTTP server the test controls: 200 while `healthy`, 503 after.
fn http_server(healthy: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req);
            let answer: &[u8] = if healthy.load(Ordering::SeqCst) {
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
            } else {
                b"HTTP/1.0 503 Service Unavailable\r\n\r\n"
            };
            let _ = conn.write_all(answer);
        }
    });
    port
}

#[test]
fn an_http_probe_that_starts_failing_restarts_the_unit_after_failure_threshold_failures() {
    if !require_root() {
        return;
    }
    let healthy = Arc::new(AtomicBool::new(true));
    let port = http_server(Arc::clone(&healthy));
    let mut c = Corral::new();
    c.unit(
        "api",
        &format!(
            r#"
            [exec]
            command = ["sleep", "600"]
            [health]
            http = "http://127.0.0.1:{port}/healthz"
            interval = "100ms"
            timeout = "5s"
            failure-threshold = 3
            [restart]
            delay = "100ms"
            "#
        ),
    );
    c.launch(&[]);
    c.wait_log("api ready", |l| {
        is_about(l, "api", "ready (the health probe)")
    });
    let status = c.status("api");
    assert_eq!(status["state"], "running");
    assert_eq!(status["health"]["last_result"], "ok", "{status}");
    assert_eq!(status["health"]["last_message"], "HTTP 200", "{status}");

    healthy.store(false, Ordering::SeqCst);
    let from = c.cursor();
    let restart = c.wait_log("the health restart", |l| {
        is_about(l, "api", "restarting in")
    });
    assert!(
        msg(&restart).contains("(stopped by corral: health)"),
        "{restart}"
    );
    let failures: Vec<String> = c.seen[from..]
        .iter()
        .filter(|l| is_about(l, "api", "health probe failed"))
        .map(|l| msg(l).to_owned())
        .collect();
    assert_eq!(
        failures,
        vec![
            "health probe failed (1/3): HTTP 503",
            "health probe failed (2/3): HTTP 503",
            "health probe failed (3/3): HTTP 503",
        ],
        "exactly failure-threshold failures before the restart"
    );
    // Restarted, and while the server says 503 it never becomes ready again.
    c.wait_log("the restart's spawn", |l| is_about(l, "api", "started"));
    let status = c.status("api");
    assert_eq!(status["last_exit"]["reason"], "health", "{status}");
    assert_eq!(status["restarts"], 1, "{status}");
    // Not running (restarted, starting again): `status` says so with exit code 3.
    let human = c.cli(&["status", "api"]);
    assert_eq!(human.code, 3, "{human:?}");
    assert!(
        human.stdout.contains("last exit: SIGTERM (health)"),
        "{human:?}"
    );
    assert!(human.stdout.contains("failed: HTTP 503"), "{human:?}");
}

#[test]
fn a_tcp_probe_gates_readiness_and_the_dependent_waits_for_it() {
    if !require_root() {
        return;
    }
    let port = free_port();
    let mut c = Corral::new();
    c.unit(
        "db",
        &format!(
            r#"
            [exec]
            command = ["sleep", "600"]
            [health]
            tcp = "127.0.0.1:{port}"
            interval = "100ms"
            "#
        ),
    );
    c.unit(
        "app",
        r#"
        after = ["db"]
        [exec]
        command = ["sleep", "600"]
        "#,
    );
    c.launch(&[]);
    c.wait_log("a refused probe", |l| {
        is_about(l, "db", "health probe failed") && msg(l).contains("refused")
    });
    let status = c.status("db");
    assert_eq!(status["state"], "starting", "{status}");
    assert_eq!(status["health"]["last_result"], "failed", "{status}");
    let table = c.ok(&["status"]).stdout;
    let refused = format!("not ready: connection to 127.0.0.1:{port} refused");
    assert!(table.contains(&refused), "{table}");
    assert_eq!(c.status("app")["state"], "inactive");

    let _listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    c.wait_log("db ready", |l| {
        is_about(l, "db", "ready (the health probe)")
    });
    c.wait_log("app started", |l| is_about(l, "app", "started"));
    let status = c.status("db");
    assert_eq!(status["state"], "running");
    assert_eq!(status["health"]["probe"], format!("tcp 127.0.0.1:{port}"));
    assert_eq!(status["health"]["last_result"], "ok");
}

#[test]
fn an_exec_probe_gates_readiness_and_runs_inside_the_units_cgroup() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let flag = c.path("flag");
    let seen = c.path("probe-cgroup");
    let script = format!(
        "cat /proc/self/cgroup > {}; test -e {}",
        seen.display(),
        flag.display()
    );
    c.unit(
        "worker",
        &format!(
            r#"
            [exec]
            command = ["sleep", "600"]
            [health]
            exec = ["sh", "-c", {}]
            interval = "100ms"
            success-threshold = 2
            "#,
            toml_str(&script)
        ),
    );
    c.launch(&[]);
    c.wait_log("a failed exec probe", |l| {
        is_about(l, "worker", "health probe failed") && msg(l).contains("exited with code 1")
    });
    assert_eq!(c.status("worker")["state"], "starting");
    std::fs::write(&flag, "").unwrap();
    c.wait_log("worker ready", |l| {
        is_about(l, "worker", "ready (the health probe)")
    });
    let status = c.status("worker");
    assert_eq!(status["state"], "running");
    assert!(status["health"]["consecutive_successes"].as_u64().unwrap() >= 2);
    let cgroups = std::fs::read_to_string(&seen).unwrap();
    let unit_cgroup = format!("{}/worker.service", c.cgroup_root);
    assert!(
        cgroups.lines().any(|l| l.ends_with(&unit_cgroup)),
        "the probe ran in {cgroups}, not in {unit_cgroup}"
    );
}

#[test]
fn a_watchdog_unit_that_stops_pinging_is_restarted() {
    if !require_root() || !require_systemd_notify() {
        return;
    }
    let mut c = Corral::new();
    // Five pings 100ms apart, through the stock tool, then silence; the 3s watchdog leaves a
    // slow machine ample room between two pings.
    c.unit(
        "dog",
        r#"
        [exec]
        command = ["sh", "-c", "echo \"usec=$WATCHDOG_USEC\"; for i in 1 2 3 4 5; do systemd-notify WATCHDOG=1; sleep 0.1; done; exec sleep 600"]
        [health]
        watchdog = "3s"
        [restart]
        delay = "100ms"
        "#,
    );
    c.launch(&[]);
    c.wait_log("WATCHDOG_USEC", |l| {
        is_output(l, "dog") && msg(l) == "usec=3000000"
    });
    let fired = c.wait_log("the watchdog", |l| {
        is_about(l, "dog", "watchdog: no WATCHDOG=1 within 3s")
    });
    let pings = c
        .seen
        .iter()
        .take_while(|l| *l != &fired)
        .filter(|l| unit_of_debug(l) == "dog" && msg(l).starts_with("notify: WATCHDOG=1"))
        .count();
    assert_eq!(pings, 5, "every ping was heard before the watchdog fired");
    // systemd-notify sends each ping in its parent's name and then a BARRIER=1 in its own,
    // and exits as soon as corral closes the barrier fd: checked first, it is never refused.
    let refused: Vec<&str> = c
        .seen
        .iter()
        .filter(|l| is_about(l, "dog", "ignoring"))
        .map(msg)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let restart = c.wait_log("the restart", |l| is_about(l, "dog", "restarting in"));
    assert!(
        msg(&restart).contains("(stopped by corral: watchdog)"),
        "{restart}"
    );
    c.wait_log("the new run", |l| is_about(l, "dog", "started"));
    let status = c.status("dog");
    assert_eq!(status["last_exit"]["reason"], "watchdog", "{status}");
    assert_eq!(status["health"]["watchdog_ms"], 3000, "{status}");
}

#[test]
fn systemd_notify_works_unchanged_from_a_unit_running_as_nobody() {
    if !require_root() || !require_systemd_notify() {
        return;
    }
    let mut c = Corral::new();
    // Unprivileged, systemd-notify cannot send in its parent's name: the kernel vouches for
    // its own pid, a process of the unit for as long as it waits on its BARRIER=1.
    c.unit(
        "lowly",
        r#"
        [exec]
        command = ["sh", "-c", "systemd-notify --ready --status=unprivileged; exec sleep 600"]
        ready = "notify"
        user = "nobody"
        "#,
    );
    c.launch(&[]);
    c.wait_log("ready", |l| is_about(l, "lowly", "ready (READY=1)"));
    let status = c.status("lowly");
    assert_eq!(status["state"], "running");
    assert_eq!(status["status_text"], "unprivileged");
}

#[test]
fn a_watchdog_unit_gets_watchdog_usec_and_its_own_pid_as_watchdog_pid() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let report = r#"echo "usec=$WATCHDOG_USEC pid=$WATCHDOG_PID self=$$"; exec sleep 1000"#;
    for (name, extra) in [("plain", ""), ("pidns", "[namespaces]\npid = true\n")] {
        c.unit(
            name,
            &format!(
                "[exec]\ncommand = [\"sh\", \"-c\", {}]\n[health]\nwatchdog = \"1h\"\n{extra}",
                toml_str(report)
            ),
        );
    }
    c.launch(&[]);
    for name in ["plain", "pidns"] {
        let line = c.wait_count(&format!("{name}'s report"), 1, |l| {
            is_output(l, name) && msg(l).starts_with("usec=")
        });
        let text = msg(&line[0]).to_owned();
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(field("usec"), "3600000000", "{text}");
        assert_eq!(field("pid"), field("self"), "{name}: {text}");
    }
}

#[test]
fn a_frozen_unit_is_not_probed_and_its_probes_resume_at_the_thaw() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "paused",
        "[exec]\ncommand = [\"sleep\", \"1000\"]\n[health]\nexec = [\"true\"]\ninterval = \"100ms\"\nfailure-threshold = 1000\n",
    );
    c.unit(
        "clock",
        "[exec]\ncommand = [\"sh\", \"-c\", \"while :; do echo tick; sleep 0.1; done\"]\n",
    );
    c.launch(&[]);
    c.wait_log("ready", |l| {
        is_about(l, "paused", "ready (the health probe)")
    });
    let probed = |l: &serde_json::Value| is_about(l, "paused", "health probe: ");
    c.ok(&["freeze", "paused"]);
    let frozen_at = c.seen.len();
    // Ten intervals of the probe pass while the unit is frozen: corral answers, and no probe
    // runs (its child would freeze in the unit's cgroup before its exec; and a frozen unit
    // cannot answer one, so it is not held against it).
    let ticks = c.seen.iter().filter(|l| is_output(l, "clock")).count();
    c.wait_count("ten ticks while frozen", ticks + 10, |l| {
        is_output(l, "clock")
    });
    assert_eq!(c.status("paused")["frozen"], true);
    // A probe under way at the freeze may still end (its timeout, under load); none may start.
    let seq = |l: &serde_json::Value| l["fields"]["seq"].as_u64().unwrap_or(0);
    let last_before = c.seen[..frozen_at]
        .iter()
        .filter(|l| probed(l))
        .map(seq)
        .max()
        .unwrap_or(0);
    let during: Vec<_> = c.seen[frozen_at..]
        .iter()
        .filter(|l| probed(l) && seq(l) > last_before + 1)
        .collect();
    assert!(during.is_empty(), "probes of a frozen unit: {during:?}");
    c.ok(&["thaw", "paused"]);
    c.wait_log("a probe after the thaw", probed);
    let status = c.status("paused");
    assert_eq!(status["health"]["consecutive_failures"], 0, "{status}");
}

#[test]
fn an_exec_probe_that_leaves_a_process_behind_costs_corral_no_descriptor() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // Each probe passes at once and leaves a `sleep` holding its stdout and stderr.
    c.unit(
        "leaky",
        r#"
        [exec]
        command = ["sleep", "600"]
        [health]
        exec = ["sh", "-c", "sleep 1000 & exit 0"]
        interval = "20ms"
        "#,
    );
    c.launch(&[]);
    let corral = c.pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{corral}/fd"))
            .unwrap()
            .count()
    };
    let passed = |l: &Value| is_about(l, "leaky", "health probe: exited with code 0");
    const FIRST: usize = 5;
    const LATER: usize = 30;
    c.wait_count("probes", FIRST, passed);
    let before = fds();
    c.wait_count("probes", LATER, passed);
    let after = fds();
    eprintln!("corral's descriptors: {before} after {FIRST} probes, {after} after {LATER}");
    assert!(
        after < before + (LATER - FIRST),
        "corral's descriptors grew from {before} to {after} over {} probes",
        LATER - FIRST
    );
    // And the probes' leftovers are gone: no more than the last probe's may still be there.
    let procs = c.cgroup_read("memory", "leaky.service/cgroup.procs");
    let left = procs
        .split_whitespace()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd == b"sleep\x001000\x00")
        })
        .count();
    assert!(left <= 1, "{left} probe leftovers still run: {procs}");
}

/// Python that sends each argument as one sd_notify datagram from its own process, after
/// replacing `{pid}` by its pid (as its own pid namespace numbers it), then sleeps.
const NOTIFIER: &str = r#"
import os, socket, sys, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for text in sys.argv[1:]:
    s.sendto(text.replace("{pid}", str(os.getpid())).encode(), addr)
time.sleep(600)
"#;

/// What corral made of the unit's `MAINPID=`s: its refusals and changes of main process.
fn mainpid_verdicts<'a>(c: &'a Corral, unit: &str) -> Vec<&'a str> {
    c.seen
        .iter()
        .filter(|l| is_about(l, unit, "MAINPID=") && !msg(l).starts_with("notify:"))
        .map(msg)
        .collect()
}

#[test]
fn a_mainpid_from_another_process_than_the_main_one_is_ignored() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let notifier = c.path("notifier.py");
    std::fs::write(&notifier, NOTIFIER).unwrap();
    // The notifier is a child of the main process (the shell, then its exec'd sleep).
    let script = format!(
        "python3 {} 'MAINPID={{pid}}' READY=1 & exec sleep 600",
        notifier.display()
    );
    c.unit(
        "svc",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", {}]\nready = \"notify\"\n",
            toml_str(&script)
        ),
    );
    c.launch(&[]);
    let main = c.wait_exec("svc", 1);
    c.wait_log("ready", |l| is_about(l, "svc", "ready (READY=1)"));
    let verdicts = mainpid_verdicts(&c, "svc");
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    assert!(
        verdicts[0].contains("only the main process may set it"),
        "{verdicts:?}"
    );
    assert_eq!(c.status("svc")["pid"], main);
}

#[test]
fn a_mainpid_from_a_pid_namespace_is_read_in_that_namespace() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let notifier = c.path("notifier.py");
    std::fs::write(&notifier, NOTIFIER).unwrap();
    // The notifier is the command, pid 2 of the unit's namespace: pid 2 names itself, whom the
    // helper (the main process) stands for, not the host's pid 2; pid 1 there is the helper,
    // which no MAINPID may name.
    c.unit(
        "contained",
        &format!(
            r#"
            [exec]
            command = ["python3", {}, "MAINPID=1", "MAINPID={{pid}}\nREADY=1"]
            ready = "notify"
            [namespaces]
            pid = true
            "#,
            toml_str(&notifier.display().to_string())
        ),
    );
    c.launch(&[]);
    let helper = c.wait_exec("contained", 1);
    c.wait_log("ready", |l| is_about(l, "contained", "ready (READY=1)"));
    let verdicts = mainpid_verdicts(&c, "contained");
    assert_eq!(verdicts.len(), 1, "only MAINPID=1 is refused: {verdicts:?}");
    assert!(
        verdicts[0].starts_with("ignoring MAINPID=1:") && verdicts[0].contains("own pid namespace"),
        "{verdicts:?}"
    );
    assert_eq!(c.status("contained")["pid"], helper);
}
