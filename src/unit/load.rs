//! A units directory: which files are units (and templates, instances, drop-ins), reading them
//! all, and the checks that span units.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use super::cache::{FileIdentity, LoadCache, Pass, Role};
use super::diagnostic::{Diagnostic, LoadError, sort_diagnostics};
use super::layers::{Layer, UnitLayers};
use super::model::{UnitKind, UnitName};
use super::parse::{Parsed, RefField};
use super::show;
use super::specifier::{NameKind, name_kind};
use super::users::UserDb;
use super::values::did_you_mean;
use super::{Loaded, UnitSet};
use crate::core::graph::DepGraph;
use crate::os::dir_scan::{self, Kind};

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
/// Symlinks are followed, for the directory and for each file. A template (`worker@.toml`) is
/// checked with a placeholder instance but is no unit; each instance (`worker@3.toml`) is the
/// template with the instance's file and drop-ins merged over it. Every problem of every file
/// is reported at once; a directory that cannot be read is one error.
pub fn load_dir(dir: &Path, users: &dyn UserDb) -> Result<Loaded, LoadError> {
    load_dir_with_instances(dir, users, &BTreeSet::new())
}

/// [`load_dir`], plus the runtime instances `runtime` (`corral start worker@3`, `corral
/// scale`): each that has no file is made from its template (and its drop-ins, and its own
/// `worker@3.toml.d/` if there is one) exactly as a symlink to the template would make it. One
/// with a file of its own is that file's; one whose template is gone is left out (the caller
/// says so, `Loaded::runtime_instances` tells which were made). No file may name a runtime
/// instance in `after`, `requires` or `slice`: it can be gone at the next `stop` or `scale`.
pub fn load_dir_with_instances(
    dir: &Path,
    users: &dyn UserDb,
    runtime: &BTreeSet<UnitName>,
) -> Result<Loaded, LoadError> {
    load_dir_cached(dir, users, runtime, &mut LoadCache::new())
}

/// [`load_dir_with_instances`] reusing what `cache` kept of the last read of `dir`: only the
/// files whose identity (device, inode, size, mtime, ctime) changed, or had not settled, are
/// read, and only the units made of a file whose content changed, or whose user database
/// answers changed, are parsed (unit/cache.rs). The outcome is the one a read of everything
/// would give; the cache is updated whether it is `Ok` or not (it remembers files, not what
/// was applied).
pub fn load_dir_cached(
    dir: &Path,
    users: &dyn UserDb,
    runtime: &BTreeSet<UnitName>,
    cache: &mut LoadCache,
) -> Result<Loaded, LoadError> {
    // Taken before the directory is listed: a file is trusted by identity only if its last
    // change was well before this (unit/cache.rs, `settled_at`).
    load_dir_at(dir, users, runtime, cache, SystemTime::now())
}

