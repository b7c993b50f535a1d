//! Whether only root and corral's user can change what a path names (as sshd checks the
//! directories of its files): the control socket's directory, the notify sockets', env-files.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the path's last component is, which sets how its own mode counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// A directory corral puts its files in: writable by root and corral's user only.
    Directory,
    /// A file corral reads: its own mode is not the question, its directory's is (writable by
    /// root and corral's user only, so nobody else can put another file in its place).
    File,
}

/// Why the path is not root's and corral's alone.
#[derive(Debug)]
pub enum Unowned {
    /// `path` is a symlink, a directory or a file that another user can change: `why` says how.
    Other { path: PathBuf, why: String },
    /// The path could not be looked at.
    Io { path: PathBuf, source: io::Error },
}

impl std::fmt::Display for Unowned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unowned::Other { path, why } => write!(f, "{} {why}", crate::escape::path(path)),
            Unowned::Io { path, source } => {
                write!(f, "inspecting {}: {source}", crate::escape::path(path))
            }
        }
    }
}

/// Checks `path` (absolute or relative to the working directory) for `own_uid`: every
/// directory on the way, both those the path names and those it resolves to, owned by root or
/// `own_uid` and writable by others only with the sticky bit (as /tmp, where nobody else can
/// rename or remove what is ours); the last one (`leaf`'s directory, or the leaf directory
/// itself) writable by no one else at all; and no symlink on the way owned by another user: a
/// symlink is its owner's to point elsewhere at any time, even in a sticky directory.
pub fn check(path: &Path, own_uid: u32, leaf: Leaf) -> Result<(), Unowned> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Unowned::Io { path, source }
    };
    let other = |path: &Path, why: String| Unowned::Other {
        path: path.to_owned(),
        why,
    };
    let real = std::fs::canonicalize(path).map_err(io(path))?;
    let named = std::path::absolute(path).map_err(io(path))?;
    for link in named.ancestors() {
        if let Ok(meta) = std::fs::symlink_metadata(link)
            && meta.file_type().is_symlink()
            && meta.uid() != 0
            && meta.uid() != own_uid
        {
            return Err(other(
                link,
                format!("is a symbolic link owned by uid {}", meta.uid()),
            ));
        }
    }
    // Depth 0 is the leaf, 1 its directory; the named path's leaf was looked at as resolved.
    let named = named.ancestors().enumerate().skip(1);
    for (depth, component) in real.ancestors().enumerate().chain(named) {
        if leaf == Leaf::File && depth == 0 {
            continue;
        }
        let meta = std::fs::metadata(component).map_err(io(component))?;
        let shown = if depth == 0 { path } else { component };
        if meta.uid() != 0 && meta.uid() != own_uid {
            return Err(other(shown, format!("is owned by uid {}", meta.uid())));
        }
        let mode = meta.mode();
        let innermost = match leaf {
            Leaf::Directory => depth == 0,
            Leaf::File => depth == 1,
        };
        if mode & 0o022 != 0 && (innermost || mode & 0o1000 == 0) {
            return Err(other(
                shown,
                format!("has mode {:o}, writable by others", mode & 0o7777),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The temp dir's ancestors (/tmp is sticky) pass for the user running the tests.
    #[test]
    fn a_file_in_a_directory_others_can_write_is_not_owned() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.env");
        std::fs::write(&file, "A=1\n").unwrap();
        chmod(dir.path(), 0o755);
        check(&file, me, Leaf::File).unwrap();
        // The file's own mode does not matter; its directory's does, even sticky.
        chmod(&file, 0o666);
        check(&file, me, Leaf::File).unwrap();
        chmod(dir.path(), 0o1777);
        let e = check(&file, me, Leaf::File).unwrap_err().to_string();
        assert!(e.contains("writable by others"), "{e}");
        // A directory leaf: sticky is no excuse for the leaf itself either.
        let e = check(dir.path(), me, Leaf::Directory)
            .unwrap_err()
            .to_string();
        assert!(e.contains("writable by others"), "{e}");
        chmod(dir.path(), 0o700);
        check(dir.path(), me, Leaf::Directory).unwrap();
    }

    #[test]
    fn a_path_that_does_not_resolve_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&dir.path().join("missing"), 0, Leaf::File).unwrap_err();
        assert!(
            matches!(&e, Unowned::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{e}"
        );
    }
}
