//! cgroup v2 (the unified hierarchy): one tree, controllers enabled per level, no internal processes.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::core::cgroup_plan::{Controller, Setting, Version};
use crate::core::container::Budget;
use crate::proto::Usage;

use super::stats::flat_keyed;
use super::{
    Backend, CgroupError, Join, display_below, make_dir, open_directory, open_for_join, read_file,
    read_pids, relative, remove_dir, write_file,
};

/// Where corral moves itself when R is its own cgroup (no process may sit beside child cgroups).
pub const SCOPE: &str = "corral.scope";

/// The controllers corral uses; the ones a level offers are enabled for its children.
const WANTED: [Controller; 5] = [
    Controller::Cpu,
    Controller::Cpuset,
    Controller::Io,
    Controller::Memory,
    Controller::Pids,
];

pub struct V2 {
    mount: PathBuf,
    /// R as a cgroup path, e.g. `/corral`.
    root_rel: PathBuf,
    /// corral's own cgroup as a cgroup path.
    own_rel: PathBuf,
    pressure_files: super::stats::PressureFiles,
}

impl V2 {
    pub fn new(mount: PathBuf, root_rel: &Path, own_rel: &Path) -> V2 {
        V2 {
            mount,
            root_rel: relative(root_rel),
            own_rel: relative(own_rel),
            pressure_files: Default::default(),
        }
    }

    fn dir(&self, rel: &Path) -> PathBuf {
        self.mount.join(&self.root_rel).join(rel)
    }

    /// Enables every wanted controller that `dir` offers in its `cgroup.subtree_control`.
    fn enable_controllers(&self, dir: &Path) -> Result<(), CgroupError> {
        let offered = read_file(&dir.join("cgroup.controllers"))?;
        let enabled = read_file(&dir.join("cgroup.subtree_control"))?;
        let missing: Vec<String> = WANTED
            .iter()
            .map(|c| c.name(Version::V2))
            .filter(|name| offered.split_whitespace().any(|o| o == *name))
            .filter(|name| !enabled.split_whitespace().any(|e| e == *name))
            .map(|name| format!("+{name}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        write_file(&dir.join("cgroup.subtree_control"), &missing.join(" "))
    }
}

impl Backend for V2 {
    fn version(&self) -> Version {
        Version::V2
    }

    fn prepare_root(&mut self) -> Result<Vec<String>, CgroupError> {
        let mut notes = Vec::new();
        let mut dir = self.mount.clone();
        for component in self.root_rel.components() {
            dir.push(component);
            make_dir(&dir)?;
        }
        let root = self.mount.join(&self.root_rel);
        if self.own_rel == self.root_rel {
            // v2 allows no process in a cgroup whose children have controllers enabled.
            let scope = root.join(SCOPE);
            make_dir(&scope)?;
            write_file(&scope.join("cgroup.procs"), &std::process::id().to_string())?;
            notes.push(format!(
                "moved corral into {}",
                self.display(Path::new(SCOPE))
            ));
        }
        // Each level down to R must pass the controllers on; the mount root always may.
        let mut dir = self.mount.clone();
        let mut levels = vec![dir.clone()];
        for component in self.root_rel.components() {
            dir.push(component);
            levels.push(dir.clone());
        }
        for level in levels {
            if let Err(e) = self.enable_controllers(&level) {
                notes.push(format!("enabling controllers in {}: {e}", level.display()));
            }
        }
        Ok(notes)
    }

    fn create(&self, rel: &Path, holds_children: bool) -> Result<(), CgroupError> {
        let mut dir = self.dir(Path::new(""));
        for component in rel.components() {
            dir.push(component);
            make_dir(&dir)?;
        }
        if holds_children {
            self.enable_controllers(&dir)?;
        }
        Ok(())
    }

    fn write(&self, rel: &Path, setting: &Setting) -> Result<(), CgroupError> {
        write_file(&self.dir(rel).join(setting.file), &setting.value)
    }

    fn join(&self, rel: &Path) -> Result<Join, CgroupError> {
        let dir = self.dir(rel);
        Ok(Join {
            write_zero: vec![open_for_join(&dir.join("cgroup.procs"))?],
            clone_into: Some(open_directory(&dir)?),
        })
    }

    fn procs(&self, rel: &Path) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.dir(rel).join("cgroup.procs"))
    }