/// [`load_dir_cached`] with the scan's time given (tests set it later, for files to settle).
pub(crate) fn load_dir_at(
    dir: &Path,
    users: &dyn UserDb,
    runtime: &BTreeSet<UnitName>,
    cache: &mut LoadCache,
    scan: SystemTime,
) -> Result<Loaded, LoadError> {
    let mut diagnostics = Vec::new();
    // Room for as many files as the last read found.
    let files = unit_files(dir, runtime, &mut diagnostics, cache.file_count())?;
    if files.units.is_empty() && diagnostics.is_empty() && runtime.is_empty() {
        diagnostics.push(Diagnostic::warning(dir, "no unit files found"));
    }
    let mut pass = Pass::begin(cache, dir, scan, users);
    let assembled = assemble(dir, &files, runtime, &mut pass, &mut diagnostics);
    let mut parse_all = |plans: &BTreeMap<UnitName, UnitLayers>, role: Role| {
        // In name order: built at once at the end, not one insert per name.
        let mut out = Vec::with_capacity(plans.len());
        for (name, layers) in plans {
            match pass.parse(name, role, layers) {
                Ok(parsed) => out.push((name.clone(), parsed)),
                Err((path, e)) => diagnostics.push(Diagnostic::error(
                    path,
                    format!("cannot read unit file: {e}"),
                )),
            }
        }
        out
    };
    let parsed = parse_all(&assembled.units, Role::Unit);
    // Two runs in name order, merged by the sort that builds the map.
    let parsed: BTreeMap<UnitName, Rc<Parsed>> = assembled.kept.into_iter().chain(parsed).collect();
    let templates: BTreeMap<UnitName, Rc<Parsed>> = parse_all(&assembled.templates, Role::Template)
        .into_iter()
        .collect();
    pass.finish();
    cross_check(&parsed, &templates, &assembled.runtime, &mut diagnostics);
    // A template's own problem shows once, as the template's, not again for each instance.
    let template_problems: HashSet<Diagnostic> = templates
        .values()
        .flat_map(|p| p.diagnostics.iter().cloned())
        .inspect(|d| diagnostics.push(d.clone()))
        .collect();
    let mut units = Vec::with_capacity(parsed.len());
    for (name, p) in parsed {
        diagnostics.extend(
            p.diagnostics
                .iter()
                .filter(|d| {
                    d.instance.is_none()
                        || !template_problems.contains(&Diagnostic {
                            instance: None,
                            ..(*d).clone()
                        })
                })
                .cloned(),
        );
        if let Some(unit) = &p.unit {
            units.push((name, Arc::clone(unit)));
        }
    }
    let units: UnitSet = units.into_iter().collect();
    // Each instance checks its template's references again: the same problem, once is enough.
    let mut seen = HashSet::new();
    diagnostics.retain(|d| seen.insert(d.clone()));
    sort_diagnostics(&mut diagnostics);
    if diagnostics.iter().any(Diagnostic::is_error) {
        Err(LoadError { diagnostics })
    } else {
        Ok(Loaded {
            units,
            warnings: diagnostics,
            runtime_instances: assembled.runtime,
        })
    }
}

/// What the merged unit `name` of `dir` is made of, as TOML with the file and line of every
/// key (`corral check --show`). A template is shown with its specifiers unexpanded.
pub fn show_unit(dir: &Path, name: &str) -> Result<String, LoadError> {
    let mut diagnostics = Vec::new();
    let files = unit_files(dir, &BTreeSet::new(), &mut diagnostics, 0)?;
    let mut cache = LoadCache::new();
    let no_users = super::users::MemoryUserDb::new();
    let mut pass = Pass::begin(&mut cache, dir, SystemTime::now(), &no_users);
    let mut assembled = assemble(dir, &files, &BTreeSet::new(), &mut pass, &mut diagnostics);
    let found = UnitName::new(name).and_then(|n| {
        assembled
            .units
            .remove(&n)
            .or_else(|| assembled.templates.remove(&n).map(UnitLayers::unexpanded))
    });
    let layers = match found.map(|layers| pass.filled(&layers)) {
        Some(Ok(layers)) => layers,
        found => {
            if let Some(Err((path, e))) = found {
                diagnostics.push(Diagnostic::error(
                    path,
                    format!("cannot read unit file: {e}"),
                ));
            }
            let mut errors: Vec<Diagnostic> = diagnostics
                .into_iter()
                .filter(Diagnostic::is_error)
                .collect();
            if errors.is_empty() {
                errors.push(Diagnostic::error(
                    dir,
                    format!("no unit `{}` here", crate::escape::terminal(name)),
                ));
            }
            return Err(LoadError {
                diagnostics: errors,
            });
        }
    };
    show::render(&layers, dir).map_err(|diagnostics| LoadError { diagnostics })
}

/// The units and templates of a directory, each as the files it is merged from (a plan: the
/// texts are read by the pass only for the units it parses).
struct Assembled {
    /// The units to parse (or whose parse the pass may keep: their files changed, or they are
    /// made of several).
    units: BTreeMap<UnitName, UnitLayers>,
    /// The plain units of one file the pass kept the last read's parse of, in name order.
    kept: Vec<(UnitName, Rc<Parsed>)>,
    /// Each with a placeholder instance, for checking it on its own.
    templates: BTreeMap<UnitName, UnitLayers>,
    /// The units made from a template alone, at runtime (also in `units`).
    runtime: BTreeSet<UnitName>,
}

