//! Wiring of readiness and health: units' notify sockets and health probes in flight on the loop.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, warn};

use crate::core::exit::{ExitReport, Termination};
use crate::core::notify::{MainPidClaim, NotifyMessage, Sender, judge_main_pid};
use crate::core::notify_refusals::{Refusal, Refusals};
use crate::core::service::after;
use crate::core::supervisor::Input;
use crate::os::fd_closer::{Closer, CloserWake};
use crate::os::namespaces;
use crate::os::notify::{Datagram, NotifyDir, NotifySocket, SCM_MAX_FD};
use crate::os::pidfd;
use crate::os::probe::{NetProbe, Progress};
use crate::os::spawn;
use crate::proto::Stream;
use crate::unit::{Exec, Namespaces, Probe, Unit, UnitName};

use super::Daemon;
use super::sources::{Source, Sources, Token};

/// Datagrams read from one notify socket per wake, so one chatty unit cannot hold the loop;
/// level-triggered epoll brings the loop back for the rest after the others had their turn.
const DATAGRAMS_PER_WAKE: usize = 32;
/// Descriptors a unit may have passed whose last close has not happened yet (parked or not;
/// os/fd_closer.rs). A socket is read only while one more full message (SCM_MAX_FD) fits, so
/// corral holds at most this many per unit; the rest wait in the kernel, charged to the sender.
const FDS_IN_FLIGHT_PER_UNIT: usize = 2 * SCM_MAX_FD;
/// The closers' copies not yet parked, all units' together, may take this share of corral's
/// RLIMIT_NOFILE, so the kernel always has room to install what a message carries (what it
/// cannot install, it closes itself in the receiving thread).
const FDS_IN_FLIGHT_SHARE: u64 = 4;

/// A TCP or HTTP probe waiting on its socket.
struct NetRun {
    unit: UnitName,
    seq: u64,
    deadline: Instant,
    timeout: Duration,
    probe: NetProbe,
}

/// An exec probe's process, until it is reaped or its timeout kills it.
struct ExecRun {
    unit: UnitName,
    seq: u64,
    deadline: Instant,
    timeout: Duration,
    /// Tokens of its stdout and stderr: closed when the probe ends, whoever still holds the
    /// write ends (a process the probe left behind).
    pipes: Vec<Token>,
    /// Read once it is reaped, when nothing can write to it any more: until its exec the
    /// probe is in the unit's namespaces, where the unit may stop it (SIGSTOP), and a read
    /// before then could hold the loop for as long as the unit likes.
    exec_report: OwnedFd,
}

/// A unit's notify socket, with what keeps it from costing the loop more than its share.
struct Notify {
    token: u64,
    socket: NotifySocket,
    /// Not read (out of epoll's interest) until the closer catches up.
    paused: bool,
    refusals: Refusals,
}

/// What the daemon holds for readiness and health, keyed by unit, epoll token or pid.
pub(super) struct ReadinessChannels {
    /// `--notify-dir`, checked on first use.
    notify_dir: PathBuf,
    dir: Option<NotifyDir>,
    sockets: HashMap<UnitName, Notify>,
    /// The units whose socket has a refusal episode under way (a `Refusals::deadline`): what
    /// the loop's every turn looks at, not every socket (one per unit that ever ran).
    refusing: HashSet<UnitName>,
    /// Each unit's closer of passed descriptors (also of its retired sockets).
    closers: HashMap<UnitName, Closer>,
    /// The closers' wake-up, once the first closer exists.
    closer_wake: Option<CloserWake>,
    /// How many passed descriptors all closers together may hold.
    fds_in_flight_max: usize,
    net: HashMap<Token, NetRun>,
    exec: HashMap<i32, ExecRun>,
}

