//! Requests that make and remove runtime instances: a start of an instance with no file, `scale`, a stop.
//!
//! Which to make, start and remove is core/instances.rs; the set lives in `UnitsDir`, and each
//! is made by reading the units directory as a reload does.

use std::collections::BTreeSet;
use std::time::Instant;

use tracing::info;

use crate::core::instances::{self, MAX_SCALE, StartRefusal};
use crate::core::supervisor::{Goal, Input, RequestError};
use crate::proto::{ErrorBody, ErrorKind, Request, Response};
use crate::unit::UnitName;

use super::Daemon;
use super::control::ClientState;

impl Daemon {
    /// Whether `name` is a unit that stays: known, and not on its way out.
    fn unit_stays(&self, name: &UnitName) -> bool {
        self.sup.get(name).is_some() && !self.sup.is_removing(name)
    }

    /// A start or restart names instances that are no unit yet: each is made from its template
    /// (and so is every other runtime instance again, with the whole directory, as a reload
    /// does). `Err` is the answer of a refused request, and then nothing was applied: a name
    /// that is no unit and no instance, one that breaks a rule of instance names, a template
    /// with no file, an invalid units directory.
    pub(super) fn make_instances(
        &mut self,
        names: &[UnitName],
        now: Instant,
    ) -> Result<(), ErrorBody> {
        let new = match instances::new_instances(names, |n| self.unit_stays(n)) {
            Ok(new) if new.is_empty() => return Ok(()),
            Ok(new) => new,
            Err(StartRefusal::Unknown(unknown)) => {
                return Err(refusal(&RequestError::UnknownUnits(unknown)));
            }
            Err(StartRefusal::BadName(rule)) => {
                return Err(error_body(ErrorKind::UnknownUnit, rule));
            }
        };
        if self.sup.is_shutting_down() {
            return Err(refusal(&RequestError::ShuttingDown));
        }
        if let Some((name, template)) = new.iter().find(|(_, t)| !self.template_exists(t)) {
            return Err(self.no_template(name, template));
        }
        let mut asked = self.units_dir.runtime.clone();
        asked.extend(new.iter().map(|(name, _)| name.clone()));
        let loaded = self
            .load_units(&asked)
            .map_err(|text| error_body(ErrorKind::Invalid, text))?;
        // The template was there a moment ago; gone now, nothing is applied.
        if let Some((name, template)) = new.iter().find(|(n, _)| !loaded.units.contains_key(n)) {
            return Err(self.no_template(name, template));
        }
        for (name, template) in &new {
            info!(unit = %name, template = %template, "runtime instance made from its template");
        }
        self.apply_units(loaded, &asked, now);
        Ok(())
    }

    /// A stop named runtime instances: they are removed as well as stopped (the stop itself
    /// was accepted, so each exists).
    pub(super) fn discard_instances(&mut self, names: &[UnitName], now: Instant) {
        let discarded: Vec<UnitName> = names
            .iter()
            .filter(|n| self.units_dir.runtime.remove(*n))
            .cloned()
            .collect();
        if !discarded.is_empty() {
            for name in &discarded {
                info!(unit = %name, "runtime instance stopped: it is removed once down");
            }
            self.feed(Input::Discard(discarded), now);
        }
    }

    /// `scale TEMPLATE N`: the runtime instances of the template become exactly
    /// `TEMPLATE1..TEMPLATEN`; answered when each is up and each removed one is gone (at once
    /// if that is so already), or at once with `no_block`. Nothing is applied when it is
    /// refused. `Some` is the answer to give now.
    pub(super) fn scale(
        &mut self,
        token: u64,
        request: &Request,
        now: Instant,
    ) -> Option<Response> {
        let (start, gone) = match self.scale_now(request, now) {
            Ok(plan) => plan,
            Err(e) => return Some(Response::error(e.kind, e.message)),
        };
        if request.no_block {
            let statuses = if start.is_empty() {
                Vec::new()
            } else {
                self.statuses(&start, now)
            };
            return Some(Response::units(statuses));
        }
        if let Some(client) = self.control.clients.get_mut(&token) {
            client.state = ClientState::Waiting {
                goal: Goal::Started,
                units: start,
                gone,
            };
        }
        None
    }

