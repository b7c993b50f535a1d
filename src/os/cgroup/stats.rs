//! The live figures of one cgroup (`proto::Usage`), read from the kernel's files of either
//! version: every file name and every parser in one place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::core::cgroup_plan::Controller;
use crate::proto::Usage;

/// Whether this kernel shows PSI files (`cpu.pressure`, ...) in unit cgroups. It is a boot-time
/// switch, the same for every cgroup (`psi=`, and for v1 hierarchies `psi_cgroupv1`:
/// Documentation/accounting/psi.rst), so the first cgroup whose `cpu.pressure` is missing
/// beside its `cpu.stat` tells for all: later reads skip the three opens that would fail (a
/// quarter of a v1 unit's `status` syscalls).
#[derive(Debug, Default)]
pub struct PressureFiles(AtomicU8);

const PRESSURE_UNKNOWN: u8 = 0;
const PRESSURE_ABSENT: u8 = 1;
const PRESSURE_PRESENT: u8 = 2;

impl PressureFiles {
    fn worth_reading(&self) -> bool {
        self.0.load(Ordering::Relaxed) != PRESSURE_ABSENT
    }

    /// `cpu_stat_read`: the directory of `cpu.pressure` was there (its `cpu.stat` was read), so
    /// a missing `cpu.pressure` means the kernel shows none, not that the cgroup is gone.
    fn learn(&self, cpu_stat_read: bool, cpu_pressure_read: bool) {
        if self.0.load(Ordering::Relaxed) != PRESSURE_UNKNOWN {
            return;
        }
        let seen = match (cpu_stat_read, cpu_pressure_read) {
            (_, true) => PRESSURE_PRESENT,
            (true, false) => PRESSURE_ABSENT,
            (false, false) => return,
        };
        self.0.store(seen, Ordering::Relaxed);
    }
}

/// A cgroup file's text, or `None` when it cannot be read (no such file, cgroup gone).
fn read_cgroup_file(path: &Path) -> Option<String> {
    super::read_text(path).ok()
}

/// v1 writes "no limit" as the largest page-aligned count (`PAGE_COUNTER_MAX` pages, e.g.
/// 9223372036854771712); anything this large is no limit at all.
const V1_UNLIMITED: u64 = 1 << 62;

/// Reads the v2 files of the cgroup directory `dir`.
pub fn usage_v2(dir: &Path, pressure: &PressureFiles) -> Usage {
    let read = |file: &str| read_cgroup_file(&dir.join(file));
    let cpu = read("cpu.stat");
    let read_pressure = |file: &str| {
        pressure
            .worth_reading()
            .then(|| read(file))
            .flatten()
            .and_then(|t| pressure_some_avg10(&t))
    };
    let cpu_pressure = read_pressure("cpu.pressure");
    pressure.learn(cpu.is_some(), cpu_pressure.is_some());
    let cpu_key = |key| cpu.as_deref().and_then(|t| flat_keyed(t, key));
    let io = read("io.stat").map(|t| io_stat_v2(&t));
    Usage {
        memory_current: read("memory.current").and_then(|t| single(&t)),
        memory_peak: read("memory.peak").and_then(|t| single(&t)),
        memory_max: read("memory.max").and_then(|t| single(&t)),
        cpu_usage_usec: cpu_key("usage_usec"),
        cpu_throttled_usec: cpu_key("throttled_usec"),
        nr_throttled: cpu_key("nr_throttled"),
        pids_current: read("pids.current").and_then(|t| single(&t)),
        pids_max: read("pids.max").and_then(|t| single(&t)),
        io_read_bytes: io.map(|t| t.read_bytes),
        io_write_bytes: io.map(|t| t.write_bytes),
        io_read_ops: io.map(|t| t.read_ops),
        io_write_ops: io.map(|t| t.write_ops),
        cgroup_oom_kills: read("memory.events").and_then(|t| flat_keyed(&t, "oom_kill")),
        cpu_pressure,
        memory_pressure: read_pressure("memory.pressure"),
        io_pressure: read_pressure("io.pressure"),
    }
}

