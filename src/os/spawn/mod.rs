//! Spawning a unit's main process: everything allocated up front, then fork and exec in `child`.

mod child;

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use nix::unistd::pipe2;

use crate::os::cgroup::Join;
use crate::os::owned_path::{self, Leaf};
use crate::unit::{Credentials, Exec, IdMapEntry, Namespaces, Sandbox};

/// An environment variable that, given empty, `spawn` sets to the command's own pid (as the
/// command sees it, inside a pid namespace too), as systemd does for `sd_watchdog_enabled()`.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// The PATH a unit gets when its `env` does not set one (systemd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A started main process and the read ends of its output.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// For a pid namespace, `pid` is the helper init; this pipe carries the command's raw wait
    /// status (see `helper_exit`).
    pub helper_status: Option<OwnedFd>,
    /// clone3 created it inside its (v2) cgroup.
    pub cloned_into_cgroup: bool,
    /// Closes empty when the command has been exec'd, or carries why the child gave up (it
    /// then exits 127): see `exec_outcome`. Not waited for by `spawn`, so corral can go on
    /// (with the next unit) while the child gets to its exec.
    pub exec_report: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command {0:?} not found in PATH")]
    NotFound(String),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("{operation}: {}", setup_problem(*errno))]
    Setup {
        operation: &'static str,
        errno: Errno,
    },
    #[error("in the child, {stage} failed: {errno}")]
    Child { stage: &'static str, errno: Errno },
    #[error("writing {file} for the user namespace: {errno}")]
    IdMap { file: String, errno: Errno },
    #[error("the child exited before its user namespace was mapped")]
    VanishedBeforeMapping,
    #[error("read-only-paths {path}: {}", read_only_problem(*problem, *errno))]
    ReadOnlyPath {
        path: String,
        problem: child::ReadOnlyProblem,
        errno: Errno,
    },
    /// Names the file and the line, never a value: env files hold secrets.
    #[error("env-file {path}: {problem}")]
    EnvFile { path: String, problem: String },
}

impl SpawnError {
    /// The kernel's errno behind the failure, where there is one: what the core decides on.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SpawnError::Setup { errno, .. }
            | SpawnError::Child { errno, .. }
            | SpawnError::IdMap { errno, .. }
            | SpawnError::ReadOnlyPath { errno, .. } => Some(*errno as i32),
            SpawnError::NotFound(_) => Some(libc::ENOENT),
            SpawnError::Nul { .. }
            | SpawnError::VanishedBeforeMapping
            | SpawnError::EnvFile { .. } => None,
        }
    }

    /// The failure as the core takes it.
    pub fn to_failure(&self) -> crate::core::exit::SpawnFailure {
        crate::core::exit::SpawnFailure::new(self.errno(), self.to_string())
    }
}

