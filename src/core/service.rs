//! One unit's runtime state machine: a single transition function over (state, event).

use std::time::{Duration, Instant};

use crate::core::backoff::{StartHistory, restart_delay};
use crate::core::exit::{ExitReport, policy_restarts};
use crate::unit::{Unit, UnitKind};
use nix::sys::signal::Signal;

/// The states of SPEC section 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// What the operator (or the unit file) wants: the reconciler drives `State` towards it.
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
    /// A required unit stopped or failed; start again when it is back.
    Dependency,
    Shutdown,
}

/// Events the supervisor feeds into one unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The reconciler decided the unit may start now.
    Start,
    Spawned {
        pid: i32,
    },
    SpawnFailed {
        error: String,
    },
    Exited(ExitReport),
    /// No process of the unit is left (its cgroup, or its process group, is empty).
    UnitEmpty,
    Stop(StopReason),
    /// The unit's own deadline (backoff end or stop timeout) has come.
    DeadlineReached,
}

/// What one transition asks the outside world to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    /// Send this signal to every process of the unit.
    Signal(Signal),
    /// SIGKILL every process left in the unit.
    KillAll,
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
    pub error: Option<String>,
    consecutive_failures: u32,
    history: StartHistory,
    running_since: Option<Instant>,
    deadline: Option<Instant>,
    stop_reason: Option<StopReason>,
    /// Set when the backoff timer ended: the next start is an automatic restart.
    restart_due: bool,
    /// While stopping: the unit was seen empty before its main process was reaped.
    emptied: bool,
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
            error: None,
            consecutive_failures: 0,
            history: StartHistory::default(),
            running_since: None,
            deadline: None,
            stop_reason: None,
            restart_due: false,
            emptied: false,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
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
                self.history.record(now, unit.restart.start_limit_interval);
                self.error = None;
                self.deadline = None;
                self.enter(Starting, now);
                actions.push(Action::Spawn);
            }
            (Starting, Event::Spawned { pid }) => {
                self.pid = Some(pid);
                // A oneshot stays `starting` until its process has exited successfully.
                if unit.kind != UnitKind::Oneshot {
                    self.running_since = Some(now);
                    self.enter(Running, now);
                }
            }
            (Starting, Event::SpawnFailed { error }) => {
                self.pid = None;
                self.enter(Failed, now);
                actions.push(note(true, format!("cannot be spawned: {error}")));
                self.error = Some(error);
            }
            (Starting | Running, Event::Exited(exit)) => {
                self.record_exit(exit, &mut actions);
                self.after_unexpected_exit(exit, now, unit, &mut actions);
            }
            // The main process is gone, but what it left (killed with it) may still be dying:
            // the unit stays `stopping` until it is empty, so a stop answers, a restart starts
            // and a shutdown moves on only once no process of the unit is left.
            (Stopping, Event::Exited(exit)) => {
                self.record_exit(exit, &mut actions);
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
                self.emptied = false;
                self.stop_reason = Some(reason);
                self.deadline = Some(after(now, unit.stop.timeout));
                self.enter(Stopping, now);
                actions.push(Action::Signal(unit.stop.signal.0));
            }
            // A later stop reason (e.g. shutdown during a restart) wins: nothing starts after it.
            (Stopping, Event::Stop(reason)) if reason != StopReason::Restart => {
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
        actions.push(note(false, format!("stopped ({how})")));
        self.deadline = None;
        self.stop_reason = None;
        self.emptied = false;
        self.enter(State::Inactive, now);
    }

    fn record_exit(&mut self, exit: ExitReport, actions: &mut Vec<Action>) {
        self.pid = None;
        self.last_exit = Some(exit);
        // Whatever the main process left behind goes with it: never two generations at once.
        actions.push(Action::KillAll);
    }

    fn after_unexpected_exit(
        &mut self,
        exit: ExitReport,
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
        let success = exit.is_success(&cfg.success_exit_codes);
        if !success {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        }
        if self.want == Want::Down {
            self.enter(State::Inactive, now);
            actions.push(note(false, format!("{exit}")));
            return;
        }
        if !policy_restarts(cfg.policy, &exit, &cfg.success_exit_codes) {
            let end = if success {
                State::Exited
            } else {
                State::Failed
            };
            self.enter(end, now);
            actions.push(note(!success, format!("{exit}; not restarting")));
            return;
        }
        if self
            .history
            .would_exceed(now, cfg.start_limit_burst, cfg.start_limit_interval)
        {
            let error = format!(
                "start limit hit: more than {} starts within {}",
                cfg.start_limit_burst,
                humantime::format_duration(cfg.start_limit_interval)
            );
            actions.push(note(true, format!("{exit}; {error}")));
            self.error = Some(error);
            self.enter(State::Failed, now);
            return;
        }
        let delay: Duration = restart_delay(cfg.delay, cfg.max_delay, self.consecutive_failures);
        self.deadline = Some(after(now, delay));
        self.enter(State::Backoff, now);
        actions.push(note(
            !success,
            format!(
                "{exit}; restarting in {}",
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
                    error: "ENOENT".into(),
                },
                Failed,
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
}
