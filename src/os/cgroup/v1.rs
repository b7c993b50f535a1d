//! cgroup v1 (legacy and hybrid layouts): one hierarchy per controller (or co-mounted group), the
//! same relative path in each.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::core::cgroup_plan::{Controller, Setting, Version};
use crate::core::container::Budget;
use crate::proto::Usage;

use super::discover::Mount;
use super::stats::flat_keyed;
use super::{
    Backend, CgroupError, Join, display_below, make_dir, open_for_join, read_file, read_pids,
    relative, remove_dir, write_file,
};

/// One mounted hierarchy and R inside it.
#[derive(Debug, Clone)]
struct Hierarchy {
    controllers: BTreeSet<Controller>,
    /// The directory of R in this hierarchy.
    root: PathBuf,
    /// Where the hierarchy is mounted.
    mount: PathBuf,
}

/// How long a v1 freeze (the `freeze` verb) may stay FREEZING before corral thaws the cgroup
/// again and gives up. The wait runs on the event loop, so it is kept tight: FREEZING lasted
/// 0.7 ms typically and 16 ms at worst over 200 freezes of 4 busy processes on 2 loaded cores.
/// A task in uninterruptible sleep never freezes; that is the case this bound is for.
const FREEZE_TIMEOUT: Duration = Duration::from_millis(100);

pub struct V1 {
    hierarchies: Vec<Hierarchy>,
    root_rel: PathBuf,
    pressure_files: super::stats::PressureFiles,
}

impl V1 {
    /// `mounts`: controller -> mount point. `root`: R for every hierarchy, or `None` for corral's
    /// own cgroup in each (`own`, from /proc/self/cgroup).
    pub fn new(
        mounts: &BTreeMap<Controller, Mount>,
        root: Option<&Path>,
        own: &BTreeMap<String, PathBuf>,
    ) -> Result<V1, CgroupError> {
        let mut by_mount: BTreeMap<PathBuf, (&Mount, BTreeSet<Controller>)> = BTreeMap::new();
        for (controller, mount) in mounts {
            by_mount
                .entry(mount.point.clone())
                .or_insert_with(|| (mount, BTreeSet::new()))
                .1
                .insert(*controller);
        }
        let mut hierarchies = Vec::new();
        for (point, (mount, controllers)) in by_mount {
            let rel = match root {
                Some(r) => super::root_in(mount, r),
                None => {
                    let name = controllers
                        .iter()
                        .next()
                        .map(|c| c.name(Version::V1))
                        .unwrap_or("");
                    let own = own.get(name).ok_or(CgroupError::OwnCgroupUnknown)?;
                    super::visible(mount, own)?
                }
            };
            hierarchies.push(Hierarchy {
                controllers,
                root: point.join(rel),
                mount: point,
            });
        }
        Ok(V1 {
            hierarchies,
            root_rel: root.map(relative).unwrap_or_default(),
            pressure_files: Default::default(),
        })
    }

    fn hierarchy(&self, controller: Controller) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.contains(&controller))
    }

    fn dir_of(&self, controller: Controller, rel: &Path) -> Option<PathBuf> {
        self.hierarchy(controller).map(|h| h.root.join(rel))
    }

    /// The hierarchy whose `cgroup.procs` lists a unit's members (all list the same processes).
    fn membership(&self, rel: &Path) -> Result<PathBuf, CgroupError> {
        [Controller::Pids, Controller::Freezer, Controller::Memory]
            .into_iter()
            .find_map(|c| self.dir_of(c, rel))
            .or_else(|| self.hierarchies.first().map(|h| h.root.join(rel)))
            .ok_or(CgroupError::NotMounted)
    }

    /// A new cpuset cgroup starts with empty `cpus` and `mems`, and no task may join it until
    /// both are set: inherit the parent's.
    fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
        let Some(parent) = dir.parent() else {
            return Ok(());
        };
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = read_file(&dir.join(file))?;
            if own.trim().is_empty() {
                let inherited = read_file(&parent.join(file))?;
                write_file(&dir.join(file), inherited.trim())?;
            }
        }
        Ok(())
    }

    fn make_path(&self, hierarchy: &Hierarchy, base: &Path, rel: &Path) -> Result<(), CgroupError> {
        let mut dir = base.to_owned();
        for component in rel.components() {
            dir.push(component);
            make_dir(&dir)?;
            if hierarchy.controllers.contains(&Controller::Cpuset) {
                Self::inherit_cpuset(&dir)?;
            }
        }
        Ok(())
    }
}