/// A setup step's errno in words; running out of descriptors says whose limit it is, since
/// a bare "Too many open files" reads as the unit's (bench/analysis.md, "Scale").
fn setup_problem(errno: Errno) -> String {
    match errno {
        Errno::EMFILE => {
            let mut limit = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: prlimit64 on ourselves (pid 0) writes the current limit into `limit`.
            let got =
                unsafe { libc::prlimit64(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
            let soft = if got == 0 {
                format!(" ({})", limit.rlim_cur)
            } else {
                String::new()
            };
            format!(
                "corral ran out of file descriptors: its own RLIMIT_NOFILE{soft} is used up \
                 (EMFILE; each running unit holds a few, see docs/operations.md); raise \
                 corral's hard limit"
            )
        }
        Errno::ENFILE => "the system ran out of file descriptors (ENFILE: fs.file-max)".to_owned(),
        errno => errno.to_string(),
    }
}

/// Whether fs.suid_dumpable is 1 ("debug"), under which the kernel makes a process dumpable
/// again at each change of its ids: the children `child` keeps non-dumpable until their exec
/// are then traceable between a set*id and the next `PR_SET_DUMPABLE`.
pub fn ids_changes_leave_processes_dumpable() -> bool {
    std::fs::read_to_string("/proc/sys/fs/suid_dumpable").is_ok_and(|v| v.trim() == "1")
}

/// An env file larger than this is refused: it is read into memory at every start.
const MAX_ENV_FILE: u64 = 1 << 20;

/// The host ids a unit's env-files are read for, when they are not corral's own: corral reads
/// a file the unit's user could have put in place only if that user could read it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvReader {
    pub uid: u32,
    /// Its primary and supplementary groups on the host (none known in a user namespace).
    pub gids: Vec<u32>,
}

impl EnvReader {
    /// The unit's reader, or None when the unit runs as corral's own user.
    pub fn of(ns: &Namespaces, who: Option<&Credentials>) -> Option<EnvReader> {
        let uid = host_uid(ns, who);
        if uid == nix::unistd::geteuid().as_raw() {
            return None;
        }
        let gids = match who {
            Some(c) if !ns.user => std::iter::once(c.gid).chain(c.groups.iter().copied()),
            _ => {
                return Some(EnvReader {
                    uid,
                    gids: Vec::new(),
                });
            }
        };
        Some(EnvReader {
            uid,
            gids: gids.collect(),
        })
    }

    /// Whether the permission bits let this reader read the file (ACLs are not consulted: a
    /// file readable only through one is refused, with the reason).
    fn may_read(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        if meta.uid() == self.uid {
            mode & 0o400 != 0
        } else if self.gids.contains(&meta.gid()) {
            mode & 0o040 != 0
        } else {
            mode & 0o004 != 0
        }
    }
}

/// The variables of the unit's `env-file`s, later files winning, read now (in corral, before
/// the fork: the child may only make raw syscalls). systemd reads EnvironmentFile= the same way,
/// as the manager, at each start. For a unit of another user (`reader`), a file whose path that
/// user, or anyone but root and corral's user, could change is read only if the unit's user may
/// read it itself: else a unit that can swap its env-file for a symlink would read, through
/// corral, any root-only file of `KEY=VALUE` lines (docs/units.md, "Env files").
pub fn env_file_vars(
    files: &[crate::unit::EnvFile],
    reader: Option<&EnvReader>,
) -> Result<std::collections::BTreeMap<String, String>, SpawnError> {
    let mut vars = std::collections::BTreeMap::new();
    for file in files {
        let fail = |problem: String| SpawnError::EnvFile {
            path: crate::escape::path(&file.path),
            problem,
        };
        let text = match read_env_file(&file.path, reader) {
            Ok(text) => text,
            Err(e) if file.optional && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(e.to_string())),
        };
        let text = String::from_utf8(text).map_err(|e| {
            let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            fail(format!("line {line}: not UTF-8"))
        })?;
        let parsed = crate::unit::parse_env_file(&text).map_err(|e| fail(e.to_string()))?;
        vars.extend(parsed);
    }
    Ok(vars)
}

/// Reads a regular file of at most `MAX_ENV_FILE` bytes without ever blocking: O_NONBLOCK so a
/// FIFO put in its place cannot stall the event loop at open, and only regular files are read.
/// For a `reader`, what the path names is checked after the open, on the file opened: a swap
/// between the check of the path and the open finds an unowned path, or a file it may read.
fn read_env_file(path: &Path, reader: Option<&EnvReader>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if let Some(reader) = reader
        && !reader.may_read(&meta)
    {
        let own = nix::unistd::geteuid().as_raw();
        if let Err(unowned) = owned_path::check(path, own, Leaf::File) {
            return Err(std::io::Error::other(format!(
                "the unit's user (uid {}) may not read it, and corral reads it for them only \
                 where nobody but root and corral's user can change what the path names: {unowned}",
                reader.uid
            )));
        }
    }
    if meta.len() > MAX_ENV_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_ENV_FILE >> 10
        )));
    }
    let mut text = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The size was checked, but a file can grow while it is read.
    file.take(MAX_ENV_FILE + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_ENV_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_ENV_FILE >> 10
        )));
    }
    Ok(text)
}

/// Whether corral may call setgroups(2): it needs CAP_SETGID in its effective set, which root
/// lacks in a container whose runtime dropped it (runc's default set keeps only
/// CAP_AUDIT_WRITE, CAP_KILL and CAP_NET_BIND_SERVICE). Read once from /proc/self/status.
pub fn may_set_groups() -> bool {
    const CAP_SETGID: u32 = 6;
    static MAY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MAY.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                u64::from_str_radix(hex.trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << CAP_SETGID) != 0)
    })
}

/// Who corral itself runs as, for units with no `user`: looked up once, since a lookup reads
/// /etc/passwd (and whatever NSS is set up to ask), which would cost every spawn.
pub fn own_identity() -> &'static Credentials {
    static OWN: std::sync::OnceLock<Credentials> = std::sync::OnceLock::new();
    OWN.get_or_init(look_up_own_identity)
}

