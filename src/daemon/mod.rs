//! Wiring without policy: the event loop and its steps, the effect executor, and the rooms.

mod clock;
mod control;
mod generation;
mod http;
mod instances;
mod journald;
mod log_files;
pub mod logging;
mod membership;
mod metrics_http;
mod output;
mod probes_http;
mod readiness;
mod requests;
mod shutdown;
mod sources;
mod status;
mod units_dir;
mod usage_watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, error, info, warn};

use crate::core::exit::{ExitReport, SpawnFailure, Termination};
use crate::core::limit_watch::Thresholds;
use crate::core::reload::ReloadPlan;
use crate::core::service::State;
use crate::core::supervisor::{Effect, Input, RequestError, Supervisor};
use crate::os::control_socket::{self, SocketError};
use crate::os::pid1::{self, PowerAction};
use crate::os::poller::Ready;
use crate::os::reaper;
use crate::os::signals::SignalEvents;
use crate::os::spawn;
use crate::os::watch::DirWatch;
use crate::proto::{LogLine, Response, Stream};
use crate::unit::{self, UnitName};

use clock::Clock;
use control::{Client, ClientState};
use generation::Generations;
use membership::Members;
use shutdown::Shutdown;
use usage_watch::UsageWatch;

pub use metrics_http::{is_loopback, read_token_file};
use output::{Piece, Pipes, Ring};
use sources::{Source, Sources, Token};
use units_dir::UnitsDir;

pub use control::{
    ACCEPTS_PER_TURN, IDLE_TIMEOUT, MAX_CLIENTS, MAX_CONNECTIONS_PER_UID, MAX_FOLLOWERS_PER_UID,
    MAX_PENDING_OUTPUT, OUTPUT_HIGH_WATER, REFUSAL_LOG_INTERVAL, REQUESTS_PER_TURN, ROOT_RESERVE,
    STALL_TIMEOUT, TRUSTED_RESERVE,
};
pub use output::{MAX_LINE_BYTES, RING_LINES};

/// What `corral run` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub units_dir: PathBuf,
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub cgroup_root: Option<PathBuf>,
    pub exit_with: Option<UnitName>,
    pub shutdown_timeout: Duration,
    /// The container runtime's grace period, when told (`--grace-period`).
    pub grace_period: Option<Duration>,
    /// When a unit counts as near its limits.
    pub thresholds: Thresholds,
    /// How often running units with a limit no kernel notification covers are sampled.
    pub usage_interval: Duration,
    /// Serve `GET /metrics` here (already checked: loopback unless asked otherwise).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Answer only requests with `Authorization: Bearer <this>` (`--metrics-token-file`).
    pub metrics_token: Option<String>,
    /// Serve `/livez`, `/readyz` and `/readyz/UNIT` here (any address: see docs/kubernetes.md).
    pub probe_listen: Option<std::net::SocketAddr>,
    /// Where the units' notify sockets are made (see docs/operations.md, "Notify sockets").
    pub notify_dir: PathBuf,
    /// `--log-dir`: the default log file of a unit is `<dir>/<unit>.log`.
    pub log_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("units in {dir} are invalid:\n{diagnostics}")]
    Units {
        dir: PathBuf,
        diagnostics: unit::LoadError,
    },
    #[error("--exit-with {0}: no such unit")]
    ExitWithUnknown(UnitName),
    #[error("--socket-group {0}: no such group")]
    UnknownGroup(String),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("--metrics-listen {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("--probe-listen {addr}: {source}")]
    ProbeListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{operation}: {source}")]
    Os {
        operation: &'static str,
        source: std::io::Error,
    },
}

fn os_err(operation: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Os { operation, source }
}

/// Whom the OOM kills being reported took, as far as the main process's fate tells.
#[derive(Debug, Clone, Copy)]
enum OomVictim {
    /// The main process died of SIGKILL.
    Main,
    /// The main process ended otherwise right after (a shell or wrapper whose worker died).
    Worker,
    /// The main process lives on.
    Spared,
    /// No cgroup of the unit's own: the container's counter moved as the unit ended.
    Inferred,
}

struct Daemon {
    opts: Options,
    sup: Supervisor,
    /// The epoll set and what each token stands for.
    sources: Sources,
    signals: SignalEvents,
    /// Whether a reaping sweep is due (a SIGCHLD came).
    reaper: reaper::Reaper,
    /// The control server: listener, clients, the socket group, the reserve fd.
    control: control::Server,
    /// Units' output pipes, until their EOF.
    pipes: Pipes,
    /// The units directory's watch, the reload due, the last reload's diagnostics.
    units_dir: UnitsDir,
    /// Each unit's current run: its exec report, memory events, `cgroup.events` watch.
    generations: Generations,
    members: Members,
    /// Notify sockets, health probes in flight: see readiness.rs.
    readiness: readiness::ReadinessChannels,
    usage_watch: UsageWatch,
    /// `--metrics-listen` and `--probe-listen`: the HTTP listeners and their connections.
    http: http::Servers,
    /// Each unit's last lines, from its first line on.
    rings: HashMap<UnitName, Ring>,
    /// Units' log files and their writer thread.
    log_files: log_files::LogFiles,
    clock: Clock,
    /// The kill wait, the leftovers, the exit code and power action.
    shutdown: Shutdown,
    own_uid: u32,
    /// PID 1 of the machine: never exits, powers off or reboots instead.
    host_init: bool,
    /// corral's own namespaces, which a unit's are compared with.
    own_namespaces: [Option<u64>; 7],
}

