//! Watching the units directory: notify's thread only wakes the event loop through a pipe.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::unit::is_ignored_file_name;

pub struct DirWatch {
    /// Kept alive: dropping it stops the watch.
    watcher: RecommendedWatcher,
    wake: UnixStream,
    dir: PathBuf,
    /// Set by notify's thread when an event names `dir` itself (a symlink swapped over it).
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

/// Does a change of `path` matter? Editor leftovers do not; the ConfigMap `..data` symlink and
/// the directory itself do.
fn relevant(path: &Path, dir: &Path) -> bool {
    if path == dir {
        return true;
    }
    match path.file_name().and_then(|n| n.to_str()) {
        Some("..data") => true,
        Some(name) => !is_ignored_file_name(name),
        None => true,
    }
}

impl DirWatch {
    /// Watches `dir` (not recursively) and, when `dir` is a symlink, its parent too, so an
    /// atomic swap of the link is seen.
    pub fn new(dir: &Path) -> Result<DirWatch, WatchError> {
        let (wake, notify_end) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify_end.set_nonblocking(true)?;
        let watched_dir = dir.to_owned();
        let renew = Arc::new(AtomicBool::new(false));
        let renew_flag = Arc::clone(&renew);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let wake_up = match &event {
                    // An error or a queue overflow: rescan everything.
                    Err(_) => true,
                    // Opening and reading files (our own reload does) changes nothing.
                    Ok(e) if e.kind.is_access() => false,
                    Ok(e) => e.need_rescan() || e.paths.iter().any(|p| relevant(p, &watched_dir)),
                };
                // Reading the directory (an access event) names it too; that changes nothing.
                if let Ok(e) = &event
                    && !e.kind.is_access()
                    && e.paths.iter().any(|p| p == &watched_dir)
                {
                    renew_flag.store(true, Ordering::SeqCst);
                }
                if wake_up {
                    // A full pipe already holds a wakeup; nothing is lost.
                    let _ = (&notify_end).write(&[1]);
                }
            })
            .map_err(|source| WatchError::Notify {
                path: dir.to_owned(),
                source,
            })?;
        let mut targets = vec![dir.to_owned()];
        if dir.is_symlink()
            && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
        {
            targets.push(parent.to_owned());
        }
        for target in targets {
            watcher
                .watch(&target, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Notify {
                    path: target.clone(),
                    source,
                })?;
        }
        Ok(DirWatch {
            watcher,
            wake,
            dir: dir.to_owned(),
            renew,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Empties the wake pipe; when `dir` itself changed, watches what it names now.
    pub fn drain(&mut self) -> Result<(), WatchError> {
        let mut buf = [0u8; 256];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        // why: inotify watches the inode a path resolved to when the watch was added, so after
        // `dir` (a symlink) is swapped, the watch still follows the old target and edits in the
        // new one go unseen. Renewing it here, before the debounced reload reads the directory,
        // loses nothing: that reload reads whatever changed before the new watch existed.
        if self.renew.swap(false, Ordering::SeqCst) {
            // The old watch may be gone already (its directory deleted): nothing to undo then.
            let _ = self.watcher.unwatch(&self.dir);
            self.watcher
                .watch(&self.dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Notify {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_leftovers_do_not_matter_but_units_and_configmap_swaps_do() {
        let dir = Path::new("/etc/corral/units");
        for (path, want) in [
            ("/etc/corral/units/web.toml", true),
            ("/etc/corral/units/..data", true),
            ("/etc/corral/units", true),
            ("/etc/corral/units/.web.toml.swp", false),
            ("/etc/corral/units/web.toml~", false),
            // vim probes the directory with a file named 4913.
            ("/etc/corral/units/4913", false),
        ] {
            assert_eq!(relevant(Path::new(path), dir), want, "{path}");
        }
    }
}
