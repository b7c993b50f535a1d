//! Restart delay arithmetic and the start-rate limit.

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
