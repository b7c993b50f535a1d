//! Unit files: reading a units directory into validated `Unit`s, with diagnostics that point at the source.

mod cache;
mod diagnostic;
mod env_file;
mod layers;
mod load;
pub mod model;
mod parse;
mod show;
mod specifier;
mod users;
mod values;

use std::collections::BTreeMap;
use std::path::Path;

pub use cache::{LoadCache, LoadStats};
pub use diagnostic::{Diagnostic, LoadError, Severity};
pub use env_file::{EnvFileError, parse_env_file};
pub use layers::{Layer, UnitLayers};
pub use load::{
    DROP_IN_SUFFIX, MAX_UNIT_FILE_BYTES, is_drop_in_dir_name, is_ignored_file_name, load_dir,
    load_dir_cached, load_dir_with_instances, show_unit,
};
pub use model::*;
pub use users::{MemoryUserDb, SystemUserDb, UserDb, UserEntry};

/// The template an instance named at runtime (`corral start worker@3` with no file) is made
/// from, its name checked by the rules of a file instance's; `Ok(None)` for a name without `@`.
/// The error names the broken rule.
pub fn template_of_instance(name: &str) -> Result<Option<UnitName>, String> {
    specifier::template_of(name).map_err(|e| match e.hint {
        Some(hint) => format!("{} ({hint})", e.message),
        None => e.message,
    })
}

/// Every unit of a directory, by name. Shared: a reload's unchanged unit is the very `Unit` the
/// supervisor already holds (unit/cache.rs kept it), which the diff recognises by its address.
pub type UnitSet = BTreeMap<UnitName, std::sync::Arc<Unit>>;

/// A units directory that read without error.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub units: UnitSet,
    pub warnings: Vec<Diagnostic>,
    /// The runtime instances asked for that were made from their template alone (no file of
    /// their own): those whose template is gone, or that have a file now, are not here.
    pub runtime_instances: std::collections::BTreeSet<UnitName>,
}

/// Parses and validates one unit file on its own: no checks against other units.
///
/// `Ok` carries the unit and its warnings; `Err` every diagnostic (errors first), at least one an error.
pub fn parse_unit(
    name: &UnitName,
    file: &Path,
    text: &str,
    users: &dyn UserDb,
) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    let parse::Parsed {
        unit,
        mut diagnostics,
        ..
    } = parse::parse_file(name, file, text, users);
    diagnostic::sort_diagnostics(&mut diagnostics);
    match unit {
        Some(unit) => Ok((std::sync::Arc::unwrap_or_clone(unit), diagnostics)),
        None => Err(diagnostics),
    }
}

#[cfg(test)]
mod tests;
