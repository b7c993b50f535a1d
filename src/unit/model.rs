//! The validated, immutable unit model that the rest of corral consumes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A unit's identity: the file stem, matching `[A-Za-z0-9_.@-]+`.
///
/// Shared, not copied: every room of the daemon keys its table by the unit's name, so a clone
/// is a reference count, not an allocation (bench/analysis.md, "Where the heap goes per unit").
/// Equality, order and hash are the text's, as for a `String`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitName(Arc<str>);

impl serde::Serialize for UnitName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for UnitName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl UnitName {
    /// The names joined by `separator`, for messages and log fields.
    pub fn join(names: &[UnitName], separator: &str) -> String {
        names
            .iter()
            .map(UnitName::as_str)
            .collect::<Vec<_>>()
            .join(separator)
    }

    /// Accepts only names that match `[A-Za-z0-9_.@-]+`.
    pub fn new(name: &str) -> Option<UnitName> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
        valid.then(|| UnitName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitKind {
    Service,
    Oneshot,
    Slice,
}

impl UnitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Service => "service",
            UnitKind::Oneshot => "oneshot",
            UnitKind::Slice => "slice",
        }
    }
}

/// One unit file, validated. Static configuration, never runtime state.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub name: UnitName,
    pub kind: UnitKind,
    /// The file this unit was read from.
    pub source: PathBuf,
    pub description: Option<String>,
    /// Parent slice; `None` is the root.
    pub slice: Option<UnitName>,
    pub after: Vec<UnitName>,
    pub requires: Vec<UnitName>,
    pub enabled: bool,
    /// `Some` for services and oneshots, `None` for slices.
    pub exec: Option<Exec>,
    /// Shared when it is a service's defaults (`RestartConfig::default`).
    pub restart: Rare<RestartConfig>,
    pub stop: StopConfig,
    pub resources: Rare<Resources>,
    pub oom: Rare<OomConfig>,
    pub namespaces: Rare<Namespaces>,
    pub sandbox: Rare<Sandbox>,
    /// `[exec] ready` and `start-timeout`: when a started unit counts as up.
    pub readiness: Rare<Readiness>,
    /// `[health]`: a probe and/or a watchdog; `None` when the unit has no such section.
    pub health: Option<Box<Health>>,
    /// `[logs]`: the unit's log file and its rotation.
    pub logs: Rare<LogConfig>,
}

/// A section most units leave at its defaults (`[resources]`, `[namespaces]`, `[sandbox]`...):
/// a unit holds a box only for a section that differs from them, and reads one shared copy of
/// the defaults otherwise. Reads see a `T` (`unit.resources.memory_max`), so the access sites
/// do not change; a write through `DerefMut` gives the unit a box of its own, and
/// [`Unit::share_defaults`] gives back the boxes that hold the defaults. Inline, every section
/// made each unit about 1.1 KiB (bench/analysis.md, "Where the heap goes per unit"). The
/// core's runtime uses it too, for the state only probed or pressure-watched units fill.
#[derive(Clone)]
pub struct Rare<T: SharedDefault>(Option<Box<T>>);

/// A type whose `Default` value exists once, for every `Rare` that holds none of its own.
pub trait SharedDefault: Default + Clone + PartialEq + Sized + 'static {
    fn shared_default() -> &'static Self;
}

/// Makes each type a [`SharedDefault`], its `Default` value made once, at its first read.
#[macro_export]
macro_rules! shared_default {
    ($($t:ty),*) => {$(
        impl $crate::unit::SharedDefault for $t {
            fn shared_default() -> &'static $t {
                static DEFAULT: std::sync::LazyLock<$t> = std::sync::LazyLock::new(<$t>::default);
                &DEFAULT
            }
        }
    )*};
}

crate::shared_default!(
    RestartConfig,
    Resources,
    OomConfig,
    Namespaces,
    Sandbox,
    Readiness,
    LogConfig
);

impl<T: SharedDefault> Rare<T> {
    pub fn new(value: T) -> Rare<T> {
        let mut rare = Rare(Some(Box::new(value)));
        rare.share_default();
        rare
    }

    /// Drops the box if it holds the defaults.
    fn share_default(&mut self) {
        if self.0.as_deref() == Some(T::shared_default()) {
            self.0 = None;
        }
    }
}

impl<T: SharedDefault> Default for Rare<T> {
    fn default() -> Self {
        Rare(None)
    }
}

impl<T: SharedDefault> From<T> for Rare<T> {
    fn from(value: T) -> Self {
        Rare::new(value)
    }
}

impl<T: SharedDefault> std::ops::Deref for Rare<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.0 {
            Some(own) => own,
            None => T::shared_default(),
        }
    }
}

