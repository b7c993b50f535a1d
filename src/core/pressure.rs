//! Acting before the OOM killer: episodes of a unit's memory at or above its `usage-threshold`
//! or stalled past its `pressure-threshold` (a PSI trigger), one action once an episode has
//! lasted `sustain`, and no other within `cool-down`. Time is a parameter.

use std::time::{Duration, Instant};

use crate::core::limit_watch::{RECOVERY_MARGIN_PERCENT, Thresholds};
use crate::proto::human_size;
use crate::unit::{PressureAction, PressurePolicy};

/// A stall episode ends once the kernel has not fired the trigger for this many windows: while
/// stalls go on past the threshold it fires about once per window (psi.rst: "an event will be
/// generated at most once per tracking window"), so a gap of two says they stopped.
pub const STALL_EXPIRY_WINDOWS: u32 = 2;

/// What the daemon saw of a unit's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// `memory.current` against the limit in force (v2 `memory.max`, v1
    /// `memory.limit_in_bytes`).
    Usage { current: u64, max: u64 },
    /// The unit's PSI trigger fired: tasks stalled on memory past the threshold in the window.
    Stall,
}

/// An action due now, and the figures that made it due, worded for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub action: PressureAction,
    pub why: String,
}

/// One unit's episode, and its actions so far (these survive its restarts: the cool-down is
/// what keeps a unit that fills up at once from restarting in a loop).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PressureWatch {
    /// Usage at or above the threshold since then (until a reading below the recovery mark).
    usage_since: Option<Instant>,
    /// The first and the latest trigger of a stall episode.
    stall: Option<(Instant, Instant)>,
    /// This episode had its action.
    acted: bool,
    /// When the action is due, while an episode waits for `sustain` or the cool-down.
    due_at: Option<Instant>,
    /// The latest usage reading: (current, max).
    pub last_usage: Option<(u64, u64)>,
    /// Every action taken, since corral started.
    pub actions: u32,
    pub last_action_at: Option<Instant>,
}

impl PressureWatch {
    /// The run ended (or a new one began): its episode ends with it; the actions and the
    /// cool-down stay.
    pub fn new_run(&mut self) {
        self.usage_since = None;
        self.stall = None;
        self.acted = false;
        self.due_at = None;
        self.last_usage = None;
    }

    /// When an action may become due without a new observation (`sustain` or the cool-down
    /// running out).
    pub fn deadline(&self) -> Option<Instant> {
        self.due_at
    }

    /// Whether an episode is under way, and since when.
    pub fn episode_since(&self, policy: Option<&PressurePolicy>, now: Instant) -> Option<Instant> {
        let stall = self
            .stall
            .filter(|(_, last)| policy.is_some_and(|p| !stall_expired(p, *last, now)))
            .map(|(first, _)| first);
        [self.usage_since, stall].into_iter().flatten().min()
    }

    /// A new observation: the action due now, if any.
    pub fn observe(
        &mut self,
        observation: Observation,
        policy: Option<&PressurePolicy>,
        now: Instant,
    ) -> Option<Due> {
        let Some(policy) = policy else {
            self.new_run();
            return None;
        };
        match observation {
            Observation::Usage { current, max } => {
                self.last_usage = Some((current, max));
                if let Some(percent) = policy.usage_percent {
                    let [at, recover_at] = marks(max, percent);
                    if current >= at {
                        self.usage_since.get_or_insert(now);
                    } else if current < recover_at {
                        self.usage_since = None;
                    }
                }
            }
            Observation::Stall if policy.psi.is_some() => {
                self.stall = match self.stall {
                    Some((first, last)) if !stall_expired(policy, last, now) => Some((first, now)),
                    _ => Some((now, now)),
                };
            }
            Observation::Stall => {}
        }
        self.evaluate(policy, now)
    }

    /// Time passed (the deadline came): the action due now, if any.
    pub fn tick(&mut self, policy: Option<&PressurePolicy>, now: Instant) -> Option<Due> {
        match policy {
            Some(policy) => self.evaluate(policy, now),
            None => {
                self.new_run();
                None
            }
        }
    }

