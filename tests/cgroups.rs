//! Black-box cgroup tests on the real kernel (cgroup v1 here): limits, membership, kill, freeze.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Mutex;
use std::time::Instant;

use common::{
    Corral, DEADLINE, is_about, is_output, msg, require_cgroup_v1, shell, sleeper, toml_str,
    wait_pid_exit,
};
use serde_json::{Value, json};

/// The controllers corral manages on v1; a unit joins each hierarchy before exec.
const V1_HIERARCHIES: [&str; 7] = [
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "freezer",
];

/// Tests that measure CPU time take turns, so they do not compete with each other for the
/// machine's cores.
static CPU_MEASURE: Mutex<()> = Mutex::new(());

/// Prints a line every 0.5 s: its lines are the clock of a measuring window.
const TICKER: &str = r#"
[exec]
command = ["sh", "-c", "while :; do echo tick; sleep 0.5; done"]
"#;

/// A unit spinning one CPU.
const SPIN: &str = r#"["sh", "-c", "echo spinning; while :; do :; done"]"#;

/// The unit's output lines so far, as text.
fn output(c: &Corral, unit: &str) -> Vec<String> {
    c.seen
        .iter()
        .filter(|l| is_output(l, unit))
        .map(|l| msg(l).to_owned())
        .collect()
}

/// The first number after `label ` in the unit's output (`label 1234`).
fn printed_pid(c: &Corral, unit: &str, label: &str) -> i32 {
    output(c, unit)
        .iter()
        .find_map(|t| t.strip_prefix(&format!("{label} "))?.parse().ok())
        .unwrap_or_else(|| panic!("{unit} printed no `{label} PID` line"))
}

/// Waits for corral's log line saying it removed the unit's cgroup `rel`.
fn wait_removed(c: &mut Corral, rel: &str) {
    let shown = format!("{}/{rel}", c.cgroup_root);
    c.wait_count(&format!("removal of {shown}"), 1, |l| {
        msg(l) == "removed" && l["fields"]["cgroup"] == shown.as_str()
    });
}

/// The pids of a cgroup (`cgroup.procs` of one hierarchy), sorted.
fn procs(c: &Corral, hierarchy: &str, rel: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = c
        .cgroup_read(hierarchy, &format!("{rel}/cgroup.procs"))
        .lines()
        .map(|p| p.parse().unwrap())
        .collect();
    pids.sort_unstable();
    pids
}

/// (process group, session) of `pid`, from /proc/PID/stat.
fn group_and_session(pid: i32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command sits in parentheses and may hold spaces; the fields after it are fixed.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// CPU time used by cgroup `rel` per second of wall time, over the window in which `ticker`
/// prints `ticks` more lines: a relative figure, so a slow machine changes the window, not the
/// ratio.
fn cpu_share(c: &mut Corral, rel: &str, ticker: &str, ticks: usize) -> f64 {
    let usage_ns = |c: &Corral| -> u64 {
        c.cgroup_read("cpuacct", &format!("{rel}/cpuacct.usage"))
            .parse()
            .unwrap()
    };
    let seen = c.seen.iter().filter(|l| is_output(l, ticker)).count();
    let (cpu0, t0) = (usage_ns(c), Instant::now());
    c.wait_count("ticks", seen + ticks, |l| is_output(l, ticker));
    let (cpu1, t1) = (usage_ns(c), Instant::now());
    (cpu1 - cpu0) as f64 / (t1 - t0).as_nanos() as f64
}

/// A disk (not a partition) as "MAJ:MIN", read from /sys/block; a real disk before loop and
/// zram devices.
fn block_device() -> Option<String> {
    let mut disks: Vec<(bool, String, String)> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let virtual_disk = ["loop", "zram", "ram"].iter().any(|p| name.starts_with(p));
            Some((virtual_disk, name, dev.trim().to_owned()))
        })
        .collect();
    disks.sort();
    disks.into_iter().next().map(|(_, _, dev)| dev)
}

/// Shell code that really allocates (and touches) about 200 MiB of anonymous memory in the
/// process running it.
fn allocate_200m() -> &'static str {
    let python = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("python3").is_file()));
    if python {
        r#"exec python3 -c "x = b'a' * (200 << 20)""#
    } else {
        // The shell keeps the whole substitution in its own heap.
        r#"x=$(head -c 209715200 /dev/zero | tr '\0' a)"#
    }
}

