//! Restart delay arithmetic, the start-rate limit, and the retry schedule of a cgroup removal.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The delay before the restart that follows `consecutive_failures` failures in a row:
/// `delay` after the first, doubling each time, capped at `max_delay`.
pub fn restart_delay(delay: Duration, max_delay: Duration, consecutive_failures: u32) -> Duration {
    let doublings = consecutive_failures.saturating_sub(1).min(63);
    let factor = 1u64 << doublings;
    let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let grown = Duration::from_millis(millis.saturating_mul(factor));
    grown.min(max_delay.max(delay))
}

/// When a retried operation (a cgroup's `rmdir`, EBUSY until its last member is gone) is due
/// next: at once, then after `FIRST`, doubling up to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub due: Instant,
    delay: Duration,
}

impl Retry {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(1);

    /// A first try at `now`.
    pub fn at(now: Instant) -> Retry {
        Retry {
            due: now,
            delay: Retry::FIRST,
        }
    }

    /// The try at `now` did not succeed: the next one is later.
    pub fn failed(&mut self, now: Instant) {
        self.due = now + self.delay;
        self.delay = (self.delay * 2).min(Retry::MAX);
    }
}

/// Start times inside the start-limit window, oldest first.
#[derive(Debug, Clone, Default)]
pub struct StartHistory {
    starts: VecDeque<Instant>,
}

impl StartHistory {
    /// Whether one more start at `now` would exceed `burst` starts within `interval`.
    pub fn would_exceed(&mut self, now: Instant, burst: u32, interval: Duration) -> bool {
        self.forget_before(now, interval);
        self.starts.len() >= burst as usize
    }

    pub fn record(&mut self, now: Instant, interval: Duration) {
        self.forget_before(now, interval);
        self.starts.push_back(now);
    }

    pub fn clear(&mut self) {
        self.starts.clear();
    }

    fn forget_before(&mut self, now: Instant, interval: Duration) {
        while let Some(&first) = self.starts.front() {
            if now.saturating_duration_since(first) >= interval {
                self.starts.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_retry_backs_off_from_10ms_doubling_to_1s() {
        use super::Retry;
        let t0 = std::time::Instant::now();
        let mut retry = Retry::at(t0);
        assert_eq!(retry.due, t0);
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..9 {
            retry.failed(now);
            waits.push((retry.due - now).as_millis());
            now = retry.due;
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delay_doubles_from_the_first_failure_and_caps() {
        let table = [
            (0, 100),
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (60, 1000),
            (u32::MAX, 1000),
        ];
        for (failures, want) in table {
            assert_eq!(
                restart_delay(MS(100), MS(1000), failures),
                MS(want),
                "{failures}"
            );
        }
    }

    #[test]
    fn max_delay_below_delay_never_shortens_the_delay() {
        assert_eq!(restart_delay(MS(500), MS(100), 3), MS(500));
    }

    #[test]
    fn start_limit_counts_only_inside_the_window() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        let mut history = StartHistory::default();
        for i in 0..5 {
            assert!(!history.would_exceed(t0 + MS(i), 5, interval));
            history.record(t0 + MS(i), interval);
        }
        assert!(history.would_exceed(t0 + MS(9_000), 5, interval));
        // The first start (t0) leaves the window at t0 + 10s.
        assert!(!history.would_exceed(t0 + MS(10_000), 5, interval));
        history.clear();
        assert!(!history.would_exceed(t0 + MS(10_001), 1, interval));
    }
}
