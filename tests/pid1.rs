//! corral as PID 1 of a new pid namespace on this host (`unshare --pid --fork`), driven and
//! observed from the parent namespace: shutdown order and exit code, `--exit-with`, reaping a
//! burst of orphans, and the shutdown's treatment of processes no unit holds any more (docs/operations.md, "PID 1").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Waits until `unit` logged that it started.
fn wait_started(c: &mut Corral, unit: &str) {
    c.wait_log(&format!("{unit} started"), |l| is_about(l, unit, "started"));
}

/// The last pid of the `NSpid:` line of `/proc/<pid>/status`: the pid inside its namespace.
fn ns_pid(host_pid: i32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

#[test]
fn sigterm_from_the_parent_namespace_stops_in_reverse_dependency_order_and_exits_0() {
    if !require_unshare() {
        return;
    }
    let mut c = Corral::new();
    c.unit("db", &shell("exec sleep 100000"));
    c.unit(
        "cache",
        &format!(
            "after = [\"db\"]\nrequires = [\"db\"]\n{}",
            shell("exec sleep 100000")
        ),
    );
    c.unit(
        "app",
        &format!("after = [\"cache\"]\n{}", shell("exec sleep 100000")),
    );
    c.launch_in_pid_namespace(&[]);
    let hello = c
        .seen
        .iter()
        .find(|l| msg(l) == "corral supervising")
        .expect("corral's first words")
        .clone();
    assert_eq!(
        hello["fields"]["pid"], 1,
        "corral is PID 1 of its namespace: {hello}"
    );
    assert_ne!(c.pid(), 1);
    for unit in ["db", "cache", "app"] {
        wait_started(&mut c, unit);
    }
    c.signal(Signal::SIGTERM);
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(0), "corral's exit status via unshare");
    let stopped: Vec<&str> = c
        .seen
        .iter()
        .filter(|l| msg(l).starts_with("stopped"))
        .map(unit_of)
        .collect();
    assert_eq!(stopped, vec!["app", "cache", "db"]);
    assert!(
        c.seen
            .iter()
            .any(|l| msg(l) == "corral exits" && l["fields"]["code"] == 0),
        "corral says it exits 0"
    );
    assert!(!c.cgroup_root_exists(), "corral removes its cgroup tree");
    assert!(
        !c.seen.iter().any(|l| msg(l).contains("machine's init")),
        "a namespace's PID 1 is no machine's init, even with the host's /proc"
    );
}

/// Runs a unit under `--exit-with`; `kill_main` SIGKILLs its main process from here.
fn exit_with(command: &str, kill_main: bool) -> (i32, Corral) {
    let mut c = Corral::new();
    c.unit(
        "job",
        &format!("{}[restart]\npolicy = \"never\"\n", shell(command)),
    );
    c.unit("bystander", &shell("exec sleep 100000"));
    c.launch_in_pid_namespace(&["--exit-with", "job"]);
    if kill_main {
        c.wait_count("both units started", 2, |l| msg(l) == "started");
        let inner = c.status("job")["pid"].as_i64().expect("job's pid");
        // The main processes are corral's children; tell them apart by their pid inside.
        let job = children_of(c.pid())
            .into_iter()
            .find(|&p| ns_pid(p) == Some(inner))
            .unwrap_or_else(|| c.fail(&format!("no child of corral is pid {inner} inside")));
        kill(Pid::from_raw(job), Signal::SIGKILL).expect("killing the job");
    }
    let status = c.wait_exit();
    let code = status
        .code()
        .unwrap_or_else(|| panic!("unshare ended without a code: {status:?}"));
    (code, c)
}

#[test]
fn exit_with_propagates_exit_code_0() {
    if !require_unshare() {
        return;
    }
    let (code, c) = exit_with("exit 0", false);
    assert_eq!(code, 0);
    assert!(c.seen.iter().any(|l| is_about(l, "bystander", "stopped")));
}

#[test]
fn exit_with_propagates_exit_code_3() {
    if !require_unshare() {
        return;
    }
    let (code, c) = exit_with("exit 3", false);
    assert_eq!(code, 3);
    assert!(c.seen.iter().any(|l| is_about(l, "bystander", "stopped")));
}

