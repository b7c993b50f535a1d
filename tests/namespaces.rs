//! [namespaces] and [sandbox] on the real kernel, checked from outside the unit through /proc.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use common::{
    Corral, DEADLINE, is_about, is_output, msg, require_cgroup_v1, require_root, toml_str,
};
// The namespace files under /proc/PID/ns, by the kind names `status` uses.
use corral::os::namespaces::KINDS;

fn ns_inode(pid: i32, file: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{file}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{file}: {e}"))
        .ino()
}

/// A unit whose shell prints `key=value` facts, then `ready`, then sleeps as the main command.
fn reporting_unit(script: &str, sections: &str) -> String {
    let script = format!("{script}\necho ready\nexec sleep 1000");
    format!(
        "[exec]\ncommand = [\"sh\", \"-c\", {}]\n[restart]\npolicy = \"never\"\n{sections}",
        toml_str(&script)
    )
}

/// Waits for `unit` to print `ready`; returns the `key=value` lines it printed before.
fn facts(c: &mut Corral, unit: &str) -> BTreeMap<String, String> {
    c.wait_count(&format!("{unit} ready"), 1, |l| {
        is_output(l, unit) && msg(l) == "ready"
    });
    c.seen
        .iter()
        .filter(|l| is_output(l, unit))
        .take_while(|l| msg(l) != "ready")
        .filter_map(|l| {
            let (k, v) = msg(l).split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn main_pid(c: &Corral, unit: &str) -> i32 {
    let status = c.status(unit);
    assert_eq!(status["state"], "running", "{status}");
    status["pid"].as_i64().unwrap() as i32
}

/// The direct children of `pid` (CONFIG_PROC_CHILDREN).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// A line of /proc/PID/status, e.g. `proc_status(pid, "CapBnd")`.
fn proc_status(pid: i32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// An id map file with its columns' padding squeezed: "0 65534 1".
fn id_map(pid: i32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Re-checks `cond` until it holds or DEADLINE passes: for kernel state that no event announces
/// (a reaped zombie leaves no trace to wait on).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn requested_namespaces_are_new_and_the_others_are_corrals() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "all",
        &reporting_unit(
            "",
            "[namespaces]\npid = true\nnet = true\nmount = true\nuts = true\nipc = true\nuser = true\ncgroup = true\n",
        ),
    );
    c.unit(
        "some",
        &reporting_unit("", "[namespaces]\nnet = true\nipc = true\n"),
    );
    c.unit("none", &reporting_unit("", ""));
    c.launch(&[]);
    for unit in ["all", "some", "none"] {
        facts(&mut c, unit);
    }
    let corral = c.pid();
    for (unit, asked) in [
        (
            "all",
            &["pid", "net", "mount", "uts", "ipc", "user", "cgroup"][..],
        ),
        ("some", &["net", "ipc"][..]),
        ("none", &[][..]),
    ] {
        let pid = main_pid(&c, unit);
        let status = c.status(unit);
        let listed = status["namespaces"].as_array().unwrap();
        for (kind, file) in KINDS {
            let own = ns_inode(pid, file) != ns_inode(corral, file);
            assert_eq!(own, asked.contains(&kind), "{unit}: {kind} namespace");
            let entry = listed
                .iter()
                .find(|n| n["kind"] == kind)
                .unwrap_or_else(|| panic!("{unit}: no {kind} in {status}"));
            assert_eq!(
                entry["inode"],
                ns_inode(pid, file),
                "{unit} {kind}: {entry}"
            );
            assert_eq!(entry["isolated"], own, "{unit} {kind}: {entry}");
            assert_eq!(entry["requested"], asked.contains(&kind), "{unit} {kind}");
        }
    }
    // The command under the pid namespace's helper is in the same namespaces as the helper.
    let helper = main_pid(&c, "all");
    let command = children(helper);
    assert_eq!(
        command.len(),
        1,
        "the helper has only the command: {command:?}"
    );
    for (_, file) in KINDS {
        assert_eq!(ns_inode(command[0], file), ns_inode(helper, file), "{file}");
    }
    // The details view says it in words.
    let out = c.ok(&["status", "some"]);
    assert!(
        out.stdout
            .contains("isolation own: net, ipc; shared with corral: pid, mount, uts, user, cgroup"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_pid_namespace_shows_only_the_unit_and_its_orphans_are_reaped() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // `(true &)` leaves an orphan that the namespace's init must reap.
    let script = r#"echo "self=$$"
set -- /proc/[0-9]*
echo "procs=$*"
i=0
while [ $i -lt 50 ]; do (true &); i=$((i+1)); done
echo "cgroup=$(cat /proc/self/cgroup | grep -c ':/$')""#;
    c.unit(
        "isolated",
        &reporting_unit(script, "[namespaces]\npid = true\ncgroup = true\n"),
    );
    c.launch(&[]);
    let facts = facts(&mut c, "isolated");
    assert_eq!(
        facts["self"], "2",
        "the command is PID 2, under the helper init"
    );
    assert_eq!(
        facts["procs"], "/proc/1 /proc/2",
        "/proc shows only the unit"
    );
    assert_ne!(facts["cgroup"], "0", "the unit sees its cgroup as /");

    let helper = main_pid(&c, "isolated");
    eventually("the helper to reap every orphan", || {
        children(helper).len() == 1
    });
    let procs = c.cgroup_read("pids", "isolated.service/cgroup.procs");
    for pid in procs.lines() {
        let state = proc_status(pid.parse().unwrap(), "State");
        assert!(!state.starts_with('Z'), "zombie {pid} in the unit: {state}");
    }
}

#[test]
fn a_pid_namespace_keeps_stop_traps_and_exit_statuses_exact() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let ns = "[namespaces]\npid = true\n";
    let run = |command: &str| {
        format!(
            "[exec]\ncommand = [\"sh\", \"-c\", {}]\n[restart]\npolicy = \"never\"\n{ns}",
            toml_str(command)
        )
    };
    c.unit(
        "trapper",
        &run("trap 'echo trapped; exit 5' TERM; echo ready; while :; do sleep 0.05; done"),
    );
    c.unit("three", &run("echo ready; exit 3"));
    c.unit("killed", &run("echo ready; kill -KILL $$"));
    c.launch(&[]);
    c.wait_log("trapper ready", |l| {
        is_output(l, "trapper") && msg(l) == "ready"
    });

    c.ok(&["stop", "trapper"]);
    c.wait_log("the trap", |l| {
        is_output(l, "trapper") && msg(l) == "trapped"
    });
    let status = c.status("trapper");
    assert_eq!(status["state"], "inactive", "{status}");
    assert_eq!(status["last_exit"]["code"], 5, "{status}");

    c.wait_count("three's exit", 1, |l| is_about(l, "three", "exited"));
    let status = c.status("three");
    assert_eq!(status["last_exit"]["code"], 3, "{status}");
    let status = c.status("killed");
    assert_eq!(
        status["last_exit"]["signal"], "SIGKILL",
        "not 137: {status}"
    );
    assert_ne!(status["last_exit"]["oom"], true, "{status}");
}

#[test]
fn a_network_namespace_has_only_loopback_and_it_is_up() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let script = r#"echo "links=$(ip -o link | wc -l)"
echo "lo=$(ip -o link show lo | grep -c '[<,]UP[,>]')""#;
    c.unit(
        "netless",
        &reporting_unit(script, "[namespaces]\nnet = true\n"),
    );
    c.launch(&[]);
    let facts = facts(&mut c, "netless");
    assert_eq!(facts["links"], "1", "only lo: {facts:?}");
    assert_eq!(facts["lo"], "1", "lo is up: {facts:?}");
}

#[test]
fn the_hostname_is_the_units_and_the_hosts_is_unchanged() {
    if !require_cgroup_v1() {
        return;
    }
    let host = || std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let before = host();
    let mut c = Corral::new();
    c.unit(
        "named",
        &reporting_unit(
            r#"echo "name=$(cat /proc/sys/kernel/hostname)""#,
            "[namespaces]\nhostname = \"corral-test-web\"\n",
        ),
    );
    c.launch(&[]);
    let facts = facts(&mut c, "named");
    assert_eq!(facts["name"], "corral-test-web");
    assert_eq!(host(), before);
    let pid = main_pid(&c, "named");
    assert_ne!(ns_inode(pid, "uts"), ns_inode(c.pid(), "uts"));
}

#[test]
fn a_mount_made_inside_is_invisible_outside() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let dir = c.path("mnt");
    std::fs::create_dir(&dir).unwrap();
    let script = format!(
        "mount -t tmpfs corral-test {dir} && echo mounted=yes || echo mounted=no",
        dir = dir.display()
    );
    c.unit(
        "mounter",
        &reporting_unit(&script, "[namespaces]\nmount = true\n"),
    );
    c.launch(&[]);
    let facts = facts(&mut c, "mounter");
    assert_eq!(facts["mounted"], "yes");
    let pid = main_pid(&c, "mounter");
    let mounted_in = |who: &str| {
        std::fs::read_to_string(format!("/proc/{who}/mountinfo"))
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(dir.to_str().unwrap()))
    };
    assert!(mounted_in(&pid.to_string()), "the unit sees its mount");
    assert!(!mounted_in("self"), "the host does not");
    assert!(!mounted_in(&c.pid().to_string()), "nor does corral");
}

#[test]
fn a_user_namespace_maps_root_inside_to_the_units_user_or_the_given_map() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let script = r#"echo "uid=$(id -u)""#;
    c.unit(
        "default-map",
        &reporting_unit(script, "[namespaces]\nuser = true\n")
            .replace("[exec]\n", "[exec]\nuser = \"nobody\"\n"),
    );
    c.unit(
        "given-map",
        &reporting_unit(
            script,
            "[namespaces]\nuser = true\nuid-map = \"0 100000 65536\"\ngid-map = \"0 100000 65536\"\n",
        ),
    );
    c.launch(&[]);
    for unit in ["default-map", "given-map"] {
        assert_eq!(facts(&mut c, unit)["uid"], "0", "{unit}: root inside");
    }
    let nobody = main_pid(&c, "default-map");
    assert_eq!(id_map(nobody, "uid_map"), "0 65534 1");
    assert_eq!(id_map(nobody, "gid_map"), "0 65534 1");
    assert_eq!(
        proc_status(nobody, "Uid").split_whitespace().next(),
        Some("65534")
    );

    let given = main_pid(&c, "given-map");
    assert_eq!(id_map(given, "uid_map"), "0 100000 65536");
    assert_eq!(id_map(given, "gid_map"), "0 100000 65536");
    assert_eq!(
        proc_status(given, "Uid").split_whitespace().next(),
        Some("100000")
    );
}

