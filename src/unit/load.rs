//! A units directory: which files are units, reading them all, and the checks that span units.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::diagnostic::{Diagnostic, LoadError, sort_diagnostics};
use super::model::{UnitKind, UnitName};
use super::parse::{Parsed, RefField, parse_file};
use super::users::UserDb;
use super::values::did_you_mean;
use super::{Loaded, UnitSet};
use crate::core::graph::DepGraph;

/// Whether a directory entry named `name` is not a unit file: dotfiles (which also covers
/// Kubernetes' `..data` links), editor leftovers (`*~`, `*.swp`, `*.tmp`, `#*#`), and anything
/// not ending in `.toml`.
pub fn is_ignored_file_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".tmp")
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
        || !name.ends_with(".toml")
}

/// Reads every unit of `dir` and checks them against each other.
///
/// Symlinks are followed, for the directory and for each file. Every problem of every file
/// is reported at once; a directory that cannot be read is one error.
pub fn load_dir(dir: &Path, users: &dyn UserDb) -> Result<Loaded, LoadError> {
    let mut diagnostics = Vec::new();
    let files = unit_files(dir, &mut diagnostics)?;
    if files.is_empty() && diagnostics.is_empty() {
        diagnostics.push(Diagnostic::warning(dir, "no unit files found"));
    }
    let mut parsed = BTreeMap::new();
    for (name, path) in &files {
        match read_unit_file(path) {
            Ok(text) => {
                parsed.insert(name.clone(), parse_file(name, path, &text, users));
            }
            Err(e) => diagnostics.push(Diagnostic::error(
                path,
                format!("cannot read unit file: {e}"),
            )),
        }
    }
    cross_check(&files, &parsed, &mut diagnostics);
    let mut units = UnitSet::new();
    for (name, p) in parsed {
        diagnostics.extend(p.diagnostics);
        if let Some(unit) = p.unit {
            units.insert(name, unit);
        }
    }
    sort_diagnostics(&mut diagnostics);
    if diagnostics.iter().any(Diagnostic::is_error) {
        Err(LoadError { diagnostics })
    } else {
        Ok(Loaded {
            units,
            warnings: diagnostics,
        })
    }
}

/// The largest unit file read. The units directory is read on corral's event loop (at start
/// and at each reload); the bound keeps one file from making that read, and corral's memory,
/// as large as the file: real units are a few hundred bytes.
pub const MAX_UNIT_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a unit file: a regular file (checked on the open descriptor, so a FIFO swapped in after
/// the directory scan cannot block the read: it is opened non-blocking) of at most
/// `MAX_UNIT_FILE_BYTES`.
fn read_unit_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > MAX_UNIT_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than the {} a unit file may have",
            meta.len(),
            MAX_UNIT_FILE_BYTES
        ));
    }
    let mut text = String::new();
    // Bounded again while reading: the file may grow after the fstat.
    file.take(MAX_UNIT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_UNIT_FILE_BYTES {
        return Err(format!(
            "more than the {MAX_UNIT_FILE_BYTES} bytes a unit file may have"
        ));
    }
    Ok(text)
}

/// The unit files of `dir` by name. `Err` only when the directory itself cannot be read.
fn unit_files(
    dir: &Path,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<BTreeMap<UnitName, PathBuf>, LoadError> {
    let entries = fs::read_dir(dir).map_err(|e| LoadError {
        diagnostics: vec![Diagnostic::error(
            dir,
            format!("cannot read units directory: {e}"),
        )],
    })?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                diagnostics.push(Diagnostic::error(
                    dir,
                    format!("cannot read units directory: {e}"),
                ));
                continue;
            }
        };
        let file_name = entry.file_name();
        let path = dir.join(&file_name);
        let Some(file_name) = file_name.to_str() else {
            diagnostics.push(Diagnostic::warning(
                path,
                "ignored: the file name is not UTF-8",
            ));
            continue;
        };
        if is_ignored_file_name(file_name) {
            continue;
        }
        // fs::metadata follows symlinks, so ConfigMap-style links to `..data/web.toml` count as files.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(meta) if !meta.is_file() => {
                diagnostics.push(Diagnostic::error(&path, "not a regular file"));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                diagnostics.push(Diagnostic::error(
                    &path,
                    format!("cannot read unit file: {e}"),
                ));
                continue;
            }
        }
        let stem = file_name.strip_suffix(".toml").unwrap_or(file_name);
        match UnitName::new(stem) {
            Some(name) => {
                files.insert(name, path);
            }
            None => diagnostics.push(
                Diagnostic::error(&path, format!("invalid unit name {stem:?}")).with_suggestion(
                    Some("unit names use only letters, digits and `_ . @ -`".into()),
                ),
            ),
        }
    }
    Ok(files)
}

/// References to units that do not exist, slices that are not slices, and cycles.
fn cross_check(
    files: &BTreeMap<UnitName, PathBuf>,
    parsed: &BTreeMap<UnitName, Parsed>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let kind_of = |name: &UnitName| parsed.get(name).and_then(|p| p.kind);
    let mut order = DepGraph::new();
    let mut slices = DepGraph::new();
    for (name, p) in parsed {
        let file = files.get(name).cloned().unwrap_or_default();
        order.add_node(name.clone());
        slices.add_node(name.clone());
        for r in &p.refs {
            let here = |d: Diagnostic| d.at(r.line, r.column).with_key(r.key());
            let target = &r.target;
            if !files.contains_key(target) {
                let hint = did_you_mean(target.as_str(), files.keys().map(UnitName::as_str));
                diagnostics.push(
                    here(Diagnostic::error(&file, format!("unknown unit `{target}`")))
                        .with_suggestion(hint),
                );
                continue;
            }
            match (r.field, kind_of(target)) {
                (RefField::Slice, Some(kind)) if kind != UnitKind::Slice => {
                    diagnostics.push(here(Diagnostic::error(
                        &file,
                        format!("`{target}` is a {}, not a slice", kind.as_str()),
                    )))
                }
                (RefField::Slice, _) => slices.add_edge(name.clone(), target.clone()),
                (_, Some(UnitKind::Slice)) => diagnostics.push(here(Diagnostic::warning(
                    &file,
                    format!("`{target}` is a slice: ordering against a slice has no effect"),
                ))),
                _ => order.add_edge(name.clone(), target.clone()),
            }
        }
    }
    let fields = |f: RefField| f != RefField::Slice;
    for (graph, what, is_field) in [
        (
            &order,
            "dependency cycle",
            &fields as &dyn Fn(RefField) -> bool,
        ),
        (&slices, "slice cycle", &|f| f == RefField::Slice),
    ] {
        for cycle in graph.cycles() {
            let [from, to, ..] = cycle.as_slice() else {
                continue;
            };
            let path: Vec<&str> = cycle.iter().map(UnitName::as_str).collect();
            let mut d = Diagnostic::error(
                files.get(from).cloned().unwrap_or_default(),
                format!("{what}: {}", path.join(" -> ")),
            );
            let edge = parsed
                .get(from)
                .and_then(|p| p.refs.iter().find(|r| &r.target == to && is_field(r.field)));
            if let Some(r) = edge {
                d = d.at(r.line, r.column).with_key(r.key());
            }
            diagnostics.push(d);
        }
    }
}