/// Reads the v1 files; `dir_of` gives the cgroup's directory in the hierarchy of a controller
/// (`None` where that controller is not mounted).
pub fn usage_v1(dir_of: &dyn Fn(Controller) -> Option<PathBuf>, pressure: &PressureFiles) -> Usage {
    let read = |c: Controller, file: &str| dir_of(c).and_then(|d| read_cgroup_file(&d.join(file)));
    let cpu = read(Controller::Cpu, "cpu.stat");
    // Only kernels booted with `psi_cgroupv1` show pressure files in v1 hierarchies.
    let read_pressure = |c: Controller, file: &str| {
        pressure
            .worth_reading()
            .then(|| read(c, file))
            .flatten()
            .and_then(|t| pressure_some_avg10(&t))
    };
    let cpu_pressure = read_pressure(Controller::Cpu, "cpu.pressure");
    pressure.learn(cpu.is_some(), cpu_pressure.is_some());
    let io_bytes = read(Controller::Io, "blkio.throttle.io_service_bytes").map(|t| per_op_v1(&t));
    let io_ops = read(Controller::Io, "blkio.throttle.io_serviced").map(|t| per_op_v1(&t));
    Usage {
        memory_current: read(Controller::Memory, "memory.usage_in_bytes").and_then(|t| single(&t)),
        memory_peak: read(Controller::Memory, "memory.max_usage_in_bytes").and_then(|t| single(&t)),
        memory_max: read(Controller::Memory, "memory.limit_in_bytes")
            .and_then(|t| single(&t))
            .filter(|&n| n < V1_UNLIMITED),
        cpu_usage_usec: read(Controller::Cpuacct, "cpuacct.usage")
            .and_then(|t| single(&t))
            .map(|ns| ns / 1000),
        cpu_throttled_usec: cpu
            .as_deref()
            .and_then(|t| flat_keyed(t, "throttled_time"))
            .map(|ns| ns / 1000),
        nr_throttled: cpu.as_deref().and_then(|t| flat_keyed(t, "nr_throttled")),
        pids_current: read(Controller::Pids, "pids.current").and_then(|t| single(&t)),
        pids_max: read(Controller::Pids, "pids.max").and_then(|t| single(&t)),
        io_read_bytes: io_bytes.map(|(r, _)| r),
        io_write_bytes: io_bytes.map(|(_, w)| w),
        io_read_ops: io_ops.map(|(r, _)| r),
        io_write_ops: io_ops.map(|(_, w)| w),
        cgroup_oom_kills: read(Controller::Memory, "memory.oom_control")
            .and_then(|t| flat_keyed(&t, "oom_kill")),
        cpu_pressure,
        memory_pressure: read_pressure(Controller::Memory, "memory.pressure"),
        io_pressure: read_pressure(Controller::Io, "io.pressure"),
    }
}

