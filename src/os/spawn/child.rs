//! The only code that runs between fork and exec: raw, async-signal-safe syscalls on
//! pre-built data. The process may be multi-threaded, so the child must not allocate,
//! lock, or touch anything another thread could have held at fork time.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Everything the child needs, built before fork.
pub struct ExecPlan<'a> {
    pub path: &'a CString,
    pub argv: &'a [CString],
    pub envp: &'a [CString],
    /// Add `WATCHDOG_PID=<the command's pid>` to `envp`, written by the command's process.
    pub watchdog_pid: bool,
    pub workdir: &'a CString,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// O_CLOEXEC pipe: closed by a successful exec, or carries (stage, errno) records.
    pub report: RawFd,
    pub credentials: Option<Ids<'a>>,
    /// Open `tasks`/`cgroup.procs` files: writing "0" moves the writer, so the unit is inside
    /// its cgroup before its first instruction. Skipped when `clone_into` took.
    pub join_cgroups: &'a [RawFd],
    /// A v2 cgroup directory to create the child in with clone3's CLONE_INTO_CGROUP.
    pub clone_into: Option<RawFd>,
    /// `[oom] score-adjust`, pre-formatted: written to /proc/self/oom_score_adj while still
    /// privileged (lowering it needs CAP_SYS_RESOURCE).
    pub oom_score_adj: Option<&'a [u8]>,
    /// The RLIMIT_NOFILE corral was started with, when corral raised its own (see
    /// `raise_open_files_limit`): the unit gets the limit it would have had without corral.
    pub open_files_limit: Option<libc::rlimit64>,
    pub isolation: Isolation<'a>,
    pub privileges: Privileges,
}

/// The namespaces the child enters, in the order `exec_child` builds them.
#[derive(Default)]
pub struct Isolation<'a> {
    /// Namespaces of a running process to enter rather than create (a health probe joining
    /// its unit), user last: entering it first would lose the rights to enter the others.
    pub enter: &'a [(RawFd, libc::c_int)],
    /// That process's pid namespace and corral's own: the parent enters the first around the
    /// clone and returns to the second, since a pid namespace is entered by one's children.
    pub enter_pid: Option<(RawFd, RawFd)>,
    /// Cloned into a new pid namespace: the child is its PID 1, stays there as the helper
    /// init (see `helper_init`) and forks the command, which is PID 2.
    pub pid: Option<PidHelper>,
    /// A new mount namespace with private propagation. Every mount is made before the user
    /// namespace, while the child still holds corral's privileges.
    pub mount: bool,
    pub private_tmp: bool,
    pub read_only: &'a [CString],
    /// A new user namespace: the child stops after unsharing it until the parent has written
    /// its id maps and sends `GO` on the first fd. The second is the parent's write end, which
    /// the child closes, so that a parent that dies lets it see EOF rather than wait forever.
    pub user_go: Option<(RawFd, RawFd)>,
    /// CLONE_NEW{UTS,IPC,NET,CGROUP}: unshared after the user namespace, so they belong to it,
    /// and after joining the cgroups, so the cgroup namespace's root is the unit's cgroup.
    pub unshare: libc::c_int,
    pub hostname: Option<&'a [u8]>,
    pub loopback_up: bool,
}

/// What the helper init of a pid namespace needs.
pub struct PidHelper {
    /// Write end of the pipe that carries the command's raw wait status to corral, since a
    /// namespace's PID 1 cannot die by a signal it sends itself.
    pub status: RawFd,
    /// Every signal: the helper waits for them all with `sigwaitinfo`.
    pub all_signals: libc::sigset_t,
}

/// `[sandbox]` as the child applies it.
#[derive(Default, Clone, Copy)]
pub struct Privileges {
    pub no_new_privileges: bool,
    /// `Some(mask)`: keep only these capabilities, in every set (bit n is capability n).
    pub keep_capabilities: Option<u64>,
    /// The highest capability this kernel knows (/proc/sys/kernel/cap_last_cap).
    pub last_capability: u32,
}

const OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

pub struct Ids<'a> {
    pub uid: u32,
    pub gid: u32,
    /// `None`: leave the supplementary groups alone (setgroups is denied in the namespace).
    pub groups: Option<&'a [u32]>,
}

/// Linux has signals 1..=64; sigaction on the few glibc reserves fails harmlessly.
const NSIG: libc::c_int = 65;

/// The byte the parent sends on `user_go` once the id maps are written.
pub const GO: u8 = b'g';

/// Stages the child reports by index; keep in sync with the `stage::` constants.
const STAGE_NAMES: [&str; 27] = [
    "resetting signal dispositions",
    "setsid",
    "redirecting stdio",
    "setgroups",
    "setgid",
    "setuid",
    "chdir to working-dir",
    "execve",
    "joining the unit's cgroup",
    "setting oom_score_adj",
    "unsharing the mount namespace",
    "making mounts private",
    "mounting /proc for the pid namespace",
    "mounting a private /tmp",
    "making a read-only-paths entry read-only",
    "unsharing the user namespace",
    "unsharing namespaces",
    "setting the hostname",
    "bringing up loopback",
    "forking the command inside the pid namespace",
    "dropping capabilities from the bounding set",
    "setting capabilities",
    "raising ambient capabilities",
    "setting no-new-privileges",
    "entering the unit's namespaces",
    "the pid namespace's helper taking the command's ids",
    "making the process non-dumpable",
];

