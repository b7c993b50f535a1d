//! Wiring of readiness and health: units' notify sockets and health probes in flight on the loop.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, warn};

use crate::core::exit::{ExitReport, Termination};
use crate::core::notify::{MainPidClaim, NotifyMessage, Sender, judge_main_pid};
use crate::core::service::after;
use crate::core::supervisor::Input;
use crate::os::namespaces;
use crate::os::notify::NotifySocket;
use crate::os::poller::Poller;
use crate::os::probe::{NetProbe, Progress};
use crate::os::spawn;
use crate::proto::Stream;
use crate::unit::{Exec, Namespaces, Probe, Unit, UnitName};

use super::Daemon;

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
    pipes: Vec<u64>,
    /// Read once it is reaped, when nothing can write to it any more: until its exec the
    /// probe is in the unit's namespaces, where the unit may stop it (SIGSTOP), and a read
    /// before then could hold the loop for as long as the unit likes.
    exec_report: OwnedFd,
}

/// What the daemon holds for readiness and health, keyed by epoll token or pid.
#[derive(Default)]
pub(super) struct Readiness {
    sockets: HashMap<UnitName, (u64, NotifySocket)>,
    socket_tokens: HashMap<u64, UnitName>,
    net: HashMap<u64, NetRun>,
    exec: HashMap<i32, ExecRun>,
}

impl Readiness {
    pub(super) fn owns(&self, token: u64) -> bool {
        self.socket_tokens.contains_key(&token) || self.net.contains_key(&token)
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let net = self.net.values().map(|r| r.deadline);
        let exec = self.exec.values().map(|r| r.deadline);
        net.chain(exec).min()
    }

    /// A removed unit's socket closes; its probes' answers would find no unit anyway.
    pub(super) fn forget(&mut self, poller: &Poller, unit: &UnitName) {
        if let Some((token, socket)) = self.sockets.remove(unit) {
            self.socket_tokens.remove(&token);
            let _ = poller.remove(socket.as_fd());
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
        if !self.readiness.sockets.contains_key(&unit.name) {
            let name = format!("corral/{}/notify/{}", std::process::id(), unit.name);
            match NotifySocket::bind(&name) {
                Ok(socket) => {
                    let token = self.token();
                    if let Err(e) = self.poller.add(socket.as_fd(), token, false) {
                        warn!(unit = %unit.name, "cannot watch the unit's notify socket: {e}");
                        return exec;
                    }
                    self.readiness
                        .socket_tokens
                        .insert(token, unit.name.clone());
                    self.readiness
                        .sockets
                        .insert(unit.name.clone(), (token, socket));
                }
                Err(e) => {
                    warn!(unit = %unit.name, "{e}; the unit gets no NOTIFY_SOCKET");
                    return exec;
                }
            }
        }
        if let Some((_, socket)) = self.readiness.sockets.get(&unit.name) {
            exec.env
                .insert("NOTIFY_SOCKET".to_owned(), socket.env_value());
        }
        if let Some(watchdog) = unit.health.as_ref().and_then(|h| h.watchdog) {
            exec.env
                .insert("WATCHDOG_USEC".to_owned(), watchdog.as_micros().to_string());
            // Empty: spawn fills in the command's own pid, known only after the fork.
            exec.env
                .insert(spawn::WATCHDOG_PID.to_owned(), String::new());
        }
        exec
    }

    /// Reads every queued datagram of a notify socket or advances a network probe.
    pub(super) fn on_readiness_event(&mut self, token: u64) {
        let now = Instant::now();
        if let Some(unit) = self.readiness.socket_tokens.get(&token).cloned() {
            self.drain_notify(&unit, now);
            return;
        }
        let Some(run) = self.readiness.net.get_mut(&token) else {
            return;
        };
        match run.probe.on_ready() {
            Progress::Pending { writable } => {
                let _ = self
                    .poller
                    .modify(run.probe.as_fd(), token, !writable, writable);
            }
            Progress::Done { ok, message } => {
                if let Some(run) = self.readiness.net.remove(&token) {
                    let _ = self.poller.remove(run.probe.as_fd());
                    self.probe_done(run.unit, run.seq, ok, message, now);
                }
            }
        }
    }

    fn drain_notify(&mut self, unit: &UnitName, now: Instant) {
        // Bounded per wake so one chatty unit cannot hold the loop; level-triggered epoll
        // brings us back for the rest.
        for _ in 0..64 {
            let Some((_, socket)) = self.readiness.sockets.get(unit) else {
                return;
            };
            let datagram = match socket.recv() {
                Ok(Some(d)) => d,
                Ok(None) => return,
                Err(e) => {
                    warn!(unit = %unit, "reading the unit's notify socket: {e}");
                    return;
                }
            };
            let Some(pid) = datagram.pid else {
                warn!(unit = %unit, "ignoring a notify message without sender credentials");
                continue;
            };
            if !self.belongs_to(unit, pid) {
                warn!(unit = %unit, pid, "ignoring a notify message from pid {pid}: not a process of the unit");
                continue;
            }
            // `datagram` (with any barrier fd) lives to the end of this iteration: the sender
            // is still waiting, so still findable in the unit, while it is checked.
            let mut message = NotifyMessage::parse(&datagram.bytes);
            if let Some(claimed) = message.main_pid {
                message.main_pid = self.main_pid_claim(unit, pid, claimed);
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
        }
    }

    /// The new main process a `MAINPID=` from `sender` gives, if any (see `judge_main_pid`).
    fn main_pid_claim(&self, unit: &UnitName, sender: i32, claimed: i32) -> Option<i32> {
        let (config, rt) = self.sup.get(unit)?;
        let sender = Sender {
            pid: sender,
            lineage: namespaces::lineage(sender),
        };
        match judge_main_pid(claimed, &sender, rt.pid, config.namespaces.pid) {
            MainPidClaim::Accept(main) if self.belongs_to(unit, main) => Some(main),
            MainPidClaim::Accept(main) => {
                warn!(unit = %unit, pid = sender.pid, "ignoring MAINPID={main}: not a process of the unit");
                None
            }
            MainPidClaim::Unchanged => None,
            MainPidClaim::Refuse(why) => {
                warn!(unit = %unit, pid = sender.pid, "{why}");
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
        if unit.namespaces != Namespaces::default() && self.exec_pending(&unit.name).is_some() {
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
                let token = self.token();
                if let Err(e) = self.poller.add(probe.as_fd(), token, writable) {
                    return failed(format!("registering the probe with epoll: {e}"));
                }
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
            exec.user.as_ref(),
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
        let late: Vec<u64> = self
            .readiness
            .net
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(run) = self.readiness.net.remove(&token) {
                let _ = self.poller.remove(run.probe.as_fd());
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