    /// Carries out a scale; `Ok` the instances to wait for (up, and gone).
    fn scale_now(
        &mut self,
        request: &Request,
        now: Instant,
    ) -> Result<(Vec<UnitName>, Vec<UnitName>), ErrorBody> {
        let bad = |message: String| error_body(ErrorKind::BadRequest, message);
        let [given] = request.units.as_slice() else {
            return Err(bad("scale takes exactly one template".to_owned()));
        };
        let Some(count) = request.count else {
            return Err(bad("scale needs a `count`".to_owned()));
        };
        if count > MAX_SCALE {
            return Err(bad(format!(
                "count {count} is more than the {MAX_SCALE} instances scale makes of one template"
            )));
        }
        let template = instances::scale_template(given)
            .map_err(|rule| error_body(ErrorKind::UnknownUnit, rule))?;
        let plan = instances::scale(&template, count, &self.units_dir.runtime, |n| {
            self.unit_stays(n)
        });
        // Down to fewer is a stop, which a shutdown allows; up is a start, which it refuses.
        if !plan.start.is_empty() && self.sup.is_shutting_down() {
            return Err(refusal(&RequestError::ShuttingDown));
        }
        // Down to none needs no template (it may be what went); anything else does.
        if (count > 0 || plan.discard.is_empty()) && !self.template_exists(&template) {
            return Err(error_body(
                ErrorKind::UnknownUnit,
                format!(
                    "no template `{template}`: {}",
                    self.template_file(&template)
                ),
            ));
        }
        let mut asked: BTreeSet<UnitName> = self.units_dir.runtime.clone();
        asked.extend(plan.create.iter().cloned());
        for name in &plan.discard {
            asked.remove(name);
        }
        // Read before anything changes: an invalid directory refuses the whole scale.
        let loaded = if plan.create.is_empty() {
            None
        } else {
            let loaded = self
                .load_units(&asked)
                .map_err(|text| error_body(ErrorKind::Invalid, text))?;
            if let Some(missing) = plan.create.iter().find(|n| !loaded.units.contains_key(*n)) {
                return Err(self.no_template(missing, &template));
            }
            Some(loaded)
        };
        info!(
            template = %template,
            count,
            created = UnitName::join(&plan.create, ","),
            removed = UnitName::join(&plan.discard, ","),
            "scale"
        );
        if !plan.discard.is_empty() {
            for name in &plan.discard {
                self.units_dir.runtime.remove(name);
            }
            self.feed(Input::Discard(plan.discard.clone()), now);
        }
        if let Some(loaded) = loaded {
            self.apply_units(loaded, &asked, now);
        }
        if !plan.start.is_empty() {
            self.step(Input::Start(plan.start.clone()), now)
                .map_err(|e| refusal(&e))?;
        }
        Ok((plan.start, plan.discard))
    }

    /// Whether the template has a file (followed if a symlink) to make instances from.
    fn template_exists(&self, template: &UnitName) -> bool {
        std::fs::metadata(self.opts.units_dir.join(format!("{template}.toml")))
            .is_ok_and(|m| m.is_file())
    }

    /// Where `template`'s file was looked for, as an error says it.
    fn template_file(&self, template: &UnitName) -> String {
        let file = self.opts.units_dir.join(format!("{template}.toml"));
        format!("{} is no file", crate::escape::path(&file))
    }

    /// The refusal of a start of `instance` whose template has no file.
    fn no_template(&self, instance: &UnitName, template: &UnitName) -> ErrorBody {
        error_body(
            ErrorKind::UnknownUnit,
            format!(
                "no unit {instance}, and no template `{template}` to make it from: {}",
                self.template_file(template)
            ),
        )
    }
}

fn error_body(kind: ErrorKind, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        kind,
        message: message.into(),
    }
}

/// A refused input as the error its request gets.
fn refusal(e: &RequestError) -> ErrorBody {
    super::requests::refused(e)
        .error
        .unwrap_or_else(|| error_body(ErrorKind::Failed, e.to_string()))
}
