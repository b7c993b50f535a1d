//! One unit file: TOML parsed with spans, walked against the schema of docs/units.md, every problem collected.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::{Diagnostic, Severity};
use super::layers::{self, Layer, Sources, UnitLayers};
use super::model::*;
use super::users::UserDb;
use super::values::{self, Invalid, Parse, did_you_mean};

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &[
    "kind",
    "description",
    "slice",
    "after",
    "requires",
    "enabled",
    "exec",
    "restart",
    "stop",
    "resources",
    "oom",
    "namespaces",
    "sandbox",
    "health",
    "logs",
];
const SLICE_KEYS: &[&str] = &["kind", "description", "slice", "resources"];
const EXEC_KEYS: &[&str] = &[
    "command",
    "working-dir",
    "env",
    "env-file",
    "user",
    "group",
    "ready",
    "ready-pattern",
    "start-timeout",
];
const HEALTH_KEYS: &[&str] = &[
    "exec",
    "http",
    "tcp",
    "interval",
    "timeout",
    "initial-delay",
    "failure-threshold",
    "success-threshold",
    "watchdog",
];
const PROBE_KEYS: &[&str] = &["exec", "http", "tcp"];
const PROBE_TUNING_KEYS: &[&str] = &[
    "interval",
    "timeout",
    "initial-delay",
    "failure-threshold",
    "success-threshold",
];
const RESTART_KEYS: &[&str] = &[
    "policy",
    "delay",
    "max-delay",
    "reset-after",
    "start-limit-burst",
    "start-limit-interval",
    "success-exit-codes",
];
const STOP_KEYS: &[&str] = &["signal", "timeout"];
const LOGS_KEYS: &[&str] = &["file", "max-size", "keep", "compress"];
/// `max-size` bounds: below 4K a file would rotate every few lines; above 1G a rotation's
/// compression would hold the writer (not the loop) for long.
const MIN_LOG_SIZE: u64 = 4 << 10;
const MAX_LOG_SIZE: u64 = 1 << 30;
const MAX_LOG_KEEP: i64 = 100;
/// Where no log file belongs: kernel interfaces and devices, where a write acts.
const NO_LOG_TREES: &[&str] = &["/proc", "/sys", "/dev"];
const RESOURCES_KEYS: &[&str] = &[
    "cpu-quota",
    "cpu-quota-period",
    "cpu-weight",
    "allowed-cpus",
    "memory-max",
    "memory-high",
    "memory-swap-max",
    "pids-max",
    "io-weight",
    "io",
];
const IO_KEYS: &[&str] = &["device", "read-bps", "write-bps", "read-iops", "write-iops"];
const OOM_KEYS: &[&str] = &[
    "group-kill",
    "score-adjust",
    "usage-threshold",
    "pressure-threshold",
    "sustain",
    "action",
    "signal",
    "cool-down",
];
/// Keys that only mean something with a threshold.
const PRESSURE_TUNING_KEYS: &[&str] = &["sustain", "action", "signal", "cool-down"];
/// The kernel's range for a PSI trigger's window (Documentation/accounting/psi.rst).
const PSI_WINDOW_MIN: Duration = Duration::from_millis(500);
const PSI_WINDOW_MAX: Duration = Duration::from_secs(10);
/// A pressure restart loop is bounded by the cool-down: at least this long.
const MIN_COOL_DOWN: Duration = Duration::from_secs(1);
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(60);
const NAMESPACES_KEYS: &[&str] = &[
    "pid", "net", "mount", "uts", "hostname", "ipc", "cgroup", "user", "uid-map", "gid-map",
];
const SANDBOX_KEYS: &[&str] = &[
    "no-new-privileges",
    "capabilities",
    "read-only-paths",
    "private-tmp",
];

const KINDS: &[(&str, UnitKind)] = &[
    ("service", UnitKind::Service),
    ("oneshot", UnitKind::Oneshot),
    ("slice", UnitKind::Slice),
];
const READY_MODES: &[(&str, ReadyMode)] = &[
    ("started", ReadyMode::Started),
    ("notify", ReadyMode::Notify),
    ("log-line", ReadyMode::LogLine),
];
const POLICIES: &[(&str, RestartPolicy)] = &[
    ("never", RestartPolicy::Never),
    ("on-failure", RestartPolicy::OnFailure),
    ("on-abnormal", RestartPolicy::OnAbnormal),
    ("on-oom", RestartPolicy::OnOom),
    ("always", RestartPolicy::Always),
];

/// The kernel's bounds for `cpu.max`/`cpu.cfs_period_us` periods, and its smallest quota.
const MIN_CPU_PERIOD: Duration = Duration::from_millis(1);
const MAX_CPU_PERIOD: Duration = Duration::from_secs(1);
const MIN_CPU_QUOTA: Duration = Duration::from_millis(1);
const DEFAULT_CPU_PERIOD: Duration = Duration::from_millis(100);

/// The longest duration any key takes: anything longer means "never", and is more likely a typo
/// (`"10000d"` for `"10s"`) than a wish.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The shortest timeout or interval: the loop's deadlines are kept in milliseconds.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// `memory-max` and `memory-high` below this cannot hold even an exec'd shell: the unit would be
/// OOM-killed or throttled from its first page (a typo like `"512"` for `"512M"`).
const MIN_MEMORY: u64 = 1 << 20;
/// The largest byte count any key takes (1024T): above any machine's memory or bandwidth; write
/// `"max"` for no limit.
const MAX_SIZE: u64 = 1 << 50;
/// The kernel's `PID_MAX_LIMIT` on 64-bit: `pids.max` refuses anything above it with EINVAL
/// (kernel/cgroup/pids.c, `pids_max_write`), so a larger value would fail every start.
const MAX_PIDS: i64 = 4 * 1024 * 1024;

/// Which key of a unit names another unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefField {
    Slice,
    After,
    Requires,
}

/// A reference to another unit, kept with its position for the cross-unit checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitRef {
    pub field: RefField,
    /// The file that names it: the unit's own, a template's or a drop-in.
    pub file: PathBuf,
    pub index: usize,
    pub target: UnitName,
    pub line: usize,
    pub column: usize,
}

impl UnitRef {
    pub(crate) fn key(&self) -> String {
        match self.field {
            RefField::Slice => "slice".to_owned(),
            RefField::After => format!("after[{}]", self.index),
            RefField::Requires => format!("requires[{}]", self.index),
        }
    }
}

