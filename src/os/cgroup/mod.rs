//! cgroup management: one `Backend` trait, a v1 and a v2 implementation behind `Cgroups`, and the
//! operations built on it (apply a plan, signal or kill every member, remove).
//!
//! Every path is rooted at an injected mount point and root, so tests run against a fake
//! cgroupfs in a temporary directory.

mod access;
pub mod discover;
pub mod stats;
mod v1;
mod v2;

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::core::cgroup_plan::{Plan, Setting, Version};
use crate::core::container::Budget;
use crate::proto::Usage;

pub use v1::V1;
pub use v2::V2;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        value: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no cgroup file system is mounted")]
    NotMounted,
    #[error("--cgroup-root {0} must be an absolute cgroup path such as /corral")]
    BadRoot(PathBuf),
    #[error("cannot find corral's own cgroup in /proc/self/cgroup")]
    OwnCgroupUnknown,
    #[error("corral's cgroup {own} is not under {point}, which shows only {root}")]
    OwnCgroupHidden {
        own: PathBuf,
        point: PathBuf,
        root: PathBuf,
    },
    #[error("{0} is not available on this system")]
    Unavailable(&'static str),
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io {
        operation,
        path,
        source,
    }
}

/// Writes `value` to a kernel file that must already exist (never creates one).
pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let result = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()));
    result.map_err(|source| CgroupError::Write {
        value: value.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// A cgroup path (`/corral/x`) as a path relative to a hierarchy's mount (`corral/x`).
pub(crate) fn relative(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}

/// A cgroup as users name it: `/R/rel`.
pub(crate) fn display_below(root_rel: &Path, rel: &Path) -> String {
    Path::new("/")
        .join(root_rel)
        .join(rel)
        .display()
        .to_string()
}

pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    read_text(path).map_err(io_error("reading", path))
}

/// A cgroup file's text, in one `read` for the usual few bytes. cgroupfs files are kernfs
/// seq_files of a single record (fs/kernfs/file.c, `kernfs_seq_start`) that seq_read_iter
/// renders whole before copying (fs/seq_file.c), so a read shorter than the buffer has reached
/// the end; `read_to_string` would add an `fstat` and a second, empty `read` to each file.
pub(crate) fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut first = [0u8; 1024];
    let n = file.read(&mut first)?;
    let mut bytes = first[..n].to_vec();
    if n == first.len() {
        file.read_to_end(&mut bytes)?;
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    Ok(read_file(path)?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// `mkdir`, treating "already there" as success.
pub(crate) fn make_dir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_error("creating cgroup", path)(e)),
    }
}

/// `rmdir`: `Ok(false)` while the kernel still counts live members (EBUSY); gone is success.
pub(crate) fn remove_dir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
        Err(e) => Err(io_error("removing cgroup", path)(e)),
    }
}

/// How a new process gets into a unit's cgroup before its first instruction.
#[derive(Debug, Default)]
pub struct Join {
    /// Files the child writes "0" into. v1: each hierarchy's `tasks`, which moves only the
    /// writing thread (the whole child, which has one) and so skips the global threadgroup
    /// lock whose RCU grace period made `cgroup.procs` cost milliseconds per spawn. v2:
    /// `cgroup.procs`, used only when `clone_into` cannot be.
    pub write_zero: Vec<OwnedFd>,
    /// v2: the cgroup's directory, for clone3's `CLONE_INTO_CGROUP` (Linux 5.7), which
    /// creates the child in it with no write at all.
    pub clone_into: Option<OwnedFd>,
}

impl Join {
    /// No cgroup: the unit runs in its process group only.
    pub fn is_empty(&self) -> bool {
        self.write_zero.is_empty() && self.clone_into.is_none()
    }
}

pub(crate) fn open_directory(path: &Path) -> Result<OwnedFd, CgroupError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_DIRECTORY)
        .open(path)
        .map(OwnedFd::from)
        .map_err(io_error("opening", path))
}

pub(crate) fn open_for_join(path: &Path) -> Result<OwnedFd, CgroupError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(io_error("opening", path))
}

