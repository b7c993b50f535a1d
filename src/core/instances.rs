//! Runtime instances (`start worker@3` with no file, `scale`): which to make, start, and remove.
//!
//! The rules as users see them: docs/units.md, "Runtime instances".

use std::collections::BTreeSet;

use crate::unit::{UnitName, template_of_instance};

/// The most instances `scale` asks of one template. Each is a unit with its own process and
/// cgroup: far beyond it, a typo (`scale worker 1000000`) would take the machine, not serve it.
pub const MAX_SCALE: u32 = 100_000;

/// Why a start (or restart) that would make runtime instances is refused; nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartRefusal {
    /// Names without `@` that are no unit.
    Unknown(Vec<UnitName>),
    /// A name breaks a rule of instance names; the message names the rule.
    BadName(String),
}

/// The names of a start that are no unit yet and are to be made from their template, each with
/// that template; every other name must exist (`exists`), or the whole start is refused.
pub fn new_instances(
    names: &[UnitName],
    exists: impl Fn(&UnitName) -> bool,
) -> Result<Vec<(UnitName, UnitName)>, StartRefusal> {
    let mut unknown = Vec::new();
    let mut new = Vec::new();
    for name in names.iter().filter(|n| !exists(n)) {
        match template_of_instance(name.as_str()) {
            Ok(Some(template)) => new.push((name.clone(), template)),
            Ok(None) => unknown.push(name.clone()),
            Err(rule) => return Err(StartRefusal::BadName(rule)),
        }
    }
    if unknown.is_empty() {
        Ok(new)
    } else {
        Err(StartRefusal::Unknown(unknown))
    }
}

/// The template `scale` names: `worker` or `worker@`; the error names the rule broken.
pub fn scale_template(given: &str) -> Result<UnitName, String> {
    let bare = given.strip_suffix('@').unwrap_or(given);
    if bare.contains('@') {
        return Err(format!(
            "scale takes a template's name (`worker` or `worker@`), not {given:?}"
        ));
    }
    let template = format!("{bare}@");
    match template_of_instance(&format!("{template}1")) {
        Ok(Some(t)) if t.as_str() == template => Ok(t),
        Ok(_) => Err(format!("{given:?} names no template")),
        Err(rule) => Err(rule),
    }
}

/// What `scale TEMPLATE N` does: the runtime instances of the template become exactly
/// `TEMPLATE1` .. `TEMPLATEN`. Instances with a file are configuration: scale starts those in
/// range like `start` would and never stops or removes one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScalePlan {
    /// In range and no unit yet: made from the template (in number order).
    pub create: Vec<UnitName>,
    /// Runtime instances of the template out of range (any instance string, `worker@blue`
    /// too): stopped and forgotten.
    pub discard: Vec<UnitName>,
    /// Every instance in range: each is started, and the answer waits for them all.
    pub start: Vec<UnitName>,
}

/// `template` (`worker@`) scaled to `count`, given the runtime instances there are (of every
/// template) and whether a unit of a name exists (and is not on its way out).
pub fn scale(
    template: &UnitName,
    count: u32,
    runtime: &BTreeSet<UnitName>,
    exists: impl Fn(&UnitName) -> bool,
) -> ScalePlan {
    let start: Vec<UnitName> = (1..=count).filter_map(|n| numbered(template, n)).collect();
    let wanted: BTreeSet<&UnitName> = start.iter().collect();
    let create = start.iter().filter(|n| !exists(n)).cloned().collect();
    let discard = runtime
        .iter()
        .filter(|n| !wanted.contains(n))
        .filter(|n| {
            template_of_instance(n.as_str())
                .ok()
                .flatten()
                .is_some_and(|t| &t == template)
        })
        .cloned()
        .collect();
    ScalePlan {
        create,
        discard,
        start,
    }
}

/// `worker@` and 3: `worker@3`.
pub fn numbered(template: &UnitName, n: u32) -> Option<UnitName> {
    UnitName::new(&format!("{template}{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures::name;

    fn names(v: &[UnitName]) -> Vec<&str> {
        v.iter().map(UnitName::as_str).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<UnitName> {
        v.iter().map(|n| name(n)).collect()
    }

    #[test]
    fn scale_makes_the_runtime_instances_exactly_one_to_n_and_leaves_files_alone() {
        // Units there are: worker@2 has a file, worker@1, 5 and blue are runtime instances,
        // other@9 is another template's.
        let runtime = set(&["worker@1", "worker@5", "worker@blue", "other@9"]);
        let exists =
            |n: &UnitName| runtime.contains(n) || ["worker@2", "worker@7"].contains(&n.as_str());
        let t = name("worker@");
        struct Row {
            count: u32,
            create: &'static [&'static str],
            discard: &'static [&'static str],
            start: &'static [&'static str],
        }
        #[rustfmt::skip]
        let rows = [
            // Down to none: every runtime instance goes; the files' worker@2 and @7 stay.
            Row { count: 0, create: &[], discard: &["worker@1", "worker@5", "worker@blue"], start: &[] },
            Row { count: 1, create: &[], discard: &["worker@5", "worker@blue"], start: &["worker@1"] },
            // worker@2 exists by its file: started, not made.
            Row { count: 3, create: &["worker@3"], discard: &["worker@5", "worker@blue"], start: &["worker@1", "worker@2", "worker@3"] },
            Row { count: 5, create: &["worker@3", "worker@4"], discard: &["worker@blue"], start: &["worker@1", "worker@2", "worker@3", "worker@4", "worker@5"] },
        ];
        for row in rows {
            let plan = scale(&t, row.count, &runtime, exists);
            assert_eq!(names(&plan.create), row.create, "create, {}", row.count);
            assert_eq!(names(&plan.discard), row.discard, "discard, {}", row.count);
            assert_eq!(names(&plan.start), row.start, "start, {}", row.count);
        }
    }

    #[test]
    fn a_start_makes_instances_of_unknown_names_and_refuses_anything_else_whole() {
        let exists = |n: &UnitName| ["web", "worker@1"].contains(&n.as_str());
        let made = new_instances(&[name("web"), name("worker@1"), name("worker@2")], exists);
        assert_eq!(made, Ok(vec![(name("worker@2"), name("worker@"))]));
        assert_eq!(
            new_instances(&[name("nope"), name("worker@2"), name("gone")], exists),
            Err(StartRefusal::Unknown(vec![name("nope"), name("gone")]))
        );
        let Err(StartRefusal::BadName(rule)) = new_instances(&[name("worker@")], exists) else {
            panic!("a template is no instance");
        };
        assert!(rule.contains("is a template"), "{rule}");
        assert!(matches!(
            new_instances(&[name("@2")], exists),
            Err(StartRefusal::BadName(_))
        ));
    }

    #[test]
    fn scale_takes_a_templates_name_with_or_without_its_at() {
        assert_eq!(scale_template("worker"), Ok(name("worker@")));
        assert_eq!(scale_template("worker@"), Ok(name("worker@")));
        for bad in ["worker@3", "a@b@", "", "@", "a b"] {
            assert!(scale_template(bad).is_err(), "{bad:?}");
        }
    }
}
