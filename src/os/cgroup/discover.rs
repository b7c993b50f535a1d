//! Finding the cgroup hierarchies (from mountinfo) and corral's own place in them (/proc/self/cgroup).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::core::cgroup_plan::{Controller, Version};

/// The mounted cgroup file systems that matter to corral.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The cgroup2 mount, if any (on a hybrid host it holds no controllers).
    pub unified: Option<Mount>,
    /// v1 hierarchies by controller; co-mounted controllers share a mount.
    pub v1: BTreeMap<Controller, Mount>,
}

/// One cgroup mount, as mountinfo describes it (Documentation/filesystems/proc.rst, 3.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// The cgroup shown at `point`: `/` for a whole hierarchy; a container runtime without a
    /// cgroup namespace bind-mounts the container's own cgroup instead (runc on cgroup v1).
    pub root: PathBuf,
    /// Mounted read-only (runtimes do so for unprivileged containers).
    pub read_only: bool,
    /// cgroup2 `nsdelegate`: a cgroup namespace is a delegation boundary.
    pub nsdelegate: bool,
}

impl Mount {
    /// A cgroup path (as /proc/self/cgroup prints it) relative to `point`, when the mount shows
    /// it: `/a/b` under a mount of `/a` is `b`.
    pub fn relative(&self, cgroup: &Path) -> Option<PathBuf> {
        cgroup.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }
}

impl Mounts {
    /// v2 when the unified hierarchy is the only one with controllers; v1 when any v1
    /// controller corral uses is mounted (legacy and hybrid layouts).
    pub fn version(&self) -> Option<Version> {
        if !self.v1.is_empty() {
            Some(Version::V1)
        } else if self.unified.is_some() {
            Some(Version::V2)
        } else {
            None
        }
    }
}

/// Parses `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        // Fields: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        let flags = |field: Option<&&str>, flag: &str| {
            field.is_some_and(|options| options.split(',').any(|o| o == flag))
        };
        let super_options = right.get(2).copied().unwrap_or("");
        let mount = Mount {
            point: PathBuf::from(unescape(point)),
            root: PathBuf::from(unescape(root)),
            read_only: flags(left.get(5), "ro"),
            nsdelegate: flags(right.get(2), "nsdelegate"),
        };
        match *fstype {
            "cgroup2" => {
                mounts.unified.get_or_insert(mount);
            }
            "cgroup" => {
                for option in super_options.split(',') {
                    let controller = Controller::ALL
                        .into_iter()
                        .find(|c| c.name(Version::V1) == option);
                    if let Some(controller) = controller {
                        mounts.v1.entry(controller).or_insert(mount.clone());
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// corral's own cgroup per hierarchy, from `/proc/self/cgroup`: the v2 path under `""`, v1 paths
/// under each controller name.
pub fn parse_proc_cgroup(text: &str) -> BTreeMap<String, PathBuf> {
    let mut own = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            own.insert(String::new(), PathBuf::from(path));
        }
        for controller in controllers.split(',').filter(|c| !c.is_empty()) {
            own.insert(controller.to_owned(), PathBuf::from(path));
        }
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn hybrid_layout_is_v1_with_comounted_controllers() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.version(), Some(Version::V1));
        assert_eq!(
            mounts.v1.get(&Controller::Cpu).map(|m| &m.point),
            Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            mounts.v1.get(&Controller::Cpuacct),
            mounts.v1.get(&Controller::Cpu)
        );
        assert_eq!(mounts.v1.len(), 4);
        let unified = mounts.unified.unwrap();
        assert_eq!(unified.point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert!(unified.nsdelegate && !unified.read_only);
    }

    #[test]
    fn unified_layout_is_v2() {
        let mounts =
            parse_mountinfo("29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n");
        assert_eq!(mounts.version(), Some(Version::V2));
        assert_eq!(parse_mountinfo("").version(), None);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let mounts = parse_mountinfo("1 1 0:1 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n");
        assert_eq!(mounts.unified.unwrap().point, PathBuf::from("/mnt/my cg"));
    }

    /// runc on cgroup v1, no cgroup namespace: each hierarchy shows only the container's own
    /// cgroup, read-only, while /proc/self/cgroup prints the full path.
    const RUNC_V1: &str = "\
610 600 0:29 /corral-test-oci /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
611 600 0:30 /corral-test-oci /sys/fs/cgroup/pids ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn a_runtime_bind_of_the_containers_cgroup_is_seen_with_its_root() {
        let mounts = parse_mountinfo(RUNC_V1);
        let memory = &mounts.v1[&Controller::Memory];
        assert_eq!(memory.root, PathBuf::from("/corral-test-oci"));
        assert!(memory.read_only);
        assert_eq!(
            memory.relative(Path::new("/corral-test-oci")),
            Some(PathBuf::new())
        );
        assert_eq!(
            memory.relative(Path::new("/corral-test-oci/a.service")),
            Some(PathBuf::from("a.service"))
        );
        assert_eq!(memory.relative(Path::new("/elsewhere")), None);
    }

    #[test]
    fn own_cgroups_by_hierarchy() {
        let own = parse_proc_cgroup(
            "4:memory:/a/b\n2:cpu,cpuacct:/\n1:name=systemd:/x\n0::/init.scope\n",
        );
        assert_eq!(own.get("memory"), Some(&PathBuf::from("/a/b")));
        assert_eq!(own.get("cpuacct"), Some(&PathBuf::from("/")));
        assert_eq!(own.get(""), Some(&PathBuf::from("/init.scope")));
        assert_eq!(own.get("name=systemd"), Some(&PathBuf::from("/x")));
    }
}