impl Backend for V1 {
    fn version(&self) -> Version {
        Version::V1
    }

    fn prepare_root(&mut self) -> Result<Vec<String>, CgroupError> {
        for h in &self.hierarchies {
            // Walk up to the mount point: create R's missing levels from the top down.
            let missing: Vec<&Path> = h.root.ancestors().take_while(|d| !d.exists()).collect();
            let Some(top) = missing.last().and_then(|d| d.parent()) else {
                continue;
            };
            let rel = h.root.strip_prefix(top).unwrap_or(&h.root).to_owned();
            self.make_path(h, top, &rel)?;
        }
        Ok(Vec::new())
    }

    fn create(&self, rel: &Path, _holds_children: bool) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            self.make_path(h, &h.root, rel)?;
        }
        Ok(())
    }

    fn write(&self, rel: &Path, setting: &Setting) -> Result<(), CgroupError> {
        let dir = self
            .dir_of(setting.controller, rel)
            .ok_or(CgroupError::Unavailable(
                setting.controller.name(Version::V1),
            ))?;
        write_file(&dir.join(setting.file), &setting.value)
    }

    fn join(&self, rel: &Path) -> Result<Join, CgroupError> {
        Ok(Join {
            write_zero: self
                .hierarchies
                .iter()
                .map(|h| open_for_join(&h.root.join(rel).join("tasks")))
                .collect::<Result<_, _>>()?,
            clone_into: None,
        })
    }

    fn procs(&self, rel: &Path) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.membership(rel)?.join("cgroup.procs"))
    }

    fn set_frozen(&self, rel: &Path, frozen: bool) -> Result<(), CgroupError> {
        let dir = self
            .dir_of(Controller::Freezer, rel)
            .ok_or(CgroupError::Unavailable("the v1 freezer controller"))?;
        let state = dir.join("freezer.state");
        if !frozen {
            return write_file(&state, "THAWED");
        }
        // A v1 freeze is asynchronous: the write starts it, and `freezer.state` reads FREEZING
        // until every task has stopped (cgroup-v1/freezer-subsystem.rst). Wait for FROZEN, so
        // that `freeze` answers with a paused unit (`kill_all` uses `begin_freeze`, which does
        // not wait). Each pass writes FROZEN again, which also takes
        // tasks forked meanwhile (as runc does). Under CPU contention a read right after the
        // write sees FREEZING nearly every time; it settles within microseconds to milliseconds.
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut pause = Duration::from_micros(50);
        loop {
            write_file(&state, "FROZEN")?;
            if read_file(&state)?.trim() == "FROZEN" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Half frozen helps nobody, and frozen tasks would hold a SIGKILL back.
                let _ = write_file(&state, "THAWED");
                return Err(CgroupError::Io {
                    operation: "freezing",
                    path: state,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "still FREEZING after 100ms (a task in uninterruptible sleep?); \
                         thawed again",
                    ),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    fn begin_freeze(&self, rel: &Path) -> Result<(), CgroupError> {
        let dir = self
            .dir_of(Controller::Freezer, rel)
            .ok_or(CgroupError::Unavailable("the v1 freezer controller"))?;
        write_file(&dir.join("freezer.state"), "FROZEN")
    }

    fn kill_switch(&self, _rel: &Path) -> Result<bool, CgroupError> {
        Ok(false)
    }

    fn remove(&self, rel: &Path) -> Result<bool, CgroupError> {
        let mut all = true;
        for h in &self.hierarchies {
            all &= remove_dir(&h.root.join(rel))?;
        }
        Ok(all)
    }

    fn exists(&self, rel: &Path) -> bool {
        self.hierarchies.iter().any(|h| h.root.join(rel).is_dir())
    }

    fn usage(&self, rel: &Path) -> Usage {
        super::stats::usage_v1(&|c| self.dir_of(c, rel), &self.pressure_files)
    }

    fn oom_kills(&self, rel: &Path) -> Option<u64> {
        let dir = self.dir_of(Controller::Memory, rel)?;
        flat_keyed(
            &read_file(&dir.join("memory.oom_control")).ok()?,
            "oom_kill",
        )
    }

    fn populated_watch(&self, _rel: &Path) -> Result<Option<OwnedFd>, CgroupError> {
        // notify_on_release runs the hierarchy's release_agent, a program, not an event to us:
        // corral learns of emptiness from reaping instead (the last member is always its reap).
        Ok(None)
    }

    fn notifies_memory_marks(&self) -> bool {
        // It could (usage thresholds in cgroup.event_control), but each registration waits for
        // an RCU grace period in the kernel (mem_cgroup_usage_register_event): 15-25 ms measured
        // here, per mark, at every start, which made a cold start of 1000 units with memory-max
        // take 27 s. The usage timer does the job for v1 as for v2.
        false
    }

    fn budget(&self) -> (Budget, Option<u64>, Option<u64>) {
        let at = |c: Controller| {
            self.hierarchy(c)
                .map(|h| (h.mount.as_path(), h.root.as_path()))
        };
        let budget = super::access::v1(
            at(Controller::Memory),
            at(Controller::Cpu),
            at(Controller::Pids),
            at(Controller::Cpuset),
        );
        // v1 has no caps on the number or depth of cgroups.
        (budget, None, None)
    }

    fn memory_watch(&self, rel: &Path, marks: &[u64]) -> Result<Vec<OwnedFd>, CgroupError> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        use std::os::fd::AsRawFd;
        let dir = self
            .dir_of(Controller::Memory, rel)
            .ok_or(CgroupError::Unavailable("the v1 memory controller"))?;
        let control = dir.join("cgroup.event_control");
        // memory.oom_control wakes on OOM; memory.usage_in_bytes with a threshold wakes when
        // usage crosses it in either direction (memcg v1 notification API, one eventfd per
        // threshold).
        let mut targets = vec![("memory.oom_control", String::new())];
        for mark in marks {
            targets.push(("memory.usage_in_bytes", format!(" {mark}")));
        }
        let mut fds = Vec::new();
        for (file, suffix) in targets {
            let path = dir.join(file);
            let event = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| super::io_error("creating an eventfd for", &path)(e.into()))?;
            // The kernel keeps its own reference to the target file once registered.
            let target = std::fs::File::open(&path).map_err(super::io_error("opening", &path))?;
            let line = format!("{} {}{suffix}", event.as_raw_fd(), target.as_raw_fd());
            write_file(&control, &line)?;
            fds.push(OwnedFd::from(event));
        }
        Ok(fds)
    }

    fn display(&self, rel: &Path) -> String {
        display_below(&self.root_rel, rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A whole hierarchy mounted at `point`, as on a host.
    fn whole(point: &Path) -> Mount {
        Mount {
            point: point.to_owned(),
            root: PathBuf::from("/"),
            ..Mount::default()
        }
    }

    #[test]
    fn a_container_sees_its_own_cgroup_at_the_mount_point() {
        // runc on v1 without a cgroup namespace: the mount shows /ctr, /proc/self/cgroup says
        // /ctr; the units go below the mount point itself, not below a /ctr inside it.
        let mounts = BTreeMap::from([(
            Controller::Memory,
            Mount {
                point: PathBuf::from("/sys/fs/cgroup/memory"),
                root: PathBuf::from("/ctr"),
                ..Mount::default()
            },
        )]);
        let own = BTreeMap::from([("memory".to_string(), PathBuf::from("/ctr"))]);
        let v1 = V1::new(&mounts, None, &own).unwrap();
        assert_eq!(
            v1.dir_of(Controller::Memory, Path::new("x.service")),
            Some(PathBuf::from("/sys/fs/cgroup/memory/x.service"))
        );
        // --cgroup-root given as the kernel's path, or as the container sees it.
        for root in ["/ctr/sub", "/sub"] {
            let v1 = V1::new(&mounts, Some(Path::new(root)), &own).unwrap();
            assert_eq!(
                v1.dir_of(Controller::Memory, Path::new("x.service")),
                Some(PathBuf::from("/sys/fs/cgroup/memory/sub/x.service")),
                "{root}"
            );
        }
        let elsewhere = BTreeMap::from([("memory".to_string(), PathBuf::from("/other"))]);
        assert!(matches!(
            V1::new(&mounts, None, &elsewhere),
            Err(CgroupError::OwnCgroupHidden { .. })
        ));
    }

    #[test]
    fn a_new_cpuset_level_inherits_cpus_and_mems() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("cpuset");
        fs::create_dir_all(mount.join("r/a.slice")).unwrap();
        fs::write(mount.join("r/cpuset.cpus"), "0-3\n").unwrap();
        fs::write(mount.join("r/cpuset.mems"), "0\n").unwrap();
        fs::write(mount.join("r/a.slice/cpuset.cpus"), "").unwrap();
        fs::write(mount.join("r/a.slice/cpuset.mems"), "\n").unwrap();
        let mounts = BTreeMap::from([(Controller::Cpuset, whole(&mount))]);
        let v1 = V1::new(&mounts, Some(Path::new("/r")), &BTreeMap::new()).unwrap();
        v1.create(Path::new("a.slice"), true).unwrap();
        assert_eq!(
            fs::read_to_string(mount.join("r/a.slice/cpuset.cpus")).unwrap(),
            "0-3"
        );
        assert_eq!(
            fs::read_to_string(mount.join("r/a.slice/cpuset.mems")).unwrap(),
            "0"
        );
    }

    /// A freezer that never reaches FROZEN (a task in uninterruptible sleep; here a state file
    /// that reads empty): the `freeze` verb's wait gives up and thaws; `begin_freeze` does not
    /// wait at all.
    #[test]
    fn a_freeze_that_never_completes_is_given_up_and_thawed() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("freezer");
        fs::create_dir_all(mount.join("r/x.service")).unwrap();
        std::os::unix::fs::symlink("/dev/null", mount.join("r/x.service/freezer.state")).unwrap();
        let mounts = BTreeMap::from([(Controller::Freezer, whole(&mount))]);
        let v1 = V1::new(&mounts, Some(Path::new("/r")), &BTreeMap::new()).unwrap();
        let rel = Path::new("x.service");
        v1.begin_freeze(rel).unwrap();
        let error = v1.set_frozen(rel, true).unwrap_err().to_string();
        assert!(error.contains("still FREEZING"), "{error}");
    }

    #[test]
    fn comounted_controllers_share_one_hierarchy_and_default_root_is_own_cgroup() {
        let mounts = BTreeMap::from([
            (Controller::Cpu, whole(Path::new("/cg/cpu,cpuacct"))),
            (Controller::Cpuacct, whole(Path::new("/cg/cpu,cpuacct"))),
            (Controller::Memory, whole(Path::new("/cg/memory"))),
        ]);
        let own = BTreeMap::from([
            ("cpu".to_string(), PathBuf::from("/a")),
            ("cpuacct".to_string(), PathBuf::from("/a")),
            ("memory".to_string(), PathBuf::from("/b/c")),
        ]);
        let v1 = V1::new(&mounts, None, &own).unwrap();
        assert_eq!(v1.hierarchies.len(), 2);
        assert_eq!(
            v1.dir_of(Controller::Cpuacct, Path::new("x.service")),
            Some(PathBuf::from("/cg/cpu,cpuacct/a/x.service"))
        );
        assert_eq!(
            v1.dir_of(Controller::Memory, Path::new("x.service")),
            Some(PathBuf::from("/cg/memory/b/c/x.service"))
        );
    }
}
