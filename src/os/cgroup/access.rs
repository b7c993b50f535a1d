//! The kernel's side of the capability ladder (core/container.rs): the limits in force above
//! corral's root R, read level by level up to the mount point, in either cgroup version.

use std::path::{Path, PathBuf};

use crate::core::container::Budget;

/// Every directory from `dir` up to and including `mount`, nearest first (missing ones too:
/// R does not exist before corral makes it).
fn levels(mount: &Path, dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|d| d.starts_with(mount))
        .map(Path::to_path_buf)
        .collect()
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .map(|t| t.trim().to_owned())
}

fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The tightest v2 limits from `dir` (R) up to `mount`, and the `cgroup.max.descendants` and
/// `cgroup.max.depth` of the nearest level that has them (Documentation/admin-guide/cgroup-v2.rst).
pub fn v2(mount: &Path, dir: &Path) -> (Budget, Option<u64>, Option<u64>) {
    let mut budget = Budget::default();
    let mut descendants = None;
    let mut depth = None;
    for level in levels(mount, dir) {
        let number = |file| read(&level, file).and_then(|t| t.parse::<u64>().ok());
        budget.memory_max = min(budget.memory_max, number("memory.max"));
        budget.pids_max = min(budget.pids_max, number("pids.max"));
        if let Some(cpu) = read(&level, "cpu.max")
            && let Some((quota, period)) = cpu.split_once(' ')
            && let (Ok(quota), Ok(period)) = (quota.parse::<u64>(), period.parse::<u64>())
        {
            let tighter = budget.cpu_quota.is_none_or(|(q, p)| {
                u128::from(quota) * u128::from(p) < u128::from(q) * u128::from(period)
            });
            if tighter {
                budget.cpu_quota = Some((quota, period));
            }
        }
        if budget.cpus.is_none() {
            budget.cpus = read(&level, "cpuset.cpus.effective").filter(|c| !c.is_empty());
        }
        if descendants.is_none() && depth.is_none() && level.join("cgroup.max.depth").exists() {
            descendants = number("cgroup.max.descendants");
            depth = number("cgroup.max.depth");
        }
    }
    (budget, descendants, depth)
}

/// The tightest v1 limits above R: `dir_of(file's controller)` gives R's directory in the
/// hierarchy with `mount` as its mount point.
pub fn v1(
    memory: Option<(&Path, &Path)>,
    cpu: Option<(&Path, &Path)>,
    pids: Option<(&Path, &Path)>,
    cpuset: Option<(&Path, &Path)>,
) -> Budget {
    let mut budget = Budget::default();
    // memory.limit_in_bytes reads PAGE_COUNTER_MAX pages (about 2^63) when unlimited.
    const UNLIMITED: u64 = 1 << 62;
    for level in memory.map(|(m, d)| levels(m, d)).unwrap_or_default() {
        let limit = read(&level, "memory.limit_in_bytes").and_then(|t| t.parse::<u64>().ok());
        budget.memory_max = min(budget.memory_max, limit.filter(|l| *l < UNLIMITED));
    }
    for level in pids.map(|(m, d)| levels(m, d)).unwrap_or_default() {
        budget.pids_max = min(
            budget.pids_max,
            read(&level, "pids.max").and_then(|t| t.parse().ok()),
        );
    }
    for level in cpu.map(|(m, d)| levels(m, d)).unwrap_or_default() {
        // cfs_quota_us is -1 when unlimited: no u64 parse.
        let quota = read(&level, "cpu.cfs_quota_us").and_then(|t| t.parse::<u64>().ok());
        let period = read(&level, "cpu.cfs_period_us").and_then(|t| t.parse::<u64>().ok());
        if let (Some(quota), Some(period)) = (quota, period) {
            let tighter = budget.cpu_quota.is_none_or(|(q, p)| {
                u128::from(quota) * u128::from(p) < u128::from(q) * u128::from(period)
            });
            if tighter {
                budget.cpu_quota = Some((quota, period));
            }
        }
    }
    if let Some((m, d)) = cpuset {
        budget.cpus = levels(m, d)
            .iter()
            .find_map(|l| read(l, "cpuset.effective_cpus").filter(|c| !c.is_empty()));
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_budget_is_the_tightest_level_up_to_the_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        let pod = mount.join("pod");
        let r = pod.join("corral");
        std::fs::create_dir_all(&pod).unwrap();
        for (dir, file, text) in [
            (mount, "cpuset.cpus.effective", "0-3\n"),
            (&pod, "memory.max", "536870912\n"),
            (&pod, "pids.max", "max\n"),
            (&pod, "cpu.max", "50000 100000\n"),
            (&pod, "cpuset.cpus.effective", "0-1\n"),
            (&pod, "cgroup.max.descendants", "250\n"),
            (&pod, "cgroup.max.depth", "50\n"),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        // R (pod/corral) does not exist yet: its parent's limits are the budget.
        let (budget, descendants, depth) = v2(mount, &r);
        assert_eq!(
            budget,
            Budget {
                memory_max: Some(512 << 20),
                cpu_quota: Some((50_000, 100_000)),
                pids_max: None,
                cpus: Some("0-1".into()),
            }
        );
        assert_eq!((descendants, depth), (Some(250), Some(50)));
    }

    #[test]
    fn v1_unlimited_values_are_no_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let memory = tmp.path().join("memory");
        let cpu = tmp.path().join("cpu");
        std::fs::create_dir_all(memory.join("ctr")).unwrap();
        std::fs::create_dir_all(cpu.join("ctr")).unwrap();
        std::fs::write(
            memory.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(memory.join("ctr/memory.limit_in_bytes"), "268435456\n").unwrap();
        std::fs::write(cpu.join("ctr/cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(cpu.join("ctr/cpu.cfs_period_us"), "100000\n").unwrap();
        let budget = v1(
            Some((&memory, &memory.join("ctr/r"))),
            Some((&cpu, &cpu.join("ctr/r"))),
            None,
            None,
        );
        assert_eq!(budget.memory_max, Some(256 << 20));
        assert_eq!(budget.cpu_quota, None);
    }
}
