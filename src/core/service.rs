//! One unit's runtime state machine: a single transition function over (state, event).

use std::time::{Duration, Instant};

use crate::core::backoff::{StartHistory, restart_delay};
use crate::core::exit::{ExitReport, SpawnFailure, policy_restarts};
use crate::core::notify::NotifyMessage;
use crate::core::pressure::{Due, Observation, PressureWatch};
use crate::core::signal::Signal;
use crate::unit::{PressureAction, Rare, ReadyMode, RestartPolicy, Unit, UnitKind};

/// A unit's states, as `status` shows them (docs/protocol.md, UnitStatus `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Inactive,
    Starting,
    Running,
    Stopping,
    Backoff,
    Exited,
    Failed,
    /// Slices only.
    Active,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Active => "active",
        }
    }

    /// A process of the unit may be alive.
    pub fn has_process(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
}

/// What the operator, the unit file (`enabled`) or a unit that requires this one and wants to
/// be up wants: the reconciler drives `State` towards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Up,
    Down,
}

/// Why a stop was begun; only a stop with no reason of the policy's own prevents a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A user's `stop` (or a stop propagated from one through `requires`).
    User,
    /// A user's `restart`: start again as soon as the process is gone.
    Restart,
    /// `[oom] action = "restart"`: like a user's restart, and not a failure (docs/units.md,
    /// "Acting before the OOM killer").
    Pressure,
    /// A required unit stopped or failed; start again when it is back.
    Dependency,
    Shutdown,
    /// corral gave up on the unit: its stop counts as a failure, for the restart policy.
    Failed(FailureCause),
}

/// Why corral itself ended a unit's run (shown as `last_exit.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// Not ready within `start-timeout`.
    StartTimeout,
    /// The health probe failed `failure-threshold` times in a row.
    Health,
    /// No `WATCHDOG=1` within the watchdog timeout (or `WATCHDOG=trigger`).
    Watchdog,
}

impl FailureCause {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::StartTimeout => "start-timeout",
            FailureCause::Health => "health",
            FailureCause::Watchdog => "watchdog",
        }
    }
}

/// The outcome of one health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub ok: bool,
    /// What the probe saw ("HTTP 200", "connection refused", "exit code 1").
    pub message: String,
    pub at: Instant,
}

/// A health probe's schedule and its run of consecutive results, for one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeTrack {
    next_at: Option<Instant>,
    /// The probe running now: its number and when it started.
    in_flight: Option<(u64, Instant)>,
    seq: u64,
    pub successes: u32,
    pub failures: u32,
    /// `success-threshold` was reached this generation.
    pub passed: bool,
    pub last: Option<ProbeReport>,
}

crate::shared_default!(ProbeTrack, crate::core::pressure::PressureWatch);

/// Events the supervisor feeds into one unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The reconciler decided the unit may start now.
    Start,
    Spawned {
        pid: i32,
    },
    SpawnFailed {
        error: SpawnFailure,
    },
    Exited(ExitReport),
    /// No process of the unit is left (its cgroup, or its process group, is empty).
    UnitEmpty,
    Stop(StopReason),
    /// The unit's own deadline (backoff end, stop or start timeout, watchdog, probe due) has come.
    DeadlineReached,
    /// A datagram on the unit's notify socket from one of its processes (the daemon checked).
    Notify(NotifyMessage),
    /// The main process reached its exec (the daemon read its empty exec report).
    Execd,
    /// A line of the unit's output matched its `ready-pattern` (the daemon matched it).
    ReadyLine,
    /// A user froze (`true`) or thawed (`false`) every process of the unit: a frozen unit
    /// cannot answer its watchdog or a probe, so neither is held against it.
    Frozen(bool),
    /// Probe number `seq` finished.
    ProbeDone {
        seq: u64,
        ok: bool,
        message: String,
    },
    /// A shutdown gives up on a stopping unit whose processes outlived their SIGKILL (frozen,
    /// in uninterruptible sleep): `left` says what was left, for the record.
    Abandoned {
        left: String,
    },
    /// What the daemon saw of the unit's memory (usage, or its PSI trigger firing).
    Pressure(Observation),
}

/// What one transition asks the outside world to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    /// Send this signal to every process of the unit.
    Signal(Signal),
    /// SIGKILL every process left in the unit.
    KillAll,
    /// Run health probe number `seq`; answer with `ProbeDone`.
    Probe {
        seq: u64,
    },
    /// A line for the supervisor's log.
    Note {
        warn: bool,
        message: String,
    },
}

/// Runtime facts of one unit; everything `status` shows comes from here.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub state: State,
    pub want: Want,
    pub pid: Option<i32>,
    pub since: Instant,
    /// Automatic restarts since corral started (a user's restart is not counted).
    pub restarts: u32,
    /// OOM kills in the unit's cgroup (main process or not), as the kernel counted them.
    pub oom_kills: u32,
    pub last_oom_at: Option<Instant>,
    pub last_exit: Option<ExitReport>,
    /// Set when corral ended the last run itself (start timeout, health, watchdog).
    pub last_exit_cause: Option<FailureCause>,
    pub error: Option<String>,
    /// Episodes of memory pressure and the actions taken (core/pressure.rs).
    pub pressure: Rare<PressureWatch>,
    /// Restarts by `[oom] action = "restart"` since corral started (not in `restarts`).
    pub pressure_restarts: u32,
    /// The last run was ended by a pressure restart (`last_exit.reason` "memory-pressure").
    pub last_exit_by_pressure: bool,
    /// The last `STATUS=` the unit sent this generation.
    pub notify_status: Option<String>,
    /// `READY=1` arrived this generation.
    pub ready_notified: bool,
    /// A line matching `ready-pattern` came this generation.
    pub ready_line_seen: bool,
    /// `STOPPING=1` arrived this generation.
    pub stopping_notified: bool,
    pub probe: Rare<ProbeTrack>,
    /// The watchdog fires at this moment unless a `WATCHDOG=1` pushes it on.
    watchdog_at: Option<Instant>,
    /// `WATCHDOG_USEC=` from the unit overrides the file's `watchdog` for this generation.
    watchdog_override: Option<Duration>,
    consecutive_failures: u32,
    history: StartHistory,
    running_since: Option<Instant>,
    deadline: Option<Instant>,
    stop_reason: Option<StopReason>,
    /// Set when the backoff timer ended: the next start is an automatic restart.
    restart_due: bool,
    /// Set when a pressure restart's stop ended: the next start does not count towards the
    /// start limit (it is not a failure, and the cool-down bounds how often it comes).
    pressure_start_due: bool,
    /// While stopping: the unit was seen empty before its main process was reaped.
    emptied: bool,
    /// A user froze the unit: its watchdog and probes wait for the thaw.
    frozen: bool,
    /// The main process of a unit with namespaces has not reached its exec: until then it
    /// may not have built them, and a probe would enter (or connect from) corral's own.
    awaiting_exec: bool,
}

impl Runtime {
    pub fn new(now: Instant, want: Want) -> Runtime {
        Runtime {
            state: State::Inactive,
            want,
            pid: None,
            since: now,
            restarts: 0,
            oom_kills: 0,
            last_oom_at: None,
            last_exit: None,
            last_exit_cause: None,
            error: None,
            pressure: Rare::default(),
            pressure_restarts: 0,
            last_exit_by_pressure: false,
            notify_status: None,
            ready_notified: false,
            ready_line_seen: false,
            stopping_notified: false,
            probe: Rare::default(),
            watchdog_at: None,
            watchdog_override: None,
            consecutive_failures: 0,
            history: StartHistory::default(),
            running_since: None,
            deadline: None,
            stop_reason: None,
            restart_due: false,
            pressure_start_due: false,
            emptied: false,
            frozen: false,
            awaiting_exec: false,
        }
    }

    /// The unit's output lines are worth matching against its `ready-pattern`: a started run
    /// still waits for its line. (The daemon asks before it runs a regex on each line.)
    pub fn awaits_ready_line(&self, unit: &Unit) -> bool {
        unit.readiness.mode == ReadyMode::LogLine
            && self.state == State::Starting
            && self.pid.is_some()
            && !self.ready_line_seen
    }

