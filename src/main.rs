//! The `corral` command line: `run` and `check` work locally; every other verb asks the supervisor.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use corral::client::{self, ClientError, Connection, exit_code};
use corral::daemon::{self, logging};
use corral::os::control_socket;
use corral::os::pid1::{self, PowerAction};
use corral::proto::{Request, Response, Verb};
use corral::unit::{self, UnitName};

const DEFAULT_UNITS_DIR: &str = "/etc/corral/units";

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "A Linux workload supervisor: init, service manager, cgroups and namespaces"
)]
struct Cli {
    /// Control socket [default: /run/corral/control.sock for root, else $XDG_RUNTIME_DIR/corral/control.sock]
    #[arg(long, global = true, env = "CORRAL_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant (`run`'s options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Supervise the units in UNITS_DIR in the foreground (PID-1 capable)
    Run(RunArgs),
    /// Parse and validate every unit; exit 1 if any has an error
    Check {
        #[arg(default_value = DEFAULT_UNITS_DIR)]
        units_dir: PathBuf,
        /// Print this unit as merged from its files (template, drop-ins), each key with the
        /// file and line it came from
        #[arg(long, value_name = "UNIT")]
        show: Option<String>,
    },
    /// Translate a units directory into Kubernetes objects or systemd unit files
    #[command(subcommand)]
    Export(ExportCommand),
    /// Show the state of all units, or of the named ones (exit 3 if a named one is not running)
    Status {
        /// Unit names, or glob patterns (`'web-*'`, quoted from the shell) matched by the supervisor
        units: Vec<String>,
        #[arg(long)]
        json: bool,
        /// Only units in this state (repeatable, or a comma list: failed,backoff)
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        /// Only units in this slice, directly or below (repeatable, or a comma list)
        #[arg(long = "slice", value_name = "SLICE")]
        slices: Vec<String>,
    },
    /// Start units and wait until they run (a oneshot: until it exited successfully)
    Start(ActionArgs),
    /// Stop units (and what requires them) and wait until they are down
    Stop(ActionArgs),
    /// Stop then start units, and wait until they run again
    Restart(ActionArgs),
    /// Make the runtime instances of a template exactly TEMPLATE@1..TEMPLATE@N (0: none) and
    /// wait until they run and the others are gone; instances with a file are never removed
    Scale {
        /// The template: `worker` or `worker@`
        template: String,
        count: u32,
        /// Return as soon as the request is accepted
        #[arg(long)]
        no_block: bool,
        #[arg(long)]
        json: bool,
    },
    /// Send a signal to every process of a unit
    Kill {
        unit: String,
        #[arg(long, short, default_value = "SIGTERM")]
        signal: String,
    },
    /// Pause every process of units (cgroup freezer)
    Freeze {
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Resume frozen units
    Thaw {
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Re-read the units directory now and apply the difference
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// Show a unit's recent output
    Logs {
        #[arg(required = true)]
        units: Vec<String>,
        /// How many recent lines (default 100; with --since or --grep, every matching line the
        /// buffer holds)
        #[arg(short = 'n', long = "lines")]
        lines: Option<usize>,
        /// Keep printing new lines until interrupted
        #[arg(short, long)]
        follow: bool,
        /// Only lines written since then: a duration back from now (10m, 1h 30m) or an RFC 3339
        /// time (2026-12-03T10:00:00Z)
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only lines matching this regular expression (regex-lite syntax), new ones too with -f
        #[arg(long, value_name = "PATTERN")]
        grep: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A live view of usage against limits, slices with their units beneath (q quits)
    Top(TopArgs),
    /// Every unit's figures in the Prometheus text format
    Metrics {
        /// Unit names, or glob patterns matched by the supervisor
        units: Vec<String>,
        /// Only units in this state (repeatable, or a comma list)
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        /// Only units in this slice, directly or below (repeatable, or a comma list)
        #[arg(long = "slice", value_name = "SLICE")]
        slices: Vec<String>,
    },
    /// Wait until the named units (none: every enabled unit) are ready; exit 1 at --timeout
    WaitReady {
        units: Vec<String>,
        /// Give up after this long, saying why each unit is not ready (default: wait on)
        #[arg(long, value_name = "DURATION", value_parser = parse_bounded_duration)]
        timeout: Option<Duration>,
    },
    /// Stop every unit in reverse dependency order, then end the supervisor
    Shutdown {
        /// Then power the machine off (corral must be the host's init)
        #[arg(long, conflicts_with = "reboot")]
        poweroff: bool,
        /// Then reboot the machine (corral must be the host's init)
        #[arg(long)]
        reboot: bool,
    },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Kubernetes objects as multi-document YAML on stdout (--wrap or --split)
    K8s(K8sArgs),
    /// One .service per unit and one .slice per slice, to --output DIR or stdout
    Systemd(SystemdArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("layout").required(true).args(["wrap", "split"])))]
struct K8sArgs {
    units_dir: PathBuf,
    /// One pod whose container runs corral with the units from a ConfigMap
    #[arg(long)]
    wrap: bool,
    /// One container per unit: oneshots as init containers, dependencies as native sidecars
    #[arg(long)]
    split: bool,
    /// Emit a Deployment (one replica) instead of a bare Pod
    #[arg(long)]
    deployment: bool,
    /// Name of the pod or Deployment (the ConfigMap is NAME-units): a DNS label
    #[arg(long, default_value = "corral", value_parser = parse_object_name)]
    name: String,
    /// Image of every container: with corral in PATH (--wrap), or the units' commands (--split)
    #[arg(long, default_value = "corral:latest")]
    image: String,
    /// Run the wrapped container privileged, so corral can write its cgroups and make namespaces
    #[arg(long, conflicts_with = "split")]
    privileged: bool,
}

#[derive(Args)]
struct SystemdArgs {
    units_dir: PathBuf,
    /// Write one file per unit into DIR (created if missing) instead of stdout
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,
    /// The systemd version to write for: 254 adds RestartSteps=, 257 PrivatePIDs=
    #[arg(long, value_name = "N", default_value_t = corral::export::systemd::MIN_VERSION,
          value_parser = clap::value_parser!(u32).range(i64::from(corral::export::systemd::MIN_VERSION)..))]
    systemd_version: u32,
}