/// The outcome of one file: the unit if it had no error, and what the cross-unit checks need even if it had.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub unit: Option<std::sync::Arc<Unit>>,
    /// `None` when `kind` itself was invalid or the TOML did not parse.
    pub kind: Option<UnitKind>,
    pub refs: Vec<UnitRef>,
    pub diagnostics: Vec<Diagnostic>,
}

struct Ctx<'a> {
    /// The file that names the unit: where problems without a position are reported.
    file: &'a Path,
    sources: Sources<'a>,
    /// Layers before this one are a template's, seen through the instance `file`.
    template_layers: usize,
    diagnostics: Vec<Diagnostic>,
    kind_invalid: bool,
}

impl Ctx<'_> {
    fn report(&mut self, severity: Severity, span: Option<Span>, key: &str, problem: Invalid) {
        let d = Diagnostic::new(severity, self.file, problem.message)
            .with_key(key)
            .with_suggestion(problem.hint);
        let d = match span {
            Some(span) => {
                let in_template = self.sources.layer_of(span.start) < self.template_layers;
                let d = self.sources.locate(span, d);
                if in_template {
                    d.for_instance(self.file)
                } else {
                    d
                }
            }
            None => d,
        };
        self.diagnostics.push(d);
    }

    fn error(&mut self, span: Span, key: &str, problem: impl Into<Invalid>) {
        self.report(Severity::Error, Some(span), key, problem.into());
    }

    fn warn(&mut self, span: Span, key: &str, problem: impl Into<Invalid>) {
        self.report(Severity::Warning, Some(span), key, problem.into());
    }

    fn failed(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid::new(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Invalid::new(message)
    }
}

/// A table of the document, with its dotted path for messages.
struct Section<'t, 'i> {
    path: String,
    table: &'t DeTable<'i>,
    span: Span,
}

impl<'t, 'i> Section<'t, 'i> {
    /// The dotted path of `k`, quoting it as TOML would when it is not a bare key.
    fn key(&self, k: &str) -> String {
        let bare = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let k = if bare { k.to_owned() } else { format!("{k:?}") };
        if self.path.is_empty() {
            k
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn get(&self, k: &str) -> Option<&'t Value<'i>> {
        self.table.get(k)
    }

    /// Where to point at for a problem with `k`: its value, else the section itself.
    fn span_of(&self, k: &str) -> Span {
        self.get(k).map_or_else(|| self.span.clone(), Spanned::span)
    }

    fn keys(&self) -> impl Iterator<Item = (&'t str, Span)> + use<'t, 'i> {
        self.table
            .iter()
            .map(|(k, _)| (k.get_ref().as_ref(), k.span()))
    }

    fn check_keys(&self, cx: &mut Ctx, known: &[&'static str]) {
        for (k, span) in self.keys() {
            if !known.contains(&k) {
                let mut problem = Invalid::new("unknown key");
                problem.hint = did_you_mean(k, known.iter().copied());
                cx.error(span, &self.key(k), problem);
            }
        }
    }

    /// The value of `k` converted by `conv`; `None` if absent or invalid (then reported).
    fn read<T>(
        &self,
        cx: &mut Ctx,
        k: &str,
        conv: impl FnOnce(&'t DeValue<'i>) -> Parse<T>,
    ) -> Option<T> {
        let value = self.get(k)?;
        conv(value.get_ref())
            .map_err(|problem| cx.error(value.span(), &self.key(k), problem))
            .ok()
    }

    fn set<T>(
        &self,
        cx: &mut Ctx,
        k: &str,
        slot: &mut T,
        conv: impl FnOnce(&'t DeValue<'i>) -> Parse<T>,
    ) {
        if let Some(v) = self.read(cx, k, conv) {
            *slot = v;
        }
    }

    /// An array whose elements each go through `conv`; bad elements are reported one by one and left out.
    fn list<T>(
        &self,
        cx: &mut Ctx,
        k: &str,
        conv: impl Fn(&'t DeValue<'i>) -> Parse<T>,
    ) -> Option<Vec<(T, Span)>> {
        let value = self.get(k)?;
        let DeValue::Array(items) = value.get_ref() else {
            cx.error(
                value.span(),
                &self.key(k),
                expected("an array", value.get_ref()),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match conv(item.get_ref()) {
                Ok(v) => out.push((v, item.span())),
                Err(problem) => cx.error(item.span(), &format!("{}[{i}]", self.key(k)), problem),
            }
        }
        Some(out)
    }

    /// The array at `k` if it has no elements at all (as written, not after dropping bad ones).
    fn empty_array_span(&self, k: &str) -> Option<Span> {
        self.get(k)
            .filter(|v| matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()))
            .map(Spanned::span)
    }

    fn section(&self, cx: &mut Ctx, k: &str) -> Option<Section<'t, 'i>> {
        let value = self.get(k)?;
        match value.get_ref() {
            DeValue::Table(table) => Some(Section {
                path: self.key(k),
                table,
                span: value.span(),
            }),
            other => {
                cx.error(value.span(), &self.key(k), expected("a table", other));
                None
            }
        }
    }
}

fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn expected(what: &str, v: &DeValue) -> Invalid {
    Invalid::new(format!("expected {what}, found {}", type_name(v)))
}

fn string<'v>(v: &'v DeValue) -> Parse<&'v str> {
    match v {
        DeValue::String(s) => Ok(s.as_ref()),
        other => Err(expected("a string", other)),
    }
}

fn boolean(v: &DeValue) -> Parse<bool> {
    match v {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(expected("a boolean (true or false)", other)),
    }
}

fn integer(v: &DeValue) -> Parse<i64> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| Invalid::new("integer is out of range")),
        other => Err(expected("an integer", other)),
    }
}

fn int_in<T: TryFrom<i64>>(lo: i64, hi: i64) -> impl Fn(&DeValue) -> Parse<T> {
    move |v| {
        let n = integer(v)?;
        if !(lo..=hi).contains(&n) {
            return Err(Invalid::new(format!("{n} is out of range {lo}..={hi}")));
        }
        T::try_from(n).map_err(|_| Invalid::new(format!("{n} is out of range {lo}..={hi}")))
    }
}

fn text<T>(parse: impl Fn(&str) -> Parse<T>) -> impl Fn(&DeValue) -> Parse<T> {
    move |v| string(v).and_then(&parse)
}

fn no_nul(s: &str) -> Parse<&str> {
    if s.contains('\0') {
        Err(Invalid::new("contains a NUL character"))
    } else {
        Ok(s)
    }
}

fn owned(v: &DeValue) -> Parse<String> {
    string(v).and_then(no_nul).map(str::to_owned)
}