#[test]
fn exit_with_propagates_a_sigkill_as_137() {
    if !require_unshare() {
        return;
    }
    let (code, c) = exit_with("exec sleep 100000", true);
    assert_eq!(code, 128 + 9);
    assert!(
        c.seen
            .iter()
            .any(|l| is_about(l, "job", "killed by SIGKILL"))
    );
    assert!(c.seen.iter().any(|l| is_about(l, "bystander", "stopped")));
}

/// Forks `n` children; each forks a grandchild and exits, so the grandchildren are orphaned to
/// corral. They wait on a pipe that closes once all exist, so all exit in one burst; then the
/// program stays alive as the unit's main process.
const BURST_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]), gate[2];
    if (pipe(gate)) { perror("pipe"); return 1; }
    for (int i = 0; i < n; i++) {
        pid_t child = fork();
        if (child < 0) { perror("fork"); return 1; }
        if (child == 0) {
            if (fork() == 0) {
                char byte;
                close(gate[1]);
                (void)!read(gate[0], &byte, 1);
            }
            _exit(0);
        }
        if (waitpid(child, NULL, 0) != child) { perror("waitpid"); return 1; }
    }
    close(gate[1]);
    printf("released %d\n", n);
    fflush(stdout);
    for (;;) pause();
}
"#;

/// Compiles BURST_C with the host's C compiler (under CI=true a missing one fails the test).
fn burst_program(dir: &std::path::Path) -> Option<PathBuf> {
    let Some(cc) = in_path("cc") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the zombie burst needs a C compiler (cc), and CI=true does not allow skipping");
        }
        eprintln!("SKIPPED: the zombie burst needs a C compiler (cc)");
        return None;
    };
    let source = dir.join("burst.c");
    let program = dir.join("burst");
    std::fs::write(&source, BURST_C).unwrap();
    let out = Command::new(cc)
        .args(["-O2", "-o"])
        .arg(&program)
        .arg(&source)
        .output()
        .expect("running cc");
    assert!(out.status.success(), "cc failed: {out:?}");
    Some(program)
}

/// Zombies whose parent is `parent`, read from this (the parent) namespace's /proc.
fn zombies_of(parent: i32) -> Vec<i32> {
    children_of(parent)
        .into_iter()
        .filter(|&p| proc_state(p) == Some('Z'))
        .collect()
}

#[test]
fn ten_thousand_orphaned_zombies_in_a_burst_are_all_reaped() {
    const ORPHANS: usize = 10_000;
    if !require_unshare() || !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let Some(program) = burst_program(c.root()) else {
        return;
    };
    c.unit(
        "burst",
        &format!(
            "[exec]\ncommand = [{}, \"{ORPHANS}\"]\n",
            toml_str(&program.to_string_lossy())
        ),
    );
    let started = Instant::now();
    c.launch_in_pid_namespace(&[]);
    let released = format!("released {ORPHANS}");
    c.wait_log("the burst", |l| is_output(l, "burst") && msg(l) == released);
    // corral logs each reap (at debug level; its log queue holds far more than this burst).
    let reaped = c.wait_count("every orphan reaped", ORPHANS, |l| reaped_pid(l).is_some());
    let took = started.elapsed();
    let distinct: std::collections::HashSet<i64> = reaped.iter().filter_map(reaped_pid).collect();
    assert_eq!(distinct.len(), ORPHANS, "each orphan reaped once");
    // From the parent namespace: no zombie left to corral, and the unit's pids counter (which
    // releases a process only when it is reaped) holds the main process alone.
    assert_eq!(zombies_of(c.pid()), Vec::<i32>::new(), "zombies of corral");
    assert_eq!(c.cgroup_read("pids", "burst.service/pids.current"), "1");
    let status = c.status("burst");
    assert_eq!(status["state"], "running", "corral still answers: {status}");
    assert_eq!(
        children_of(c.pid()).len(),
        1,
        "only the unit's main process is left as corral's child"
    );
    eprintln!("{ORPHANS} orphans forked, exited and reaped within {took:?} of the launch");
}

