//! Resource limits x cgroup version -> the exact (controller, file, value) writes, in order.

use std::time::Duration;

use crate::unit::{ByteLimit, DeviceSpec, OomConfig, Resources};

/// Which cgroup interface the running kernel offers corral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Version {
    V1,
    V2,
}

/// A controller; on v1 each is its own hierarchy, on v2 a name in `cgroup.subtree_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    Cpu,
    /// v1 only: CPU accounting (`cpuacct.usage`).
    Cpuacct,
    Cpuset,
    Memory,
    Pids,
    /// `io` on v2, `blkio` on v1.
    Io,
    /// v1 only; v2 has `cgroup.freeze` in every cgroup.
    Freezer,
}

impl Controller {
    /// The name in `/proc/self/mountinfo` (v1) or `cgroup.controllers` (v2).
    pub fn name(self, version: Version) -> &'static str {
        match (self, version) {
            (Controller::Cpu, _) => "cpu",
            (Controller::Cpuacct, _) => "cpuacct",
            (Controller::Cpuset, _) => "cpuset",
            (Controller::Memory, _) => "memory",
            (Controller::Pids, _) => "pids",
            (Controller::Io, Version::V2) => "io",
            (Controller::Io, Version::V1) => "blkio",
            (Controller::Freezer, _) => "freezer",
        }
    }

    pub const ALL: [Controller; 7] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Memory,
        Controller::Pids,
        Controller::Io,
        Controller::Freezer,
    ];
}

/// One write into a cgroup file, and the unit key it comes from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub controller: Controller,
    pub file: &'static str,
    pub value: String,
    pub key: &'static str,
}

/// A key this cgroup version cannot express; reported, never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub key: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub settings: Vec<Setting>,
    pub unsupported: Vec<Unsupported>,
}

/// Resolves a block device to its (major, minor) numbers.
pub type DeviceResolver<'a> = &'a dyn Fn(&DeviceSpec) -> Result<(u32, u32), String>;