fn parse_object_name(text: &str) -> Result<String, String> {
    if corral::export::k8s::valid_object_name(text) {
        Ok(text.to_owned())
    } else {
        Err("must be lowercase letters, digits and inner `-`, at most 57 characters".to_owned())
    }
}

/// `--log-dir`: absolute, and not where a write acts on the kernel or a device.
fn parse_log_dir(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(format!("{text:?} is not an absolute path"));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{text:?} has `..` in it"));
    }
    if ["/proc", "/sys", "/dev"]
        .iter()
        .any(|t| path.starts_with(t))
    {
        return Err(format!("{text:?} is inside /proc, /sys or /dev"));
    }
    Ok(path)
}

#[derive(Args)]
struct RunArgs {
    #[arg(default_value = DEFAULT_UNITS_DIR)]
    units_dir: PathBuf,
    /// Open the socket to this group's members for the read-only verbs (status, logs, top, metrics)
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Root of corral's cgroup tree (default: the cgroup corral starts in)
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup_root)]
    cgroup_root: Option<PathBuf>,
    /// Directory of the units' notify sockets [default: /run/corral-notify for root, else $XDG_RUNTIME_DIR/corral-notify]
    #[arg(long, value_name = "DIR")]
    notify_dir: Option<PathBuf>,
    /// When this unit ends (exited or failed), shut down and exit with its status
    #[arg(long, value_name = "UNIT")]
    exit_with: Option<String>,
    /// Write each unit's output also to DIR/<unit>.log (a unit's [logs] file wins), rotated
    /// as its [logs] says; DIR must be an absolute path, and is created (0750) if missing
    #[arg(long, value_name = "DIR", value_parser = parse_log_dir)]
    log_dir: Option<PathBuf>,
    /// After the units are down, how long leftover processes get between SIGTERM and SIGKILL
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_bounded_duration)]
    shutdown_timeout: Duration,
    /// The runtime's grace period before it SIGKILLs the container (Docker --stop-timeout,
    /// Kubernetes terminationGracePeriodSeconds): warn when the units' stops may take longer
    #[arg(long, value_name = "DURATION", value_parser = parse_bounded_duration)]
    grace_period: Option<Duration>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: logging::LogFormat,
    /// Colour the text log: auto (only on a terminal, and not with NO_COLOR set), always, never
    #[arg(long, value_enum, default_value = "auto")]
    log_color: logging::LogColor,
    /// Warn when a unit's memory stays at or above this percent of its memory-max
    #[arg(long, value_name = "PERCENT", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=100))]
    warn_memory_percent: u32,
    /// Warn when a unit's processes stay at or above this percent of its pids-max
    #[arg(long, value_name = "PERCENT", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=100))]
    warn_pids_percent: u32,
    /// Warn when a unit's throttled time grows faster than this per minute
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_bounded_duration)]
    warn_throttled_per_minute: Duration,
    /// How often running units with pids-max or cpu-quota (and memory-max on cgroup v2) are sampled
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_interval)]
    usage_interval: Duration,
    /// Serve GET /metrics (Prometheus) on this address, e.g. 127.0.0.1:9100
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Allow --metrics-listen on an address other hosts can reach (default: loopback only)
    #[arg(long, requires = "metrics_listen")]
    metrics_allow_remote: bool,
    /// Answer GET /metrics only with "Authorization: Bearer TOKEN", TOKEN being this file's
    /// content (which every local user must not be able to read)
    #[arg(long, value_name = "PATH", requires = "metrics_listen")]
    metrics_token_file: Option<PathBuf>,
    /// Serve GET /livez, /readyz and /readyz/UNIT (for the kubelet) on this address, e.g.
    /// 0.0.0.0:9101; any address, no token (they tell only readiness)
    #[arg(long, value_name = "ADDR:PORT")]
    probe_listen: Option<std::net::SocketAddr>,
}

