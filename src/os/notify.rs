//! The sd_notify door: a private directory of datagram sockets, one per unit, each open only to
//! the unit's own user, and the sender's credentials and passed fds on every message.
//!
//! Paths, not the abstract namespace: an abstract socket is open to every process of the
//! network namespace and its name can be taken first by anyone, where a file in a directory
//! only corral can write to is neither (systemd's `NOTIFY_SOCKET` is a path too). A path also
//! reaches a unit in its own network namespace. See docs/operations.md, "Notify sockets".

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg,
    setsockopt, socket, sockopt,
};

/// systemd reads at most this much of one datagram (its NOTIFY_BUFFER_MAX is PIPE_BUF);
/// the rest of a longer one is cut, as there.
const DATAGRAM_MAX: usize = 4096;
/// The most descriptors one message can carry (SCM_MAX_FD, include/net/scm.h). The control
/// buffer has room for all of them: files the kernel cannot install for us it closes itself,
/// in our thread, on its way back to user space, and such a close can block (a TCP socket
/// with SO_LINGER waits for its unsent data); received, they go to a closer thread instead.
pub const SCM_MAX_FD: usize = 253;
/// The directory's mode: corral alone writes to it (no one can put a file where a unit's
/// socket will be), and others may pass through to their own socket without listing the rest.
const DIR_MODE: u32 = 0o711;
/// Room in `sun_path` (unix(7)), the terminating NUL included.
const SUN_PATH_MAX: usize = 108;

#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
pub struct NotifyError {
    operation: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn fail(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NotifyError {
    let path = path.to_owned();
    move |source| NotifyError {
        operation,
        path,
        source,
    }
}

fn errno_fail(operation: &'static str, path: &Path) -> impl FnOnce(Errno) -> NotifyError {
    let path = path.to_owned();
    move |errno| NotifyError {
        operation,
        path,
        source: errno.into(),
    }
}

/// `--notify-dir` when not given: beside the control socket's default directory (not in it:
/// that one is 0700, and a unit running as another user must pass through this one).
pub fn default_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/corral-notify");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("corral-notify"),
        _ => PathBuf::from(format!("/tmp/corral-notify-{}", uid.as_raw())),
    }
}

