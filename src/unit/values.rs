//! Parsers for the value syntaxes of unit files (sizes, durations, signals, capabilities, ...), string in, model value out.

use std::str::FromStr;
use std::time::Duration;

use crate::core::signal::Signal;

use super::model::{
    ByteLimit, Capability, CpuPercent, DeviceSpec, HttpTarget, IdMapEntry, SignalSpec,
};

/// Why a value was rejected: the message, plus an optional hint sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub message: String,
    pub hint: Option<String>,
}

impl Invalid {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Invalid {
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

pub(crate) type Parse<T> = Result<T, Invalid>;

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
///
/// `_` and case are ignored first, so `working_dir` finds `working-dir`.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let word = norm(word);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word, &norm(c)), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// `HOST:PORT` of a probe: an IP address (PID 1 does no DNS) or `localhost`, and a port.
pub(crate) fn socket_addr(s: &str, default_port: Option<u16>) -> Parse<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let hint = "write an IP address and a port: \"127.0.0.1:8080\" or \"[::1]:8080\"";
    let (host, port) = match s.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (s, None),
    };
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Invalid::new(format!("invalid port {p:?} in {s:?}")).hint(hint))?,
        (None, Some(p)) => p,
        (None, None) => {
            return Err(Invalid::new(format!("{s:?} has no port")).hint(hint));
        }
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bare.parse::<IpAddr>().map_err(|_| {
            Invalid::new(format!("{host:?} is not an IP address"))
                .hint(format!("{hint}; corral resolves no host names"))
        })?
    };
    Ok(SocketAddr::new(ip, port))
}

/// `http://HOST[:PORT][/PATH]` of an HTTP probe.
pub(crate) fn http_target(s: &str) -> Parse<HttpTarget> {
    let Some(rest) = s.strip_prefix("http://") else {
        let mut problem = Invalid::new(format!("{s:?} is not an http:// URL"));
        if s.starts_with("https://") {
            problem = problem
                .hint("https is not probed: probe the plain-HTTP port, or use an exec probe");
        }
        return Err(problem);
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(Invalid::new(format!(
            "the path of {s:?} has spaces or control characters"
        )));
    }
    let addr = socket_addr(authority, Some(80))?;
    Ok(HttpTarget {
        addr,
        host: authority.to_owned(),
        path: path.to_owned(),
    })
}

pub(crate) fn duration(s: &str) -> Parse<Duration> {
    humantime::parse_duration(s).map_err(|e| {
        Invalid::new(format!("invalid duration {s:?}: {e}"))
            .hint("write durations like \"100ms\", \"10s\" or \"1m 30s\"")
    })
}

const SIZE_HINT: &str =
    "write sizes as bytes or with K, M, G, T (powers of 1024), e.g. \"512M\", or \"max\"";

