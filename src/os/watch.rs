//! Watching the units directory by its path, on an inotify fd the event loop reads itself.
//!
//! inotify watches inodes, not paths: a watch follows the directory it was put on when that is
//! deleted, renamed away or replaced by a symlink swap, and the new directory at the same path
//! goes unseen. So besides the directory itself, corral watches the parent of every component
//! of the path that can be swapped (the directory's own entry, and every symlink on the way),
//! and when an event names the path or one of its ancestors, or the kernel's queue overflowed,
//! it puts its watches back on whatever the path names now (see `DirWatch::drain`).
//!
//! The drop-in directories in it (`web.toml.d/`) are watched too, each on its own (inotify is
//! not recursive); a drop-in directory created, removed or swapped (or a ConfigMap's `..data`
//! link, which may carry them) renews the watches the same way.
//!
//! No thread: the fd is non-blocking and in the loop's epoll set, `drain` reads a bounded
//! amount per wake, and adding or removing a watch is a syscall that does not wait. (The notify
//! crate's watcher had a thread of its own whose watch and unwatch calls waited for it; under a
//! flood of events in a watched parent that wait held the loop for seconds.)

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::unit::{is_drop_in_dir_name, is_ignored_file_name};

/// Reads of the inotify fd per wake (each returns as many events as fit the kernel's buffer):
/// a flood is handled a slice per turn, and the level-triggered fd wakes the loop again.
const READS_PER_WAKE: usize = 8;

pub struct DirWatch {
    inotify: Inotify,
    /// Absolute, symlinks left in: the path the operator gave, which is what is watched.
    dir: PathBuf,
    /// The paths watched now: the directory (when it exists) and the parents it hangs from.
    watched: Vec<(WatchDescriptor, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watching {path}: {source}")]
    Watch { path: PathBuf, source: Errno },
    #[error("{0}")]
    Path(#[from] std::io::Error),
}

/// What one event asks of corral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Response {
    /// Read the directory again (a debounced reload).
    reload: bool,
    /// Put the watches back on what the path names now, before that reload reads it.
    renew: bool,
}

impl std::ops::BitOrAssign for Response {
    fn bitor_assign(&mut self, other: Response) {
        self.reload |= other.reload;
        self.renew |= other.renew;
    }
}

/// One inotify event, as far as corral cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The kernel's queue overflowed: events were lost.
    Overflow,
    /// A watch went away (its directory deleted or unmounted).
    WatchGone,
    /// Something happened to `path` (an entry of a watched directory, or the directory itself).
    Changed(PathBuf),
}

/// What an event means for the units directory `dir` (absolute).
///
/// * A queue overflow or a watch gone: events were lost, maybe a swap of the directory too, so
///   renew and reload.
/// * An event naming `dir` or one of its ancestors (deleted, created, renamed, a symlink
///   swapped; its attributes changed): renew and reload.
/// * A change of an entry of `dir` that can be a unit file: reload. A drop-in directory or a
///   ConfigMap's `..data` link: reload, and renew (a drop-in directory to watch came, went or
///   now lies elsewhere). Editor leftovers and entries of the parents watched do not matter.
/// * A change of a file in a drop-in directory of `dir` that can be a drop-in: reload.
fn classify(seen: &Seen, dir: &Path) -> Response {
    let both = Response {
        reload: true,
        renew: true,
    };
    let path = match seen {
        Seen::Overflow | Seen::WatchGone => return both,
        Seen::Changed(path) => path,
    };
    if dir.starts_with(path) && path.parent().is_some() {
        return both;
    }
    if path.parent() == Some(dir) {
        let (reload, renew) = match path.file_name().and_then(|n| n.to_str()) {
            Some("..data") => (true, true),
            Some(name) if is_drop_in_dir_name(name) => (true, true),
            Some(name) => (!is_ignored_file_name(name), false),
            // Not UTF-8: load_dir warns about it, so a reload shows it.
            None => (true, false),
        };
        return Response { reload, renew };
    }
    if let Some(parent) = path.parent()
        && parent.parent() == Some(dir)
        && parent
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_drop_in_dir_name)
    {
        return Response {
            reload: path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|name| !is_ignored_file_name(name)),
            renew: false,
        };
    }
    Response::default()
}