/// What a cgroup version must provide. `rel` is always relative to corral's root R.
pub trait Backend {
    fn version(&self) -> Version;
    /// Creates R, moves corral out of it where v2 requires, and enables controllers.
    fn prepare_root(&mut self) -> Result<Vec<String>, CgroupError>;
    /// Creates `rel` and its missing parents; `holds_children` for slices (v2 enables
    /// controllers below it).
    fn create(&self, rel: &Path, holds_children: bool) -> Result<(), CgroupError>;
    fn write(&self, rel: &Path, setting: &Setting) -> Result<(), CgroupError>;
    /// What the child needs to start inside the cgroup (see `Join`).
    fn join(&self, rel: &Path) -> Result<Join, CgroupError>;
    fn procs(&self, rel: &Path) -> Result<Vec<i32>, CgroupError>;
    /// Freezes, returning once the freeze is complete (v1 waits for FROZEN, bounded).
    fn set_frozen(&self, rel: &Path, frozen: bool) -> Result<(), CgroupError>;
    /// Starts a freeze and returns at once, complete or not (v1 may still be FREEZING): for
    /// `kill_all`, which must not wait on the loop and does not need every task stopped.
    fn begin_freeze(&self, rel: &Path) -> Result<(), CgroupError> {
        self.set_frozen(rel, true)
    }
    /// v2 `cgroup.kill` (5.14+): `Ok(true)` when the kernel killed every member at once.
    fn kill_switch(&self, rel: &Path) -> Result<bool, CgroupError>;
    /// `Ok(false)` while the cgroup still has members (retry later).
    fn remove(&self, rel: &Path) -> Result<bool, CgroupError>;
    fn exists(&self, rel: &Path) -> bool;
    fn usage(&self, rel: &Path) -> Usage;
    /// The kernel's count of OOM kills in the cgroup.
    fn oom_kills(&self, rel: &Path) -> Option<u64>;
    /// The cgroup as users name it: `/R/rel`.
    fn display(&self, rel: &Path) -> String;
    /// Fds that become readable when the kernel reports a memory event of the cgroup (an OOM
    /// kill; usage crossing one of `marks` bytes, either way): v1 eventfds via
    /// `cgroup.event_control`, a v2 inotify watch of `memory.events` (which has no thresholds:
    /// v2 ignores `marks`). Read the counters to learn what happened: a wakeup alone proves
    /// nothing (v1 also signals the eventfd when the cgroup is removed).
    fn memory_watch(&self, rel: &Path, marks: &[u64]) -> Result<Vec<OwnedFd>, CgroupError>;
    /// Whether `memory_watch` notices usage crossing `marks` (v1), so no timer has to sample it.
    fn notifies_memory_marks(&self) -> bool;
    /// An fd that becomes readable when the cgroup's `populated` flag changes (v2: inotify on
    /// `cgroup.events`), or None where the kernel offers no such event (v1: its only one is the
    /// hierarchy-wide release_agent program). Read `procs` to learn whether it is empty.
    fn populated_watch(&self, rel: &Path) -> Result<Option<OwnedFd>, CgroupError>;
    /// An fd armed with a PSI trigger on the cgroup's `memory.pressure` (`trigger` as psi.rst
    /// writes it: `some 150000 1000000`), which polls POLLPRI each time the stall passes the
    /// threshold within the window; None where the kernel has no per-cgroup PSI (v1 here).
    fn pressure_trigger(
        &self,
        _rel: &Path,
        _trigger: &str,
    ) -> Result<Option<OwnedFd>, CgroupError> {
        Ok(None)
    }
    /// The path of the cgroup's `memory.pressure` for a unit to arm its own trigger on (what
    /// systemd hands over as `$MEMORY_PRESSURE_WATCH`); None without per-cgroup PSI (v1 here).
    fn pressure_file(&self, _rel: &Path) -> Option<PathBuf> {
        None
    }
    /// The limits in force above R (the container's or slice's budget), and the v2 caps on
    /// how many cgroups and levels may exist below it.
    fn budget(&self) -> (Budget, Option<u64>, Option<u64>);
}

/// Empties a watch fd from `Backend::memory_watch` (eventfd counter or inotify events).
pub fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while matches!(nix::unistd::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// The detected backend.
pub enum Cgroups {
    V1(V1),
    V2(V2),
}

impl std::ops::Deref for Cgroups {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        match self {
            Cgroups::V1(b) => b,
            Cgroups::V2(b) => b,
        }
    }
}

impl std::ops::DerefMut for Cgroups {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Cgroups::V1(b) => b,
            Cgroups::V2(b) => b,
        }
    }
}

/// What detection found: the backend, and what the mounts say of the rung corral stands on.
pub struct Detected {
    pub cgroups: Cgroups,
    /// A hierarchy corral uses is mounted read-only.
    pub read_only: bool,
    /// cgroup2 `nsdelegate`.
    pub nsdelegate: bool,
    /// corral's own cgroup is `/` of what it sees.
    pub at_namespace_root: bool,
}

/// Finds the mounted hierarchies and corral's root R: `root` (an absolute cgroup path), or the
/// cgroup corral runs in.
pub fn detect(root: Option<&Path>) -> Result<Detected, CgroupError> {
    detect_from(
        &read_file(Path::new("/proc/self/mountinfo"))?,
        &read_file(Path::new("/proc/self/cgroup"))?,
        root,
    )
}