/// Runs the supervisor in the foreground until shutdown; returns the process exit code.
///
/// A start-up problem is an error, and corral exits, except as the machine's init, which must
/// never exit (the kernel panics): there an invalid units directory starts no unit and waits for
/// the fix (the file watcher, SIGHUP or `corral reload` applies it; `status` shows the error),
/// and an unknown `--exit-with` unit, `--socket-group` or a `--metrics-listen` that cannot bind
/// are warned about and left out.
pub fn run(mut opts: Options) -> Result<Ending, DaemonError> {
    let host_init = pid1::is_host_init();
    let mut startup_error = None;
    let mut unit_cache = unit::LoadCache::new();
    let loaded = match unit::load_dir_cached(
        &opts.units_dir,
        &unit::SystemUserDb,
        &Default::default(),
        &mut unit_cache,
    ) {
        Ok(loaded) => loaded,
        Err(diagnostics) if host_init => {
            let text = diagnostics.to_string();
            error!(
                "units in {} are invalid; as the machine's init corral does not exit: it starts \
                 no unit until they are fixed (a change in the directory, SIGHUP or `corral \
                 reload` applies the fix):\n{text}",
                opts.units_dir.display()
            );
            startup_error = Some(text);
            unit::Loaded {
                units: unit::UnitSet::new(),
                warnings: Vec::new(),
                runtime_instances: Default::default(),
            }
        }
        Err(diagnostics) => {
            return Err(DaemonError::Units {
                dir: opts.units_dir.clone(),
                diagnostics,
            });
        }
    };
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    if let Some(grace) = opts.grace_period
        && let Some(warning) =
            crate::core::container::grace_warning(&loaded.units, grace, opts.shutdown_timeout)
    {
        warn!("{warning}");
    }
    if let Some(name) = &opts.exit_with
        && !loaded.units.contains_key(name)
    {
        if !host_init {
            return Err(DaemonError::ExitWithUnknown(name.clone()));
        }
        warn!("{}; ignored", DaemonError::ExitWithUnknown(name.clone()));
        opts.exit_with = None;
    }
    let group = match &opts.socket_group {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name).ok().flatten() {
            Some(group) => Some(group.gid),
            None if host_init => {
                warn!(
                    "{}; the socket is for root only",
                    DaemonError::UnknownGroup(name.clone())
                );
                None
            }
            None => return Err(DaemonError::UnknownGroup(name.clone())),
        },
    };
    if std::process::id() != 1
        && let Err(e) = reaper::become_subreaper()
    {
        warn!("cannot become a child subreaper ({e}); orphans of units will not be reaped");
    }
    if host_init {
        info!("running as the machine's init: shutdown ends in power-off or reboot");
        // Ctrl-Alt-Del then arrives as SIGINT (an orderly reboot) instead of an instant reset.
        if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
            warn!("cannot take over Ctrl-Alt-Del: {e}");
        }
    }
    let signals = SignalEvents::install().map_err(os_err("installing signal handlers"))?;
    let (listener, refuses_fds) = control_socket::bind(&opts.socket, group)?;
    // Before Linux 6.16 a peer can pass fds, which the kernel then closes in corral's thread
    // (a lingering socket's close blocks): only the peers the socket lets in can, root and
    // corral's own user, who may stop corral anyway, and --socket-group members, who may not.
    if !refuses_fds && group.is_some() {
        warn!(
            "this kernel cannot make the control socket refuse file descriptors (SO_PASSRIGHTS, \
             Linux 6.16): a --socket-group member could pass one whose close blocks corral's loop"
        );
    } else if !refuses_fds {
        debug!("this kernel cannot make the control socket refuse file descriptors");
    }
    let mut sources = Sources::new().map_err(|e| DaemonError::Os {
        operation: "creating the epoll set",
        source: e.into(),
    })?;
    let listener_token = sources
        .add(signals.fd(), Source::Signals, false)
        .and_then(|_| sources.add(listener.as_fd(), Source::Listener, false))
        .map_err(|e| DaemonError::Os {
            operation: "registering with epoll",
            source: e.into(),
        })?;
    let mut http = http::Servers::default();
    if let Some(addr) = opts.metrics_listen {
        match http::HttpServer::bind(
            addr,
            http::Role::Metrics,
            metrics_http::BOUNDS,
            &mut sources,
        ) {
            Ok(server) => {
                if opts.metrics_token.is_some() {
                    info!(address = %addr, "serving GET /metrics to the bearer of the token");
                } else {
                    // The control socket checks who asks; this listener cannot
                    // (docs/operations.md).
                    warn!(
                        address = %addr,
                        "serving GET /metrics without authentication: every local user can read \
                         every unit's status there (--metrics-token-file requires a token)"
                    );
                }
                http.metrics = Some(server);
            }
            Err(source) if host_init => {
                let error = DaemonError::MetricsListen { addr, source };
                warn!("{error}; not serving metrics");
            }
            Err(source) => return Err(DaemonError::MetricsListen { addr, source }),
        }
    }
    if let Some(addr) = opts.probe_listen {
        match http::HttpServer::bind(addr, http::Role::Probes, probes_http::BOUNDS, &mut sources) {
            Ok(server) => {
                info!(address = %addr, "serving GET /livez, /readyz and /readyz/UNIT");
                http.probes = Some(server);
            }
            Err(source) if host_init => {
                let error = DaemonError::ProbeListen { addr, source };
                warn!("{error}; not serving probes");
            }
            Err(source) => return Err(DaemonError::ProbeListen { addr, source }),
        }
    }
    info!(
        units = loaded.units.len(),
        dir = %opts.units_dir.display(),
        socket = %opts.socket.display(),
        pid = std::process::id(),
        "corral supervising"
    );
    if spawn::ids_changes_leave_processes_dumpable() {
        warn!(
            "fs.suid_dumpable is 1: a process corral starts is traceable for an instant after \
             each change of ids, before its exec (see docs/operations.md)"
        );
    }
    let now = Instant::now();
    let members = Members::new(opts.cgroup_root.as_deref(), &loaded.units);
    let watch = match DirWatch::new(&opts.units_dir) {
        Ok(watch) => {
            if let Err(e) = sources.add(watch.fd(), Source::Watch, false) {
                warn!(
                    "cannot watch the units directory ({e}); reload with SIGHUP or `corral reload`"
                );
                None
            } else {
                Some(watch)
            }
        }
        Err(e) => {
            warn!("{e}; reload with SIGHUP or `corral reload`");
            None
        }
    };
    let usage_watch = UsageWatch::new(opts.thresholds, opts.usage_interval);
    let notify_dir = opts.notify_dir.clone();
    let open_files = match spawn::raise_open_files_limit() {
        Ok(limit) => limit,
        Err(e) => {
            warn!(
                "raising RLIMIT_NOFILE to its hard limit: {e}; fds passed in notify messages get less room"
            );
            1024
        }
    };
    let shutdown = Shutdown::new(opts.shutdown_timeout);
    let mut log_files = log_files::LogFiles::new(opts.log_dir.clone());
    log_files.configure(loaded.units.values().map(|u| &**u));
    // The supervisor starts with this read's units: the next reload looks at what changed
    // since. (A refused read at start leaves its names, and the supervisor empty.)
    if startup_error.is_none() {
        unit_cache.take_changed();
    }
    let mut daemon = Daemon {
        log_files,
        members,
        usage_watch,
        http,
        sup: Supervisor::new(loaded.units.into_values(), now),
        opts,
        sources,
        signals,
        reaper: reaper::Reaper::default(),
        control: control::Server::new(listener, listener_token, group.map(|g| g.as_raw())),
        pipes: Pipes::default(),
        generations: Generations::default(),
        readiness: readiness::ReadinessChannels::new(notify_dir, open_files),
        // `status` shows why a host init started no unit, as after a refused reload.
        units_dir: UnitsDir::new(watch, startup_error, unit_cache),
        rings: HashMap::new(),
        clock: Clock::new(),
        shutdown,
        own_uid: nix::unistd::geteuid().as_raw(),
        host_init,
        own_namespaces: crate::os::namespaces::inodes(None),
    };
    // What loading the units directory freed goes back to the kernel before the loop starts.
    crate::os::heap::release_free_pages();
    let code = daemon.event_loop();
    daemon.log_files.finish();
    daemon.members.teardown();
    let _ = std::fs::remove_file(&daemon.opts.socket);
    if daemon.host_init {
        info!(action = ?daemon.shutdown.power, "every process is gone; syncing and powering down");
        return Ok(Ending::Power(daemon.shutdown.power));
    }
    info!(code, "corral exits");
    Ok(Ending::Exit(code))
}