#[test]
fn every_resource_key_lands_in_its_v1_file_for_a_service_and_its_slice() {
    if !require_cgroup_v1() {
        return;
    }
    let dev = block_device().expect("a block device in /sys/block");
    let mut c = Corral::new();
    let io = |read_bps: &str| {
        format!(
            "[[resources.io]]\ndevice = \"{dev}\"\nread-bps = \"{read_bps}\"\n\
             write-bps = \"50M\"\nread-iops = 2000\nwrite-iops = 1000\n"
        )
    };
    c.unit(
        "lim",
        &format!(
            r#"
            kind = "slice"
            [resources]
            cpu-quota = "150%"
            cpu-quota-period = "50ms"
            cpu-weight = 200
            allowed-cpus = "0"
            memory-max = "512M"
            memory-high = "400M"
            memory-swap-max = "64M"
            pids-max = 64
            io-weight = 100
            {}"#,
            io("100M")
        ),
    );
    c.unit(
        "web",
        &format!(
            r#"
            slice = "lim"
            [exec]
            command = ["sleep", "1000"]
            [resources]
            cpu-quota = "50%"
            cpu-quota-period = "20ms"
            cpu-weight = 50
            allowed-cpus = "0"
            memory-max = "64M"
            memory-high = "48M"
            memory-swap-max = "16M"
            pids-max = 32
            io-weight = 500
            {}"#,
            io("10M")
        ),
    );
    let plain = format!("{}[resources]\nmemory-max = \"64M\"\n", sleeper("1000"));
    c.unit("plain", &plain);
    // Limits of its own that all take, below a slice whose limits may not.
    c.unit("inner", &format!("slice = \"lim\"\n{plain}"));
    c.launch(&[]);
    c.wait_count("web and inner started", 2, |l| {
        is_about(l, "web", "started") || is_about(l, "inner", "started")
    });

    let mib = |n: u64| (n << 20).to_string();
    let expected = |period: &str, quota: &str, shares: &str, max, high, pids: &str, rbps| {
        vec![
            ("cpu", "cpu.cfs_period_us", period.to_owned()),
            ("cpu", "cpu.cfs_quota_us", quota.to_owned()),
            ("cpu", "cpu.shares", shares.to_owned()),
            ("cpuset", "cpuset.cpus", "0".to_owned()),
            ("memory", "memory.limit_in_bytes", mib(max)),
            ("memory", "memory.soft_limit_in_bytes", mib(high)),
            ("pids", "pids.max", pids.to_owned()),
            (
                "blkio",
                "blkio.throttle.read_bps_device",
                format!("{dev} {}", mib(rbps)),
            ),
            (
                "blkio",
                "blkio.throttle.write_bps_device",
                format!("{dev} {}", mib(50)),
            ),
            (
                "blkio",
                "blkio.throttle.read_iops_device",
                format!("{dev} 2000"),
            ),
            (
                "blkio",
                "blkio.throttle.write_iops_device",
                format!("{dev} 1000"),
            ),
        ]
    };
    // Files this kernel may lack (then status must name the key that did not take):
    // (hierarchy, file, value, key).
    let optional = |memsw, blkio_weight: &str| {
        vec![
            (
                "memory",
                "memory.memsw.limit_in_bytes",
                mib(memsw),
                "memory-swap-max",
            ),
            (
                "blkio",
                "blkio.weight",
                blkio_weight.to_owned(),
                "io-weight",
            ),
        ]
    };
    let cases = [
        (
            "lim",
            "lim.slice",
            expected("50000", "75000", "2048", 512, 400, "64", 100),
            // memsw = max + swap; io-weight 1..10000 scaled onto 10..1000.
            optional(512 + 64, "19"),
        ),
        (
            "web",
            "lim.slice/web.service",
            expected("20000", "10000", "512", 64, 48, "32", 10),
            optional(64 + 16, "59"),
        ),
    ];
    let mut slice_missing = Vec::new();
    for (unit, rel, files, optional) in cases {
        let read = |h: &str, file: &str| c.cgroup_read(h, &format!("{rel}/{file}"));
        for (hierarchy, file, value) in files {
            assert_eq!(read(hierarchy, file), value, "{rel}/{file}");
        }
        assert!(!read("cpuset", "cpuset.mems").is_empty(), "{rel}: mems");
        let mut missing = Vec::new();
        for (hierarchy, file, value, key) in optional {
            if c.cgroup_file(hierarchy, &format!("{rel}/{file}")).exists() {
                assert_eq!(read(hierarchy, file), value, "{rel}/{file}");
            } else {
                missing.push(key);
            }
        }
        let status = c.status(unit);
        assert_eq!(
            status["cgroup"],
            format!("{}/{rel}", c.cgroup_root),
            "{status}"
        );
        assert_eq!(status["limits_enforced"], missing.is_empty(), "{status}");
        let reason = status["limits_reason"].as_str().unwrap_or("");
        for key in &missing {
            assert!(reason.contains(key), "{key} not named: {status}");
        }
        if unit == "lim" {
            slice_missing = missing;
        }
    }
    // What did not take on the slice leaves the units in it short of their limits too.
    let inner = c.status("inner");
    assert_eq!(
        c.cgroup_read("memory", "lim.slice/inner.service/memory.limit_in_bytes"),
        mib(64)
    );
    assert_eq!(
        inner["limits_enforced"],
        slice_missing.is_empty(),
        "{inner}"
    );
    let reason = inner["limits_reason"].as_str().unwrap_or("");
    for key in &slice_missing {
        assert!(
            reason.contains(&format!("slice lim: {key}")),
            "{key} not named: {inner}"
        );
    }

    let web = c.status("web");
    assert_eq!(web["state"], "running", "{web}");
    for field in [
        "memory_current",
        "memory_peak",
        "cpu_usage_usec",
        "cpu_throttled_usec",
        "nr_throttled",
        "pids_current",
    ] {
        assert!(web["usage"][field].is_u64(), "usage.{field}: {web}");
    }
    assert_eq!(web["usage"]["pids_current"], 1, "{web}");

    let plain = c.status("plain");
    assert_eq!(
        plain["cgroup"],
        format!("{}/plain.service", c.cgroup_root),
        "{plain}"
    );
    assert_eq!(plain["limits_enforced"], true, "{plain}");
    assert_eq!(plain["limits_reason"], Value::Null, "{plain}");
    assert_eq!(
        c.cgroup_read("memory", "plain.service/memory.limit_in_bytes"),
        mib(64)
    );
}