impl ReadinessChannels {
    /// `open_files`: corral's soft RLIMIT_NOFILE.
    pub(super) fn new(notify_dir: PathBuf, open_files: u64) -> ReadinessChannels {
        ReadinessChannels {
            notify_dir,
            dir: None,
            sockets: HashMap::new(),
            refusing: HashSet::new(),
            closers: HashMap::new(),
            closer_wake: None,
            fds_in_flight_max: usize::try_from(open_files / FDS_IN_FLIGHT_SHARE)
                .unwrap_or(usize::MAX)
                .max(SCM_MAX_FD),
            net: HashMap::new(),
            exec: HashMap::new(),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let net = self.net.values().map(|r| r.deadline);
        let exec = self.exec.values().map(|r| r.deadline);
        let refusals = self
            .refusing
            .iter()
            .filter_map(|u| self.sockets.get(u).and_then(|n| n.refusals.deadline()));
        net.chain(exec).chain(refusals).min()
    }

    /// A removed unit's socket closes; its probes' answers would find no unit anyway.
    pub(super) fn forget(&mut self, sources: &mut Sources, unit: &UnitName) {
        self.refusing.remove(unit);
        if let Some(notify) = self.sockets.remove(unit) {
            sources.remove(notify.socket.as_fd(), notify.token);
            self.retire(unit, notify.socket, sources);
        }
        // Dropping the closer ends its thread once its queue is closed.
        self.closers.remove(unit);
    }

    /// Unlinks a socket and has the unit's closer close it: queued messages may carry
    /// descriptors, and closing the socket closes them.
    fn retire(&mut self, unit: &UnitName, socket: NotifySocket, sources: &mut Sources) {
        let fd = socket.retire();
        self.close_passed(unit, vec![fd], sources);
    }

    /// Has the unit's closer close `fds`; they stay open when there is none to be had, the one
    /// choice that cannot block the loop.
    fn close_passed(&mut self, unit: &UnitName, fds: Vec<OwnedFd>, sources: &mut Sources) {
        if fds.is_empty() {
            return;
        }
        match self.closer(unit, sources) {
            Some(closer) => {
                if let Err(e) = closer.close(fds) {
                    warn!(unit = %unit, "starting a thread to close passed fds: {e}; they stay open");
                }
            }
            None => std::mem::forget(fds),
        }
    }

    /// The unit's closer, made on first use.
    fn closer(&mut self, unit: &UnitName, sources: &mut Sources) -> Option<&mut Closer> {
        if self.closer_wake.is_none() {
            let wake = match CloserWake::new() {
                Ok(wake) => wake,
                Err(e) => {
                    warn!(unit = %unit, "creating the eventfd of the fd closers: {e}");
                    return None;
                }
            };
            if let Err(e) = sources.add(wake.as_fd(), Source::Closers, false) {
                warn!(unit = %unit, "watching the fd closers' eventfd: {e}");
                return None;
            }
            self.closer_wake = Some(wake);
        }
        let wake = self.closer_wake.as_ref()?;
        Some(
            self.closers
                .entry(unit.clone())
                .or_insert_with(|| Closer::new(wake)),
        )
    }

    /// Whether the unit's socket may be read: one more full message fits its closer's budget
    /// and everyone's.
    fn may_read(&self, unit: &UnitName) -> bool {
        let unit_ok = self
            .closers
            .get(unit)
            .is_none_or(|c| c.in_flight() + SCM_MAX_FD <= FDS_IN_FLIGHT_PER_UNIT);
        let all_ok = self
            .closer_wake
            .as_ref()
            .is_none_or(|w| w.in_flight() + SCM_MAX_FD <= self.fds_in_flight_max);
        unit_ok && all_ok
    }

    /// Stops reading the unit's socket until its closer catches up.
    fn pause(&mut self, unit: &UnitName, sources: &Sources) {
        if let Some(n) = self.sockets.get_mut(unit)
            && !n.paused
            && sources
                .modify(n.socket.as_fd(), n.token, false, false)
                .is_ok()
        {
            n.paused = true;
        }
    }

    /// A closer finished a batch: read again the sockets that waited for it.
    pub(super) fn on_closer_wake(&mut self, sources: &Sources) {
        if let Some(wake) = &self.closer_wake {
            wake.drain();
        }
        let resumed: Vec<UnitName> = self
            .sockets
            .iter()
            .filter(|(unit, n)| n.paused && self.may_read(unit))
            .map(|(unit, _)| unit.clone())
            .collect();
        for unit in resumed {
            if let Some(n) = self.sockets.get_mut(&unit)
                && sources
                    .modify(n.socket.as_fd(), n.token, true, false)
                    .is_ok()
            {
                n.paused = false;
            }
        }
    }
}

impl Drop for ReadinessChannels {
    /// At the end, sockets are unlinked; their descriptors are left to the process's exit,
    /// where a lingering close no longer waits (inet_release skips the linger when exiting).
    fn drop(&mut self) {
        for (_, notify) in self.sockets.drain() {
            std::mem::forget(notify.socket.retire());
        }
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("no answer within {}", humantime::format_duration(timeout))
}

impl Daemon {
    /// The unit's `Exec` plus `NOTIFY_SOCKET` (and `WATCHDOG_USEC`) when it reports over
    /// sd_notify. systemd's own values win over the unit's env, as under systemd.
    pub(super) fn with_notify_env(&mut self, unit: &Unit, exec: &Exec) -> Exec {
        let mut exec = exec.clone();
        if !unit.wants_notify_socket() {
            return exec;
        }
        let Some(socket) = self.notify_socket_for(unit, &exec) else {
            return exec;
        };
        exec.env.insert("NOTIFY_SOCKET".to_owned(), socket);
        if let Some(watchdog) = unit.health.as_ref().and_then(|h| h.watchdog) {
            exec.env
                .insert("WATCHDOG_USEC".to_owned(), watchdog.as_micros().to_string());
            // Empty: spawn fills in the command's own pid, known only after the fork.
            exec.env
                .insert(spawn::WATCHDOG_PID.to_owned(), String::new());
        }
        exec
    }

