//! Black-box supervision: restarts and backoff, policies, stop timeouts, reaping, order, hygiene.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{
    Corral, children_of, is_about, is_output, msg, proc_state, reaped_pid, require_root, toml_str,
};
use serde_json::{Value, json};

fn at(line: &Value) -> SystemTime {
    humantime::parse_rfc3339(line["timestamp"].as_str().unwrap()).unwrap()
}

#[test]
fn a_crashing_service_backs_off_with_growing_delays_then_fails_at_the_start_limit() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "crash",
        r#"
        [exec]
        command = ["sh", "-c", "exit 1"]
        [restart]
        delay = "100ms"
        "#,
    );
    c.launch(&[]);
    c.wait_log("the start limit", |l| {
        is_about(l, "crash", "start limit hit")
    });

    let backoffs: Vec<&Value> = c
        .seen
        .iter()
        .filter(|l| is_about(l, "crash", "restarting in"))
        .collect();
    let delays: Vec<Duration> = backoffs
        .iter()
        .map(|l| {
            humantime::parse_duration(msg(l).rsplit("restarting in ").next().unwrap()).unwrap()
        })
        .collect();
    // Default burst 5: five starts, so four backoffs before the limit.
    assert_eq!(delays.len(), 4, "backoffs: {delays:?}");
    assert_eq!(delays[0], Duration::from_millis(100));
    for pair in delays.windows(2) {
        assert_eq!(pair[1], pair[0] * 2, "delays must double: {delays:?}");
    }
    // corral's own clock agrees: the wait before the last restart is longer than the first.
    let gaps: Vec<Duration> = backoffs
        .iter()
        .map(|b| {
            let started = c
                .seen
                .iter()
                .find(|l| is_about(l, "crash", "started") && at(l) >= at(b))
                .unwrap();
            at(started).duration_since(at(b)).unwrap()
        })
        .collect();
    assert!(gaps[3] > gaps[0], "gaps do not grow: {gaps:?}");

    let status = c.status("crash");
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("start limit"),
        "{status}"
    );
    assert_eq!(status["restarts"], 4);
    assert_eq!(status["last_exit"], json!({"code": 1}));
}

#[test]
fn restart_policies_and_success_exit_codes() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // burst 2: a unit that is restarted once ends `failed` at the start limit, so every unit
    // below reaches a final state and one status read tells what its policy did.
    let unit = |policy: &str, script: &str, extra: &str| {
        format!(
            "[exec]\ncommand = [\"sh\", \"-c\", \"{script}\"]\n[restart]\npolicy = \"{policy}\"\n\
             delay = \"50ms\"\nstart-limit-burst = 2\n{extra}"
        )
    };
    c.unit("never", &unit("never", "exit 1", ""));
    c.unit(
        "codes",
        &unit("on-failure", "exit 3", "success-exit-codes = [0, 3]"),
    );
    c.unit("failure-ok", &unit("on-failure", "exit 0", ""));
    c.unit("failure-bad", &unit("on-failure", "exit 1", ""));
    c.unit("abnormal-code", &unit("on-abnormal", "exit 1", ""));
    c.unit("abnormal-signal", &unit("on-abnormal", "kill -KILL $$", ""));
    c.unit("oom-code", &unit("on-oom", "exit 1", ""));
    c.unit("oom-kill", &unit("on-oom", "exec sleep 1000", ""));
    c.unit("always", &unit("always", "exit 0", ""));
    c.launch(&[]);

    c.wait_count("oom-kill running", 1, |l| {
        is_about(l, "oom-kill", "started")
    });
    c.ok(&["kill", "oom-kill", "--signal", "SIGKILL"]);

    let expect = [
        ("never", "failed", 0, json!({"code": 1})),
        ("codes", "exited", 0, json!({"code": 3})),
        ("failure-ok", "exited", 0, json!({"code": 0})),
        ("failure-bad", "failed", 1, json!({"code": 1})),
        ("abnormal-code", "failed", 0, json!({"code": 1})),
        ("abnormal-signal", "failed", 1, json!({"signal": "SIGKILL"})),
        ("oom-code", "failed", 0, json!({"code": 1})),
        ("oom-kill", "failed", 0, json!({"signal": "SIGKILL"})),
        ("always", "failed", 1, json!({"code": 0})),
    ];
    for (name, state, restarts, last_exit) in expect {
        let restarts: usize = restarts;
        c.wait_count(&format!("{name} to settle"), 1, |l| {
            is_about(l, name, "not restarting") || is_about(l, name, "start limit hit")
        });
        let status = c.status(name);
        assert_eq!(status["state"], state, "{name}: {status}");
        assert_eq!(status["restarts"], restarts, "{name}: {status}");
        assert_eq!(status["last_exit"], last_exit, "{name}: {status}");
        let started = c
            .seen
            .iter()
            .filter(|l| is_about(l, name, "started"))
            .count();
        assert_eq!(started, restarts + 1, "{name}: starts logged");
    }
}