/// The longest duration any option takes. Deadlines are `now + duration`; a figure beyond what
/// the clock can add is a typo, refused here (clap names the option, exit 2) rather than
/// carried into the loop. Unit files' durations saturate instead (`core::service::after`).
const MAX_OPTION_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration option: humantime syntax, at most `MAX_OPTION_DURATION`.
fn parse_bounded_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d > MAX_OPTION_DURATION {
        return Err(format!(
            "{} is longer than the longest duration accepted, {}",
            humantime::format_duration(d),
            humantime::format_duration(MAX_OPTION_DURATION)
        ));
    }
    Ok(d)
}

/// A cgroup path, below the hierarchies' roots: `..` would lead out of the cgroup file system
/// (`/../x` is a directory beside the v1 hierarchies, on the tmpfs that holds them).
fn parse_cgroup_root(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if text.is_empty() {
        return Err("a cgroup path cannot be empty; `/` is the root".to_owned());
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "{text}: `..` leads out of the cgroup hierarchy; give the path from its root"
        ));
    }
    Ok(path)
}

/// A sampling interval: at least 100 ms, so a typo cannot make corral spin.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_bounded_duration(text)?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".to_owned());
    }
    Ok(d)
}

fn parse_top_interval(text: &str) -> Result<Duration, String> {
    let d = parse_interval(text)?;
    if d > Duration::from_secs(20) {
        return Err("must be at most 20s".to_owned());
    }
    Ok(d)
}

#[derive(Args)]
struct TopArgs {
    /// Print one frame and exit (CPU % is measured over one interval)
    #[arg(long)]
    once: bool,
    /// With --once: the frame as JSON
    #[arg(long, requires = "once")]
    json: bool,
    /// Sort by: cpu or memory (keys c and m switch while running)
    #[arg(long, value_enum, default_value = "cpu")]
    sort: client::top::SortKey,
    /// Time between frames (100ms to 20s: the socket drops a connection silent for 30s)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_top_interval)]
    interval: Duration,
    /// Only these units: names or glob patterns
    units: Vec<String>,
    /// Only units in this state (repeatable, or a comma list)
    #[arg(long = "state", value_name = "STATE")]
    states: Vec<String>,
    /// Only units in this slice, directly or below (repeatable, or a comma list)
    #[arg(long = "slice", value_name = "SLICE")]
    slices: Vec<String>,
}