    /// The earliest of the unit's timers: its state's deadline, the watchdog, the next probe.
    pub fn deadline(&self) -> Option<Instant> {
        let probe_due = self
            .probe
            .next_at
            .filter(|_| self.probe.in_flight.is_none() && !self.awaiting_exec);
        // Only a run has pressure episodes: in another state the unit's deadline is its own.
        let pressure_due = self
            .pressure
            .deadline()
            .filter(|_| matches!(self.state, State::Starting | State::Running));
        [self.deadline, self.watchdog_at, probe_due, pressure_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// The watchdog timeout in force: the unit's `WATCHDOG_USEC=`, else its file's.
    pub fn watchdog_timeout(&self, unit: &Unit) -> Option<Duration> {
        self.watchdog_override
            .or_else(|| unit.health.as_ref().and_then(|h| h.watchdog))
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The kernel counted `count` more OOM kills in the unit's cgroup.
    pub fn record_oom_kills(&mut self, count: u32, now: Instant) {
        if count > 0 {
            self.oom_kills = self.oom_kills.saturating_add(count);
            self.last_oom_at = Some(now);
        }
    }

    /// Forget failures and start history: a user's explicit start gives the unit a clean slate.
    pub fn reset_for_user_start(&mut self, now: Instant) {
        self.consecutive_failures = 0;
        self.history.clear();
        self.error = None;
        if matches!(self.state, State::Exited | State::Failed | State::Backoff) {
            self.enter(State::Inactive, now);
            self.deadline = None;
            self.restart_due = false;
        }
    }

    fn enter(&mut self, state: State, now: Instant) {
        if self.state != state {
            self.state = state;
            self.since = now;
        }
    }

    /// The one transition function. Events that make no sense in a state are ignored.
    pub fn transition(&mut self, event: Event, now: Instant, unit: &Unit) -> Vec<Action> {
        use State::*;
        let mut actions = Vec::new();
        match (self.state, event) {
            (Inactive, Event::Start) => {
                if self.restart_due {
                    self.restarts += 1;
                    self.restart_due = false;
                }
                if !std::mem::take(&mut self.pressure_start_due) {
                    self.history.record(now, unit.restart.start_limit_interval);
                }
                self.pressure.new_run();
                self.error = None;
                self.deadline = None;
                self.notify_status = None;
                self.ready_notified = false;
                self.ready_line_seen = false;
                self.stopping_notified = false;
                // Probe numbers keep counting across runs: a late answer to the last run's probe
                // must not pass for this run's.
                self.probe = ProbeTrack {
                    seq: self.probe.seq,
                    ..ProbeTrack::default()
                }
                .into();
                self.watchdog_override = None;
                self.watchdog_at = None;
                self.frozen = false;
                self.enter(Starting, now);
                actions.push(Action::Spawn);
            }
            (Starting, Event::Spawned { pid }) => {
                self.pid = Some(pid);
                self.awaiting_exec = *unit.namespaces != crate::unit::Namespaces::default();
                // A oneshot stays `starting` until its process has exited successfully.
                if unit.kind != UnitKind::Oneshot {
                    self.watchdog_at = self.watchdog_timeout(unit).map(|t| after(now, t));
                    if let Some(cfg) = unit.health.as_ref().and_then(|h| h.probe.as_ref()) {
                        self.probe.next_at = Some(after(now, cfg.initial_delay));
                    }
                    if unit.gates_readiness() {
                        self.deadline = Some(after(now, unit.readiness.start_timeout));
                    } else {
                        self.become_ready(now, unit, &mut actions);
                    }
                }
            }
            (Starting | Running, Event::Notify(msg)) => {
                self.on_notify(msg, now, unit, &mut actions);
            }
            // Only a started run waits for its line: before the spawn there is no output of
            // this run, and once running a matching line means nothing more.
            (Starting, Event::ReadyLine) if self.awaits_ready_line(unit) => {
                self.ready_line_seen = true;
                if self.gates_passed(unit) {
                    self.become_ready(now, unit, &mut actions);
                }
            }
            // Its probes, held back until now, are due as they were.
            (Starting | Running, Event::Execd) => {
                self.awaiting_exec = false;
            }
            (Starting | Running, Event::Frozen(frozen)) => {
                self.on_frozen(frozen, now, unit);
            }
            (Starting | Running, Event::ProbeDone { seq, ok, message }) => {
                self.on_probe_done(seq, ok, message, now, unit, &mut actions);
            }
            (Starting | Running, Event::DeadlineReached) => {
                self.on_timers(now, unit, &mut actions);
            }
            (Starting | Running, Event::Pressure(observation)) => {
                let policy = unit.oom.pressure.as_ref();
                if let Some(due) = self.pressure.observe(observation, policy, now) {
                    self.act_on_pressure(due, now, unit, &mut actions);
                }
            }
            // Before its exec (`Running` already when nothing gates readiness).
            (Starting | Running, Event::SpawnFailed { error }) => {
                self.disarm_timers();
                self.deadline = None;
                self.pid = None;
                let why = format!("cannot be spawned: {error}");
                self.error = Some(error.message.clone());
                // A resource that comes back is tried again after the backoff, as a failed run
                // would be; anything else needs someone to change something.
                if error.is_transient() && unit.restart.policy != RestartPolicy::Never {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                    self.backoff(why, true, now, unit, &mut actions);
                } else {
                    self.enter(Failed, now);
                    actions.push(note(true, why));
                }
            }
            (Starting | Running, Event::Exited(exit)) => {
                self.record_exit(exit, None, &mut actions);
                self.after_unexpected_exit(exit, None, now, unit, &mut actions);
            }
            (Stopping, Event::Exited(exit)) if self.failure_stop().is_some() => {
                let cause = self.failure_stop();
                self.record_exit(exit, cause, &mut actions);
                self.deadline = None;
                self.stop_reason = None;
                self.after_unexpected_exit(exit, cause, now, unit, &mut actions);
            }
            // The main process is gone, but what it left (killed with it) may still be dying:
            // the unit stays `stopping` until it is empty, so a stop answers, a restart starts
            // and a shutdown moves on only once no process of the unit is left.
            (Stopping, Event::Exited(exit)) => {
                self.record_exit(exit, None, &mut actions);
                if self.emptied {
                    self.finish_stop(now, &mut actions);
                }
            }
            (Stopping, Event::UnitEmpty) => {
                self.emptied = true;
                if self.pid.is_none() {
                    self.finish_stop(now, &mut actions);
                }
            }
            (Starting | Running, Event::Stop(reason)) => {
                self.disarm_timers();
                self.emptied = false;
                self.stop_reason = Some(reason);
                self.deadline = Some(after(now, unit.stop.timeout));
                self.enter(Stopping, now);
                actions.push(Action::Signal(unit.stop.signal.0));
            }
            // A later stop reason (e.g. shutdown during a restart) wins: nothing starts after it.
            (Stopping, Event::Stop(reason))
                if !matches!(reason, StopReason::Restart | StopReason::Pressure) =>
            {
                self.stop_reason = Some(reason);
            }
            // A stopped unit reads `inactive` whatever its last run did; last_exit keeps that.
            (Backoff | Inactive | Exited | Failed, Event::Stop(_)) => {
                self.deadline = None;
                self.restart_due = false;
                self.enter(Inactive, now);
            }
            (Backoff, Event::DeadlineReached) => {
                self.deadline = None;
                self.restart_due = true;
                self.enter(Inactive, now);
            }
            (Stopping, Event::Abandoned { left }) => {
                let error = format!("abandoned: {left} outlived SIGKILL");
                actions.push(note(
                    true,
                    format!("{error}; the shutdown goes on without it"),
                ));
                self.disarm_timers();
                self.pid = None;
                self.deadline = None;
                self.stop_reason = None;
                self.emptied = false;
                self.error = Some(error);
                self.enter(Failed, now);
            }
            (Stopping, Event::DeadlineReached) => {
                self.deadline = None;
                actions.push(note(
                    true,
                    format!(
                        "did not stop within {}; sending SIGKILL",
                        humantime::format_duration(unit.stop.timeout)
                    ),
                ));
                actions.push(Action::KillAll);
            }
            _ => {}
        }
        actions
    }

    fn finish_stop(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let how = self
            .last_exit
            .map_or_else(|| "no exit seen".to_owned(), |e| e.to_string());
        if self.stop_reason == Some(StopReason::Pressure) {
            self.pressure_start_due = true;
            actions.push(note(
                false,
                format!("stopped for a memory-pressure restart ({how}); starting again"),
            ));
        } else {
            actions.push(note(false, format!("stopped ({how})")));
        }
        self.deadline = None;
        self.stop_reason = None;
        self.emptied = false;
        self.enter(State::Inactive, now);
    }

    /// The unit is ready: `running` from now on, and its dependents may start.
    fn become_ready(&mut self, now: Instant, unit: &Unit, actions: &mut Vec<Action>) {
        self.deadline = None;
        self.running_since = Some(now);
        self.enter(State::Running, now);
        if unit.gates_readiness() {
            let how = match (unit.readiness.mode, self.probe.passed) {
                (ReadyMode::Notify, true) => "READY=1 and the health probe",
                (ReadyMode::Notify, false) => "READY=1",
                (ReadyMode::LogLine, true) => "a line matched ready-pattern, and the health probe",
                (ReadyMode::LogLine, false) => "a line matched ready-pattern",
                (ReadyMode::Started, _) => "the health probe",
            };
            actions.push(note(false, format!("ready ({how})")));
        }
    }

    /// Every readiness gate of the unit is passed.
    fn gates_passed(&self, unit: &Unit) -> bool {
        let notified = match unit.readiness.mode {
            ReadyMode::Started => true,
            ReadyMode::Notify => self.ready_notified,
            ReadyMode::LogLine => self.ready_line_seen,
        };
        let has_probe = unit.health.as_ref().is_some_and(|h| h.probe.is_some());
        notified && (!has_probe || self.probe.passed)
    }

    fn on_notify(
        &mut self,
        msg: NotifyMessage,
        now: Instant,
        unit: &Unit,
        actions: &mut Vec<Action>,
    ) {
        if let Some(status) = msg.status {
            self.notify_status = Some(status);
        }
        if let Some(pid) = msg.main_pid
            && self.pid != Some(pid)
        {
            actions.push(note(
                false,
                format!("main process is now pid {pid} (MAINPID=)"),
            ));
            self.pid = Some(pid);
        }
        if let Some(usec) = msg.watchdog_usec {
            self.watchdog_override = Some(Duration::from_micros(usec));
        }
        if (msg.watchdog_ping || msg.watchdog_usec.is_some())
            && !self.stopping_notified
            && let Some(timeout) = self.watchdog_timeout(unit)
        {
            self.watchdog_at = Some(after(now, timeout));
        }
        if msg.stopping && !self.stopping_notified {
            self.stopping_notified = true;
            // A service on its way out fails its probes and stops pinging: neither is a hang.
            self.watchdog_at = None;
            self.probe.next_at = None;
            actions.push(note(
                false,
                "reports it is stopping (STOPPING=1)".to_owned(),
            ));
        }
        if msg.watchdog_trigger {
            actions.push(note(
                true,
                "asked for its watchdog to fire (WATCHDOG=trigger)".to_owned(),
            ));
            self.fail(FailureCause::Watchdog, now, unit, actions);
            return;
        }
        if msg.ready {
            self.ready_notified = true;
            if self.state == State::Starting && self.gates_passed(unit) {
                self.become_ready(now, unit, actions);
            }
        }
    }

    fn on_probe_done(
        &mut self,
        seq: u64,
        ok: bool,
        message: String,
        now: Instant,
        unit: &Unit,
        actions: &mut Vec<Action>,
    ) {
        let Some(cfg) = unit.health.as_ref().and_then(|h| h.probe.as_ref()) else {
            return;
        };
        // A result of an earlier generation, or of a probe whose unit was stopped since.
        let Some((running, started)) = self.probe.in_flight else {
            return;
        };
        if running != seq {
            return;
        }
        self.probe.in_flight = None;
        if !self.stopping_notified {
            self.probe.next_at = Some(after(started, cfg.interval).max(now));
        }
        let was_ok = self.probe.last.as_ref().map(|r| r.ok);
        let same_failure = self
            .probe
            .last
            .as_ref()
            .is_some_and(|r| !r.ok && r.message == message);
        self.probe.last = Some(ProbeReport {
            ok,
            message: message.clone(),
            at: now,
        });
        if ok {
            self.probe.failures = 0;
            self.probe.successes = self.probe.successes.saturating_add(1);
            if was_ok == Some(false) {
                actions.push(note(
                    false,
                    format!("health probe passes again ({message})"),
                ));
            }
            if self.probe.successes >= cfg.success_threshold && !self.probe.passed {
                self.probe.passed = true;
                if self.state == State::Starting && self.gates_passed(unit) {
                    self.become_ready(now, unit, actions);
                }
            }
            return;
        }
        self.probe.successes = 0;
        self.probe.failures = self.probe.failures.saturating_add(1);
        // While starting, failures only delay readiness (start-timeout bounds that phase), so
        // they are told once per new reason, not at every interval.
        if self.state == State::Starting {
            if !same_failure {
                actions.push(note(
                    false,
                    format!("health probe failed, not ready yet: {message}"),
                ));
            }
            return;
        }
        actions.push(note(
            true,
            format!(
                "health probe failed ({}/{}): {message}",
                self.probe.failures, cfg.failure_threshold
            ),
        ));
        if self.probe.failures >= cfg.failure_threshold {
            self.fail(FailureCause::Health, now, unit, actions);
        }
    }

    /// Frozen: the watchdog and the probes pause (a probe under way is forgotten: it could only
    /// fail). Thawed: both start over as if the unit had just started, less the initial delay.
    fn on_frozen(&mut self, frozen: bool, now: Instant, unit: &Unit) {
        if self.frozen == frozen {
            return;
        }
        self.frozen = frozen;
        if frozen {
            self.disarm_timers();
            return;
        }
        self.watchdog_at = self.watchdog_timeout(unit).map(|t| after(now, t));
        if let Some(cfg) = unit.health.as_ref().and_then(|h| h.probe.as_ref()) {
            self.probe.next_at = Some(after(now, cfg.interval));
        }
    }

    fn on_timers(&mut self, now: Instant, unit: &Unit, actions: &mut Vec<Action>) {
        if self.state == State::Starting && self.deadline.is_some_and(|d| d <= now) {
            let mut why = format!(
                "not ready within start-timeout {}",
                humantime::format_duration(unit.readiness.start_timeout)
            );
            if unit.readiness.mode == ReadyMode::Notify && !self.ready_notified {
                why.push_str(" (no READY=1)");
            }
            if unit.readiness.mode == ReadyMode::LogLine && !self.ready_line_seen {
                why.push_str(" (no line matched ready-pattern)");
            }
            actions.push(note(true, why));
            self.fail(FailureCause::StartTimeout, now, unit, actions);
            return;
        }
        if self.pressure.deadline().is_some_and(|d| d <= now)
            && let Some(due) = self.pressure.tick(unit.oom.pressure.as_ref(), now)
        {
            self.act_on_pressure(due, now, unit, actions);
            if self.state == State::Stopping {
                return;
            }
        }
        if self.watchdog_at.is_some_and(|d| d <= now) {
            let timeout = self.watchdog_timeout(unit).unwrap_or_default();
            actions.push(note(
                true,
                format!(
                    "watchdog: no WATCHDOG=1 within {}",
                    humantime::format_duration(timeout)
                ),
            ));
            self.fail(FailureCause::Watchdog, now, unit, actions);
            return;
        }
        if self.probe.in_flight.is_none()
            && !self.awaiting_exec
            && self.probe.next_at.is_some_and(|d| d <= now)
        {
            self.probe.seq += 1;
            self.probe.in_flight = Some((self.probe.seq, now));
            self.probe.next_at = None;
            actions.push(Action::Probe {
                seq: self.probe.seq,
            });
        }
    }

    /// An episode of memory pressure is due its action (core/pressure.rs): a warning, a
    /// signal, or a restart that is not a failure.
    fn act_on_pressure(&mut self, due: Due, now: Instant, unit: &Unit, actions: &mut Vec<Action>) {
        match due.action {
            PressureAction::Warn => {
                actions.push(note(
                    true,
                    format!(
                        "memory pressure: {}; an OOM kill may follow (action warn)",
                        due.why
                    ),
                ));
            }
            PressureAction::Signal(signal) => {
                actions.push(note(
                    true,
                    format!("memory pressure: {}; sending {}", due.why, signal.0),
                ));
                actions.push(Action::Signal(signal.0));
            }
            PressureAction::Restart => {
                actions.push(note(
                    true,
                    format!(
                        "memory pressure: {}; restarting before the OOM killer acts (not a failure)",
                        due.why
                    ),
                ));
                self.pressure_restarts = self.pressure_restarts.saturating_add(1);
                actions.extend(self.transition(Event::Stop(StopReason::Pressure), now, unit));
            }
        }
    }

    /// corral gives up on this run: stop it, and count the stop as a failure.
    fn fail(&mut self, cause: FailureCause, now: Instant, unit: &Unit, actions: &mut Vec<Action>) {
        self.disarm_timers();
        self.emptied = false;
        self.stop_reason = Some(StopReason::Failed(cause));
        self.deadline = Some(after(now, unit.stop.timeout));
        self.enter(State::Stopping, now);
        actions.push(Action::Signal(unit.stop.signal.0));
    }

    fn failure_stop(&self) -> Option<FailureCause> {
        match self.stop_reason {
            Some(StopReason::Failed(cause)) => Some(cause),
            _ => None,
        }
    }

    fn disarm_timers(&mut self) {
        self.watchdog_at = None;
        self.probe.next_at = None;
        self.probe.in_flight = None;
    }

    fn record_exit(
        &mut self,
        exit: ExitReport,
        cause: Option<FailureCause>,
        actions: &mut Vec<Action>,
    ) {
        self.disarm_timers();
        self.pid = None;
        self.last_exit = Some(exit);
        self.last_exit_cause = cause;
        self.last_exit_by_pressure = self.stop_reason == Some(StopReason::Pressure);
        // The run is over: so is its episode (a late reading must not act on the next run).
        self.pressure.new_run();
        // Whatever the main process left behind goes with it: never two generations at once.
        actions.push(Action::KillAll);
    }

    fn after_unexpected_exit(
        &mut self,
        exit: ExitReport,
        cause: Option<FailureCause>,
        now: Instant,
        unit: &Unit,
        actions: &mut Vec<Action>,
    ) {
        let cfg = &unit.restart;
        if let Some(started) = self.running_since.take()
            && now.saturating_duration_since(started) >= cfg.reset_after
        {
            self.consecutive_failures = 0;
        }
        // A run corral ended is a failure whatever the exit code (systemd's `timeout` and
        // `watchdog` results), and restarts as `on-failure` and `on-abnormal` promise.
        let success = cause.is_none() && exit.is_success(&cfg.success_exit_codes);
        let restarts = match cause {
            Some(_) => matches!(
                cfg.policy,
                RestartPolicy::Always | RestartPolicy::OnFailure | RestartPolicy::OnAbnormal
            ),
            None => policy_restarts(cfg.policy, &exit, &cfg.success_exit_codes),
        };
        let exit = match cause {
            Some(cause) => format!("{exit} (stopped by corral: {})", cause.as_str()),
            None => exit.to_string(),
        };
        if !success {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        }
        if self.want == Want::Down {
            self.enter(State::Inactive, now);
            actions.push(note(false, exit.clone()));
            return;
        }
        if !restarts {
            let end = if success {
                State::Exited
            } else {
                State::Failed
            };
            self.enter(end, now);
            actions.push(note(!success, format!("{exit}; not restarting")));
            return;
        }
        self.backoff(exit, !success, now, unit, actions);
    }

    /// Backoff before the next start, or `failed` once the start limit is hit; `what` says what
    /// ended the run, for the log (`warn`: a warning, unless the run ended well).
    fn backoff(
        &mut self,
        what: String,
        warn: bool,
        now: Instant,
        unit: &Unit,
        actions: &mut Vec<Action>,
    ) {
        let cfg = &unit.restart;
        if self
            .history
            .would_exceed(now, cfg.start_limit_burst, cfg.start_limit_interval)
        {
            let error = format!(
                "start limit hit: more than {} starts within {}",
                cfg.start_limit_burst,
                humantime::format_duration(cfg.start_limit_interval)
            );
            actions.push(note(true, format!("{what}; {error}")));
            self.error = Some(error);
            self.enter(State::Failed, now);
            return;
        }
        let delay: Duration = restart_delay(cfg.delay, cfg.max_delay, self.consecutive_failures);
        self.deadline = Some(after(now, delay));
        self.enter(State::Backoff, now);
        actions.push(note(
            warn,
            format!(
                "{what}; restarting in {}",
                humantime::format_duration(delay)
            ),
        ));
    }
}

/// `now + d`, saturating: a unit file may say "300000000000y", and `Instant + Duration` panics
/// on overflow (a panicking PID 1 takes the container down).
pub fn after(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

fn note(warn: bool, message: String) -> Action {
    Action::Note { warn, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures::{oneshot, service};
    use crate::unit::RestartPolicy;
    use State::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn in_state(state: State, t0: Instant) -> Runtime {
        let mut rt = Runtime::new(t0, Want::Up);
        rt.state = state;
        if state.has_process() {
            rt.pid = Some(42);
        }
        rt
    }

    /// (from, event, to, actions) for a service with the default on-failure policy.
    #[test]
    fn service_transition_table() {
        let unit = service("web");
        let t0 = Instant::now();
        let term = Action::Signal(Signal::SIGTERM);
        let table: Vec<(State, Event, State, Vec<&str>)> = vec![
            (Inactive, Event::Start, Starting, vec!["spawn"]),
            (Starting, Event::Spawned { pid: 7 }, Running, vec![]),
            (
                Starting,
                Event::SpawnFailed {
                    error: SpawnFailure::new(Some(libc::ENOENT), "ENOENT"),
                },
                Failed,
                vec!["note"],
            ),
            // fork(2) refused at pids-max: tried again after the backoff.
            (
                Starting,
                Event::SpawnFailed {
                    error: SpawnFailure::new(Some(libc::EAGAIN), "clone: EAGAIN"),
                },
                Backoff,
                vec!["note"],
            ),
            (
                Running,
                Event::Exited(ExitReport::code(1)),
                Backoff,
                vec!["killall", "note"],
            ),
            (
                Running,
                Event::Exited(ExitReport::code(0)),
                Exited,
                vec!["killall", "note"],
            ),
            (
                Running,
                Event::Stop(StopReason::User),
                Stopping,
                vec!["signal"],
            ),
            (
                Stopping,
                Event::Exited(ExitReport::signal(Signal::SIGTERM)),
                Stopping,
                vec!["killall"],
            ),
            (Stopping, Event::UnitEmpty, Stopping, vec![]),
            (Running, Event::UnitEmpty, Running, vec![]),
            (Inactive, Event::UnitEmpty, Inactive, vec![]),
            (
                Stopping,
                Event::DeadlineReached,
                Stopping,
                vec!["note", "killall"],
            ),
            (Stopping, Event::Stop(StopReason::User), Stopping, vec![]),
            (Backoff, Event::DeadlineReached, Inactive, vec![]),
            (Backoff, Event::Stop(StopReason::User), Inactive, vec![]),
            (Inactive, Event::Stop(StopReason::User), Inactive, vec![]),
            (Exited, Event::Stop(StopReason::User), Inactive, vec![]),
            (Failed, Event::Stop(StopReason::User), Inactive, vec![]),
            (Failed, Event::Start, Failed, vec![]),
            (Running, Event::Spawned { pid: 9 }, Running, vec![]),
            (
                Inactive,
                Event::Exited(ExitReport::code(1)),
                Inactive,
                vec![],
            ),
        ];
        for (from, event, to, want) in table {
            let mut rt = in_state(from, t0);
            let label = format!("{from:?} + {event:?}");
            let actions = rt.transition(event, t0 + MS(5), &unit);
            assert_eq!(rt.state, to, "{label}");
            let kinds: Vec<&str> = actions
                .iter()
                .map(|a| match a {
                    Action::Spawn => "spawn",
                    Action::Signal(s) => {
                        assert_eq!(Action::Signal(*s), term, "{label}");
                        "signal"
                    }
                    Action::KillAll => "killall",
                    Action::Probe { .. } => "probe",
                    Action::Note { .. } => "note",
                })
                .collect();
            assert_eq!(kinds, want, "{label}");
        }
    }

    #[test]
    fn oneshot_stays_starting_until_it_exits_successfully() {
        let unit = oneshot("setup");
        let t0 = Instant::now();
        let mut rt = in_state(Inactive, t0);
        rt.transition(Event::Start, t0, &unit);
        rt.transition(Event::Spawned { pid: 5 }, t0, &unit);
        assert_eq!(rt.state, Starting);
        rt.transition(Event::Exited(ExitReport::code(0)), t0, &unit);
        assert_eq!(rt.state, Exited);

        let mut rt = in_state(Starting, t0);
        rt.transition(Event::Exited(ExitReport::code(2)), t0, &unit);
        assert_eq!(rt.state, Failed, "oneshot default policy is never");
    }

    #[test]
    fn backoff_grows_with_consecutive_failures_then_hits_the_start_limit() {
        let unit = service("crashy");
        let t0 = Instant::now();
        let mut now = t0;
        let mut rt = Runtime::new(t0, Want::Up);
        let mut delays = vec![];
        loop {
            rt.transition(Event::Start, now, &unit);
            rt.transition(Event::Spawned { pid: 1 }, now, &unit);
            now += MS(10);
            rt.transition(Event::Exited(ExitReport::code(1)), now, &unit);
            match rt.state {
                Backoff => {
                    let deadline = rt.deadline().expect("backoff has a deadline");
                    delays.push(deadline - now);
                    now = deadline;
                    rt.transition(Event::DeadlineReached, now, &unit);
                    assert_eq!(rt.state, Inactive);
                }
                Failed => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delays, vec![MS(100), MS(200), MS(400), MS(800)]);
        assert_eq!(rt.restarts, 4);
        assert_eq!(rt.state, Failed);
        assert!(rt.error.as_deref().unwrap_or("").contains("start limit"));
    }

    #[test]
    fn reset_after_a_long_healthy_run_restores_the_first_delay() {
        let mut unit = service("web");
        unit.restart.reset_after = Duration::from_secs(60);
        unit.restart.start_limit_burst = 100;
        let t0 = Instant::now();
        let mut rt = Runtime::new(t0, Want::Up);
        let mut now = t0;
        for _ in 0..3 {
            rt.transition(Event::Start, now, &unit);
            rt.transition(Event::Spawned { pid: 1 }, now, &unit);
            rt.transition(Event::Exited(ExitReport::code(1)), now, &unit);
            now = rt.deadline().expect("deadline");
            rt.transition(Event::DeadlineReached, now, &unit);
        }
        assert_eq!(rt.consecutive_failures(), 3);
        rt.transition(Event::Start, now, &unit);
        rt.transition(Event::Spawned { pid: 1 }, now, &unit);
        now += Duration::from_secs(61);
        rt.transition(Event::Exited(ExitReport::code(1)), now, &unit);
        assert_eq!(rt.consecutive_failures(), 1);
        assert_eq!(rt.deadline(), Some(now + MS(100)));
    }

    #[test]
    fn on_oom_restarts_only_after_an_oom_kill() {
        let mut unit = service("hog");
        unit.restart.policy = RestartPolicy::OnOom;
        let t0 = Instant::now();
        let mut rt = in_state(Running, t0);
        let oom = ExitReport {
            oom: true,
            ..ExitReport::signal(Signal::SIGKILL)
        };
        rt.transition(Event::Exited(oom), t0, &unit);
        assert_eq!(rt.state, Backoff);
        let mut rt = in_state(Running, t0);
        rt.transition(
            Event::Exited(ExitReport::signal(Signal::SIGKILL)),
            t0,
            &unit,
        );
        assert_eq!(rt.state, Failed, "a SIGKILL that is no OOM kill");
    }

    #[test]
    fn oom_kills_are_counted_as_the_kernel_reports_them() {
        let t0 = Instant::now();
        let mut rt = in_state(Running, t0);
        rt.record_oom_kills(0, t0);
        assert_eq!((rt.oom_kills, rt.last_oom_at), (0, None));
        rt.record_oom_kills(2, t0 + MS(5));
        assert_eq!((rt.oom_kills, rt.last_oom_at), (2, Some(t0 + MS(5))));
        assert_eq!(
            rt.state, Running,
            "a kill that spared the main process changes no state"
        );
    }

    #[test]
    fn a_user_stop_never_restarts_whatever_the_exit() {
        let mut unit = service("web");
        unit.restart.policy = RestartPolicy::Always;
        let t0 = Instant::now();
        let mut rt = in_state(Running, t0);
        rt.transition(Event::Stop(StopReason::User), t0, &unit);
        rt.transition(Event::Exited(ExitReport::code(1)), t0, &unit);
        rt.transition(Event::UnitEmpty, t0, &unit);
        assert_eq!(rt.state, Inactive);
        assert_eq!(rt.restarts, 0);
    }

    #[test]
    fn stop_timeout_sets_a_deadline_that_ends_in_sigkill() {
        let mut unit = service("stubborn");
        unit.stop.timeout = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut rt = in_state(Running, t0);
        rt.transition(Event::Stop(StopReason::User), t0, &unit);
        assert_eq!(rt.deadline(), Some(t0 + Duration::from_secs(3)));
        let actions = rt.transition(Event::DeadlineReached, t0 + Duration::from_secs(3), &unit);
        assert!(actions.contains(&Action::KillAll));
        assert_eq!(rt.deadline(), None);
    }

    #[test]
    fn a_stop_ends_when_the_main_process_is_reaped_and_the_unit_is_empty() {
        let mut unit = service("web");
        unit.stop.timeout = Duration::from_secs(3);
        let t0 = Instant::now();
        let term = ExitReport::signal(Signal::SIGTERM);

        // Reaped first, empty later; the stop timeout still escalates in between.
        let mut rt = in_state(Running, t0);
        rt.transition(Event::Stop(StopReason::User), t0, &unit);
        let actions = rt.transition(Event::Exited(term), t0 + MS(1), &unit);
        assert_eq!(actions, vec![Action::KillAll]);
        assert_eq!((rt.state, rt.pid), (Stopping, None));
        let actions = rt.transition(Event::DeadlineReached, t0 + Duration::from_secs(3), &unit);
        assert!(actions.contains(&Action::KillAll));
        assert_eq!(rt.state, Stopping);
        let actions = rt.transition(Event::UnitEmpty, t0 + Duration::from_secs(4), &unit);
        assert_eq!(rt.state, Inactive);
        assert_eq!(rt.since, t0 + Duration::from_secs(4));
        assert!(
            matches!(&actions[..], [Action::Note { message, .. }] if message == "stopped (killed by SIGTERM)")
        );
        assert_eq!(rt.deadline(), None);

        // Empty first (v2: a cgroup empties at exit, before the reap), reaped later.
        let mut rt = in_state(Running, t0);
        rt.transition(Event::Stop(StopReason::User), t0, &unit);
        assert_eq!(rt.transition(Event::UnitEmpty, t0, &unit), vec![]);
        assert_eq!(rt.state, Stopping);
        rt.transition(Event::Exited(term), t0 + MS(1), &unit);
        assert_eq!(rt.state, Inactive);

        // An emptiness seen during an earlier stop does not end the next one early.
        rt.transition(Event::Start, t0 + MS(2), &unit);
        rt.transition(Event::Spawned { pid: 8 }, t0 + MS(2), &unit);
        rt.transition(Event::Stop(StopReason::User), t0 + MS(3), &unit);
        rt.transition(Event::Exited(term), t0 + MS(4), &unit);
        assert_eq!(rt.state, Stopping);
    }

    #[test]
    fn an_absurd_stop_timeout_saturates_instead_of_panicking() {
        let mut unit = service("web");
        unit.stop.timeout = Duration::from_secs(u64::MAX);
        let t0 = Instant::now();
        let mut rt = in_state(Running, t0);
        rt.transition(Event::Stop(StopReason::User), t0, &unit);
        assert!(rt.deadline().is_some_and(|d| d > t0));
    }

    #[test]
    fn user_start_clears_a_failed_units_history() {
        let unit = service("web");
        let t0 = Instant::now();
        let mut rt = in_state(Failed, t0);
        rt.error = Some("start limit hit".into());
        rt.reset_for_user_start(t0);
        assert_eq!(rt.state, Inactive);
        assert_eq!(rt.error, None);
        assert_eq!(rt.transition(Event::Start, t0, &unit), vec![Action::Spawn]);
    }

    fn notify_service(name: &str) -> Unit {
        let mut unit = service(name);
        *unit.readiness = crate::unit::Readiness {
            mode: ReadyMode::Notify,
            start_timeout: Duration::from_secs(5),
            pattern: None,
        };
        unit
    }

    fn probed_service(name: &str) -> Unit {
        let mut unit = service(name);
        unit.health = Some(Box::new(crate::unit::Health {
            probe: Some(crate::unit::ProbeConfig {
                probe: crate::unit::Probe::Tcp(([127, 0, 0, 1], 5432).into()),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                initial_delay: Duration::from_secs(2),
                failure_threshold: 3,
                success_threshold: 2,
            }),
            watchdog: None,
        }));
        unit
    }

    fn log_line_service(name: &str) -> Unit {
        let mut unit = service(name);
        *unit.readiness = crate::unit::Readiness {
            mode: ReadyMode::LogLine,
            start_timeout: Duration::from_secs(5),
            pattern: regex_lite::Regex::new("listening")
                .ok()
                .map(crate::unit::LinePattern),
        };
        unit
    }

    fn log_line_probed_service(name: &str) -> Unit {
        let mut unit = probed_service(name);
        unit.readiness = log_line_service(name).readiness;
        unit
    }

    fn ready_msg() -> Event {
        Event::Notify(NotifyMessage {
            ready: true,
            ..NotifyMessage::default()
        })
    }

    fn started(unit: &Unit, t0: Instant) -> Runtime {
        let mut rt = Runtime::new(t0, Want::Up);
        rt.transition(Event::Start, t0, unit);
        rt.transition(Event::Spawned { pid: 7 }, t0, unit);
        rt
    }

    /// Runs the probe that is due at the runtime's deadline; returns its seq.
    fn run_due_probe(rt: &mut Runtime, unit: &Unit) -> (Instant, u64) {
        let due = rt.deadline().expect("a probe is due");
        let actions = rt.transition(Event::DeadlineReached, due, unit);
        match actions.as_slice() {
            [Action::Probe { seq }] => (due, *seq),
            other => panic!("expected one probe, got {other:?}"),
        }
    }

    #[test]
    fn readiness_gates_decide_when_a_spawned_service_is_running() {
        let t0 = Instant::now();
        // (unit, events after the spawn, state)
        let ok = |seq| Event::ProbeDone {
            seq,
            ok: true,
            message: "ok".into(),
        };
        let table: Vec<(Unit, Vec<Event>, State)> = vec![
            (service("plain"), vec![], Running),
            (notify_service("n"), vec![], Starting),
            (notify_service("n"), vec![ready_msg()], Running),
            // READY=0 and unrelated fields do not make it ready.
            (
                notify_service("n"),
                vec![Event::Notify(NotifyMessage::parse(
                    b"READY=0\nSTATUS=warming",
                ))],
                Starting,
            ),
            (probed_service("p"), vec![ok(1)], Starting),
            (probed_service("p"), vec![ready_msg()], Starting),
            (log_line_service("l"), vec![], Starting),
            (log_line_service("l"), vec![Event::ReadyLine], Running),
            // READY=1 is not the line a log-line unit waits for.
            (log_line_service("l"), vec![ready_msg()], Starting),
            // Its line is one gate; a probe (two successes) is another.
            (
                log_line_probed_service("lp"),
                vec![Event::ReadyLine],
                Starting,
            ),
            (
                log_line_probed_service("lp"),
                vec![ok(1), ok(2), Event::ReadyLine],
                Running,
            ),
            (
                log_line_probed_service("lp"),
                vec![Event::ReadyLine, ok(1), ok(2)],
                Running,
            ),
            // A matching line means nothing to a unit that does not wait for one.
            (notify_service("n"), vec![Event::ReadyLine], Starting),
        ];
        for (unit, events, want) in table {
            let mut rt = started(&unit, t0);
            for event in events {
                if let Event::ProbeDone { .. } = event {
                    run_due_probe(&mut rt, &unit);
                }
                rt.transition(event, t0, &unit);
            }
            assert_eq!(rt.state, want, "{} {:?}", unit.name, unit.readiness.mode);
        }
    }

    #[test]
    fn ready_1_makes_a_notify_service_running_and_records_its_status_text() {
        let unit = notify_service("db");
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        assert_eq!(rt.state, Starting);
        assert_eq!(rt.deadline(), Some(t0 + Duration::from_secs(5)));
        let msg = Event::Notify(NotifyMessage::parse(b"READY=1\nSTATUS=accepting"));
        let actions = rt.transition(msg, t0 + MS(1000), &unit);
        assert_eq!(rt.state, Running);
        assert_eq!(rt.since, t0 + MS(1000));
        assert_eq!(rt.deadline(), None, "the start timeout is disarmed");
        assert_eq!(rt.notify_status.as_deref(), Some("accepting"));
        assert!(
            matches!(&actions[..], [Action::Note { message, .. }] if message == "ready (READY=1)")
        );
    }

    #[test]
    fn a_log_line_unit_waits_for_its_line_only_while_its_run_is_starting() {
        let unit = log_line_service("web");
        let t0 = Instant::now();
        let mut rt = Runtime::new(t0, Want::Up);
        assert!(!rt.awaits_ready_line(&unit), "inactive");
        rt.transition(Event::Start, t0, &unit);
        // Before the spawn, a line can only be a leftover's of the last run.
        assert!(!rt.awaits_ready_line(&unit));
        assert!(rt.transition(Event::ReadyLine, t0, &unit).is_empty());
        assert_eq!(rt.state, Starting);
        rt.transition(Event::Spawned { pid: 7 }, t0, &unit);
        assert!(rt.awaits_ready_line(&unit));
        assert_eq!(rt.deadline(), Some(t0 + Duration::from_secs(5)));
        let actions = rt.transition(Event::ReadyLine, t0 + MS(300), &unit);
        assert_eq!(rt.state, Running);
        assert_eq!(rt.deadline(), None, "the start timeout is disarmed");
        assert!(!rt.awaits_ready_line(&unit));
        assert!(matches!(&actions[..], [Action::Note { message, .. }]
            if message == "ready (a line matched ready-pattern)"));
        // A second matching line changes nothing.
        assert!(
            rt.transition(Event::ReadyLine, t0 + MS(400), &unit)
                .is_empty()
        );
        // The next run waits for its own line again.
        rt.transition(Event::Stop(StopReason::User), t0 + MS(500), &unit);
        rt.transition(
            Event::Exited(ExitReport::signal(Signal::SIGTERM)),
            t0 + MS(600),
            &unit,
        );
        rt.transition(Event::UnitEmpty, t0 + MS(600), &unit);
        assert_eq!(rt.state, Inactive);
        rt.transition(Event::Start, t0 + MS(700), &unit);
        rt.transition(Event::Spawned { pid: 8 }, t0 + MS(700), &unit);
        assert!(rt.awaits_ready_line(&unit));
        assert_eq!(rt.state, Starting);
    }

    #[test]
    fn a_log_line_unit_whose_line_never_comes_fails_at_start_timeout() {
        let unit = log_line_service("mute");
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        let actions = rt.transition(Event::DeadlineReached, t0 + Duration::from_secs(5), &unit);
        assert_eq!(rt.state, Stopping);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Note { warn: true, message }
            if message.ends_with("(no line matched ready-pattern)"))),
            "{actions:?}"
        );
        // A line that comes after the timeout does not revive the run.
        rt.transition(Event::ReadyLine, t0 + Duration::from_secs(6), &unit);
        assert_eq!(rt.state, Stopping);
    }

    #[test]
    fn start_timeout_stops_the_unit_and_counts_as_a_failure_whatever_the_exit_code() {
        let unit = notify_service("mute");
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        let at = t0 + Duration::from_secs(5);
        let actions = rt.transition(Event::DeadlineReached, at, &unit);
        assert_eq!(rt.state, Stopping);
        assert!(actions.contains(&Action::Signal(Signal::SIGTERM)));
        assert_eq!(rt.deadline(), Some(at + unit.stop.timeout));
        // The service handles SIGTERM and exits 0: still a failed start.
        rt.transition(Event::Exited(ExitReport::code(0)), at + MS(10), &unit);
        assert_eq!(rt.state, Backoff);
        assert_eq!(rt.last_exit_cause, Some(FailureCause::StartTimeout));
        assert_eq!(rt.consecutive_failures(), 1);

        // Under `never` it is failed, under `on-oom` too; a user's stop meanwhile wins.
        for (policy, end) in [
            (RestartPolicy::Never, Failed),
            (RestartPolicy::OnOom, Failed),
            (RestartPolicy::OnAbnormal, Backoff),
            (RestartPolicy::Always, Backoff),
        ] {
            let mut unit = notify_service("mute");
            unit.restart.policy = policy;
            let mut rt = started(&unit, t0);
            rt.transition(Event::DeadlineReached, at, &unit);
            rt.transition(Event::Exited(ExitReport::code(0)), at, &unit);
            assert_eq!(rt.state, end, "{policy:?}");
        }
        let mut rt = started(&unit, t0);
        rt.transition(Event::DeadlineReached, at, &unit);
        rt.transition(Event::Stop(StopReason::User), at, &unit);
        rt.transition(Event::Exited(ExitReport::code(0)), at, &unit);
        rt.transition(Event::UnitEmpty, at, &unit);
        assert_eq!(rt.state, Inactive, "the user's stop wins");
    }

    #[test]
    fn probes_follow_initial_delay_and_interval_and_gate_then_guard_liveness() {
        let unit = probed_service("db");
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        // First probe after initial-delay (2s), the start timeout (90s) still ahead.
        let (at, seq) = run_due_probe(&mut rt, &unit);
        assert_eq!(at, t0 + Duration::from_secs(2));
        assert_eq!(
            rt.deadline(),
            Some(t0 + Duration::from_secs(90)),
            "one probe at a time"
        );
        let done = |seq, ok| Event::ProbeDone {
            seq,
            ok,
            message: if ok { "HTTP 200" } else { "HTTP 503" }.into(),
        };
        rt.transition(done(seq, true), at + MS(100), &unit);
        assert_eq!(rt.state, Starting, "success-threshold is 2");
        // The next probe is an interval after the previous one started.
        let (at, seq) = run_due_probe(&mut rt, &unit);
        assert_eq!(at, t0 + Duration::from_secs(3));
        // A stale answer (an earlier seq) changes nothing.
        rt.transition(done(seq - 1, true), at, &unit);
        assert_eq!(rt.state, Starting);
        rt.transition(done(seq, true), at, &unit);
        assert_eq!(rt.state, Running);

        // Liveness: two failures are tolerated, a success resets the count, three restart.
        let mut outcomes = vec![false, false, true, false, false];
        outcomes.reverse();
        while let Some(ok) = outcomes.pop() {
            let (at, seq) = run_due_probe(&mut rt, &unit);
            rt.transition(done(seq, ok), at, &unit);
            assert_eq!(rt.state, Running);
        }
        assert_eq!(rt.probe.failures, 2);
        let (at, seq) = run_due_probe(&mut rt, &unit);
        let actions = rt.transition(done(seq, false), at, &unit);
        assert_eq!(rt.state, Stopping);
        assert!(actions.contains(&Action::Signal(Signal::SIGTERM)));
        assert_eq!(
            rt.deadline(),
            Some(at + unit.stop.timeout),
            "no probe while stopping"
        );
        rt.transition(
            Event::Exited(ExitReport::signal(Signal::SIGTERM)),
            at,
            &unit,
        );
        assert_eq!(rt.state, Backoff);
        assert_eq!(rt.last_exit_cause, Some(FailureCause::Health));
        assert_eq!(rt.probe.last.as_ref().map(|r| r.ok), Some(false));

        // The next run: the answer to the last run's final probe arrives late and is ignored.
        let due = rt.deadline().expect("backoff");
        rt.transition(Event::DeadlineReached, due, &unit);
        rt.transition(Event::Start, due, &unit);
        rt.transition(Event::Spawned { pid: 8 }, due, &unit);
        let (at, new_seq) = run_due_probe(&mut rt, &unit);
        assert!(new_seq > seq);
        rt.transition(done(seq, true), at, &unit);
        assert_eq!(rt.probe.last, None, "a late answer of the last run");
        rt.transition(done(new_seq, true), at, &unit);
        assert_eq!(rt.probe.successes, 1);
    }

    #[test]
    fn failing_probes_while_starting_only_delay_readiness() {
        let unit = probed_service("db");
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        let mut notes = Vec::new();
        for message in ["refused", "refused", "refused", "HTTP 503", "HTTP 503"] {
            let (at, seq) = run_due_probe(&mut rt, &unit);
            let event = Event::ProbeDone {
                seq,
                ok: false,
                message: message.into(),
            };
            for action in rt.transition(event, at, &unit) {
                if let Action::Note { message, .. } = action {
                    notes.push(message);
                }
            }
            assert_eq!(rt.state, Starting);
        }
        assert_eq!(rt.probe.failures, 5);
        assert_eq!(
            notes,
            vec![
                "health probe failed, not ready yet: refused",
                "health probe failed, not ready yet: HTTP 503"
            ],
            "told once per new reason"
        );
    }

    #[test]
    fn the_watchdog_fires_without_pings_and_is_pushed_on_by_each() {
        let mut unit = service("dog");
        unit.health = Some(Box::new(crate::unit::Health {
            probe: None,
            watchdog: Some(Duration::from_secs(1)),
        }));
        let ping = || Event::Notify(NotifyMessage::parse(b"WATCHDOG=1"));
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        assert_eq!(rt.state, Running, "a watchdog alone gates nothing");
        assert_eq!(rt.deadline(), Some(t0 + MS(1000)));
        rt.transition(ping(), t0 + MS(900), &unit);
        assert_eq!(rt.deadline(), Some(t0 + MS(1900)));
        // WATCHDOG_USEC= from the unit changes the timeout from then on.
        rt.transition(
            Event::Notify(NotifyMessage::parse(b"WATCHDOG_USEC=3000000")),
            t0 + MS(1000),
            &unit,
        );
        assert_eq!(rt.deadline(), Some(t0 + MS(4000)));
        assert_eq!(rt.watchdog_timeout(&unit), Some(Duration::from_secs(3)));
        rt.transition(Event::DeadlineReached, t0 + MS(4000), &unit);
        assert_eq!(rt.state, Stopping);
        rt.transition(
            Event::Exited(ExitReport::signal(Signal::SIGTERM)),
            t0 + MS(4001),
            &unit,
        );
        assert_eq!(rt.last_exit_cause, Some(FailureCause::Watchdog));
        assert_eq!(rt.state, Backoff);

        // STOPPING=1 suspends the watchdog; WATCHDOG=trigger fires it at once.
        let mut rt = started(&unit, t0);
        rt.transition(
            Event::Notify(NotifyMessage::parse(b"STOPPING=1")),
            t0,
            &unit,
        );
        assert!(rt.stopping_notified);
        assert_eq!(rt.deadline(), None);
        let mut rt = started(&unit, t0);
        rt.transition(
            Event::Notify(NotifyMessage::parse(b"WATCHDOG=trigger")),
            t0,
            &unit,
        );
        assert_eq!(rt.state, Stopping);
    }

    #[test]
    fn a_namespaced_units_probe_waits_for_its_exec() {
        let mut unit = service("boxed");
        unit.namespaces.pid = true;
        unit.health = Some(Box::new(crate::unit::Health {
            probe: Some(crate::unit::ProbeConfig {
                probe: crate::unit::Probe::Tcp(([127, 0, 0, 1], 5432).into()),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(100),
                initial_delay: Duration::ZERO,
                failure_threshold: 1,
                success_threshold: 1,
            }),
            watchdog: None,
        }));
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        // Only the start timeout is due: the probe waits, however long the way to the exec.
        assert_eq!(rt.deadline(), Some(t0 + unit.readiness.start_timeout));
        assert_eq!(
            rt.transition(Event::DeadlineReached, t0 + MS(500), &unit),
            vec![]
        );
        rt.transition(Event::Execd, t0 + MS(600), &unit);
        assert_eq!(rt.deadline(), Some(t0), "the probe is due as it was");
        let actions = rt.transition(Event::DeadlineReached, t0 + MS(600), &unit);
        assert!(
            matches!(actions.as_slice(), [Action::Probe { .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn a_frozen_unit_is_not_failed_by_its_watchdog_or_its_probes() {
        let mut unit = service("dog");
        unit.health = Some(Box::new(crate::unit::Health {
            probe: Some(crate::unit::ProbeConfig {
                probe: crate::unit::Probe::Tcp(([127, 0, 0, 1], 5432).into()),
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(100),
                initial_delay: Duration::ZERO,
                failure_threshold: 1,
                success_threshold: 1,
            }),
            watchdog: Some(Duration::from_secs(1)),
        }));
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        let (at, seq) = run_due_probe(&mut rt, &unit);
        let ok = Event::ProbeDone {
            seq,
            ok: true,
            message: "connected".into(),
        };
        rt.transition(ok, at, &unit);
        assert_eq!(rt.state, Running);
        rt.transition(Event::Frozen(true), t0 + MS(500), &unit);
        assert_eq!(rt.deadline(), None, "no timer runs against a frozen unit");
        // Long past the watchdog: nothing fires.
        let actions = rt.transition(Event::DeadlineReached, t0 + MS(60_000), &unit);
        assert_eq!(actions, vec![]);
        assert_eq!(rt.state, Running);
        // The thaw gives the watchdog its whole timeout again and the probe its interval.
        rt.transition(Event::Frozen(false), t0 + MS(60_000), &unit);
        assert_eq!(rt.deadline(), Some(t0 + MS(61_000)));
        assert_eq!(rt.probe.next_at, Some(t0 + MS(62_000)));
        rt.transition(Event::DeadlineReached, t0 + MS(61_000), &unit);
        assert_eq!(rt.state, Stopping, "a thawed unit's watchdog counts again");
    }

    #[test]
    fn mainpid_moves_the_main_process_and_a_new_run_forgets_the_last_ones_notify_state() {
        let unit = notify_service("forking");
        let t0 = Instant::now();
        let mut rt = started(&unit, t0);
        rt.transition(
            Event::Notify(NotifyMessage::parse(b"MAINPID=99\nREADY=1\nSTATUS=up")),
            t0,
            &unit,
        );
        assert_eq!((rt.pid, rt.state), (Some(99), Running));
        rt.transition(Event::Exited(ExitReport::code(1)), t0, &unit);
        let due = rt.deadline().expect("backoff");
        rt.transition(Event::DeadlineReached, due, &unit);
        rt.transition(Event::Start, due, &unit);
        assert_eq!(rt.notify_status, None);
        assert!(!rt.ready_notified);
        assert_eq!(rt.last_exit_cause, None, "an exit of its own");
    }

    fn pressured(action: PressureAction, sustain: u64) -> Unit {
        let mut unit = service("web");
        unit.resources.memory_max = Some(crate::unit::ByteLimit::Bytes(100 << 20));
        unit.restart.start_limit_burst = 1;
        unit.oom.pressure = Some(crate::unit::PressurePolicy {
            usage_percent: Some(90),
            psi: None,
            sustain: MS(sustain),
            action,
            cool_down: MS(1000),
        });
        unit
    }

    fn usage(mib: u64) -> Event {
        Event::Pressure(Observation::Usage {
            current: mib << 20,
            max: 100 << 20,
        })
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Spawn => "spawn".to_owned(),
                Action::Signal(s) => format!("signal {s}"),
                Action::KillAll => "killall".to_owned(),
                Action::Probe { .. } => "probe".to_owned(),
                Action::Note { warn, .. } => format!("note warn={warn}"),
            })
            .collect()
    }

    /// (state, action, event) -> (state, actions): the episode's action, in each state.
    #[test]
    fn pressure_action_table() {
        use crate::unit::SignalSpec;
        let t0 = Instant::now();
        let usr1 = PressureAction::Signal(SignalSpec(Signal::SIGUSR1));
        let table: Vec<(State, PressureAction, Event, State, Vec<&str>)> = vec![
            (
                Running,
                PressureAction::Warn,
                usage(95),
                Running,
                vec!["note warn=true"],
            ),
            (
                Running,
                usr1,
                usage(95),
                Running,
                vec!["note warn=true", "signal SIGUSR1"],
            ),
            (
                Running,
                PressureAction::Restart,
                usage(95),
                Stopping,
                vec!["note warn=true", "signal SIGTERM"],
            ),
            (
                Starting,
                PressureAction::Restart,
                usage(95),
                Stopping,
                vec!["note warn=true", "signal SIGTERM"],
            ),
            (Running, PressureAction::Restart, usage(50), Running, vec![]),
            // Already on its way down, or not running: a reading changes nothing.
            (
                Stopping,
                PressureAction::Restart,
                usage(95),
                Stopping,
                vec![],
            ),
            (Backoff, PressureAction::Restart, usage(95), Backoff, vec![]),
            (
                Inactive,
                PressureAction::Restart,
                usage(95),
                Inactive,
                vec![],
            ),
            (Exited, PressureAction::Restart, usage(95), Exited, vec![]),
        ];
        for (from, action, event, to, want) in table {
            let unit = pressured(action, 0);
            let mut rt = in_state(from, t0);
            let label = format!("{from:?} {action:?} + {event:?}");
            let actions = rt.transition(event, t0, &unit);
            assert_eq!(rt.state, to, "{label}");
            assert_eq!(kinds(&actions), want, "{label}");
        }
    }

    #[test]
    fn a_pressure_restart_is_not_a_failure_and_does_not_use_up_the_start_limit() {
        let unit = pressured(PressureAction::Restart, 0);
        let t0 = Instant::now();
        let mut rt = Runtime::new(t0, Want::Up);
        let mut now = t0;
        rt.transition(Event::Start, now, &unit);
        rt.transition(Event::Spawned { pid: 10 }, now, &unit);
        // start-limit-burst is 1: a second counted start within 10s would fail the unit.
        for round in 1..=3u32 {
            now += MS(1500);
            let acts = rt.transition(usage(95), now, &unit);
            assert_eq!(rt.state, Stopping, "round {round}: {acts:?}");
            rt.transition(
                Event::Exited(ExitReport::signal(Signal::SIGTERM)),
                now,
                &unit,
            );
            let acts = rt.transition(Event::UnitEmpty, now, &unit);
            assert_eq!(rt.state, Inactive, "round {round}");
            assert!(
                matches!(&acts[..], [Action::Note { warn: false, message }] if message.contains("memory-pressure restart")),
                "{acts:?}"
            );
            assert!(rt.last_exit_by_pressure);
            let acts = rt.transition(Event::Start, now, &unit);
            assert_eq!(kinds(&acts), ["spawn"], "round {round}: not refused");
            rt.transition(
                Event::Spawned {
                    pid: 10 + round as i32,
                },
                now,
                &unit,
            );
            assert_eq!(rt.state, Running);
            assert_eq!(rt.pressure_restarts, round);
        }
        assert_eq!(rt.restarts, 0, "not an automatic restart after a failure");
        assert_eq!(rt.consecutive_failures(), 0);
        assert_eq!(rt.error, None);
        // The next run's own exit is an exit of its own.
        let acts = rt.transition(Event::Exited(ExitReport::code(1)), now, &unit);
        assert!(!rt.last_exit_by_pressure, "{acts:?}");
        assert_eq!(rt.consecutive_failures(), 1);
    }

    #[test]
    fn a_pressure_stop_ends_in_sigkill_after_the_stop_timeout_and_a_user_stop_wins() {
        let unit = pressured(PressureAction::Restart, 0);
        let t0 = Instant::now();
        let mut rt = in_state(Running, t0);
        rt.transition(usage(95), t0, &unit);
        assert_eq!(rt.deadline(), Some(t0 + unit.stop.timeout));
        let acts = rt.transition(Event::DeadlineReached, t0 + unit.stop.timeout, &unit);
        assert_eq!(kinds(&acts), ["note warn=true", "killall"]);
        // A user's stop during the pressure stop: the unit stays down.
        rt.transition(Event::Stop(StopReason::User), t0 + MS(1), &unit);
        rt.transition(
            Event::Exited(ExitReport::signal(Signal::SIGKILL)),
            t0,
            &unit,
        );
        let acts = rt.transition(Event::UnitEmpty, t0, &unit);
        assert_eq!(kinds(&acts), ["note warn=false"]);
        assert!(!rt.pressure_start_due, "a user stop is a plain stop");
    }

    #[test]
    fn a_sustained_episode_acts_at_its_deadline_and_an_exit_during_it_forgets_it() {
        let unit = pressured(PressureAction::Restart, 500);
        let t0 = Instant::now();
        let mut rt = in_state(Running, t0);
        assert!(rt.transition(usage(95), t0, &unit).is_empty());
        assert_eq!(rt.deadline(), Some(t0 + MS(500)));
        let acts = rt.transition(Event::DeadlineReached, t0 + MS(500), &unit);
        assert_eq!(rt.state, Stopping, "{acts:?}");

        // The unit exits on its own during the episode: nothing is due for the next run.
        let mut rt = in_state(Running, t0);
        rt.transition(usage(95), t0, &unit);
        rt.transition(Event::Exited(ExitReport::code(1)), t0 + MS(100), &unit);
        assert_eq!(rt.state, Backoff);
        assert_eq!(
            rt.deadline(),
            Some(t0 + MS(200)),
            "the backoff's deadline only"
        );
        rt.transition(Event::DeadlineReached, t0 + MS(200), &unit);
        rt.transition(Event::Start, t0 + MS(200), &unit);
        rt.transition(Event::Spawned { pid: 50 }, t0 + MS(200), &unit);
        assert_eq!(rt.deadline(), None, "the new run has no episode");
        let acts = rt.transition(Event::DeadlineReached, t0 + MS(600), &unit);
        assert_eq!(rt.state, Running, "{acts:?}");
    }
}