/// Bytes, `K M G T` or `KiB MiB GiB TiB` (all powers of 1024, case-insensitive), `B`, or `max`.
pub(crate) fn size(s: &str) -> Parse<ByteLimit> {
    let t = s.trim();
    if t == "max" {
        return Ok(ByteLimit::Max);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || Invalid::new(format!("invalid size {s:?}")).hint(SIZE_HINT);
    if digits.is_empty() {
        return Err(bad());
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(Invalid::new(format!("ambiguous size unit in {s:?}"))
                .hint("sizes are powers of 1024: write K, M, G, T or KiB, MiB, GiB, TiB"));
        }
        _ => return Err(bad()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .map(ByteLimit::Bytes)
        .ok_or_else(|| Invalid::new(format!("size {s:?} is too large")))
}

pub(crate) fn size_from_int(n: i64) -> Parse<ByteLimit> {
    u64::try_from(n)
        .map(ByteLimit::Bytes)
        .map_err(|_| Invalid::new(format!("size must not be negative, got {n}")))
}

/// 10000 CPUs: more than any machine has, and below the kernel's quota ceiling at a 1s period
/// (`max_cfs_runtime`, kernel/sched/core.c).
pub(crate) const MAX_CPU_PERCENT: u32 = 1_000_000;

/// `"150%"` of one CPU; `"max"` is no quota (`None`). Whole percentages only, as the model is integral.
pub(crate) fn cpu_percent(s: &str) -> Parse<Option<CpuPercent>> {
    if s == "max" {
        return Ok(None);
    }
    let hint = "write a whole percentage of one CPU, e.g. \"150%\" for 1.5 CPUs, or \"max\"";
    let Some(num) = s.trim().strip_suffix('%') else {
        return Err(Invalid::new(format!("invalid CPU quota {s:?}: missing `%`")).hint(hint));
    };
    match num.trim().parse::<u32>() {
        Ok(p) if !(1..=MAX_CPU_PERCENT).contains(&p) => {
            Err(Invalid::new(format!("{p}% is out of range 1%..={MAX_CPU_PERCENT}%")).hint(hint))
        }
        Ok(p) => Ok(Some(CpuPercent(p))),
        Err(_) if num.trim().parse::<f64>().is_ok() => {
            Err(Invalid::new(format!("CPU quota {s:?} is not a whole percentage")).hint(hint))
        }
        Err(_) => Err(Invalid::new(format!("invalid CPU quota {s:?}")).hint(hint)),
    }
}

/// The highest CPU number a kernel can have: CONFIG_NR_CPUS is at most 8192 (arch/x86/Kconfig,
/// MAXSMP); `cpuset.cpus` refuses CPUs past the machine's own at start.
pub(crate) const MAX_CPU: u32 = 8191;

/// A cpuset list as the kernel takes it: `0-3,5,7-8`. Returned without spaces.
pub(crate) fn cpuset(s: &str) -> Parse<String> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let hint = "write a CPU list like \"0-3,5\"";
    if compact.is_empty() {
        return Err(Invalid::new("CPU list is empty").hint(hint));
    }
    for item in compact.split(',') {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        match (lo.parse::<u32>(), hi.parse::<u32>()) {
            (Ok(_), Ok(hi)) if hi > MAX_CPU => {
                return Err(
                    Invalid::new(format!("CPU {hi} is out of range 0..={MAX_CPU}")).hint(hint),
                );
            }
            (Ok(lo), Ok(hi)) if lo <= hi => {}
            (Ok(_), Ok(_)) => {
                return Err(Invalid::new(format!("CPU range {item:?} runs backwards")).hint(hint));
            }
            _ => return Err(Invalid::new(format!("invalid CPU list item {item:?}")).hint(hint)),
        }
    }
    Ok(compact)
}

/// An absolute device path or `MAJ:MIN`.
pub(crate) fn device(s: &str) -> Parse<DeviceSpec> {
    if s.starts_with('/') {
        return Ok(DeviceSpec::Path(s.into()));
    }
    match s
        .split_once(':')
        .map(|(a, b)| (a.parse::<u32>(), b.parse::<u32>()))
    {
        Some((Ok(major), Ok(minor))) => Ok(DeviceSpec::Number { major, minor }),
        _ => Err(Invalid::new(format!("invalid device {s:?}"))
            .hint("name a block device by absolute path (\"/dev/vda\") or number (\"253:0\")")),
    }
}

/// The kernel takes at most this many lines in one uid_map/gid_map (since Linux 4.15).
const MAX_ID_MAP_LINES: usize = 340;

/// `/proc/PID/uid_map` lines `inside outside count`, separated by newlines or commas.
pub(crate) fn id_map(s: &str) -> Parse<Vec<IdMapEntry>> {
    let hint = "write \"inside outside count\" lines, e.g. \"0 100000 65536\"";
    let mut entries: Vec<IdMapEntry> = Vec::new();
    for line in s
        .split([',', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let nums: Vec<_> = line.split_whitespace().map(u32::from_str).collect();
        let [Ok(inside), Ok(outside), Ok(count)] = nums.as_slice() else {
            return Err(Invalid::new(format!("invalid id map line {line:?}")).hint(hint));
        };
        let e = IdMapEntry {
            inside: *inside,
            outside: *outside,
            count: *count,
        };
        if e.count == 0 {
            return Err(Invalid::new(format!(
                "id map line {line:?} has a count of 0"
            )));
        }
        let end = |start: u32| u64::from(start) + u64::from(e.count);
        if end(e.inside) > 1 << 32 || end(e.outside) > 1 << 32 {
            return Err(Invalid::new(format!(
                "id map line {line:?} runs past the last id"
            )));
        }
        // The kernel refuses overlapping ranges on either side.
        let overlaps = |a: u32, b: u32, bc: u32| {
            u64::from(a) < u64::from(b) + u64::from(bc) && u64::from(b) < end(a)
        };
        if entries.iter().any(|o| {
            overlaps(e.inside, o.inside, o.count) || overlaps(e.outside, o.outside, o.count)
        }) {
            return Err(Invalid::new(format!(
                "id map line {line:?} overlaps an earlier line"
            )));
        }
        entries.push(e);
    }
    if entries.is_empty() {
        return Err(Invalid::new("id map is empty").hint(hint));
    }
    if entries.len() > MAX_ID_MAP_LINES {
        return Err(Invalid::new(format!(
            "id map has more than {MAX_ID_MAP_LINES} lines"
        )));
    }
    Ok(entries)
}

/// Linux `HOST_NAME_MAX`.
const HOST_NAME_MAX: usize = 64;

/// RFC 1123 host name: dot-separated labels of 1..=63 letters, digits and inner hyphens.
pub(crate) fn hostname(s: &str) -> Parse<String> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() > HOST_NAME_MAX {
        return Err(Invalid::new(format!(
            "host name is longer than {HOST_NAME_MAX} bytes"
        )));
    }
    if !s.split('.').all(label_ok) {
        return Err(Invalid::new(format!("invalid host name {s:?}"))
            .hint("use letters, digits and inner hyphens, labels separated by dots (RFC 1123)"));
    }
    Ok(s.to_owned())
}

/// `SIGTERM`, `TERM`, `sigterm` or a number as a string.
pub(crate) fn signal(s: &str) -> Parse<SignalSpec> {
    if let Ok(n) = s.parse::<i64>() {
        return signal_number(n);
    }
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_name(&full).map(SignalSpec).ok_or_else(|| {
        let names = Signal::names();
        Invalid::new(format!("unknown signal {s:?}")).hint(
            did_you_mean(&full, names)
                .unwrap_or_else(|| "write a name like \"SIGTERM\" or \"TERM\"".into()),
        )
    })
}

pub(crate) fn signal_number(n: i64) -> Parse<SignalSpec> {
    i32::try_from(n)
        .ok()
        .and_then(Signal::from_number)
        .map(SignalSpec)
        .ok_or_else(|| Invalid::new(format!("{n} is not a signal number")))
}

/// Linux capability names by number, 0..=40 (`CAP_LAST_CAP` as of Linux 5.9).
pub(crate) const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

impl Capability {
    /// The kernel's name, `CAP_NET_BIND_SERVICE`; `None` past the table.
    pub fn name(self) -> Option<&'static str> {
        CAPABILITY_NAMES.get(usize::from(self.0)).copied()
    }
}