fn one_of<T: Copy>(table: &'static [(&'static str, T)]) -> impl Fn(&DeValue) -> Parse<T> {
    move |v| {
        let s = string(v)?;
        table
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names = table.iter().map(|(n, _)| *n);
                let list: Vec<_> = names.clone().map(|n| format!("`{n}`")).collect();
                let mut problem = Invalid::new(format!("invalid value {s:?}"));
                problem.hint = Some(
                    did_you_mean(s, names)
                        .unwrap_or_else(|| format!("expected one of {}", list.join(", "))),
                );
                problem
            })
    }
}

fn duration(v: &DeValue) -> Parse<Duration> {
    match v {
        DeValue::Integer(_) | DeValue::Float(_) => Err(expected("a duration string", v)
            .hint("durations need a unit: write \"10s\", \"100ms\" or \"1m 30s\"")),
        _ => string(v).and_then(values::duration),
    }
}

/// A duration within `lo..=hi`.
fn duration_in(lo: Duration, hi: Duration) -> impl Fn(&DeValue) -> Parse<Duration> {
    move |v| {
        let d = duration(v)?;
        if (lo..=hi).contains(&d) {
            return Ok(d);
        }
        let show = |d: Duration| match d.as_secs() {
            secs if secs >= 86400 && secs % 86400 == 0 && d.subsec_nanos() == 0 => {
                format!("{}d", secs / 86400)
            }
            _ => humantime::format_duration(d).to_string(),
        };
        let mut problem = Invalid::new(format!(
            "{} is out of range {}..={}",
            show(d),
            show(lo),
            show(hi)
        ));
        if d.is_zero() {
            problem = problem.hint("must be longer than zero");
        }
        Err(problem)
    }
}

/// A duration of `0..=365d`.
fn any_duration(v: &DeValue) -> Parse<Duration> {
    duration_in(Duration::ZERO, MAX_DURATION)(v)
}

/// A byte count as written in messages: the largest unit that divides it (`1M`, `1024T`).
pub(crate) fn show_size(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// A size within `lo..=hi` bytes, or `"max"`.
fn size_in(lo: u64, hi: u64) -> impl Fn(&DeValue) -> Parse<ByteLimit> {
    move |v| match size(v)? {
        ByteLimit::Bytes(n) if !(lo..=hi).contains(&n) => {
            let hint = if n < lo {
                "a limit this low leaves the unit unable to run; write \"max\" for no limit"
            } else {
                "write \"max\" for no limit"
            };
            Err(Invalid::new(format!(
                "{} is out of range {}..={}",
                show_size(n),
                show_size(lo),
                show_size(hi)
            ))
            .hint(hint))
        }
        limit => Ok(limit),
    }
}

fn size(v: &DeValue) -> Parse<ByteLimit> {
    match v {
        DeValue::Integer(_) => integer(v).and_then(values::size_from_int),
        DeValue::String(s) => values::size(s),
        other => Err(expected("a size (bytes, \"512M\" or \"max\")", other)),
    }
}

fn signal(v: &DeValue) -> Parse<SignalSpec> {
    match v {
        DeValue::Integer(_) => integer(v).and_then(values::signal_number),
        _ => string(v).and_then(values::signal),
    }
}

fn unit_name(v: &DeValue) -> Parse<UnitName> {
    let s = string(v)?;
    UnitName::new(s).ok_or_else(|| {
        Invalid::new(format!("invalid unit name {s:?}"))
            .hint("unit names use only letters, digits and `_ . @ -`")
    })
}

fn abs_path(v: &DeValue) -> Parse<PathBuf> {
    let s = string(v).and_then(no_nul)?;
    if s.starts_with('/') {
        Ok(PathBuf::from(s))
    } else {
        Err(Invalid::new(format!("path {s:?} is not absolute")))
    }
}

/// `pids-max`: a positive integer, or `"max"` (`None`).
fn pids(v: &DeValue) -> Parse<Option<u64>> {
    match v {
        DeValue::String(s) if s == "max" => Ok(None),
        DeValue::Integer(_) => int_in(1, MAX_PIDS)(v).map(Some),
        other => Err(expected("a positive integer or \"max\"", other)),
    }
}

/// `user`/`group`: a name, or a number written as an integer or a string of digits.
enum Id<'v> {
    Name(&'v str),
    Number(u32),
}

impl std::fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Name(n) => write!(f, "`{n}`"),
            Id::Number(n) => write!(f, "{n}"),
        }
    }
}

fn id<'v>(v: &'v DeValue) -> Parse<Id<'v>> {
    if let DeValue::Integer(_) = v {
        return int_in(0, i64::from(u32::MAX))(v).map(Id::Number);
    }
    let s = string(v).and_then(no_nul)?;
    if s.is_empty() {
        Err(Invalid::new("name is empty"))
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse()
            .map(Id::Number)
            .map_err(|_| Invalid::new(format!("id {s} is out of range")))
    } else {
        Ok(Id::Name(s))
    }
}

/// Parses and validates one unit file; see [`super::parse_unit`].
pub(crate) fn parse_file(name: &UnitName, file: &Path, text: &str, users: &dyn UserDb) -> Parsed {
    let layers = UnitLayers::plain(file, vec![Layer::new(file, text)]);
    parse_layers(name, &layers, users)
}

/// Parses and validates a unit made of several files: merged, specifiers expanded, then read
/// as one file would be; every problem names the file and line it comes from.
pub(crate) fn parse_layers(name: &UnitName, unit: &UnitLayers, users: &dyn UserDb) -> Parsed {
    let text = layers::concatenate(&unit.layers);
    let mut cx = Ctx {
        file: &unit.main,
        sources: Sources::new(&text, &unit.layers),
        template_layers: unit.template_layers,
        diagnostics: Vec::new(),
        kind_invalid: false,
    };
    let mut doc = match layers::merge(&cx.sources) {
        Ok(doc) => doc,
        Err(errors) => {
            cx.diagnostics = errors;
            return Parsed {
                unit: None,
                kind: None,
                refs: Vec::new(),
                diagnostics: cx.diagnostics,
            };
        }
    };
    if let Some(specifiers) = &unit.specifiers {
        let mut problems = Vec::new();
        layers::expand(doc.get_mut(), specifiers, |span, key, problem| {
            problems.push((span, key, problem));
        });
        for (span, key, problem) in problems {
            cx.error(span, &key, problem);
        }
    }
    let file = unit.main.as_path();
    let root = Section {
        path: String::new(),
        table: doc.get_ref(),
        span: doc.span(),
    };
    let mut reader = Reader {
        cx,
        name,
        refs: Vec::new(),
    };
    let kind = match root.get("kind") {
        None => Some(UnitKind::Service),
        Some(_) => root.read(&mut reader.cx, "kind", one_of(KINDS)),
    };
    reader.cx.kind_invalid = kind.is_none();
    let mut unit = reader.unit(&root, kind.unwrap_or(UnitKind::Service), file, users);
    unit.share_defaults();
    let unit = (!reader.cx.failed()).then(|| std::sync::Arc::new(unit));
    Parsed {
        unit,
        kind,
        refs: reader.refs,
        diagnostics: reader.cx.diagnostics,
    }
}