/// Finds the files of every unit: its own, its template's (for an instance), and the drop-ins
/// of each; then makes each runtime instance without a file from its template. Each file gets
/// its generation from `pass` (which reads it if the last read's cannot be trusted); a unit
/// with a file that cannot be read is left out (the error is reported).
fn assemble(
    dir: &Path,
    files: &UnitFiles,
    runtime: &BTreeSet<UnitName>,
    pass: &mut Pass,
    diagnostics: &mut Vec<Diagnostic>,
) -> Assembled {
    // Every layer of the plan shares one empty text until the pass reads it.
    let unread: Rc<str> = Rc::from("");
    // The file's generation from the pass (which reads it if the last read's cannot be
    // trusted); `None`: it could not be read (reported).
    let read =
        |pass: &mut Pass, file: &ScannedFile, what: &str, diagnostics: &mut Vec<Diagnostic>| {
            match pass.generation(&file.path, &file.identity) {
                Ok(generation) => Some(generation),
                Err(e) => {
                    diagnostics.push(Diagnostic::error(
                        &file.path,
                        format!("cannot read {what}: {e}"),
                    ));
                    None
                }
            }
        };
    let layer = |file: &ScannedFile| Layer {
        file: file.path.clone(),
        text: Rc::clone(&unread),
    };
    let with_drop_ins = |pass: &mut Pass,
                         name: &UnitName,
                         mut layers: Vec<Layer>,
                         diagnostics: &mut Vec<Diagnostic>| {
        for file in files.drop_ins.get(name).into_iter().flatten() {
            read(pass, file, "drop-in", diagnostics)?;
            layers.push(layer(file));
        }
        Some(layers)
    };
    // Gathered, then built at once (sorted and laid out), not one insert per name.
    let mut units = Vec::with_capacity(files.units.len());
    let mut kept = Vec::with_capacity(files.units.len());
    let mut templates = BTreeMap::new();
    let mut instances = Vec::new();
    for (name, file) in &files.units {
        match name_kind(name.as_str()) {
            Ok(NameKind::Plain) => {
                let Some(generation) = read(pass, file, "unit file", diagnostics) else {
                    continue;
                };
                // The usual unit: one file, the last read's, so the last read's parse (no
                // plan built for it).
                if !files.drop_ins.contains_key(name)
                    && let Some(parsed) = pass.kept_plain(name, generation)
                {
                    kept.push((name.clone(), parsed));
                    continue;
                }
                if let Some(layers) = with_drop_ins(pass, name, vec![layer(file)], diagnostics) {
                    units.push((name.clone(), UnitLayers::plain(&file.path, layers)));
                }
            }
            Ok(NameKind::Template) => {
                if read(pass, file, "unit file", diagnostics).is_none() {
                    continue;
                }
                if let Some(layers) = with_drop_ins(pass, name, vec![layer(file)], diagnostics) {
                    templates.insert(name.clone(), UnitLayers::template(&file.path, layers, name));
                }
            }
            Ok(NameKind::Instance { template }) => instances.push((name, file, template)),
            Err(problem) => diagnostics
                .push(Diagnostic::error(&file.path, problem.message).with_suggestion(problem.hint)),
        }
    }
    for (name, file, template) in instances {
        let template_name = UnitName::new(template);
        let Some((base, template_file)) = template_name
            .as_ref()
            .and_then(|t| templates.get(t).zip(files.units.get(t)))
        else {
            if !template_name.is_some_and(|t| files.units.contains_key(&t)) {
                diagnostics.push(
                    Diagnostic::error(
                        &file.path,
                        format!("`{name}` is an instance of `{template}`, which has no file"),
                    )
                    .with_suggestion(Some(format!(
                        "create the template {template}.toml, or name this unit without `@`"
                    ))),
                );
            }
            // Else the template could not be read: reported already.
            continue;
        };
        let base: &UnitLayers = base;
        let mut layers = base.layers.clone();
        let template_layers = layers.len();
        // A symlink to the template (the systemd way) adds nothing over it.
        if !file.identity.same_inode(&template_file.identity) {
            if read(pass, file, "unit file", diagnostics).is_none() {
                continue;
            }
            layers.push(layer(file));
        }
        if let Some(layers) = with_drop_ins(pass, name, layers, diagnostics) {
            units.push((
                name.clone(),
                UnitLayers::instance(name, &file.path, layers, template_layers),
            ));
        }
    }
    let mut made = BTreeSet::new();
    for name in runtime.iter().filter(|n| !files.units.contains_key(*n)) {
        let Ok(NameKind::Instance { template }) = name_kind(name.as_str()) else {
            continue;
        };
        let Some(base) = UnitName::new(template).and_then(|t| templates.get(&t)) else {
            continue;
        };
        // Problems with no position of their own name the file this instance would have.
        let main = dir.join(format!("{name}.toml"));
        let template_layers = base.layers.len();
        if let Some(layers) = with_drop_ins(pass, name, base.layers.clone(), diagnostics) {
            units.push((
                name.clone(),
                UnitLayers::instance(name, main, layers, template_layers),
            ));
            made.insert(name.clone());
        }
    }
    Assembled {
        units: units.into_iter().collect(),
        kept,
        templates,
        runtime: made,
    }
}