#[test]
fn an_id_map_that_cannot_be_written_fails_the_start_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let mut c = Corral::new();
    // Without CAP_SETUID, corral may map only its own uid: 100000 is refused by the kernel.
    c.unit(
        "unmappable",
        &reporting_unit("", "[namespaces]\nuser = true\nuid-map = \"0 100000 1\"\n"),
    );
    c.launch_as(65534, 65534, &[]);
    let failed = c.wait_log("the start to fail", |l| {
        is_about(l, "unmappable", "uid_map")
    });
    let status = c.status("unmappable");
    assert_eq!(status["state"], "failed", "{status} {failed}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/uid_map") && error.contains("EPERM"),
        "{error}"
    );
    // The child corral left waiting for its map is gone, not kept as a half-started unit.
    let corral = c.pid();
    eventually("corral to have no child", || {
        std::fs::read_dir(format!("/proc/{corral}/task"))
            .unwrap()
            .flatten()
            .all(|t| {
                std::fs::read_to_string(t.path().join("children"))
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
            })
    });
}

#[test]
fn sandbox_sets_no_new_privs_and_keeps_only_the_listed_capabilities() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let sandbox = "[sandbox]\nno-new-privileges = true\ncapabilities = [\"CAP_NET_BIND_SERVICE\", \"CAP_KILL\"]\n";
    c.unit("as-root", &reporting_unit("", sandbox));
    c.unit(
        "as-nobody",
        &reporting_unit("", "[sandbox]\ncapabilities = [\"CAP_NET_BIND_SERVICE\"]\n")
            .replace("[exec]\n", "[exec]\nuser = \"nobody\"\n"),
    );
    c.unit("untouched", &reporting_unit("", ""));
    c.launch(&[]);
    for unit in ["as-root", "as-nobody", "untouched"] {
        facts(&mut c, unit);
    }
    let root = main_pid(&c, "as-root");
    assert_eq!(proc_status(root, "NoNewPrivs"), "1");
    // CAP_KILL is 5, CAP_NET_BIND_SERVICE 10.
    for set in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(proc_status(root, set), "0000000000000420", "{set}");
    }
    let nobody = main_pid(&c, "as-nobody");
    assert_eq!(proc_status(nobody, "NoNewPrivs"), "0");
    // A unit that is not root keeps its listed capability through exec as an ambient one.
    for set in ["CapBnd", "CapEff", "CapAmb"] {
        assert_eq!(proc_status(nobody, set), "0000000000000400", "{set}");
    }
    let untouched = main_pid(&c, "untouched");
    assert_eq!(
        proc_status(untouched, "CapBnd"),
        proc_status(c.pid(), "CapBnd"),
        "no [sandbox]: the bounding set is corral's"
    );
}