fn look_up_own_identity() -> Credentials {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let user = nix::unistd::User::from_uid(uid).ok().flatten();
    Credentials {
        user_name: user
            .as_ref()
            .map_or_else(|| uid.to_string(), |u| u.name.clone()),
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        home: user.map_or_else(|| PathBuf::from("/"), |u| u.dir),
        groups: Vec::new(),
    }
}

/// The environment of docs/operations.md ("What a unit's process inherits"): the unit's `env-file` variables, its `env` over them, plus PATH,
/// HOME, USER and LOGNAME of its user where neither set them.
pub fn environment(
    exec: &Exec,
    from_files: std::collections::BTreeMap<String, String>,
    who: &Credentials,
) -> Vec<(String, String)> {
    let mut env = from_files;
    env.extend(exec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let home = who.home.to_string_lossy().into_owned();
    for (key, value) in [
        ("PATH", DEFAULT_PATH.to_owned()),
        ("HOME", home),
        ("USER", who.user_name.clone()),
        ("LOGNAME", who.user_name.clone()),
    ] {
        env.entry(key.to_owned()).or_insert(value);
    }
    env.into_iter().collect()
}

/// `command[0]` as a path: taken as is when it holds a '/', else searched in `path_var`.
pub fn resolve_command(program: &str, path_var: &str) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| SpawnError::NotFound(program.to_owned()))
}

fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
        && path.metadata().is_ok_and(|m| m.is_file())
}

fn cstring(bytes: &[u8], what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul { what })
}

fn setup<T>(operation: &'static str, result: Result<T, Errno>) -> Result<T, SpawnError> {
    result.map_err(|errno| SpawnError::Setup { operation, errno })
}

/// What a unit asks to be isolated by: its `[namespaces]` and `[sandbox]`.
#[derive(Debug, Clone, Copy)]
pub struct Confinement<'u> {
    pub namespaces: &'u Namespaces,
    pub sandbox: &'u Sandbox,
    /// Enter the namespaces of this running process (the unit's main process) instead of
    /// creating new ones: for a health probe, which must see what the unit sees.
    pub enter: Option<i32>,
}

impl Confinement<'static> {
    /// No namespace and no sandbox: the process shares corral's view.
    pub fn none() -> Confinement<'static> {
        static NO_NAMESPACES: Namespaces = Namespaces {
            pid: false,
            net: false,
            mount: false,
            uts: false,
            hostname: None,
            ipc: false,
            cgroup: false,
            user: false,
            uid_map: Vec::new(),
            gid_map: Vec::new(),
        };
        static NO_SANDBOX: Sandbox = Sandbox {
            no_new_privileges: false,
            capabilities: None,
            read_only_paths: Vec::new(),
            private_tmp: false,
        };
        Confinement {
            namespaces: &NO_NAMESPACES,
            sandbox: &NO_SANDBOX,
            enter: None,
        }
    }
}