#[test]
fn a_units_first_instruction_already_runs_in_its_cgroup() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("apps", "kind = \"slice\"\n");
    c.unit(
        "probe",
        "kind = \"oneshot\"\nslice = \"apps\"\n[exec]\ncommand = [\"cat\", \"/proc/self/cgroup\"]\n",
    );
    c.launch(&[]);
    c.wait_log("probe to finish", |l| {
        is_about(l, "probe", "not restarting")
    });
    // `cat` was exec'd directly, so what it read is where the process was when it began.
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid())).unwrap();
    let lines = c.wait_count("probe's output", own.lines().count(), |l| {
        is_output(l, "probe")
    });
    let want = format!("{}/apps.slice/probe.service", c.cgroup_root);
    for hierarchy in V1_HIERARCHIES {
        let find = |text: &str| -> Option<String> {
            text.lines().find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                controllers
                    .split(',')
                    .any(|c| c == hierarchy)
                    .then(|| path.to_owned())
            })
        };
        let text: Vec<&str> = lines.iter().map(msg).collect();
        let unit_path = find(&text.join("\n"))
            .unwrap_or_else(|| panic!("no {hierarchy} line in the probe's output: {text:?}"));
        assert_eq!(unit_path, want, "{hierarchy}: {text:?}");
        assert_ne!(find(&own), Some(want.clone()), "corral itself is not in it");
    }
    assert_eq!(c.status("probe")["state"], "exited");
}