/// `CAP_NET_BIND_SERVICE`, `net_bind_service`, ...: case-insensitive, `CAP_` optional.
pub(crate) fn capability(s: &str) -> Parse<Capability> {
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == full)
        .and_then(|i| u8::try_from(i).ok())
        .map(Capability)
        .ok_or_else(|| {
            Invalid::new(format!("unknown capability {s:?}")).hint(
                did_you_mean(&full, CAPABILITY_NAMES)
                    .unwrap_or_else(|| "see capabilities(7) for the names".into()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let ok = [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("1K", 1024),
            ("1k", 1024),
            ("2KiB", 2048),
            ("512M", 512 << 20),
            ("3 MiB", 3 << 20),
            ("1G", 1 << 30),
            ("1gib", 1 << 30),
            ("2T", 2 << 40),
        ];
        for (s, n) in ok {
            assert_eq!(size(s), Ok(ByteLimit::Bytes(n)), "{s}");
        }
        assert_eq!(size("max"), Ok(ByteLimit::Max));
        for s in ["", "M", "1.5G", "-1", "12X", "1 2", "99999999999T", "MAX"] {
            assert!(size(s).is_err(), "{s}");
        }
        assert!(size("1MB").unwrap_err().hint.unwrap().contains("1024"));
        assert_eq!(size_from_int(7), Ok(ByteLimit::Bytes(7)));
        assert!(size_from_int(-7).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        // humantime wants a unit on everything but a bare zero.
        for s in ["", "10", "ten seconds", "10 sec x"] {
            assert!(duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn cpu_percents() {
        assert_eq!(cpu_percent("150%"), Ok(Some(CpuPercent(150))));
        assert_eq!(cpu_percent(" 5 %"), Ok(Some(CpuPercent(5))));
        assert_eq!(cpu_percent("max"), Ok(None));
        assert!(cpu_percent("50.5%").unwrap_err().message.contains("whole"));
        for s in ["150", "0%", "-5%", "x%", "%"] {
            assert!(cpu_percent(s).is_err(), "{s}");
        }
    }

    #[test]
    fn cpusets() {
        assert_eq!(cpuset("0-1"), Ok("0-1".into()));
        assert_eq!(cpuset("0-1, 3"), Ok("0-1,3".into()));
        assert_eq!(cpuset("8191"), Ok("8191".into()));
        for s in ["", "a", "3-1", "1,", "-1", "1-2-3", "8192", "0-9000"] {
            assert!(cpuset(s).is_err(), "{s}");
        }
        assert_eq!(
            cpuset("0,8192").unwrap_err().message,
            "CPU 8192 is out of range 0..=8191"
        );
    }

    #[test]
    fn devices() {
        assert_eq!(device("/dev/vda"), Ok(DeviceSpec::Path("/dev/vda".into())));
        assert_eq!(
            device("253:0"),
            Ok(DeviceSpec::Number {
                major: 253,
                minor: 0
            })
        );
        for s in ["vda", "253", "a:b", "1:2:3", ""] {
            assert!(device(s).is_err(), "{s}");
        }
    }

    #[test]
    fn id_maps() {
        let e = |inside, outside, count| IdMapEntry {
            inside,
            outside,
            count,
        };
        assert_eq!(id_map("0 100000 65536"), Ok(vec![e(0, 100000, 65536)]));
        assert_eq!(
            id_map("0 1000 1\n1 100000 65535\n"),
            Ok(vec![e(0, 1000, 1), e(1, 100000, 65535)])
        );
        assert_eq!(
            id_map("0 1000 1, 1 2000 5"),
            Ok(vec![e(0, 1000, 1), e(1, 2000, 5)])
        );
        for s in [
            "",
            "0 1",
            "0 1 2 3",
            "a b c",
            "0 0 0",
            "0 4294967295 2",
            "0 10 5, 3 100 5",
            "0 10 5, 100 12 1",
        ] {
            assert!(id_map(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn hostnames() {
        for s in ["web-01", "a", "web.example.com", "0abc"] {
            assert!(hostname(s).is_ok(), "{s}");
        }
        let long = "a".repeat(64);
        let too_long = format!("{long}.b");
        for s in [
            "",
            "-web",
            "web-",
            "we_b",
            "a..b",
            "web.",
            long.as_str(),
            too_long.as_str(),
        ] {
            assert!(hostname(s).is_err(), "{s}");
        }
    }

    #[test]
    fn signals() {
        for s in ["SIGTERM", "TERM", "term", "sigterm", "15"] {
            assert_eq!(signal(s), Ok(SignalSpec(Signal::SIGTERM)), "{s}");
        }
        assert_eq!(signal("SIGKILL"), Ok(SignalSpec(Signal::SIGKILL)));
        assert_eq!(signal_number(2), Ok(SignalSpec(Signal::SIGINT)));
        assert!(signal_number(0).is_err());
        assert!(signal_number(99).is_err());
        let e = signal("SIGTREM").unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("did you mean `SIGTERM`?"));
        assert!(signal("bogus").is_err());
    }

    #[test]
    fn capabilities() {
        assert_eq!(capability("CAP_NET_BIND_SERVICE"), Ok(Capability(10)));
        assert_eq!(capability("net_bind_service"), Ok(Capability(10)));
        assert_eq!(capability("CAP_CHOWN"), Ok(Capability(0)));
        assert_eq!(capability("CAP_CHECKPOINT_RESTORE"), Ok(Capability(40)));
        assert_eq!(Capability(21).name(), Some("CAP_SYS_ADMIN"));
        assert_eq!(Capability(41).name(), None);
        let e = capability("CAP_NET_BIND_SERVIC").unwrap_err();
        assert_eq!(
            e.hint.as_deref(),
            Some("did you mean `CAP_NET_BIND_SERVICE`?")
        );
        assert!(capability("CAP_FLY").is_err());
    }

    #[test]
    fn closest_only_suggests_plausible_typos() {
        let keys = ["delay", "max-delay", "policy", "working-dir"];
        assert_eq!(closest("dlay", keys), Some("delay"));
        assert_eq!(closest("working_dir", keys), Some("working-dir"));
        assert_eq!(closest("Policy", keys), Some("policy"));
        assert_eq!(closest("maxdelay", keys), Some("max-delay"));
        assert_eq!(closest("zzz", keys), None);
        assert_eq!(closest("cmd", ["command"]), None);
    }
}