/// Start `exec` as `who`: inside the cgroup `cgroup` opens and the namespaces
/// `confine` asks for, stdin from /dev/null, stdout and stderr into fresh pipes, a new session,
/// nothing else inherited.
pub fn spawn(
    exec: &Exec,
    who: Option<&Credentials>,
    cgroup: &Join,
    oom_score_adj: Option<i32>,
    confine: Confinement<'_>,
) -> Result<Child, SpawnError> {
    let identity = who.unwrap_or_else(|| own_identity());
    let reader = EnvReader::of(confine.namespaces, who);
    let env = environment(
        exec,
        env_file_vars(&exec.env_files, reader.as_ref())?,
        identity,
    );
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let program = exec
        .command
        .first()
        .ok_or(SpawnError::NotFound(String::new()))?;
    let path = resolve_command(program, path_var)?;

    let path = cstring(path.as_os_str().as_bytes(), "command path")?;
    let argv = exec
        .command
        .iter()
        .map(|a| cstring(a.as_bytes(), "command"))
        .collect::<Result<Vec<_>, _>>()?;
    // `WATCHDOG_PID` with no value asks for the command's own pid, known only in the child.
    let watchdog_pid = env.iter().any(|(k, v)| k == WATCHDOG_PID && v.is_empty());
    let envp = env
        .iter()
        .filter(|(k, v)| !(k == WATCHDOG_PID && v.is_empty()))
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes(), "env"))
        .collect::<Result<Vec<_>, _>>()?;
    let workdir = match &exec.working_dir {
        Some(dir) => cstring(dir.as_os_str().as_bytes(), "working-dir")?,
        None => cstring(b"/", "working-dir")?,
    };
    // Entering a unit's namespaces: nothing is created, and the mounts are the unit's already.
    let entering = match confine.enter {
        Some(pid) => Some(EnteredNamespaces::open(pid, confine.namespaces)?),
        None => None,
    };
    let (ns, sandbox) = match entering {
        Some(_) => (
            Confinement::none().namespaces,
            confine.sandbox.without_mounts(),
        ),
        None => (confine.namespaces, confine.sandbox.clone()),
    };
    let read_only = read_only_paths(&sandbox.read_only_paths)?;
    let hostname = match &ns.hostname {
        Some(name) => Some(cstring(name.as_bytes(), "hostname")?),
        None => None,
    };
    let null = setup(
        "opening /dev/null",
        open(
            OsStr::new("/dev/null"),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    )?;
    let (stdout_read, stdout_write) = setup("creating a pipe", pipe2(OFlag::O_CLOEXEC))?;
    let (stderr_read, stderr_write) = setup("creating a pipe", pipe2(OFlag::O_CLOEXEC))?;
    let (report_read, report_write) = setup("creating a pipe", pipe2(OFlag::O_CLOEXEC))?;
    for fd in [&stdout_read, &stderr_read] {
        setup("setting O_NONBLOCK", set_nonblocking(fd))?;
    }
    let user_ns = if ns.user {
        Some(UserNamespace::new(ns, identity)?)
    } else {
        None
    };
    let status_pipe = if ns.pid {
        let (read, write) = setup("creating a pipe", pipe2(OFlag::O_CLOEXEC))?;
        setup("setting O_NONBLOCK", set_nonblocking(&read))?;
        Some((read, write))
    } else {
        None
    };

    let join_fds: Vec<RawFd> = cgroup.write_zero.iter().map(AsRawFd::as_raw_fd).collect();
    let oom_score_adj = oom_score_adj.map(|v| v.to_string().into_bytes());
    let entered_user = entering
        .as_ref()
        .is_some_and(|_| confine.namespaces.user)
        .then(|| inside_ids(confine.namespaces, identity));
    let credentials = match (&user_ns, entered_user, who) {
        (Some(userns), _, _) => Some(child::Ids {
            uid: userns.inside_uid,
            gid: userns.inside_gid,
            // Host groups have no ids inside; drop them where the namespace allows setgroups.
            groups: userns.setgroups_allowed.then_some(&[][..]),
        }),
        (None, Some((uid, gid)), _) => Some(child::Ids {
            uid,
            gid,
            groups: may_set_groups().then_some(&[][..]),
        }),
        (None, None, Some(c)) => Some(child::Ids {
            uid: c.uid,
            gid: c.gid,
            groups: Some(&c.groups),
        }),
        // No `user`: corral's own ids, but not the supplementary groups corral happened to be
        // started with (by a login shell, sudo or a container runtime), where it may drop them.
        (None, None, None) => may_set_groups().then(|| child::Ids {
            uid: identity.uid,
            gid: identity.gid,
            groups: Some(&[][..]),
        }),
    };
    let enter: Vec<(RawFd, libc::c_int)> = entering
        .as_ref()
        .map(|e| {
            e.ordered
                .iter()
                .map(|(fd, kind)| (fd.as_raw_fd(), *kind))
                .collect()
        })
        .unwrap_or_default();
    let plan = child::ExecPlan {
        path: &path,
        argv: &argv,
        envp: &envp,
        workdir: &workdir,
        stdin: null.as_raw_fd(),
        stdout: stdout_write.as_raw_fd(),
        stderr: stderr_write.as_raw_fd(),
        report: report_write.as_raw_fd(),
        watchdog_pid,
        join_cgroups: &join_fds,
        clone_into: cgroup.clone_into.as_ref().map(AsRawFd::as_raw_fd),
        oom_score_adj: oom_score_adj.as_deref(),
        open_files_limit: ORIGINAL_OPEN_FILES_LIMIT.get().copied(),
        credentials,
        isolation: child::Isolation {
            enter: &enter,
            enter_pid: entering.as_ref().and_then(|e| {
                e.pid
                    .as_ref()
                    .map(|(theirs, ours)| (theirs.as_raw_fd(), ours.as_raw_fd()))
            }),
            pid: status_pipe.as_ref().map(|(_, write)| child::PidHelper {
                status: write.as_raw_fd(),
                all_signals: all_signals(),
            }),
            mount: ns.mount,
            private_tmp: sandbox.private_tmp,
            read_only: &read_only,
            user_go: user_ns
                .as_ref()
                .map(|u| (u.go_read.as_raw_fd(), u.go_write.as_raw_fd())),
            unshare: unshare_flags(ns),
            hostname: hostname.as_ref().map(|h| h.as_bytes()),
            loopback_up: ns.net,
        },
        privileges: child::Privileges {
            no_new_privileges: sandbox.no_new_privileges,
            keep_capabilities: sandbox.capabilities.as_ref().map(|caps| {
                caps.iter()
                    .filter(|c| c.0 < 64)
                    .fold(0u64, |mask, c| mask | (1 << c.0))
            }),
            last_capability: last_capability(),
        },
    };
    let (pid, cloned_into_cgroup) =
        child::fork_and_exec(&plan).map_err(|errno| SpawnError::Setup {
            operation: "fork",
            errno,
        })?;
    // The child holds its own copies; ours must close so EOF means the unit closed its output.
    drop((stdout_write, stderr_write, report_write, null));
    let (helper_status, status_write) = status_pipe.unzip();
    drop(status_write);
    // A user namespace needs its id maps before the child can go on: that much is waited for.
    if let Some(userns) = user_ns.map(UserNamespace::into_parent_side) {
        match child::read_report(&report_read) {
            // On failure `userns` tells the child to exit.
            child::Report::MapIds => userns.map(pid)?,
            child::Report::Executed => return Err(SpawnError::VanishedBeforeMapping),
            // The child has already _exit(127)ed; the reaper will collect it and the core
            // ignores the pid, which it never learned.
            child::Report::Failed { stage, errno } => {
                return Err(SpawnError::Child { stage, errno });
            }
            child::Report::ReadOnlyPath {
                path,
                problem,
                errno,
            } => {
                return Err(SpawnError::ReadOnlyPath {
                    path,
                    problem,
                    errno,
                });
            }
        }
    }
    Ok(Child {
        pid,
        stdout: stdout_read,
        stderr: stderr_read,
        helper_status,
        cloned_into_cgroup,
        exec_report: report_read,
    })
}