/// [`detect`] from the texts of `/proc/self/mountinfo` and `/proc/self/cgroup`, so a test can
/// point corral at a fake cgroupfs in a temporary directory.
pub fn detect_from(
    mountinfo: &str,
    proc_cgroup: &str,
    root: Option<&Path>,
) -> Result<Detected, CgroupError> {
    if let Some(r) = root
        && !r.is_absolute()
    {
        return Err(CgroupError::BadRoot(r.to_owned()));
    }
    let mounts = discover::parse_mountinfo(mountinfo);
    let own = discover::parse_proc_cgroup(proc_cgroup);
    match mounts.version() {
        None => Err(CgroupError::NotMounted),
        Some(Version::V2) => {
            let mount = mounts.unified.ok_or(CgroupError::NotMounted)?;
            let own_path = own.get("").ok_or(CgroupError::OwnCgroupUnknown)?;
            let own = visible(&mount, own_path)?;
            let root = root.map_or_else(|| own.clone(), |r| root_in(&mount, r));
            Ok(Detected {
                read_only: mount.read_only,
                nsdelegate: mount.nsdelegate,
                at_namespace_root: own_path == Path::new("/"),
                cgroups: Cgroups::V2(V2::new(mount.point, &root, &own)),
            })
        }
        Some(Version::V1) => Ok(Detected {
            read_only: mounts.v1.values().any(|m| m.read_only),
            nsdelegate: false,
            at_namespace_root: own.values().all(|p| p == Path::new("/")),
            cgroups: Cgroups::V1(V1::new(&mounts.v1, root, &own)?),
        }),
    }
}

/// corral's own cgroup (a path as /proc/self/cgroup prints it) relative to `mount`.
pub(crate) fn visible(mount: &discover::Mount, own: &Path) -> Result<PathBuf, CgroupError> {
    mount
        .relative(own)
        .ok_or_else(|| CgroupError::OwnCgroupHidden {
            own: own.to_owned(),
            point: mount.point.clone(),
            root: mount.root.clone(),
        })
}

/// `--cgroup-root` relative to `mount`: a path under the cgroup the mount shows is taken as the
/// kernel's path (as /proc/self/cgroup prints it); any other as seen at the mount point, which
/// is what a container without a cgroup namespace shows its processes (docs/cgroups.md).
pub(crate) fn root_in(mount: &discover::Mount, root: &Path) -> PathBuf {
    mount.relative(root).unwrap_or_else(|| relative(root))
}

/// Writes every setting of `plan`; returns one message per key that did not take.
pub fn apply(backend: &dyn Backend, rel: &Path, plan: &Plan) -> Vec<String> {
    let mut problems: Vec<String> = plan
        .unsupported
        .iter()
        .map(|u| format!("{}: {}", u.key, u.reason))
        .collect();
    // Some files constrain each other, and which write must go first depends on the values
    // already there: v1 keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes (EINVAL
    // otherwise), so raising both needs memsw first and lowering both needs the limit first.
    // A write refused on the first pass is tried once more after all the others.
    let refused: Vec<&Setting> = plan
        .settings
        .iter()
        .filter(|setting| backend.write(rel, setting).is_err())
        .collect();
    for setting in refused {
        if let Err(e) = backend.write(rel, setting) {
            problems.push(format!("{}: {e}", setting.key));
        }
    }
    problems
}

/// Sends `signal` to every process in the cgroup.
pub fn signal_all(backend: &dyn Backend, rel: &Path, signal: Signal) -> Result<(), CgroupError> {
    for pid in backend.procs(rel)? {
        send(pid, signal);
    }
    Ok(())
}

fn send(pid: i32, signal: Signal) {
    // ESRCH: it exited between the read and the kill; nothing to do.
    let _ = kill(Pid::from_raw(pid), signal);
}

