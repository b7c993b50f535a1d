//! The control socket's file-system side: a private directory, a 0600 (or group 0660) socket,
//! stale-socket recovery, and the peer's credentials.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, chown};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another supervisor already answers on {0}")]
    InUse(PathBuf),
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("socket path {0} has no parent directory")]
    NoParent(PathBuf),
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SocketError {
    let path = path.to_owned();
    move |source| SocketError::Io {
        operation,
        path,
        source,
    }
}

/// Who is on the other end of a connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

pub fn peer(stream: &UnixStream) -> io::Result<Peer> {
    let cred = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

/// Binds `path`: directory 0700 (0750 with a group), socket 0600 (0660 with a group, owned by
/// it). A socket file nobody answers on is stale and replaced; a live one is an error.
pub fn bind(path: &Path, group: Option<Gid>) -> Result<UnixListener, SocketError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| SocketError::NoParent(path.to_owned()))?;
    let dir_mode = if group.is_some() { 0o750 } else { 0o700 };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)
            .map_err(io_err("creating directory", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
            .map_err(io_err("setting the mode of", dir))?;
        if let Some(gid) = group {
            chown(dir, None, Some(gid))
                .map_err(|e| io_err("changing the group of", dir)(e.into()))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_err("removing stale socket", path))?;
    }
    // The socket is created with the umask's mode; narrow the umask so there is no window in
    // which another user could connect before the chmod below.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err("binding", path))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))?;
    if let Some(gid) = group {
        chown(path, None, Some(gid))
            .map_err(|e| io_err("changing the group of", path)(e.into()))?;
    }
    listener
        .set_nonblocking(true)
        .map_err(io_err("setting O_NONBLOCK on", path))?;
    Ok(listener)
}

/// The socket path of SPEC 1 when neither `--socket` nor `$CORRAL_SOCKET` is given.
pub fn default_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/corral/control.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("corral/control.sock"),
        _ => PathBuf::from(format!(
            "/tmp/corral-{}/control.sock",
            nix::unistd::geteuid().as_raw()
        )),
    }
}