pub use super::cache::MAX_UNIT_FILE_BYTES;

/// A file the directory scan found: its path and what `stat` (symlinks followed) said of it.
struct ScannedFile {
    path: PathBuf,
    identity: FileIdentity,
}

/// The files of a units directory: each unit's (templates' and instances' too), and the
/// drop-ins of each, in the order they merge.
struct UnitFiles {
    units: BTreeMap<UnitName, ScannedFile>,
    drop_ins: BTreeMap<UnitName, Vec<ScannedFile>>,
}

/// The suffix of a unit's drop-in directory: `web.toml.d/`.
pub const DROP_IN_SUFFIX: &str = ".toml.d";

/// Whether a directory entry named `name` can be a drop-in directory (`web.toml.d`).
pub fn is_drop_in_dir_name(name: &str) -> bool {
    !name.starts_with('.') && name.len() > DROP_IN_SUFFIX.len() && name.ends_with(DROP_IN_SUFFIX)
}

/// The unit files of `dir` and their drop-ins (those of the `runtime` instances too). `Err`
/// only when the directory itself cannot be read.
///
/// One scan of the directory's descriptor (os/dir_scan.rs): an `fstatat` per entry that can be
/// a unit file or a drop-in directory, none for leftovers; symlinks are followed, so
/// ConfigMap-style links to `..data/web.toml` count as files.
fn unit_files(
    dir: &Path,
    runtime: &BTreeSet<UnitName>,
    diagnostics: &mut Vec<Diagnostic>,
    capacity: usize,
) -> Result<UnitFiles, LoadError> {
    // A superset of the names stat'ed below (unit files, drop-in directories), in bytes: the
    // loop checks each name as UTF-8 once.
    let wanted = |name: &OsStr| {
        let name = name.as_encoded_bytes();
        !name.starts_with(b".") && (name.ends_with(b".toml") || name.ends_with(b".toml.d"))
    };
    let mut files = Vec::with_capacity(capacity);
    let mut drop_in_dirs = BTreeMap::new();
    let each = |entry: std::io::Result<dir_scan::Entry>| {
        let Some((entry, file_name)) = listed(entry, dir, "units directory", diagnostics) else {
            return;
        };
        if is_drop_in_dir_name(file_name)
            && matches!(&entry.stat, Some(Ok(stat)) if stat.kind == Kind::Dir)
        {
            let stem = &file_name[..file_name.len() - DROP_IN_SUFFIX.len()];
            drop_in_dirs.insert(stem.to_owned(), dir.join(file_name));
            return;
        }
        if is_ignored_file_name(file_name) {
            return;
        }
        let path = in_dir(dir, file_name);
        let identity = match entry.stat {
            Some(Ok(stat)) if stat.kind == Kind::Dir => return,
            Some(Ok(stat)) if stat.kind != Kind::File => {
                diagnostics.push(Diagnostic::error(&path, "not a regular file"));
                return;
            }
            Some(Ok(stat)) => FileIdentity::scanned(&stat),
            Some(Err(e)) => {
                diagnostics.push(Diagnostic::error(
                    &path,
                    format!("cannot read unit file: {e}"),
                ));
                return;
            }
            None => return,
        };
        let stem = file_name.strip_suffix(".toml").unwrap_or(file_name);
        match UnitName::new(stem) {
            Some(name) => files.push((name, ScannedFile { path, identity })),
            None => diagnostics.push(
                Diagnostic::error(&path, format!("invalid unit name {stem:?}")).with_suggestion(
                    Some("unit names use only letters, digits and `_ . @ -`".into()),
                ),
            ),
        }
    };
    if let Err(e) = dir_scan::scan(dir, wanted, each) {
        return Err(LoadError {
            diagnostics: vec![Diagnostic::error(
                dir,
                format!("cannot read units directory: {e}"),
            )],
        });
    }
    // Built at once from the listing (sorted, then laid out), not one insert per name. The
    // sort moves indices, not the entries (100 bytes each); the names are unique (each is a
    // directory entry's), so the map's own sort then finds one run.
    // Each with its first 16 bytes as a number, which orders as the names do (zero-padded:
    // names have no NUL), so most comparisons are one of two numbers.
    let prefix = |name: &UnitName| {
        let mut bytes = [0u8; 16];
        let name = name.as_str().as_bytes();
        let n = name.len().min(16);
        bytes[..n].copy_from_slice(&name[..n]);
        u128::from_be_bytes(bytes)
    };
    let mut order: Vec<(u128, u32)> = (0..files.len())
        .map(|i| (prefix(&files[i].0), i as u32))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| files[a.1 as usize].0.cmp(&files[b.1 as usize].0))
    });
    let mut slots: Vec<Option<(UnitName, ScannedFile)>> = files.into_iter().map(Some).collect();
    let files: BTreeMap<UnitName, ScannedFile> = order
        .into_iter()
        .filter_map(|(_, i)| slots[i as usize].take())
        .collect();
    let mut drop_ins = BTreeMap::new();
    for (stem, path) in drop_in_dirs {
        match UnitName::new(&stem).filter(|name| files.contains_key(name) || runtime.contains(name))
        {
            Some(name) => {
                drop_ins.insert(name, drop_in_files(&path, diagnostics));
            }
            None => diagnostics.push(Diagnostic::warning(
                &path,
                format!("ignored: no unit file {stem}.toml for these drop-ins"),
            )),
        }
    }
    Ok(UnitFiles {
        units: files,
        drop_ins,
    })
}