struct Reader<'a> {
    cx: Ctx<'a>,
    name: &'a UnitName,
    refs: Vec<UnitRef>,
}

impl Reader<'_> {
    fn unit(&mut self, root: &Section, kind: UnitKind, file: &Path, users: &dyn UserDb) -> Unit {
        let cx = &mut self.cx;
        root.check_keys(cx, TOP_KEYS);
        if kind == UnitKind::Slice {
            for (k, span) in root.keys() {
                if TOP_KEYS.contains(&k) && !SLICE_KEYS.contains(&k) {
                    let what = match root.get(k).map(Spanned::get_ref) {
                        Some(DeValue::Table(_)) => format!("[{k}]"),
                        _ => format!("`{k}`"),
                    };
                    cx.error(
                        span,
                        k,
                        Invalid::new(format!("{what} is not allowed in a slice")).hint(
                            "a slice holds only `kind`, `description`, `slice` and [resources]",
                        ),
                    );
                }
            }
        }
        let description = root.read(cx, "description", owned);
        let slice = self.refs(root, "slice", RefField::Slice).into_iter().next();
        let mut unit = Unit {
            name: self.name.clone(),
            kind,
            source: file.to_owned(),
            description,
            slice,
            after: Vec::new(),
            requires: Vec::new(),
            enabled: true,
            exec: None,
            restart: RestartConfig::default_for(kind).into(),
            stop: StopConfig::default(),
            resources: Default::default(),
            oom: Default::default(),
            namespaces: Default::default(),
            sandbox: Default::default(),
            readiness: Default::default(),
            health: None,
            logs: Default::default(),
        };
        let cx = &mut self.cx;
        if let Some(sec) = root.section(cx, "resources") {
            *unit.resources = resources(cx, &sec);
        }
        if kind == UnitKind::Slice {
            return unit;
        }
        root.set(cx, "enabled", &mut unit.enabled, boolean);
        unit.exec = match root.section(cx, "exec") {
            Some(sec) => {
                readiness(cx, &sec, kind, &mut unit.readiness);
                exec(cx, &sec, users)
            }
            None => {
                // With an invalid `kind` the user may have meant a slice; do not pile on.
                if root.get("exec").is_none() && !cx.kind_invalid {
                    let problem =
                        format!("a {} needs an [exec] section with `command`", kind.as_str());
                    cx.report(Severity::Error, None, "exec", problem.into());
                }
                None
            }
        };
        if let Some(sec) = root.section(cx, "restart") {
            restart(cx, &sec, &mut unit.restart);
        }
        if let Some(sec) = root.section(cx, "stop") {
            sec.check_keys(cx, STOP_KEYS);
            sec.set(cx, "signal", &mut unit.stop.signal, signal);
            sec.set(cx, "timeout", &mut unit.stop.timeout, any_duration);
        }
        if let Some(sec) = root.section(cx, "oom") {
            sec.check_keys(cx, OOM_KEYS);
            sec.set(cx, "group-kill", &mut unit.oom.group_kill, boolean);
            unit.oom.score_adjust = sec.read(cx, "score-adjust", int_in(-1000, 1000));
            unit.oom.pressure = pressure_policy(cx, &sec, &unit.resources);
        }
        let ns = root.section(cx, "namespaces");
        if let Some(sec) = &ns {
            *unit.namespaces = namespaces(cx, sec);
        }
        if let Some(sec) = root.section(cx, "sandbox") {
            *unit.sandbox = sandbox(cx, &sec);
        }
        if let Some(sec) = root.section(cx, "logs") {
            *unit.logs = logs(cx, &sec);
        }
        if let Some(sec) = root.section(cx, "health") {
            if kind == UnitKind::Oneshot {
                cx.error(
                    sec.span.clone(),
                    "health",
                    Invalid::new("[health] is for services").hint(
                        "a oneshot is done when it exits successfully; it has no life to probe",
                    ),
                );
            }
            unit.health = health(cx, &sec).map(Box::new);
        }
        implied_namespaces(cx, ns.as_ref(), &mut unit.namespaces, &unit.sandbox);
        unit.after = self.refs(root, "after", RefField::After);
        unit.requires = self.refs(root, "requires", RefField::Requires);
        unit
    }

    /// Unit names at `k` (a string for `slice`, an array otherwise), minus self-references and repeats,
    /// which are reported.
    fn refs(&mut self, root: &Section, k: &str, field: RefField) -> Vec<UnitName> {
        let cx = &mut self.cx;
        let found = match field {
            RefField::Slice => root
                .read(cx, k, unit_name)
                .map(|n| vec![(n, root.span_of(k))]),
            RefField::After | RefField::Requires => root.list(cx, k, unit_name),
        };
        let mut names: Vec<UnitName> = Vec::new();
        for (index, (target, span)) in found.into_iter().flatten().enumerate() {
            let key = match field {
                RefField::Slice => k.to_owned(),
                _ => format!("{k}[{index}]"),
            };
            if &target == self.name {
                let problem = match field {
                    RefField::Slice => "a unit cannot be its own slice".to_owned(),
                    _ => format!("`{target}` cannot depend on itself"),
                };
                cx.error(span, &key, problem);
            } else if names.contains(&target) {
                cx.warn(span, &key, format!("`{target}` is listed twice"));
            } else {
                let (file, line, column) = cx
                    .sources
                    .position(span.start)
                    .map_or((cx.file, 0, 0), |p| p);
                self.refs.push(UnitRef {
                    field,
                    file: file.to_owned(),
                    index,
                    target: target.clone(),
                    line,
                    column,
                });
                names.push(target);
            }
        }
        names
    }
}

