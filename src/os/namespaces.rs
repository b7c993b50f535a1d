//! Which namespaces a process is in, read from the inode numbers under /proc/PID/ns.

use std::os::unix::fs::MetadataExt;

/// Each namespace kind by the name status shows and the file name under /proc/PID/ns.
pub const KINDS: [(&str, &str); 7] = [
    ("pid", "pid"),
    ("net", "net"),
    ("mount", "mnt"),
    ("uts", "uts"),
    ("ipc", "ipc"),
    ("user", "user"),
    ("cgroup", "cgroup"),
];

/// The inode of each namespace in `KINDS` order, `None` where unreadable (process gone, or a
/// kernel without that namespace). `pid: None` reads corral's own.
///
/// For a pid namespace this is `pid`, not `pid_for_children`: where the process itself lives.
pub fn inodes(pid: Option<i32>) -> [Option<u64>; 7] {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/ns"),
        None => "/proc/self/ns".to_owned(),
    };
    KINDS.map(|(_, file)| {
        std::fs::metadata(format!("{dir}/{file}"))
            .ok()
            .map(|m| m.ino())
    })
}

/// Runs `f` with this thread in the network namespace of process `pid`, then returns to its
/// own. A socket belongs to the namespace it was created in, so one created by `f` reaches a
/// unit's own loopback after the thread is back.
pub fn within_net_namespace_of<T>(pid: i32, f: impl FnOnce() -> T) -> Result<T, String> {
    use nix::sched::{CloneFlags, setns};
    let open =
        |path: String| std::fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"));
    let ours = open("/proc/thread-self/ns/net".to_owned())?;
    let theirs = open(format!("/proc/{pid}/ns/net"))?;
    setns(&theirs, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering the network namespace of pid {pid}: {e}"))?;
    let out = f();
    // Returning to the namespace this thread came from cannot fail for lack of rights.
    let _ = setns(&ours, CloneFlags::CLONE_NEWNET);
    Ok(out)
}

/// The parent of process `pid` and its pids from the pid namespace of corral's /proc down to
/// its own (`PPid` and `NSpid` of /proc/PID/status); `None` once it is gone.
pub fn lineage(pid: i32) -> Option<(i32, Vec<i32>)> {
    parse_lineage(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_lineage(status: &str) -> Option<(i32, Vec<i32>)> {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
    };
    let parent = field("PPid")?.trim().parse().ok()?;
    let ns_pids = field("NSpid")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<i32>, _>>()
        .ok()?;
    (!ns_pids.is_empty()).then_some((parent, ns_pids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_reads_the_parent_and_every_namespaces_pid() {
        let status = "Name:\tsleep\nTgid:\t4242\nPid:\t4242\nPPid:\t4241\nNSpid:\t4242\t2\n";
        assert_eq!(parse_lineage(status), Some((4241, vec![4242, 2])));
        assert_eq!(parse_lineage("PPid:\t1\n"), None, "a kernel without NSpid");
        let me = lineage(std::process::id() as i32).unwrap();
        assert_eq!(me.1.first(), Some(&(std::process::id() as i32)));
        assert_eq!(me.0, nix::unistd::getppid().as_raw());
    }

    #[test]
    fn a_child_without_new_namespaces_shares_every_one_of_ours() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let ours = inodes(None);
        let its = inodes(Some(child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(ours.iter().all(Option::is_some), "{ours:?}");
        assert_eq!(ours, its);
    }

    #[test]
    fn a_process_that_is_gone_has_no_namespaces() {
        assert_eq!(inodes(Some(i32::MAX)), [None; 7]);
    }
}