impl<T: SharedDefault> std::ops::DerefMut for Rare<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0
            .get_or_insert_with(|| Box::new(T::shared_default().clone()))
    }
}

impl<T: SharedDefault> PartialEq for Rare<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: SharedDefault + Eq> Eq for Rare<T> {}

/// `unit.namespaces != Namespaces::default()` reads as it did when the section was inline.
impl<T: SharedDefault> PartialEq<T> for Rare<T> {
    fn eq(&self, other: &T) -> bool {
        **self == *other
    }
}

impl<T: SharedDefault + fmt::Debug> fmt::Debug for Rare<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl Unit {
    /// Gives back the sections' boxes that hold their defaults (a parser writes through
    /// `DerefMut`, which boxes a section even when what it writes is the default).
    pub fn share_defaults(&mut self) {
        self.restart.share_default();
        self.resources.share_default();
        self.oom.share_default();
        self.namespaces.share_default();
        self.sandbox.share_default();
        self.readiness.share_default();
        self.logs.share_default();
    }
}

/// `[logs]`: where a unit's output lines are also written, and how the file is rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `file`: absolute; `None` is `run --log-dir`'s `<dir>/<unit>.log`, or no file.
    pub file: Option<PathBuf>,
    /// `max-size`: a file is rotated before a line would take it past this many bytes.
    pub max_size: u64,
    /// `keep`: rotated files kept (`<file>.1` is the newest).
    pub keep: u32,
    /// `compress`: rotated files are gzip-compressed (`<file>.1.gz`).
    pub compress: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            file: None,
            max_size: 10 << 20,
            keep: 5,
            compress: false,
        }
    }
}

impl Unit {
    /// Units this one waits for before it starts: `after` and `requires` together.
    pub fn ordering_deps(&self) -> impl Iterator<Item = &UnitName> {
        self.after.iter().chain(self.requires.iter())
    }
}

/// How a unit tells corral it is ready (`[exec] ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyMode {
    /// Ready once its main process is spawned (systemd `Type=exec`).
    Started,
    /// Ready when a process of the unit sends `READY=1` to `$NOTIFY_SOCKET` (systemd `Type=notify`).
    Notify,
    /// Ready when a line of its stdout or stderr matches `ready-pattern` (process-compose's
    /// `ready_log_line`).
    LogLine,
}

/// `ready-pattern`: a regular expression (regex-lite syntax) searched in each output line.
/// Two patterns are equal when they are written alike (a reload compares units).
#[derive(Debug, Clone)]
pub struct LinePattern(pub regex_lite::Regex);

/// The longest pattern corral compiles, and the most memory its compiled form may take: a
/// line is matched on the loop, so the work per line stays bounded (regex-lite matches in time
/// linear in the line, times the pattern's size).
pub const MAX_PATTERN_CHARS: usize = 1024;
const MAX_PATTERN_MEMORY: usize = 256 * 1024;
/// The same for `logs --grep`, whose pattern any reader of logs (a `--socket-group` member)
/// sends: a budget of loop time can stop a search only between lines, so one 8 KiB line's
/// match must stay short whatever the pattern (at most about 15 ms in a release build at this
/// size, against 0.7 s at `MAX_PATTERN_MEMORY`). Ordinary patterns (`status=5[0-9]{2}`, an
/// access-log line's shape, `(?i)error|warn|fatal`) fit with room to spare.
const MAX_GREP_PATTERN_MEMORY: usize = 8 * 1024;

impl LinePattern {
    /// Compiles `pattern`, searched anywhere in a line; the error says why in words.
    pub fn new(pattern: &str) -> Result<LinePattern, String> {
        LinePattern::within(pattern, MAX_PATTERN_MEMORY)
    }

    /// `logs --grep`'s pattern: as `new`, within `MAX_GREP_PATTERN_MEMORY`.
    pub fn for_grep(pattern: &str) -> Result<LinePattern, String> {
        LinePattern::within(pattern, MAX_GREP_PATTERN_MEMORY)
    }

    fn within(pattern: &str, memory: usize) -> Result<LinePattern, String> {
        if pattern.is_empty() {
            return Err("the pattern is empty: every line would match".to_owned());
        }
        if pattern.chars().count() > MAX_PATTERN_CHARS {
            return Err(format!(
                "the pattern is longer than {MAX_PATTERN_CHARS} characters"
            ));
        }
        regex_lite::RegexBuilder::new(pattern)
            .size_limit(memory)
            .build()
            .map(LinePattern)
            .map_err(|e| format!("invalid regular expression: {e}"))
    }

