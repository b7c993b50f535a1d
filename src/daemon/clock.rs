//! Wall-clock rendering of the core's monotonic instants.

use std::time::{Duration, Instant, SystemTime};

/// One (monotonic, wall) pair taken at start; later instants are placed relative to it so a
/// wall-clock jump never reorders events.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mono: Instant,
    wall: SystemTime,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    pub fn wall(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.mono) {
            Some(after) => self.wall + after,
            None => self.wall - self.mono.saturating_duration_since(at),
        }
    }

    /// RFC 3339, UTC, seconds.
    pub fn rfc3339(&self, at: Instant) -> String {
        humantime::format_rfc3339_seconds(formattable(self.wall(at))).to_string()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// RFC 3339, UTC, microseconds: log lines need sub-second order.
pub fn now_rfc3339_micros() -> String {
    humantime::format_rfc3339_micros(formattable(SystemTime::now())).to_string()
}

/// `at` within what humantime formats, 1970 to 9999 (it panics outside): a machine whose clock
/// is set before 1970 (a dead RTC, a bad `date -s`) must not bring down its init.
pub fn formattable(at: SystemTime) -> SystemTime {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    at.clamp(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH + LAST)
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_and_after_9999_are_formatted_at_the_bounds() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        let at = humantime::format_rfc3339_seconds(formattable(before)).to_string();
        assert_eq!(at, "1970-01-01T00:00:00Z");
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        let at = humantime::format_rfc3339_seconds(formattable(after)).to_string();
        assert_eq!(at, "9999-12-31T23:59:59Z");
    }
}
