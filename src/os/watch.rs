//! Watching the units directory by its path: notify's thread only wakes the event loop through a pipe.
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

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::unit::{is_drop_in_dir_name, is_ignored_file_name};

pub struct DirWatch {
    /// Kept alive: dropping it stops the watch.
    watcher: RecommendedWatcher,
    wake: UnixStream,
    /// Absolute, symlinks left in: the path the operator gave, which is what is watched.
    dir: PathBuf,
    /// The paths watched now: the directory (when it exists) and the parents it hangs from.
    watched: Vec<PathBuf>,
    /// Set by notify's thread when the watches must be put back (see `classify`).
    renew: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watching {path}: {source}")]
    Notify {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("creating the watch's wake pipe: {0}")]
    Pipe(#[from] std::io::Error),
}

/// What one event from notify asks of corral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Response {
    /// Read the directory again (a debounced reload).
    reload: bool,
    /// Put the watches back on what the path names now, before that reload reads it.
    renew: bool,
}

/// What an event means for the units directory `dir` (absolute).
///
/// * An error or a queue overflow: events were lost, maybe a swap of the directory too, so
///   renew and reload.
/// * An event naming `dir` or one of its ancestors (deleted, created, renamed, a symlink
///   swapped; its attributes changed): renew and reload.
/// * A change of an entry of `dir` that can be a unit file: reload. A drop-in directory or a
///   ConfigMap's `..data` link: reload, and renew (a drop-in directory to watch came, went or
///   now lies elsewhere). Editor leftovers and entries of the parents watched do not matter.
/// * A change of a file in a drop-in directory of `dir` that can be a drop-in: reload.
/// * Opening and reading files (our own reload does) changes nothing.
fn classify(event: &notify::Result<notify::Event>, dir: &Path) -> Response {
    let event = match event {
        Err(_) => {
            return Response {
                reload: true,
                renew: true,
            };
        }
        Ok(e) if e.need_rescan() => {
            return Response {
                reload: true,
                renew: true,
            };
        }
        Ok(e) if e.kind.is_access() => return Response::default(),
        Ok(e) => e,
    };
    let mut response = Response::default();
    for path in &event.paths {
        if dir.starts_with(path) && path.parent().is_some() {
            response.renew = true;
            response.reload = true;
        } else if path.parent() == Some(dir) {
            let name = path.file_name().and_then(|n| n.to_str());
            let (reload, renew) = match name {
                Some("..data") => (true, true),
                Some(name) if is_drop_in_dir_name(name) => (true, true),
                Some(name) => (!is_ignored_file_name(name), false),
                // Not UTF-8: load_dir warns about it, so a reload shows it.
                None => (true, false),
            };
            response.reload |= reload;
            response.renew |= renew;
        } else if let Some(parent) = path.parent()
            && parent.parent() == Some(dir)
            && parent
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_drop_in_dir_name)
        {
            response.reload |= match path.file_name().and_then(|n| n.to_str()) {
                Some(name) => !is_ignored_file_name(name),
                None => true,
            };
        }
    }
    response
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
    /// Watches `dir` (not recursively), its drop-in directories, and the parents it hangs from, so that deleting,
    /// re-creating, renaming over or swapping it (or a symlink on its path) is seen.
    pub fn new(dir: &Path) -> Result<DirWatch, WatchError> {
        let dir = std::path::absolute(dir)?;
        let (wake, notify_end) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify_end.set_nonblocking(true)?;
        let watched_dir = dir.clone();
        let renew = Arc::new(AtomicBool::new(false));
        let renew_flag = Arc::clone(&renew);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let response = classify(&event, &watched_dir);
            if response.renew {
                renew_flag.store(true, Ordering::SeqCst);
            }
            if response.reload {
                // A full pipe already holds a wakeup; nothing is lost.
                let _ = (&notify_end).write(&[1]);
            }
        })
        .map_err(|source| WatchError::Notify {
            path: dir.clone(),
            source,
        })?;
        let mut watch = DirWatch {
            watcher,
            wake,
            dir,
            watched: Vec::new(),
            renew,
        };
        watch.rewatch()?;
        if !watch.watched.contains(&watch.dir) {
            return Err(WatchError::Notify {
                path: watch.dir.clone(),
                source: notify::Error::path_not_found(),
            });
        }
        Ok(watch)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Drops every watch and puts them on what the path names now. A directory that does not
    /// exist is no error: the watch on its parent brings it back when it is created.
    fn rewatch(&mut self) -> Result<(), WatchError> {
        for path in self.watched.drain(..) {
            // notify may have dropped it already (its directory deleted or moved away).
            let _ = self.watcher.unwatch(&path);
        }
        for target in targets(&self.dir) {
            match self.watcher.watch(&target, RecursiveMode::NonRecursive) {
                Ok(()) => self.watched.push(target),
                // Gone between the look and the watch: its parent's event renews again.
                Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => {}
                Err(source) => {
                    return Err(WatchError::Notify {
                        path: target,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Empties the wake pipe; when the path may name another directory now, watches that one.
    pub fn drain(&mut self) -> Result<(), WatchError> {
        let mut buf = [0u8; 256];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        // why: renewing here, before the debounced reload reads the directory, loses nothing:
        // that reload reads whatever changed before the new watch existed.
        if self.renew.swap(false, Ordering::SeqCst) {
            self.rewatch()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, CreateKind, Event, EventKind, Flag, ModifyKind, RemoveKind, RenameMode,
    };

    fn event(kind: EventKind, path: &str) -> notify::Result<Event> {
        Ok(Event::new(kind).add_path(PathBuf::from(path)))
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
        let create = EventKind::Create(CreateKind::Any);
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        for (e, want) in [
            (event(create, "/etc/corral/units/web.toml"), reload),
            // A ConfigMap swap may move drop-in directories: renew too.
            (event(create, "/etc/corral/units/..data"), both),
            (event(create, "/etc/corral/units/.web.toml.swp"), none),
            (event(create, "/etc/corral/units/web.toml~"), none),
            // vim probes the directory with a file named 4913.
            (event(create, "/etc/corral/units/4913"), none),
            // The directory itself, or a swap of a component above it.
            (event(create, "/etc/corral/units"), both),
            (
                event(EventKind::Remove(RemoveKind::Folder), "/etc/corral/units"),
                both,
            ),
            (event(renamed, "/etc/corral/units"), both),
            (event(renamed, "/etc/corral"), both),
            // Drop-in directories: their coming and going changes what is watched.
            (event(create, "/etc/corral/units/web.toml.d"), both),
            (
                event(
                    EventKind::Remove(RemoveKind::Folder),
                    "/etc/corral/units/web.toml.d",
                ),
                both,
            ),
            (event(renamed, "/etc/corral/units/worker@.toml.d"), both),
            // Files in them, leftovers aside.
            (
                event(create, "/etc/corral/units/web.toml.d/10-mem.toml"),
                reload,
            ),
            (
                event(renamed, "/etc/corral/units/web.toml.d/10-mem.toml"),
                reload,
            ),
            (
                event(create, "/etc/corral/units/web.toml.d/.10-mem.toml.swp"),
                none,
            ),
            (
                event(create, "/etc/corral/units/web.toml.d/10-mem.toml.tmp"),
                none,
            ),
            (event(create, "/etc/corral/units/web.toml.d/README"), none),
            // Deeper, or in a directory that is no drop-in directory: nothing.
            (
                event(create, "/etc/corral/units/web.toml.d/sub/10.toml"),
                none,
            ),
            (event(create, "/etc/corral/units/notes/10.toml"), none),
            (event(create, "/etc/corral/units/.web.toml.d"), none),
            // Other entries of the parents watched.
            (event(create, "/etc/corral/corral.toml"), none),
            (event(renamed, "/etc/corral/units.new"), none),
            (event(create, "/etc/corral/units-old/web.toml"), none),
            // Reading changes nothing, even the directory itself.
            (
                event(EventKind::Access(AccessKind::Any), "/etc/corral/units"),
                none,
            ),
            (
                event(
                    EventKind::Access(AccessKind::Any),
                    "/etc/corral/units/web.toml",
                ),
                none,
            ),
            // Lost events: the kernel's queue overflowed, or notify failed.
            (
                Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)),
                both,
            ),
            (Err(notify::Error::generic("inotify read failed")), both),
        ] {
            assert_eq!(classify(&e, dir), want, "{e:?}");
        }
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
        // Drop-in directories, a ConfigMap-style link to one too; not other directories.
        std::fs::create_dir(releases.join("web.toml.d")).unwrap();
        std::fs::create_dir(releases.join("notes")).unwrap();
        std::fs::create_dir(root.join("releases/v1/db.toml.d")).unwrap();
        std::os::unix::fs::symlink(
            root.join("releases/v1/db.toml.d"),
            releases.join("db.toml.d"),
        )
        .unwrap();
        assert_eq!(
            targets(&releases),
            [
                root.join("releases/v1"),
                releases.clone(),
                releases.join("db.toml.d"),
                releases.join("web.toml.d"),
            ]
        );
        for d in ["web.toml.d", "notes"] {
            std::fs::remove_dir(releases.join(d)).unwrap();
        }
        std::fs::remove_file(releases.join("db.toml.d")).unwrap();
        // Missing: the nearest existing ancestor, which sees it being created.
        let missing = root.join("gone/units");
        assert_eq!(targets(&missing), [root.to_owned()]);
        std::fs::remove_dir(&releases).unwrap();
        assert_eq!(targets(&through), [root.to_owned(), root.join("current")]);
    }
}
