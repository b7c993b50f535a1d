//! Episodes of refused notify messages on one socket: the first is logged, the rest counted and
//! reported once the episode ends (or once a minute while it lasts). Time is a parameter.

use std::time::{Duration, Instant};

/// An episode ends after this long without a refusal.
pub const QUIET: Duration = Duration::from_secs(1);
/// A flood that never pauses still reports its count this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// What to do with one refused message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The first of an episode: log it.
    Log,
    /// Counted, reported later.
    Count,
}

/// Refused messages counted since the last line about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u64,
    /// From the episode's first refusal (or the last report) to its latest.
    pub over: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    reported: Instant,
    last: Instant,
    count: u64,
}

/// One socket's refusals.
#[derive(Debug, Default)]
pub struct Refusals {
    episode: Option<Episode>,
}

impl Refusals {
    /// Call `due` first: a refusal after a quiet spell begins a new episode.
    pub fn refused(&mut self, now: Instant) -> Refusal {
        match &mut self.episode {
            Some(e) if now.saturating_duration_since(e.last) < QUIET => {
                e.last = now;
                e.count += 1;
                Refusal::Count
            }
            _ => {
                self.episode = Some(Episode {
                    reported: now,
                    last: now,
                    count: 0,
                });
                Refusal::Log
            }
        }
    }

    /// When `due` next has something to say.
    pub fn deadline(&self) -> Option<Instant> {
        let e = self.episode?;
        let quiet = e.last + QUIET;
        Some(if e.count > 0 {
            quiet.min(e.reported + REPORT_EVERY)
        } else {
            quiet
        })
    }

    /// The count to report now, if the episode ended or has run a report period.
    pub fn due(&mut self, now: Instant) -> Option<Suppressed> {
        let e = self.episode?;
        let report = Suppressed {
            count: e.count,
            over: e.last.saturating_duration_since(e.reported),
        };
        if now.saturating_duration_since(e.last) >= QUIET {
            self.episode = None;
        } else if e.count > 0 && now.saturating_duration_since(e.reported) >= REPORT_EVERY {
            self.episode = Some(Episode {
                reported: now,
                count: 0,
                ..e
            });
        } else {
            return None;
        }
        (report.count > 0).then_some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_once_and_reports_the_rest_when_it_ends() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = Refusals::default();
        assert_eq!(r.deadline(), None);
        assert_eq!(r.refused(t0), Refusal::Log);
        for n in 1..=999 {
            assert_eq!(r.refused(ms(n)), Refusal::Count);
        }
        assert_eq!(r.deadline(), Some(ms(999) + QUIET));
        assert_eq!(r.due(ms(1500)), None, "still within the quiet time");
        assert_eq!(
            r.due(ms(999) + QUIET),
            Some(Suppressed {
                count: 999,
                over: Duration::from_millis(999)
            })
        );
        assert_eq!(r.deadline(), None);
        // The next one begins a new episode, logged again.
        assert_eq!(r.refused(ms(5000)), Refusal::Log);
        // A lone refusal ends with nothing to report.
        assert_eq!(r.due(ms(5000) + QUIET), None);
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn a_flood_without_pause_reports_every_period() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        assert_eq!(r.refused(t0), Refusal::Log);
        let mut now = t0;
        let step = Duration::from_millis(100);
        let mut reports = Vec::new();
        while now < t0 + REPORT_EVERY * 2 + step {
            now += step;
            if let Some(s) = r.due(now) {
                reports.push(s.count);
            }
            assert_eq!(r.refused(now), Refusal::Count);
            assert!(r.deadline().is_some_and(|d| d <= t0 + REPORT_EVERY * 3));
        }
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(reports.iter().all(|&n| n >= 590), "{reports:?}");
    }
}
