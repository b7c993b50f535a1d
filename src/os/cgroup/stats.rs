//! Parsers for the kernel's cgroup statistics files, v1 and v2.

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

/// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N ...` per device; totals of (rbytes, wbytes).
pub fn io_stat_v2(text: &str) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(v) = field
            .strip_prefix("rbytes=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            totals.0 = totals.0.saturating_add(v);
        } else if let Some(v) = field
            .strip_prefix("wbytes=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            totals.1 = totals.1.saturating_add(v);
        }
    }
    totals
}

/// v1 `blkio.throttle.io_service_bytes`: `MAJ:MIN Read N` ... lines; totals of (Read, Write).
pub fn io_service_bytes_v1(text: &str) -> (u64, u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(io_stat_v2(v2), (105, 21));
        let v1 = "8:0 Read 100\n8:0 Write 20\n8:0 Sync 3\n8:0 Total 120\n254:0 Read 5\nTotal 125\n";
        assert_eq!(io_service_bytes_v1(v1), (105, 20));
    }
}