#[derive(Args)]
struct ActionArgs {
    #[arg(required = true)]
    units: Vec<String>,
    /// Return as soon as the request is accepted
    #[arg(long)]
    no_block: bool,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // The machine's init must not exit on a bad command line (the kernel would panic, and
        // the kernel passes its own unknown boot parameters to init): it says why and runs
        // with the defaults, which keeps the control socket and the units as a way back.
        Err(e) if pid1::is_host_init() => {
            eprintln!(
                "corral: {}; as the machine's init corral runs as `corral run` with the defaults",
                e.to_string().trim_end()
            );
            Cli::parse_from(["corral", "run"])
        }
        Err(e) => e.exit(),
    };
    if !matches!(cli.command, Command::Run(_)) {
        // A client piped into `head` should end quietly like any Unix tool. Rust ignores
        // SIGPIPE at startup; the supervisor keeps that (a closed socket is an EPIPE error).
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let socket = cli.socket.unwrap_or_else(control_socket::default_path);
    let code = match cli.command {
        Command::Run(args) => run(args, socket),
        Command::Check { units_dir, show } => check(&units_dir, show.as_deref()),
        Command::Export(what) => export(what),
        other => match talk(other, &socket) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("corral: {}", corral::escape::terminal_lines(&e.to_string()));
                e.exit_code()
            }
        },
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(args: RunArgs, socket: PathBuf) -> i32 {
    let color = logging::colors(
        args.log_color,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let log_flush = logging::init(args.log_format, color);
    // The machine's init leaves out what it cannot use instead of exiting (daemon::run).
    let host_init = pid1::is_host_init();
    let exit_with = match args.exit_with.as_deref().map(|n| (n, UnitName::new(n))) {
        None => None,
        Some((_, Some(name))) => Some(name),
        Some((raw, None)) => {
            eprintln!("corral: --exit-with {raw:?} is not a unit name");
            if !host_init {
                return exit_code::USAGE;
            }
            None
        }
    };
    let mut metrics_listen = args.metrics_listen;
    if let Some(addr) = args.metrics_listen
        && !daemon::is_loopback(&addr)
        && !args.metrics_allow_remote
    {
        eprintln!(
            "corral: --metrics-listen {addr} is reachable from other hosts; metrics show every unit's \
             names and figures to anyone who connects. Add --metrics-allow-remote if that is intended."
        );
        if !host_init {
            return exit_code::USAGE;
        }
        metrics_listen = None;
    }
    let metrics_token = match args
        .metrics_token_file
        .as_deref()
        .map(daemon::read_token_file)
    {
        None => None,
        Some(Ok(token)) => Some(token),
        Some(Err(e)) => {
            eprintln!("corral: {e}");
            return exit_code::USAGE;
        }
    };
    let options = daemon::Options {
        units_dir: args.units_dir,
        socket,
        socket_group: args.socket_group,
        cgroup_root: args.cgroup_root,
        exit_with,
        shutdown_timeout: args.shutdown_timeout,
        grace_period: args.grace_period,
        thresholds: corral::core::limit_watch::Thresholds {
            memory_percent: args.warn_memory_percent,
            pids_percent: args.warn_pids_percent,
            throttled_per_minute: args.warn_throttled_per_minute,
        },
        usage_interval: args.usage_interval,
        metrics_listen,
        metrics_token,
        probe_listen: args.probe_listen,
        notify_dir: args
            .notify_dir
            .unwrap_or_else(corral::os::notify::default_dir),
        log_dir: args.log_dir,
    };
    match daemon::run(options) {
        Ok(daemon::Ending::Exit(code)) => code,
        Ok(daemon::Ending::Power(action)) => {
            // Everything logged so far reaches the console before the machine goes down.
            drop(log_flush);
            let error = corral::os::pid1::power(action);
            eprintln!("corral: reboot(2) failed: {error}; halting here");
            // The kernel panics if PID 1 exits: wait for whoever can help, forever.
            loop {
                nix::unistd::pause();
            }
        }
        Err(e) if host_init => {
            eprintln!(
                "corral: {e}; as the machine's init corral cannot supervise, and does not exit \
                 (the kernel would panic): it only reaps orphans until the machine is reset"
            );
            drop(log_flush);
            pid1::wait_forever()
        }
        Err(e) => {
            eprintln!("corral: {}", corral::escape::terminal_lines(&e.to_string()));
            exit_code::FAILED
        }
    }
}

fn check(units_dir: &std::path::Path, show: Option<&str>) -> i32 {
    if let Some(name) = show {
        match unit::show_unit(units_dir, name) {
            Ok(text) => print!("{text}"),
            Err(error) => {
                eprintln!("{error}");
                return exit_code::FAILED;
            }
        }
    }
    match unit::load_dir(units_dir, &unit::SystemUserDb) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            if show.is_some() {
                return exit_code::OK;
            }
            let n = loaded.units.len();
            let noun = if n == 1 { "unit" } else { "units" };
            println!("{}: {n} {noun} OK", corral::escape::path(units_dir));
            exit_code::OK
        }
        Err(error) => {
            eprintln!("{error}");
            exit_code::FAILED
        }
    }
}