/// A unit whose main process leaves an orphan outside every unit's cgroup (it moves itself
/// into the test's cgroup root, in every hierarchy where corral made one), which no unit's stop
/// reaches; `trap` is the orphan's SIGTERM handling. Returns the orphan's pid inside.
fn launch_with_escaped_orphan(c: &mut Corral, trap: &str, shutdown_timeout: &str) -> i64 {
    launch_with_escaped_orphan_in(c, trap, shutdown_timeout, &[])
}

/// `launch_with_escaped_orphan` below `init` (a command line that runs corral, in the new
/// namespace, as its child), instead of corral being PID 1 itself.
fn launch_with_escaped_orphan_in(
    c: &mut Corral,
    trap: &str,
    shutdown_timeout: &str,
    init: &[&str],
) -> i64 {
    let files: Vec<String> = cgroup_mounts()
        .iter()
        .map(|m| {
            let file = m
                .join(c.cgroup_root.trim_start_matches('/'))
                .join("cgroup.procs");
            format!("'{}'", file.display())
        })
        .collect();
    let orphan = format!(
        "for f in {}; do if [ -e \"$f\" ]; then echo $$ > \"$f\"; fi; done; {trap}; echo escaped $$; exec sleep 100000",
        files.join(" ")
    );
    c.unit(
        "leaver",
        &format!(
            "[exec]\ncommand = [\"sh\", \"-c\", \"sh -c \\\"$ORPHAN\\\" & exec sleep 100000\"]\nenv = {{ ORPHAN = {} }}\n",
            toml_str(&orphan)
        ),
    );
    let mut wrapper = vec!["unshare", "--pid", "--fork", "--kill-child"];
    wrapper.extend_from_slice(init);
    c.launch_wrapped(&wrapper, &["--shutdown-timeout", shutdown_timeout]);
    let line = c.wait_log("the orphan's escape", |l| {
        is_output(l, "leaver") && msg(l).starts_with("escaped ")
    });
    let pid = msg(&line)["escaped ".len()..]
        .parse()
        .unwrap_or_else(|e| panic!("the orphan's pid in {line}: {e}"));
    let unit_procs = c.cgroup_read("pids", "leaver.service/cgroup.procs");
    assert_eq!(
        unit_procs.lines().count(),
        1,
        "only the main process stays in the unit"
    );
    pid
}

fn reaped_as(c: &Corral, pid: i64) -> Option<String> {
    c.seen
        .iter()
        .find(|l| reaped_pid(l) == Some(pid))
        .map(|l| msg(l).to_owned())
}

fn said(c: &Corral, message: &str) -> bool {
    c.seen.iter().any(|l: &Value| msg(l) == message)
}

#[test]
fn a_leftover_that_ignores_sigterm_is_killed_after_the_shutdown_timeout() {
    if !require_unshare() || !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    let orphan = launch_with_escaped_orphan(&mut c, "trap '' TERM", "200ms");
    c.signal(Signal::SIGTERM);
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(c.seen.iter().any(|l| is_about(l, "leaver", "stopped")));
    assert!(said(&c, "sending SIGTERM to every remaining process"));
    assert!(said(&c, "sending SIGKILL to every remaining process"));
    assert_eq!(
        reaped_as(&c, orphan).as_deref(),
        Some("reaped: killed by SIGKILL"),
        "the orphan (pid {orphan} inside)"
    );
}

#[test]
fn a_leftover_that_exits_on_sigterm_does_not_wait_for_the_shutdown_timeout() {
    if !require_unshare() || !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // An hour: corral exiting within the harness's DEADLINE proves it did not wait for it.
    let orphan = launch_with_escaped_orphan(&mut c, "true", "1h");
    c.signal(Signal::SIGTERM);
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(said(&c, "sending SIGTERM to every remaining process"));
    assert!(!said(&c, "sending SIGKILL to every remaining process"));
    assert_eq!(
        reaped_as(&c, orphan).as_deref(),
        Some("reaped: killed by SIGTERM"),
        "the orphan (pid {orphan} inside)"
    );
}

/// A shell as PID 1 of the namespace that runs corral as its child (not as its last command,
/// which a shell may exec in its own place).
const SHELL_INIT: [&str; 4] = ["sh", "-c", "\"$@\"; code=$?; exit $code", "sh"];