/// How the exec of a spawned child went, from its `exec_report` once that is readable (or at
/// once, blocking until the child has exec'd or failed).
pub fn exec_outcome(report: &OwnedFd) -> Result<(), SpawnError> {
    match child::read_report(report) {
        child::Report::Executed => Ok(()),
        child::Report::Failed { stage, errno } => Err(SpawnError::Child { stage, errno }),
        child::Report::ReadOnlyPath {
            path,
            problem,
            errno,
        } => Err(SpawnError::ReadOnlyPath {
            path,
            problem,
            errno,
        }),
        // Only a child with a user namespace sends it, and `spawn` has read that one.
        child::Report::MapIds => Err(SpawnError::VanishedBeforeMapping),
    }
}

/// The command's wait status as the helper init of its pid namespace reported it, if it did
/// (a helper that was itself killed, by a stop's SIGKILL or the OOM killer, reports nothing).
pub fn helper_exit(status: &OwnedFd) -> Option<libc::c_int> {
    let mut buf = [0u8; 4];
    match nix::unistd::read(status, &mut buf) {
        Ok(4) => Some(libc::c_int::from_ne_bytes(buf)),
        _ => None,
    }
}

fn unshare_flags(ns: &Namespaces) -> libc::c_int {
    [
        (ns.uts, libc::CLONE_NEWUTS),
        (ns.ipc, libc::CLONE_NEWIPC),
        (ns.net, libc::CLONE_NEWNET),
        (ns.cgroup, libc::CLONE_NEWCGROUP),
    ]
    .into_iter()
    .filter(|(wanted, _)| *wanted)
    .fold(0, |flags, (_, flag)| flags | flag)
}

fn all_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigfillset initialises.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// The highest capability number this kernel knows; 40 (CAP_CHECKPOINT_RESTORE) if unreadable.
/// Read once: the kernel does not change under a running corral.
fn last_capability() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// The paths as the child needs them. Nothing is looked at here: the child resolves each one
/// itself, without following symlinks, in its own mount namespace (`child::make_read_only`),
/// and a failure comes back with the path.
fn read_only_paths(paths: &[PathBuf]) -> Result<Vec<CString>, SpawnError> {
    paths
        .iter()
        .map(|p| cstring(p.as_os_str().as_bytes(), "read-only-paths"))
        .collect()
}

