//! Warnings before limits bite: episodes of a unit near `memory-max` or `pids-max`, or throttled
//! faster than a rate; one notice when an episode begins and one when it ends. Time is a parameter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::proto::human_size;

/// An episode ends only once usage is this many percentage points below the threshold, so a
/// unit hovering at the mark does not warn on every crossing.
pub const RECOVERY_MARGIN_PERCENT: u32 = 5;

/// Throttled time is compared over at least this much wall time: two samples closer together
/// (a memory event right after a timer sample) say too little about a per-minute rate.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);

/// When a unit counts as close to its limits (`corral run --warn-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Percent of `memory-max`.
    pub memory_percent: u32,
    /// Percent of `pids-max`.
    pub pids_percent: u32,
    /// Throttled time per minute of wall time.
    pub throttled_per_minute: Duration,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            memory_percent: 90,
            pids_percent: 90,
            throttled_per_minute: Duration::from_secs(1),
        }
    }
}

impl Thresholds {
    /// `percent` of `limit`, in the limit's units (rounded up: "at least 90%").
    pub fn share(limit: u64, percent: u32) -> u64 {
        let scaled = u128::from(limit) * u128::from(percent);
        u64::try_from(scaled.div_ceil(100)).unwrap_or(u64::MAX)
    }

    /// The memory levels whose crossing (either way) may begin or end an episode: what a
    /// kernel threshold notification should watch.
    pub fn memory_marks(&self, memory_max: u64) -> [u64; 2] {
        [
            Thresholds::share(memory_max, self.memory_percent),
            Thresholds::share(memory_max, self.recovery(self.memory_percent)),
        ]
    }

    fn recovery(&self, percent: u32) -> u32 {
        percent.saturating_sub(RECOVERY_MARGIN_PERCENT)
    }
}

/// What one sample of a unit's cgroup says (null where the kernel did not say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub memory_current: Option<u64>,
    pub memory_max: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_max: Option<u64>,
    pub throttled_usec: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Concern {
    Memory,
    Pids,
    Throttling,
}

impl Concern {
    pub fn as_str(self) -> &'static str {
        match self {
            Concern::Memory => "memory",
            Concern::Pids => "pids",
            Concern::Throttling => "cpu-throttling",
        }
    }

    pub const ALL: [Concern; 3] = [Concern::Memory, Concern::Pids, Concern::Throttling];
}