mod stage {
    pub const SETSID: u32 = 1;
    pub const STDIO: u32 = 2;
    pub const SETGROUPS: u32 = 3;
    pub const SETGID: u32 = 4;
    pub const SETUID: u32 = 5;
    pub const CHDIR: u32 = 6;
    pub const EXECVE: u32 = 7;
    pub const CGROUP: u32 = 8;
    pub const OOM_SCORE_ADJ: u32 = 9;
    pub const UNSHARE_MOUNT: u32 = 10;
    pub const PRIVATE_MOUNTS: u32 = 11;
    pub const PROC: u32 = 12;
    pub const PRIVATE_TMP: u32 = 13;
    /// 14 was a read-only-paths failure without its path; see `READ_ONLY_PATH`.
    pub const UNSHARE_USER: u32 = 15;
    pub const UNSHARE: u32 = 16;
    pub const HOSTNAME: u32 = 17;
    pub const LOOPBACK: u32 = 18;
    pub const FORK_COMMAND: u32 = 19;
    pub const BOUNDING: u32 = 20;
    pub const CAPSET: u32 = 21;
    pub const AMBIENT: u32 = 22;
    pub const NO_NEW_PRIVS: u32 = 23;
    pub const ENTER: u32 = 24;
    pub const HELPER_IDS: u32 = 25;
    pub const UNDUMPABLE: u32 = 26;
    /// Not a failure: the child has unshared its user namespace and waits for its id maps.
    pub const MAP_IDS: u32 = u32::MAX;
    /// `READ_ONLY_PATH + ReadOnlyProblem as u32`: a `read-only-paths` entry failed; the path
    /// follows the record (`fail_read_only`). Apart from the numbered stages above.
    pub const READ_ONLY_PATH: u32 = 0x4000_0000;
}

/// Clone; the child execs `plan` and never returns. Returns the child's pid, and whether
/// clone3 created it inside its cgroup (rather than the child writing itself in).
pub fn fork_and_exec(plan: &ExecPlan<'_>) -> Result<(i32, bool), Errno> {
    // NULL-terminated pointer arrays, built before fork (allocation is not allowed after).
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    // Room for "WATCHDOG_PID=" and a pid of up to 10 digits, NUL-terminated; the child, which
    // alone knows its pid, fills the digits into its own copy of this buffer.
    let mut watchdog_pid = *b"WATCHDOG_PID=\0\0\0\0\0\0\0\0\0\0\0";
    let watchdog_pid = plan.watchdog_pid.then(|| {
        let slot: *mut u8 = watchdog_pid.as_mut_ptr();
        envp.push(slot.cast_const().cast());
        slot
    });
    envp.push(std::ptr::null());

    if let Some((theirs, _)) = plan.isolation.enter_pid {
        // SAFETY: setns on a descriptor of ours; it changes only which pid namespace this
        // thread's next child is created in, and is undone right after the clone.
        if unsafe { libc::setns(theirs, libc::CLONE_NEWPID) } < 0 {
            return Err(Errno::last());
        }
    }
    // Block every signal across fork so no handler of ours runs in the child before the
    // dispositions are reset; the child unblocks all of them right before exec.
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write to the sets given.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let flags = if plan.isolation.pid.is_some() {
        libc::CLONE_NEWPID
    } else {
        0
    };
    // SAFETY: a raw clone without CLONE_VM is a fork (the child runs on a copy of this
    // stack); the child branch below only makes raw syscalls on memory prepared before it
    // and ends in execve or _exit. Raw rather than glibc's fork, because fork cannot create
    // a pid namespace or a process in a cgroup, and one path is easier to trust than two.
    let (pid, in_cgroup) = unsafe {
        match plan.clone_into.map(|dir| raw_clone3(flags, dir)) {
            Some(pid) if pid >= 0 => (pid, true),
            // Older kernels (ENOSYS, E2BIG) and cgroups clone3 refuses: the write path.
            _ => (raw_fork(flags), false),
        }
    };
    if pid == 0 {
        // SAFETY: we are the child of fork; see `exec_child`.
        unsafe { exec_child(plan, in_cgroup, watchdog_pid, argv.as_ptr(), envp.as_ptr()) }
    }
    let fork_errno = Errno::last();
    if let Some((_, ours)) = plan.isolation.enter_pid {
        // SAFETY: as above; our own active pid namespace is always one we may return to.
        if unsafe { libc::setns(ours, libc::CLONE_NEWPID) } < 0 {
            tracing::error!(
                "returning to corral's own pid namespace after a probe's clone: {}; \
                 later children may be born in a unit's",
                Errno::last()
            );
        }
    }
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    if pid < 0 {
        return Err(fork_errno);
    }
    Ok((pid, in_cgroup))
}

/// `clone(flags | SIGCHLD)` with no new stack: fork semantics, plus namespace flags.
///
/// # Safety
/// The child shares nothing with the parent but a copy of its memory, and glibc in it still
/// believes the process has the parent's threads: the child may only make raw syscalls
/// (which is why set*id below are raw: glibc's wrappers would signal the parent's threads).
unsafe fn raw_fork(flags: libc::c_int) -> libc::pid_t {
    // SAFETY: see the function's contract; with a NULL stack the other arguments are unused,
    // whatever their order on this architecture.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_long::from(flags | libc::SIGCHLD),
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t
    }
}

