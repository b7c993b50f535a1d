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
        humantime::format_rfc3339_seconds(self.wall(at)).to_string()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// RFC 3339, UTC, microseconds: log lines need sub-second order.
pub fn now_rfc3339_micros() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
