//! One read of a directory through one open descriptor: each entry's name and, for those
//! asked, what `fstatat` (symlinks followed) says of it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};

/// What a file is, as far as a units directory cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A FIFO, socket or device.
    Other,
}

/// What `stat(2)` says of an entry (symlinks followed): its kind and the fields that tell
/// whether its content may have changed (the cache's identity of a file, unit/cache.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stat {
    fn of(st: &FileStat) -> Stat {
        let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            _ => Kind::Other,
        };
        Stat {
            kind,
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// One directory entry (`.` and `..` are left out), its name borrowed from the listing.
#[derive(Debug)]
pub struct Entry<'a> {
    pub name: &'a OsStr,
    /// `None`: not asked for (see [`scan`]).
    pub stat: Option<io::Result<Stat>>,
}

/// Hands `each` the entries of `dir`, in the order the kernel lists them, each `stat`ed when
/// `wanted(name)` says so: one `open` of the directory, `getdents64` through readdir(3), and
/// an `fstatat` relative to the directory's descriptor per entry wanted, so no path is built
/// or resolved from the root for each file (path_resolution(7)); nothing is allocated per
/// entry. `Err`: the directory cannot be opened; an error in the middle of the listing is
/// handed to `each` (and ends it).
pub fn scan(
    dir: &Path,
    mut wanted: impl FnMut(&OsStr) -> bool,
    mut each: impl FnMut(io::Result<Entry<'_>>),
) -> io::Result<()> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // The listing reads through its own descriptor (the same open directory), the stats
    // are relative to this one.
    let mut listing = Dir::from_fd(fd.try_clone()?)?;
    for entry in listing.iter() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                each(Err(io::Error::from(e)));
                // readdir(3) does not move on after an error: one is enough.
                break;
            }
        };
        let raw = entry.file_name();
        let name = OsStr::from_bytes(raw.to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let stat = wanted(name).then(|| {
            fstatat(&fd, raw, AtFlags::empty())
                .map(|st| Stat::of(&st))
                .map_err(io::Error::from)
        });
        each(Ok(Entry { name, stat }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn lists_every_entry_and_stats_those_asked_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.toml"), "x = 1\n").unwrap();
        std::fs::create_dir(tmp.path().join("a.toml.d")).unwrap();
        std::os::unix::fs::symlink("a.toml", tmp.path().join("b.toml")).unwrap();
        std::os::unix::fs::symlink("nowhere", tmp.path().join("c.toml")).unwrap();
        std::fs::write(tmp.path().join(".hidden"), "").unwrap();
        let mut entries: Vec<(OsString, Option<io::Result<Stat>>)> = Vec::new();
        scan(
            tmp.path(),
            |n| n != ".hidden",
            |e| {
                let e = e.unwrap();
                entries.push((e.name.to_owned(), e.stat));
            },
        )
        .unwrap();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&OsStr> = entries.iter().map(|e| e.0.as_os_str()).collect();
        assert_eq!(names, [".hidden", "a.toml", "a.toml.d", "b.toml", "c.toml"]);
        assert!(entries[0].1.is_none(), "not asked");
        let a = entries[1].1.as_ref().unwrap().as_ref().unwrap();
        let meta = std::fs::metadata(tmp.path().join("a.toml")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (a.kind, a.dev, a.ino, a.size, a.mtime, a.ctime),
            (
                Kind::File,
                meta.dev(),
                meta.ino(),
                6,
                (meta.mtime(), meta.mtime_nsec()),
                (meta.ctime(), meta.ctime_nsec())
            )
        );
        assert_eq!(
            entries[2].1.as_ref().unwrap().as_ref().unwrap().kind,
            Kind::Dir
        );
        let b = entries[3].1.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(b, a, "the symlink is its target");
        assert!(entries[4].1.as_ref().unwrap().is_err(), "dangling");
        assert!(scan(&tmp.path().join("a.toml"), |_| true, |_| {}).is_err());
    }
}