    /// The path of the unit's notify socket, bound on first use and kept across its restarts;
    /// a new one when the uid it runs as changed. `None` (warned) when it cannot have one.
    fn notify_socket_for(&mut self, unit: &Unit, exec: &Exec) -> Option<String> {
        let owner = spawn::host_uid(&unit.namespaces, exec.user.as_deref());
        if self
            .readiness
            .sockets
            .get(&unit.name)
            .is_some_and(|n| n.socket.owner() != owner)
        {
            self.readiness.forget(&mut self.sources, &unit.name);
        }
        if !self.readiness.sockets.contains_key(&unit.name) {
            if self.readiness.dir.is_none() {
                match NotifyDir::prepare(&self.readiness.notify_dir) {
                    Ok(dir) => self.readiness.dir = Some(dir),
                    Err(e) => {
                        warn!(unit = %unit.name, "{e}; the unit gets no NOTIFY_SOCKET");
                        return None;
                    }
                }
            }
            let dir = self.readiness.dir.as_ref()?;
            let socket = match NotifySocket::bind(dir, unit.name.as_str(), owner) {
                Ok(socket) => socket,
                Err(e) => {
                    warn!(unit = %unit.name, "{e}; the unit gets no NOTIFY_SOCKET");
                    // Checked again next time: someone may have removed or replaced it.
                    self.readiness.dir = None;
                    return None;
                }
            };
            let source = Source::Notify {
                unit: unit.name.clone(),
            };
            let token = match self.sources.add(socket.as_fd(), source, false) {
                Ok(token) => token,
                Err(e) => {
                    warn!(unit = %unit.name, "cannot watch the unit's notify socket: {e}");
                    return None;
                }
            };
            self.readiness.sockets.insert(
                unit.name.clone(),
                Notify {
                    token,
                    socket,
                    paused: false,
                    refusals: Refusals::default(),
                },
            );
        }
        let path = self
            .readiness
            .sockets
            .get(&unit.name)?
            .socket
            .env_value()
            .to_string_lossy()
            .into_owned();
        // A private /tmp hides everything below the host's /tmp from the unit.
        if unit.sandbox.private_tmp && std::path::Path::new(&path).starts_with("/tmp") {
            warn!(
                unit = %unit.name,
                "the notify socket {path} is below /tmp, which private-tmp hides from the unit; \
                 the unit gets no NOTIFY_SOCKET (give corral a --notify-dir outside /tmp)"
            );
            return None;
        }
        Some(path)
    }