/// clone3 into the v2 cgroup `dir`: fork semantics, plus namespace flags, in the cgroup from
/// the first instruction without the threadgroup lock a `cgroup.procs` write takes.
///
/// # Safety
/// As `raw_fork`.
unsafe fn raw_clone3(flags: libc::c_int, dir: RawFd) -> libc::pid_t {
    /// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: flags as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        // No stack: the child runs on a copy of ours, as after fork.
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: dir as u64,
    };
    // SAFETY: clone3 reads `size_of::<CloneArgs>()` bytes of `args`; see `raw_fork`.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        ) as libc::pid_t
    }
}

/// One record of the report pipe.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// The pipe closed empty: exec succeeded.
    Executed,
    /// The child unshared its user namespace and waits for its id maps.
    MapIds,
    Failed {
        stage: &'static str,
        errno: Errno,
    },
    /// A `read-only-paths` entry could not be made read-only.
    ReadOnlyPath {
        path: String,
        problem: ReadOnlyProblem,
        errno: Errno,
    },
}

/// Reads the child's next report record.
pub fn read_report(report: &OwnedFd) -> Report {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: reads into a local buffer within its bounds.
        let n = unsafe {
            libc::read(
                report.as_raw_fd(),
                buf[filled..].as_mut_ptr().cast(),
                buf.len() - filled,
            )
        };
        if n < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                // Not knowing is not success: the caller treats the start as failed.
                errno => {
                    return Report::Failed {
                        stage: "reading the child's exec report",
                        errno,
                    };
                }
            }
        }
        if n == 0 {
            break;
        }
        filled += n as usize;
    }
    // Closed empty by the exec. (The child writes 8 bytes at once, and a pipe write that small
    // is atomic, so a short record cannot happen.)
    if filled < buf.len() {
        return Report::Executed;
    }
    let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if stage == stage::MAP_IDS {
        return Report::MapIds;
    }
    if let Some(&problem) = ReadOnlyProblem::ALL.iter().find(|p| p.stage() == stage) {
        // The child wrote the path with the record and exited: read to EOF, bounded.
        let mut path = Vec::new();
        let mut chunk = [0u8; 512];
        while path.len() < libc::PIPE_BUF {
            // SAFETY: reads into a local buffer within its bounds.
            let n =
                unsafe { libc::read(report.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            path.extend_from_slice(&chunk[..n as usize]);
        }
        return Report::ReadOnlyPath {
            path: String::from_utf8_lossy(&path).into_owned(),
            problem,
            errno: Errno::from_raw(errno),
        };
    }
    Report::Failed {
        stage: STAGE_NAMES.get(stage as usize).copied().unwrap_or("setup"),
        errno: Errno::from_raw(errno),
    }
}

/// The child side. Never returns.
///
/// # Safety
/// Must be called only in the child right after fork, with `argv`/`envp` NULL-terminated
/// arrays of pointers into `plan`, all of which stay valid (the child owns a copy of memory).
unsafe fn exec_child(
    plan: &ExecPlan<'_>,
    in_cgroup: bool,
    watchdog_pid: Option<*mut u8>,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    // SAFETY (whole body): only raw syscalls and libc wrappers listed as async-signal-safe in
    // signal-safety(7), on fds and memory prepared before fork.
    unsafe {
        // First of all, before this process is in any of the unit's namespaces (a probe is
        // born in its pid namespace): see `undumpable`. A child that builds a user namespace
        // waits with it until its id maps are written (in `isolate`), since a non-dumpable
        // process's /proc files belong to root, and a corral that is not root could not write
        // them; until then it shares no namespace with any process of a unit.
        if plan.isolation.user_go.is_none() {
            undumpable(plan.report);
        }
        // Default dispositions for every signal: exec resets handled signals but keeps
        // ignored ones (Rust's runtime ignores SIGPIPE, for one).
        //
        // The raw rt_sigaction, not glibc's wrapper: glibc refuses (EINVAL) to touch the two
        // signals it reserves (32, 33), yet its posix_spawn leaves them SIG_IGN in children, so
        // a corral started by e.g. a Rust program would pass them on ignored to every unit.
        // An all-zero kernel `struct sigaction` is SIG_DFL, no flags, empty mask, whatever the
        // architecture's field order; the last argument is the kernel sigset size (64 bits).
        let dfl = [0u64; 4];
        for signal in 1..NSIG {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        // Lowering a soft limit never fails; nothing to report.
        if let Some(limit) = &plan.open_files_limit {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_NOFILE,
                std::ptr::from_ref(limit),
                std::ptr::null_mut::<libc::rlimit64>(),
            );
        }
        for &fd in plan.join_cgroups.iter().filter(|_| !in_cgroup) {
            if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                fail(plan.report, stage::CGROUP);
            }
        }
        if let Some(value) = plan.oom_score_adj {
            let fd = libc::open(OOM_SCORE_ADJ.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, value.as_ptr().cast(), value.len()) < 0 {
                fail(plan.report, stage::OOM_SCORE_ADJ);
            }
            libc::close(fd);
        }
        isolate(plan);
        // Before the helper forks, so that the helper, which stays in the unit's namespaces,
        // is as bounded as the command (it never execs, and keeps the effective capabilities
        // it needs to pass signals on).
        let privileges = plan.privileges;
        if let Some(keep) = privileges.keep_capabilities {
            drop_bounding_set(plan.report, keep, privileges.last_capability);
        }
        if privileges.no_new_privileges && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(plan.report, stage::NO_NEW_PRIVS);
        }
        if let Some(helper) = &plan.isolation.pid {
            // PID 1 of the new namespace: the command becomes our child, we its init.
            if libc::setsid() < 0 {
                fail(plan.report, stage::SETSID);
            }
            // The helper is non-dumpable already (see `undumpable`), so there is no moment
            // when the command could trace it: root of a user namespace holds CAP_SYS_PTRACE
            // there, and the helper is still corral's (host root) underneath. The command
            // inherits that; its exec makes it dumpable again.
            let command = raw_fork(0);
            if command < 0 {
                fail(plan.report, stage::FORK_COMMAND);
            }
            if command > 0 {
                // Inside a user namespace the helper needs no more than the command's ids to
                // reap and pass signals on; it gives up host root (after the fork: the command
                // still needs the privileges for its own setup).
                // Nor does it keep corral's supplementary groups, where it may drop them.
                if plan.isolation.user_go.is_some()
                    && let Some(ids) = &plan.credentials
                {
                    if let Some(groups) = ids.groups
                        && libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
                    {
                        fail(plan.report, stage::HELPER_IDS);
                    }
                    if libc::syscall(libc::SYS_setresgid, ids.gid, ids.gid, ids.gid) < 0
                        || libc::syscall(libc::SYS_setresuid, ids.uid, ids.uid, ids.uid) < 0
                    {
                        fail(plan.report, stage::HELPER_IDS);
                    }
                    undumpable(plan.report);
                }
                helper_init(command, helper, plan.stdin)
            }
        }
        if libc::setsid() < 0 {
            fail(plan.report, stage::SETSID);
        }
        for (from, to) in [(plan.stdin, 0), (plan.stdout, 1), (plan.stderr, 2)] {
            // dup2 clears O_CLOEXEC on the new descriptor, so exactly 0..=2 survive exec.
            if libc::dup2(from, to) < 0 {
                fail(plan.report, stage::STDIO);
            }
        }
        if privileges.keep_capabilities.is_some() {
            // Keep the permitted set across setuid, so the kept capabilities can be raised
            // as ambient ones for a unit that does not run as root.
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
                fail(plan.report, stage::CAPSET);
            }
        }
        if let Some(ids) = &plan.credentials {
            if let Some(groups) = ids.groups
                && libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
            {
                fail(plan.report, stage::SETGROUPS);
            }
            if libc::syscall(libc::SYS_setresgid, ids.gid, ids.gid, ids.gid) < 0 {
                fail(plan.report, stage::SETGID);
            }
            undumpable(plan.report);
            if libc::syscall(libc::SYS_setresuid, ids.uid, ids.uid, ids.uid) < 0 {
                fail(plan.report, stage::SETUID);
            }
            undumpable(plan.report);
        }
        match privileges.keep_capabilities {
            Some(keep) => set_capabilities(plan.report, keep, privileges.last_capability),
            // Whatever corral inherited stays corral's: an inheritable capability would be
            // gained again by the exec of a file that has it in its own inheritable set.
            None => clear_inheritable_capabilities(plan.report),
        }
        if libc::chdir(plan.workdir.as_ptr()) < 0 {
            fail(plan.report, stage::CHDIR);
        }
        if let Some(slot) = watchdog_pid {
            write_own_pid(slot.add(b"WATCHDOG_PID=".len()));
        }
        close_everything_above_stderr(plan.report);
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.path.as_ptr(), argv, envp);
        fail(plan.report, stage::EXECVE)
    }
}

