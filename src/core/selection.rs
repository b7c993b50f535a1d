//! Which units a read request (`status`, `metrics`) is about: names, glob patterns, states and
//! slices, checked in the supervisor so that a filtered answer is small (docs/protocol.md).

use std::collections::HashSet;

use crate::core::service::State;
use crate::unit::UnitName;

/// Every state name a filter may use (docs/cli.md, "status").
pub const STATE_NAMES: [&str; 8] = [
    "inactive", "starting", "running", "stopping", "backoff", "exited", "failed", "active",
];

/// Why a selection is refused, worded for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("{0:?} is neither a unit name nor a glob pattern")]
    BadName(String),
    #[error("bad glob pattern {pattern:?}: {why}")]
    BadPattern { pattern: String, why: String },
    #[error("unknown state {0:?}; states are {states}", states = STATE_NAMES.join(", "))]
    UnknownState(String),
}

/// A unit argument with one of these is a pattern (`web-*`, `db?`, `[ab]*`), not a name.
fn is_pattern(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// What a read request selects. Empty parts select everything; parts combine with AND, the
/// values of one part with OR.
#[derive(Debug, Default)]
pub struct Selection {
    /// Units named exactly, each once, in the order first named (each must exist).
    pub names: Vec<UnitName>,
    patterns: Vec<glob::Pattern>,
    states: HashSet<State>,
    /// Units in one of these slices, directly or below (each must be a slice).
    pub slices: Vec<UnitName>,
}

impl Selection {
    /// Parses a request's `units` (names and patterns), `states` and `slices`. A state may be
    /// given as a comma list too (`failed,backoff`).
    pub fn parse(
        units: &[String],
        states: &[String],
        slices: &[String],
    ) -> Result<Selection, SelectionError> {
        let mut selection = Selection::default();
        let mut seen = HashSet::new();
        for text in units {
            if is_pattern(text) {
                let pattern = glob::Pattern::new(text).map_err(|e| SelectionError::BadPattern {
                    pattern: text.clone(),
                    why: e.msg.to_owned(),
                })?;
                selection.patterns.push(pattern);
            } else {
                let name =
                    UnitName::new(text).ok_or_else(|| SelectionError::BadName(text.clone()))?;
                if seen.insert(name.clone()) {
                    selection.names.push(name);
                }
            }
        }
        for text in states.iter().flat_map(|s| s.split(',')) {
            let text = text.trim();
            let state = STATE_NAMES
                .iter()
                .position(|s| *s == text)
                .map(state_at)
                .ok_or_else(|| SelectionError::UnknownState(text.to_owned()))?;
            selection.states.insert(state);
        }
        for text in slices.iter().flat_map(|s| s.split(',')) {
            let name = UnitName::new(text.trim())
                .ok_or_else(|| SelectionError::BadName(text.to_owned()))?;
            if !selection.slices.contains(&name) {
                selection.slices.push(name);
            }
        }
        Ok(selection)
    }

    /// Whether units were named exactly and nothing else narrows them: the answer is about
    /// those units (their namespaces are listed, and the CLI shows each in detail).
    pub fn is_by_name(&self) -> bool {
        !self.names.is_empty()
            && self.patterns.is_empty()
            && self.states.is_empty()
            && self.slices.is_empty()
    }

    /// Whether the unit `name`, now in `state`, whose slices from its own parent up are
    /// `slices`, is selected.
    pub fn admits<'a>(
        &self,
        name: &UnitName,
        state: State,
        mut slices: impl Iterator<Item = &'a UnitName>,
    ) -> bool {
        let by_name = (self.names.is_empty() && self.patterns.is_empty())
            || self.names.contains(name)
            || self.patterns.iter().any(|p| p.matches(name.as_str()));
        by_name
            && (self.states.is_empty() || self.states.contains(&state))
            && (self.slices.is_empty() || slices.any(|s| self.slices.contains(s)))
    }
}