    /// A network probe's socket is ready: the probe advances, or ends.
    pub(super) fn advance_net_probe(&mut self, token: Token) {
        let now = Instant::now();
        let Some(run) = self.readiness.net.get_mut(&token) else {
            return;
        };
        match run.probe.on_ready() {
            Progress::Pending { writable } => {
                let _ = self
                    .sources
                    .modify(run.probe.as_fd(), token, !writable, writable);
            }
            Progress::Done { ok, message } => {
                if let Some(run) = self.readiness.net.remove(&token) {
                    self.sources.remove(run.probe.as_fd(), token);
                    self.probe_done(run.unit, run.seq, ok, message, now);
                }
            }
        }
    }

    /// Reads the datagrams queued on a unit's notify socket, a bounded number per wake.
    pub(super) fn drain_notify(&mut self, unit: &UnitName, now: Instant) {
        self.report_refusals_of(unit, now);
        for _ in 0..DATAGRAMS_PER_WAKE {
            if !self.readiness.may_read(unit) {
                self.readiness.pause(unit, &self.sources);
                return;
            }
            let Some(notify) = self.readiness.sockets.get(unit) else {
                return;
            };
            let mut datagram = match notify.socket.recv() {
                Ok(Some(d)) => d,
                Ok(None) => return,
                Err(e) => {
                    self.refuse(unit, now, || {
                        format!("reading the unit's notify socket: {e}")
                    });
                    return;
                }
            };
            let fds = std::mem::take(&mut datagram.fds);
            self.hear(unit, &datagram, now);
            // Let go of passed fds (a barrier's) only now: the sender waits on them, so it is
            // still found in the unit while it is checked. Their close may block: not here.
            self.readiness.close_passed(unit, fds, &mut self.sources);
        }
    }

    /// One datagram from the unit's socket: checked, parsed, fed to the core.
    fn hear(&mut self, unit: &UnitName, datagram: &Datagram, now: Instant) {
        if datagram.truncated {
            self.refuse(unit, now, || {
                format!(
                    "ignoring a notify message whose control data was cut short (more than {SCM_MAX_FD} fds?)"
                )
            });
            return;
        }
        let Some(pid) = datagram.pid else {
            self.refuse(unit, now, || {
                "ignoring a notify message without sender credentials".to_owned()
            });
            return;
        };
        if !self.belongs_to(unit, pid) {
            self.refuse(unit, now, || {
                format!("ignoring a notify message from pid {pid}: not a process of the unit")
            });
            return;
        }
        let mut message = NotifyMessage::parse(&datagram.bytes);
        let mut named = None;
        if let Some(claimed) = message.main_pid {
            message.main_pid = self
                .main_pid_claim(unit, pid, claimed, now)
                .and_then(|main| self.pin_main_pid(unit, main, now).map(|fd| (main, fd)))
                .map(|(main, fd)| {
                    named = Some((main, fd));
                    main
                });
        }
        debug!(unit = %unit, pid, "notify: {}", String::from_utf8_lossy(&datagram.bytes).escape_debug());
        if !message.is_empty() {
            self.feed(
                Input::Notify {
                    unit: unit.clone(),
                    message,
                },
                now,
            );
        }
        // Corral is not the new main process's parent: only its pidfd says when it ends.
        if let Some((main, pidfd)) = named
            && self.sup.get(unit).and_then(|(_, rt)| rt.pid) == Some(main)
        {
            self.generations
                .watch_named_main(&mut self.sources, unit, main, pidfd);
        }
    }