/// The directory of the notify sockets, checked: a real directory owned by corral's user,
/// mode 0711.
#[derive(Debug)]
pub struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    /// Creates `path` (0711) or takes it over when it exists: it must be a directory, not a
    /// symlink, owned by corral's user and writable by no one else, or another user could
    /// place or replace a socket there; its mode is then narrowed to 0711.
    pub fn prepare(path: &Path) -> Result<NotifyDir, NotifyError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(fail("creating the parent of the notify directory", path))?;
        }
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(fail("creating the notify directory", path)(e));
            }
            _ => {}
        }
        // Checked after the create, whoever made it: a name someone else put there first (a
        // symlink, their own directory) is refused, not followed; and narrowed through the
        // descriptor checked, never by a path someone could swap for a symlink in between.
        let refuse = |why: &str| {
            fail("refusing the notify directory", path)(io::Error::other(why.to_owned()))
        };
        let dir = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(dir) => dir,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(refuse("not a directory (a symlink is not followed)"));
            }
            Err(e) => return Err(fail("opening the notify directory", path)(e)),
        };
        let meta = dir
            .metadata()
            .map_err(fail("inspecting the notify directory", path))?;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(refuse("owned by another user"));
        }
        dir.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(fail("setting the mode of the notify directory", path))?;
        // And every directory above it, as the control socket's: whoever may rename the notify
        // directory could put one of theirs in its place, with sockets of theirs in it.
        crate::os::control_socket::check_directory(path, nix::unistd::geteuid().as_raw())
            .map_err(|e| refuse(&e.to_string()))?;
        Ok(NotifyDir {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A unit's `$NOTIFY_SOCKET`. Dropping it unlinks the file; its descriptor is best closed off
/// the loop (`retire`), as closing it closes what queued messages carry.
#[derive(Debug)]
pub struct NotifySocket {
    fd: OwnedFd,
    file: SocketFile,
    owner: u32,
}

/// The socket's name in the directory, unlinked when dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One datagram and who sent it, as the kernel vouches (SCM_CREDENTIALS).
#[derive(Debug)]
pub struct Datagram {
    pub bytes: Vec<u8>,
    /// `None` when the kernel attached no credentials (it always does with SO_PASSCRED).
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    /// Descriptors that came with it (`BARRIER=1` sends one). Closing them ends the sender's
    /// barrier wait, and the sender may exit right then: so let go of them only after the
    /// sender has been checked against the unit, and never close them on the loop.
    pub fds: Vec<OwnedFd>,
    /// The kernel had to drop part of the control data (MSG_CTRUNC).
    pub truncated: bool,
}

/// Eight random bytes in hex: a name nobody can guess before the socket exists. Never
/// blocks, even as an early-boot PID 1 (GRND_INSECURE, Linux 5.6+; before that, a
/// non-blocking read, which fails only until the pool is ready). The name is not what keeps
/// strangers out (the directory's and the socket's modes are), so "insecure" is good enough.
fn random_suffix() -> Result<String, io::Error> {
    const GRND_INSECURE: libc::c_uint = 0x0004;
    let mut bytes = [0u8; 8];
    let mut flags = GRND_INSECURE;
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: getrandom writes at most the given length into the buffer, which is ours.
        let n = unsafe {
            libc::getrandom(
                bytes[filled..].as_mut_ptr().cast(),
                bytes.len() - filled,
                flags,
            )
        };
        if n > 0 {
            filled += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EINVAL) if flags == GRND_INSECURE => flags = libc::GRND_NONBLOCK,
            _ => return Err(e),
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl NotifySocket {
    /// Binds a fresh datagram socket in `dir` under a random name starting with `label`,
    /// non-blocking, with SO_PASSCRED so every datagram carries its sender's pid; the file is
    /// `owner`'s, mode 0600, so only `owner` and root may send to it.
    pub fn bind(dir: &NotifyDir, label: &str, owner: u32) -> Result<NotifySocket, NotifyError> {
        let path = dir.path.join(format!(
            "{label}.{}",
            random_suffix().map_err(fail("naming a socket in", &dir.path))?
        ));
        if path.as_os_str().len() >= SUN_PATH_MAX {
            return Err(fail("binding", &path)(io::Error::other(format!(
                "longer than the {} bytes a socket path may have; choose a shorter --notify-dir",
                SUN_PATH_MAX - 1
            ))));
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(errno_fail("creating", &path))?;
        let addr = UnixAddr::new(&path).map_err(errno_fail("naming", &path))?;
        // Created 0600 (the umask is process-wide: no one else may connect in the window
        // before the chown below; corral's other file creations do the same).
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = bind(fd.as_raw_fd(), &addr);
        nix::sys::stat::umask(old);
        bound.map_err(errno_fail("binding", &path))?;
        let socket = NotifySocket {
            fd,
            file: SocketFile(path),
            owner,
        };
        // A socket's file has no fd of its own to chown; the directory is corral's alone, so
        // the path cannot have been swapped since the bind.
        std::os::unix::fs::lchown(&socket.file.0, Some(owner), None)
            .map_err(fail("handing over", &socket.file.0))?;
        setsockopt(&socket, sockopt::PassCred, &true)
            .map_err(errno_fail("setting SO_PASSCRED on", &socket.file.0))?;
        Ok(socket)
    }

    /// The value of `NOTIFY_SOCKET` for the unit.
    pub fn env_value(&self) -> &OsStr {
        self.file.0.as_os_str()
    }

    /// The host uid that may send to this socket (besides root).
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Unlinks the file and gives back the descriptor for a closer thread: closing it
    /// releases any descriptors in messages still queued on it.
    pub fn retire(self) -> OwnedFd {
        let NotifySocket { fd, file, .. } = self;
        drop(file);
        fd
    }

    /// The next datagram, or `None` when none is queued.
    pub fn recv(&self) -> Result<Option<Datagram>, Errno> {
        let fd = &self.fd;
        let mut buf = vec![0u8; DATAGRAM_MAX];
        let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; SCM_MAX_FD]);
        let (len, pid, uid, fds, truncated) = loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let (mut pid, mut uid, mut fds) = (None, None, Vec::new());
                    for c in msg.cmsgs().into_iter().flatten() {
                        match c {
                            ControlMessageOwned::ScmCredentials(cred) => {
                                pid = Some(cred.pid());
                                uid = Some(cred.uid());
                            }
                            ControlMessageOwned::ScmRights(passed) => fds.extend(passed),
                            _ => {}
                        }
                    }
                    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
                    break (msg.bytes, pid, uid, fds, truncated);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let fds = fds
            .into_iter()
            // SAFETY: the kernel just installed `raw` in our table for us (SCM_RIGHTS, with
            // MSG_CMSG_CLOEXEC); nothing else knows it, so owning it closes it exactly once.
            .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
            .collect();
        buf.truncate(len);
        Ok(Some(Datagram {
            bytes: buf,
            pid,
            uid,
            fds,
            truncated,
        }))
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};

    #[test]
    fn a_datagram_arrives_with_the_senders_pid_and_passed_fds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NotifyDir::prepare(&tmp.path().join("notify")).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let sock = NotifySocket::bind(&dir, "web", me).unwrap();
        let path = PathBuf::from(sock.env_value());
        assert!(path.starts_with(dir.path()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("web.") && name.len() == "web.".len() + 16,
            "{name}"
        );
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().mode() & 0o777,
            DIR_MODE
        );
        assert!(sock.recv().unwrap().is_none());

        let sender = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let to = UnixAddr::new(&path).unwrap();
        let (barrier_read, barrier_write) = nix::unistd::pipe().unwrap();
        let fds = [barrier_write.as_raw_fd()];
        sendmsg(
            sender.as_raw_fd(),
            &[std::io::IoSlice::new(b"READY=1\nBARRIER=1")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&to),
        )
        .unwrap();
        drop(barrier_write);
        let got = sock.recv().unwrap().unwrap();
        assert_eq!(got.bytes, b"READY=1\nBARRIER=1");
        assert_eq!(got.pid, Some(std::process::id() as i32));
        assert_eq!(got.fds.len(), 1);
        assert!(!got.truncated);
        // The barrier holds while corral keeps the fd...
        nix::fcntl::fcntl(
            &barrier_read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            nix::unistd::read(&barrier_read, &mut byte),
            Err(Errno::EAGAIN)
        );
        // ...and ends when it lets go: the reader sees EOF.
        drop(got);
        assert_eq!(nix::unistd::read(&barrier_read, &mut byte), Ok(0));

        // Retiring removes the file.
        let _fd = sock.retire();
        assert!(!path.exists());
    }

    #[test]
    fn a_notify_directory_someone_else_could_write_to_is_refused_or_narrowed() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        NotifyDir::prepare(&open).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, DIR_MODE);

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let e = NotifyDir::prepare(&link).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");

        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(NotifyDir::prepare(&file).is_err());
    }
}