/// Builds the namespaces of `plan.isolation` around the child, failing it on any error.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn isolate(plan: &ExecPlan<'_>) {
    let iso = &plan.isolation;
    let report = plan.report;
    // SAFETY: raw syscalls on strings prepared before fork.
    unsafe {
        for &(fd, kind) in iso.enter {
            if libc::setns(fd, kind) < 0 {
                fail(report, stage::ENTER);
            }
        }
        if iso.mount {
            if libc::unshare(libc::CLONE_NEWNS) < 0 {
                fail(report, stage::UNSHARE_MOUNT);
            }
            // A systemd host makes / shared; without this, every mount below would
            // propagate back to the host.
            let none = std::ptr::null::<libc::c_char>();
            if libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                null(),
            ) < 0
            {
                fail(report, stage::PRIVATE_MOUNTS);
            }
            let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
            // procfs shows the pid namespace of the process that mounts it: ours, as its PID 1.
            if iso.pid.is_some()
                && libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    nosuid_nodev | libc::MS_NOEXEC,
                    null(),
                ) < 0
            {
                fail(report, stage::PROC);
            }
            for path in iso.read_only {
                make_read_only(report, path);
            }
            // After the read-only binds (docs/isolation.md): with `read-only-paths = ["/"]` the
            // fresh /tmp stays writable. Entries at or under /tmp are refused when loading.
            if iso.private_tmp
                && libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    nosuid_nodev,
                    c"mode=1777".as_ptr().cast(),
                ) < 0
            {
                fail(report, stage::PRIVATE_TMP);
            }
        }
        if let Some((go, parents_end)) = iso.user_go {
            libc::close(parents_end);
            if libc::unshare(libc::CLONE_NEWUSER) < 0 {
                fail(report, stage::UNSHARE_USER);
            }
            send_record(report, stage::MAP_IDS, 0);
            let mut answer = 0u8;
            let n = loop {
                let n = libc::read(go, (&raw mut answer).cast(), 1);
                if !(n < 0 && *libc::__errno_location() == libc::EINTR) {
                    break n;
                }
            };
            if n != 1 || answer != GO {
                // The parent could not write the maps; it reports why and reaps us.
                libc::_exit(127);
            }
            // Before anything else of the unit can share this namespace (the command,
            // forked by the pid namespace's helper, is root in it): see `undumpable`.
            undumpable(report);
        }
        if iso.unshare != 0 && libc::unshare(iso.unshare) < 0 {
            fail(report, stage::UNSHARE);
        }
        if let Some(name) = iso.hostname
            && libc::syscall(libc::SYS_sethostname, name.as_ptr(), name.len()) < 0
        {
            fail(report, stage::HOSTNAME);
        }
        if iso.loopback_up && !loopback_up() {
            fail(report, stage::LOOPBACK);
        }
    }
}