/// Why a `read-only-paths` entry failed, for people.
fn read_only_problem(problem: child::ReadOnlyProblem, errno: Errno) -> String {
    use child::ReadOnlyProblem::*;
    match (problem, errno) {
        (Resolve, Errno::ELOOP) => "a component of the path is a symbolic link, which corral \
            does not follow here: name the real path (docs/isolation.md)"
            .to_owned(),
        (Resolve, Errno::ENOENT) => "no such file or directory".to_owned(),
        (Resolve, errno) => format!("opening it: {errno}"),
        (Mount, errno) => format!("binding it read-only: {errno}"),
        (Changed, Errno::UnknownErrno) => {
            "it was moved or replaced while corral made it read-only".to_owned()
        }
        (Changed, errno) => {
            format!("it was moved or replaced while corral made it read-only ({errno})")
        }
    }
}

/// The id maps of a unit's user namespace and the pipe that releases the child once written.
struct UserNamespace {
    uid_map: String,
    gid_map: String,
    setgroups_allowed: bool,
    inside_uid: u32,
    inside_gid: u32,
    go_read: OwnedFd,
    go_write: OwnedFd,
}

/// The parent's half of `UserNamespace`, after the child has its copy of the go pipe.
struct MapWriter {
    uid_map: String,
    gid_map: String,
    setgroups_allowed: bool,
    go_write: OwnedFd,
}

impl UserNamespace {
    fn new(ns: &Namespaces, who: &Credentials) -> Result<UserNamespace, SpawnError> {
        let uid_map = effective_map(&ns.uid_map, who.uid);
        let gid_map = effective_map(&ns.gid_map, who.gid);
        let (go_read, go_write) = setup("creating a pipe", pipe2(OFlag::O_CLOEXEC))?;
        let (inside_uid, inside_gid) = inside_ids(ns, who);
        Ok(UserNamespace {
            inside_uid,
            inside_gid,
            uid_map: render_id_map(&uid_map),
            gid_map: render_id_map(&gid_map),
            // Only a writer with CAP_SETGID outside may leave setgroups allowed (user_namespaces(7)).
            setgroups_allowed: may_set_groups(),
            go_read,
            go_write,
        })
    }

    fn into_parent_side(self) -> MapWriter {
        drop(self.go_read);
        MapWriter {
            uid_map: self.uid_map,
            gid_map: self.gid_map,
            setgroups_allowed: self.setgroups_allowed,
            go_write: self.go_write,
        }
    }
}

impl MapWriter {
    /// Writes the child's maps (gid_map after setgroups, as the kernel requires) and lets it go
    /// on; on failure, tells it to exit.
    fn map(self, pid: i32) -> Result<(), SpawnError> {
        let written = self.write_maps(pid);
        let answer = if written.is_ok() { child::GO } else { b'x' };
        let released = setup(
            "releasing the child",
            nix::unistd::write(&self.go_write, &[answer]).map(drop),
        );
        written.and(released)
    }