/// How a supervisor run ends: the process exits, or (the machine's init) the machine goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exit(i32),
    /// The caller flushes the log, then calls `os::pid1::power`; it must never exit.
    Power(PowerAction),
}

impl Daemon {
    /// One thread, one loop. Each turn runs these steps, in this order:
    ///
    /// 1. `wait`: sleep in epoll until a source is ready or the earliest deadline of any room.
    /// 2. `dispatch`: serve each ready source (signals, clients, output pipes, notify
    ///    sockets, probes, memory events, the units directory's watch...).
    /// 3. `reap`: after a SIGCHLD, collect every exited child; a unit's main process becomes
    ///    `Input::Exited` (its exec report read first, its OOM kills counted), an exec probe's
    ///    ends its probe.
    /// 4. `settle_stops`: units stopping that are now empty get `Input::UnitEmpty`; during a
    ///    shutdown, units whose processes outlived SIGKILL by the kill wait are abandoned.
    /// 5. `due_inputs`: a debounced reload that is due, probes past their timeout, the notify
    ///    refusal counts whose report is due.
    /// 6. `Input::Tick`: the core's own deadlines (backoff ends, stop timeouts, watchdogs).
    /// 7. `room_timers`: OOM kills that spared the main process, cgroup removals to retry,
    ///    usage sampling, idle HTTP clients (metrics, probes).
    /// 8. `answer_clients`: waiters whose units got where they were going, then requests
    ///    clients had queued behind them and the next pieces of large answers.
    /// 9. `check_exit_with`: the `--exit-with` unit ended, so corral shuts down.
    /// 10. `flush_clients`: write what the clients were given, drop the finished ones.
    /// 11. `leftovers`: after a shutdown, end the processes left behind; the loop's only exit.
    ///
    /// Inputs come before the Tick so that deadlines see this turn's facts (an exit that came
    /// in time does not time out); clients are answered after everything that could settle
    /// what they wait for, and written to last, so one write carries the whole turn.
    fn event_loop(&mut self) -> i32 {
        self.feed(Input::Tick, Instant::now());
        // Arms the usage timer for the units that just started, before the first wait.
        self.sample_usage(Instant::now());
        loop {
            for ready in self.wait() {
                self.dispatch(ready);
            }
            let now = Instant::now();
            let no_children_left = self.reap(now);
            self.settle_stops(now);
            self.due_inputs(now);
            self.feed(Input::Tick, now);
            self.room_timers(now);
            self.answer_clients();
            self.check_exit_with(now);
            self.flush_clients();
            if let Some(code) = self.leftovers(no_children_left, now) {
                return code;
            }
        }
    }

    /// Step 1: waits for a ready source or the earliest deadline.
    fn wait(&mut self) -> Vec<Ready> {
        let timeout = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        match self.sources.wait(timeout) {
            Ok(ready) => ready,
            Err(e) => {
                // Nothing sane is left to do if epoll itself fails; stop the units cleanly.
                error!("epoll_wait failed: {e}; shutting down");
                self.begin_shutdown(Instant::now());
                Vec::new()
            }
        }
    }