/// This thread's inheritable capabilities (bits 0..64), set to `inheritable`; returns the old.
/// Credentials are per thread, so other tests' threads are not touched, and corral, spawned
/// from this thread, starts with them.
fn swap_thread_inheritable(inheritable: u64) -> u64 {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset on this thread with the two-element array version 3 defines.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()),
            0
        );
        let old = u64::from(data[0].inheritable) | (u64::from(data[1].inheritable) << 32);
        data[0].inheritable = inheritable as u32;
        data[1].inheritable = (inheritable >> 32) as u32;
        assert_eq!(
            libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()),
            0,
            "capset: {}",
            std::io::Error::last_os_error()
        );
        old
    }
}

/// This thread's supplementary groups, set to `groups` with the raw system call (glibc's
/// setgroups would change every thread of the test binary).
fn set_thread_groups(groups: &[libc::gid_t]) {
    // SAFETY: setgroups reads `groups.len()` gids.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    assert_eq!(rc, 0, "setgroups: {}", std::io::Error::last_os_error());
}

fn thread_groups() -> Vec<libc::gid_t> {
    let mut groups = vec![0; 256];
    // SAFETY: getgroups writes at most `groups.len()` gids.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, groups.len(), groups.as_mut_ptr()) };
    assert!(n >= 0, "getgroups: {}", std::io::Error::last_os_error());
    groups.truncate(n as usize);
    groups
}