    fn write_maps(&self, pid: i32) -> Result<(), SpawnError> {
        let write = |file: &str, text: &str| {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, text).map_err(|e| SpawnError::IdMap {
                file: path,
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
        };
        if !self.setgroups_allowed {
            write("setgroups", "deny")?;
        }
        write("uid_map", &self.uid_map)?;
        write("gid_map", &self.gid_map)
    }
}

/// RLIMIT_NOFILE as corral found it, when `raise_open_files_limit` raised it.
static ORIGINAL_OPEN_FILES_LIMIT: std::sync::OnceLock<libc::rlimit64> = std::sync::OnceLock::new();

/// Raises corral's own RLIMIT_NOFILE, as systemd does for itself: both limits to the
/// kernel's ceiling (`fs.nr_open`) when corral may (`CAP_SYS_RESOURCE`), else the soft one to
/// the hard one; and has every process spawned later start with the original again (a unit
/// expects the limit it was given, and select() breaks above 1024). Descriptors that reach
/// corral from outside (notify messages) are installed by the kernel only while there is room;
/// the rest it closes itself, in corral's thread, where such a close can block. And a quarter
/// of this limit is all the closers of every unit may hold together: from a machine's init's
/// 4096 (INR_OPEN_MAX), two units that block their closers would take all of it and leave every
/// other unit's notify socket unread (docs/operations.md, "Notify sockets"). Returns the soft
/// limit now in force.
pub fn raise_open_files_limit() -> Result<u64, Errno> {
    let mut limit = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 on ourselves (pid 0) writes the current limit into `limit`.
    let got = unsafe { libc::prlimit64(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
    Errno::result(got)?;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    for target in [ceiling, limit.rlim_max] {
        if limit.rlim_cur >= target {
            return Ok(limit.rlim_cur);
        }
        let raised = libc::rlimit64 {
            rlim_cur: target,
            rlim_max: target.max(limit.rlim_max),
        };
        // SAFETY: prlimit64 on ourselves reads the new limit from `raised`.
        let set = unsafe { libc::prlimit64(0, libc::RLIMIT_NOFILE, &raised, std::ptr::null_mut()) };
        match Errno::result(set) {
            Ok(_) => {
                let _ = ORIGINAL_OPEN_FILES_LIMIT.set(limit);
                return Ok(raised.rlim_cur);
            }
            // Raising the hard limit needs CAP_SYS_RESOURCE: then the soft one alone.
            Err(Errno::EPERM) if target > limit.rlim_max => {}
            Err(e) => return Err(e),
        }
    }
    Ok(limit.rlim_cur)
}

/// The host uid the unit's command runs as: its user's, or with a user namespace the outside
/// id of the uid it has inside. Files only the unit may use (its notify socket) are this uid's.
pub fn host_uid(ns: &Namespaces, who: Option<&Credentials>) -> u32 {
    let identity = who.unwrap_or_else(|| own_identity());
    if !ns.user {
        return identity.uid;
    }
    let map = effective_map(&ns.uid_map, identity.uid);
    let inside = inside_id(&map, identity.uid);
    map.iter()
        .find(|e| inside >= e.inside && inside - e.inside < e.count)
        .map_or(identity.uid, |e| e.outside + (inside - e.inside))
}

/// The uid and gid the command has inside its user namespace (see `inside_id`).
fn inside_ids(ns: &Namespaces, who: &Credentials) -> (u32, u32) {
    (
        inside_id(&effective_map(&ns.uid_map, who.uid), who.uid),
        inside_id(&effective_map(&ns.gid_map, who.gid), who.gid),
    )
}

/// The map a user namespace gets: the unit's, or by default root inside as the unit's
/// `outside` id, and nothing else mapped.
fn effective_map(configured: &[IdMapEntry], outside: u32) -> Vec<IdMapEntry> {
    if configured.is_empty() {
        vec![IdMapEntry {
            inside: 0,
            outside,
            count: 1,
        }]
    } else {
        configured.to_vec()
    }
}

/// The namespaces of a running process, opened for a new process to enter.
struct EnteredNamespaces {
    /// Every kind the unit has of its own but pid, in the order they must be entered.
    ordered: Vec<(OwnedFd, libc::c_int)>,
    /// Its pid namespace and corral's own, for the parent to enter around the clone.
    pid: Option<(OwnedFd, OwnedFd)>,
}

impl EnteredNamespaces {
    fn open(pid: i32, ns: &Namespaces) -> Result<EnteredNamespaces, SpawnError> {
        let open_ns = |who: &str, file: &str| {
            let path = format!("/proc/{who}/ns/{file}");
            setup(
                "opening a namespace of the unit",
                open(
                    path.as_str(),
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ),
            )
        };
        let who = pid.to_string();
        let mut ordered = Vec::new();
        // The user namespace last: entering it gives up the rights to enter the others, which
        // belong to corral's (mount) or are entered as root of corral's namespace anyway.
        for (wanted, file, kind) in [
            (ns.mount, "mnt", libc::CLONE_NEWNS),
            (ns.uts, "uts", libc::CLONE_NEWUTS),
            (ns.ipc, "ipc", libc::CLONE_NEWIPC),
            (ns.net, "net", libc::CLONE_NEWNET),
            (ns.cgroup, "cgroup", libc::CLONE_NEWCGROUP),
            (ns.user, "user", libc::CLONE_NEWUSER),
        ] {
            if wanted {
                ordered.push((open_ns(&who, file)?, kind));
            }
        }
        let pid = if ns.pid {
            Some((open_ns(&who, "pid")?, open_ns("self", "pid")?))
        } else {
            None
        };
        Ok(EnteredNamespaces { ordered, pid })
    }
}

/// The id inside that maps to `outside`, or root of the namespace when the map skips it.
fn inside_id(map: &[IdMapEntry], outside: u32) -> u32 {
    map.iter()
        .find(|e| outside >= e.outside && outside - e.outside < e.count)
        .map_or(0, |e| e.inside + (outside - e.outside))
}

fn render_id_map(map: &[IdMapEntry]) -> String {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
        .collect()
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), Errno> {
    use nix::fcntl::{FcntlArg, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_are_searched_in_path_and_paths_are_kept() {
        assert_eq!(
            resolve_command("sh", "/nonexistent:/bin:/usr/bin").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve_command("./x", "/bin").unwrap(),
            PathBuf::from("./x")
        );
        assert!(matches!(
            resolve_command("no-such-program-xyz", "/bin:/usr/bin"),
            Err(SpawnError::NotFound(_))
        ));
    }

    #[test]
    fn the_command_runs_as_the_inside_id_of_its_user_or_as_root_inside() {
        let map = [
            IdMapEntry {
                inside: 0,
                outside: 100_000,
                count: 1000,
            },
            IdMapEntry {
                inside: 5000,
                outside: 33,
                count: 1,
            },
        ];
        assert_eq!(inside_id(&map, 100_000), 0);
        assert_eq!(inside_id(&map, 100_999), 999);
        assert_eq!(inside_id(&map, 101_000), 0, "past the range: root inside");
        assert_eq!(inside_id(&map, 33), 5000);
        assert_eq!(inside_id(&[], 33), 0);
        assert_eq!(render_id_map(&map), "0 100000 1000\n5000 33 1\n");
    }

    #[test]
    fn env_files_are_read_in_order_and_env_overrides_them() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("env");
        let local = dir.path().join("env.local");
        std::fs::write(
            &base,
            "A=from-base\nB=from-base\nPATH=/file/bin\nSECRET='s3cr3t'\n",
        )
        .unwrap();
        std::fs::write(&local, "B=from-local\nC=from-local\n").unwrap();
        let file = |p: &Path, optional| crate::unit::EnvFile {
            path: p.to_owned(),
            optional,
        };
        let exec = Exec {
            command: vec!["true".into()],
            working_dir: None,
            env: [("C".to_string(), "from-env".to_string())].into(),
            env_files: vec![
                file(&base, false),
                file(&local, false),
                file(&dir.path().join("absent"), true),
            ],
            user: None,
        };
        let vars = env_file_vars(&exec.env_files, None).unwrap();
        let env = environment(&exec, vars, own_identity());
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("from-base"));
        assert_eq!(get("B"), Some("from-local"));
        assert_eq!(get("C"), Some("from-env"));
        assert_eq!(get("PATH"), Some("/file/bin"));
        assert_eq!(get("SECRET"), Some("s3cr3t"));

        // A required file that is missing, one with a bad line, one that is not a file: each
        // names the file (and the line), and never a value.
        let missing = dir.path().join("missing");
        let e = env_file_vars(&[file(&missing, false)], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("env-file {}: ", missing.display())),
            "{e}"
        );
        assert!(e.contains("No such file"), "{e}");
        std::fs::write(&local, "OK=1\nexport TOKEN=s3cr3t\n").unwrap();
        let e = env_file_vars(&[file(&local, false)], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("env-file {}: line 2: ", local.display())),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
        std::fs::write(&local, b"A=\xff\n").unwrap();
        let e = env_file_vars(&[file(&local, false)], None)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("line 1: not UTF-8"), "{e}");
        // A FIFO would block a plain open until a writer came: refused at once instead.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let e = env_file_vars(&[file(&fifo, true)], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = env_file_vars(&[file(dir.path(), false)], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::write(&local, vec![b'#'; (MAX_ENV_FILE + 1) as usize]).unwrap();
        let e = env_file_vars(&[file(&local, false)], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }

    #[test]
    fn unit_env_wins_and_identity_fills_the_rest() {
        let exec = Exec {
            command: vec!["true".into()],
            working_dir: None,
            env: [("PATH".to_string(), "/opt/bin".to_string())].into(),
            env_files: Vec::new(),
            user: None,
        };
        let who = Credentials {
            user_name: "www".into(),
            uid: 33,
            gid: 33,
            home: "/var/www".into(),
            groups: vec![],
        };
        let env = environment(&exec, Default::default(), &who);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PATH"), Some("/opt/bin"));
        assert_eq!(get("HOME"), Some("/var/www"));
        assert_eq!(get("USER"), Some("www"));
        assert_eq!(get("LOGNAME"), Some("www"));
        assert_eq!(env.len(), 4);
    }
}