/// `key value` lines (cpu.stat, memory.events, memory.oom_control, memory.stat).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A single number (memory.current, pids.current, cpuacct.usage); "max" is `None`.
pub fn single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Totals of v2 `io.stat` over every device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoTotals {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...` per device.
pub fn io_stat_v2(text: &str) -> IoTotals {
    let mut totals = IoTotals::default();
    for field in text.split_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let slot = match key {
            "rbytes" => &mut totals.read_bytes,
            "wbytes" => &mut totals.write_bytes,
            "rios" => &mut totals.read_ops,
            "wios" => &mut totals.write_ops,
            _ => continue,
        };
        *slot = slot.saturating_add(value);
    }
    totals
}

/// v1 `blkio.throttle.io_service_bytes` and `io_serviced`: `MAJ:MIN Read N` ... lines;
/// totals of (Read, Write) over every device.
pub fn per_op_v1(text: &str) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [device, op, value] = fields.as_slice()
            && device.contains(':')
            && let Ok(v) = value.parse::<u64>()
        {
            match *op {
                "Read" => totals.0 = totals.0.saturating_add(v),
                "Write" => totals.1 = totals.1.saturating_add(v),
                _ => {}
            }
        }
    }
    totals
}

/// PSI (`cpu.pressure` ...): the `avg10` of the `some` line, a percentage of wall time in the
/// last 10 s during which some task waited for the resource.
pub fn pressure_some_avg10(text: &str) -> Option<f64> {
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;

    #[test]
    fn cpu_stat_v2_and_v1() {
        let v2 = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 2500\n";
        assert_eq!(flat_keyed(v2, "usage_usec"), Some(1500));
        assert_eq!(flat_keyed(v2, "nr_throttled"), Some(4));
        assert_eq!(flat_keyed(v2, "throttled_usec"), Some(2500));
        assert_eq!(flat_keyed(v2, "usage"), None);
        let v1 = "nr_periods 12\nnr_throttled 3\nthrottled_time 4000000\n";
        assert_eq!(flat_keyed(v1, "throttled_time"), Some(4_000_000));
    }

    #[test]
    fn oom_counters() {
        let events = "low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(flat_keyed(events, "oom_kill"), Some(1));
        assert_eq!(flat_keyed(events, "high"), Some(3));
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(flat_keyed(control, "oom_kill"), Some(5));
    }

    #[test]
    fn single_values() {
        assert_eq!(single("4096\n"), Some(4096));
        assert_eq!(single("max\n"), None);
    }

    #[test]
    fn io_totals() {
        let v2 = "8:0 rbytes=100 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n254:0 rbytes=5 wbytes=1 rios=1 wios=1\n";
        assert_eq!(
            io_stat_v2(v2),
            IoTotals {
                read_bytes: 105,
                write_bytes: 21,
                read_ops: 2,
                write_ops: 3
            }
        );
        let v1 = "8:0 Read 100\n8:0 Write 20\n8:0 Sync 3\n8:0 Total 120\n254:0 Read 5\nTotal 125\n";
        assert_eq!(per_op_v1(v1), (105, 20));
    }

    #[test]
    fn pressure_lines() {
        let cases = [
            (
                "some avg10=1.25 avg60=0.50 avg300=0.10 total=1234\nfull avg10=0.75 avg60=0.00 avg300=0.00 total=99\n",
                Some(1.25),
            ),
            // cpu.pressure of older kernels has no `full` line.
            (
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                Some(0.0),
            ),
            ("full avg10=3.00 avg60=0.00 avg300=0.00 total=0\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(pressure_some_avg10(text), want, "{text:?}");
        }
    }

    /// Writes `files` (name, content) into `dir`, creating it.
    fn fake(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
    }

    #[test]
    fn v2_files_as_the_kernel_shows_them() {
        let cases: [(&[(&str, &str)], Usage); 2] = [
            (
                &[
                    ("memory.current", "1000\n"),
                    ("memory.peak", "2000\n"),
                    ("memory.max", "4096\n"),
                    (
                        "cpu.stat",
                        "usage_usec 30\nuser_usec 20\nsystem_usec 10\nnr_periods 9\nnr_throttled 2\nthrottled_usec 7\n",
                    ),
                    ("pids.current", "3\n"),
                    ("pids.max", "64\n"),
                    ("io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=4\n"),
                    ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
                    (
                        "cpu.pressure",
                        "some avg10=2.50 avg60=1.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                    ),
                    (
                        "memory.pressure",
                        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                    ),
                    (
                        "io.pressure",
                        "some avg10=9.10 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                    ),
                ],
                Usage {
                    memory_current: Some(1000),
                    memory_peak: Some(2000),
                    memory_max: Some(4096),
                    cpu_usage_usec: Some(30),
                    cpu_throttled_usec: Some(7),
                    nr_throttled: Some(2),
                    pids_current: Some(3),
                    pids_max: Some(64),
                    io_read_bytes: Some(10),
                    io_write_bytes: Some(20),
                    io_read_ops: Some(1),
                    io_write_ops: Some(4),
                    cgroup_oom_kills: Some(1),
                    cpu_pressure: Some(2.5),
                    memory_pressure: Some(0.0),
                    io_pressure: Some(9.1),
                },
            ),
            // No limits ("max"), no io or pids controller, a kernel without PSI or memory.peak.
            (
                &[
                    ("memory.current", "5\n"),
                    ("memory.max", "max\n"),
                    ("cpu.stat", "usage_usec 1\nuser_usec 1\nsystem_usec 0\n"),
                    ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
                ],
                Usage {
                    memory_current: Some(5),
                    cpu_usage_usec: Some(1),
                    cgroup_oom_kills: Some(0),
                    ..Usage::default()
                },
            ),
        ];
        for (files, want) in cases {
            let tmp = tempfile::tempdir().unwrap();
            fake(tmp.path(), files);
            let pressure = PressureFiles::default();
            assert_eq!(usage_v2(tmp.path(), &pressure), want, "{files:?}");
        }
    }

    #[test]
    fn v1_files_across_hierarchies() {
        let tmp = tempfile::tempdir().unwrap();
        let cpu = tmp.path().join("cpu,cpuacct/r/u.service");
        let memory = tmp.path().join("memory/r/u.service");
        let pids = tmp.path().join("pids/r/u.service");
        let blkio = tmp.path().join("blkio/r/u.service");
        fake(
            &cpu,
            &[
                (
                    "cpu.stat",
                    "nr_periods 40\nnr_throttled 12\nthrottled_time 3500000\n",
                ),
                ("cpuacct.usage", "2500000\n"),
            ],
        );
        fake(
            &memory,
            &[
                ("memory.usage_in_bytes", "8192\n"),
                ("memory.max_usage_in_bytes", "16384\n"),
                ("memory.limit_in_bytes", "33554432\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                ),
            ],
        );
        fake(&pids, &[("pids.current", "4\n"), ("pids.max", "max\n")]);
        fake(
            &blkio,
            &[
                (
                    "blkio.throttle.io_service_bytes",
                    "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 4608\nTotal 4608\n",
                ),
                (
                    "blkio.throttle.io_serviced",
                    "8:0 Read 3\n8:0 Write 1\n8:0 Total 4\nTotal 4\n",
                ),
            ],
        );
        let dirs = BTreeMap::from([
            (Controller::Cpu, cpu.clone()),
            (Controller::Cpuacct, cpu),
            (Controller::Memory, memory.clone()),
            (Controller::Pids, pids),
            (Controller::Io, blkio),
        ]);
        let pressure = PressureFiles::default();
        let usage = usage_v1(&|c| dirs.get(&c).cloned(), &pressure);
        assert_eq!(
            usage,
            Usage {
                memory_current: Some(8192),
                memory_peak: Some(16384),
                memory_max: Some(32 << 20),
                cpu_usage_usec: Some(2500),
                cpu_throttled_usec: Some(3500),
                nr_throttled: Some(12),
                pids_current: Some(4),
                pids_max: None,
                io_read_bytes: Some(4096),
                io_write_bytes: Some(512),
                io_read_ops: Some(3),
                io_write_ops: Some(1),
                cgroup_oom_kills: Some(2),
                cpu_pressure: None,
                memory_pressure: None,
                io_pressure: None,
            }
        );
        // v1's "no limit" is a huge page-aligned number, not "max".
        fs::write(
            memory.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let limit = usage_v1(&|c| dirs.get(&c).cloned(), &pressure).memory_max;
        assert_eq!(limit, None);
        // A controller that is not mounted leaves its figures null.
        let only_memory = usage_v1(
            &|c| (c == Controller::Memory).then(|| memory.clone()),
            &PressureFiles::default(),
        );
        assert_eq!(only_memory.cpu_usage_usec, None);
        assert_eq!(only_memory.memory_current, Some(8192));
    }

    /// PSI is a boot-time switch: once a cgroup shows `cpu.stat` without `cpu.pressure`, no
    /// pressure file is opened again; a cgroup that is gone (no `cpu.stat`) teaches nothing.
    #[test]
    fn pressure_files_missing_beside_cpu_stat_are_not_looked_for_again() {
        let pressure_text = "some avg10=4.00 avg60=0.00 avg300=0.00 total=1\n";
        let with_psi: &[(&str, &str)] = &[
            ("cpu.stat", "usage_usec 1\n"),
            ("cpu.pressure", pressure_text),
            ("memory.pressure", pressure_text),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let (gone, without, with) = (
            tmp.path().join("gone"),
            tmp.path().join("without"),
            tmp.path().join("with"),
        );
        fake(&without, &[("cpu.stat", "usage_usec 1\n")]);
        fake(&with, with_psi);

        let learnt_nothing = PressureFiles::default();
        assert_eq!(usage_v2(&gone, &learnt_nothing), Usage::default());
        assert_eq!(usage_v2(&with, &learnt_nothing).cpu_pressure, Some(4.0));

        let absent = PressureFiles::default();
        assert_eq!(usage_v2(&without, &absent).cpu_pressure, None);
        let skipped = usage_v2(&with, &absent);
        assert_eq!(
            (skipped.cpu_pressure, skipped.memory_pressure),
            (None, None)
        );
        assert_eq!(
            skipped.cpu_usage_usec,
            Some(1),
            "the other files are still read"
        );

        let present = PressureFiles::default();
        assert_eq!(usage_v2(&with, &present).memory_pressure, Some(4.0));
        assert_eq!(usage_v2(&without, &present).cpu_pressure, None);
        assert_eq!(
            usage_v2(&with, &present).cpu_pressure,
            Some(4.0),
            "still read"
        );
    }

    /// A file longer than the first read's buffer (v1 blkio with many devices) is read whole.
    #[test]
    fn a_long_cgroup_file_is_read_to_its_end() {
        let tmp = tempfile::tempdir().unwrap();
        let lines: String = (0..200)
            .map(|d| format!("8:{d} Read 1\n8:{d} Write 2\n"))
            .collect();
        assert!(lines.len() > 2048);
        let path = tmp.path().join("blkio.throttle.io_serviced");
        fs::write(&path, &lines).unwrap();
        assert_eq!(read_cgroup_file(&path).as_deref(), Some(lines.as_str()));
        assert_eq!(per_op_v1(&lines), (200, 400));
        assert_eq!(read_cgroup_file(&tmp.path().join("missing")), None);
    }
}