    /// Step 3: reaps every exited child and tells the core of its units' main processes.
    /// Returns whether corral has no child left.
    fn reap(&mut self, now: Instant) -> bool {
        // Whether any child is left matters only to a shutdown waiting for leftovers, which
        // asks at every wake; otherwise a sweep follows a SIGCHLD only.
        let Some(reaped) = self.reaper.sweep(self.shutdown.awaits_leftovers()) else {
            return false;
        };
        for (pid, termination) in reaped.exits {
            self.on_reaped(pid, termination, now);
        }
        reaped.no_children_left
    }

    fn on_reaped(&mut self, pid: i32, mut termination: Termination, now: Instant) {
        if self.exec_probe_exited(pid, termination, now) {
            return;
        }
        // Its report was written before it exited: read it before its exit counts.
        if let Some(unit) = self.generations.exec_pending_of(pid) {
            self.settle_exec_report(&unit, now);
        }
        let Some(unit) = self.sup.unit_of_pid(pid).cloned() else {
            // An orphan (or a leftover): reaped, and nothing else to tell the core,
            // which knows only main processes; a burst of thousands costs no more.
            debug!(
                pid,
                "reaped: {}",
                ExitReport {
                    termination,
                    oom: false
                }
            );
            return;
        };
        if let Some(command) = self.members.take_helper_exit(&unit) {
            termination = command;
        }
        let mut end = self.members.on_main_exit(&unit, now);
        let killed = ExitReport {
            termination,
            oom: false,
        };
        let mut victim = if killed.is_sigkill() {
            OomVictim::Main
        } else {
            OomVictim::Worker
        };
        if let Some(inferred) = self.members.inferred_oom_at_exit(now, termination) {
            end = inferred;
            victim = OomVictim::Inferred;
        }
        let exit = ExitReport {
            termination,
            oom: end.by_oom,
        };
        self.record_oom_kills(&unit, end.fresh, victim, now);
        self.generations.release_memory(&mut self.sources, &unit);
        self.usage_watch.forget(&unit);
        debug!(pid, "reaped: {exit}");
        self.feed(Input::Exited { pid, exit }, now);
    }

    /// The pidfd of a main process that `MAINPID=` named became readable: it ended. One that
    /// is corral's to reap (its child, or an orphan given to corral) is left to step 3, which
    /// learns its status; one that another process reaped ends the run with no status.
    fn named_main_ended(&mut self, unit: &UnitName, now: Instant) {
        let Some((pid, pidfd)) = self.generations.take_named_main(&mut self.sources, unit) else {
            return;
        };
        match crate::os::pidfd::ended(&pidfd) {
            crate::os::pidfd::Ended::ToReap => {}
            crate::os::pidfd::Ended::Elsewhere => {
                if self.sup.unit_of_pid(pid) == Some(unit) {
                    self.on_reaped(pid, Termination::Unknown, now);
                }
            }
            crate::os::pidfd::Ended::Running => {
                self.generations
                    .watch_named_main(&mut self.sources, unit, pid, pidfd);
            }
        }
    }

    /// Step 4: the stops that can end now, or must be given up.
    fn settle_stops(&mut self, now: Instant) {
        self.feed_empty_units(now);
        self.abandon_unkillable(now);
    }

    /// Step 5: inputs whose time came: a debounced reload, probe timeouts, refusal reports.
    fn due_inputs(&mut self, now: Instant) {
        if self.units_dir.due.is_due(now) {
            let _ = self.reload(now);
        }
        self.expire_probes(now);
        self.report_notify_refusals(now);
    }

    /// Step 7: the rooms' own timers, after the core's.
    fn room_timers(&mut self, now: Instant) {
        for (unit, count) in self.members.spared_main_oom_kills(now) {
            self.record_oom_kills(&unit, count, OomVictim::Spared, now);
        }
        self.members.retry_removals(now);
        self.sample_usage(now);
        self.http.expire(now, &mut self.sources);
    }

    /// Step 11: once every unit is down, ends the processes left behind (shutdown.rs).
    /// Returns the exit code when corral is done.
    fn leftovers(&mut self, no_children_left: bool, now: Instant) -> Option<i32> {
        self.shutdown
            .end_leftovers(no_children_left, now)
            .then_some(self.shutdown.exit_code)
    }

    /// Ends the stops whose units are empty. The last process of a unit is normally reaped by
    /// corral (its parent, or the subreaper/PID 1 it was orphaned to), so checking after each
    /// reaping sweep sees a unit empty as soon as it is, on v1 (which has no usable populated
    /// event) as on v2; v2's `cgroup.events` watch also wakes us for a process that joined the
    /// cgroup from outside corral's tree, whose end corral does not reap.
    fn feed_empty_units(&mut self, now: Instant) {
        for unit in self.sup.awaiting_empty() {
            if self.members.is_empty(&unit) {
                debug!(unit = %unit, "no process of the unit is left");
                self.members.emptied(&unit, now);
                self.feed(Input::UnitEmpty { unit }, now);
            }
        }
    }