/// `corral export`: the units read as `check` reads them, translated, warnings on stderr.
fn export(what: ExportCommand) -> i32 {
    use corral::export::{k8s, systemd};
    let units_dir = match &what {
        ExportCommand::K8s(a) => a.units_dir.clone(),
        ExportCommand::Systemd(a) => a.units_dir.clone(),
    };
    let loaded = match unit::load_dir(&units_dir, &unit::SystemUserDb) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return exit_code::FAILED;
        }
    };
    for warning in &loaded.warnings {
        eprintln!("{warning}");
    }
    let warn = |warnings: &[corral::export::Warning]| {
        for w in warnings {
            eprintln!("corral: warning: {w}");
        }
    };
    match what {
        ExportCommand::K8s(args) => {
            let mut sources = std::collections::BTreeMap::new();
            if args.wrap {
                for (name, unit) in &loaded.units {
                    match std::fs::read_to_string(&unit.source) {
                        Ok(text) => {
                            sources.insert(name.clone(), text);
                        }
                        Err(e) => {
                            eprintln!("corral: reading {}: {e}", unit.source.display());
                            return exit_code::FAILED;
                        }
                    }
                }
            }
            let options = k8s::Options {
                layout: if args.wrap {
                    k8s::Layout::Wrap
                } else {
                    k8s::Layout::Split
                },
                workload: if args.deployment {
                    k8s::Workload::Deployment
                } else {
                    k8s::Workload::Pod
                },
                name: args.name,
                image: args.image,
                privileged: args.privileged,
            };
            let output = match k8s::export(&loaded.units, &sources, &options) {
                Ok(output) => output,
                Err(e) => {
                    eprintln!("corral: {}: {e}", units_dir.display());
                    return exit_code::FAILED;
                }
            };
            warn(&output.warnings);
            match k8s::to_yaml(&output.objects) {
                Ok(yaml) => {
                    print!("{yaml}");
                    exit_code::OK
                }
                Err(e) => {
                    eprintln!("corral: rendering YAML: {e}");
                    exit_code::FAILED
                }
            }
        }
        ExportCommand::Systemd(args) => {
            let resolve = |name: &str| search_path(name);
            let options = systemd::Options {
                version: args.systemd_version,
                resolve: &resolve,
            };
            let output = systemd::export(&loaded.units, &options);
            warn(&output.warnings);
            let Some(dir) = args.output else {
                print!("{}", systemd::to_stream(&output.files));
                return exit_code::OK;
            };
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("corral: creating {}: {e}", dir.display());
                return exit_code::FAILED;
            }
            for file in &output.files {
                let path = dir.join(&file.name);
                if let Err(e) = std::fs::write(&path, &file.text) {
                    eprintln!("corral: writing {}: {e}", path.display());
                    return exit_code::FAILED;
                }
            }
            exit_code::OK
        }
    }
}

