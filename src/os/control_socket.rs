//! The control socket's file-system side: a private directory, a 0600 (or group 0660) socket,
//! stale-socket recovery, and the peer's credentials.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, getsockopt, sockopt::PeerCredentials,
};
use nix::unistd::{Gid, chown};

use crate::os::owned_path::{self, Leaf, Unowned};

/// include/uapi/asm-generic/socket.h: the peer's supplementary groups as they were at
/// connect(2) (Linux 4.13).
const SO_PEERGROUPS: libc::c_int = 59;
/// include/uapi/asm-generic/socket.h: whether the socket accepts SCM_RIGHTS (Linux 6.16);
/// with 0 a sender's sendmsg(2) carrying file descriptors fails with EPERM.
const SO_PASSRIGHTS: libc::c_int = 83;
/// Connections waiting to be accepted; more make connect(2) wait (or fail with EAGAIN).
const LISTEN_BACKLOG: i32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another supervisor already answers on {0}")]
    InUse(PathBuf),
    #[error(
        "{path} exists and is {what}, not a socket: corral replaces only a stale socket there; \
         move it away or choose another --socket"
    )]
    NotASocket { path: PathBuf, what: &'static str },
    #[error("cannot tell whether the socket {path} is stale ({source}); remove it if it is")]
    CannotTell { path: PathBuf, source: io::Error },
    #[error(
        "socket directory {dir} {why}: another user could replace the socket; use a directory \
         only root or corral's user can write to, or a path whose directory corral creates"
    )]
    UnsafeDirectory { dir: PathBuf, why: String },
    #[error(
        "{operation} {path}: {source} (choose the socket's place with --socket or $CORRAL_SOCKET; \
         a restricted container has a writable tmpfs at /run, e.g. --socket /run/corral/control.sock)"
    )]
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

/// Whether the peer was a member of `gid` when it connected: its primary group (SO_PEERCRED)
/// or one of its supplementary groups (SO_PEERGROUPS). Both are the kernel's record from
/// connect(2), not a later look at /proc a peer could race. Without SO_PEERGROUPS (before
/// Linux 4.13) only the primary group counts.
pub fn peer_in_group(stream: &UnixStream, peer: &Peer, gid: u32) -> bool {
    peer.gid == gid || peer_groups(stream).is_ok_and(|groups| groups.contains(&gid))
}

fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536: start small and grow to what the kernel says it needs (ERANGE).
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes of gid_t that the kernel fills; `len` is updated
        // to the bytes written (or, with ERANGE, needed).
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(error);
        }
        groups.resize(needed, 0);
    }
}

/// Binds `path`: directory 0700 (0750 with a group), socket 0600 (0660 with a group, owned by
/// it). A socket file nobody answers on is stale and replaced; a live one, or anything that is
/// not a socket, is an error, and so is a directory another user could write to. The socket
/// refuses file descriptors (SO_PASSRIGHTS off, inherited by every accepted connection): a
/// descriptor corral would have to close could block it (a lingering TCP socket). Returns the
/// listener and whether the kernel could refuse descriptors (Linux 6.16+).
pub fn bind(path: &Path, group: Option<Gid>) -> Result<(UnixListener, bool), SocketError> {
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
    check_directory(dir, nix::unistd::geteuid().as_raw())?;
    remove_stale(path)?;
    let (listener, refuses_fds) = listen(path)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))?;
    if let Some(gid) = group {
        chown(path, None, Some(gid))
            .map_err(|e| io_err("changing the group of", path)(e.into()))?;
    }
    Ok((listener, refuses_fds))
}

/// The socket's directory must be root's and corral's alone (os/owned_path.rs): writable by
/// no one else, and every directory above it, as named and as resolved, owned by root or
/// corral's user and writable by others only with the sticky bit. The notify sockets'
/// directory is held to the same.
pub fn check_directory(dir: &Path, own_uid: u32) -> Result<(), SocketError> {
    owned_path::check(dir, own_uid, Leaf::Directory).map_err(|e| match e {
        Unowned::Other { path, why } => SocketError::UnsafeDirectory { dir: path, why },
        Unowned::Io { path, source } => SocketError::Io {
            operation: "inspecting",
            path,
            source,
        },
    })
}

/// Removes a socket nobody answers on; anything else at `path` is left alone and refused.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspecting", path)(e)),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "a special file"
        };
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
            what,
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_owned())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            std::fs::remove_file(path).map_err(io_err("removing stale socket", path))
        }
        Err(source) => Err(SocketError::CannotTell {
            path: path.to_owned(),
            source,
        }),
    }
}

/// socket, SO_PASSRIGHTS off, bind and listen, in that order: a connection can only come in
/// once the socket already refuses descriptors.
fn listen(path: &Path) -> Result<(UnixListener, bool), SocketError> {
    let errno = |operation| move |e: nix::errno::Errno| io_err(operation, path)(e.into());
    let fd: OwnedFd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(errno("creating a socket for"))?;
    let off: libc::c_int = 0;
    // SAFETY: `off` is a c_int that lives across the call; the length says so.
    let refuses_fds = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&off as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    let addr = UnixAddr::new(path).map_err(errno("addressing"))?;
    // The socket is created with the umask's mode; narrow the umask so there is no window in
    // which another user could connect before the chmod that follows.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = nix::sys::socket::bind(fd.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.map_err(errno("binding"))?;
    let backlog = Backlog::new(LISTEN_BACKLOG).unwrap_or(Backlog::MAXCONN);
    nix::sys::socket::listen(&fd, backlog).map_err(errno("listening on"))?;
    Ok((UnixListener::from(fd), refuses_fds))
}

/// The socket path of docs/cli.md when neither `--socket` nor `$CORRAL_SOCKET` is given.
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