#[test]
fn below_another_init_with_the_hosts_proc_leftovers_are_signalled_by_their_pids_in_corrals_namespace()
 {
    if !require_unshare() || !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    // The namespace's /proc is the host's: corral (pid 2, a subreaper) reads its children
    // there as host pids, and must signal them by their pids in its own namespace.
    let orphan = launch_with_escaped_orphan_in(&mut c, "true", "1h", &SHELL_INIT);
    assert_ne!(c.pid(), 1);
    c.signal(Signal::SIGTERM);
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(0), "the shell passes corral's code on");
    let hello = c
        .seen
        .iter()
        .find(|l| msg(l) == "corral supervising")
        .expect("corral's first words");
    assert_eq!(
        hello["fields"]["pid"], 2,
        "corral runs below the shell: {hello}"
    );
    assert!(
        c.seen
            .iter()
            .any(|l| msg(l) == "leftover process gets SIGTERM" && l["fields"]["pid"] == orphan),
        "the orphan (pid {orphan} inside) got its SIGTERM by that pid"
    );
    assert_eq!(
        reaped_as(&c, orphan).as_deref(),
        Some("reaped: killed by SIGTERM"),
        "the orphan (pid {orphan} inside)"
    );
}

/// A cgroup v1 freezer cgroup of the test's own, outside corral's tree. On drop it is thawed
/// (so the SIGKILLs pending on its members take effect), its members (processes the test moved
/// in) are killed and waited for, and it is removed.
struct TestFreezer {
    dir: PathBuf,
}

impl TestFreezer {
    fn new(c: &Corral) -> TestFreezer {
        let dir = PathBuf::from("/sys/fs/cgroup/freezer")
            .join(format!("{}-frozen", c.cgroup_root.trim_start_matches('/')));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TestFreezer { dir }
    }

    /// Moves `pid` in (in the freezer hierarchy only) and freezes it. A v1 freeze is
    /// asynchronous: FREEZING until every member stopped; the write is repeated until the
    /// kernel reports FROZEN, as runc does.
    fn freeze(&self, pid: i64) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("moving in");
        let state = self.dir.join("freezer.state");
        let deadline = Instant::now() + DEADLINE;
        loop {
            std::fs::write(&state, "FROZEN").expect("freezing");
            if std::fs::read_to_string(&state).unwrap().trim() == "FROZEN" {
                return;
            }
            assert!(Instant::now() < deadline, "{} never froze", state.display());
            std::thread::yield_now();
        }
    }
}

impl Drop for TestFreezer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
        let members = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in members.split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_pid_exit(pid, DEADLINE);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A unit whose process is frozen (v1 freezer: even SIGKILL waits for a thaw) must not hold
/// a shutdown forever: after the SIGKILL and the kill wait corral abandons it, says which pids
/// in which cgroup were left, and exits.
#[test]
fn a_shutdown_ends_when_a_units_process_cannot_die() {
    if !require_cgroup_v1() {
        return;
    }
    let mut c = Corral::new();
    c.unit(
        "stuck",
        "[exec]\ncommand = [\"sleep\", \"100000\"]\n[stop]\ntimeout = \"100ms\"\n",
    );
    c.launch(&["--shutdown-timeout", "300ms"]);
    let pid = c.wait_exec("stuck", 1);
    let freezer = TestFreezer::new(&c);
    freezer.freeze(pid);
    let out = c.cli(&["shutdown"]);
    assert_eq!(out.code, 0, "{out:?}");
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let abandoned = c
        .seen
        .iter()
        .find(|l| is_about(l, "stuck", "outlived SIGKILL"))
        .unwrap_or_else(|| c.fail("no line naming what the shutdown abandoned"));
    let text = msg(abandoned);
    assert!(text.contains(&pid.to_string()), "{abandoned}");
    assert!(
        text.contains(&format!("{}/stuck.service", c.cgroup_root)),
        "{abandoned}"
    );
    // The leftovers phase gives up on it too, by pid, once its own SIGKILL did nothing.
    assert!(
        c.seen.iter().any(|l| msg(l).contains("outlived SIGKILL")
            && l["fields"]["pids"]
                .as_str()
                .is_some_and(|p| p.contains(&pid.to_string()))),
        "no leftovers line names pid {pid}"
    );
    drop(freezer);
    assert!(wait_pid_exit(pid as i32, DEADLINE), "pid {pid} still runs");
}