/// The first executable file `name` in `$PATH`, as the path names it (links not followed), for
/// the absolute `ExecStart=` paths of `export systemd`.
fn search_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn talk(command: Command, socket: &std::path::Path) -> Result<i32, ClientError> {
    let mut conn = Connection::open(socket)?;
    match command {
        Command::Status {
            units,
            json,
            states,
            slices,
        } => status(&mut conn, units, json, states, slices),
        Command::Start(a) => action(&mut conn, Verb::Start, a),
        Command::Stop(a) => action(&mut conn, Verb::Stop, a),
        Command::Restart(a) => action(&mut conn, Verb::Restart, a),
        Command::Scale {
            template,
            count,
            no_block,
            json,
        } => {
            let mut request = client::request(Verb::Scale, &[template]);
            request.count = Some(count);
            request.no_block = no_block;
            answer_with_units(&conn.call(&request)?, json)
        }
        Command::Kill { unit, signal } => {
            let mut request = client::request(Verb::Kill, &[unit]);
            request.signal = Some(signal);
            Ok(report(&conn.call(&request)?, false))
        }
        Command::Freeze { units } => Ok(report(
            &conn.call(&client::request(Verb::Freeze, &units))?,
            false,
        )),
        Command::Thaw { units } => Ok(report(
            &conn.call(&client::request(Verb::Thaw, &units))?,
            false,
        )),
        Command::Reload { json } => {
            let response = conn.call(&client::request(Verb::Reload, &[]))?;
            match (&response.reload, json) {
                (Some(plan), false) => client::print_reload(plan),
                _ => return Ok(report(&response, json)),
            }
            Ok(client::response_code(&response))
        }
        Command::Logs {
            units,
            lines,
            follow,
            since,
            grep,
            json,
        } => {
            let mut request = Request::new(Verb::Logs, units);
            request.lines = lines;
            request.follow = follow;
            request.since = since;
            request.grep = grep;
            logs(&mut conn, request, json)
        }
        Command::Metrics {
            units,
            states,
            slices,
        } => {
            let mut request = client::request(Verb::Metrics, &units);
            request.states = states;
            request.slices = slices;
            let response = conn.call(&request)?;
            match (&response.metrics, response.ok) {
                (Some(text), true) => print!("{text}"),
                _ => return Ok(report(&response, false)),
            }
            Ok(exit_code::OK)
        }
        Command::WaitReady { units, timeout } => wait_ready(&mut conn, units, timeout),
        Command::Top(args) => client::top::run(
            &mut conn,
            &client::top::Options {
                once: args.once,
                json: args.json,
                sort: args.sort,
                interval: args.interval,
                units: args.units,
                states: args.states,
                slices: args.slices,
            },
        ),
        Command::Shutdown { poweroff, reboot } => {
            let mut request = client::request(Verb::Shutdown, &[]);
            request.power = match (poweroff, reboot) {
                (true, _) => Some(PowerAction::Poweroff),
                (_, true) => Some(PowerAction::Reboot),
                _ => None,
            };
            Ok(report(&conn.call(&request)?, false))
        }
        Command::Run(_) | Command::Check { .. } | Command::Export(_) => Ok(exit_code::USAGE),
    }
}

/// `status`: every unit is shown as it is read (a JSON element, a unit in detail, or a table
/// row kept as its cells until the column widths are known), never the whole answer at once.
fn status(
    conn: &mut Connection,
    units: Vec<String>,
    json: bool,
    states: Vec<String>,
    slices: Vec<String>,
) -> Result<i32, ClientError> {
    use std::io::Write as _;
    // Exact names and nothing else: each unit in detail, and exit 3 if one is not running.
    let by_name = !units.is_empty()
        && !units.iter().any(|u| u.contains(['*', '?', '[']))
        && states.is_empty()
        && slices.is_empty();
    let mut request = client::request(Verb::Status, &units);
    request.states = states;
    request.slices = slices;
    let mut table = client::StatusTable::default();
    let mut shown = 0usize;
    let mut not_running = false;
    let stdout = std::io::stdout();
    let mut each = |u: corral::proto::UnitStatus| {
        not_running |= by_name && u.state != "running" && u.state != "active";
        if json {
            let mut out = stdout.lock();
            let _ = out.write_all(if shown == 0 { b"{\"units\":[" } else { b"," });
            let _ = serde_json::to_writer(&mut out, &u);
        } else if by_name {
            client::print_unit_details(&u, shown == 0);
        } else {
            table.add(&u);
        }
        shown += 1;
    };
    let response = conn.call_units(&request, &mut each)?;
    if !response.ok {
        return Ok(report(&response, json));
    }
    if json {
        let mut out = stdout.lock();
        if shown == 0 {
            let _ = out.write_all(b"{\"units\":[");
        }
        let _ = out.write_all(b"]");
        if let Some(error) = &response.reload_error {
            let _ = write!(out, ",\"reload_error\":{}", serde_json::json!(error));
        }
        if let Some(cgroups) = &response.cgroups {
            let _ = write!(out, ",\"cgroups\":{}", serde_json::json!(cgroups));
        }
        let _ = writeln!(out, "}}");
    } else {
        if let Some(error) = &response.reload_error {
            eprintln!(
                "corral: the last reload failed; units keep their previous definitions:\n{}",
                corral::escape::terminal_lines(error)
            );
        }
        if let Some(cgroups) = &response.cgroups
            && let Some(remedy) = &cgroups.remedy
        {
            eprintln!("corral: {}; to enforce limits, {remedy}", cgroups.summary);
        }
        if !by_name {
            table.print();
        }
    }
    Ok(if not_running {
        exit_code::NOT_RUNNING
    } else {
        exit_code::OK
    })
}