/// SIGKILL to every process, including ones forked while we kill: `cgroup.kill` where the
/// kernel has it; else freeze (so nobody forks), kill every listed pid until a pass finds no new
/// one, thaw (so the kills are delivered).
///
/// The freeze is only begun, not waited for (v1 may read FREEZING for milliseconds, or forever
/// with a task in uninterruptible sleep): the passes do not rely on it. A task that forks after
/// its SIGKILL is queued cannot (copy_process refuses with a fatal signal pending), and a child
/// forked before it is listed in `cgroup.procs` by the next pass; the freeze only slows the
/// forking down while the passes run.
pub fn kill_all(backend: &dyn Backend, rel: &Path) -> Result<(), CgroupError> {
    // Already removed (v2 lets rmdir succeed once members passed exit, before we reap them).
    if !backend.exists(rel) {
        return Ok(());
    }
    if backend.kill_switch(rel)? {
        // A frozen cgroup would keep the next generation frozen before its exec.
        let _ = backend.set_frozen(rel, false);
        return Ok(());
    }
    // Usually the main process was the last member: an empty cgroup needs no freeze, and on
    // v1 each freeze and thaw flips a static key, patching kernel text on every CPU.
    if backend.procs(rel)?.is_empty() {
        return Ok(());
    }
    let frozen = backend.begin_freeze(rel).is_ok();
    let mut killed = HashSet::new();
    // Bounded: each pass kills at least one new process, and a cgroup cannot hold more
    // processes than pid_max; in practice two passes suffice.
    for _ in 0..10_000 {
        let fresh: Vec<i32> = backend
            .procs(rel)?
            .into_iter()
            .filter(|pid| killed.insert(*pid))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            send(pid, Signal::SIGKILL);
        }
    }
    if frozen {
        backend.set_frozen(rel, false)?;
    }
    Ok(())
}

/// Is the error a missing permission (run as non-root, read-only cgroupfs)?
/// Whether `e` is the kernel refusing a write to a read-only mount (EROFS).
pub fn is_read_only_error(e: &CgroupError) -> bool {
    matches!(
        e,
        CgroupError::Io { source, .. } | CgroupError::Write { source, .. }
            if source.raw_os_error() == Some(libc::EROFS)
    )
}

pub fn is_permission_error(e: &CgroupError) -> bool {
    let errno = match e {
        CgroupError::Io { source, .. } | CgroupError::Write { source, .. } => source.raw_os_error(),
        _ => None,
    };
    matches!(
        errno.map(Errno::from_raw),
        Some(Errno::EACCES | Errno::EPERM | Errno::EROFS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A backend that records freezer calls; its one member does not exist (ESRCH).
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<&'static str>>,
    }

    impl Backend for Recorder {
        fn version(&self) -> Version {
            Version::V1
        }
        fn prepare_root(&mut self) -> Result<Vec<String>, CgroupError> {
            Ok(Vec::new())
        }
        fn create(&self, _: &Path, _: bool) -> Result<(), CgroupError> {
            Ok(())
        }
        fn write(&self, _: &Path, _: &Setting) -> Result<(), CgroupError> {
            Ok(())
        }
        fn join(&self, _: &Path) -> Result<Join, CgroupError> {
            Ok(Join::default())
        }
        fn procs(&self, _: &Path) -> Result<Vec<i32>, CgroupError> {
            // Above any pid_max (4194304), so the SIGKILL reaches nobody.
            Ok(vec![i32::MAX])
        }
        fn set_frozen(&self, _: &Path, frozen: bool) -> Result<(), CgroupError> {
            self.calls
                .borrow_mut()
                .push(if frozen { "wait-frozen" } else { "thaw" });
            Ok(())
        }
        fn begin_freeze(&self, _: &Path) -> Result<(), CgroupError> {
            self.calls.borrow_mut().push("begin-freeze");
            Ok(())
        }
        fn kill_switch(&self, _: &Path) -> Result<bool, CgroupError> {
            Ok(false)
        }
        fn remove(&self, _: &Path) -> Result<bool, CgroupError> {
            Ok(true)
        }
        fn exists(&self, _: &Path) -> bool {
            true
        }
        fn usage(&self, _: &Path) -> Usage {
            Usage::default()
        }
        fn oom_kills(&self, _: &Path) -> Option<u64> {
            None
        }
        fn display(&self, rel: &Path) -> String {
            rel.display().to_string()
        }
        fn memory_watch(&self, _: &Path, _: &[u64]) -> Result<Vec<OwnedFd>, CgroupError> {
            Ok(Vec::new())
        }
        fn notifies_memory_marks(&self) -> bool {
            false
        }
        fn populated_watch(&self, _: &Path) -> Result<Option<OwnedFd>, CgroupError> {
            Ok(None)
        }
        fn budget(&self) -> (Budget, Option<u64>, Option<u64>) {
            (Budget::default(), None, None)
        }
    }

    /// kill_all runs on the event loop: it begins a freeze and never waits for one to complete.
    #[test]
    fn kill_all_begins_a_freeze_without_waiting_for_it_and_thaws() {
        let backend = Recorder::default();
        kill_all(&backend, Path::new("x.service")).unwrap();
        assert_eq!(*backend.calls.borrow(), ["begin-freeze", "thaw"]);
    }
}
