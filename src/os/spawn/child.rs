//! The only code that runs between fork and exec: raw, async-signal-safe syscalls on
//! pre-built data. The process may be multi-threaded, so the child must not allocate,
//! lock, or touch anything another thread could have held at fork time.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Everything the child needs, built before fork.
pub struct ExecPlan<'a> {
    pub path: &'a CString,
    pub argv: &'a [CString],
    pub envp: &'a [CString],
    pub workdir: &'a CString,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// O_CLOEXEC pipe: closed by a successful exec, or carries (stage, errno).
    pub report: RawFd,
    pub credentials: Option<Ids<'a>>,
    /// Open `cgroup.procs` files: writing "0" moves the writer, so the unit is inside its
    /// cgroup before its first instruction.
    pub join_cgroups: &'a [RawFd],
    /// `[oom] score-adjust`, pre-formatted: written to /proc/self/oom_score_adj while still
    /// privileged (lowering it needs CAP_SYS_RESOURCE).
    pub oom_score_adj: Option<&'a [u8]>,
}

const OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

pub struct Ids<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
}

/// Linux has signals 1..=64; sigaction on the few glibc reserves fails harmlessly.
const NSIG: libc::c_int = 65;

/// Stages the child reports by index; keep in sync with `STAGE_NAMES`.
const STAGE_NAMES: [&str; 10] = [
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
];

/// Fork; the child execs `plan` and never returns. Returns the child's pid.
pub fn fork_and_exec(plan: &ExecPlan<'_>) -> Result<i32, Errno> {
    // NULL-terminated pointer arrays, built before fork (allocation is not allowed after).
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());

    // Block every signal across fork so no handler of ours runs in the child before the
    // dispositions are reset; the child unblocks all of them right before exec.
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write to the sets given.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: fork is called with all signals blocked; the child branch below only makes
    // async-signal-safe calls on memory prepared before fork and ends in execve or _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the child of fork; see `exec_child`.
        unsafe { exec_child(plan, argv.as_ptr(), envp.as_ptr()) }
    }
    let fork_errno = Errno::last();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    if pid < 0 {
        return Err(fork_errno);
    }
    Ok(pid)
}

/// Reads the child's report: `None` when exec succeeded (the pipe closed empty).
pub fn read_report(report: &OwnedFd) -> Option<(&'static str, Errno)> {
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
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        filled += n as usize;
    }
    if filled < buf.len() {
        return None;
    }
    let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Some((
        STAGE_NAMES.get(stage).copied().unwrap_or("setup"),
        Errno::from_raw(errno),
    ))
}

/// The child side. Never returns.
///
/// # Safety
/// Must be called only in the child right after fork, with `argv`/`envp` NULL-terminated
/// arrays of pointers into `plan`, all of which stay valid (the child owns a copy of memory).
unsafe fn exec_child(
    plan: &ExecPlan<'_>,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    // SAFETY (whole body): only raw syscalls and libc wrappers listed as async-signal-safe in
    // signal-safety(7), on fds and memory prepared before fork.
    unsafe {
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
        for &fd in plan.join_cgroups {
            if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                fail(plan.report, 8);
            }
        }
        if let Some(value) = plan.oom_score_adj {
            let fd = libc::open(OOM_SCORE_ADJ.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, value.as_ptr().cast(), value.len()) < 0 {
                fail(plan.report, 9);
            }
            libc::close(fd);
        }
        if libc::setsid() < 0 {
            fail(plan.report, 1);
        }
        for (from, to) in [(plan.stdin, 0), (plan.stdout, 1), (plan.stderr, 2)] {
            // dup2 clears O_CLOEXEC on the new descriptor, so exactly 0..=2 survive exec.
            if libc::dup2(from, to) < 0 {
                fail(plan.report, 2);
            }
        }
        if let Some(ids) = &plan.credentials {
            if libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) < 0 {
                fail(plan.report, 3);
            }
            if libc::setgid(ids.gid) < 0 {
                fail(plan.report, 4);
            }
            if libc::setuid(ids.uid) < 0 {
                fail(plan.report, 5);
            }
        }
        if libc::chdir(plan.workdir.as_ptr()) < 0 {
            fail(plan.report, 6);
        }
        close_everything_above_stderr(plan.report);
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.path.as_ptr(), argv, envp);
        fail(plan.report, 7)
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
    // SAFETY: write of a stack buffer and _exit, both async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&stage.to_ne_bytes());
        buf[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(report, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}