fn action(conn: &mut Connection, verb: Verb, args: ActionArgs) -> Result<i32, ClientError> {
    let mut request = client::request(verb, &args.units);
    request.no_block = args.no_block;
    answer_with_units(&conn.call(&request)?, args.json)
}

/// The answer of start, stop, restart or scale: each unit's state, or the JSON line.
fn answer_with_units(response: &Response, json: bool) -> Result<i32, ClientError> {
    if json {
        println!("{}", serde_json::to_string(response)?);
        return Ok(client::response_code(response));
    }
    for unit in response.units.iter().flatten() {
        println!("{}: {}", unit.name, unit.state);
    }
    Ok(report(response, false))
}

/// `wait-ready`: one request the supervisor answers when the units are ready (it does not
/// poll); the supervisor enforces the timeout, and the client gives up too a little later in
/// case the supervisor's loop is stuck.
fn wait_ready(
    conn: &mut Connection,
    units: Vec<String>,
    timeout: Option<Duration>,
) -> Result<i32, ClientError> {
    /// How much longer than the supervisor's timeout the client waits for its answer.
    const CLIENT_GRACE: Duration = Duration::from_secs(2);
    let mut request = Request::new(Verb::WaitReady, units);
    request.timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    conn.set_read_timeout(timeout.map(|t| t.saturating_add(CLIENT_GRACE)))?;
    match conn.call(&request) {
        Ok(response) => Ok(report(&response, false)),
        Err(ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            eprintln!(
                "corral: the supervisor did not answer within {} of the timeout",
                humantime::format_duration(CLIENT_GRACE)
            );
            Ok(exit_code::FAILED)
        }
        Err(e) => Err(e),
    }
}

fn logs(conn: &mut Connection, request: Request, json: bool) -> Result<i32, ClientError> {
    let with_unit = request.units.len() > 1;
    let follow = request.follow;
    let mut print = |line: corral::proto::LogLine| {
        if json {
            if let Ok(text) = serde_json::to_string(&line) {
                println!("{text}");
            }
        } else {
            client::print_log_line(&line, with_unit);
        }
    };
    // A supervisor that refuses a peer answers and closes before reading: the answer counts.
    let sent = conn.send(&request);
    let mut next = conn.receive_lines(&mut print);
    if let Err(e) = sent
        && !matches!(next, Ok(Some(_)))
    {
        return Err(e);
    }
    if matches!(next, Ok(None)) {
        return Err(ClientError::NoAnswer);
    }
    // Without -f the answer is one object whose lines were printed as they were parsed; with
    // -f each line comes as its own object until the supervisor ends the stream.
    while let Some(response) = next? {
        if !response.ok {
            return Ok(report(&response, json));
        }
        if let Some(line) = response.line {
            print(line);
        }
        if !follow {
            break;
        }
        next = conn.receive_lines(&mut print);
    }
    Ok(exit_code::OK)
}

/// Prints a response's message or error; returns its exit code.
fn report(response: &Response, json: bool) -> i32 {
    if json {
        if let Ok(text) = serde_json::to_string(response) {
            println!("{text}");
        }
    } else if let Some(error) = &response.error {
        eprintln!("corral: {}", corral::escape::terminal_lines(&error.message));
    } else if let Some(message) = &response.message {
        println!("{}", corral::escape::terminal_lines(message));
    }
    client::response_code(response)
}