fn null() -> *const libc::c_void {
    std::ptr::null()
}

/// Bind `path` onto itself and make it read-only, with everything mounted below it, without
/// following a symlink anywhere in it: the unit's user may own a directory on the way and swap
/// a component for a symlink to a place it can write (docs/isolation.md, "read-only-paths").
/// The path is opened once and everything after works on that descriptor; at the end, the path
/// must still lead (without symlinks) to the same object, now read-only, or the start fails.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn make_read_only(report: RawFd, path: &CStr) {
    // SAFETY: raw syscalls on a string prepared before fork and on our own descriptors.
    unsafe {
        let pinned = match open_without_symlinks(path) {
            Ok(fd) => fd,
            Err(errno) => fail_read_only(report, ReadOnlyProblem::Resolve, errno, path),
        };
        let bound = match bind_read_only(pinned) {
            Ok(bound) => bound,
            Err(errno) => fail_read_only(report, ReadOnlyProblem::Mount, errno, path),
        };
        // Reopened by name: this lands on the top of whatever is mounted there now.
        let now = match open_without_symlinks(path) {
            Ok(fd) => fd,
            Err(errno) => fail_read_only(report, ReadOnlyProblem::Changed, errno, path),
        };
        if !same_object(pinned, now) {
            fail_read_only(report, ReadOnlyProblem::Changed, 0, path);
        }
        match bound {
            // The name leads onto the very mount made read-only.
            Bound::ReadOnly { mount } => {
                if mount_id(now) != Some(mount) {
                    fail_read_only(report, ReadOnlyProblem::Changed, 0, path);
                }
            }
            // Before mount_setattr (5.12): a bind remount of the top mount, the one the name
            // leads to now (only it is read-only then, as docs/isolation.md says).
            Bound::Writable => {
                let mut buf = [0u8; 32];
                let target = proc_fd_path(now, &mut buf);
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                let none = std::ptr::null::<libc::c_char>();
                if libc::mount(none, target, none, flags, null()) < 0 {
                    fail_read_only(report, ReadOnlyProblem::Mount, errno(), path);
                }
            }
        }
        libc::close(now);
        libc::close(pinned);
    }
}

/// What went wrong with one `read-only-paths` entry; its report record carries the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnlyProblem {
    /// It could not be opened without following a symlink (ELOOP), or does not exist.
    Resolve,
    /// The read-only bind itself failed.
    Mount,
    /// By the end of the mount, the path no longer led to what was bound read-only.
    Changed,
}

impl ReadOnlyProblem {
    const ALL: [ReadOnlyProblem; 3] = [
        ReadOnlyProblem::Resolve,
        ReadOnlyProblem::Mount,
        ReadOnlyProblem::Changed,
    ];

    fn stage(self) -> u32 {
        stage::READ_ONLY_PATH + self as u32
    }
}

/// `path` opened `O_PATH`, with no symlink (nor /proc magic link) followed in any component.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn open_without_symlinks(path: &CStr) -> Result<RawFd, i32> {
    /// `struct open_how` of openat2(2).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 reads `how` within its size; the path is NUL-terminated.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &raw const how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    match fd {
        fd if fd >= 0 => Ok(fd as RawFd),
        // Before openat2 (5.6): the same, one component at a time.
        _ if errno() == libc::ENOSYS => {
            // SAFETY: child-side, as this function.
            unsafe { open_by_components(path.to_bytes()) }
        }
        _ => Err(errno()),
    }
}

/// `open_without_symlinks` by hand: each component opened `O_PATH|O_NOFOLLOW` below the one
/// before, and refused (ELOOP) when what it opened is a symlink.
///
/// # Safety
/// Child-side only; raw syscalls on a stack buffer.
unsafe fn open_by_components(path: &[u8]) -> Result<RawFd, i32> {
    let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: openat/fstat/close on our own descriptors and NUL-terminated stack buffers.
    unsafe {
        let mut dir = libc::open(c"/".as_ptr(), flags);
        if dir < 0 {
            return Err(errno());
        }
        for component in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let mut name = [0u8; 256];
            if component.len() >= name.len() {
                libc::close(dir);
                return Err(libc::ENAMETOOLONG);
            }
            name[..component.len()].copy_from_slice(component);
            let next = libc::openat(dir, name.as_ptr().cast(), flags);
            let opened = if next < 0 { Err(errno()) } else { Ok(next) };
            libc::close(dir);
            dir = opened?;
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(dir, &mut st) < 0 || st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                let problem = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    libc::ELOOP
                } else {
                    errno()
                };
                libc::close(dir);
                return Err(problem);
            }
        }
        Ok(dir)
    }
}