fn exec(cx: &mut Ctx, sec: &Section, users: &dyn UserDb) -> Option<Exec> {
    sec.check_keys(cx, EXEC_KEYS);
    let mut command: Vec<String> = sec
        .list(cx, "command", owned)
        .into_iter()
        .flatten()
        .map(|(s, _)| s)
        .collect();
    // Collected without a size hint the vector has room for 4: kept for the unit's life.
    command.shrink_to_fit();
    if sec.get("command").is_none() {
        cx.error(
            sec.span.clone(),
            &sec.key("command"),
            "`command` is required",
        );
    } else if let Some(span) = sec.empty_array_span("command") {
        cx.error(span, &sec.key("command"), "`command` must not be empty");
    } else if command.first().is_some_and(String::is_empty) {
        cx.error(
            sec.span_of("command"),
            &format!("{}[0]", sec.key("command")),
            "program name is empty",
        );
    }
    let working_dir = sec.read(cx, "working-dir", abs_path);
    let mut env = BTreeMap::new();
    if let Some(table) = sec.section(cx, "env") {
        for (k, v) in table.table.iter() {
            let name: &str = k.get_ref();
            let key = table.key(name);
            if name.is_empty() || name.contains(['=', '\0']) {
                cx.error(
                    k.span(),
                    &key,
                    "environment variable names must be non-empty, without `=` or NUL",
                );
            }
            match owned(v.get_ref()) {
                Ok(value) => {
                    env.insert(name.to_owned(), value);
                }
                Err(problem) => cx.error(v.span(), &key, problem),
            }
        }
    }
    let env_files = env_files(cx, sec);
    let user = credentials(cx, sec, users);
    Some(Exec {
        command,
        working_dir,
        env,
        env_files,
        user: user.map(Box::new),
    })
}

/// `env-file`: a path or an array of them, each absolute, `-` first for an optional one.
fn env_files(cx: &mut Ctx, sec: &Section) -> Vec<EnvFile> {
    let entry = |v: &DeValue| {
        let s = string(v).and_then(no_nul)?;
        let (optional, path) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if path.starts_with('/') {
            Ok(EnvFile {
                path: PathBuf::from(path),
                optional,
            })
        } else {
            Err(Invalid::new(format!("path {path:?} is not absolute")).hint(
                "write \"/etc/app/env\", or \"-/etc/app/env\" for a file that may be missing",
            ))
        }
    };
    match sec.get("env-file").map(Spanned::get_ref) {
        None => Vec::new(),
        Some(DeValue::String(_)) => sec.read(cx, "env-file", entry).into_iter().collect(),
        Some(_) => sec
            .list(cx, "env-file", entry)
            .into_iter()
            .flatten()
            .map(|(f, _)| f)
            .collect(),
    }
}

/// `user` and `group` resolved against the databases. `group` alone is refused: which user
/// would run is then ambiguous, and `user = "root"` says it plainly.
fn credentials(cx: &mut Ctx, sec: &Section, users: &dyn UserDb) -> Option<Credentials> {
    let user = sec.read(cx, "user", id);
    let group = sec.read(cx, "group", id);
    let user = match user {
        Some(user) => user,
        None => {
            if sec.get("user").is_none() && sec.get("group").is_some() {
                cx.error(
                    sec.span_of("group"),
                    &sec.key("group"),
                    Invalid::new("`group` needs `user`")
                        .hint("set `user = \"root\"` to run as root with another group"),
                );
            }
            return None;
        }
    };
    let entry = match user {
        Id::Name(n) => users.user_by_name(n),
        Id::Number(uid) => users.user_by_uid(uid),
    };
    let Some(entry) = entry else {
        cx.error(
            sec.span_of("user"),
            &sec.key("user"),
            format!("no such user {user}"),
        );
        return None;
    };
    let gid = match group {
        None if sec.get("group").is_some() => return None,
        None => entry.gid,
        Some(group) => {
            let gid = match group {
                Id::Name(n) => users.group_by_name(n),
                Id::Number(gid) => users.group_exists(gid).then_some(gid),
            };
            let Some(gid) = gid else {
                cx.error(
                    sec.span_of("group"),
                    &sec.key("group"),
                    format!("no such group {group}"),
                );
                return None;
            };
            gid
        }
    };
    Some(Credentials {
        groups: users.supplementary_groups(&entry.name, gid),
        user_name: entry.name,
        uid: entry.uid,
        gid,
        home: entry.home,
    })
}

/// `[exec] ready` and `start-timeout`.
fn readiness(cx: &mut Ctx, sec: &Section, kind: UnitKind, cfg: &mut Readiness) {
    sec.set(cx, "ready", &mut cfg.mode, one_of(READY_MODES));
    sec.set(
        cx,
        "start-timeout",
        &mut cfg.start_timeout,
        positive_duration,
    );
    if kind == UnitKind::Oneshot && cfg.mode != ReadyMode::Started {
        let mode = if cfg.mode == ReadyMode::Notify {
            "notify"
        } else {
            "log-line"
        };
        cx.error(
            sec.span_of("ready"),
            &sec.key("ready"),
            Invalid::new(format!("`ready = \"{mode}\"` is for services"))
                .hint("a oneshot is ready when it exits successfully"),
        );
    }
    cfg.pattern = sec.read(cx, "ready-pattern", text(line_pattern));
    if sec.get("ready-pattern").is_some() && cfg.mode != ReadyMode::LogLine {
        cx.error(
            sec.span_of("ready-pattern"),
            &sec.key("ready-pattern"),
            Invalid::new("`ready-pattern` is read only with `ready = \"log-line\"`")
                .hint("add `ready = \"log-line\"`, or drop `ready-pattern`"),
        );
    } else if cfg.mode == ReadyMode::LogLine && sec.get("ready-pattern").is_none() {
        cx.error(
            sec.span_of("ready"),
            &sec.key("ready-pattern"),
            Invalid::new("`ready = \"log-line\"` needs `ready-pattern`")
                .hint("the regular expression a line of the unit's output matches once it is ready, e.g. `ready-pattern = \"listening on\"`"),
        );
    }
}

/// `ready-pattern`: a regular expression, searched (not anchored) in each output line.
fn line_pattern(s: &str) -> Parse<LinePattern> {
    LinePattern::new(s).map_err(Invalid::new)
}

/// A timeout or an interval: `1ms..=365d`.
fn positive_duration(v: &DeValue) -> Parse<Duration> {
    duration_in(MIN_INTERVAL, MAX_DURATION)(v)
}