#[test]
fn a_unit_gets_neither_corrals_inheritable_capabilities_nor_its_groups() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let report = r#"echo "inh=$(grep CapInh /proc/self/status | cut -f2)"
echo "groups=$(grep Groups /proc/self/status | cut -f2 | tr -d ' ')""#;
    c.unit("as-root", &reporting_unit(report, ""));
    c.unit(
        "as-nobody",
        &reporting_unit(report, "").replace("[exec]\n", "[exec]\nuser = \"nobody\"\n"),
    );
    // corral as a container runtime or a login may start it: with an inheritable capability
    // (CAP_NET_RAW, 13) and a supplementary group of its own.
    const CAP_NET_RAW: u64 = 1 << 13;
    let (old_inheritable, old_groups) = (swap_thread_inheritable(CAP_NET_RAW), thread_groups());
    set_thread_groups(&[4242]);
    c.launch(&[]);
    swap_thread_inheritable(old_inheritable);
    set_thread_groups(&old_groups);
    assert_eq!(proc_status(c.pid(), "CapInh"), "0000000000002000");
    assert_eq!(proc_status(c.pid(), "Groups"), "4242");
    for unit in ["as-root", "as-nobody"] {
        let facts = facts(&mut c, unit);
        // An inheritable capability comes back at the exec of a file that has it inheritable.
        assert!(!facts["groups"].contains("4242"), "{unit}: {facts:?}");
        assert_eq!(facts["inh"], "0000000000000000", "{unit}");
    }
}