/// The kernel's default CFS period, used when only `cpu-quota` is given.
pub const DEFAULT_CPU_PERIOD: Duration = Duration::from_millis(100);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Turns `[resources]` and `[oom]` into writes. `device` resolves a device to MAJ:MIN (stat on
/// the OS side); an unresolvable device is reported as unsupported for its key.
pub fn plan(
    resources: &Resources,
    oom: &OomConfig,
    version: Version,
    device: DeviceResolver<'_>,
) -> Plan {
    let mut p = PlanBuilder {
        version,
        plan: Plan::default(),
    };
    p.cpu(resources);
    if let Some(cpus) = &resources.allowed_cpus {
        p.set(
            Controller::Cpuset,
            "cpuset.cpus",
            cpus.clone(),
            "allowed-cpus",
        );
    }
    p.memory(resources, oom);
    if let Some(pids) = resources.pids_max {
        let value = pids.map_or_else(|| "max".to_owned(), |n| n.to_string());
        p.set(Controller::Pids, "pids.max", value, "pids-max");
    }
    p.io(resources, device);
    p.plan
}

struct PlanBuilder {
    version: Version,
    plan: Plan,
}

impl PlanBuilder {
    fn set(
        &mut self,
        controller: Controller,
        file: &'static str,
        value: String,
        key: &'static str,
    ) {
        self.plan.settings.push(Setting {
            controller,
            file,
            value,
            key,
        });
    }

    fn unsupported(&mut self, key: &'static str, reason: impl Into<String>) {
        self.plan.unsupported.push(Unsupported {
            key,
            reason: reason.into(),
        });
    }

    fn cpu(&mut self, r: &Resources) {
        let period = r.cpu_quota_period.unwrap_or(DEFAULT_CPU_PERIOD);
        let quota = r
            .cpu_quota
            .map(|q| micros(period).saturating_mul(u64::from(q.0)) / 100);
        let key = if r.cpu_quota.is_some() {
            "cpu-quota"
        } else {
            "cpu-quota-period"
        };
        if r.cpu_quota.is_some() || r.cpu_quota_period.is_some() {
            match self.version {
                Version::V2 => {
                    let quota = quota.map_or_else(|| "max".to_owned(), |q| q.to_string());
                    self.set(
                        Controller::Cpu,
                        "cpu.max",
                        format!("{quota} {}", micros(period)),
                        key,
                    );
                }
                Version::V1 => {
                    // The period first: the kernel checks the quota against the current period.
                    self.set(
                        Controller::Cpu,
                        "cpu.cfs_period_us",
                        micros(period).to_string(),
                        "cpu-quota-period",
                    );
                    let quota = quota.map_or_else(|| "-1".to_owned(), |q| q.to_string());
                    self.set(Controller::Cpu, "cpu.cfs_quota_us", quota, key);
                }
            }
        }
        if let Some(weight) = r.cpu_weight {
            match self.version {
                Version::V2 => self.set(
                    Controller::Cpu,
                    "cpu.weight",
                    weight.to_string(),
                    "cpu-weight",
                ),
                // docs/cgroups.md, "Limits": shares = weight x 1024 / 100 (weight 100 is the default 1024 shares).
                Version::V1 => {
                    let shares = (u64::from(weight) * 1024 / 100).max(2);
                    self.set(
                        Controller::Cpu,
                        "cpu.shares",
                        shares.to_string(),
                        "cpu-weight",
                    );
                }
            }
        }
    }

    fn memory(&mut self, r: &Resources, oom: &OomConfig) {
        let bytes = |limit: ByteLimit, max: &str| match limit {
            ByteLimit::Bytes(n) => n.to_string(),
            ByteLimit::Max => max.to_owned(),
        };
        match self.version {
            Version::V2 => {
                if let Some(high) = r.memory_high {
                    self.set(
                        Controller::Memory,
                        "memory.high",
                        bytes(high, "max"),
                        "memory-high",
                    );
                }
                if let Some(max) = r.memory_max {
                    self.set(
                        Controller::Memory,
                        "memory.max",
                        bytes(max, "max"),
                        "memory-max",
                    );
                }
                if let Some(swap) = r.memory_swap_max {
                    self.set(
                        Controller::Memory,
                        "memory.swap.max",
                        bytes(swap, "max"),
                        "memory-swap-max",
                    );
                }
                if oom.group_kill {
                    self.set(
                        Controller::Memory,
                        "memory.oom.group",
                        "1".into(),
                        "oom.group-kill",
                    );
                }
            }
            Version::V1 => {
                if let Some(max) = r.memory_max {
                    self.set(
                        Controller::Memory,
                        "memory.limit_in_bytes",
                        bytes(max, "-1"),
                        "memory-max",
                    );
                }
                if let Some(high) = r.memory_high {
                    self.set(
                        Controller::Memory,
                        "memory.soft_limit_in_bytes",
                        bytes(high, "-1"),
                        "memory-high",
                    );
                }
                if let Some(swap) = r.memory_swap_max {
                    // v1 limits memory+swap together; docs/cgroups.md: memsw = max + swap.
                    match (r.memory_max, swap) {
                        (_, ByteLimit::Max) => self.set(
                            Controller::Memory,
                            "memory.memsw.limit_in_bytes",
                            "-1".into(),
                            "memory-swap-max",
                        ),
                        (Some(ByteLimit::Bytes(max)), ByteLimit::Bytes(swap)) => self.set(
                            Controller::Memory,
                            "memory.memsw.limit_in_bytes",
                            max.saturating_add(swap).to_string(),
                            "memory-swap-max",
                        ),
                        _ => self.unsupported(
                            "memory-swap-max",
                            "cgroup v1 limits memory and swap together: set memory-max too",
                        ),
                    }
                }
                if oom.group_kill {
                    self.unsupported(
                        "oom.group-kill",
                        "cgroup v1 has no memory.oom.group: an OOM kill takes one process",
                    );
                }
            }
        }
    }

    fn io(&mut self, r: &Resources, device: DeviceResolver<'_>) {
        if let Some(weight) = r.io_weight {
            match self.version {
                Version::V2 => self.set(
                    Controller::Io,
                    "io.weight",
                    format!("default {weight}"),
                    "io-weight",
                ),
                Version::V1 => {
                    // blkio.weight takes 10..1000; map 1..10000 onto it linearly.
                    let scaled = 10 + (u64::from(weight.clamp(1, 10000)) - 1) * 990 / 9999;
                    self.set(
                        Controller::Io,
                        "blkio.weight",
                        scaled.to_string(),
                        "io-weight",
                    );
                }
            }
        }
        for limit in &r.io {
            let (major, minor) = match device(&limit.device) {
                Ok(numbers) => numbers,
                Err(reason) => {
                    self.unsupported("resources.io.device", reason);
                    continue;
                }
            };
            let dev = format!("{major}:{minor}");
            let bps = |l: Option<ByteLimit>| {
                l.map(|l| match l {
                    ByteLimit::Bytes(n) => n.to_string(),
                    ByteLimit::Max => "max".to_owned(),
                })
            };
            let iops = |n: Option<u64>| n.map(|n| n.to_string());
            let fields = [
                (
                    "rbps",
                    "blkio.throttle.read_bps_device",
                    "resources.io.read-bps",
                    bps(limit.read_bps),
                ),
                (
                    "wbps",
                    "blkio.throttle.write_bps_device",
                    "resources.io.write-bps",
                    bps(limit.write_bps),
                ),
                (
                    "riops",
                    "blkio.throttle.read_iops_device",
                    "resources.io.read-iops",
                    iops(limit.read_iops),
                ),
                (
                    "wiops",
                    "blkio.throttle.write_iops_device",
                    "resources.io.write-iops",
                    iops(limit.write_iops),
                ),
            ];
            match self.version {
                Version::V2 => {
                    let parts: Vec<String> = fields
                        .iter()
                        .filter_map(|(name, _, _, value)| {
                            value.as_ref().map(|v| format!("{name}={v}"))
                        })
                        .collect();
                    if !parts.is_empty() {
                        self.set(
                            Controller::Io,
                            "io.max",
                            format!("{dev} {}", parts.join(" ")),
                            "resources.io",
                        );
                    }
                }
                Version::V1 => {
                    for (_, file, key, value) in fields {
                        if let Some(value) = value {
                            // v1 removes a throttle with 0 rather than "max".
                            let value = if value == "max" {
                                "0".to_owned()
                            } else {
                                value
                            };
                            self.set(Controller::Io, file, format!("{dev} {value}"), key);
                        }
                    }
                }
            }
        }
    }
}

/// `new`, plus "no limit" for every key `old` set and `new` drops, so a reload that removes a
/// limit lifts it in place. `allowed-cpus` and `[[resources.io]]` devices are not lifted (the
/// kernel has no single "unset" value for them); dropping them takes a restart.
pub fn lift_removed(old: &Resources, new: &Resources) -> Resources {
    let mut lifted = new.clone();
    let dropped = |o: bool, n: bool| o && !n;
    if dropped(old.cpu_quota.is_some(), new.cpu_quota.is_some()) && new.cpu_quota_period.is_none() {
        lifted.cpu_quota_period = Some(DEFAULT_CPU_PERIOD);
    }
    if dropped(old.cpu_weight.is_some(), new.cpu_weight.is_some()) {
        lifted.cpu_weight = Some(100);
    }
    for (o, n, l) in [
        (old.memory_max, new.memory_max, &mut lifted.memory_max),
        (old.memory_high, new.memory_high, &mut lifted.memory_high),
        (
            old.memory_swap_max,
            new.memory_swap_max,
            &mut lifted.memory_swap_max,
        ),
    ] {
        if dropped(o.is_some(), n.is_some()) {
            *l = Some(ByteLimit::Max);
        }
    }
    if dropped(old.pids_max.is_some(), new.pids_max.is_some()) {
        lifted.pids_max = Some(None);
    }
    if dropped(old.io_weight.is_some(), new.io_weight.is_some()) {
        lifted.io_weight = Some(100);
    }
    lifted
}

/// The controllers a plan writes to (so v2 can enable exactly those down the tree).
pub fn controllers(plan: &Plan) -> Vec<Controller> {
    let mut out: Vec<Controller> = plan.settings.iter().map(|s| s.controller).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::{CpuPercent, IoLimit};
    use std::path::PathBuf;

    fn vda(spec: &DeviceSpec) -> Result<(u32, u32), String> {
        match spec {
            DeviceSpec::Path(p) if p == &PathBuf::from("/dev/vda") => Ok((254, 0)),
            DeviceSpec::Path(p) => Err(format!("{} is not a block device", p.display())),
            DeviceSpec::Number { major, minor } => Ok((*major, *minor)),
        }
    }

    fn everything() -> (Resources, OomConfig) {
        let resources = Resources {
            cpu_quota: Some(CpuPercent(150)),
            cpu_quota_period: Some(Duration::from_millis(50)),
            cpu_weight: Some(200),
            allowed_cpus: Some("0-1".into()),
            memory_max: Some(ByteLimit::Bytes(512 << 20)),
            memory_high: Some(ByteLimit::Bytes(400 << 20)),
            memory_swap_max: Some(ByteLimit::Bytes(0)),
            pids_max: Some(Some(64)),
            io_weight: Some(100),
            io: vec![IoLimit {
                device: DeviceSpec::Path("/dev/vda".into()),
                read_bps: Some(ByteLimit::Bytes(100 << 20)),
                write_bps: Some(ByteLimit::Max),
                read_iops: Some(2000),
                write_iops: None,
            }],
        };
        let oom = OomConfig {
            group_kill: true,
            score_adjust: None,
            pressure: None,
        };
        (resources, oom)
    }

    fn files(plan: &Plan) -> Vec<(&str, &str)> {
        plan.settings
            .iter()
            .map(|s| (s.file, s.value.as_str()))
            .collect()
    }

    #[test]
    fn every_key_maps_to_its_v2_file() {
        let (r, oom) = everything();
        let plan = plan(&r, &oom, Version::V2, &vda);
        assert_eq!(
            files(&plan),
            vec![
                ("cpu.max", "75000 50000"),
                ("cpu.weight", "200"),
                ("cpuset.cpus", "0-1"),
                ("memory.high", "419430400"),
                ("memory.max", "536870912"),
                ("memory.swap.max", "0"),
                ("memory.oom.group", "1"),
                ("pids.max", "64"),
                ("io.weight", "default 100"),
                ("io.max", "254:0 rbps=104857600 wbps=max riops=2000"),
            ]
        );
        assert!(plan.unsupported.is_empty());
        assert_eq!(
            controllers(&plan),
            vec![
                Controller::Cpu,
                Controller::Cpuset,
                Controller::Memory,
                Controller::Pids,
                Controller::Io
            ]
        );
    }

    #[test]
    fn every_key_maps_to_its_v1_file() {
        let (r, oom) = everything();
        let plan = plan(&r, &oom, Version::V1, &vda);
        assert_eq!(
            files(&plan),
            vec![
                ("cpu.cfs_period_us", "50000"),
                ("cpu.cfs_quota_us", "75000"),
                ("cpu.shares", "2048"),
                ("cpuset.cpus", "0-1"),
                ("memory.limit_in_bytes", "536870912"),
                ("memory.soft_limit_in_bytes", "419430400"),
                ("memory.memsw.limit_in_bytes", "536870912"),
                ("pids.max", "64"),
                ("blkio.weight", "19"),
                ("blkio.throttle.read_bps_device", "254:0 104857600"),
                ("blkio.throttle.write_bps_device", "254:0 0"),
                ("blkio.throttle.read_iops_device", "254:0 2000"),
            ]
        );
        assert_eq!(plan.unsupported.len(), 1);
        assert_eq!(plan.unsupported[0].key, "oom.group-kill");
    }

    #[test]
    fn quota_alone_uses_the_default_period_and_max_means_no_limit() {
        let r = Resources {
            cpu_quota: Some(CpuPercent(50)),
            memory_max: Some(ByteLimit::Max),
            pids_max: Some(None),
            ..Resources::default()
        };
        let oom = OomConfig::default();
        assert_eq!(
            files(&plan(&r, &oom, Version::V2, &vda)),
            vec![
                ("cpu.max", "50000 100000"),
                ("memory.max", "max"),
                ("pids.max", "max")
            ]
        );
        assert_eq!(
            files(&plan(&r, &oom, Version::V1, &vda)),
            vec![
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("memory.limit_in_bytes", "-1"),
                ("pids.max", "max"),
            ]
        );
    }

    #[test]
    fn weights_scale_onto_v1_ranges() {
        let table = [
            (1, "10", "10"),
            (100, "1024", "19"),
            (10000, "102400", "1000"),
        ];
        for (weight, shares, blkio) in table {
            let r = Resources {
                cpu_weight: Some(weight),
                io_weight: Some(weight),
                ..Resources::default()
            };
            let plan = plan(&r, &OomConfig::default(), Version::V1, &vda);
            assert_eq!(
                files(&plan),
                vec![("cpu.shares", shares), ("blkio.weight", blkio)],
                "{weight}"
            );
        }
    }

    #[test]
    fn what_cannot_be_expressed_is_reported_not_dropped() {
        let r = Resources {
            memory_swap_max: Some(ByteLimit::Bytes(1 << 20)),
            io: vec![IoLimit {
                device: DeviceSpec::Path("/dev/nope".into()),
                read_bps: Some(ByteLimit::Bytes(1)),
                write_bps: None,
                read_iops: None,
                write_iops: None,
            }],
            ..Resources::default()
        };
        let plan = plan(&r, &OomConfig::default(), Version::V1, &vda);
        assert!(plan.settings.is_empty());
        let keys: Vec<&str> = plan.unsupported.iter().map(|u| u.key).collect();
        assert_eq!(keys, vec!["memory-swap-max", "resources.io.device"]);
        assert!(plan.unsupported[1].reason.contains("/dev/nope"));
    }
}

/// A unit's cgroup below R (docs/cgroups.md, "Layout"): `a.slice/b.slice/name.service`, or `name.slice` for a
/// slice, following `slice` parents through `parent_of`.
pub fn unit_cgroup(
    name: &crate::unit::UnitName,
    kind: crate::unit::UnitKind,
    parent_of: &dyn Fn(&crate::unit::UnitName) -> Option<crate::unit::UnitName>,
) -> std::path::PathBuf {
    let suffix = match kind {
        crate::unit::UnitKind::Slice => "slice",
        _ => "service",
    };
    let mut parts = vec![format!("{name}.{suffix}")];
    let mut parent = parent_of(name);
    // Validation rejects slice cycles; the bound keeps a bug from looping forever.
    while let Some(p) = parent
        && parts.len() < 64
    {
        parts.push(format!("{p}.slice"));
        parent = parent_of(&p);
    }
    parts.iter().rev().collect()
}

#[cfg(test)]
mod lift_tests {
    use super::*;

    #[test]
    fn a_dropped_limit_is_written_back_to_no_limit() {
        let old = Resources {
            memory_max: Some(ByteLimit::Bytes(1 << 26)),
            pids_max: Some(Some(10)),
            cpu_quota: Some(crate::unit::CpuPercent(50)),
            ..Resources::default()
        };
        let new = Resources::default();
        let plan = plan(
            &lift_removed(&old, &new),
            &OomConfig::default(),
            Version::V2,
            &|_| Ok((0, 0)),
        );
        let files: Vec<(&str, &str)> = plan
            .settings
            .iter()
            .map(|s| (s.file, s.value.as_str()))
            .collect();
        assert_eq!(
            files,
            vec![
                ("cpu.max", "max 100000"),
                ("memory.max", "max"),
                ("pids.max", "max")
            ]
        );
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;
    use crate::unit::{UnitKind, UnitName};

    #[test]
    fn services_live_under_their_slice_chain() {
        let n = |s: &str| UnitName::new(s).unwrap();
        let parent_of = |u: &UnitName| match u.as_str() {
            "web" => Some(n("frontend")),
            "frontend" => Some(n("apps")),
            _ => None,
        };
        assert_eq!(
            unit_cgroup(&n("web"), UnitKind::Service, &parent_of),
            std::path::PathBuf::from("apps.slice/frontend.slice/web.service")
        );
        assert_eq!(
            unit_cgroup(&n("frontend"), UnitKind::Slice, &parent_of),
            std::path::PathBuf::from("apps.slice/frontend.slice")
        );
        assert_eq!(
            unit_cgroup(&n("db"), UnitKind::Oneshot, &parent_of),
            std::path::PathBuf::from("db.service")
        );
    }
}