#[test]
fn pids_max_contains_a_fork_bomb_while_corral_and_other_units_stay_responsive() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // The classic bomb; bash retries a refused fork (logging "fork: retry"), so it keeps
    // pressing on the limit instead of dying out.
    c.unit(
        "bomb",
        r#"
        [exec]
        command = ["bash", "-c", "f() { f | f & }; f; echo armed; exec sleep 1000"]
        [resources]
        pids-max = 20
        [stop]
        timeout = "3s"
        "#,
    );
    c.unit(
        "calm",
        "[exec]\ncommand = [\"sh\", \"-c\", \"echo calm here; exec sleep 1000\"]\n",
    );
    c.launch(&[]);
    c.wait_log("the bomb", |l| is_output(l, "bomb") && msg(l) == "armed");
    let rel = "bomb.service";
    let refused = |c: &Corral| -> u64 {
        let events = c.cgroup_read("pids", &format!("{rel}/pids.events"));
        events.strip_prefix("max ").unwrap().parse().unwrap()
    };
    // Three rounds while the bomb keeps pressing on the limit (bash retries a refused fork after
    // 1, 2, 4... s): each waits for more refusals, then corral and the other unit must answer.
    let mut counts = Vec::new();
    for round in 1..=3 {
        c.wait_count("refused forks", 10 * round, |l| {
            is_output(l, "bomb") && msg(l).contains("fork: retry")
        });
        let current: u64 = c
            .cgroup_read("pids", &format!("{rel}/pids.current"))
            .parse()
            .unwrap();
        assert!(current <= 20, "pids.current {current}");
        counts.push(refused(&c));
        let calm = c.status("calm");
        assert_eq!(calm["state"], "running", "{calm}");
        let logs = c.ok(&["logs", "calm", "-n", "5"]);
        assert!(logs.stdout.contains("calm here"), "{logs:?}");
    }
    assert!(counts[0] > 0, "the kernel refused no fork");
    assert!(
        counts[2] > counts[0],
        "the bomb stopped pressing: {counts:?}"
    );
    // The high-water mark, where the kernel keeps one: the limit held all along.
    if c.cgroup_file("pids", &format!("{rel}/pids.peak")).exists() {
        let peak: u64 = c
            .cgroup_read("pids", &format!("{rel}/pids.peak"))
            .parse()
            .unwrap();
        assert!(peak <= 20, "pids.peak {peak}");
    }

    c.ok(&["stop", "bomb"]);
    assert_eq!(c.status("bomb")["state"], "inactive");
    wait_removed(&mut c, rel);
    assert!(!c.cgroup_exists(rel), "the bomb's cgroup is left");
    assert_eq!(c.status("calm")["state"], "running");
}