    /// A pidfd of `main`, taken before it becomes the unit's main process, and proof that the
    /// process it names is the unit's: a pid checked before the pidfd was opened could have
    /// ended and been given to another process in between, but not one checked after.
    fn pin_main_pid(&mut self, unit: &UnitName, main: i32, now: Instant) -> Option<OwnedFd> {
        match pidfd::open(main) {
            Ok(fd) if self.belongs_to(unit, main) => Some(fd),
            Ok(_) => {
                self.refuse(unit, now, || {
                    format!("ignoring MAINPID={main}: it ended before it could be watched")
                });
                None
            }
            Err(e) => {
                self.refuse(unit, now, || {
                    format!("ignoring MAINPID={main}: it cannot be watched: {e}")
                });
                None
            }
        }
    }

    /// Warns about a refused message, the first of an episode only; the rest are counted.
    fn refuse(&mut self, unit: &UnitName, now: Instant, what: impl FnOnce() -> String) {
        let Some(notify) = self.readiness.sockets.get_mut(unit) else {
            return;
        };
        let refusal = notify.refusals.refused(now);
        if !self.readiness.refusing.contains(unit) {
            self.readiness.refusing.insert(unit.clone());
        }
        if refusal == Refusal::Log {
            warn!(unit = %unit, "{}", what());
        }
    }

    /// The counts of refusal episodes that ended or ran a report period, every unit's.
    pub(super) fn report_notify_refusals(&mut self, now: Instant) {
        let readiness = &mut self.readiness;
        let sockets = &readiness.sockets;
        // A socket replaced (its unit's uid changed) starts with no episode.
        readiness.refusing.retain(|u| {
            sockets
                .get(u)
                .is_some_and(|n| n.refusals.deadline().is_some())
        });
        let due: Vec<UnitName> = readiness
            .refusing
            .iter()
            .filter(|u| {
                sockets
                    .get(*u)
                    .and_then(|n| n.refusals.deadline())
                    .is_some_and(|d| d <= now)
            })
            .cloned()
            .collect();
        for unit in due {
            self.report_refusals_of(&unit, now);
        }
    }

    fn report_refusals_of(&mut self, unit: &UnitName, now: Instant) {
        let Some(notify) = self.readiness.sockets.get_mut(unit) else {
            return;
        };
        if let Some(s) = notify.refusals.due(now) {
            let over = Duration::from_millis(s.over.as_millis() as u64);
            warn!(
                unit = %unit,
                "{} more notify messages refused over {} (only the first was logged)",
                s.count,
                humantime::format_duration(over)
            );
        }
        if notify.refusals.deadline().is_none() {
            self.readiness.refusing.remove(unit);
        }
    }

    /// The new main process a `MAINPID=` from `sender` gives, if any (see `judge_main_pid`).
    fn main_pid_claim(
        &mut self,
        unit: &UnitName,
        sender: i32,
        claimed: i32,
        now: Instant,
    ) -> Option<i32> {
        let (config, rt) = self.sup.get(unit)?;
        let sender = Sender {
            pid: sender,
            lineage: namespaces::lineage(sender),
        };
        match judge_main_pid(claimed, &sender, rt.pid, config.namespaces.pid) {
            MainPidClaim::Accept(main) if self.belongs_to(unit, main) => Some(main),
            MainPidClaim::Accept(main) => {
                self.refuse(unit, now, || {
                    format!(
                        "ignoring MAINPID={main} from pid {}: not a process of the unit",
                        sender.pid
                    )
                });
                None
            }
            MainPidClaim::Unchanged => None,
            MainPidClaim::Refuse(why) => {
                self.refuse(unit, now, || format!("{why} (from pid {})", sender.pid));
                None
            }
        }
    }

    /// Whether `pid` may speak for the unit. systemd attributes a message by its sender's
    /// cgroup, or, when the sender is gone already, by the pids it tracks (the main process);
    /// the main pid is checked first, so a main process that exited right after sending
    /// (as `systemd-notify` may) is still heard.
    fn belongs_to(&self, unit: &UnitName, pid: i32) -> bool {
        let main = self.sup.get(unit).and_then(|(_, rt)| rt.pid);
        main == Some(pid) || self.members.contains(unit, pid)
    }

