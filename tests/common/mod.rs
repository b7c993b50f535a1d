//! Shared harness: a real `corral run` in a temp dir, its JSON log on a channel, a bounded CLI.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");
/// Every wait for an event gives up after this long; generous, since a slow CI box is no bug.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// True when running as root; otherwise skips (or, under `CI=true`, fails) the calling test.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("corral's black-box tests need root, and CI=true does not allow skipping them");
    }
    eprintln!("SKIPPED: corral's black-box tests need root (try `sudo -E cargo test`)");
    false
}

/// `require_root`, and cgroup v1 controllers mounted where this machine has them; under
/// `CI=true` a missing `/sys/fs/cgroup/memory` fails the calling test instead of skipping it.
pub fn require_cgroup_v1() -> bool {
    if !require_root() {
        return false;
    }
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the cgroup tests need cgroup v1 at /sys/fs/cgroup/memory, and CI=true does not allow skipping them"
        );
    }
    eprintln!("SKIPPED: the cgroup tests need cgroup v1 controllers under /sys/fs/cgroup");
    false
}

/// `require_root`, and util-linux `unshare` to start corral in a new pid namespace; under
/// `CI=true` a missing one fails the calling test instead of skipping it.
pub fn require_unshare() -> bool {
    if !require_root() {
        return false;
    }
    if in_path("unshare").is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the pid-namespace tests need util-linux `unshare`, and CI=true does not allow skipping them"
        );
    }
    eprintln!("SKIPPED: the pid-namespace tests need util-linux `unshare`");
    false
}

/// The first `name` in `$PATH`.
pub fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The children of process `pid` (every thread's), as this test's pid namespace numbers them.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<i32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    children.sort_unstable();
    children
}

/// The one-letter state of process `pid` ('Z' for a zombie), or None once it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces: the state follows its last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// One finished CLI invocation.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {self:?}"))
    }
}

/// Runs `cmd` to completion, killing it and failing the test if it takes longer than DEADLINE.
pub fn run_bounded(mut cmd: Command) -> Out {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the corral CLI");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => {
            let output = output.expect("waiting for the corral CLI");
            Out {
                code: output.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            // Still unreaped (the thread is blocked in wait), so the pid is still ours.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("{cmd:?} did not finish within {DEADLINE:?}");
        }
    }
}

/// Waits at most `timeout` for `child` to exit (pidfd, no polling loop).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // Unreaped, so the pid is still this child's.
    wait_pid_exit(child.id() as i32, timeout);
    child.try_wait().ok().flatten()
}

/// Waits at most `timeout` for process `pid` (anyone's, not only a child) to end: true once it
/// has exited (a zombie counts) or is gone, false when it still runs at the deadline.
pub fn wait_pid_exit(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return nix::errno::Errno::last() == nix::errno::Errno::ESRCH;
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let mut fds = [nix::poll::PollFd::new(
            pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, ms) {
            Err(nix::errno::Errno::EINTR) => continue,
            // A pidfd is readable once its process has exited.
            Ok(n) => return n > 0,
            Err(e) => panic!("polling the pidfd of {pid}: {e}"),
        }
    }
}

/// `text` as a TOML basic string (JSON's escapes are a subset of TOML's).
pub fn toml_str(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// A unit's `[exec]` that sleeps for `arg` (`"1000"`, `"infinity"`).
pub fn sleeper(arg: &str) -> String {
    format!("[exec]\ncommand = [\"sleep\", \"{arg}\"]\n")
}

/// A unit's `[exec]` that runs `script` with `sh -c`.
pub fn shell(script: &str) -> String {
    format!("[exec]\ncommand = [\"sh\", \"-c\", {}]\n", toml_str(script))
}

/// Debian's `nobody` and `nogroup` (base-passwd fixes both): a local user that is no unit's.
pub const NOBODY: u32 = 65534;
pub const NOGROUP: u32 = 65534;

/// A port nothing listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `systemd-notify` from Debian's `systemd` package, which .ci/run installs; skips (or under
/// CI=true fails) the calling test without it.
pub fn require_systemd_notify() -> bool {
    if Path::new("/usr/bin/systemd-notify").exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("systemd-notify is missing (apt-get install systemd); CI=true does not skip");
    }
    eprintln!("SKIPPED: needs /usr/bin/systemd-notify (apt-get install systemd)");
    false
}