/// `[health]`: at most one probe, its tuning, and a watchdog; at least a probe or a watchdog.
fn health(cx: &mut Ctx, sec: &Section) -> Option<Health> {
    sec.check_keys(cx, HEALTH_KEYS);
    // In the order written, so the one reported is the one added last.
    let mut given: Vec<(&str, Span)> = sec.keys().filter(|(k, _)| PROBE_KEYS.contains(k)).collect();
    given.sort_by_key(|(_, span)| span.start);
    let given: Vec<&str> = given.into_iter().map(|(k, _)| k).collect();
    for extra in given.iter().skip(1) {
        cx.error(
            sec.span_of(extra),
            &sec.key(extra),
            Invalid::new(format!(
                "a unit has one probe: `{}` and `{extra}` are both set",
                given[0]
            ))
            .hint("keep one of `exec`, `http` and `tcp`"),
        );
    }
    let probe = match given.first().copied() {
        Some("exec") => {
            let argv: Vec<String> = sec
                .list(cx, "exec", owned)
                .into_iter()
                .flatten()
                .map(|(s, _)| s)
                .collect();
            if sec.empty_array_span("exec").is_some() || argv.first().is_some_and(String::is_empty)
            {
                cx.error(
                    sec.span_of("exec"),
                    &sec.key("exec"),
                    "the probe's command must not be empty",
                );
            }
            (!argv.is_empty()).then_some(Probe::Exec(argv))
        }
        Some("http") => sec
            .read(cx, "http", text(values::http_target))
            .map(Probe::Http),
        Some("tcp") => sec
            .read(cx, "tcp", text(|s| values::socket_addr(s, None)))
            .map(Probe::Tcp),
        _ => None,
    };
    let watchdog = sec.read(cx, "watchdog", positive_duration);
    if given.is_empty() {
        for k in PROBE_TUNING_KEYS {
            if sec.get(k).is_some() {
                cx.error(
                    sec.span_of(k),
                    &sec.key(k),
                    Invalid::new(format!("`{k}` tunes a probe, and [health] has none"))
                        .hint("add one of `exec`, `http` or `tcp`"),
                );
            }
        }
        if sec.get("watchdog").is_none() {
            cx.error(
                sec.span.clone(),
                "health",
                Invalid::new("[health] needs a probe or a watchdog")
                    .hint("set one of `exec`, `http`, `tcp`, or `watchdog`"),
            );
        }
    }
    let mut cfg = ProbeConfig {
        probe: Probe::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 1))),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        initial_delay: Duration::ZERO,
        failure_threshold: 3,
        success_threshold: 1,
    };
    sec.set(cx, "interval", &mut cfg.interval, positive_duration);
    sec.set(cx, "timeout", &mut cfg.timeout, positive_duration);
    sec.set(cx, "initial-delay", &mut cfg.initial_delay, any_duration);
    let count = int_in(1, i64::from(u32::MAX));
    sec.set(cx, "failure-threshold", &mut cfg.failure_threshold, &count);
    sec.set(cx, "success-threshold", &mut cfg.success_threshold, &count);
    let probe = probe.map(|probe| ProbeConfig { probe, ..cfg });
    Some(Health { probe, watchdog })
}

fn restart(cx: &mut Ctx, sec: &Section, cfg: &mut RestartConfig) {
    sec.check_keys(cx, RESTART_KEYS);
    sec.set(cx, "policy", &mut cfg.policy, one_of(POLICIES));
    sec.set(cx, "delay", &mut cfg.delay, any_duration);
    sec.set(cx, "max-delay", &mut cfg.max_delay, any_duration);
    sec.set(cx, "reset-after", &mut cfg.reset_after, any_duration);
    sec.set(
        cx,
        "start-limit-burst",
        &mut cfg.start_limit_burst,
        int_in(1, i64::from(u32::MAX)),
    );
    sec.set(
        cx,
        "start-limit-interval",
        &mut cfg.start_limit_interval,
        any_duration,
    );
    if let Some(codes) = sec.list(cx, "success-exit-codes", int_in::<i32>(0, 255)) {
        let mut codes: Vec<i32> = codes.into_iter().map(|(c, _)| c).collect();
        codes.sort_unstable();
        codes.dedup();
        cfg.success_exit_codes = codes;
    }
    if let Some(span) = sec.empty_array_span("success-exit-codes") {
        cx.error(
            span,
            &sec.key("success-exit-codes"),
            "list at least one exit code",
        );
    }
    if cfg.delay > cfg.max_delay {
        let k = if sec.get("delay").is_some() {
            "delay"
        } else {
            "max-delay"
        };
        cx.warn(
            sec.span_of(k),
            &sec.key(k),
            format!(
                "delay ({}) is above max-delay ({}), so every restart waits max-delay",
                humantime::format_duration(cfg.delay),
                humantime::format_duration(cfg.max_delay)
            ),
        );
    }
}

fn resources(cx: &mut Ctx, sec: &Section) -> Resources {
    sec.check_keys(cx, RESOURCES_KEYS);
    let period = |v: &DeValue| {
        let d = duration(v)?;
        if (MIN_CPU_PERIOD..=MAX_CPU_PERIOD).contains(&d) {
            Ok(d)
        } else {
            Err(Invalid::new(format!(
                "{} is out of range 1ms..=1s",
                humantime::format_duration(d)
            )))
        }
    };
    let r = Resources {
        cpu_quota: sec
            .read(cx, "cpu-quota", text(values::cpu_percent))
            .flatten(),
        cpu_quota_period: sec.read(cx, "cpu-quota-period", period),
        cpu_weight: sec.read(cx, "cpu-weight", int_in(1, 10000)),
        allowed_cpus: sec.read(cx, "allowed-cpus", text(values::cpuset)),
        memory_max: sec.read(cx, "memory-max", size_in(MIN_MEMORY, MAX_SIZE)),
        memory_high: sec.read(cx, "memory-high", size_in(MIN_MEMORY, MAX_SIZE)),
        // No swap at all is a real choice.
        memory_swap_max: sec.read(cx, "memory-swap-max", size_in(0, MAX_SIZE)),
        pids_max: sec.read(cx, "pids-max", pids),
        io_weight: sec.read(cx, "io-weight", int_in(1, 10000)),
        io: io_limits(cx, sec),
    };
    if let Some(CpuPercent(percent)) = r.cpu_quota {
        let quota = r.cpu_quota_period.unwrap_or(DEFAULT_CPU_PERIOD) * percent / 100;
        if quota < MIN_CPU_QUOTA {
            cx.error(
                sec.span_of("cpu-quota"),
                &sec.key("cpu-quota"),
                Invalid::new(format!(
                    "{percent}% gives {} per period, below the kernel's minimum of 1ms",
                    humantime::format_duration(quota)
                ))
                .hint("raise cpu-quota or cpu-quota-period"),
            );
        }
    }
    if let (Some(ByteLimit::Bytes(high)), Some(ByteLimit::Bytes(max))) =
        (r.memory_high, r.memory_max)
        && high >= max
    {
        cx.warn(
            sec.span_of("memory-high"),
            &sec.key("memory-high"),
            "memory-high is not below memory-max, so it never throttles",
        );
    }
    r
}