    /// Starts probe `seq` of `unit`; an answer known at once comes back as the follow-up input.
    pub(super) fn start_probe(&mut self, unit: &Unit, seq: u64, now: Instant) -> Option<Input> {
        let failed = |message: String| {
            Some(Input::ProbeDone {
                unit: unit.name.clone(),
                seq,
                ok: false,
                message,
            })
        };
        let Some(cfg) = unit.health.as_ref().and_then(|h| h.probe.as_ref()) else {
            return failed("the unit has no probe".to_owned());
        };
        // Until its exec the main process may not have built its namespaces yet: a probe would
        // enter (or connect from) corral's own. While starting, a failure only delays readiness
        // (by one interval, where `initial-delay` is shorter than the way to the exec).
        if *unit.namespaces != Namespaces::default() && self.exec_pending(&unit.name).is_some() {
            return failed("the unit has not reached its exec yet".to_owned());
        }
        // A probe's child would freeze in the unit's cgroup before its exec; a frozen service
        // does not answer either (as a paused container fails its probes).
        if self.members.is_frozen(&unit.name) {
            return failed("the unit is frozen".to_owned());
        }
        let connect = || match &cfg.probe {
            Probe::Tcp(addr) => Some(NetProbe::tcp(*addr)),
            Probe::Http(target) => Some(NetProbe::http(target)),
            Probe::Exec(_) => None,
        };
        // A unit with its own network has its own loopback: the probe connects from there.
        let main_pid = self.sup.get(&unit.name).and_then(|(_, rt)| rt.pid);
        let started = match (unit.namespaces.net, main_pid) {
            (true, Some(pid)) => {
                namespaces::within_net_namespace_of(pid, connect).unwrap_or_else(|e| Some(Err(e)))
            }
            _ => connect(),
        };
        let started = match (started, &cfg.probe) {
            (Some(started), _) => started,
            (None, Probe::Exec(argv)) => return self.start_exec_probe(unit, argv, seq, now),
            (None, _) => return failed("the probe has no address".to_owned()),
        };
        let (probe, progress) = match started {
            Ok(started) => started,
            Err(e) => return failed(e),
        };
        match progress {
            Progress::Done { ok, message } => Some(Input::ProbeDone {
                unit: unit.name.clone(),
                seq,
                ok,
                message,
            }),
            Progress::Pending { writable } => {
                let token = match self.sources.add(probe.as_fd(), Source::NetProbe, writable) {
                    Ok(token) => token,
                    Err(e) => return failed(format!("registering the probe with epoll: {e}")),
                };
                self.readiness.net.insert(
                    token,
                    NetRun {
                        unit: unit.name.clone(),
                        seq,
                        deadline: after(now, cfg.timeout),
                        timeout: cfg.timeout,
                        probe,
                    },
                );
                None
            }
        }
    }

    /// An exec probe runs as the unit's user, with its env and working directory, inside its
    /// cgroup, namespaces and sandbox.
    fn start_exec_probe(
        &mut self,
        unit: &Unit,
        argv: &[String],
        seq: u64,
        now: Instant,
    ) -> Option<Input> {
        let failed = |message: &str| {
            Some(Input::ProbeDone {
                unit: unit.name.clone(),
                seq,
                ok: false,
                message: message.to_owned(),
            })
        };
        // Validation makes both present; answering anyway keeps the core from waiting forever.
        let Some(cfg) = unit.health.as_ref().and_then(|h| h.probe.as_ref()) else {
            return failed("the unit has no probe");
        };
        let Some(base) = unit.exec.as_ref() else {
            return failed("the unit has no [exec]");
        };
        let exec = Exec {
            command: argv.to_vec(),
            ..base.clone()
        };
        let join = self.members.join_running(&unit.name);
        // The probe sees what the unit sees: its cgroup, namespaces and sandbox.
        let confine = spawn::Confinement {
            namespaces: &unit.namespaces,
            sandbox: &unit.sandbox,
            enter: self.sup.get(&unit.name).and_then(|(_, rt)| rt.pid),
        };
        // The exec's outcome is read when the probe is reaped (see `ExecRun::exec_report`).
        let spawned = spawn::spawn(
            &exec,
            exec.user.as_deref(),
            &join,
            unit.oom.score_adjust,
            confine,
        );
        match spawned {
            Ok(child) => {
                debug!(unit = %unit.name, pid = child.pid, "health probe spawned");
                let pipes = [
                    (Stream::Stdout, child.stdout),
                    (Stream::Stderr, child.stderr),
                ]
                .into_iter()
                .filter_map(|(stream, fd)| self.watch_pipe_as(&unit.name, stream, fd, true))
                .collect();
                self.readiness.exec.insert(
                    child.pid,
                    ExecRun {
                        unit: unit.name.clone(),
                        seq,
                        deadline: after(now, cfg.timeout),
                        timeout: cfg.timeout,
                        pipes,
                        exec_report: child.exec_report,
                    },
                );
                None
            }
            Err(e) => Some(Input::ProbeDone {
                unit: unit.name.clone(),
                seq,
                ok: false,
                message: format!("cannot run the probe: {e}"),
            }),
        }
    }