/// One line to log: an episode began (a warning) or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Began { concern: Concern, message: String },
    Ended { concern: Concern, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Episode {
    since: Instant,
    /// The latest figures, worded for `status`.
    figures: String,
}

/// The episodes of one unit.
#[derive(Debug, Clone, Default)]
pub struct UnitWatch {
    episodes: BTreeMap<Concern, Episode>,
    /// Where the throttled-time rate is measured from.
    throttle_base: Option<(Instant, u64)>,
}

/// What a single concern makes of a sample: above the mark (with the figures), below the
/// recovery mark, or in between / unknown (no change).
enum Reading {
    Above(String),
    Below(String),
    Unchanged,
}

impl UnitWatch {
    /// Compares a sample with the thresholds; returns the episodes that began or ended.
    pub fn observe(&mut self, sample: &Sample, th: &Thresholds, now: Instant) -> Vec<Notice> {
        let readings = [
            (Concern::Memory, self.memory(sample, th)),
            (Concern::Pids, pids(sample, th)),
            (Concern::Throttling, self.throttling(sample, th, now)),
        ];
        let mut notices = Vec::new();
        for (concern, reading) in readings {
            match (reading, self.episodes.get_mut(&concern)) {
                (Reading::Above(figures), Some(episode)) => episode.figures = figures,
                (Reading::Above(figures), None) => {
                    notices.push(Notice::Began {
                        concern,
                        message: figures.clone(),
                    });
                    self.episodes.insert(
                        concern,
                        Episode {
                            since: now,
                            figures,
                        },
                    );
                }
                (Reading::Below(figures), Some(episode)) => {
                    let lasted = now.saturating_duration_since(episode.since);
                    notices.push(Notice::Ended {
                        concern,
                        message: format!(
                            "{figures} (the episode lasted {})",
                            humantime::format_duration(Duration::from_secs(lasted.as_secs()))
                        ),
                    });
                    self.episodes.remove(&concern);
                }
                (Reading::Below(_) | Reading::Unchanged, _) => {}
            }
        }
        notices
    }

    /// The episodes under way, worded for `status`.
    pub fn active(&self) -> Vec<String> {
        self.episodes.values().map(|e| e.figures.clone()).collect()
    }

    pub fn is_active(&self, concern: Concern) -> bool {
        self.episodes.contains_key(&concern)
    }

    fn memory(&self, s: &Sample, th: &Thresholds) -> Reading {
        let (Some(current), Some(max)) = (s.memory_current, s.memory_max) else {
            return Reading::Unchanged;
        };
        let [warn_at, recover_at] = th.memory_marks(max);
        let figures = format!(
            "memory {} of memory-max {} ({}%)",
            human_size(current),
            human_size(max),
            percent(current, max)
        );
        if current >= warn_at {
            Reading::Above(format!(
                "{figures}, at or above {}%: an OOM kill follows if it reaches the limit",
                th.memory_percent
            ))
        } else if current < recover_at {
            Reading::Below(format!(
                "{figures}, back below {}%",
                th.recovery(th.memory_percent)
            ))
        } else {
            Reading::Unchanged
        }
    }

    fn throttling(&mut self, s: &Sample, th: &Thresholds, now: Instant) -> Reading {
        let Some(throttled) = s.throttled_usec else {
            return Reading::Unchanged;
        };
        let Some((base_at, base)) = self.throttle_base else {
            self.throttle_base = Some((now, throttled));
            return Reading::Unchanged;
        };
        if throttled < base {
            // A new cgroup (the unit restarted): its counter starts again from zero.
            self.throttle_base = Some((now, throttled));
            return Reading::Unchanged;
        }
        let window = now.saturating_duration_since(base_at);
        if window < MIN_RATE_WINDOW {
            return Reading::Unchanged;
        }
        self.throttle_base = Some((now, throttled));
        let grown = Duration::from_micros(throttled - base);
        let per_minute = grown.mul_f64(60.0 / window.as_secs_f64());
        let figures = format!(
            "CPU throttled {:.1}s per minute (over the last {:.1}s)",
            per_minute.as_secs_f64(),
            window.as_secs_f64()
        );
        if per_minute > th.throttled_per_minute {
            Reading::Above(format!(
                "{figures}, above {}: cpu-quota is slowing the unit",
                humantime::format_duration(th.throttled_per_minute)
            ))
        } else {
            Reading::Below(format!(
                "{figures}, at or below {}",
                humantime::format_duration(th.throttled_per_minute)
            ))
        }
    }
}

/// A cgroup v2 unit with no `high` event for this long has left its episode above memory-high.
pub const HIGH_EPISODE_GAP: Duration = Duration::from_secs(30);

/// Episodes above `memory-high`, one warning each, judged at each memory event of the unit.
/// cgroup v1 wakes on crossing the soft limit either way (a threshold notification); v2 only
/// while above it (each reclaim raises `memory.events` `high`), so there a quiet gap of
/// [`HIGH_EPISODE_GAP`] ends an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HighWatch {
    limit: u64,
    /// cgroup v2: events come only while above the limit.
    events_only_above: bool,
    above_since: Option<Instant>,
    last_event: Option<Instant>,
}

impl HighWatch {
    pub fn new(limit: u64, events_only_above: bool) -> HighWatch {
        HighWatch {
            limit,
            events_only_above,
            above_since: None,
            last_event: None,
        }
    }

    /// The episode under way, worded for `status`.
    pub fn active(&self) -> Option<String> {
        self.above_since
            .map(|_| format!("memory above memory-high ({})", human_size(self.limit)))
    }

    /// A reload changed the limit; the episode under way goes on.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// A memory event with usage at `current`: the lines to log, if an episode ended or began.
    pub fn memory_event(&mut self, current: u64, now: Instant) -> Vec<Notice> {
        // Only v2 needs the gap: v1 wakes on every crossing (and on the marks of the limit
        // warnings too), so a late v1 event says nothing about the episode.
        let quiet = self.events_only_above
            && self
                .last_event
                .is_some_and(|at| now.saturating_duration_since(at) > HIGH_EPISODE_GAP);
        self.last_event = Some(now);
        let figures = format!("{} of {}", human_size(current), human_size(self.limit));
        let mut notices = Vec::new();
        if (current < self.limit || quiet) && self.above_since.take().is_some() {
            notices.push(Notice::Ended {
                concern: Concern::Memory,
                message: format!("memory back below memory-high ({figures})"),
            });
        }
        if current >= self.limit && self.above_since.is_none() {
            self.above_since = Some(now);
            notices.push(Notice::Began {
                concern: Concern::Memory,
                message: format!(
                    "memory above memory-high: {figures}; reclaim slows the unit and an OOM kill may follow"
                ),
            });
        }
        notices
    }
}