/// `dir/name` in one allocation (`Path::join` parses `dir` into components to push onto it).
fn in_dir(dir: &Path, name: &str) -> PathBuf {
    if dir.as_os_str().is_empty() {
        return PathBuf::from(name);
    }
    let dir = dir.as_os_str();
    let mut path = std::ffi::OsString::with_capacity(dir.len() + 1 + name.len());
    path.push(dir);
    if !dir.as_encoded_bytes().ends_with(b"/") {
        path.push("/");
    }
    path.push(name);
    PathBuf::from(path)
}

/// An entry of a directory `scan` listed, with its name as UTF-8; `None`, with the problem
/// said, for a listing that failed (of `what`) or a name that is not UTF-8 (ignored).
fn listed<'a>(
    entry: std::io::Result<dir_scan::Entry<'a>>,
    dir: &Path,
    what: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(dir_scan::Entry<'a>, &'a str)> {
    let entry = match entry {
        Ok(entry) => entry,
        Err(e) => {
            diagnostics.push(Diagnostic::error(dir, format!("cannot read {what}: {e}")));
            return None;
        }
    };
    let Some(name) = entry.name.to_str() else {
        diagnostics.push(Diagnostic::warning(
            dir.join(entry.name),
            "ignored: the file name is not UTF-8",
        ));
        return None;
    };
    Some((entry, name))
}