#[test]
fn cpu_quota_of_half_a_cpu_throttles_a_busy_loop() {
    if !require_cgroup_v1() {
        return;
    }
    let _turn = CPU_MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Corral::new();
    c.unit("ticker", TICKER);
    c.unit(
        "hog",
        &format!("[exec]\ncommand = {SPIN}\n[resources]\ncpu-quota = \"50%\"\n"),
    );
    c.launch(&[]);
    c.wait_log("hog spinning", |l| is_output(l, "hog"));
    c.wait_log("a tick", |l| is_output(l, "ticker"));

    let rel = "hog.service";
    let throttled = |c: &Corral| -> u64 {
        let stat = c.cgroup_read("cpu", &format!("{rel}/cpu.stat"));
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled ")?.parse().ok())
            .unwrap()
    };
    let before = throttled(&c);
    let share = cpu_share(&mut c, rel, "ticker", 6);
    let after = throttled(&c);
    // The quota is a cap, not a floor: on a loaded machine the hog gets less than its half,
    // never more (plus one period's slack).
    assert!(
        share <= 0.7,
        "CPU time per wall second {share:.2}, capped at 0.5"
    );
    assert!(
        after > before,
        "nr_throttled did not grow: {before} -> {after}"
    );

    let usage = &c.status("hog")["usage"];
    assert!(usage["nr_throttled"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["cpu_throttled_usec"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["cpu_usage_usec"].as_u64().unwrap() > 0, "{usage}");
}

#[test]
fn memory_max_caps_usage_with_oom_kills_that_status_reports_and_a_plain_sigkill_does_not() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let alloc = allocate_200m();
    let limited = |script: &str| {
        format!(
            "[exec]\ncommand = [\"sh\", \"-c\", {}]\n[resources]\nmemory-max = \"32M\"\n\
             [restart]\npolicy = \"never\"\n",
            toml_str(script)
        )
    };
    // The main process itself allocates...
    c.unit("hungry", &limited(&format!("{alloc}; echo survived")));
    // ...or a child does, and the main process lives on, keeping the cgroup to look at.
    c.unit(
        "greedy",
        &limited(&format!("({alloc}); echo allocator gone; exec sleep 1000")),
    );
    c.unit(
        "victim",
        &format!("{}[restart]\npolicy = \"never\"\n", sleeper("1000")),
    );
    c.launch(&[]);

    c.wait_log("hungry to end", |l| is_about(l, "hungry", "not restarting"));
    let status = c.status("hungry");
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(
        status["last_exit"],
        json!({"signal": "SIGKILL", "oom": true}),
        "{status}"
    );
    assert!(status["oom_kills"].as_u64().unwrap() >= 1, "{status}");
    assert!(!output(&c, "hungry").contains(&"survived".to_owned()));

    c.wait_log("the OOM kill in greedy", |l| {
        is_about(l, "greedy", "OOM kill of a process of the unit")
    });
    assert!(output(&c, "greedy").contains(&"allocator gone".to_owned()));
    let limit = 32u64 << 20;
    let read = |file: &str| -> u64 {
        c.cgroup_read("memory", &format!("greedy.service/{file}"))
            .parse()
            .unwrap()
    };
    let peak = read("memory.max_usage_in_bytes");
    assert!(peak <= limit, "peak {peak} above memory-max {limit}");
    assert!(
        peak > limit / 2,
        "peak {peak}: it never came near the limit"
    );
    assert!(
        read("memory.failcnt") > 0,
        "the limit never refused a charge"
    );
    let status = c.status("greedy");
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["oom_kills"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["usage"]["memory_peak"], peak, "{status}");

    c.wait_count("victim started", 1, |l| is_about(l, "victim", "started"));
    c.ok(&["kill", "victim", "--signal", "SIGKILL"]);
    c.wait_log("victim to end", |l| is_about(l, "victim", "not restarting"));
    let status = c.status("victim");
    assert_eq!(
        status["last_exit"],
        json!({"signal": "SIGKILL"}),
        "{status}"
    );
    assert_eq!(status["oom_kills"], 0, "{status}");
}

#[test]
fn kill_and_stop_reach_a_setsid_escapee_and_stop_removes_the_cgroup() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // Two escapees in sessions of their own, each announcing itself after setsid(2): `first`
    // dies of SIGUSR1, `second` and the main process ignore it.
    let script = "setsid sh -c 'echo first $$; exec sleep 1000' & \
                  setsid sh -c 'trap \"\" USR1; echo second $$; exec sleep 1000' & \
                  trap '' USR1; echo ready; exec sleep 1000";
    c.unit("esc", &shell(script));
    c.launch(&[]);
    c.wait_count("esc and its escapees ready", 3, |l| {
        is_output(l, "esc")
            && ["first ", "second ", "ready"]
                .iter()
                .any(|p| msg(l).starts_with(p))
    });
    let main = c.status("esc")["pid"].as_i64().unwrap() as i32;
    let (first, second) = (
        printed_pid(&c, "esc", "first"),
        printed_pid(&c, "esc", "second"),
    );
    let rel = "esc.service";
    for pid in [first, second] {
        let (group, session) = group_and_session(pid);
        assert_ne!(group, main, "{pid} is still in the unit's process group");
        assert_eq!(session, pid, "{pid} leads a session of its own");
    }
    assert_eq!(procs(&c, "pids", rel), {
        let mut all = vec![main, first, second];
        all.sort_unstable();
        all
    });

    c.ok(&["kill", "esc", "--signal", "SIGUSR1"]);
    assert!(
        wait_pid_exit(first, DEADLINE),
        "kill did not reach the escapee"
    );
    assert_eq!(c.status("esc")["state"], "running");

    c.ok(&["stop", "esc"]);
    assert!(
        wait_pid_exit(second, DEADLINE),
        "stop left the escapee running"
    );
    assert_eq!(c.status("esc")["state"], "inactive");
    wait_removed(&mut c, rel);
    assert!(!c.cgroup_exists(rel), "the unit's cgroup is left");
}