fn pids(s: &Sample, th: &Thresholds) -> Reading {
    let (Some(current), Some(max)) = (s.pids_current, s.pids_max) else {
        return Reading::Unchanged;
    };
    let figures = format!(
        "{current} of pids-max {max} processes ({}%)",
        percent(current, max)
    );
    if current >= Thresholds::share(max, th.pids_percent) {
        Reading::Above(format!(
            "{figures}, at or above {}%: forks fail at the limit",
            th.pids_percent
        ))
    } else if current < Thresholds::share(max, th.recovery(th.pids_percent)) {
        Reading::Below(format!(
            "{figures}, back below {}%",
            th.recovery(th.pids_percent)
        ))
    } else {
        Reading::Unchanged
    }
}

fn percent(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 100;
    }
    u64::try_from(u128::from(part) * 100 / u128::from(whole)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn memory(current: u64) -> Sample {
        Sample {
            memory_current: Some(current * MIB),
            memory_max: Some(100 * MIB),
            ..Sample::default()
        }
    }

    fn kinds(notices: &[Notice]) -> Vec<String> {
        notices
            .iter()
            .map(|n| match n {
                Notice::Began { concern, .. } => format!("began {}", concern.as_str()),
                Notice::Ended { concern, .. } => format!("ended {}", concern.as_str()),
            })
            .collect()
    }

    fn high_lines(watch: &mut HighWatch, t0: Instant, events: &[(u64, u64)]) -> Vec<String> {
        events
            .iter()
            .flat_map(|&(secs, mib)| watch.memory_event(mib * MIB, t0 + Duration::from_secs(secs)))
            .map(|n| match n {
                Notice::Began { .. } => "began".to_owned(),
                Notice::Ended { .. } => "ended".to_owned(),
            })
            .collect()
    }

    #[test]
    fn memory_high_on_v1_warns_once_per_crossing_up_and_recovers_on_the_way_down() {
        let t0 = Instant::now();
        let mut v1 = HighWatch::new(100 * MIB, false);
        // (seconds, MiB): up, still up much later (no gap rule on v1), down, up again.
        let lines = high_lines(
            &mut v1,
            t0,
            &[
                (0, 50),
                (1, 120),
                (2, 130),
                (100, 110),
                (101, 90),
                (102, 120),
            ],
        );
        assert_eq!(lines, ["began", "ended", "began"]);
    }

    #[test]
    fn memory_high_on_v2_ends_an_episode_after_a_quiet_gap() {
        let t0 = Instant::now();
        let mut v2 = HighWatch::new(100 * MIB, true);
        let gap = HIGH_EPISODE_GAP.as_secs();
        // Events while above; a quiet gap; above again: the old episode ended unseen, a new
        // one begins.
        let lines = high_lines(&mut v2, t0, &[(0, 120), (5, 125), (6 + gap, 121)]);
        assert_eq!(lines, ["began", "ended", "began"]);
        // Below the limit at an event: the episode ends at once.
        let mut v2 = HighWatch::new(100 * MIB, true);
        assert_eq!(
            high_lines(&mut v2, t0, &[(0, 120), (1, 80), (2, 80)]),
            ["began", "ended"]
        );
    }

    #[test]
    fn memory_high_follows_a_reloaded_limit() {
        let t0 = Instant::now();
        let mut watch = HighWatch::new(100 * MIB, false);
        assert_eq!(high_lines(&mut watch, t0, &[(0, 120)]), ["began"]);
        watch.set_limit(200 * MIB);
        assert_eq!(high_lines(&mut watch, t0, &[(1, 120)]), ["ended"]);
    }

    #[test]
    fn memory_episodes_warn_once_and_recover_below_the_margin() {
        let th = Thresholds::default();
        let t0 = Instant::now();
        // (seconds, MiB of 100, what is logged)
        let table: [(u64, u64, &[&str]); 9] = [
            (0, 50, &[]),
            (1, 89, &[]),
            (2, 90, &["began memory"]),
            (3, 99, &[]),
            (4, 95, &[]),
            // Between the marks: still the same episode.
            (5, 87, &[]),
            (6, 92, &[]),
            (7, 84, &["ended memory"]),
            (8, 91, &["began memory"]),
        ];
        let mut watch = UnitWatch::default();
        for (secs, mib, want) in table {
            let got = watch.observe(&memory(mib), &th, t0 + Duration::from_secs(secs));
            assert_eq!(kinds(&got), want, "at {secs}s with {mib} MiB");
        }
        assert!(watch.is_active(Concern::Memory));
        assert_eq!(
            watch.active(),
            [
                "memory 91.0M of memory-max 100.0M (91%), at or above 90%: an OOM kill follows if it reaches the limit"
            ]
        );
    }

    #[test]
    fn the_recovery_notice_says_how_long_it_lasted() {
        let th = Thresholds::default();
        let t0 = Instant::now();
        let mut watch = UnitWatch::default();
        watch.observe(&memory(95), &th, t0);
        let ended = watch.observe(&memory(10), &th, t0 + Duration::from_secs(75));
        assert_eq!(
            ended,
            [Notice::Ended {
                concern: Concern::Memory,
                message: "memory 10.0M of memory-max 100.0M (10%), back below 85% (the episode lasted 1m 15s)".into()
            }]
        );
        assert!(watch.active().is_empty());
    }

    #[test]
    fn no_limit_or_no_figure_is_never_an_episode() {
        let th = Thresholds::default();
        let t0 = Instant::now();
        let mut watch = UnitWatch::default();
        let samples = [
            Sample {
                memory_current: Some(u64::MAX),
                ..Sample::default()
            },
            Sample {
                memory_max: Some(1),
                pids_max: Some(1),
                ..Sample::default()
            },
            Sample {
                pids_current: Some(1000),
                ..Sample::default()
            },
        ];
        for (i, s) in samples.iter().enumerate() {
            assert!(
                watch
                    .observe(s, &th, t0 + Duration::from_secs(i as u64))
                    .is_empty()
            );
        }
    }

    #[test]
    fn pids_episodes() {
        let th = Thresholds {
            pids_percent: 80,
            ..Thresholds::default()
        };
        let t0 = Instant::now();
        let table: [(u64, &[&str]); 6] = [
            (5, &[]),
            (8, &["began pids"]),
            (10, &[]),
            (8, &[]),
            // 75% of 10 is the recovery mark: 7 is below it.
            (7, &["ended pids"]),
            (7, &[]),
        ];
        let mut watch = UnitWatch::default();
        for (i, (current, want)) in table.into_iter().enumerate() {
            let s = Sample {
                pids_current: Some(current),
                pids_max: Some(10),
                ..Sample::default()
            };
            let got = watch.observe(&s, &th, t0 + Duration::from_secs(i as u64));
            assert_eq!(kinds(&got), want, "sample {i}: {current} pids");
        }
    }

    #[test]
    fn throttling_is_a_rate_over_time() {
        let th = Thresholds::default(); // 1s per minute
        let t0 = Instant::now();
        // (ms since t0, throttled µs so far, what is logged)
        let table: [(u64, u64, &[&str]); 8] = [
            // The first sample is only a baseline.
            (0, 0, &[]),
            // 10 s later, 100 ms more: 0.6 s per minute.
            (10_000, 100_000, &[]),
            // 10 s later, 500 ms more: 3 s per minute.
            (20_000, 600_000, &["began cpu-throttling"]),
            // 300 ms later is too short a window to judge: nothing, and the base stays.
            (20_300, 1_600_000, &[]),
            // 10 s after the base, 1 s more: still 6 s per minute.
            (30_000, 1_600_000, &[]),
            // Quiet for 10 s.
            (40_000, 1_600_000, &["ended cpu-throttling"]),
            // A restart resets the counter: a new base, no verdict.
            (50_000, 0, &[]),
            (60_000, 2_000_000, &["began cpu-throttling"]),
        ];
        let mut watch = UnitWatch::default();
        for (ms, usec, want) in table {
            let s = Sample {
                throttled_usec: Some(usec),
                ..Sample::default()
            };
            let got = watch.observe(&s, &th, t0 + Duration::from_millis(ms));
            assert_eq!(kinds(&got), want, "at {ms} ms with {usec} µs");
        }
    }

    #[test]
    fn thresholds_round_up_and_give_the_kernel_marks() {
        assert_eq!(Thresholds::share(10, 90), 9);
        assert_eq!(Thresholds::share(64, 90), 58);
        assert_eq!(Thresholds::share(u64::MAX, 100), u64::MAX);
        let th = Thresholds::default();
        assert_eq!(th.memory_marks(100 * MIB), [90 * MIB, 85 * MIB]);
    }
}