/// What `bind_read_only` made.
enum Bound {
    /// The new mount API's way: the copy was made read-only, with everything below it, before
    /// it was attached. `mount` is its mount id.
    ReadOnly { mount: u64 },
    /// A classic bind, which the caller still has to remount read-only.
    Writable,
}

/// Binds what `pinned` refers to onto itself: with the new mount API (open_tree, mount_setattr
/// and move_mount, Linux 5.12), or on older kernels with a classic bind through
/// `/proc/self/fd`, which leads to the object `pinned` holds whatever its name is now.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn bind_read_only(pinned: RawFd) -> Result<Bound, i32> {
    let empty = c"".as_ptr();
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: raw syscalls on our descriptors, an empty path and `attr` on our stack.
    unsafe {
        if is_process_root(pinned) {
            // A mount stacked on `/` stays invisible: a path that starts at `/` begins at the
            // process's root, under it. The unit's own copy of the root mounts (this is its
            // mount namespace) is made read-only in place instead.
            let set = libc::syscall(
                libc::SYS_mount_setattr,
                pinned,
                empty,
                (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
                &raw const attr,
                std::mem::size_of::<libc::mount_attr>(),
            );
            return match (set, mount_id(pinned)) {
                (0, Some(mount)) => Ok(Bound::ReadOnly { mount }),
                _ if set == 0 || errno() == libc::ENOSYS => Ok(Bound::Writable),
                _ => Err(errno()),
            };
        }
        let tree = libc::syscall(
            libc::SYS_open_tree,
            pinned,
            empty,
            libc::OPEN_TREE_CLONE
                | libc::OPEN_TREE_CLOEXEC
                | libc::AT_EMPTY_PATH as libc::c_uint
                | libc::AT_RECURSIVE as libc::c_uint,
        );
        if tree >= 0 {
            let tree = tree as RawFd;
            let set = libc::syscall(
                libc::SYS_mount_setattr,
                tree,
                empty,
                (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
                &raw const attr,
                std::mem::size_of::<libc::mount_attr>(),
            );
            let mount = mount_id(tree);
            if set == 0
                && let Some(mount) = mount
            {
                let moved = libc::syscall(
                    libc::SYS_move_mount,
                    tree,
                    empty,
                    pinned,
                    empty,
                    libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
                );
                let result = if moved == 0 {
                    Ok(Bound::ReadOnly { mount })
                } else {
                    Err(errno())
                };
                libc::close(tree);
                return result;
            }
            let problem = if set == 0 { libc::ENOSYS } else { errno() };
            libc::close(tree);
            if problem != libc::ENOSYS {
                return Err(problem);
            }
        } else if errno() != libc::ENOSYS {
            return Err(errno());
        }
        // /proc/self/fd/N leads to the very object `pinned` holds, whatever its name is now.
        let mut buf = [0u8; 32];
        let path = proc_fd_path(pinned, &mut buf);
        let none = std::ptr::null::<libc::c_char>();
        if libc::mount(path, path, none, libc::MS_BIND | libc::MS_REC, null()) < 0 {
            return Err(errno());
        }
        Ok(Bound::Writable)
    }
}

/// Whether `fd` is this process's root directory.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn is_process_root(fd: RawFd) -> bool {
    // SAFETY: open and close of our own descriptor.
    unsafe {
        let root = libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
        let same = root >= 0 && same_object(fd, root);
        if root >= 0 {
            libc::close(root);
        }
        same
    }
}

/// Whether two descriptors refer to the same file (device and inode).
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn same_object(a: RawFd, b: RawFd) -> bool {
    // SAFETY: fstat into stack buffers.
    unsafe {
        let mut sa: libc::stat = std::mem::zeroed();
        let mut sb: libc::stat = std::mem::zeroed();
        libc::fstat(a, &mut sa) == 0
            && libc::fstat(b, &mut sb) == 0
            && (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    }
}

/// The id of the mount `fd` is on (statx `STATX_MNT_ID`, Linux 5.8).
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn mount_id(fd: RawFd) -> Option<u64> {
    // SAFETY: statx writes into a zeroed struct on our stack; the path is empty.
    unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        let rc = libc::syscall(
            libc::SYS_statx,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &raw mut st,
        );
        (rc == 0 && st.stx_mask & libc::STATX_MNT_ID != 0).then_some(st.stx_mnt_id)
    }
}

/// Writes `/proc/self/fd/<fd>` NUL-terminated into `buf`; returns it as a C string pointer.
fn proc_fd_path(fd: RawFd, buf: &mut [u8; 32]) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut left = fd.unsigned_abs();
    loop {
        digits[n] = b'0' + (left % 10) as u8;
        n += 1;
        left /= 10;
        if left == 0 || n == digits.len() {
            break;
        }
    }
    for i in 0..n {
        buf[PREFIX.len() + i] = digits[n - 1 - i];
    }
    buf[PREFIX.len() + n] = 0;
    buf.as_ptr().cast()
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno, always valid to read.
    unsafe { *libc::__errno_location() }
}