#[test]
fn a_process_ignoring_sigterm_is_killed_at_the_stop_timeout() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "stubborn",
        r#"
        [exec]
        command = ["sh", "-c", "trap '' TERM; echo ready; exec sleep 1000"]
        [stop]
        timeout = "1s"
        "#,
    );
    c.launch(&[]);
    c.wait_log("stubborn ready", |l| {
        is_output(l, "stubborn") && msg(l) == "ready"
    });
    let pid = c.status("stubborn")["pid"].as_i64().unwrap();

    c.ok(&["stop", "stubborn"]);
    c.wait_count("the SIGKILL warning", 1, |l| {
        is_about(l, "stubborn", "did not stop within 1s")
    });
    let status = c.status("stubborn");
    assert_eq!(status["state"], "inactive", "{status}");
    assert_eq!(status["last_exit"], json!({"signal": "SIGKILL"}));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is still there"
    );
}

#[test]
fn a_double_forked_orphan_is_reaped() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // The subshell exits at once, so `sleep 0.3` is orphaned and reparented to corral.
    c.unit(
        "forker",
        r#"
        [exec]
        command = ["sh", "-c", "(sleep 0.3 & echo orphan $!); exec sleep 1000"]
        "#,
    );
    c.launch(&[]);
    let line = c.wait_log("the orphan's pid", |l| {
        is_output(l, "forker") && msg(l).starts_with("orphan ")
    });
    let orphan: i64 = msg(&line)["orphan ".len()..].parse().unwrap();
    c.wait_count("corral reaping the orphan", 1, |l| {
        reaped_pid(l) == Some(orphan)
    });
    assert!(
        !Path::new(&format!("/proc/{orphan}")).exists(),
        "orphan {orphan} is still in /proc (a zombie?)"
    );
    // The unit itself is untouched by its orphan's death.
    assert_eq!(c.status("forker")["state"], "running");
}

/// A child that exited before corral installed its SIGCHLD handler (a container's PID 1 often
/// inherits some: `sh -c 'job & exec corral run ...'`) raises no SIGCHLD corral sees: the
/// first sweep is due at start, and must come without waiting for some other wake. The only
/// unit is disabled, so nothing else wakes corral.
#[test]
fn a_zombie_inherited_at_start_is_reaped_with_nothing_else_to_wake_corral() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit("idle", "enabled = false\n[exec]\ncommand = [\"true\"]\n");
    // The grandchild's pid comes back on a pipe: corral may reap it before this test could
    // look for a zombie among its children, which is what is asked of it.
    let mut fds = [0; 2];
    // SAFETY: a plain pipe2 into a local array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let [read_end, write_end] = fds;
    let mut cmd = std::process::Command::new(common::BIN);
    // SAFETY: between fork and exec only async-signal-safe calls: fork, _exit, waitid, write.
    // The grandchild exits at once; waitid with WNOWAIT leaves it a zombie, which the exec
    // then hands to corral as its child. The pipe's write end closes at the exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let pid = libc::fork();
            if pid < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if pid == 0 {
                libc::_exit(0);
            }
            let mut info: libc::siginfo_t = std::mem::zeroed();
            if libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let bytes = pid.to_ne_bytes();
            if libc::write(write_end, bytes.as_ptr().cast(), bytes.len()) != bytes.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.launch_with(cmd, &[]);
    // SAFETY: the write end is ours to close; the read end is read once into a local array.
    let zombie = unsafe {
        libc::close(write_end);
        let mut bytes = [0u8; 4];
        assert_eq!(
            libc::read(read_end, bytes.as_mut_ptr().cast(), 4),
            4,
            "no pid came back"
        );
        libc::close(read_end);
        i32::from_ne_bytes(bytes)
    };
    c.wait_count("the inherited zombie reaped", 1, |l| {
        reaped_pid(l) == Some(i64::from(zombie))
    });
    assert!(
        !Path::new(&format!("/proc/{zombie}")).exists(),
        "{zombie} lingers"
    );
}