/// `"90%"`: a whole percentage within `lo..=hi`.
fn percent_in(lo: u32, hi: u32) -> impl Fn(&str) -> Parse<u32> {
    move |s| {
        let hint = "write a whole percentage such as \"90%\"";
        let n: u32 = s
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| Invalid::new(format!("invalid percentage {s:?}")).hint(hint))?;
        if (lo..=hi).contains(&n) {
            Ok(n)
        } else {
            Err(Invalid::new(format!("{n}% is out of range {lo}%..={hi}%")))
        }
    }
}

/// `"some 20% over 5s"` (or `full`): a PSI stall share over a window of 500ms..=10s.
fn psi_threshold(s: &str) -> Parse<PsiThreshold> {
    let hint = "write \"some 20% over 5s\" or \"full 10% over 2s\" (a window of 500ms..=10s)";
    let words: Vec<&str> = s.split_whitespace().collect();
    let [kind, share, "over", window @ ..] = words.as_slice() else {
        return Err(Invalid::new(format!("invalid pressure threshold {s:?}")).hint(hint));
    };
    let full = match *kind {
        "some" => false,
        "full" => true,
        other => {
            return Err(
                Invalid::new(format!("invalid pressure kind {other:?}: `some` or `full`"))
                    .hint(hint),
            );
        }
    };
    let percent = percent_in(1, 100)(share)?;
    let window = values::duration(&window.join(" ")).map_err(|p| p.hint(hint))?;
    if !(PSI_WINDOW_MIN..=PSI_WINDOW_MAX).contains(&window) {
        return Err(Invalid::new(format!(
            "window {} is out of range 500ms..=10s (the kernel's limits for a trigger)",
            humantime::format_duration(window)
        )));
    }
    Ok(PsiThreshold {
        full,
        percent,
        window,
    })
}

/// The `[oom]` keys that act before the OOM killer; `None` without a threshold (and then the
/// tuning keys are errors: they would do nothing).
fn pressure_policy(cx: &mut Ctx, sec: &Section, resources: &Resources) -> Option<PressurePolicy> {
    let usage_percent = sec.read(cx, "usage-threshold", text(percent_in(1, 99)));
    let psi = sec.read(cx, "pressure-threshold", text(psi_threshold));
    let sustain = sec
        .read(cx, "sustain", any_duration)
        .unwrap_or(Duration::ZERO);
    let cool_down = sec
        .read(cx, "cool-down", duration_in(MIN_COOL_DOWN, MAX_DURATION))
        .unwrap_or(DEFAULT_COOL_DOWN);
    let action = sec.read(
        cx,
        "action",
        one_of(&[("warn", 0u8), ("restart", 1), ("signal", 2)]),
    );
    let chosen = sec.read(cx, "signal", signal);
    if usage_percent.is_some() && !matches!(resources.memory_max, Some(ByteLimit::Bytes(_))) {
        cx.error(
            sec.span_of("usage-threshold"),
            &sec.key("usage-threshold"),
            Invalid::new("`usage-threshold` is a share of memory-max, which is not set")
                .hint("set [resources] memory-max, or use `pressure-threshold`"),
        );
    }
    let action = match (action, chosen) {
        (Some(2), Some(sig)) => PressureAction::Signal(sig),
        (Some(2), None) => {
            cx.error(
                sec.span_of("action"),
                &sec.key("action"),
                Invalid::new("`action = \"signal\"` needs `signal`")
                    .hint("add `signal = \"SIGUSR1\"`"),
            );
            PressureAction::Warn
        }
        (action, Some(_)) => {
            cx.error(
                sec.span_of("signal"),
                &sec.key("signal"),
                Invalid::new("`signal` is only for `action = \"signal\"`"),
            );
            match action {
                Some(1) => PressureAction::Restart,
                _ => PressureAction::Warn,
            }
        }
        (Some(1), None) => PressureAction::Restart,
        _ => PressureAction::Warn,
    };
    if usage_percent.is_none() && psi.is_none() {
        for k in PRESSURE_TUNING_KEYS {
            if sec.get(k).is_some() {
                cx.error(
                    sec.span_of(k),
                    &sec.key(k),
                    Invalid::new(format!("`{k}` needs a threshold"))
                        .hint("set `usage-threshold` or `pressure-threshold`"),
                );
            }
        }
        return None;
    }
    Some(PressurePolicy {
        usage_percent,
        psi,
        sustain,
        action,
        cool_down,
    })
}

fn io_limits(cx: &mut Ctx, sec: &Section) -> Vec<IoLimit> {
    let Some(value) = sec.get("io") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        cx.error(
            value.span(),
            &sec.key("io"),
            expected("an array of tables", value.get_ref())
                .hint("write each device as a [[resources.io]] entry"),
        );
        return Vec::new();
    };
    let mut limits: Vec<IoLimit> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{}[{i}]", sec.key("io"));
        let DeValue::Table(table) = item.get_ref() else {
            cx.error(item.span(), &path, expected("a table", item.get_ref()));
            continue;
        };
        let entry = Section {
            path,
            table,
            span: item.span(),
        };
        entry.check_keys(cx, IO_KEYS);
        if entry.get("device").is_none() {
            cx.error(
                entry.span.clone(),
                &entry.key("device"),
                "`device` is required",
            );
        }
        if !IO_KEYS[1..].iter().any(|k| entry.get(k).is_some()) {
            cx.error(
                entry.span.clone(),
                &entry.path,
                "set at least one of read-bps, write-bps, read-iops, write-iops",
            );
        }
        let limit = entry
            .read(cx, "device", text(values::device))
            .map(|device| IoLimit {
                device,
                // 0 is refused: v1's blkio.throttle.*_device takes 0 as "remove the limit"
                // (Documentation/admin-guide/cgroup-v1/blkio-controller.rst), the opposite of
                // what it says.
                read_bps: entry.read(cx, "read-bps", size_in(1, MAX_SIZE)),
                write_bps: entry.read(cx, "write-bps", size_in(1, MAX_SIZE)),
                // v2's io.max keeps iops in 32 bits.
                read_iops: entry.read(cx, "read-iops", int_in(1, i64::from(u32::MAX))),
                write_iops: entry.read(cx, "write-iops", int_in(1, i64::from(u32::MAX))),
            });
        let Some(limit) = limit else { continue };
        if limits.iter().any(|l| l.device == limit.device) {
            cx.error(
                entry.span_of("device"),
                &entry.key("device"),
                "device is listed twice",
            );
        }
        limits.push(limit);
    }
    limits
}