    fn set_frozen(&self, rel: &Path, frozen: bool) -> Result<(), CgroupError> {
        write_file(
            &self.dir(rel).join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
    }

    fn kill_switch(&self, rel: &Path) -> Result<bool, CgroupError> {
        let file = self.dir(rel).join("cgroup.kill");
        if !file.exists() {
            return Ok(false);
        }
        write_file(&file, "1").map(|()| true)
    }

    fn remove(&self, rel: &Path) -> Result<bool, CgroupError> {
        remove_dir(&self.dir(rel))
    }

    fn exists(&self, rel: &Path) -> bool {
        self.dir(rel).is_dir()
    }

    fn usage(&self, rel: &Path) -> Usage {
        super::stats::usage_v2(&self.dir(rel), &self.pressure_files)
    }

    fn oom_kills(&self, rel: &Path) -> Option<u64> {
        let events = read_file(&self.dir(rel).join("memory.events")).ok()?;
        flat_keyed(&events, "oom_kill")
    }

    fn populated_watch(&self, rel: &Path) -> Result<Option<OwnedFd>, CgroupError> {
        watch_modified(&self.dir(rel).join("cgroup.events")).map(Some)
    }

    fn notifies_memory_marks(&self) -> bool {
        false
    }

    fn budget(&self) -> (Budget, Option<u64>, Option<u64>) {
        super::access::v2(&self.mount, &self.dir(Path::new("")))
    }

    fn pressure_file(&self, rel: &Path) -> Option<PathBuf> {
        let file = self.dir(rel).join("memory.pressure");
        file.exists().then_some(file)
    }

    fn pressure_trigger(&self, rel: &Path, trigger: &str) -> Result<Option<OwnedFd>, CgroupError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir(rel).join("memory.pressure");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(super::io_error("opening", &path))?;
        // The kernel reads one write and overwrites its last byte with a NUL (psi_write:
        // `buf[buf_size - 1] = '\0'`), so the trigger goes with its NUL, as psi.rst's example
        // writes `strlen(trig) + 1` bytes; without it the window would lose its last digit.
        let mut bytes = trigger.as_bytes().to_vec();
        bytes.push(0);
        (&file)
            .write_all(&bytes)
            .map_err(|source| CgroupError::Write {
                value: trigger.to_owned(),
                path: path.clone(),
                source,
            })?;
        Ok(Some(OwnedFd::from(file)))
    }

    fn memory_watch(&self, rel: &Path, _marks: &[u64]) -> Result<Vec<OwnedFd>, CgroupError> {
        Ok(vec![watch_modified(&self.dir(rel).join("memory.events"))?])
    }

    fn display(&self, rel: &Path) -> String {
        display_below(&self.root_rel, rel)
    }
}