/// Reports a failed `read-only-paths` entry with its path, and exits 127.
///
/// # Safety
/// Child-side only.
unsafe fn fail_read_only(report: RawFd, problem: ReadOnlyProblem, errno: i32, path: &CStr) -> ! {
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&problem.stage().to_ne_bytes());
    header[4..].copy_from_slice(&errno.to_ne_bytes());
    let path = path.to_bytes();
    // One write of at most PIPE_BUF bytes is atomic; a longer path is cut (the reader reads
    // the record and then whatever follows, to EOF).
    let path = &path[..path.len().min(libc::PIPE_BUF - header.len())];
    let parts = [
        libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: path.as_ptr().cast_mut().cast(),
            iov_len: path.len(),
        },
    ];
    // SAFETY: writev of two buffers on our stack and in our memory, then _exit.
    unsafe {
        libc::writev(report, parts.as_ptr(), 2);
        libc::_exit(127)
    }
}

/// `ip link set lo up`, through the SIOC[GS]IFFLAGS ioctls on a throwaway socket.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn loopback_up() -> bool {
    // struct ifreq: 16 bytes of name, then a union whose first member is `short ifr_flags`.
    let mut ifreq = [0u8; 40];
    ifreq[..2].copy_from_slice(b"lo");
    // SAFETY: the ioctls read and write within the 40-byte ifreq, the size the kernel uses.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return false;
        }
        let ok = libc::ioctl(sock, libc::SIOCGIFFLAGS, ifreq.as_mut_ptr()) == 0 && {
            let flags = i16::from_ne_bytes([ifreq[16], ifreq[17]]) | libc::IFF_UP as i16;
            ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
            libc::ioctl(sock, libc::SIOCSIFFLAGS, ifreq.as_mut_ptr()) == 0
        };
        libc::close(sock);
        ok
    }
}

/// Makes this process non-dumpable until its exec (which decides again, from the new ids and
/// program). A unit's root holds CAP_SYS_PTRACE in its user namespace, and so may trace any
/// process there, and any process of its uid, that is dumpable; a non-dumpable one only with
/// CAP_SYS_PTRACE in the namespace that owns its memory, corral's (ptrace(2), "Ptrace access
/// mode checking"). That keeps a child unreachable while it is still as privileged as corral.
///
/// Called again after each change of ids: the kernel resets dumpability on such a change to
/// fs.suid_dumpable, which is 0 by default; with 1 ("debug", documented as insecure) the
/// process would be dumpable again (see docs/operations.md for what is left then).
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn undumpable(report: RawFd) {
    // SAFETY: prctl with integer arguments only; `fail` is child-side as this function.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 {
            fail(report, stage::UNDUMPABLE);
        }
    }
}

/// Empties the inheritable and ambient sets, and leaves the others as they are.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn clear_inheritable_capabilities(report: RawFd) {
    // SAFETY: child-side raw syscalls, as this function is.
    unsafe {
        let (mut header, mut data) = capabilities(report);
        // Lowering the inheritable set needs no privilege.
        if data.iter().any(|d| d.inheritable != 0) {
            for d in &mut data {
                d.inheritable = 0;
            }
            set_capability_sets(report, &mut header, &data);
        }
        clear_ambient(report);
    }
}

/// The calling thread's capability sets (capget(2), version 3).
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn capabilities(report: RawFd) -> (CapHeader, [CapData; 2]) {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes the two-element array version 3 defines.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) } < 0 {
        // SAFETY: child-side, as this function is.
        unsafe { fail(report, stage::CAPSET) };
    }
    (header, data)
}

/// capset(2) of `data`, the header `capabilities` gave.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn set_capability_sets(report: RawFd, header: &mut CapHeader, data: &[CapData; 2]) {
    // SAFETY: capset reads the two-element array version 3 defines.
    if unsafe { libc::syscall(libc::SYS_capset, header as *mut CapHeader, data.as_ptr()) } < 0 {
        // SAFETY: child-side, as this function is.
        unsafe { fail(report, stage::CAPSET) };
    }
}

/// Empties the ambient set.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn clear_ambient(report: RawFd) {
    let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
    // SAFETY: a prctl that takes no pointers.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, clear, 0, 0, 0) } < 0 {
        // SAFETY: child-side, as this function is.
        unsafe { fail(report, stage::AMBIENT) };
    }
}

/// `struct __user_cap_header_struct` of capget(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct` of capget(2); version 3 takes two (capabilities 0..64).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability not in `keep` from the bounding set.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn drop_bounding_set(report: RawFd, keep: u64, last: u32) {
    for cap in 0..=last.min(63) {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
            // SAFETY: child-side, as this function.
            unsafe { fail(report, stage::BOUNDING) };
        }
    }
}

/// Effective, permitted and inheritable become `keep` (as far as the process holds them), the
/// ambient set exactly `keep`, so a non-root command still has them after exec.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn set_capabilities(report: RawFd, keep: u64, last: u32) {
    // SAFETY: child-side raw syscalls, as this function is.
    unsafe {
        let (mut header, mut data) = capabilities(report);
        for (i, d) in data.iter_mut().enumerate() {
            let keep = (keep >> (32 * i)) as u32;
            d.permitted &= keep;
            d.effective = d.permitted;
            d.inheritable = d.permitted;
        }
        set_capability_sets(report, &mut header, &data);
        clear_ambient(report);
        for cap in 0..=last.min(63) {
            let held = data[(cap / 32) as usize].permitted & (1 << (cap % 32)) != 0;
            let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
            if held && libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, 0, 0) < 0 {
                fail(report, stage::AMBIENT);
            }
        }
    }
}