/// Root without CAP_SETGID (runc's default capabilities, a restricted pod) cannot setgroups(2):
/// corral leaves its groups to the unit rather than fail every spawn.
#[test]
fn corral_as_root_without_cap_setgid_still_starts_units() {
    if !require_cgroup_v1() {
        return;
    }
    let Some(setpriv) = common::in_path("setpriv") else {
        panic!("this test needs setpriv (package util-linux)");
    };
    let mut c = Corral::new();
    c.unit(
        "plain",
        &reporting_unit(
            r#"echo "eff=$(grep CapEff /proc/self/status | cut -f2)""#,
            "",
        ),
    );
    // Root's capabilities after an exec are its bounding set (capabilities(7)); setpriv execs
    // corral, which keeps its pid.
    let mut cmd = std::process::Command::new(setpriv);
    cmd.args(["--bounding-set", "-setgid", common::BIN, "run"])
        .arg(&c.units)
        .arg("--socket")
        .arg(&c.socket)
        .args([
            "--log-format",
            "json",
            "--cgroup-root",
            &c.cgroup_root.clone(),
        ])
        .env("CORRAL_LOG", "debug");
    c.launch_command(cmd);
    const CAP_SETGID: u64 = 1 << 6;
    let corral_caps = u64::from_str_radix(&proc_status(c.pid(), "CapEff"), 16).unwrap();
    assert_eq!(
        corral_caps & CAP_SETGID,
        0,
        "corral runs without CAP_SETGID"
    );
    let facts = facts(&mut c, "plain");
    assert!(facts.contains_key("eff"), "the unit ran: {facts:?}");
}

#[test]
fn read_only_paths_refuse_writes_and_tmp_is_private() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let ro = c.path("ro");
    std::fs::create_dir(&ro).unwrap();
    let marker = format!("corral-private-tmp-{}", std::process::id());
    // Two units: the test's temp dir is under /tmp, which a private /tmp would hide.
    c.unit(
        "read-only",
        &reporting_unit(
            &format!(
                "touch {}/x 2>/dev/null && echo ro=writable || echo ro=refused",
                ro.display()
            ),
            &format!(
                "[sandbox]\nread-only-paths = [{}]\n",
                toml_str(ro.to_str().unwrap())
            ),
        ),
    );
    c.unit(
        "private-tmp",
        &reporting_unit(
            &format!(
                "echo \"tmp=$(ls -A /tmp | wc -l)\"\necho inside > /tmp/{marker} && echo tmpwrite=ok"
            ),
            "[sandbox]\nprivate-tmp = true\n",
        ),
    );
    c.launch(&[]);
    assert_eq!(facts(&mut c, "read-only")["ro"], "refused");
    let facts = facts(&mut c, "private-tmp");
    assert_eq!(facts["tmp"], "0", "a fresh /tmp");
    assert_eq!(facts["tmpwrite"], "ok");
    assert!(!ro.join("x").exists());
    // Outside, the path stays writable and the unit's /tmp file does not exist.
    std::fs::write(ro.join("host"), "ok").unwrap();
    assert!(!Path::new("/tmp").join(&marker).exists());
}

#[test]
fn a_missing_read_only_path_fails_the_start_naming_it() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "typo",
        &reporting_unit(
            "",
            "[sandbox]\nread-only-paths = [\"/no/such/corral/path\"]\n",
        ),
    );
    c.launch(&[]);
    c.wait_log("the failed start", |l| {
        is_about(l, "typo", "/no/such/corral/path")
    });
    let status = c.status("typo");
    assert_eq!(status["state"], "failed", "{status}");
    // The child reports the path, then exits; its cgroup goes once it is reaped.
    let shown = format!("{}/typo.service", c.cgroup_root_path());
    c.wait_count("the failed start's cgroup removed", 1, |l| {
        msg(l) == "removed" && l["fields"]["cgroup"] == shown.as_str()
    });
    assert!(!c.cgroup_exists("typo.service"), "nothing is left behind");
}

#[test]
fn an_exec_health_probe_runs_in_the_units_namespaces() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // Each check fails outside the unit: the private /tmp holds the unit's marker, the host
    // name is the unit's, /proc/self resolves only inside the unit's pid namespace (its /proc
    // is the unit's), and the user is root of the unit's user namespace.
    let probe = r#"test -e /tmp/unit-marker &&
