//! Units as systemd unit files: one `.service` per service or oneshot, one `.slice` per slice,
//! for the systemd version given (252, Debian 12's, by default). See docs/cli.md, "export".

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::{Warning, Warnings, binary_size, byte_limit, start_deps};
use crate::unit::{
    ByteLimit, DeviceSpec, ReadyMode, RestartPolicy, Unit, UnitKind, UnitName, UnitSet,
};

/// The oldest systemd the output is written for: every directive below exists there.
pub const MIN_VERSION: u32 = 252;
/// `RestartSteps=` and `RestartMaxDelaySec=` (corral's doubling delay up to max-delay).
const RESTART_STEPS_VERSION: u32 = 254;
/// `PrivatePIDs=` (a pid namespace of the unit's own).
const PRIVATE_PIDS_VERSION: u32 = 257;

pub struct Options<'a> {
    /// The systemd version to write for, at least [`MIN_VERSION`].
    pub version: u32,
    /// Resolves a bare command name to an absolute path (the CLI searches `PATH`): systemd
    /// looks bare names up in its own fixed path, and `systemd-analyze verify` wants them to exist.
    pub resolve: &'a dyn Fn(&str) -> Option<PathBuf>,
}

/// One unit file: its name (`web.service`) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub name: String,
    pub text: String,
}

#[derive(Debug)]
pub struct Output {
    pub files: Vec<File>,
    pub warnings: Vec<Warning>,
}

/// The units as systemd unit files, slices first, then services, each group by name.
pub fn export(units: &UnitSet, options: &Options<'_>) -> Output {
    let mut warnings = Warnings::default();
    let mut slices = Vec::new();
    let mut services = Vec::new();
    for unit in units.values() {
        match unit.kind {
            UnitKind::Slice => slices.push(File {
                name: file_name(unit, units),
                text: slice_file(unit, &mut warnings),
            }),
            UnitKind::Service | UnitKind::Oneshot => services.push(File {
                name: file_name(unit, units),
                text: service_file(unit, units, options, &mut warnings),
            }),
        }
    }
    slices.extend(services);
    Output {
        files: slices,
        warnings: warnings.into_vec(),
    }
}

/// Every file on one stream, each after a `# ==> NAME <==` line (a comment to systemd).
pub fn to_stream(files: &[File]) -> String {
    let mut out = String::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "# ==> {} <==", file.name);
        out.push_str(&file.text);
    }
    out
}

/// The systemd unit name of `unit`: `web.service`, or for a slice its path of slices joined by
/// `-` (`app-web.slice` is a child of `app.slice`), which is why a `-` inside a slice's own
/// name is escaped as `\x2d`, as `systemd-escape` does.
pub fn file_name(unit: &Unit, units: &UnitSet) -> String {
    match unit.kind {
        UnitKind::Slice => slice_name(&unit.name, units),
        UnitKind::Service | UnitKind::Oneshot => format!("{}.service", service_stem(&unit.name)),
    }
}

fn slice_name(name: &UnitName, units: &UnitSet) -> String {
    let mut parts = Vec::new();
    let mut at = Some(name);
    // A validated set has no slice cycle; the bound only keeps a broken one finite.
    while let Some(n) = at.filter(|_| parts.len() <= units.len()) {
        parts.push(escape(n.as_str(), |c| c == '-' || c == '@'));
        at = units.get(n).and_then(|u| u.slice.as_ref());
    }
    parts.reverse();
    format!("{}.slice", parts.join("-"))
}

/// A service keeps its name; `@` stays only as systemd reads it, between a template's prefix
/// and its instance (`worker@1`), and is escaped anywhere else.
fn service_stem(name: &UnitName) -> String {
    let s = name.as_str();
    let instance = s.matches('@').count() == 1 && !s.starts_with('@') && !s.ends_with('@');
    escape(s, |c| c == '@' && !instance)
}