fn state_at(i: usize) -> State {
    [
        State::Inactive,
        State::Starting,
        State::Running,
        State::Stopping,
        State::Backoff,
        State::Exited,
        State::Failed,
        State::Active,
    ][i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> UnitName {
        UnitName::new(n).unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn state_names_match_the_states() {
        for (i, text) in STATE_NAMES.iter().enumerate() {
            assert_eq!(state_at(i).as_str(), *text);
        }
    }

    /// (selection's units, states, slices), then (unit, state, its slices, admitted).
    type Case<'a> = (
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
        &'a str,
        State,
        &'a [&'a UnitName],
        bool,
    );

    #[test]
    fn parts_combine_with_and_values_with_or() {
        let pool = name("pool");
        let front = name("front");
        let cases: &[Case] = &[
            (&[], &[], &[], "web", State::Running, &[], true),
            (&["web"], &[], &[], "web", State::Running, &[], true),
            (&["web"], &[], &[], "db", State::Running, &[], false),
            (&["web-*"], &[], &[], "web-1", State::Failed, &[], true),
            (&["web-*"], &[], &[], "db-1", State::Failed, &[], false),
            (
                &["db", "web-?"],
                &[],
                &[],
                "web-1",
                State::Failed,
                &[],
                true,
            ),
            (
                &["db", "web-?"],
                &[],
                &[],
                "web-10",
                State::Failed,
                &[],
                false,
            ),
            (&["[ab]*"], &[], &[], "api", State::Running, &[], true),
            (&[], &["failed"], &[], "web", State::Failed, &[], true),
            (&[], &["failed"], &[], "web", State::Running, &[], false),
            (
                &[],
                &["failed,backoff"],
                &[],
                "web",
                State::Backoff,
                &[],
                true,
            ),
            (
                &[],
                &["failed", "exited"],
                &[],
                "web",
                State::Exited,
                &[],
                true,
            ),
            (
                &["web-*"],
                &["failed"],
                &[],
                "web-1",
                State::Running,
                &[],
                false,
            ),
            (&[], &[], &["pool"], "w", State::Running, &[&pool], true),
            (
                &[],
                &[],
                &["pool"],
                "w",
                State::Running,
                &[&front, &pool],
                true,
            ),
            (&[], &[], &["pool"], "w", State::Running, &[&front], false),
            (&[], &[], &["pool"], "w", State::Running, &[], false),
            (
                &[],
                &[],
                &["front,pool"],
                "w",
                State::Running,
                &[&front],
                true,
            ),
            (
                &[],
                &["running"],
                &["pool"],
                "w",
                State::Failed,
                &[&pool],
                false,
            ),
        ];
        for (units, states, slices, unit, state, chain, admitted) in cases {
            let selection =
                Selection::parse(&strings(units), &strings(states), &strings(slices)).unwrap();
            assert_eq!(
                selection.admits(&name(unit), *state, chain.iter().copied()),
                *admitted,
                "{units:?} {states:?} {slices:?} -> {unit} {state:?} {chain:?}"
            );
        }
    }

    #[test]
    fn only_exact_names_alone_make_a_request_by_name() {
        let by_name = |units: &[&str], states: &[&str]| {
            Selection::parse(&strings(units), &strings(states), &[])
                .unwrap()
                .is_by_name()
        };
        assert!(by_name(&["web", "db"], &[]));
        assert!(!by_name(&[], &[]));
        assert!(!by_name(&["web-*"], &[]));
        assert!(!by_name(&["web", "db-*"], &[]));
        assert!(!by_name(&["web"], &["failed"]));
    }

    #[test]
    fn bad_input_is_refused_with_what_is_wrong() {
        let parse = |units: &[&str], states: &[&str], slices: &[&str]| {
            Selection::parse(&strings(units), &strings(states), &strings(slices)).unwrap_err()
        };
        assert_eq!(
            parse(&["a/b"], &[], &[]),
            SelectionError::BadName("a/b".into())
        );
        assert!(matches!(
            parse(&["web-[a"], &[], &[]),
            SelectionError::BadPattern { .. }
        ));
        let e = parse(&[], &["runing"], &[]);
        assert_eq!(e, SelectionError::UnknownState("runing".into()));
        assert!(e.to_string().contains("running, stopping"), "{e}");
        assert_eq!(
            parse(&[], &[], &["a b"]),
            SelectionError::BadName("a b".into())
        );
    }

    #[test]
    fn names_are_kept_once_in_the_order_first_named() {
        let s = Selection::parse(&strings(&["b", "a", "b"]), &[], &[]).unwrap();
        assert_eq!(s.names, vec![name("b"), name("a")]);
    }
}