    /// A reload changed the unit's keys: what no longer has a threshold ends; the rest is
    /// judged again by the new keys at the next observation or deadline.
    pub fn reconfigure(&mut self, policy: Option<&PressurePolicy>, now: Instant) {
        let Some(policy) = policy else {
            self.new_run();
            return;
        };
        if policy.usage_percent.is_none() {
            self.usage_since = None;
        }
        if policy.psi.is_none() {
            self.stall = None;
        }
        if !self.acted {
            self.due_at = self.due_time(policy, now);
        }
    }

    /// The marks of a usage threshold, for a kernel notification to watch (v1): the
    /// threshold and its recovery mark.
    pub fn usage_marks(policy: &PressurePolicy, max: u64) -> Option<[u64; 2]> {
        policy.usage_percent.map(|p| marks(max, p))
    }

    fn due_time(&self, policy: &PressurePolicy, now: Instant) -> Option<Instant> {
        let since = self.episode_since(Some(policy), now)?;
        let sustained = checked_after(since, policy.sustain);
        let cooled = self
            .last_action_at
            .map(|at| checked_after(at, policy.cool_down));
        Some(cooled.map_or(sustained, |c| c.max(sustained)))
    }

    fn evaluate(&mut self, policy: &PressurePolicy, now: Instant) -> Option<Due> {
        if let Some((_, last)) = self.stall
            && stall_expired(policy, last, now)
        {
            self.stall = None;
        }
        if self.usage_since.is_none() && self.stall.is_none() {
            // The episode is over: the next one may act again.
            self.acted = false;
            self.due_at = None;
            return None;
        }
        if self.acted {
            self.due_at = None;
            return None;
        }
        let due_at = self.due_time(policy, now)?;
        if due_at > now {
            self.due_at = Some(due_at);
            return None;
        }
        self.acted = true;
        self.due_at = None;
        self.actions = self.actions.saturating_add(1);
        self.last_action_at = Some(now);
        Some(Due {
            action: policy.action,
            why: self.figures(policy, now),
        })
    }

    /// What the episode is, worded for the log.
    fn figures(&self, policy: &PressurePolicy, now: Instant) -> String {
        let mut parts = Vec::new();
        if let (Some(since), Some(percent), Some((current, max))) =
            (self.usage_since, policy.usage_percent, self.last_usage)
        {
            parts.push(format!(
                "memory {} of memory-max {} ({}%), at or above usage-threshold {percent}% for {}",
                human_size(current),
                human_size(max),
                share_of(current, max),
                lasted(since, now)
            ));
        }
        if let (Some((first, _)), Some(psi)) = (self.stall, policy.psi) {
            parts.push(format!(
                "memory stalls past pressure-threshold \"{psi}\" for {}",
                lasted(first, now)
            ));
        }
        parts.join("; ")
    }
}

/// The threshold of `percent` of `max`, and the mark usage must fall below to end an episode.
fn marks(max: u64, percent: u32) -> [u64; 2] {
    [
        Thresholds::share(max, percent),
        Thresholds::share(max, percent.saturating_sub(RECOVERY_MARGIN_PERCENT)),
    ]
}

fn stall_expired(policy: &PressurePolicy, last: Instant, now: Instant) -> bool {
    let Some(psi) = policy.psi else {
        return true;
    };
    now.saturating_duration_since(last) > psi.window * STALL_EXPIRY_WINDOWS
}

/// `current` as a whole percentage of `max` (rounded down; 0 without a limit).
pub fn share_of(current: u64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    u64::try_from(u128::from(current) * 100 / u128::from(max)).unwrap_or(u64::MAX)
}