test "$(cat /proc/sys/kernel/hostname)" = probed &&
readlink /proc/self >/dev/null &&
test "$(id -u)" = 0 &&
test "$(ip -o link | wc -l)" = 1"#;
    c.unit(
        "probed",
        &format!(
            r#"[exec]
command = ["sh", "-c", "touch /tmp/unit-marker; exec sleep 1000"]
user = "nobody"
[namespaces]
pid = true
net = true
hostname = "probed"
user = true
[sandbox]
private-tmp = true
[health]
exec = ["sh", "-c", {}]
interval = "100ms"
"#,
            toml_str(probe)
        ),
    );
    c.launch(&[]);
    c.wait_log("the probe to pass", |l| {
        is_about(l, "probed", "ready (the health probe)")
    });
    assert_eq!(c.status("probed")["state"], "running");
    assert!(!Path::new("/tmp/unit-marker").exists());
}

#[test]
fn an_http_probe_reaches_a_unit_on_its_own_loopback() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // The server listens on the loopback of the unit's network namespace only: a probe that
    // connected from corral's namespace would be refused.
    c.unit(
        "netted",
        r#"[exec]
command = ["python3", "-m", "http.server", "47999", "--bind", "127.0.0.1", "--directory", "/"]
[namespaces]
net = true
[health]
http = "http://127.0.0.1:47999/"
interval = "100ms"
"#,
    );
    c.launch(&[]);
    c.wait_log("the probe to pass", |l| {
        is_about(l, "netted", "ready (the health probe)")
    });
    assert!(
        std::net::TcpStream::connect("127.0.0.1:47999").is_err(),
        "the unit's port is not on the host's loopback"
    );
}

#[test]
fn the_pid_namespace_helper_is_not_the_units_to_trace_and_drops_host_root() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // Root of the unit's user namespace has CAP_SYS_PTRACE there; PID 1, the helper, was host
    // root when it forked and must not be the command's to attach to.
    let script = r#"python3 -c 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); print("attach=" + ("allowed" if libc.ptrace(16, 1, 0, 0) == 0 else "denied"))'
echo "uid=$(id -u)""#;
    c.unit(
        "contained",
        &reporting_unit(script, "[namespaces]\npid = true\nuser = true\n")
            .replace("[exec]\n", "[exec]\nuser = \"nobody\"\n"),
    );
    c.launch(&[]);
    let facts = facts(&mut c, "contained");
    assert_eq!(facts["uid"], "0", "root inside");
    assert_eq!(
        facts["attach"], "denied",
        "the command could ptrace the helper"
    );
    let helper = main_pid(&c, "contained");
    let uids = proc_status(helper, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u == "65534"),
        "the helper kept host ids: {uids}"
    );
}

fn cstr(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
}

/// Waits until `unit` has either printed `ready` (`Ok`) or logged a line naming `needle`, its
/// failed start (`Err` with that line's message). The whole log is searched, not only what
/// follows the last match: several units start at once, and their lines come in any order.
fn ready_or_failure(c: &mut Corral, unit: &str, needle: &str) -> Result<(), String> {
    let lines = c.wait_count(&format!("{unit} ready or failed"), 1, |l| {
        (is_output(l, unit) && msg(l) == "ready") || is_about(l, unit, needle)
    });
    let line = &lines[0];
    if is_output(line, unit) {
        Ok(())
    } else {
        Err(msg(line).to_owned())
    }
}

#[test]
fn a_symlink_in_a_read_only_path_fails_the_start_naming_it() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let real = c.path("real");
    let writable = c.path("writable");
    std::fs::create_dir(&real).unwrap();
    std::fs::create_dir(&writable).unwrap();
    // The path itself swapped for a symlink to a writable place, and a path through a symlinked
    // directory: neither may be bound, since what would be made read-only is not what was named.
    let leaf = c.path("ro");
    std::os::unix::fs::symlink(&writable, &leaf).unwrap();
    std::os::unix::fs::symlink(c.root(), c.path("hop")).unwrap();
    let through = c.path("hop").join("real");
    for (unit, path) in [("leaf", &leaf), ("through", &through)] {
        c.unit(
            unit,
            &reporting_unit(
                &format!("touch {}/x 2>/dev/null; true", path.display()),
                &format!(
                    "[sandbox]\nread-only-paths = [{}]\n",
                    toml_str(path.to_str().unwrap())
                ),
            ),
        );
    }
    c.launch(&[]);
    for (unit, path) in [("leaf", &leaf), ("through", &through)] {
        let path = path.to_str().unwrap();
        let error = ready_or_failure(&mut c, unit, path)
            .expect_err("a read-only path through a symlink was accepted");
        assert!(error.contains("symbolic link"), "{error}");
        let status = c.status(unit);
        assert_eq!(status["state"], "failed", "{status}");
        assert!(
            status["error"].as_str().unwrap_or("").contains(path),
            "{status}"
        );
    }
    assert_eq!(std::fs::read_dir(&writable).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}