/// An inotify fd that becomes readable when `file` changes. cgroup-v2.rst: "A value change in
/// this file generates a file modified event" (`cgroup.events`, `memory.events`, ...).
fn watch_modified(file: &Path) -> Result<OwnedFd, CgroupError> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let os_err = |e: nix::errno::Errno| super::io_error("watching", file)(e.into());
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(os_err)?;
    inotify
        .add_watch(file, AddWatchFlags::IN_MODIFY)
        .map_err(os_err)?;
    Ok(OwnedFd::from(inotify))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cgroup_plan::{self, Plan};
    use crate::os::cgroup::apply;
    use crate::unit::{ByteLimit, CpuPercent, DeviceSpec, IoLimit, OomConfig, Resources};
    use std::fs;

    /// A fake cgroup2 mount: the files the kernel would show in each directory.
    fn fake_cgroup(dir: &Path, controllers: &str) {
        fs::create_dir_all(dir).unwrap();
        for (file, content) in [
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cgroup.freeze", "0"),
            ("cpu.max", "max 100000"),
            ("cpu.weight", "100"),
            ("cpuset.cpus", ""),
            ("memory.max", "max"),
            ("memory.high", "max"),
            ("memory.swap.max", "max"),
            ("memory.oom.group", "0"),
            ("pids.max", "max"),
            ("io.weight", "default 100"),
            ("io.max", ""),
        ] {
            fs::write(dir.join(file), content).unwrap();
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn a_change_of_cgroup_events_wakes_the_populated_watch() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        let unit = mount.join("corral/web.service");
        fake_cgroup(&unit, "memory pids");
        fs::write(unit.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let v2 = V2::new(
            mount.to_owned(),
            Path::new("/corral"),
            Path::new("/elsewhere"),
        );
        let fd = v2
            .populated_watch(Path::new("web.service"))
            .unwrap()
            .expect("v2 has a populated event");
        let readable = |fd: &OwnedFd| {
            use std::os::fd::AsFd;
            let mut fds = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap() > 0
        };
        assert!(!readable(&fd));
        // What the kernel does when the last member leaves.
        fs::write(unit.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        assert!(readable(&fd));
        super::super::drain(&fd);
        assert!(!readable(&fd));
    }

    #[test]
    fn root_gets_controllers_enabled_and_a_slice_passes_them_down() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        fake_cgroup(mount, "cpuset cpu io memory hugetlb pids rdma");
        fake_cgroup(&mount.join("corral"), "cpuset cpu io memory pids");
        fake_cgroup(&mount.join("corral/web.slice"), "cpu io memory pids");
        let mut v2 = V2::new(
            mount.to_owned(),
            Path::new("/corral"),
            Path::new("/elsewhere"),
        );
        let notes = v2.prepare_root().unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            read(&mount.join("cgroup.subtree_control")),
            "+cpu +cpuset +io +memory +pids"
        );
        v2.create(Path::new("web.slice"), true).unwrap();
        assert_eq!(
            read(&mount.join("corral/web.slice/cgroup.subtree_control")),
            "+cpu +io +memory +pids"
        );
        assert_eq!(
            v2.display(Path::new("web.slice/a.service")),
            "/corral/web.slice/a.service"
        );
    }

    #[test]
    fn corral_moves_into_its_scope_when_the_root_is_its_own_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        fake_cgroup(mount, "cpu memory");
        fake_cgroup(&mount.join("corral.scope"), "");
        let mut v2 = V2::new(mount.to_owned(), Path::new("/"), Path::new("/"));
        v2.prepare_root().unwrap();
        assert_eq!(
            read(&mount.join("corral.scope/cgroup.procs")),
            std::process::id().to_string()
        );
    }

    #[test]
    fn a_plan_lands_in_the_v2_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        let unit_dir = mount.join("r/app.service");
        fake_cgroup(&unit_dir, "");
        let v2 = V2::new(mount.to_owned(), Path::new("/r"), Path::new("/"));
        let resources = Resources {
            cpu_quota: Some(CpuPercent(50)),
            cpu_weight: Some(300),
            allowed_cpus: Some("0".into()),
            memory_max: Some(ByteLimit::Bytes(64 << 20)),
            memory_high: Some(ByteLimit::Bytes(48 << 20)),
            memory_swap_max: Some(ByteLimit::Bytes(0)),
            pids_max: Some(Some(20)),
            io_weight: Some(500),
            io: vec![IoLimit {
                device: DeviceSpec::Number { major: 8, minor: 0 },
                read_bps: Some(ByteLimit::Bytes(1 << 20)),
                write_bps: None,
                read_iops: None,
                write_iops: Some(10),
            }],
            ..Resources::default()
        };
        let oom = OomConfig {
            group_kill: true,
            score_adjust: None,
            pressure: None,
        };
        let plan: Plan = cgroup_plan::plan(&resources, &oom, Version::V2, &|_| Ok((8, 0)));
        let problems = apply(&v2, Path::new("app.service"), &plan);
        assert!(problems.is_empty(), "{problems:?}");
        for (file, want) in [
            ("cpu.max", "50000 100000"),
            ("cpu.weight", "300"),
            ("cpuset.cpus", "0"),
            ("memory.max", "67108864"),
            ("memory.high", "50331648"),
            ("memory.swap.max", "0"),
            ("memory.oom.group", "1"),
            ("pids.max", "20"),
            ("io.weight", "default 500"),
            ("io.max", "8:0 rbps=1048576 wiops=10"),
        ] {
            assert_eq!(read(&unit_dir.join(file)), want, "{file}");
        }
    }

    /// psi_write overwrites the last byte of the write with a NUL: the trigger goes with one.
    #[test]
    fn a_pressure_trigger_is_written_with_its_nul_and_a_symlink_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let unit_dir = tmp.path().join("app.service");
        fs::create_dir_all(&unit_dir).unwrap();
        let v2 = V2::new(tmp.path().to_owned(), Path::new("/"), Path::new("/x"));
        let rel = Path::new("app.service");
        assert_eq!(v2.pressure_file(rel), None, "no PSI: no file");
        assert!(v2.pressure_trigger(rel, "some 150000 1000000").is_err());
        fs::write(unit_dir.join("memory.pressure"), "").unwrap();
        let fd = v2.pressure_trigger(rel, "some 150000 1000000").unwrap();
        assert!(fd.is_some());
        assert_eq!(
            fs::read(unit_dir.join("memory.pressure")).unwrap(),
            b"some 150000 1000000\0"
        );
        assert_eq!(
            v2.pressure_file(rel),
            Some(unit_dir.join("memory.pressure"))
        );
        let other = tmp.path().join("elsewhere");
        fs::write(&other, "").unwrap();
        fs::remove_file(unit_dir.join("memory.pressure")).unwrap();
        std::os::unix::fs::symlink(&other, unit_dir.join("memory.pressure")).unwrap();
        assert!(v2.pressure_trigger(rel, "some 1 2").is_err());
        assert_eq!(fs::read(&other).unwrap(), b"");
    }

    #[test]
    fn a_missing_file_is_a_problem_naming_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let unit_dir = tmp.path().join("app.service");
        fs::create_dir_all(&unit_dir).unwrap();
        let v2 = V2::new(tmp.path().to_owned(), Path::new("/"), Path::new("/x"));
        let resources = Resources {
            memory_swap_max: Some(ByteLimit::Bytes(0)),
            ..Resources::default()
        };
        let plan = cgroup_plan::plan(&resources, &OomConfig::default(), Version::V2, &|_| {
            Ok((0, 0))
        });
        let problems = apply(&v2, Path::new("app.service"), &plan);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("memory-swap-max: writing \"0\" to "),
            "{}",
            problems[0]
        );
    }
}