    /// A reaped pid that was an exec probe: its exit is the probe's verdict. True if it was one.
    pub(super) fn exec_probe_exited(
        &mut self,
        pid: i32,
        termination: Termination,
        now: Instant,
    ) -> bool {
        let Some(run) = self.readiness.exec.remove(&pid) else {
            return false;
        };
        self.end_exec_probe(pid, &run);
        // Reaped, so nothing writes to the report any more: this read does not wait.
        let (ok, message) = match spawn::exec_outcome(&run.exec_report) {
            Err(e) => (false, format!("cannot run the probe: {e}")),
            Ok(()) => {
                let exit = ExitReport {
                    termination,
                    oom: false,
                };
                (termination == Termination::Exited(0), exit.to_string())
            }
        };
        self.probe_done(run.unit, run.seq, ok, message, now);
        true
    }

    /// Whatever a finished probe left behind goes with it: the rest of its process group
    /// (made by its setsid) is killed and its output pipes are closed. A process that left
    /// the group (its own setsid) is a process of the unit like any other, in its cgroup until
    /// the unit stops; corral's descriptors do not wait for it.
    ///
    /// The group id is the probe's pid, which stays allocated while anything is left in the
    /// group (a pid is freed only once no process uses it as pid, group or session id), so
    /// the group signalled is this probe's; an empty group's id could name another only if
    /// the kernel handed the number out again, wrapping around pid_max, within this turn of
    /// the loop since the reap.
    fn end_exec_probe(&mut self, pid: i32, run: &ExecRun) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), Signal::SIGKILL);
        for &token in &run.pipes {
            self.close_pipe(token);
        }
    }

    /// Probes past their timeout fail; an exec probe's process is killed (still unreaped,
    /// so its pid is still ours).
    pub(super) fn expire_probes(&mut self, now: Instant) {
        let late: Vec<Token> = self
            .readiness
            .net
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(run) = self.readiness.net.remove(&token) {
                self.sources.remove(run.probe.as_fd(), token);
                let (ok, message) = run
                    .probe
                    .verdict()
                    .unwrap_or_else(|| (false, timed_out(run.timeout)));
                self.probe_done(run.unit, run.seq, ok, message, now);
            }
        }
        let late: Vec<i32> = self
            .readiness
            .exec
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(p, _)| *p)
            .collect();
        for pid in late {
            if let Some(run) = self.readiness.exec.remove(&pid) {
                // The probe itself too: one stopped before its setsid is in no group of its own.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                self.end_exec_probe(pid, &run);
                self.probe_done(run.unit, run.seq, false, timed_out(run.timeout), now);
            }
        }
    }

    fn probe_done(&mut self, unit: UnitName, seq: u64, ok: bool, message: String, now: Instant) {
        debug!(unit = %unit, seq, ok, "health probe: {message}");
        self.feed(
            Input::ProbeDone {
                unit,
                seq,
                ok,
                message,
            },
            now,
        );
    }
}