#[test]
fn a_read_only_path_swapped_for_a_symlink_during_starts_is_never_left_writable() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let ro = c.path("ro");
    let aside = c.path("ro.aside");
    let writable = c.path("writable");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&writable).unwrap();
    // The unit writes into the directory it was told is read-only, under either of the names
    // the racer gives it, and leaves a mark in the writable place to show that it ran.
    let script = format!(
        "touch {ro}/x-$$ 2>/dev/null; touch {aside}/x-$$ 2>/dev/null; touch {w}/ran-$$ 2>/dev/null; true",
        ro = ro.display(),
        aside = aside.display(),
        w = writable.display()
    );
    c.unit(
        "raced",
        &format!(
            "kind = \"oneshot\"\n[exec]\ncommand = [\"sh\", \"-c\", {}]\n\
             [restart]\nstart-limit-burst = 100000\n\
             [sandbox]\nread-only-paths = [{}]\n",
            toml_str(&script),
            toml_str(ro.to_str().unwrap())
        ),
    );
    c.launch(&[]);
    // The racer: what a process of the unit's user with write access to the parent can do,
    // over and over: the directory and a symlink to a writable place swap names, atomically
    // (RENAME_EXCHANGE), so the name is always one of the two.
    std::os::unix::fs::symlink(&writable, &aside).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let (ro, aside) = (cstr(&ro), cstr(&aside));
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || swaps % 2 == 1 {
                // SAFETY: two NUL-terminated paths that outlive the call.
                let rc = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        ro.as_ptr(),
                        libc::AT_FDCWD,
                        aside.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
                swaps += 1;
            }
            swaps
        })
    };
    let (mut ran, mut refused) = (0, 0);
    for _ in 0..60 {
        let out = c.cli(&["restart", "raced"]);
        if out.code == 0 {
            ran += 1;
        } else {
            refused += 1;
            assert!(
                out.stderr.contains(ro.to_str().unwrap()),
                "a refused start names the path: {out:?}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("{ran} starts ran, {refused} were refused, over {swaps} swaps");
    // Undisturbed, the unit starts and its writes into the read-only directory are refused.
    c.ok(&["restart", "raced"]);
    assert!(
        std::fs::read_dir(&writable).unwrap().count() >= 1,
        "the unit never ran"
    );
    let written: Vec<_> = std::fs::read_dir(&ro)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        written.is_empty(),
        "a start left the read-only directory writable: {written:?}"
    );
}

#[test]
fn a_read_only_root_keeps_a_private_tmp_writable() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // Outside /tmp, which the private tmpfs hides.
    let outside = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let marker = format!("corral-private-tmp-{}", std::process::id());
    c.unit(
        "sealed",
        &reporting_unit(
            &format!(
                "touch {}/x 2>/dev/null && echo root=writable || echo root=refused\n\
                 echo \"tmp=$(ls -A /tmp | wc -l)\"\n\
                 echo inside > /tmp/{marker} && echo tmpwrite=ok || echo tmpwrite=refused",
                outside.path().display()
            ),
            "[sandbox]\nread-only-paths = [\"/\"]\nprivate-tmp = true\n",
        ),
    );
    c.launch(&[]);
    let facts = facts(&mut c, "sealed");
    assert_eq!(facts["root"], "refused", "/ is read-only");
    assert_eq!(facts["tmp"], "0", "a fresh /tmp");
    assert_eq!(
        facts["tmpwrite"], "ok",
        "the private /tmp is mounted after the read-only binds"
    );
    assert!(!outside.path().join("x").exists());
    assert!(!Path::new("/tmp").join(&marker).exists());
}