/// The message of a corral JSON log line ("" when it has none).
pub fn msg(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// The `unit` field of a log line ("" when it has none).
pub fn unit_of(line: &Value) -> &str {
    line["fields"]["unit"].as_str().unwrap_or("")
}

/// A line of output that `unit` itself wrote (corral logs those with target "unit").
pub fn is_output(line: &Value, unit: &str) -> bool {
    line["target"] == "unit" && unit_of(line) == unit
}

/// A supervisor message about `unit` that contains `needle`.
pub fn is_about(line: &Value, unit: &str, needle: &str) -> bool {
    line["target"] != "unit" && unit_of(line) == unit && msg(line).contains(needle)
}

/// The pid of a `reaped` debug line.
pub fn reaped_pid(line: &Value) -> Option<i64> {
    msg(line)
        .starts_with("reaped")
        .then(|| line["fields"]["pid"].as_i64())
        .flatten()
}

/// A corral supervisor with its own units dir and socket in a temp dir.
pub struct Corral {
    dir: tempfile::TempDir,
    pub units: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    /// corral's own pid when `child` is a wrapper (unshare) that runs it.
    wrapped_pid: Option<i32>,
    log: Option<Receiver<Value>>,
    /// Every log line received so far, in order.
    pub seen: Vec<Value>,
    /// `wait_log` looks at lines from here on.
    cursor: usize,
    /// This test's own cgroup root (`--cgroup-root`), unique per test and removed on drop.
    pub cgroup_root: String,
}

static NEXT_ROOT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The mounted cgroup hierarchies: (controller-or-"unified", mount point), deduplicated.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = corral::os::cgroup::discover::parse_mountinfo(&text);
    let mut all: Vec<PathBuf> = mounts
        .v1
        .into_values()
        .chain(mounts.unified)
        .map(|m| m.point)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Removes `dir` and everything below it, deepest first (cgroupfs only allows rmdir).
fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Corral {
    /// A temp dir with an empty units dir; nothing runs until `launch`.
    pub fn new() -> Corral {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let units = dir.path().join("units");
        std::fs::create_dir(&units).expect("creating the units dir");
        // A directory corral creates itself, so its mode is corral's doing.
        let socket = dir.path().join("run").join("control.sock");
        Corral {
            dir,
            units,
            socket,
            child: None,
            wrapped_pid: None,
            log: None,
            seen: Vec::new(),
            cursor: 0,
            cgroup_root: format!(
                "/corral-test-{}-{}",
                std::process::id(),
                NEXT_ROOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        }
    }

    /// A cgroup file of this test's tree in the hierarchy mounted at `/sys/fs/cgroup/<hierarchy>`
    /// (v1 on this machine), e.g. `cgroup_file("memory", "web.service/memory.limit_in_bytes")`.
    pub fn cgroup_file(&self, hierarchy: &str, rel: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(self.cgroup_root.trim_start_matches('/'))
            .join(rel)
    }

    /// A cgroup file of this test's tree, trimmed; fails the test when it cannot be read.
    pub fn cgroup_read(&self, hierarchy: &str, rel: &str) -> String {
        let path = self.cgroup_file(hierarchy, rel);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// Whether any hierarchy has `rel` (e.g. "web.service") below this test's cgroup root.
    pub fn cgroup_exists(&self, rel: &str) -> bool {
        let dir = Path::new(self.cgroup_root.trim_start_matches('/')).join(rel);
        cgroup_mounts().iter().any(|m| m.join(&dir).exists())
    }

    /// This test's cgroup root, as a cgroup path (`/corral-test-...`).
    pub fn cgroup_root_path(&self) -> &str {
        &self.cgroup_root
    }

    /// Whether any hierarchy still has this test's cgroup root.
    pub fn cgroup_root_exists(&self) -> bool {
        self.cgroup_exists("")
    }

    /// A path inside the test's temp dir (for markers and FIFOs the units use).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `units/<name>.toml`.
    pub fn unit(&self, name: &str, toml: &str) -> &Corral {
        std::fs::write(self.units.join(format!("{name}.toml")), toml).expect("writing a unit");
        self
    }

    /// Starts `corral run` with debug JSON logs and waits until it serves its socket.
    pub fn launch(&mut self, extra_args: &[&str]) -> &mut Corral {
        self.launch_with(Command::new(BIN), extra_args)
    }

    /// `launch` as an unprivileged user, who gets the temp dir (units, socket) for it.
    pub fn launch_as(&mut self, uid: u32, gid: u32, extra_args: &[&str]) -> &mut Corral {
        for dir in [self.dir.path(), &self.units] {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chowning the temp dir");
        }
        let mut cmd = Command::new(BIN);
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        self.launch_with(cmd, extra_args)
    }

    /// `launch`, with corral as PID 1 of a new pid namespace (`unshare --pid --fork`); `pid()`
    /// and `signal()` then reach corral itself (from this, the parent namespace), and
    /// `wait_exit` gives unshare's status, which is corral's exit code.
    pub fn launch_in_pid_namespace(&mut self, extra_args: &[&str]) -> &mut Corral {
        // --kill-child: should unshare die (a failed test's cleanup), corral and with it the
        // whole namespace die too.
        self.launch_wrapped(&["unshare", "--pid", "--fork", "--kill-child"], extra_args)
    }

    /// `launch` with `wrapper` (a command and its arguments) in front of the corral command
    /// line; `pid()` and `signal()` reach corral itself, found below the wrapper by its
    /// executable, and `wait_exit` gives the wrapper's status.
    pub fn launch_wrapped(&mut self, wrapper: &[&str], extra_args: &[&str]) -> &mut Corral {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(BIN);
        self.launch_with(cmd, extra_args);
        // corral logged, so it runs somewhere below the wrapper.
        let top = self.child.as_ref().expect("the wrapper was launched").id() as i32;
        let bin = std::fs::canonicalize(BIN).expect("corral's binary");
        let mut below = children_of(top);
        let mut found = None;
        while let Some(pid) = below.pop() {
            if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == bin) {
                found = Some(pid);
                break;
            }
            below.extend(children_of(pid));
        }
        let Some(corral) = found else {
            // A run that ends at once (`--exit-with` a unit that exits) may be gone before
            // the look: its last line says so. Anything else is a failure at the deadline.
            let cursor = self.cursor;
            self.wait_log(
                &format!("a corral process below {wrapper:?} (pid {top})"),
                |l| msg(l) == "corral exits",
            );
            self.cursor = cursor;
            return self;
        };
        self.wrapped_pid = Some(corral);
        self
    }

    pub fn launch_with(&mut self, mut cmd: Command, extra_args: &[&str]) -> &mut Corral {
        cmd.arg("run")
            .arg(&self.units)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--log-format", "json"])
            // Never inside the test's own cgroup: a root of its own at the top of each hierarchy.
            .args(["--cgroup-root", &self.cgroup_root])
            .args(extra_args)
            .env("CORRAL_LOG", "debug");
        self.launch_command(cmd)
    }

    /// Starts `cmd` as it is and reads its stderr as corral's log: for a container runtime
    /// whose process is `corral run` (its command line is in the runtime's own config). Set
    /// `corral_pid` once known, so the cleanup signals corral itself.
    pub fn launch_command(&mut self, mut cmd: Command) -> &mut Corral {
        let mut child = cmd
            .env_remove("CORRAL_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning corral run");
        let stderr = child.stderr.take().expect("corral's stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        self.log = Some(rx);
        // Logged once the socket is bound and listening.
        self.wait_log("corral supervising", |l| msg(l) == "corral supervising");
        self
    }

    /// corral's own pid, when it runs below what `launch_command` started.
    pub fn set_corral_pid(&mut self, pid: i32) {
        self.wrapped_pid = Some(pid);
    }

    /// The directory the control socket is in (`run/` of the temp dir).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// corral's pid (as this test's pid namespace sees it).
    pub fn pid(&self) -> i32 {
        self.wrapped_pid
            .unwrap_or_else(|| self.child.as_ref().expect("corral was launched").id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signalling corral");
    }

    /// Receives one more log line; false once the deadline passed or the log ended.
    fn pull(&mut self, deadline: Instant) -> bool {
        let Some(rx) = &self.log else { return false };
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line);
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    /// The next log line (after the previous match) for which `pred` holds.
    pub fn wait_log(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            while self.cursor < self.seen.len() {
                self.cursor += 1;
                if pred(&self.seen[self.cursor - 1]) {
                    return self.seen[self.cursor - 1].clone();
                }
            }
            if !self.pull(deadline) {
                self.fail(&format!("waiting for {what}"));
            }
        }
    }

    /// Where `wait_log` goes on from: one past the index in `seen` of its last match.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Waits until `n` lines of the whole log satisfy `pred`; returns them (the cursor stays).
    pub fn wait_count(
        &mut self,
        what: &str,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        let mut found: Vec<Value> = self.seen.iter().filter(|l| pred(l)).cloned().collect();
        while found.len() < n {
            if !self.pull(deadline) {
                self.fail(&format!("waiting for {n} x {what} (saw {})", found.len()));
            }
            let last = self.seen.last().expect("a line was just pulled");
            if pred(last) {
                found.push(last.clone());
            }
        }
        found
    }

    /// Waits (bounded) for corral to exit, then collects the rest of its log.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("corral was launched");
        let status = wait_child(child, DEADLINE);
        let Some(status) = status else {
            self.fail("waiting for corral to exit");
        };
        let deadline = Instant::now() + DEADLINE;
        while self.pull(deadline) {}
        status
    }

    /// Fails the test with what corral logged.
    pub fn fail(&self, what: &str) -> ! {
        let tail: Vec<String> = self
            .seen
            .iter()
            .rev()
            .take(80)
            .rev()
            .map(|l| {
                let fields = &l["fields"];
                let text = if fields.is_null() {
                    l.to_string()
                } else {
                    format!("{} {} {}", l["timestamp"], l["level"], fields)
                };
                text.chars().take(300).collect::<String>()
            })
            .collect();
        panic!(
            "{what}: gave up after {DEADLINE:?}; corral's log so far:\n{}",
            tail.join("\n")
        );
    }

    /// A `corral --socket SOCK ARGS...` command, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("CORRAL_SOCKET");
        cmd
    }

    /// Runs the CLI against this supervisor.
    pub fn cli(&self, args: &[&str]) -> Out {
        run_bounded(self.cmd(args))
    }

    /// Runs the CLI and requires exit 0.
    pub fn ok(&self, args: &[&str]) -> Out {
        let out = self.cli(args);
        assert_eq!(out.code, 0, "corral {args:?} failed: {out:?}");
        out
    }

    /// Waits until the `n`-th process of `unit` has reached its exec (corral confirms an exec
    /// after it logs `started`: before that, the child may still be setting itself up, its
    /// signals blocked, its oom_score_adj unwritten); returns its pid.
    pub fn wait_exec(&mut self, unit: &str, n: usize) -> i64 {
        let execs = self.wait_count(&format!("{unit}'s exec number {n}"), n, |l| {
            l["target"] != "unit" && unit_of(l) == unit && msg(l) == "exec'd"
        });
        execs[n - 1]["fields"]["pid"]
            .as_i64()
            .expect("an exec'd line carries the pid")
    }

    /// `status UNIT --json` of one unit.
    pub fn status(&self, unit: &str) -> Value {
        let out = self.cli(&["status", unit, "--json"]);
        assert!(
            out.code == 0 || out.code == 3,
            "corral status {unit} failed: {out:?}"
        );
        out.json()["units"][0].clone()
    }

    /// A raw connection to the control socket; reads give up after DEADLINE.
    pub fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).expect("connecting to the control socket");
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("setting a read timeout");
        stream
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && matches!(child.try_wait(), Ok(None))
        {
            // corral itself: a wrapper such as unshare ignores SIGTERM while it waits.
            let corral = self.wrapped_pid.unwrap_or(child.id() as i32);
            let _ = kill(Pid::from_raw(corral), Signal::SIGTERM);
            if wait_child(&mut child, DEADLINE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // corral removes its tree on a clean exit; this catches a failed test's leftovers.
        for mount in cgroup_mounts() {
            remove_cgroup_tree(&mount.join(self.cgroup_root.trim_start_matches('/')));
        }
    }
}