/// The `*.toml` files of a drop-in directory, in the byte order of their names (the order
/// they merge in), leftovers skipped as in the units directory.
fn drop_in_files(dir: &Path, diagnostics: &mut Vec<Diagnostic>) -> Vec<ScannedFile> {
    let wanted = |name: &OsStr| name.to_str().is_none_or(|n| !is_ignored_file_name(n));
    let mut out = Vec::new();
    let each = |entry: std::io::Result<dir_scan::Entry>| {
        let Some((entry, name)) = listed(entry, dir, "drop-in directory", diagnostics) else {
            return;
        };
        if is_ignored_file_name(name) {
            return;
        }
        let path = in_dir(dir, name);
        match entry.stat {
            Some(Ok(stat)) if stat.kind == Kind::Dir => {}
            Some(Ok(stat)) if stat.kind != Kind::File => {
                diagnostics.push(Diagnostic::error(&path, "not a regular file"));
            }
            Some(Ok(stat)) => out.push(ScannedFile {
                identity: FileIdentity::scanned(&stat),
                path,
            }),
            Some(Err(e)) => diagnostics.push(Diagnostic::error(
                &path,
                format!("cannot read drop-in: {e}"),
            )),
            None => {}
        }
    };
    if let Err(e) = dir_scan::scan(dir, wanted, each) {
        diagnostics.push(Diagnostic::error(
            dir,
            format!("cannot read drop-in directory: {e}"),
        ));
        return Vec::new();
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// References to units that do not exist, slices that are not slices, and cycles. Templates'
/// references are checked too (with their placeholder instance), but they are in no graph.
fn cross_check(
    parsed: &BTreeMap<UnitName, Rc<Parsed>>,
    templates: &BTreeMap<UnitName, Rc<Parsed>>,
    runtime: &BTreeSet<UnitName>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let kind_of = |name: &UnitName| parsed.get(name).and_then(|p| p.kind);
    let mut order = DepGraph::new();
    let mut slices = DepGraph::new();
    let all = parsed
        .iter()
        .map(|(name, p)| (name, p, true))
        .chain(templates.iter().map(|(name, p)| (name, p, false)));
    // The graphs serve only to find cycles: a unit that names no other is in none, so it is
    // not a node (with 10,000 units, most name none).
    for (name, p, in_graph) in all {
        for r in &p.refs {
            let here = |d: Diagnostic| d.at(r.line, r.column).with_key(r.key());
            let target = &r.target;
            if runtime.contains(target) {
                diagnostics.push(
                    here(Diagnostic::error(
                        &r.file,
                        format!("`{target}` is a runtime instance, with no file"),
                    ))
                    .with_suggestion(Some(format!(
                        "`corral stop` or `corral scale` can remove it at any time; to depend on \
                         it, give it a file (a symlink to its template: {target}.toml)"
                    ))),
                );
                continue;
            }
            if !parsed.contains_key(target) {
                let hint = if templates.contains_key(target) {
                    Some(format!(
                        "`{target}` is a template; name one of its instances, such as `{target}1`"
                    ))
                } else {
                    did_you_mean(target.as_str(), parsed.keys().map(UnitName::as_str))
                };
                diagnostics.push(
                    here(Diagnostic::error(
                        &r.file,
                        format!("unknown unit `{target}`"),
                    ))
                    .with_suggestion(hint),
                );
                continue;
            }
            match (r.field, kind_of(target)) {
                (RefField::Slice, Some(kind)) if kind != UnitKind::Slice => {
                    diagnostics.push(here(Diagnostic::error(
                        &r.file,
                        format!("`{target}` is a {}, not a slice", kind.as_str()),
                    )))
                }
                // A slice is no ordering, whoever names it. Only a slice (or a unit of no
                // kind, broken already) is ever a slice's target, so an edge from any other
                // unit is on no cycle: the 1,000 services of one slice make no graph; a
                // template's slice is checked, not graphed (its instances are).
                (RefField::Slice, _) => {
                    let may_be_on_a_cycle = p.kind.is_none_or(|k| k == UnitKind::Slice);
                    if in_graph && may_be_on_a_cycle {
                        slices.add_edge(name.clone(), target.clone());
                    }
                }
                (_, Some(UnitKind::Slice)) => diagnostics.push(here(Diagnostic::warning(
                    &r.file,
                    format!("`{target}` is a slice: ordering against a slice has no effect"),
                ))),
                _ if in_graph => order.add_edge(name.clone(), target.clone()),
                _ => {}
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
            let edge = parsed
                .get(from)
                .and_then(|p| p.refs.iter().find(|r| &r.target == to && is_field(r.field)));
            let d = match edge {
                Some(r) => Diagnostic::error(&r.file, format!("{what}: {}", path.join(" -> ")))
                    .at(r.line, r.column)
                    .with_key(r.key()),
                None => Diagnostic::error(PathBuf::new(), format!("{what}: {}", path.join(" -> "))),
            };
            diagnostics.push(d);
        }
    }
}