/// PID 1 of a unit's pid namespace: reaps every orphan there, passes every signal on to every
/// process of the namespace, and when the command ends, hands its raw wait status to corral
/// and exits with the command's code (or 128 + signal). Never returns.
///
/// # Safety
/// Child-side only; raw syscalls. Every signal is still blocked from the fork, which is what
/// lets `sigwaitinfo` receive them: a namespace init drops unblocked signals it has no
/// handler for.
unsafe fn helper_init(command: libc::pid_t, helper: &PidHelper, null: RawFd) -> ! {
    // SAFETY: raw syscalls on our own fds and stack.
    unsafe {
        // Hold nothing of corral's: its sockets and the unit's pipes must close when their
        // owners close them, not when this helper exits.
        for to in 0..=2 {
            libc::dup2(null, to);
        }
        close_all_above_stderr_but(helper.status);
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let signal = libc::sigwaitinfo(&helper.all_signals, &mut info);
            if signal == libc::SIGCHLD {
                loop {
                    let mut status: libc::c_int = 0;
                    let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if pid <= 0 {
                        break;
                    }
                    if pid == command {
                        let bytes = status.to_ne_bytes();
                        libc::write(helper.status, bytes.as_ptr().cast(), bytes.len());
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        };
                        // The kernel SIGKILLs whatever is left in the namespace.
                        libc::_exit(code);
                    }
                }
            } else if signal > 0 {
                // kill(-1) from a namespace's init reaches every process in it but the init:
                // what corral's signal to the unit's cgroup reaches without a namespace.
                libc::kill(-1, signal);
            }
        }
    }
}

/// Closes every descriptor above 2 except `keep`.
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn close_all_above_stderr_but(keep: RawFd) {
    let keep = keep as u32;
    // SAFETY: close_range closes descriptors only.
    unsafe {
        let below = keep <= 3 || libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32) == 0;
        let above = libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32) == 0;
        if below && above {
            return;
        }
        for fd in 3..1024 {
            if fd != keep as RawFd {
                libc::close(fd);
            }
        }
    }
}

/// Writes this process's pid in decimal at `out`, which has room for 10 digits and a NUL.
///
/// # Safety
/// Child-side only; `out` must point into the child's own (copied) memory.
unsafe fn write_own_pid(out: *mut u8) {
    // SAFETY: getpid has no arguments; the writes stay within the 11 bytes the caller owns.
    unsafe {
        let mut pid = libc::syscall(libc::SYS_getpid) as u64;
        let mut digits = [0u8; 10];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 || n == digits.len() {
                break;
            }
        }
        for i in 0..n {
            *out.add(i) = digits[n - 1 - i];
        }
        *out.add(n) = 0;
    }
}

/// Marks every fd above 2 close-on-exec (the report pipe must live until exec itself).
///
/// # Safety
/// Child-side only; raw syscalls.
unsafe fn close_everything_above_stderr(report: RawFd) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    unsafe {
        let rc = libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if rc == 0 {
            return;
        }
        // Before Linux 5.11: walk the table up to the soft limit.
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as i32
        } else {
            1024
        };
        for fd in 3..max {
            if fd != report {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// Report (stage, errno) to the parent and exit 127, as a shell does for a failed exec.
///
/// # Safety
/// Child-side only.
unsafe fn fail(report: RawFd, stage: u32) -> ! {
    // SAFETY: errno read, a pipe write and _exit, all async-signal-safe.
    unsafe {
        send_record(report, stage, *libc::__errno_location());
        libc::_exit(127)
    }
}

/// Writes one (stage, errno) record to the report pipe.
///
/// # Safety
/// Child-side only.
unsafe fn send_record(report: RawFd, stage: u32, errno: i32) {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&stage.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write of a stack buffer; a pipe write of 8 bytes is atomic.
    unsafe {
        libc::write(report, buf.as_ptr().cast(), buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(path: &std::path::Path) -> CString {
        CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
    }

    #[test]
    fn paths_open_only_without_symlinks_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("below")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let through = dir.path().join("link").join("below");
        let at_the_end = dir.path().join("link");
        let fine = real.join("below");
        // SAFETY: the functions only make syscalls on the paths and their own descriptors.
        unsafe {
            for (path, want) in [
                (&fine, Ok(())),
                (&through, Err(libc::ELOOP)),
                (&at_the_end, Err(libc::ELOOP)),
                (&dir.path().join("none"), Err(libc::ENOENT)),
            ] {
                let path = c(path);
                let by_openat2 = open_without_symlinks(&path);
                let by_components = open_by_components(path.to_bytes());
                assert_eq!(by_openat2.map(drop), want, "openat2 {path:?}");
                assert_eq!(by_components.map(drop), want, "components {path:?}");
                if let (Ok(a), Ok(b)) = (by_openat2, by_components) {
                    assert!(same_object(a, b), "{path:?}");
                    libc::close(a);
                    libc::close(b);
                }
            }
        }
        let mut buf = [0u8; 32];
        let p = proc_fd_path(1234, &mut buf);
        // SAFETY: proc_fd_path NUL-terminated what it wrote into `buf`.
        assert_eq!(unsafe { CStr::from_ptr(p) }, c"/proc/self/fd/1234");
    }
}