    /// During a shutdown, gives up on each stopping unit whose processes outlived their
    /// SIGKILL by the kill wait, and logs what was left.
    fn abandon_unkillable(&mut self, now: Instant) {
        let (due, wait) = self.shutdown.due_abandons(&self.sup, now);
        for unit in due {
            let left = self.members.leftovers(&unit);
            warn!(
                unit = %unit,
                "{left} outlived SIGKILL by {} (frozen, or in uninterruptible sleep): abandoned",
                humantime::format_duration(wait)
            );
            self.feed(Input::Abandon { unit, left }, now);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let clients = self
            .control
            .clients
            .values()
            .filter_map(Client::next_deadline);
        let settled = self.a_waiter_is_settled().then(Instant::now);
        // A sweep that is due comes first (at start: zombies inherited before the handler).
        let sweep = self.reaper.is_due().then(Instant::now);
        self.sup
            .next_deadline()
            .into_iter()
            .chain(self.members.next_deadline())
            .chain(self.readiness.next_deadline())
            .chain(self.usage_watch.next_deadline())
            .chain(self.http.next_deadline())
            .chain(self.units_dir.due.deadline())
            .chain(clients)
            .chain(settled)
            .chain(sweep)
            .chain(self.shutdown.next_deadline(self.sup.is_shutting_down()))
            .min()
    }

    /// Step 2: serves one ready source.
    fn dispatch(&mut self, ready: Ready) {
        let Some(source) = self.sources.source(ready.token) else {
            // Removed by an earlier source of the same wake.
            return;
        };
        let token = ready.token;
        match source {
            Source::Signals => {
                for signal in self.signals.drain() {
                    self.on_signal(signal);
                }
            }
            Source::Listener => self.accept_clients(),
            Source::HttpListener(role) => self.accept_http(role),
            Source::Watch => self.units_dir.changed(Instant::now()),
            Source::MemoryEvents { unit } => {
                if self.generations.drain(&unit, token) {
                    debug!(unit = %unit, "memory event");
                    let now = Instant::now();
                    self.members.on_memory_event(&unit, now);
                    self.sample_unit(&unit, now);
                }
            }
            Source::PressureTrigger { unit } => {
                if ready.closed {
                    // The cgroup went (psi_trigger_poll then reports an error at every wait).
                    self.generations.release_pressure(&mut self.sources, &unit);
                } else {
                    debug!(unit = %unit, "memory pressure trigger");
                    let observation = crate::core::pressure::Observation::Stall;
                    self.feed(Input::Pressure { unit, observation }, Instant::now());
                }
            }
            // The wake is the point: every wake looks for units that became empty.
            Source::Populated { unit } => {
                if self.generations.drain(&unit, token) {
                    debug!(unit = %unit, "cgroup.events changed");
                }
            }
            Source::ExecReport { unit } => self.settle_exec_report(&unit, Instant::now()),
            Source::NamedMain { unit } => self.named_main_ended(&unit, Instant::now()),
            Source::Pipe => self.read_pipe(token),
            Source::Closers => self.readiness.on_closer_wake(&self.sources),
            Source::Notify { unit } => self.drain_notify(&unit, Instant::now()),
            Source::NetProbe => self.advance_net_probe(token),
            Source::HttpClient(role) => self.serve_http(role, token, ready),
            Source::Client => self.serve_client(token, ready),
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::SIGTERM | Signal::SIGINT => {
                // A host init's SIGINT is Ctrl-Alt-Del: the convention is a reboot.
                if signal == Signal::SIGINT {
                    self.shutdown.power = PowerAction::Reboot;
                }
                info!("{} received: stopping every unit", signal.as_str());
                self.begin_shutdown(Instant::now());
            }
            Signal::SIGHUP => {
                info!("SIGHUP received: reloading the units");
                let _ = self.reload(Instant::now());
            }
            // The sweep itself is the loop's step 3.
            Signal::SIGCHLD => self.reaper.sweep_soon(),
            _ => {}
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if !self.sup.is_shutting_down() {
            self.feed(Input::Shutdown, now);
        }
    }

    /// Feeds an input of the daemon's own, which the core never refuses.
    fn feed(&mut self, input: Input, now: Instant) {
        if let Err(e) = self.step(input, now) {
            error!("internal input refused: {e}");
        }
    }

    /// Feeds one input and performs every effect, including the follow-ups they cause.
    fn step(&mut self, input: Input, now: Instant) -> Result<(), RequestError> {
        // Only the caller's own request can be refused; follow-ups never are.
        let effects = self.sup.handle(input, now)?;
        self.run_effects(effects, now);
        Ok(())
    }

    /// Performs effects in order, feeding each follow-up input back into the core.
    fn run_effects(&mut self, effects: Vec<Effect>, now: Instant) {
        let mut queue = std::collections::VecDeque::new();
        for effect in effects {
            queue.extend(self.perform(effect, now));
        }
        while let Some(input) = queue.pop_front() {
            match self.sup.handle(input, now) {
                Ok(effects) => {
                    for effect in effects {
                        queue.extend(self.perform(effect, now));
                    }
                }
                Err(e) => error!("internal input refused: {e}"),
            }
        }
    }

    fn perform(&mut self, effect: Effect, now: Instant) -> Option<Input> {
        match effect {
            Effect::Spawn { unit } => {
                let Some(exec) = &unit.exec else {
                    return Some(Input::SpawnFailed {
                        unit: unit.name.clone(),
                        error: SpawnFailure::new(None, "unit has no [exec]"),
                    });
                };
                let mut exec = self.with_notify_env(&unit, exec);
                let cgroup = self.members.prepare_spawn(&unit);
                // The unit's own [exec] env wins, as an Environment= does over systemd's.
                for (name, value) in self.members.pressure_env(&unit) {
                    exec.env.entry(name).or_insert(value);
                }
                let confine = spawn::Confinement {
                    namespaces: &unit.namespaces,
                    sandbox: &unit.sandbox,
                    enter: None,
                };
                let spawned = spawn::spawn(
                    &exec,
                    exec.user.as_deref(),
                    &cgroup,
                    unit.oom.score_adjust,
                    confine,
                );
                match spawned {
                    Ok(child) => {
                        // The exec is confirmed later, on the loop, so the next unit's fork
                        // need not wait for this one's exec; where the report cannot be
                        // watched, it is waited for here.
                        self.generations
                            .begin(&mut self.sources, &unit.name, child.pid);
                        let watched = self.generations.watch_exec_report(
                            &mut self.sources,
                            &unit.name,
                            child.exec_report,
                        );
                        let mut execd_here = false;
                        if let Err(report) = watched {
                            if let Err(e) = spawn::exec_outcome(&report) {
                                self.generations.release(&mut self.sources, &unit.name);
                                self.members.spawn_failed(&unit.name, now);
                                return Some(Input::SpawnFailed {
                                    unit: unit.name.clone(),
                                    error: e.to_failure(),
                                });
                            }
                            execd_here = true;
                        }
                        info!(
                            unit = %unit.name,
                            pid = child.pid,
                            clone_into_cgroup = child.cloned_into_cgroup,
                            "started"
                        );
                        self.members.spawned(
                            &unit.name,
                            child.pid,
                            !cgroup.is_empty(),
                            child.helper_status,
                        );
                        self.usage_watch.forget(&unit.name);
                        self.watch_memory(&unit);
                        self.watch_pressure(&unit);
                        if let Some(fd) = self.members.populated_watch(&unit.name) {
                            self.generations
                                .watch_populated(&mut self.sources, &unit.name, fd);
                        }
                        self.watch_pipe(&unit.name, Stream::Stdout, child.stdout);
                        self.watch_pipe(&unit.name, Stream::Stderr, child.stderr);
                        let spawned = Input::Spawned {
                            unit: unit.name.clone(),
                            pid: child.pid,
                        };
                        if !execd_here {
                            return Some(spawned);
                        }
                        // The exec was waited for here: the core learns both, in order.
                        self.feed(spawned, now);
                        Some(Input::Execd { pid: child.pid })
                    }
                    Err(e) => {
                        self.members.spawn_failed(&unit.name, now);
                        Some(Input::SpawnFailed {
                            unit: unit.name.clone(),
                            error: e.to_failure(),
                        })
                    }
                }
            }
            Effect::Signal { unit, signal } => {
                let Some(signal) = crate::os::signals::to_os(signal) else {
                    warn!(unit = %unit, "cannot send {signal}: the kernel does not name it");
                    return None;
                };
                self.signal_pending_exec(&unit, signal);
                self.members.signal(&unit, signal);
                None
            }
            Effect::KillAll { unit } => {
                self.shutdown.killed(&unit, now);
                self.signal_pending_exec(&unit, Signal::SIGKILL);
                self.members.kill_all(&unit, now);
                None
            }
            Effect::Probe { unit, seq } => self.start_probe(&unit, seq, now),
            Effect::Log {
                unit,
                warn: true,
                message,
            } => {
                warn!(unit = %unit, "{message}");
                None
            }
            Effect::Log { unit, message, .. } => {
                info!(unit = %unit, "{message}");
                None
            }
            Effect::Relimit { unit, previous } => {
                self.members.relimit(&unit, &previous);
                // v1 thresholds are fixed numbers: a new memory-max or memory-high needs new ones.
                let running = self
                    .sup
                    .get(&unit.name)
                    .is_some_and(|(_, rt)| rt.pid.is_some());
                if running && unit.oom.pressure != previous.oom.pressure {
                    self.watch_pressure(&unit);
                }
                if running
                    && (unit.resources != previous.resources
                        || unit.oom.pressure != previous.oom.pressure)
                {
                    self.watch_memory(&unit);
                    // A new limit may begin or end an episode with no crossing to report it.
                    self.sample_unit(&unit.name, now);
                }
                None
            }
            Effect::Forget { unit } => {
                self.readiness.forget(&mut self.sources, &unit);
                self.rings.remove(&unit);
                self.members.forget(&unit, now);
                self.generations.release(&mut self.sources, &unit);
                self.usage_watch.forget(&unit);
                None
            }
            Effect::ShutdownComplete => {
                info!("every unit is down");
                for client in self.control.clients.values_mut() {
                    if matches!(client.state, ClientState::AwaitingShutdown) {
                        client.send(&Response::message("every unit is stopped; corral exits"));
                        client.state = ClientState::Reading;
                        client.closing = true;
                    }
                }
                self.shutdown.units_down(now);
                // Whether any child is left is asked now, not at the next SIGCHLD: the last
                // unit may have gone down in a turn without one (its cgroup emptied, or its
                // main was reaped by another), and with no child left none would come.
                self.reaper.sweep_soon();
                None
            }
        }
    }

    /// Reads the whole units directory and applies the difference as one plan; invalid input
    /// changes nothing (docs/operations.md, "Reload").
    fn reload(&mut self, now: Instant) -> Result<ReloadPlan, String> {
        if self.sup.is_shutting_down() {
            self.units_dir.due.clear();
            return Err("corral is shutting down".to_owned());
        }
        let runtime = self.units_dir.runtime.clone();
        let loaded = self.load_units(&runtime)?;
        Ok(self.apply_units(loaded, &runtime, now))
    }

    /// Reads the whole units directory, with the runtime instances `runtime` made from their
    /// templates; a refusal is logged and kept for `status`. Whatever asked for it, a read of
    /// the directory is a reload: the change the watch saw is no longer due.
    fn load_units(&mut self, runtime: &BTreeSet<UnitName>) -> Result<unit::Loaded, String> {
        self.units_dir.due.clear();
        let read = unit::load_dir_cached(
            &self.opts.units_dir,
            &unit::SystemUserDb,
            runtime,
            &mut self.units_dir.cache,
        );
        let stats = self.units_dir.cache.stats();
        debug!(
            files_read = stats.files_read,
            parsed = stats.parsed,
            "units directory read"
        );
        match read {
            Ok(loaded) => {
                self.units_dir.last_error = None;
                Ok(loaded)
            }
            Err(diagnostics) => {
                let text = diagnostics.to_string();
                error!("reload refused, the running units keep their definitions:\n{text}");
                self.units_dir.last_error = Some(text.clone());
                crate::os::heap::release_free_pages();
                Err(text)
            }
        }
    }

    /// Applies units read by `load_units(asked)` as one plan. The runtime instances become
    /// those made: one whose template is gone is stopped and removed, one that has a file now
    /// is that file's (each said in the log).
    fn apply_units(
        &mut self,
        loaded: unit::Loaded,
        asked: &BTreeSet<UnitName>,
        now: Instant,
    ) -> ReloadPlan {
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        let mut orphans: BTreeMap<UnitName, Vec<&str>> = BTreeMap::new();
        for name in asked.difference(&loaded.runtime_instances) {
            if loaded.units.contains_key(name) {
                info!(unit = %name, "a file of its own now defines this runtime instance");
            } else if let Ok(Some(template)) = unit::template_of_instance(name.as_str()) {
                orphans.entry(template).or_default().push(name.as_str());
            }
        }
        for (template, instances) in orphans {
            warn!(
                template = %template,
                instances = instances.join(","),
                "the template {template}.toml is gone: its runtime instances stop and are removed"
            );
        }
        self.units_dir.runtime = loaded.runtime_instances;
        // What the loader did not keep since the last read applied (unit/cache.rs,
        // `take_changed`): the rest are the very units applied then, which the steps below
        // leave unlooked at. A slice among them can move the cgroups of units below it that
        // did not change: then every unit's path is computed again.
        let mut changed = self.units_dir.cache.take_changed();
        // A runtime instance stopped since the last read (discarded) is still the loader's,
        // which keeps its parse, so it names it not when it is made again: once down, it was
        // forgotten here (its cgroup path too), and every room must look at it again.
        changed.extend(self.sup.discarded().iter().cloned());
        let held = |n: &UnitName| self.sup.get(n).map(|(u, _)| u);
        if crate::core::reload::a_slice_among(&changed, held, &loaded.units) {
            self.members.update_units(&loaded.units);
        } else {
            self.members.update_changed_units(&loaded.units, &changed);
        }
        self.log_files.configure_changed(&loaded.units, &changed);
        let (plan, effects) = self.sup.reload_changed(&loaded.units, &changed, now);
        // The units this reload did not keep are freed here; the rest are shared with the table.
        drop(loaded.units);
        if plan.is_noop() {
            debug!("reload: nothing changed");
        } else {
            let list = |names: &[UnitName]| UnitName::join(names, ",");
            info!(
                added = list(&plan.added),
                removed = list(&plan.removed),
                restarted = list(&plan.restarted),
                relimited = list(&plan.relimited),
                updated = list(&plan.updated),
                unchanged = plan.unchanged.len(),
                "reload applied"
            );
        }
        self.run_effects(effects, now);
        // The old units and what reading the new ones took are freed now.
        crate::os::heap::release_free_pages();
        plan
    }

    /// (Re)opens the memory-event fds of a running unit: OOM kills, memory-high, and the
    /// warning marks below memory-max.
    fn watch_memory(&mut self, unit: &crate::unit::Unit) {
        let fds = self
            .members
            .memory_watch(unit, &self.usage_watch.thresholds);
        self.generations
            .watch_memory(&mut self.sources, &unit.name, fds);
    }

    /// Arms the PSI trigger of a running unit's `[oom] pressure-threshold` (v2), or drops the
    /// one it had when its keys no longer ask for it.
    fn watch_pressure(&mut self, unit: &crate::unit::Unit) {
        let fd = self.members.pressure_trigger(unit);
        self.generations
            .watch_pressure(&mut self.sources, &unit.name, fd);
    }

    /// A unit's exec report is readable: nothing to do if it exec'd; else its start failed.
    fn settle_exec_report(&mut self, unit: &UnitName, now: Instant) {
        if let Some(failed) = self.take_exec_report(unit, now) {
            self.feed(failed, now);
        }
    }

    /// The pid of the unit's newest process while it has not reached its exec.
    pub(super) fn exec_pending(&self, unit: &UnitName) -> Option<i32> {
        self.generations.exec_pending(unit)
    }

    /// A unit's newest process may not be in its cgroup yet before its exec (on v1 it writes
    /// itself in) nor lead its process group: a signal to the unit would miss it. It gets the
    /// signal directly then; it blocks every signal until just before exec, so the signal
    /// waits there and takes effect at once, or at the exec, never lost. (Not waited for: a
    /// child in a frozen cgroup, or on a hung file system, would never get to its exec.)
    fn signal_pending_exec(&mut self, unit: &UnitName, signal: Signal) {
        if let Some(pid) = self.exec_pending(unit)
            && !self.members.reaches(unit, pid)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Reads and forgets one exec report, readable by now; the input a failure makes.
    fn take_exec_report(&mut self, unit: &UnitName, now: Instant) -> Option<Input> {
        let (pid, report) = self.generations.take_exec_report(&mut self.sources, unit)?;
        let Err(error) = spawn::exec_outcome(&report) else {
            // From here on the process is the unit's command, set up as the unit asks.
            debug!(unit = %unit, pid, "exec'd");
            return Some(Input::Execd { pid });
        };
        // The core fails a unit still starting or running; one already stopping takes the
        // exit (127) that follows as its end, so the reason is told here in every case.
        let state = self.sup.get(unit).map(|(_, rt)| rt.state);
        if !matches!(state, Some(State::Starting | State::Running)) {
            warn!(unit = %unit, "its process did not reach its exec: {error}");
        }
        // The exit that follows no longer belongs to the unit: what its start set up goes now.
        self.members.spawn_failed(unit, now);
        let _ = self.members.take_helper_exit(unit);
        self.generations.release(&mut self.sources, unit);
        Some(Input::ExecFailed {
            pid,
            error: error.to_failure(),
        })
    }

    /// Counts OOM kills the kernel reported for a unit, and says so with the figures that
    /// explain them.
    fn record_oom_kills(&mut self, unit: &UnitName, count: u32, victim: OomVictim, now: Instant) {
        if count == 0 {
            return;
        }
        let facts = self.members.facts(unit);
        let limit = self
            .sup
            .get(unit)
            .and_then(|(u, _)| match u.resources.memory_max {
                Some(crate::unit::ByteLimit::Bytes(n)) => Some(crate::proto::human_size(n)),
                _ => None,
            })
            .unwrap_or_else(|| "none".to_owned());
        let peak = facts
            .usage
            .memory_peak
            .map_or_else(|| "unknown".to_owned(), crate::proto::human_size);
        let whom = match victim {
            OomVictim::Spared => "a process of the unit (the main process lives)",
            OomVictim::Main => "the unit's main process",
            OomVictim::Worker => "a process of the unit, and the main process ended with it",
            OomVictim::Inferred => {
                "the unit's main process, inferred from the container's own counter (no cgroup of the unit's own to tell)"
            }
        };
        warn!(unit = %unit, count, "OOM kill of {whom} (memory-max {limit}, peak {peak})");
        self.feed(
            Input::OomKills {
                unit: unit.clone(),
                count,
            },
            now,
        );
    }

    fn watch_pipe(&mut self, unit: &UnitName, stream: Stream, fd: OwnedFd) {
        let _ = self.watch_pipe_as(unit, stream, fd, false);
    }

    /// Returns the pipe's token, for an owner that closes it before its EOF (an exec probe).
    fn watch_pipe_as(
        &mut self,
        unit: &UnitName,
        stream: Stream,
        fd: OwnedFd,
        discard: bool,
    ) -> Option<Token> {
        match self
            .pipes
            .watch(&mut self.sources, unit, stream, fd, discard)
        {
            Ok(token) => Some(token),
            Err(e) => {
                warn!(unit = %unit, "cannot watch the unit's output: {e}");
                None
            }
        }
    }

    /// Stops reading a pipe and closes it, before its EOF.
    fn close_pipe(&mut self, token: Token) {
        self.pipes.close(&mut self.sources, token);
    }

    /// A unit's output is readable: its complete lines go to the log, the ring and followers.
    fn read_pipe(&mut self, token: Token) {
        if let Some((unit, stream, pieces)) = self.pipes.read(&mut self.sources, token) {
            for piece in pieces {
                self.emit_line(&unit, stream, piece);
            }
        }
    }

    fn emit_line(&mut self, unit: &UnitName, stream: Stream, piece: Piece) {
        info!(target: "unit", unit = %unit, stream = output::stream_name(stream), "{}", piece.text);
        // `ready = "log-line"`: the daemon only matches; the core decides (service.rs).
        let ready_line = self.sup.get(unit).is_some_and(|(u, rt)| {
            rt.awaits_ready_line(u)
                && u.readiness
                    .pattern
                    .as_ref()
                    .is_some_and(|p| p.is_match(&piece.text))
        });
        if ready_line {
            self.feed(Input::ReadyLine { unit: unit.clone() }, Instant::now());
        }
        let time = clock::now_rfc3339_micros();
        if let Some(dropped) = self.log_files.write(unit, &time, stream, piece.bytes()) {
            let file = self.log_files.path_of(unit).unwrap_or_default();
            warn!(unit = %unit, "log file {}: {dropped} lines dropped while its writer fell behind", file.display());
        }
        let line = std::rc::Rc::new(LogLine {
            time,
            unit: unit.to_string(),
            stream,
            text: piece.text,
            partial: piece.partial,
        });
        let budgets = &mut self.control.grep_budgets;
        for client in self.control.clients.values_mut() {
            if let ClientState::Following { units, filter } = &mut client.state
                && units.contains(unit)
            {
                // A follower's grep counts against its own second and its uid's.
                let started = Instant::now();
                let uid = client.peer.uid;
                let admitted = if !filter.greps() {
                    Ok(filter.admits(&line))
                } else if budgets
                    .remaining(uid, started)
                    .is_some_and(|left| left.is_zero())
                {
                    Err(format!(
                        "grep: the greps of uid {uid} took their {}ms of corral's loop within \
                         a second (or those of all users but root their {}ms); follow with a \
                         simpler pattern",
                        output::GREP_BUDGET_PER_UID.as_millis(),
                        output::GREP_BUDGET_ALL_PEERS.as_millis()
                    ))
                } else {
                    let admitted = filter.admits_within_budget(&line);
                    let now = Instant::now();
                    budgets.charge(uid, now.saturating_duration_since(started), now);
                    admitted
                };
                match admitted {
                    Ok(true) => client.follow_line(&line),
                    Ok(false) => {}
                    Err(why) => {
                        warn!(
                            uid = client.peer.uid,
                            pid = client.peer.pid,
                            "logs -f: {why}"
                        );
                        client.send(&Response::error(crate::proto::ErrorKind::LimitReached, why));
                        client.state = ClientState::Reading;
                        client.closing = true;
                    }
                }
            }
        }
        // A unit's ring is made with its first line: most units at rest never write one
        // (bench/analysis.md, "Where the heap goes per unit"). A unit already forgotten
        // (removed by a reload) gets no new buffer.
        if self.sup.get(unit).is_some() {
            self.rings.entry(unit.clone()).or_default().push(line);
        }
    }

    fn check_exit_with(&mut self, now: Instant) {
        let Some(name) = &self.opts.exit_with else {
            return;
        };
        if self.sup.is_shutting_down() {
            return;
        }
        let Some((_, rt)) = self.sup.get(name) else {
            return;
        };
        if matches!(rt.state, State::Exited | State::Failed) {
            self.shutdown.exit_code = rt.last_exit.map_or(1, |e| e.shell_code());
            info!(unit = %name, code = self.shutdown.exit_code, "--exit-with unit ended; shutting down");
            self.begin_shutdown(now);
        }
    }
}
