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

use crate::unit::{Credentials, Exec};

/// The PATH a unit gets when its `env` does not set one (systemd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A started main process and the read ends of its output.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command {0:?} not found in PATH")]
    NotFound(String),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("{operation}: {errno}")]
    Setup {
        operation: &'static str,
        errno: Errno,
    },
    #[error("in the child, {stage} failed: {errno}")]
    Child { stage: &'static str, errno: Errno },
}

/// Who corral itself runs as, for units with no `user`.
pub fn own_identity() -> Credentials {
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

/// The environment of SPEC: what the unit gives, plus PATH, HOME, USER and LOGNAME of its user.
pub fn environment(exec: &Exec, who: &Credentials) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = exec.env.clone();
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

/// Start `exec` as `who`: inside the cgroups whose `cgroup.procs` are given, stdin from
/// /dev/null, stdout and stderr into fresh pipes, a new session, nothing else inherited.
pub fn spawn(
    exec: &Exec,
    who: Option<&Credentials>,
    join_cgroups: &[OwnedFd],
    oom_score_adj: Option<i32>,
) -> Result<Child, SpawnError> {
    let identity = match who {
        Some(c) => c.clone(),
        None => own_identity(),
    };
    let env = environment(exec, &identity);
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
    let envp = env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes(), "env"))
        .collect::<Result<Vec<_>, _>>()?;
    let workdir = match &exec.working_dir {
        Some(dir) => cstring(dir.as_os_str().as_bytes(), "working-dir")?,
        None => cstring(b"/", "working-dir")?,
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

    let join_fds: Vec<RawFd> = join_cgroups.iter().map(AsRawFd::as_raw_fd).collect();
    let oom_score_adj = oom_score_adj.map(|v| v.to_string().into_bytes());
    let plan = child::ExecPlan {
        path: &path,
        argv: &argv,
        envp: &envp,
        workdir: &workdir,
        stdin: null.as_raw_fd(),
        stdout: stdout_write.as_raw_fd(),
        stderr: stderr_write.as_raw_fd(),
        report: report_write.as_raw_fd(),
        join_cgroups: &join_fds,
        oom_score_adj: oom_score_adj.as_deref(),
        credentials: who.map(|c| child::Ids {
            uid: c.uid,
            gid: c.gid,
            groups: &c.groups,
        }),
    };
    let pid = child::fork_and_exec(&plan).map_err(|errno| SpawnError::Setup {
        operation: "fork",
        errno,
    })?;
    // The child holds its own copies; ours must close so EOF means the unit closed its output.
    drop((stdout_write, stderr_write, report_write, null));
    match child::read_report(&report_read) {
        None => Ok(Child {
            pid,
            stdout: stdout_read,
            stderr: stderr_read,
        }),
        Some((stage, errno)) => {
            // The child has already _exit(127)ed; the reaper will collect it and the core
            // ignores the pid, which it never learned.
            Err(SpawnError::Child { stage, errno })
        }
    }
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
    fn unit_env_wins_and_identity_fills_the_rest() {
        let exec = Exec {
            command: vec!["true".into()],
            working_dir: None,
            env: [("PATH".to_string(), "/opt/bin".to_string())].into(),
            user: None,
        };
        let who = Credentials {
            user_name: "www".into(),
            uid: 33,
            gid: 33,
            home: "/var/www".into(),
            groups: vec![],
        };
        let env = environment(&exec, &who);
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