#[test]
fn two_hundred_orphans_exiting_at_once_leave_no_zombie() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let fifo = c.path("gate");
    // 200 orphaned `cat`s block on one FIFO; closing its only writer ends them all at once.
    let script = format!(
        "exec 3<>{f} 4<{f} 5>{f} 3>&-; i=0; \
         while [ $i -lt 200 ]; do (cat <&4 >/dev/null 5>&- &); i=$((i+1)); done; \
         echo released; exec 5>&- 4<&-; exec sleep 1000",
        f = fifo.display()
    );
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    c.unit(
        "herd",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", {}]\n",
            toml_str(&script)
        ),
    );
    c.launch(&[]);
    c.wait_log("the herd released", |l| {
        is_output(l, "herd") && msg(l) == "released"
    });
    let reaped = c.wait_count("200 reaps", 200, |l| reaped_pid(l).is_some());
    assert_eq!(reaped.len(), 200);

    let zombies: Vec<i32> = children_of(c.pid())
        .into_iter()
        .filter(|&p| proc_state(p) == Some('Z'))
        .collect();
    assert!(zombies.is_empty(), "zombie children of corral: {zombies:?}");
    for line in &reaped {
        let pid = reaped_pid(line).unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} lingers"
        );
    }
    assert_eq!(c.status("herd")["state"], "running");
}

#[test]
fn after_orders_a_service_behind_its_oneshot() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let marker = c.path("marker");
    // The oneshot takes a moment, so a service started too early would miss the marker.
    c.unit(
        "setup",
        &format!(
            "kind = \"oneshot\"\n[exec]\ncommand = [\"sh\", \"-c\", \"sleep 0.3; echo ok > {}\"]\n",
            marker.display()
        ),
    );
    c.unit(
        "app",
        &format!(
            "after = [\"setup\"]\n[exec]\ncommand = [\"sh\", \"-c\", \
             \"test -e {} || exit 9; echo saw marker; exec sleep 1000\"]\n\
             [restart]\npolicy = \"never\"\n",
            marker.display()
        ),
    );
    c.launch(&[]);
    c.wait_log("app seeing the marker", |l| {
        is_output(l, "app") && msg(l) == "saw marker"
    });
    assert_eq!(c.status("app")["state"], "running");
    assert_eq!(c.status("setup")["state"], "exited");

    let index = |pred: &dyn Fn(&Value) -> bool| c.seen.iter().position(pred).unwrap();
    let setup_started = index(&|l| is_about(l, "setup", "started"));
    let setup_done = index(&|l| is_about(l, "setup", "exited with code 0"));
    let app_started = index(&|l| is_about(l, "app", "started"));
    assert!(
        setup_started < setup_done && setup_done < app_started,
        "log order: setup started {setup_started}, done {setup_done}, app started {app_started}"
    );
}

#[test]
fn an_enabled_unit_pulls_up_the_disabled_unit_it_requires_at_boot() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "db",
        "enabled = false\n[exec]\ncommand = [\"sleep\", \"600\"]\n",
    );
    c.unit(
        "app",
        "requires = [\"db\"]\n[exec]\ncommand = [\"sleep\", \"600\"]\n",
    );
    c.launch(&[]);
    c.wait_log("app started", |l| is_about(l, "app", "started"));
    let index = |pred: &dyn Fn(&Value) -> bool| c.seen.iter().position(pred).unwrap();
    let db_started = index(&|l| is_about(l, "db", "started"));
    let app_started = index(&|l| is_about(l, "app", "started"));
    assert!(
        db_started < app_started,
        "db first: {db_started} < {app_started}"
    );
    let db = c.status("db");
    assert_eq!(
        (&db["state"], &db["enabled"]),
        (&json!("running"), &json!(false))
    );
    assert_eq!(c.status("app")["state"], "running");

    // A user's stop of db takes app down too, and both stay down.
    c.ok(&["stop", "db"]);
    for unit in ["db", "app"] {
        assert_eq!(c.status(unit)["state"], "inactive", "{unit}");
    }
    let table = c.ok(&["status"]).stdout;
    let app_row = table.lines().find(|l| l.starts_with("app ")).unwrap();
    assert!(app_row.ends_with("stopped"), "{table}");
    // Starting app again brings db back first.
    c.ok(&["start", "app"]);
    assert_eq!(c.status("db")["state"], "running");
}