#[test]
fn freeze_stops_cpu_use_thaw_resumes_it_and_a_frozen_unit_can_be_stopped() {
    if !require_cgroup_v1() {
        return;
    }
    let _turn = CPU_MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Corral::new();
    c.unit("ticker", TICKER);
    c.unit("spin", &format!("[exec]\ncommand = {SPIN}\n"));
    c.launch(&[]);
    c.wait_log("spin spinning", |l| is_output(l, "spin"));
    c.wait_log("a tick", |l| is_output(l, "ticker"));
    let rel = "spin.service";
    let state = |c: &Corral| c.cgroup_read("freezer", &format!("{rel}/freezer.state"));

    let running = cpu_share(&mut c, rel, "ticker", 4);
    assert!(running > 0.2, "the loop hardly ran: {running:.2}");

    c.ok(&["freeze", "spin"]);
    assert_eq!(state(&c), "FROZEN");
    assert_eq!(c.status("spin")["frozen"], true);
    let frozen = cpu_share(&mut c, rel, "ticker", 4);
    assert!(frozen < 0.02, "a frozen unit used {frozen:.3} CPU");

    c.ok(&["thaw", "spin"]);
    assert_eq!(state(&c), "THAWED");
    assert_eq!(c.status("spin")["frozen"], false);
    let thawed = cpu_share(&mut c, rel, "ticker", 4);
    assert!(thawed > 0.2, "the thawed loop hardly ran: {thawed:.2}");

    c.ok(&["freeze", "spin"]);
    c.ok(&["stop", "spin"]);
    assert_eq!(c.status("spin")["state"], "inactive");
    wait_removed(&mut c, rel);
    assert!(!c.cgroup_exists(rel));
}

#[test]
fn restarts_never_overlap_generations_and_shutdown_leaves_no_cgroup() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let mark = c.path("crashed-once");
    // Each generation leaves a child; the first one then crashes.
    let script = format!(
        "sleep 1000 & if [ -e {mark} ]; then echo second $$ $!; exec sleep 1000; fi; \
         touch {mark}; echo first $$ $!; exit 1",
        mark = mark.display()
    );
    c.unit("s", "kind = \"slice\"\n[resources]\npids-max = 100\n");
    c.unit(
        "gen",
        &format!(
            "slice = \"s\"\n[exec]\ncommand = [\"sh\", \"-c\", {}]\n[restart]\ndelay = \"100ms\"\n",
            toml_str(&script)
        ),
    );
    c.launch(&[]);
    c.wait_log("the second generation", |l| {
        is_output(l, "gen") && msg(l).starts_with("second ")
    });
    let pair = |label: &str| -> Vec<i32> {
        let line = output(&c, "gen")
            .into_iter()
            .find(|l| l.starts_with(label))
            .unwrap();
        let mut pids: Vec<i32> = line
            .split(' ')
            .skip(1)
            .map(|p| p.parse().unwrap())
            .collect();
        pids.sort_unstable();
        pids
    };
    let (old, new) = (pair("first "), pair("second "));
    for pid in &old {
        assert!(
            wait_pid_exit(*pid, DEADLINE),
            "first generation's {pid} lives on"
        );
    }
    let rel = "s.slice/gen.service";
    for hierarchy in V1_HIERARCHIES {
        assert_eq!(
            procs(&c, hierarchy, rel),
            new,
            "{hierarchy}: only the new generation"
        );
    }
    assert_eq!(c.status("gen")["restarts"], 1);

    c.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0));
    for pid in &new {
        assert!(wait_pid_exit(*pid, DEADLINE), "{pid} outlived corral");
    }
    assert!(!c.cgroup_root_exists(), "corral left its cgroup tree");
}

