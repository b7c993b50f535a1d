//! Units' log files, opened by root in a directory a unit's user may write: no symlink is
//! followed at the last component, nothing is created through one, only regular files are
//! written, and every name is resolved relative to one directory fd.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::UnlinkatFlags;

/// Log files are created `rw-r-----`: the unit's output may hold what other users should not read.
const FILE_MODE: u32 = 0o640;

/// A directory that holds log files, held open so that renames during a rotation stay in the
/// directory that was opened, whatever later happens to its path.
#[derive(Debug)]
pub struct LogDir {
    fd: OwnedFd,
}

/// An open log file and its size when it was opened.
#[derive(Debug)]
pub struct LogFile {
    pub file: File,
    pub size: u64,
}

fn refuse(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// `name` must be one plain component: no `/`, not `.` or `..`, not empty.
fn plain(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(refuse(format!("{name:?} is not a plain file name")));
    }
    Ok(name)
}

impl LogDir {
    /// Opens `path` as a directory; a symlink as its last component is refused (ELOOP).
    pub fn open(path: &Path) -> io::Result<LogDir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(LogDir { fd })
    }

    /// Opens `name` for appending, creating it (mode 0640, owned by corral's user) if it is not
    /// there. Refused: a symlink (O_NOFOLLOW), anything but a regular file (a FIFO is opened
    /// non-blocking, so it cannot hang the open), a file with other hard links (it may be
    /// another name of a file corral must not write), and a file another user owns.
    pub fn open_append(&self, name: &str) -> io::Result<LogFile> {
        let name = plain(name)?;
        let flags = OFlag::O_RDWR
            | OFlag::O_APPEND
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.create(name, flags)?,
            Err(Errno::ELOOP) => return Err(refuse(format!("{name} is a symlink"))),
            Err(e) => return Err(e.into()),
        };
        let stat = fstat(&fd)?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            return Err(refuse(format!("{name} is not a regular file")));
        }
        if stat.st_nlink > 1 {
            return Err(refuse(format!("{name} has other hard links")));
        }
        let own = nix::unistd::geteuid().as_raw();
        if stat.st_uid != own {
            return Err(refuse(format!(
                "{name} belongs to uid {}, not to corral's uid {own}",
                stat.st_uid
            )));
        }
        // Regular files never block; clear the flag anyway so writes are plain writes.
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_APPEND))?;
        Ok(LogFile {
            file: File::from(fd),
            size: u64::try_from(stat.st_size).unwrap_or(0),
        })
    }

    /// O_CREAT|O_EXCL: fails on any name that is there, a dangling symlink included.
    fn create(&self, name: &str, flags: OFlag) -> io::Result<OwnedFd> {
        let fd = openat(
            &self.fd,
            name,
            flags | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(FILE_MODE),
        )?;
        // The umask may have taken bits; the mode is the documented one whatever it is.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(FILE_MODE))?;
        Ok(fd)
    }

    /// Renames `from` to `to` within this directory; a missing `from` is no error.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        match nix::fcntl::renameat(&self.fd, plain(from)?, &self.fd, plain(to)?) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the name `name` (never what a symlink points to); a missing one is no error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match nix::unistd::unlinkat(&self.fd, plain(name)?, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the whole of `source` (a rotated file corral still holds open) gzip-compressed
    /// as the new file `to`, then removes the name `from`. A `to` already there is replaced
    /// by name, never written through.
    pub fn compress(&self, source: &File, from: &str, to: &str) -> io::Result<()> {
        self.remove(to)?;
        let fd = self.create(
            plain(to)?,
            OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        )?;
        let mut out = flate2::write::GzEncoder::new(File::from(fd), flate2::Compression::fast());
        let mut reader = PositionalReader {
            file: source,
            offset: 0,
        };
        io::copy(&mut reader, &mut out)?;
        out.finish()?.flush()?;
        self.remove(from)
    }
}

/// Reads a file from its start with pread, whatever its O_APPEND descriptor's offset.
struct PositionalReader<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for PositionalReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl AsFd for LogDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_new_file_is_created_0640_and_appended_to() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LogDir::open(tmp.path()).unwrap();
        let mut log = dir.open_append("a.log").unwrap();
        assert_eq!(log.size, 0);
        log.file.write_all(b"one\n").unwrap();
        drop(log);
        let mut log = dir.open_append("a.log").unwrap();
        assert_eq!(log.size, 4);
        log.file.write_all(b"two\n").unwrap();
        let path = tmp.path().join("a.log");
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn symlinks_fifos_hard_links_and_odd_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("link.log")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), tmp.path().join("dangling.log"))
            .unwrap();
        nix::unistd::mkfifo(
            &tmp.path().join("fifo.log"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::hard_link(&target, tmp.path().join("hard.log")).unwrap();
        let dir = LogDir::open(tmp.path()).unwrap();
        for name in [
            "link.log",
            "dangling.log",
            "fifo.log",
            "hard.log",
            "../x",
            "",
            "..",
        ] {
            assert!(dir.open_append(name).is_err(), "{name} was opened");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert!(
            !tmp.path().join("nowhere").exists(),
            "nothing created through a symlink"
        );
        // A symlinked directory is refused too.
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("dirlink")).unwrap();
        assert!(LogDir::open(&tmp.path().join("dirlink")).is_err());
    }

    #[test]
    fn a_compressed_rotated_file_decompresses_to_its_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LogDir::open(tmp.path()).unwrap();
        let mut log = dir.open_append("a.log").unwrap();
        log.file.write_all(b"one\ntwo\n").unwrap();
        dir.rename("a.log", "a.log.1").unwrap();
        dir.compress(&log.file, "a.log.1", "a.log.1.gz").unwrap();
        assert!(!tmp.path().join("a.log.1").exists());
        let gz = std::fs::File::open(tmp.path().join("a.log.1.gz")).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "one\ntwo\n");
    }
}