    pub fn is_match(&self, line: &str) -> bool {
        self.0.is_match(line)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for LinePattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub mode: ReadyMode,
    /// A unit not ready this long after its spawn has failed its start.
    pub start_timeout: Duration,
    /// `ready-pattern`: set exactly when `mode` is `LogLine`.
    pub pattern: Option<LinePattern>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            mode: ReadyMode::Started,
            start_timeout: Duration::from_secs(90),
            pattern: None,
        }
    }
}

/// What one probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// argv, run inside the unit's cgroup; exit code 0 is a success.
    Exec(Vec<String>),
    /// `http://HOST:PORT/PATH`: a 2xx or 3xx answer to an HTTP/1.0 GET is a success.
    Http(HttpTarget),
    /// `HOST:PORT`: an accepted TCP connection is a success.
    Tcp(std::net::SocketAddr),
}

/// A parsed `http = "..."` probe target: an IP address (no DNS in PID 1), a port and a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub addr: std::net::SocketAddr,
    /// The `Host:` header: the authority as written.
    pub host: String,
    /// Starts with '/'.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub initial_delay: Duration,
    /// Consecutive failures of a ready unit that restart it.
    pub failure_threshold: u32,
    /// Consecutive successes that make a starting unit ready.
    pub success_threshold: u32,
}

/// `[health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub probe: Option<ProbeConfig>,
    /// Restart the unit when no `WATCHDOG=1` arrives for this long.
    pub watchdog: Option<Duration>,
}

impl Unit {
    /// The unit is given a `$NOTIFY_SOCKET`: it reports readiness or watchdog pings there.
    pub fn wants_notify_socket(&self) -> bool {
        self.readiness.mode == ReadyMode::Notify
            || self.health.as_ref().is_some_and(|h| h.watchdog.is_some())
    }