fn escape(s: &str, needs: impl Fn(char) -> bool) -> String {
    s.chars()
        .map(|c| {
            if needs(c) {
                format!("\\x{:02x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn header(out: &mut String, unit: &Unit) {
    let _ = writeln!(
        out,
        "# Exported from corral unit `{}` by `corral export systemd`.",
        unit.name
    );
    let _ = writeln!(out, "[Unit]");
    if let Some(d) = &unit.description {
        let _ = writeln!(out, "Description={}", one_line(d));
    }
}

fn slice_file(unit: &Unit, warnings: &mut Warnings) -> String {
    let mut out = String::new();
    header(&mut out, unit);
    let _ = writeln!(out, "\n[Slice]");
    resources(&mut out, unit, warnings);
    out
}

fn service_file(
    unit: &Unit,
    units: &UnitSet,
    options: &Options<'_>,
    warnings: &mut Warnings,
) -> String {
    let mut out = String::new();
    header(&mut out, unit);
    let deps: Vec<String> = start_deps(unit, units)
        .into_iter()
        .filter_map(|d| units.get(d))
        .map(|d| file_name(d, units))
        .collect();
    if !deps.is_empty() {
        let _ = writeln!(out, "After={}", deps.join(" "));
    }
    let required: Vec<&Unit> = unit
        .requires
        .iter()
        .filter_map(|r| units.get(r).map(|u| &**u))
        .filter(|r| r.kind != UnitKind::Slice)
        .collect();
    if !required.is_empty() {
        let names: Vec<String> = required.iter().map(|r| file_name(r, units)).collect();
        let _ = writeln!(out, "Requires={}", names.join(" "));
        warnings.unit(
            &unit.name,
            "requires",
            format!(
                "systemd's Requires= stops this unit when {} is stopped, not when it fails on its \
                 own, and does not start it again when that one recovers (corral does both)",
                names.join(", ")
            ),
        );
    }
    let r = &unit.restart;
    let _ = writeln!(
        out,
        "StartLimitIntervalSec={}",
        span(r.start_limit_interval)
    );
    let _ = writeln!(out, "StartLimitBurst={}", r.start_limit_burst);

    let _ = writeln!(out, "\n[Service]");
    let ty = match (unit.kind, unit.readiness.mode) {
        (UnitKind::Oneshot, _) => "oneshot",
        (_, ReadyMode::Notify) => "notify",
        _ => "simple",
    };
    let _ = writeln!(out, "Type={ty}");
    if unit.readiness.mode == ReadyMode::LogLine {
        warnings.unit(
            &unit.name,
            "exec.ready",
            "log-line: systemd has no readiness by output line; Type=simple, so what comes \
             after it waits only for its start",
        );
    }
    if unit.kind == UnitKind::Oneshot {
        // corral keeps a oneshot that succeeded `exited`, and what requires it stays up.
        let _ = writeln!(out, "RemainAfterExit=yes");
    }
    if unit.wants_notify_socket() {
        // corral hears every process of the unit (checked by its credentials), as NotifyAccess=all.
        let _ = writeln!(out, "NotifyAccess=all");
    }
    if let Some(exec) = &unit.exec {
        let _ = writeln!(
            out,
            "ExecStart={}",
            command_line(unit, &exec.command, options, warnings)
        );
        if let Some(dir) = &exec.working_dir {
            match literal(&dir.display().to_string()) {
                Some(dir) => {
                    let _ = writeln!(out, "WorkingDirectory={dir}");
                }
                None => warnings.unit(&unit.name, "exec.working-dir", UNWRITABLE),
            }
        }
        for (k, v) in &exec.env {
            let _ = writeln!(out, "Environment={}", quote(&format!("{k}={v}")));
        }
        if let Some(user) = &exec.user {
            let name = literal(&user.user_name).filter(|n| !n.contains(char::is_whitespace));
            let _ = writeln!(out, "User={}", name.unwrap_or_else(|| user.uid.to_string()));
            let _ = writeln!(out, "Group={}", user.gid);
        }
    }
    if let Some(file) = &unit.logs.file {
        // systemd appends the raw output, with no stamp and no rotation of its own.
        match literal(&file.display().to_string()) {
            Some(path) => {
                let _ = writeln!(out, "StandardOutput=append:{path}");
                let _ = writeln!(out, "StandardError=append:{path}");
                warnings.unit(
                    &unit.name,
                    "logs",
                    "StandardOutput=append: writes the lines without a time or stream and \
                     never rotates: max-size, keep and compress need logrotate (or journald)",
                );
            }
            None => warnings.unit(&unit.name, "logs.file", UNWRITABLE),
        }
    }
    if let Some(slice) = unit.slice.as_ref().filter(|s| units.contains_key(*s)) {
        let _ = writeln!(out, "Slice={}", slice_name(slice, units));
    }
    restart(&mut out, unit, options, warnings);
    if unit.kind == UnitKind::Service {
        let _ = writeln!(
            out,
            "TimeoutStartSec={}",
            span(unit.readiness.start_timeout)
        );
    }
    let _ = writeln!(out, "KillSignal={}", unit.stop.signal.0.as_str());
    let _ = writeln!(out, "TimeoutStopSec={}", span(unit.stop.timeout));
    if let Some(health) = &unit.health {
        if let Some(w) = health.watchdog {
            let _ = writeln!(out, "WatchdogSec={}", span(w));
        }
        if health.probe.is_some() {
            let gate = if unit.readiness.mode == ReadyMode::Notify {
                ""
            } else {
                "; what comes after it waits only for its start, not for the probe"
            };
            warnings.unit(
                &unit.name,
                "health",
                format!(
                    "systemd has no health probes: not exported (a watchdog, WatchdogSec= with \
                     sd_notify, is its liveness check){gate}"
                ),
            );
        }
    }
    resources(&mut out, unit, warnings);
    // A worker killed by the OOM killer while the main process lives on leaves corral's unit
    // running (OOMPolicy=continue); group-kill takes the whole unit (OOMPolicy=kill).
    let oom = if unit.oom.group_kill {
        "kill"
    } else {
        "continue"
    };
    let _ = writeln!(out, "OOMPolicy={oom}");
    if let Some(adj) = unit.oom.score_adjust {
        let _ = writeln!(out, "OOMScoreAdjust={adj}");
    }
    if unit.oom.pressure.is_some() {
        warnings.unit(
            &unit.name,
            "oom.action",
            "systemd has no action on a memory threshold before the OOM killer (its open \
             request #25966); ManagedOOMMemoryPressure=kill (systemd-oomd) kills instead, and \
             MemoryPressureWatch= lets the service watch its own pressure",
        );
    }
    namespaces(&mut out, unit, options, warnings);
    sandbox(&mut out, unit, warnings);
    if unit.enabled {
        let _ = writeln!(out, "\n[Install]\nWantedBy=multi-user.target");
    }
    out
}

fn command_line(
    unit: &Unit,
    command: &[String],
    options: &Options<'_>,
    warnings: &mut Warnings,
) -> String {
    let mut words = Vec::with_capacity(command.len());
    for (i, arg) in command.iter().enumerate() {
        if i == 0 && !arg.starts_with('/') {
            match (options.resolve)(arg) {
                Some(path) => words.push(word(&path.display().to_string(), true)),
                None => {
                    warnings.unit(
                        &unit.name,
                        "exec.command",
                        format!(
                            "`{arg}` is not in PATH here: left as a bare name, which systemd \
                             looks up in its own fixed search path"
                        ),
                    );
                    words.push(word(arg, true));
                }
            }
        } else {
            words.push(word(arg, i == 0));
        }
    }
    words.join(" ")
}

/// One word of a command line: bare when it is plain, else double-quoted with C escapes;
/// `%` (specifiers) and `$` (variable expansion) doubled either way, and a lone `;` (the
/// command separator) escaped. The program (`first`) is quoted also when it starts with one of
/// the prefixes systemd reads there (`@-:+!`). See systemd.service(5), "Command lines".
fn word(arg: &str, first: bool) -> String {
    if arg == ";" {
        return "\\;".to_owned();
    }
    let prefixed = first && arg.starts_with(['@', '-', ':', '+', '!']);
    let plain = !(arg.is_empty() || prefixed)
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./=,+-:%$@".contains(c));
    if plain {
        arg.replace('%', "%%").replace('$', "$$")
    } else {
        quote(arg).replace('$', "$$")
    }
}

/// A double-quoted value with C escapes and `%` doubled.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '%' => out.push_str("%%"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

/// Why a value was left out: it could not be written as the literal it is.
const UNWRITABLE: &str = "holds a control character or a backslash, which this directive \
                          cannot take literally; not written";

/// A value for a directive that takes it literally (a path, a user name): `None` when it holds
/// a control character (a newline would end the directive and start another) or a backslash
/// (a trailing one continues the line, swallowing the next directive).
fn literal(s: &str) -> Option<String> {
    (!s.contains(|c: char| c.is_control() || c == '\\')).then(|| specifiers(s))
}

/// Free text on one line, without a trailing backslash (a line continuation).
fn one_line(s: &str) -> String {
    let text = s.split_whitespace().collect::<Vec<_>>().join(" ");
    specifiers(text.trim_end_matches('\\').trim_end())
}

/// A time span as systemd reads it: whole seconds where possible, else milliseconds or
/// microseconds (systemd's finest unit).
fn span(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_micros().is_multiple_of(1000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros().max(1))
    }
}

fn size(limit: ByteLimit) -> String {
    match limit {
        ByteLimit::Bytes(n) => binary_size(n, ["T", "G", "M", "K"]),
        ByteLimit::Max => "infinity".to_owned(),
    }
}

fn restart(out: &mut String, unit: &Unit, options: &Options<'_>, warnings: &mut Warnings) {
    let r = &unit.restart;
    let policy = match r.policy {
        RestartPolicy::Never => "no",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::OnAbnormal => "on-abnormal",
        RestartPolicy::Always => "always",
        RestartPolicy::OnOom => {
            warnings.unit(
                &unit.name,
                "restart.policy",
                "on-oom: systemd cannot restart only after an OOM kill; written as \
                 Restart=on-abnormal, which also restarts after a signal or a watchdog timeout",
            );
            "on-abnormal"
        }
    };
    let _ = writeln!(out, "Restart={policy}");
    let _ = writeln!(out, "RestartSec={}", span(r.delay));
    if r.max_delay > r.delay && r.policy != RestartPolicy::Never {
        if options.version >= RESTART_STEPS_VERSION {
            // corral doubles the delay on each consecutive failure: that many steps of
            // doubling reach max-delay (systemd spreads its steps exponentially too).
            let ratio = r.max_delay.as_secs_f64() / r.delay.as_secs_f64().max(1e-6);
            let steps = ratio.log2().ceil().clamp(1.0, 3000.0);
            let _ = writeln!(out, "RestartSteps={steps}");
            let _ = writeln!(out, "RestartMaxDelaySec={}", span(r.max_delay));
        } else {
            warnings.unit(
                &unit.name,
                "restart.max-delay",
                format!(
                    "the doubling delay up to {} needs RestartSteps= (systemd {RESTART_STEPS_VERSION}); \
                     systemd {} waits RestartSec= every time (see --systemd-version)",
                    span(r.max_delay),
                    options.version
                ),
            );
        }
    }
    let default = crate::unit::RestartConfig::default_for(unit.kind);
    if r.reset_after != default.reset_after {
        warnings.unit(
            &unit.name,
            "restart.reset-after",
            "systemd has no time after which a running unit's restart count starts over",
        );
    }
    let extra: Vec<String> = r
        .success_exit_codes
        .iter()
        .filter(|c| **c != 0)
        .map(i32::to_string)
        .collect();
    if !extra.is_empty() {
        let _ = writeln!(out, "SuccessExitStatus={}", extra.join(" "));
    }
    if !r.success_exit_codes.contains(&0) {
        warnings.unit(
            &unit.name,
            "restart.success-exit-codes",
            "systemd always counts exit code 0 as a success",
        );
    }
}

fn resources(out: &mut String, unit: &Unit, warnings: &mut Warnings) {
    let r = &unit.resources;
    if let Some(q) = r.cpu_quota {
        let _ = writeln!(out, "CPUQuota={}%", q.0);
    }
    if let Some(p) = r.cpu_quota_period {
        let _ = writeln!(out, "CPUQuotaPeriodSec={}", span(p));
    }
    if let Some(w) = r.cpu_weight {
        let _ = writeln!(out, "CPUWeight={w}");
    }
    if let Some(cpus) = &r.allowed_cpus {
        let _ = writeln!(out, "AllowedCPUs={cpus}");
    }
    for (key, value) in [
        ("MemoryMax", r.memory_max),
        ("MemoryHigh", r.memory_high),
        ("MemorySwapMax", r.memory_swap_max),
    ] {
        if let Some(v) = value {
            let _ = writeln!(out, "{key}={}", size(v));
        }
    }
    if let Some(pids) = r.pids_max {
        let value = pids.map_or("infinity".to_owned(), |n| n.to_string());
        let _ = writeln!(out, "TasksMax={value}");
    }
    if let Some(w) = r.io_weight {
        let _ = writeln!(out, "IOWeight={w}");
    }
    for io in &r.io {
        let device = match &io.device {
            DeviceSpec::Path(p) => p.display().to_string(),
            // systemd takes a device path; the kernel's /dev/block/MAJ:MIN links name it.
            DeviceSpec::Number { major, minor } => format!("/dev/block/{major}:{minor}"),
        };
        let Some(device) = literal(&device).filter(|d| !d.contains(char::is_whitespace)) else {
            warnings.unit(&unit.name, "resources.io.device", UNWRITABLE);
            continue;
        };
        // "max" is the kernel's default: nothing to write.
        let limits = [
            ("IOReadBandwidthMax", io.read_bps.and_then(byte_limit)),
            ("IOWriteBandwidthMax", io.write_bps.and_then(byte_limit)),
            ("IOReadIOPSMax", io.read_iops),
            ("IOWriteIOPSMax", io.write_iops),
        ];
        for (key, value) in limits {
            if let Some(v) = value {
                let v = if key.contains("Bandwidth") {
                    binary_size(v, ["T", "G", "M", "K"])
                } else {
                    v.to_string()
                };
                let _ = writeln!(out, "{key}={device} {v}");
            }
        }
    }
}

fn namespaces(out: &mut String, unit: &Unit, options: &Options<'_>, warnings: &mut Warnings) {
    let ns = &unit.namespaces;
    if ns.pid {
        if options.version >= PRIVATE_PIDS_VERSION {
            let _ = writeln!(out, "PrivatePIDs=yes");
        } else {
            warnings.unit(
                &unit.name,
                "namespaces.pid",
                format!(
                    "PrivatePIDs= needs systemd {PRIVATE_PIDS_VERSION}; not written for systemd {}",
                    options.version
                ),
            );
        }
    }
    let flags = [
        (ns.net, "PrivateNetwork"),
        (ns.mount, "PrivateMounts"),
        (ns.uts, "ProtectHostname"),
        (ns.ipc, "PrivateIPC"),
        (ns.user, "PrivateUsers"),
    ];
    for (set, key) in flags {
        if set {
            let _ = writeln!(out, "{key}=yes");
        }
    }
    if ns.hostname.is_some() {
        warnings.unit(
            &unit.name,
            "namespaces.hostname",
            "systemd cannot give a unit a host name of its own (ProtectHostname= keeps the host's)",
        );
    }
    if ns.cgroup {
        warnings.unit(
            &unit.name,
            "namespaces.cgroup",
            "systemd has no cgroup namespace option for a service; dropped",
        );
    }
    if !ns.uid_map.is_empty() || !ns.gid_map.is_empty() {
        warnings.unit(
            &unit.name,
            "namespaces.uid-map",
            "PrivateUsers= maps only root and the unit's own user; the id maps are dropped",
        );
    }
}

fn sandbox(out: &mut String, unit: &Unit, warnings: &mut Warnings) {
    let sb = &unit.sandbox;
    if sb.no_new_privileges {
        let _ = writeln!(out, "NoNewPrivileges=yes");
    }
    if let Some(caps) = &sb.capabilities {
        let names: Vec<&str> = caps.iter().filter_map(|c| c.name()).collect();
        // An empty assignment is the empty bounding set (systemd.exec(5)).
        let _ = writeln!(out, "CapabilityBoundingSet={}", names.join(" "));
        if !names.is_empty() {
            // corral raises the kept capabilities as ambient, so a unit with a user keeps them.
            let _ = writeln!(out, "AmbientCapabilities={}", names.join(" "));
        }
    }
    if !sb.read_only_paths.is_empty() {
        let mut paths = Vec::new();
        for path in &sb.read_only_paths {
            // A space-separated list: a path with a space is quoted, one with a quote left out.
            match literal(&path.display().to_string()).filter(|p| !p.contains('"')) {
                Some(p) if p.contains(' ') => paths.push(format!("\"{p}\"")),
                Some(p) => paths.push(p),
                None => warnings.unit(
                    &unit.name,
                    "sandbox.read-only-paths",
                    format!(
                        "{}: {UNWRITABLE}",
                        path.display().to_string().escape_debug()
                    ),
                ),
            }
        }
        if !paths.is_empty() {
            let _ = writeln!(out, "ReadOnlyPaths={}", paths.join(" "));
        }
    }
    if sb.private_tmp {
        let _ = writeln!(out, "PrivateTmp=yes");
    }
}
