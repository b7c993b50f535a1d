//! The units directory as the loop sees it: its watch, when a change is reloaded, the last error, what the last read found.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::os::watch::DirWatch;
use crate::unit::{LoadCache, UnitName};

/// The units directory's watch, the reload a change makes due, why the last reload (or, for a
/// host init, the start) was refused until one succeeds, and the runtime instances the operator
/// asked for on top of the directory's files.
pub(super) struct UnitsDir {
    /// `None` where the directory cannot be watched: SIGHUP or `corral reload` then.
    pub(super) watch: Option<DirWatch>,
    pub(super) due: ReloadDebounce,
    pub(super) last_error: Option<String>,
    /// Instances made from their template at runtime (`corral start worker@3` with no file,
    /// `corral scale`): read with the directory at each reload, so each is made again from
    /// the template as it is then. Until `stop` or `scale` removes one, its template goes, or
    /// a file of its own takes it over; never written down, so a restart of corral forgets
    /// them (docs/units.md, "Runtime instances").
    pub(super) runtime: BTreeSet<UnitName>,
    /// What the last read of the directory found, so that a reload reads and parses only
    /// what changed (unit/cache.rs).
    pub(super) cache: LoadCache,
}

impl UnitsDir {
    pub(super) fn new(
        watch: Option<DirWatch>,
        startup_error: Option<String>,
        cache: LoadCache,
    ) -> UnitsDir {
        UnitsDir {
            watch,
            due: ReloadDebounce::default(),
            last_error: startup_error,
            runtime: BTreeSet::new(),
            cache,
        }
    }

    /// The watch woke the loop: a reload is due once the changes settle, if what changed can
    /// be a unit (the watch reads a bounded amount and tells).
    pub(super) fn changed(&mut self, now: Instant) {
        let wanted = match self.watch.as_mut().map(DirWatch::drain) {
            Some(Ok(wanted)) => wanted,
            Some(Err(e)) => {
                warn!("{e}; changes there are seen on SIGHUP or `corral reload`");
                true
            }
            None => false,
        };
        if wanted {
            self.due.changed(now);
        }
    }
}

/// Changes in the units directory settle for this long before a reload (editors write in
/// several steps)...
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);
/// ...but a directory that never stops changing is still reloaded this often.
const RELOAD_MAX_DELAY: Duration = Duration::from_secs(1);

/// A debounced reload: due at `.0`; the first change of the burst came at `.1`.
#[derive(Debug, Default)]
pub(super) struct ReloadDebounce(Option<(Instant, Instant)>);

impl ReloadDebounce {
    /// The directory changed at `now`.
    pub(super) fn changed(&mut self, now: Instant) {
        let first = self.0.map_or(now, |(_, first)| first);
        let due = (now + RELOAD_DEBOUNCE).min(first + RELOAD_MAX_DELAY);
        self.0 = Some((due, first));
    }

    pub(super) fn is_due(&self, now: Instant) -> bool {
        self.0.is_some_and(|(due, _)| due <= now)
    }

    /// A reload happened (for whatever reason): nothing is due any more.
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.0.map(|(due, _)| due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_reloaded_once_it_settles_or_after_the_max_delay() {
        let t0 = Instant::now();
        let mut d = ReloadDebounce::default();
        assert!(!d.is_due(t0));
        d.changed(t0);
        assert_eq!(d.deadline(), Some(t0 + RELOAD_DEBOUNCE));
        d.changed(t0 + Duration::from_millis(50));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(150)));
        assert!(!d.is_due(t0 + Duration::from_millis(149)));
        assert!(d.is_due(t0 + Duration::from_millis(150)));
        // A directory that keeps changing is reloaded by the max delay all the same.
        d.changed(t0 + Duration::from_millis(950));
        assert_eq!(d.deadline(), Some(t0 + RELOAD_MAX_DELAY));
        d.clear();
        assert_eq!(d.deadline(), None);
    }
}