#[test]
fn a_unit_waiting_for_its_requirement_says_so_in_status() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // db never sends READY=1 (within the default start-timeout of 90s), so it stays starting.
    c.unit(
        "db",
        "enabled = false\n[exec]\ncommand = [\"sleep\", \"600\"]\nready = \"notify\"\n",
    );
    c.unit(
        "app",
        "requires = [\"db\"]\n[exec]\ncommand = [\"sleep\", \"600\"]\n",
    );
    c.launch(&[]);
    c.wait_exec("db", 1);
    let app = c.status("app");
    assert_eq!(app["state"], "inactive");
    assert_eq!(
        app["waiting_for"],
        json!([{"unit": "db", "state": "starting"}])
    );
    let table = c.ok(&["status"]).stdout;
    let app_row = table.lines().find(|l| l.starts_with("app ")).unwrap();
    assert!(app_row.ends_with("waiting for db (starting)"), "{table}");
    let details = c.cli(&["status", "app"]);
    assert_eq!(details.code, 3, "app is not running: {details:?}");
    assert!(
        details.stdout.contains("waiting   for db (starting)"),
        "{details:?}"
    );
    assert_eq!(c.status("db")["waiting_for"], json!([]));
}

#[test]
fn a_unit_gets_clean_signals_only_stdio_and_a_minimal_environment() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "plain",
        r#"
        [exec]
        command = ["sleep", "1000"]
        env = { GREETING = "hello" }
        "#,
    );
    c.launch(&[]);
    let pid = c.wait_exec("plain", 1);

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for key in ["SigBlk:", "SigIgn:"] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);

    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut keys: Vec<String> = environ
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split('=')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["GREETING", "HOME", "LOGNAME", "PATH", "USER"]);
    assert!(environ.windows(14).any(|w| w == b"GREETING=hello"));
}

/// VmHWM (peak resident set) of `pid`, in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn twenty_megabytes_without_a_newline_keep_corral_bounded() {
    if !require_root() {
        return;
    }
    const BYTES: usize = 20_000_000;
    let mut c = Corral::new();
    c.unit(
        "firehose",
        &format!(
            "kind = \"oneshot\"\n[exec]\ncommand = [\"sh\", \"-c\", {}]\n",
            toml_str(&format!(r"head -c {BYTES} /dev/zero | tr '\0' x"))
        ),
    );
    c.launch(&[]);
    c.wait_count("firehose to exit", 1, |l| {
        is_about(l, "firehose", "exited with code 0")
    });
    // Every byte arrives as bounded pieces; the last piece ends the output.
    let mut total = 0;
    let mut pieces = 0;
    while total < BYTES {
        let line = c.wait_log("the rest of the output", |l| is_output(l, "firehose"));
        let text = msg(&line);
        assert!(text.bytes().all(|b| b == b'x'), "unexpected output");
        total += text.len();
        pieces += 1;
    }
    assert_eq!(total, BYTES);
    assert!(pieces > 1, "a 20 MB line must be split");
    assert_eq!(c.status("firehose")["state"], "exited");
    let peak = peak_rss(c.pid());
    assert!(peak < 64 << 20, "corral's peak RSS is {} MiB", peak >> 20);
}

#[test]
fn a_child_that_cannot_reach_its_exec_fails_the_start_with_the_reason() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // The working directory is checked by the child, after the fork: its failure arrives
    // after corral has moved on, and still makes the unit `failed`, not a crash to restart.
    c.unit(
        "lost",
        "[exec]\ncommand = [\"sleep\", \"1000\"]\nworking-dir = \"/no/such/corral/dir\"\n",
    );
    c.unit("fine", "[exec]\ncommand = [\"sleep\", \"1000\"]\n");
    c.launch(&[]);
    c.wait_log("the failed start", |l| {
        is_about(l, "lost", "cannot be spawned")
    });
    let status = c.status("lost");
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("chdir to working-dir") && error.contains("ENOENT"),
        "{error}"
    );
    assert_eq!(status["restarts"], 0, "{status}");
    assert_eq!(c.status("fine")["state"], "running");
}