/// The paths to watch for `dir`: the parent of `dir` and of every symlink on its way (their
/// entries can be swapped), the nearest existing ancestor when part of the path is missing (its
/// re-creation is an event there), `dir` itself when it is a directory, then its drop-in
/// directories. Parents first, so a directory created after the look at `dir` is an event in
/// a parent already watched.
fn targets(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: &Path| {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    };
    for component in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let Some(parent) = component.parent() else {
            continue;
        };
        match std::fs::symlink_metadata(component) {
            Err(_) => {
                // Nothing below a missing component exists: wait for it to appear.
                push(parent);
                return out;
            }
            Ok(meta) if meta.file_type().is_symlink() || component == dir => push(parent),
            Ok(_) => {}
        }
    }
    if dir.is_dir() {
        push(dir);
        let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_drop_in_dir_name))
            .map(|e| dir.join(e.file_name()))
            // Followed: a ConfigMap's drop-in directory is a link into `..data`.
            .filter(|p| p.is_dir())
            .collect();
        drop_ins.sort();
        for p in &drop_ins {
            push(p);
        }
    }
    out
}

impl DirWatch {
    /// Watches `dir` (not recursively) and the parents it hangs from, so that deleting,
    /// re-creating, renaming over or swapping it (or a symlink on its path) is seen.
    pub fn new(dir: &Path) -> Result<DirWatch, WatchError> {
        let dir = std::path::absolute(dir)?;
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|source| {
                WatchError::Watch {
                    path: dir.clone(),
                    source,
                }
            })?;
        let mut watch = DirWatch {
            inotify,
            dir,
            watched: Vec::new(),
        };
        watch.rewatch()?;
        if !watch.watched.iter().any(|(_, p)| *p == watch.dir) {
            return Err(WatchError::Watch {
                path: watch.dir.clone(),
                source: Errno::ENOENT,
            });
        }
        Ok(watch)
    }

    /// The inotify fd, for the loop's epoll set (readable while events wait).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Drops every watch and puts them on what the path names now. A directory that does not
    /// exist is no error: the watch on its parent brings it back when it is created.
    fn rewatch(&mut self) -> Result<(), WatchError> {
        for (wd, _) in self.watched.drain(..) {
            // Gone already when its directory was deleted or moved away (IN_IGNORED).
            let _ = self.inotify.rm_watch(wd);
        }
        // Entries coming and going, and the watched directory itself going: no access or
        // open events, so corral's own reads of the directory wake nothing.
        let entries = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        // In the units directory and its drop-in directories, files' contents too. A parent
        // matters only for its entries (the one naming the path can be swapped): writes to
        // the files beside the units directory (a log in /tmp, a project's build) wake nothing.
        let contents = entries
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB;
        for target in targets(&self.dir) {
            let mask = if target.starts_with(&self.dir) {
                contents
            } else {
                entries
            };
            match self.inotify.add_watch(&target, mask) {
                Ok(wd) => self.watched.push((wd, target)),
                // Gone between the look and the watch: its parent's event renews again.
                Err(Errno::ENOENT | Errno::ENOTDIR) => {}
                Err(source) => {
                    return Err(WatchError::Watch {
                        path: target,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads what the kernel reported, a bounded amount; true when the units directory should
    /// be read again. When the path may name another directory now, watches that one first.
    pub fn drain(&mut self) -> Result<bool, WatchError> {
        let mut response = Response::default();
        for _ in 0..READS_PER_WAKE {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    // An fd that cannot be read loses events: treat it as an overflow.
                    response |= classify(&Seen::Overflow, &self.dir);
                    break;
                }
            };
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    response |= classify(&Seen::Overflow, &self.dir);
                    continue;
                }
                // Only watches in force count: rm_watch of our own rewatch queues an
                // IN_IGNORED for each old one, which must not ask for yet another rewatch.
                let Some((_, watched)) = self.watched.iter().find(|(wd, _)| *wd == event.wd) else {
                    continue;
                };
                let seen = if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    Seen::WatchGone
                } else {
                    Seen::Changed(match &event.name {
                        Some(name) => watched.join(name),
                        None => watched.clone(),
                    })
                };
                response |= classify(&seen, &self.dir);
            }
        }
        // why: renewing here, before the debounced reload reads the directory, loses nothing:
        // that reload reads whatever changed before the new watch existed.
        if response.renew {
            self.rewatch()?;
        }
        Ok(response.reload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn changed(path: &str) -> Seen {
        Seen::Changed(PathBuf::from(path))
    }

    #[test]
    fn events_are_sorted_into_reload_renew_and_nothing() {
        let dir = Path::new("/etc/corral/units");
        let none = Response::default();
        let reload = Response {
            reload: true,
            renew: false,
        };
        let both = Response {
            reload: true,
            renew: true,
        };
        for (seen, want) in [
            (changed("/etc/corral/units/web.toml"), reload),
            // A ConfigMap swap may move drop-in directories: renew too.
            (changed("/etc/corral/units/..data"), both),
            // Drop-in directories: their coming and going changes what is watched.
            (changed("/etc/corral/units/web.toml.d"), both),
            (changed("/etc/corral/units/worker@.toml.d"), both),
            // Files in them, leftovers aside.
            (changed("/etc/corral/units/web.toml.d/10-mem.toml"), reload),
            (
                changed("/etc/corral/units/web.toml.d/.10-mem.toml.swp"),
                none,
            ),
            (
                changed("/etc/corral/units/web.toml.d/10-mem.toml.tmp"),
                none,
            ),
            (changed("/etc/corral/units/web.toml.d/README"), none),
            (changed("/etc/corral/units/.web.toml.swp"), none),
            (changed("/etc/corral/units/web.toml~"), none),
            // vim probes the directory with a file named 4913.
            (changed("/etc/corral/units/4913"), none),
            // The directory itself, or a swap of a component above it.
            (changed("/etc/corral/units"), both),
            (changed("/etc/corral"), both),
            // Other entries of the parents watched.
            (changed("/etc/corral/corral.toml"), none),
            (changed("/etc/corral/units.new"), none),
            (changed("/etc/corral/units-old/web.toml"), none),
            // Lost events: the kernel's queue overflowed, or a watch went away.
            (Seen::Overflow, both),
            (Seen::WatchGone, both),
        ] {
            assert_eq!(classify(&seen, dir), want, "{seen:?}");
        }
    }

    #[test]
    fn a_flood_in_a_watched_parent_is_read_a_slice_per_wake_and_asks_for_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("units");
        std::fs::create_dir(&dir).unwrap();
        let mut watch = DirWatch::new(&dir).unwrap();
        // Far more events than one wake reads, all of entries of the parent.
        for i in 0..20_000 {
            let a = tmp.path().join(format!("churn-{i}"));
            std::fs::write(&a, "").unwrap();
            std::fs::remove_file(&a).unwrap();
        }
        let mut wakes = 0;
        let mut reloads = 0;
        loop {
            wakes += 1;
            // The queue overflowed (16384 events by default): that one asks for a reload.
            if watch.drain().unwrap() {
                reloads += 1;
            }
            let mut fds = [nix::poll::PollFd::new(
                watch.fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap() == 0 {
                break;
            }
        }
        assert!(wakes > 1, "one wake read everything");
        assert!(reloads <= 1, "{reloads} reloads for entries of the parent");
        // And a unit file still counts after the flood.
        std::fs::write(dir.join("web.toml"), "").unwrap();
        assert!(watch.drain().unwrap());
    }

    /// A file beside the units directory that is written to (a log in /tmp) wakes nothing,
    /// while its entries coming and going still reach the watch.
    #[test]
    fn writes_to_files_beside_the_units_directory_wake_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("units");
        std::fs::create_dir(&dir).unwrap();
        let neighbour = tmp.path().join("app.log");
        std::fs::write(&neighbour, "").unwrap();
        let mut watch = DirWatch::new(&dir).unwrap();
        let readable = |watch: &DirWatch| {
            let mut fds = [nix::poll::PollFd::new(
                watch.fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap() > 0
        };
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&neighbour)
            .unwrap();
        for _ in 0..100 {
            std::io::Write::write_all(&mut log, b"a line\n").unwrap();
        }
        drop(log);
        std::fs::set_permissions(&neighbour, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            !readable(&watch),
            "writes beside the units directory woke the loop"
        );
        // A unit file written in place still counts, and so does an entry of the parent.
        let unit = dir.join("web.toml");
        std::fs::write(&unit, "").unwrap();
        assert!(readable(&watch));
        assert!(watch.drain().unwrap());
        std::fs::write(&unit, "[exec]\n").unwrap();
        assert!(watch.drain().unwrap(), "an edit in place of a unit file");
        std::fs::remove_file(&neighbour).unwrap();
        assert!(readable(&watch), "an entry of the parent going");
    }

    #[test]
    fn targets_follow_the_path_through_symlinks_and_wait_at_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let releases = root.join("releases/v1/units");
        std::fs::create_dir_all(&releases).unwrap();
        std::os::unix::fs::symlink(root.join("releases/v1"), root.join("current")).unwrap();

        // A plain directory: it and its parent.
        assert_eq!(
            targets(&releases),
            [root.join("releases/v1"), releases.clone()]
        );
        // Through a symlink: the link's parent too, since the link can be swapped.
        let through = root.join("current/units");
        assert_eq!(
            targets(&through),
            [root.to_owned(), root.join("current"), through.clone()]
        );
        // Missing: the nearest existing ancestor, which sees it being created.
        let missing = root.join("gone/units");
        assert_eq!(targets(&missing), [root.to_owned()]);
        std::fs::remove_dir(&releases).unwrap();
        assert_eq!(targets(&through), [root.to_owned(), root.join("current")]);
    }
}