#[test]
fn a_read_only_path_under_a_private_tmp_is_refused_when_loading() {
    let c = Corral::new();
    let under_tmp = c.path("ro");
    assert!(
        under_tmp.starts_with("/tmp"),
        "the harness's temp dir is under /tmp"
    );
    c.unit(
        "hidden",
        &format!(
            "[exec]\ncommand = [\"true\"]\n[sandbox]\nprivate-tmp = true\nread-only-paths = [\"/etc\", {}]\n",
            toml_str(under_tmp.to_str().unwrap())
        ),
    );
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("check").arg(&c.units);
    let out = common::run_bounded(cmd);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("sandbox.read-only-paths[1]")
            && out.stderr.contains(under_tmp.to_str().unwrap())
            && out.stderr.contains("private-tmp"),
        "{out:?}"
    );
}

/// Python run as a unit's command, root of its user and pid namespaces: catches each exec
/// probe corral forks into the namespace (the pid after `ns_last_pid`) with SIGSTOP, which
/// lands only once the probe has entered the unit's user namespace (a signal from the unit
/// needs CAP_KILL there). A probe stopped while it still holds host ids (unmapped in the unit's
/// namespace: 65534 in /proc) is a probe before its exec, as privileged as corral; the script
/// then tries PTRACE_ATTACH and prints `attach=allowed|denied`, and lets it go on unless
/// `KEEP_STOPPED` is set. Stops that land later (ids already the unit's, or after the exec)
/// prove nothing and are let go.
const PROBE_CATCHER: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
ESRCH, SIGSTOP, SIGCONT, PTRACE_ATTACH = 3, 19, 18, 16
def last():
    with open("/proc/sys/kernel/ns_last_pid") as f:
        return int(f.read())
def status(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
    except OSError:
        return {}
print("watching", flush=True)
target = last() + 1
while True:
    if libc.kill(target, SIGSTOP) != 0:
        if ctypes.get_errno() == ESRCH and last() >= target:
            target = last() + 1
        continue
    s = status(target)
    while s and s["State"].split()[0] not in "TZX":
        s = status(target)
    if s and s["Uid"].split()[0] == "65534" and s["Gid"].split()[0] == "65534":
        attached = libc.ptrace(PTRACE_ATTACH, target, 0, 0) == 0
        print("attach=" + ("allowed" if attached else "denied"), flush=True)
        if not os.environ.get("KEEP_STOPPED"):
            libc.kill(target, SIGCONT)
        break
    libc.kill(target, SIGCONT)
    target = last() + 1
os.execvp("sleep", ["sleep", "1000"])
"#;

/// A unit running `PROBE_CATCHER` as nobody, root of its own user and pid namespaces, with an
/// exec probe every 20ms; `env` goes into its `[exec]`.
fn probe_catcher_unit(env: &str) -> String {
    format!(
        r#"[exec]
command = ["python3", "-c", {}]
user = "nobody"
{env}
[restart]
policy = "never"
[namespaces]
pid = true
user = true
mount = true
[health]
exec = ["true"]
interval = "20ms"
"#,
        toml_str(PROBE_CATCHER)
    )
}

#[test]
fn an_exec_probe_is_not_the_units_to_trace_before_its_exec() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit("hostile", &probe_catcher_unit(""));
    c.launch(&[]);
    let line = c.wait_log("a probe caught before its exec", |l| {
        is_output(l, "hostile") && msg(l).starts_with("attach=")
    });
    assert_eq!(
        msg(&line),
        "attach=denied",
        "the unit could ptrace an exec probe that still held host root"
    );
    // corral's loop is not held by the stopped probe: it still answers.
    assert_eq!(c.status("hostile")["name"], "hostile");
}

#[test]
fn a_probe_the_unit_stops_before_its_exec_times_out_without_holding_the_loop() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "stopper",
        &probe_catcher_unit("env = { KEEP_STOPPED = \"1\" }"),
    );
    c.launch(&[]);
    // Logged by corral's loop, which would be waiting on the stopped probe's exec otherwise.
    c.wait_log("a probe stopped before its exec", |l| {
        is_output(l, "stopper") && msg(l).starts_with("attach=")
    });
    c.wait_log("the stopped probe's timeout", |l| {
        is_about(l, "stopper", "health probe failed") && msg(l).contains("no answer within")
    });
    // And the socket still answers.
    assert_eq!(c.status("stopper")["name"], "stopper");
}