fn lasted(since: Instant, now: Instant) -> String {
    let d = now.saturating_duration_since(since);
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

fn checked_after(at: Instant, d: Duration) -> Instant {
    crate::core::service::after(at, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::core::signal::Signal;
    use crate::unit::{PsiThreshold, SignalSpec};

    const MIB: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn usage(percent: u32, sustain: u64, cool_down: u64) -> PressurePolicy {
        PressurePolicy {
            usage_percent: Some(percent),
            psi: None,
            sustain: ms(sustain),
            action: PressureAction::Restart,
            cool_down: ms(cool_down),
        }
    }

    fn psi(window: u64, sustain: u64) -> PressurePolicy {
        PressurePolicy {
            usage_percent: None,
            psi: Some(PsiThreshold {
                full: false,
                percent: 10,
                window: ms(window),
            }),
            sustain: ms(sustain),
            action: PressureAction::Signal(SignalSpec(Signal::SIGUSR1)),
            cool_down: ms(60_000),
        }
    }

    fn at(mib: u64) -> Observation {
        Observation::Usage {
            current: mib * MIB,
            max: 100 * MIB,
        }
    }

    /// A step: at this many ms, this observation (None: a tick), and whether an action is due.
    type Step = (u64, Option<Observation>, bool);

    fn run(policy: &PressurePolicy, steps: &[Step]) -> PressureWatch {
        let t0 = Instant::now();
        let mut watch = PressureWatch::default();
        for (i, (t, obs, want)) in steps.iter().enumerate() {
            let now = t0 + ms(*t);
            let due = match obs {
                Some(obs) => watch.observe(*obs, Some(policy), now),
                None => watch.tick(Some(policy), now),
            };
            assert_eq!(due.is_some(), *want, "step {i} at {t}ms: {due:?}");
        }
        watch
    }

    #[test]
    fn usage_episodes_act_once_after_sustain_and_end_below_the_recovery_mark() {
        let cases: &[(&str, PressurePolicy, &[Step])] = &[
            (
                "no sustain: the crossing acts at once, once",
                usage(90, 0, 1000),
                &[
                    (0, Some(at(50)), false),
                    (10, Some(at(90)), true),
                    (20, Some(at(95)), false),
                    (30, None, false),
                ],
            ),
            (
                "sustain: due at its end, by the deadline alone",
                usage(90, 500, 0),
                &[
                    (0, Some(at(91)), false),
                    (400, Some(at(92)), false),
                    (499, None, false),
                    (500, None, true),
                    (600, None, false),
                ],
            ),
            (
                "dropping below the recovery mark before sustain ends the episode",
                usage(90, 500, 0),
                &[
                    (0, Some(at(91)), false),
                    (100, Some(at(84)), false),
                    (500, None, false),
                    (600, Some(at(91)), false),
                    (1100, None, true),
                ],
            ),
            (
                "between the recovery mark and the threshold the episode goes on",
                usage(90, 500, 0),
                &[
                    (0, Some(at(91)), false),
                    (100, Some(at(86)), false),
                    (500, None, true),
                ],
            ),
            (
                "a new episode acts again, but not within the cool-down",
                usage(90, 0, 1000),
                &[
                    (0, Some(at(95)), true),
                    (100, Some(at(10)), false),
                    (200, Some(at(95)), false),
                    (999, None, false),
                    (1000, None, true),
                ],
            ),
            (
                "an episode that ends within the cool-down never acts",
                usage(90, 0, 1000),
                &[
                    (0, Some(at(95)), true),
                    (100, Some(at(10)), false),
                    (200, Some(at(95)), false),
                    (300, Some(at(10)), false),
                    (1000, None, false),
                ],
            ),
        ];
        for (what, policy, steps) in cases {
            eprintln!("case: {what}");
            run(policy, steps);
        }
    }

    #[test]
    fn stall_episodes_last_while_the_trigger_keeps_firing() {
        let cases: &[(&str, PressurePolicy, &[Step])] = &[
            (
                "no sustain: the first trigger acts",
                psi(1000, 0),
                &[(0, Some(Observation::Stall), true)],
            ),
            (
                "sustain: triggers a window apart hold the episode until it is due",
                psi(1000, 2500),
                &[
                    (0, Some(Observation::Stall), false),
                    (1000, Some(Observation::Stall), false),
                    (2000, Some(Observation::Stall), false),
                    (2500, None, true),
                ],
            ),
            (
                "no trigger for two windows: the episode ended, sustain starts over",
                psi(1000, 2500),
                &[
                    (0, Some(Observation::Stall), false),
                    (2500, None, false),
                    (5000, Some(Observation::Stall), false),
                    (7499, None, false),
                    (7500, None, false),
                ],
            ),
            (
                "a trigger after the expiry begins a new episode",
                psi(1000, 1500),
                &[
                    (0, Some(Observation::Stall), false),
                    (3000, Some(Observation::Stall), false),
                    (4000, Some(Observation::Stall), false),
                    (4500, None, true),
                ],
            ),
            (
                "a usage reading does not begin a stall-only episode",
                psi(1000, 0),
                &[(0, Some(at(99)), false)],
            ),
        ];
        for (what, policy, steps) in cases {
            eprintln!("case: {what}");
            run(policy, steps);
        }
    }

    #[test]
    fn either_threshold_begins_the_episode_and_it_acts_once() {
        let mut both = usage(90, 1000, 0);
        both.psi = psi(1000, 0).psi;
        run(
            &both,
            &[
                (0, Some(Observation::Stall), false),
                (500, Some(at(95)), false),
                (900, Some(Observation::Stall), false),
                (1000, None, true),
                (1500, Some(Observation::Stall), false),
            ],
        );
    }

    #[test]
    fn a_new_run_ends_the_episode_and_keeps_the_cool_down() {
        let policy = usage(90, 0, 1000);
        let t0 = Instant::now();
        let mut watch = PressureWatch::default();
        assert!(watch.observe(at(95), Some(&policy), t0).is_some());
        watch.new_run();
        assert_eq!(watch.episode_since(Some(&policy), t0), None);
        assert!(watch.observe(at(95), Some(&policy), t0 + ms(10)).is_none());
        assert_eq!(watch.deadline(), Some(t0 + ms(1000)), "after the cool-down");
        assert!(watch.tick(Some(&policy), t0 + ms(1000)).is_some());
        assert_eq!(watch.actions, 2);
    }

    #[test]
    fn a_reload_that_drops_or_changes_the_keys_is_judged_by_the_new_ones() {
        let t0 = Instant::now();
        let mut watch = PressureWatch::default();
        let slow = usage(90, 10_000, 0);
        assert!(watch.observe(at(95), Some(&slow), t0).is_none());
        assert_eq!(watch.deadline(), Some(t0 + ms(10_000)));
        // A shorter sustain: due by the new deadline.
        let quick = usage(90, 100, 0);
        watch.reconfigure(Some(&quick), t0 + ms(50));
        assert_eq!(watch.deadline(), Some(t0 + ms(100)));
        // The keys removed: nothing is due, nothing waits.
        watch.reconfigure(None, t0 + ms(60));
        assert_eq!(watch.deadline(), None);
        assert!(watch.tick(None, t0 + ms(200)).is_none());
        // A usage threshold replaced by a PSI one: the usage episode ends.
        assert!(watch.observe(at(95), Some(&slow), t0 + ms(300)).is_none());
        watch.reconfigure(Some(&psi(1000, 0)), t0 + ms(310));
        assert_eq!(watch.episode_since(Some(&psi(1000, 0)), t0 + ms(310)), None);
        assert_eq!(watch.deadline(), None);
    }

    #[test]
    fn the_action_names_its_figures() {
        let policy = usage(90, 0, 0);
        let mut watch = PressureWatch::default();
        let due = watch
            .observe(at(95), Some(&policy), Instant::now())
            .unwrap();
        assert_eq!(due.action, PressureAction::Restart);
        assert_eq!(
            due.why,
            "memory 95.0M of memory-max 100.0M (95%), at or above usage-threshold 90% for 0s"
        );
    }
}