#[test]
fn env_files_are_read_at_each_start_and_their_values_stay_out_of_status_and_logs() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    let env = c.path("app.env");
    let local = c.path("app.env.local");
    std::fs::write(
        &env,
        "# the app's settings\nGREETING=\"hello there\"\nPORT=8080\nTOKEN='s3cr3t-value'\n",
    )
    .unwrap();
    c.unit(
        "app",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", \"echo env: $GREETING/$PORT/$TOKEN/$EXTRA; exec sleep 1000\"]\n\
             env-file = [{}, {}]\nenv = {{ PORT = \"9090\" }}\n",
            toml_str(env.to_str().unwrap()),
            toml_str(&format!("-{}", local.display())),
        ),
    );
    c.launch(&[]);
    // The optional file is missing: no error; `env` overrides the file's PORT.
    let line = c.wait_log("app's env line", |l| {
        is_output(l, "app") && msg(l).starts_with("env: ")
    });
    assert_eq!(msg(&line), "env: hello there/9090/s3cr3t-value/", "{line}");

    // Files are read at each start: a restart sees the optional file now present.
    std::fs::write(&local, "EXTRA=local\n").unwrap();
    c.ok(&["restart", "app"]);
    let line = c.wait_log("app's second env line", |l| {
        is_output(l, "app") && msg(l).ends_with("/local")
    });
    assert_eq!(msg(&line), "env: hello there/9090/s3cr3t-value/local");

    // What an operator sees of the unit never holds a value from the file.
    for args in [
        &["status"][..],
        &["status", "app"],
        &["status", "app", "--json"],
    ] {
        let out = c.ok(args);
        assert!(
            !out.stdout.contains("s3cr3t") && !out.stderr.contains("s3cr3t"),
            "corral {args:?} shows the secret: {out:?}"
        );
    }
    // A required file gone: the next start fails, naming the file.
    std::fs::remove_file(&env).unwrap();
    c.ok(&["stop", "app"]);
    let out = c.cli(&["start", "app"]);
    assert_ne!(out.code, 0, "{out:?}");
    let status = c.status("app");
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("env-file {}", env.display())) && error.contains("No such file"),
        "{status}"
    );
    let table = c.cli(&["status"]);
    assert!(
        table
            .stdout
            .contains(&format!("env-file {}", env.display())),
        "{table:?}"
    );
    c.wait_log("the failed start's log line", |l| {
        is_about(l, "app", "env-file")
    });
    // corral's own log lines (the unit's output is the unit's to print) never hold a value.
    let leaks = c.wait_count("log lines of corral's with the secret", 0, |l| {
        !is_output(l, "app") && l.to_string().contains("s3cr3t")
    });
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[test]
fn instances_of_a_template_run_with_their_instance_name() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "echo@",
        "description = \"echo %i\"\n[exec]\ncommand = [\"sh\", \"-c\", \"echo I am %i of %n at 100%%; exec sleep 1000\"]\nenv = { WHO = \"%i\" }\n",
    );
    for n in ["a", "b"] {
        std::os::unix::fs::symlink("echo@.toml", c.units.join(format!("echo@{n}.toml"))).unwrap();
    }
    c.launch(&[]);
    for n in ["a", "b"] {
        let unit = format!("echo@{n}");
        // Either instance may print first: search the whole log, not on from the last match.
        let line =
            c.wait_count(&format!("{unit}'s greeting"), 1, |l| is_output(l, &unit))[0].clone();
        assert_eq!(
            msg(&line),
            format!("I am {n} of echo@{n} at 100%"),
            "{line}"
        );
        let status = c.status(&unit);
        assert_eq!(status["state"], "running", "{status}");
        let pid = status["pid"].as_i64().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|kv| kv == format!("WHO={n}").as_bytes()),
            "{unit}: {}",
            String::from_utf8_lossy(&environ)
        );
    }
    // The template itself is no unit.
    let all = c.ok(&["status", "--json"]).json();
    let names: Vec<&str> = all["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo@a", "echo@b"]);
}