    /// The unit stays `starting` after its spawn until it proves it is ready.
    pub fn gates_readiness(&self) -> bool {
        self.kind == UnitKind::Service
            && (matches!(self.readiness.mode, ReadyMode::Notify | ReadyMode::LogLine)
                || self.health.as_ref().is_some_and(|h| h.probe.is_some()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    /// argv; `command[0]` is a path or a bare name searched in PATH at spawn time.
    pub command: Vec<String>,
    pub working_dir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// `env-file`: read at each start, in order; `env` overrides what they set.
    pub env_files: Vec<EnvFile>,
    /// Resolved at validation time from the passwd/group databases.
    /// Boxed: most units set no `user`, and inline it made every unit 72 bytes larger
    /// (bench/analysis.md, "Where the heap goes per unit").
    pub user: Option<Box<Credentials>>,
}

/// One `env-file` entry: systemd's EnvironmentFile= syntax, read by corral before each spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    pub path: PathBuf,
    /// Written with a leading `-`: a missing file is no error.
    pub optional: bool,
}

/// The identity a unit runs as, resolved from `user` and `group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user_name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Supplementary groups of the user (as `initgroups` would set them).
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    OnFailure,
    OnAbnormal,
    OnOom,
    Always,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestartConfig {
    pub policy: RestartPolicy,
    pub delay: Duration,
    pub max_delay: Duration,
    pub reset_after: Duration,
    pub start_limit_burst: u32,
    pub start_limit_interval: Duration,
    pub success_exit_codes: Vec<i32>,
}

/// A service's defaults, the one copy a `Rare` shares: most units are services that leave
/// `[restart]` alone, and inline it was about 130 bytes of every unit with its exit codes'
/// heap chunk (bench/analysis.md, "Where the heap goes per unit"). A oneshot or a slice
/// (policy `never`) holds a box of its own.
impl Default for RestartConfig {
    fn default() -> RestartConfig {
        RestartConfig::default_for(UnitKind::Service)
    }
}

impl RestartConfig {
    /// The defaults of docs/units.md for a unit of `kind`.
    pub fn default_for(kind: UnitKind) -> RestartConfig {
        RestartConfig {
            policy: match kind {
                UnitKind::Service => RestartPolicy::OnFailure,
                UnitKind::Oneshot | UnitKind::Slice => RestartPolicy::Never,
            },
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(60),
            reset_after: Duration::from_secs(600),
            start_limit_burst: 5,
            start_limit_interval: Duration::from_secs(10),
            success_exit_codes: vec![0],
        }
    }
}

/// A signal by number, with the name it was given by (`SIGTERM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalSpec(pub crate::core::signal::Signal);

#[derive(Debug, Clone, PartialEq)]
pub struct StopConfig {
    pub signal: SignalSpec,
    pub timeout: Duration,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig {
            signal: SignalSpec(crate::core::signal::Signal::SIGTERM),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A byte count or the kernel's "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteLimit {
    Bytes(u64),
    Max,
}

/// CPU time per period as a percentage of one CPU (`"150%"` is 150).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPercent(pub u32);

/// A block device named by path (resolved to MAJ:MIN when applied) or by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    Path(PathBuf),
    Number { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoLimit {
    pub device: DeviceSpec,
    pub read_bps: Option<ByteLimit>,
    pub write_bps: Option<ByteLimit>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

/// `[resources]`: every field `None`/empty means "leave the kernel default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu_quota: Option<CpuPercent>,
    pub cpu_quota_period: Option<Duration>,
    /// 1..=10000
    pub cpu_weight: Option<u32>,
    /// A cpuset list as the kernel writes it: `"0-1,3"`.
    pub allowed_cpus: Option<String>,
    pub memory_max: Option<ByteLimit>,
    pub memory_high: Option<ByteLimit>,
    pub memory_swap_max: Option<ByteLimit>,
    /// `None` is no limit set; `Some(None)` is "max".
    pub pids_max: Option<Option<u64>>,
    /// 1..=10000
    pub io_weight: Option<u32>,
    pub io: Vec<IoLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OomConfig {
    pub group_kill: bool,
    /// -1000..=1000
    pub score_adjust: Option<i32>,
    /// Acting before the OOM killer (`usage-threshold`, `pressure-threshold`, `action`...);
    /// `None` when neither threshold is set.
    pub pressure: Option<PressurePolicy>,
}

/// `[oom]` thresholds and what to do when one is crossed for `sustain` (docs/units.md,
/// "Acting before the OOM killer").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PressurePolicy {
    /// Percent of `memory-max` (1..=99): usage at or above it begins an episode.
    pub usage_percent: Option<u32>,
    /// PSI stall over a window (cgroup v2 `memory.pressure`).
    pub psi: Option<PsiThreshold>,
    /// How long an episode lasts before the action is taken.
    pub sustain: Duration,
    pub action: PressureAction,
    /// After an action, none for this long (across restarts too).
    pub cool_down: Duration,
}

/// `"some 20% over 5s"`: tasks stalled on memory for 20% of any 5 s window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiThreshold {
    /// `full` (every task stalled) rather than `some`.
    pub full: bool,
    /// 1..=100
    pub percent: u32,
    /// 500ms..=10s, the kernel's range for a trigger's window (Documentation/accounting/psi.rst).
    pub window: Duration,
}

impl PsiThreshold {
    /// The stall time within the window that fires the trigger.
    pub fn stall(&self) -> Duration {
        self.window * self.percent / 100
    }

    /// What to write to `memory.pressure` to arm the kernel's trigger: `<some|full> <stall us>
    /// <window us>` (psi.rst, "Userspace monitor usage").
    pub fn trigger(&self) -> String {
        format!(
            "{} {} {}",
            if self.full { "full" } else { "some" },
            self.stall().as_micros(),
            self.window.as_micros()
        )
    }
}

impl std::fmt::Display for PsiThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}% over {}",
            if self.full { "full" } else { "some" },
            self.percent,
            humantime::format_duration(self.window)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureAction {
    /// Log a warning (what corral did before these keys).
    Warn,
    /// The unit's stop signal, its stop timeout, then a start: not a failure.
    Restart,
    /// Send this signal to every process of the unit (an app that can shed caches).
    Signal(SignalSpec),
}

impl PressureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PressureAction::Warn => "warn",
            PressureAction::Restart => "restart",
            PressureAction::Signal(_) => "signal",
        }
    }
}

/// One line of an id map: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapEntry {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub pid: bool,
    pub net: bool,
    /// True when asked for, or implied by `pid` or `private-tmp`/`read-only-paths`.
    pub mount: bool,
    /// True when asked for, or implied by `hostname`.
    pub uts: bool,
    pub hostname: Option<String>,
    pub ipc: bool,
    pub cgroup: bool,
    pub user: bool,
    pub uid_map: Vec<IdMapEntry>,
    pub gid_map: Vec<IdMapEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub no_new_privileges: bool,
    /// `Some`: keep only these (by capability number); `None`: leave the bounding set alone.
    pub capabilities: Option<Vec<Capability>>,
    pub read_only_paths: Vec<PathBuf>,
    pub private_tmp: bool,
}

impl Sandbox {
    /// The privileges part alone, for a process that enters a mount namespace already set up.
    pub fn without_mounts(&self) -> Sandbox {
        Sandbox {
            read_only_paths: Vec::new(),
            private_tmp: false,
            ..self.clone()
        }
    }
}

/// A Linux capability by its number (CAP_NET_BIND_SERVICE is 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Capability(pub u8);