fn namespaces(cx: &mut Ctx, sec: &Section) -> Namespaces {
    sec.check_keys(cx, NAMESPACES_KEYS);
    let mut ns = Namespaces::default();
    for (k, slot) in [
        ("pid", &mut ns.pid),
        ("net", &mut ns.net),
        ("mount", &mut ns.mount),
        ("uts", &mut ns.uts),
        ("ipc", &mut ns.ipc),
        ("cgroup", &mut ns.cgroup),
        ("user", &mut ns.user),
    ] {
        sec.set(cx, k, slot, boolean);
    }
    ns.hostname = sec.read(cx, "hostname", text(values::hostname));
    for (k, slot) in [("uid-map", &mut ns.uid_map), ("gid-map", &mut ns.gid_map)] {
        sec.set(cx, k, slot, text(values::id_map));
        if sec.get(k).is_some() && !ns.user {
            cx.error(
                sec.span_of(k),
                &sec.key(k),
                Invalid::new(format!("{k} needs a user namespace")).hint("set `user = true`"),
            );
        }
    }
    ns
}

fn logs(cx: &mut Ctx, sec: &Section) -> LogConfig {
    sec.check_keys(cx, LOGS_KEYS);
    let mut cfg = LogConfig {
        file: sec.read(cx, "file", log_path),
        ..LogConfig::default()
    };
    let max_size = sec.read(cx, "max-size", |v| {
        match size_in(MIN_LOG_SIZE, MAX_LOG_SIZE)(v)? {
            ByteLimit::Bytes(n) => Ok(n),
            ByteLimit::Max => Err(Invalid::new("a log file needs a size to rotate at").hint(
                format!(
                    "write a size of {}..={}",
                    show_size(MIN_LOG_SIZE),
                    show_size(MAX_LOG_SIZE)
                ),
            )),
        }
    });
    if let Some(n) = max_size {
        cfg.max_size = n;
    }
    sec.set(cx, "keep", &mut cfg.keep, int_in(0, MAX_LOG_KEEP));
    sec.set(cx, "compress", &mut cfg.compress, boolean);
    cfg
}

/// `[logs] file`: absolute, a file name at its end, no `.` or `..` (the directory it names is
/// the one rotation works in), and nowhere a write acts on the kernel or a device.
fn log_path(v: &DeValue) -> Parse<PathBuf> {
    use std::path::Component;
    let path = abs_path(v)?;
    let text = path.to_string_lossy();
    if text.ends_with('/') || path.file_name().is_none() {
        return Err(
            Invalid::new(format!("{text:?} names a directory, not a file"))
                .hint("write the file's path, e.g. \"/var/log/corral/web.log\""),
        );
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(Invalid::new(format!("{text:?} has `.` or `..` in it"))
            .hint("write the path without them"));
    }
    if let Some(tree) = NO_LOG_TREES.iter().find(|t| path.starts_with(t)) {
        return Err(Invalid::new(format!("{text:?} is inside {tree}"))
            .hint("keep log files on a file system for files, e.g. under /var/log"));
    }
    Ok(path)
}

fn sandbox(cx: &mut Ctx, sec: &Section) -> Sandbox {
    sec.check_keys(cx, SANDBOX_KEYS);
    let mut sb = Sandbox::default();
    sec.set(cx, "no-new-privileges", &mut sb.no_new_privileges, boolean);
    sec.set(cx, "private-tmp", &mut sb.private_tmp, boolean);
    sb.capabilities = sec
        .list(cx, "capabilities", text(values::capability))
        .map(|caps| {
            let mut caps: Vec<Capability> = caps.into_iter().map(|(c, _)| c).collect();
            caps.sort_unstable();
            caps.dedup();
            caps
        });
    let read_only = sec
        .list(cx, "read-only-paths", abs_path)
        .unwrap_or_default();
    if sb.private_tmp {
        for (i, (path, span)) in read_only.iter().enumerate() {
            if lexically_normal(path).starts_with("/tmp") {
                cx.error(
                    span.clone(),
                    &format!("{}[{i}]", sec.key("read-only-paths")),
                    Invalid::new(format!(
                        "{} is in /tmp, which `private-tmp` replaces with an empty tmpfs: the \
                         unit would never see it",
                        path.display()
                    ))
                    .hint("keep it out of /tmp, or drop `private-tmp`"),
                );
            }
        }
    }
    sb.read_only_paths = read_only.into_iter().map(|(p, _)| p).collect();
    sb
}

/// `path` with `.` and `..` resolved by name, which is where it leads at start: corral follows
/// no symlink in a `read-only-paths` entry (docs/isolation.md).
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// `pid` (for its /proc), `private-tmp` and `read-only-paths` need a mount namespace, `hostname`
/// a uts one: turn them on, and refuse an explicit `false` that contradicts them.
fn implied_namespaces(cx: &mut Ctx, sec: Option<&Section>, ns: &mut Namespaces, sb: &Sandbox) {
    let explicit_false = |k: &str| {
        sec.and_then(|s| s.get(k))
            .is_some_and(|v| matches!(v.get_ref(), DeValue::Boolean(false)))
    };
    let needs_mount = [
        ("namespaces.pid", ns.pid),
        ("sandbox.private-tmp", sb.private_tmp),
        ("sandbox.read-only-paths", !sb.read_only_paths.is_empty()),
    ];
    let needs_uts = [("namespaces.hostname", ns.hostname.is_some())];
    for (k, needs, slot, kind) in [
        ("mount", &needs_mount[..], &mut ns.mount, "mount"),
        ("uts", &needs_uts[..], &mut ns.uts, "uts"),
    ] {
        let Some((by, _)) = needs.iter().find(|(_, needed)| *needed) else {
            continue;
        };
        if explicit_false(k)
            && let Some(sec) = sec
        {
            cx.error(
                sec.span_of(k),
                &sec.key(k),
                format!("`{k} = false` conflicts with `{by}`, which needs a {kind} namespace"),
            );
        }
        *slot = true;
    }
}