/// A confused deputy: corral reads a unit's env-file as root, following symlinks, as
/// systemd's manager does; so a unit whose user can replace its env-file (it sits in the user's
/// own directory) would read through corral any root-only file of `KEY=VALUE` lines, another
/// unit's secrets for one. Such a path is read only if the unit's user may read what it names;
/// a root-only secret on a path only root controls is still read for the unit (the point of
/// env-files).
#[test]
fn a_unit_cannot_read_a_root_only_file_through_an_env_file_it_can_swap() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // Another unit's secrets: root's alone.
    let secret = c.root().join("other-unit.env");
    std::fs::write(&secret, "DB_PASSWORD=hunter2\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The unit's own directory, where its env-file is; nobody, the unit's user, has swapped
    // the file for a symlink to the secrets.
    let home = c.root().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let env = home.join("app.env");
    std::os::unix::fs::symlink(&secret, &env).unwrap();
    std::os::unix::fs::lchown(&env, Some(65534), Some(65534)).unwrap();
    c.unit(
        "thief",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", \"echo got=$DB_PASSWORD; exec sleep 600\"]\n\
             user = \"nobody\"\nenv-file = {}\n[restart]\npolicy = \"never\"\n",
            toml_str(env.to_str().unwrap())
        ),
    );
    // The same user's unit whose env-file is root's, in a directory only root can write.
    let secrets = c.root().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let own = secrets.join("app.env");
    std::fs::write(&own, "DB_PASSWORD=its-own\n").unwrap();
    std::fs::set_permissions(&own, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    c.unit(
        "owner",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", \"echo got=$DB_PASSWORD; exec sleep 600\"]\n\
             user = \"nobody\"\nenv-file = {}\n[restart]\npolicy = \"never\"\n",
            toml_str(own.to_str().unwrap())
        ),
    );
    c.launch(&[]);
    let outcome = c.wait_count("the thief's start or its refusal", 1, |l| {
        (is_output(l, "thief") && msg(l).starts_with("got=")) || is_about(l, "thief", "env-file")
    });
    assert_ne!(
        msg(&outcome[0]),
        "got=hunter2",
        "the unit read a root-only file"
    );
    let status = c.status("thief");
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or("");
    assert!(
        error.contains(env.to_str().unwrap()) && error.contains("owned by uid 65534"),
        "the refusal names the path and why: {status}"
    );
    let owner = c.wait_count("the owner's secret", 1, |l| {
        is_output(l, "owner") && msg(l).starts_with("got=")
    });
    assert_eq!(msg(&owner[0]), "got=its-own");
}

/// A unit's main process names one of its children with `MAINPID=`, then reaps that child
/// itself and goes on: no waitpid of corral's ever sees that main process end.
const DEAD_MAIN: &str = r#"
import os, socket, subprocess
child = subprocess.Popen(["sleep", "0.2"])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(f"READY=1\nMAINPID={child.pid}".encode(), os.environ["NOTIFY_SOCKET"])
child.wait()
print(f"reaped={child.pid}", flush=True)
os.execvp("sleep", ["sleep", "600"])
"#;

/// Without a pidfd corral would show `running` with a pid that no longer exists (which the
/// kernel may give any process next: exec probes enter the namespaces of /proc/PID), the
/// restart policy would never see the end of the main process, and `stop` would never answer.
/// corral holds a pidfd of a main process named by MAINPID= (os/pidfd.rs): its end is seen, with
/// no status, as systemd reports it.
#[test]
fn a_main_process_named_by_mainpid_and_reaped_by_the_unit_is_seen_to_exit() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "liar",
        &format!(
            "[exec]\ncommand = [\"python3\", \"-c\", {}]\nuser = \"nobody\"\nready = \"notify\"\n\
             [restart]\npolicy = \"never\"\n[stop]\ntimeout = \"1s\"\n",
            toml_str(DEAD_MAIN)
        ),
    );
    c.launch(&[]);
    let named = c.wait_count("the named main process", 1, |l| {
        is_about(l, "liar", "main process is now pid")
    });
    let gone: i32 = msg(&named[0])
        .trim_start_matches("main process is now pid ")
        .trim_end_matches(" (MAINPID=)")
        .parse()
        .unwrap();
    // Its pidfd is readable once it exited, a zombie of its parent in the unit.
    c.wait_count("the end of the named main process", 1, |l| {
        is_about(l, "liar", "status unknown")
    });
    let status = c.status("liar");
    assert_ne!(
        status["pid"].as_i64(),
        Some(i64::from(gone)),
        "corral shows a main process that is gone: {status}"
    );
    // Not known to be a clean exit: with policy never, the unit failed, and says why.
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(
        status["last_exit"],
        json!({"status_unknown": true}),
        "{status}"
    );
    assert_eq!(status["last_exit_status"], 255, "{status}");
    assert!(
        c.cli(&["status", "liar"]).stdout.contains("status unknown"),
        "the text status says how the run ended"
    );
    // And `stop` answers (bounded by the harness): the unit's leftovers were killed.
    c.ok(&["stop", "liar"]);
}