#[test]
fn without_the_right_to_manage_cgroups_units_still_run_and_status_says_why() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "free",
        "[exec]\ncommand = [\"sh\", \"-c\", \"echo up; exec sleep 1000\"]\n\
         [resources]\nmemory-max = \"64M\"\n",
    );
    c.unit(
        "other",
        "[exec]\ncommand = [\"sh\", \"-c\", \"echo up; exec sleep 1000\"]\n",
    );
    // `nobody` may not create cgroups: the same refusal as in an unprivileged container.
    c.launch_as(65534, 65534, &[]);
    for unit in ["free", "other"] {
        c.wait_count(&format!("{unit} up"), 1, |l| is_output(l, unit));
    }

    let status = c.status("free");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["limits_enforced"], false, "{status}");
    assert_eq!(status["cgroup"], Value::Null, "{status}");
    let reason = status["limits_reason"].as_str().unwrap_or("");
    assert!(reason.contains("permission"), "{status}");
    let warnings = c
        .seen
        .iter()
        .filter(|l| msg(l).contains("units run without resource limits"))
        .count();
    assert_eq!(warnings, 1, "warned once");
    assert!(!c.cgroup_root_exists());

    let out = c.cli(&["freeze", "free"]);
    assert_eq!(out.code, 1, "{out:?}");
    c.ok(&["stop", "free"]);
    assert_eq!(c.status("free")["state"], "inactive");
    assert_eq!(c.status("other")["state"], "running");
}

#[test]
fn a_reload_raises_and_lowers_memory_max_together_with_swap_in_place() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let unit = |max: &str| {
        format!(
            "{}[resources]\nmemory-max = \"{max}\"\nmemory-swap-max = \"16M\"\n",
            sleeper("1000")
        )
    };
    c.unit("grow", &unit("64M"));
    c.launch(&[]);
    c.wait_log("grow started", |l| is_about(l, "grow", "started"));
    let pid = c.status("grow")["pid"].clone();
    // v1 wants limit <= memsw at every moment: raising needs memsw written first, lowering
    // the limit first.
    for (max, mib) in [("128M", 128u64), ("32M", 32)] {
        c.unit("grow", &unit(max));
        c.ok(&["reload"]);
        let read = |file: &str| c.cgroup_read("memory", &format!("grow.service/{file}"));
        assert_eq!(
            read("memory.limit_in_bytes"),
            (mib << 20).to_string(),
            "{max}"
        );
        assert_eq!(
            read("memory.memsw.limit_in_bytes"),
            ((mib + 16) << 20).to_string(),
            "{max}"
        );
        let status = c.status("grow");
        assert_eq!(status["limits_enforced"], true, "{max}: {status}");
        assert_eq!(status["pid"], pid, "{max}: not restarted");
    }
}

#[test]
fn stop_answers_only_once_no_process_of_the_unit_is_left() {
    if !require_cgroup_v1() {
        return;
    }
    const STUBBORN: usize = 20;
    let mut c = Corral::new();
    // Escapees in sessions of their own that ignore SIGTERM: the main process dies of the
    // stop signal, they die only of the SIGKILL that follows it, a moment later.
    let script = format!(
        "for i in $(seq {STUBBORN}); do setsid sh -c 'trap \"\" TERM; echo up; exec sleep 1000' & done; \
         exec sleep 1000"
    );
    c.unit(
        "stubborn",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", {}]\n",
            toml_str(&script)
        ),
    );
    c.launch(&[]);
    c.wait_count("the escapees ready", STUBBORN, |l| {
        is_output(l, "stubborn") && msg(l) == "up"
    });
    let rel = "stubborn.service";
    let members = procs(&c, "pids", rel);
    assert_eq!(members.len(), STUBBORN + 1);

    c.ok(&["stop", "stubborn"]);
    // Right after the answer: a zombie is dead (corral reaps it on its next wake); a live
    // process still in this test's cgroup tree is one the stop did not wait for.
    let in_tree = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|text| text.contains(&c.cgroup_root))
    };
    let alive: Vec<(i32, char)> = members
        .iter()
        .filter_map(|&pid| Some((pid, common::proc_state(pid)?)))
        .filter(|&(pid, state)| state != 'Z' && in_tree(pid))
        .collect();
    assert!(alive.is_empty(), "stop answered while {alive:?} still ran");
    assert!(
        !c.cgroup_exists(rel),
        "the unit's cgroup is removed when stop answers"
    );
    assert_eq!(c.status("stubborn")["state"], "inactive");
}
