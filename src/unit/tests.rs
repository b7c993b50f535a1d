//! Tests of unit file parsing, validation and directory loading, against a fake user database.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::signal::Signal;

use super::*;

fn db() -> MemoryUserDb {
    MemoryUserDb::new()
        .with_user("root", 0, 0, "/root")
        .with_user("www-data", 33, 33, "/var/www")
        .with_group("root", 0, &[])
        .with_group("www-data", 33, &[])
        .with_group("log", 4, &["www-data"])
}

fn name(s: &str) -> UnitName {
    UnitName::new(s).unwrap()
}

fn parse(text: &str) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    parse_unit(&name("web"), Path::new("units/web.toml"), text, &db())
}

/// Appends a minimal `[exec]` unless the case is about `[exec]` or is a slice.
fn service(text: &str) -> String {
    if text.contains("exec") || text.contains("\"slice\"") {
        text.to_owned()
    } else {
        format!("{text}\n[exec]\ncommand = [\"true\"]\n")
    }
}

fn ok(text: &str) -> Unit {
    match parse(&service(text)) {
        Ok((unit, warnings)) => {
            assert!(warnings.is_empty(), "{text}: {warnings:?}");
            unit
        }
        Err(d) => panic!("{text}: {}", LoadError { diagnostics: d }),
    }
}

fn errors(text: &str) -> Vec<String> {
    let diags = parse(text)
        .err()
        .unwrap_or_else(|| panic!("{text:?} parsed"));
    diags
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_key_rejects_bad_values_with_file_position_and_key() {
    let cases: &[(&str, &str)] = &[
        // top level
        (
            "kind = \"daemon\"",
            "1:8: error: kind: invalid value \"daemon\" (expected one of `service`, `oneshot`, `slice`)",
        ),
        (
            "kind = \"slcie\"",
            "kind: invalid value \"slcie\" (did you mean `slice`?)",
        ),
        (
            "kind = 1",
            "1:8: error: kind: expected a string, found an integer",
        ),
        (
            "description = 5",
            "1:15: error: description: expected a string, found an integer",
        ),
        (
            "slice = \"bad name\"",
            "1:9: error: slice: invalid unit name \"bad name\"",
        ),
        ("slice = \"web\"", "slice: a unit cannot be its own slice"),
        (
            "after = \"db\"",
            "1:9: error: after: expected an array, found a string",
        ),
        (
            "after = [\"web\"]",
            "1:10: error: after[0]: `web` cannot depend on itself",
        ),
        (
            "requires = [\"db\", 3]",
            "1:19: error: requires[1]: expected a string, found an integer",
        ),
        (
            "requires = [\"web\"]",
            "requires[0]: `web` cannot depend on itself",
        ),
        (
            "enabled = \"yes\"",
            "1:11: error: enabled: expected a boolean (true or false), found a string",
        ),
        ("bogus = 1", "1:1: error: bogus: unknown key"),
        (
            "[exex]\n",
            "1:2: error: exex: unknown key (did you mean `exec`?)",
        ),
        (
            "exec = 1",
            "1:8: error: exec: expected a table, found an integer",
        ),
        ("restart = []", "restart: expected a table, found an array"),
        // [exec]
        (
            "[exec]\nworking-dir = \"/\"",
            "1:1: error: exec.command: `command` is required",
        ),
        (
            "[exec]\ncommand = []",
            "2:11: error: exec.command: `command` must not be empty",
        ),
        (
            "[exec]\ncommand = \"true\"",
            "2:11: error: exec.command: expected an array, found a string",
        ),
        (
            "[exec]\ncommand = [1]",
            "2:12: error: exec.command[0]: expected a string, found an integer",
        ),
        (
            "[exec]\ncommand = [\"\"]",
            "exec.command[0]: program name is empty",
        ),
        (
            "[exec]\ncommand = [\"a\\u0000\"]",
            "exec.command[0]: contains a NUL character",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nworking-dir = \"srv\"",
            "3:15: error: exec.working-dir: path \"srv\" is not absolute",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nworkdir = \"/srv\"",
            "3:1: error: exec.workdir: unknown key",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nworking_dir = \"/srv\"",
            "exec.working_dir: unknown key (did you mean `working-dir`?)",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nenv = 5",
            "exec.env: expected a table, found an integer",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nenv = { \"A=B\" = \"x\" }",
            "3:9: error: exec.env.\"A=B\": environment variable names must be non-empty",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nenv = { \"\" = \"x\" }",
            "exec.env.\"\": environment variable names",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nenv = { PORT = 8080 }",
            "3:16: error: exec.env.PORT: expected a string, found an integer",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nuser = \"nobody2\"",
            "3:8: error: exec.user: no such user `nobody2`",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nuser = 4242",
            "exec.user: no such user 4242",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nuser = \"4242\"",
            "exec.user: no such user 4242",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nuser = -1",
            "exec.user: -1 is out of range 0..=4294967295",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nuser = true",
            "exec.user: expected a string, found a boolean",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nuser = \"\"",
            "exec.user: name is empty",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nuser = \"www-data\"\ngroup = \"staff\"",
            "4:9: error: exec.group: no such group `staff`",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nuser = \"www-data\"\ngroup = 999",
            "exec.group: no such group 999",
        ),
        (
            "[exec]\ncommand = [\"x\"]\ngroup = \"log\"",
            "exec.group: `group` needs `user` (set `user = \"root\"`",
        ),
        // [restart]
        (
            "[restart]\npolicy = \"sometimes\"",
            "2:10: error: restart.policy: invalid value \"sometimes\" (expected one of `never`, `on-failure`, `on-abnormal`, `on-oom`, `always`)",
        ),
        (
            "[restart]\npolicy = \"on-fail\"",
            "restart.policy: invalid value \"on-fail\" (did you mean `on-failure`?)",
        ),
        (
            "[restart]\ndelay = \"soon\"",
            "2:9: error: restart.delay: invalid duration \"soon\"",
        ),
        (
            "[restart]\ndelay = 5",
            "restart.delay: expected a duration string, found an integer (durations need a unit",
        ),
        (
            "[restart]\nmax-delay = \"1 fortnight\"",
            "restart.max-delay: invalid duration",
        ),
        (
            "[restart]\nreset-after = true",
            "restart.reset-after: expected a string, found a boolean",
        ),
        (
            "[restart]\nstart-limit-burst = 0",
            "restart.start-limit-burst: 0 is out of range 1..=4294967295",
        ),
        (
            "[restart]\nstart-limit-burst = \"5\"",
            "restart.start-limit-burst: expected an integer, found a string",
        ),
        (
            "[restart]\nstart-limit-interval = \"\"",
            "restart.start-limit-interval: invalid duration \"\"",
        ),
        (
            "[restart]\nsuccess-exit-codes = [0, 256]",
            "2:26: error: restart.success-exit-codes[1]: 256 is out of range 0..=255",
        ),
        (
            "[restart]\nsuccess-exit-codes = []",
            "restart.success-exit-codes: list at least one exit code",
        ),
        (
            "[restart]\nsuccess-exit-codes = 0",
            "restart.success-exit-codes: expected an array, found an integer",
        ),
        (
            "[restart]\ndlay = \"1s\"",
            "2:1: error: restart.dlay: unknown key (did you mean `delay`?)",
        ),
        // [stop]
        (
            "[stop]\nsignal = \"SIGFOO\"",
            "2:10: error: stop.signal: unknown signal \"SIGFOO\"",
        ),
        (
            "[stop]\nsignal = \"SIGTREM\"",
            "stop.signal: unknown signal \"SIGTREM\" (did you mean `SIGTERM`?)",
        ),
        (
            "[stop]\nsignal = 0",
            "stop.signal: 0 is not a signal number",
        ),
        (
            "[stop]\nsignal = true",
            "stop.signal: expected a string, found a boolean",
        ),
        (
            "[stop]\ntimeout = \"forever\"",
            "stop.timeout: invalid duration \"forever\"",
        ),
        (
            "[stop]\ntimeuot = \"1s\"",
            "stop.timeuot: unknown key (did you mean `timeout`?)",
        ),
        // [resources]
        (
            "[resources]\ncpu-quota = \"150\"",
            "2:13: error: resources.cpu-quota: invalid CPU quota \"150\": missing `%`",
        ),
        (
            "[resources]\ncpu-quota = \"50.5%\"",
            "resources.cpu-quota: CPU quota \"50.5%\" is not a whole percentage",
        ),
        (
            "[resources]\ncpu-quota = \"0%\"",
            "2:13: error: resources.cpu-quota: 0% is out of range 1%..=1000000%",
        ),
        (
            "[resources]\ncpu-quota = 150",
            "resources.cpu-quota: expected a string, found an integer",
        ),
        (
            "[resources]\ncpu-quota-period = \"10s\"",
            "resources.cpu-quota-period: 10s is out of range 1ms..=1s",
        ),
        (
            "[resources]\ncpu-quota = \"1%\"\ncpu-quota-period = \"10ms\"",
            "resources.cpu-quota: 1% gives 100us per period, below the kernel's minimum of 1ms",
        ),
        (
            "[resources]\ncpu-weight = 0",
            "resources.cpu-weight: 0 is out of range 1..=10000",
        ),
        (
            "[resources]\ncpu-weight = 10001",
            "resources.cpu-weight: 10001 is out of range 1..=10000",
        ),
        (
            "[resources]\nallowed-cpus = \"0-a\"",
            "resources.allowed-cpus: invalid CPU list item \"0-a\"",
        ),
        (
            "[resources]\nallowed-cpus = 1",
            "resources.allowed-cpus: expected a string, found an integer",
        ),
        (
            "[resources]\nmemory-max = \"1.5G\"",
            "resources.memory-max: invalid size \"1.5G\"",
        ),
        (
            "[resources]\nmemory-max = \"512MB\"",
            "resources.memory-max: ambiguous size unit in \"512MB\"",
        ),
        (
            "[resources]\nmemory-high = -1",
            "resources.memory-high: size must not be negative, got -1",
        ),
        (
            "[resources]\nmemory-swap-max = true",
            "resources.memory-swap-max: expected a size",
        ),
        (
            "[resources]\npids-max = 0",
            "resources.pids-max: 0 is out of range",
        ),
        (
            "[resources]\npids-max = \"unlimited\"",
            "resources.pids-max: expected a positive integer or \"max\", found a string",
        ),
        (
            "[resources]\nio-weight = 20000",
            "resources.io-weight: 20000 is out of range 1..=10000",
        ),
        (
            "[resources]\nio = 5",
            "resources.io: expected an array of tables, found an integer",
        ),
        (
            "[resources]\nio = [1]",
            "resources.io[0]: expected a table, found an integer",
        ),
        (
            "[[resources.io]]\nread-bps = \"1M\"",
            "1:1: error: resources.io[0].device: `device` is required",
        ),
        (
            "[[resources.io]]\ndevice = \"/dev/vda\"",
            "1:1: error: resources.io[0]: set at least one of read-bps, write-bps, read-iops, write-iops",
        ),
        (
            "[[resources.io]]\ndevice = \"vda\"\nread-iops = 1",
            "2:10: error: resources.io[0].device: invalid device \"vda\"",
        ),
        (
            "[[resources.io]]\ndevice = \"8:0\"\nread-iops = 0",
            "resources.io[0].read-iops: 0 is out of range",
        ),
        (
            "[[resources.io]]\ndevice = \"8:0\"\nwrite-iops = \"1k\"",
            "resources.io[0].write-iops: expected an integer, found a string",
        ),
        (
            "[[resources.io]]\ndevice = \"8:0\"\nwrite-bps = \"fast\"",
            "resources.io[0].write-bps: invalid size \"fast\"",
        ),
        (
            "[[resources.io]]\ndevice = \"8:0\"\nread-bps = 1.5",
            "resources.io[0].read-bps: expected a size",
        ),
        (
            "[[resources.io]]\ndevice = \"8:0\"\nread-iops = 1\nread-bsp = 1",
            "resources.io[0].read-bsp: unknown key (did you mean `read-bps`?)",
        ),
        (
            "[[resources.io]]\ndevice = \"8:0\"\nread-iops = 1\n[[resources.io]]\ndevice = \"8:0\"\nwrite-iops = 1",
            "5:10: error: resources.io[1].device: device is listed twice",
        ),
        (
            "[resources]\nmemory-maximum = 1",
            "resources.memory-maximum: unknown key",
        ),
        // [oom]
        (
            "[oom]\ngroup-kill = 1",
            "oom.group-kill: expected a boolean (true or false), found an integer",
        ),
        (
            "[oom]\nscore-adjust = 1001",
            "2:16: error: oom.score-adjust: 1001 is out of range -1000..=1000",
        ),
        (
            "[oom]\nscore-adjust = -1001",
            "oom.score-adjust: -1001 is out of range -1000..=1000",
        ),
        // [namespaces]
        (
            "[namespaces]\npid = \"yes\"",
            "namespaces.pid: expected a boolean",
        ),
        (
            "[namespaces]\nnet = 1",
            "namespaces.net: expected a boolean",
        ),
        (
            "[namespaces]\nipc = 1",
            "namespaces.ipc: expected a boolean",
        ),
        (
            "[namespaces]\ncgroup = 1",
            "namespaces.cgroup: expected a boolean",
        ),
        (
            "[namespaces]\nuts = 1",
            "namespaces.uts: expected a boolean",
        ),
        (
            "[namespaces]\nmount = 1",
            "namespaces.mount: expected a boolean",
        ),
        (
            "[namespaces]\nuser = 1",
            "namespaces.user: expected a boolean",
        ),
        (
            "[namespaces]\nhostname = \"-web\"",
            "namespaces.hostname: invalid host name \"-web\"",
        ),
        (
            "[namespaces]\nuser = true\nuid-map = \"0 1000\"",
            "3:11: error: namespaces.uid-map: invalid id map line \"0 1000\"",
        ),
        (
            "[namespaces]\nuser = true\ngid-map = \"0 1000 0\"",
            "namespaces.gid-map: id map line \"0 1000 0\" has a count of 0",
        ),
        (
            "[namespaces]\nuid-map = \"0 1000 1\"",
            "namespaces.uid-map: uid-map needs a user namespace (set `user = true`)",
        ),
        (
            "[namespaces]\ngid-map = \"0 1000 1\"",
            "namespaces.gid-map: gid-map needs a user namespace",
        ),
        (
            "[namespaces]\nmount = false\npid = true",
            "2:9: error: namespaces.mount: `mount = false` conflicts with `namespaces.pid`",
        ),
        (
            "[namespaces]\nuts = false\nhostname = \"a\"",
            "namespaces.uts: `uts = false` conflicts with `namespaces.hostname`",
        ),
        (
            "[namespaces]\nmount = false\n[sandbox]\nprivate-tmp = true",
            "namespaces.mount: `mount = false` conflicts with `sandbox.private-tmp`",
        ),
        (
            "[namespaces]\nnetwork = true",
            "namespaces.network: unknown key",
        ),
        // [sandbox]
        (
            "[sandbox]\nno-new-privileges = \"yes\"",
            "sandbox.no-new-privileges: expected a boolean",
        ),
        (
            "[sandbox]\ncapabilities = [\"CAP_NET_BIND_SERVIC\"]",
            "2:17: error: sandbox.capabilities[0]: unknown capability \"CAP_NET_BIND_SERVIC\" (did you mean `CAP_NET_BIND_SERVICE`?)",
        ),
        (
            "[sandbox]\ncapabilities = \"CAP_KILL\"",
            "sandbox.capabilities: expected an array, found a string",
        ),
        (
            "[sandbox]\nread-only-paths = [\"etc\"]",
            "sandbox.read-only-paths[0]: path \"etc\" is not absolute",
        ),
        (
            "[sandbox]\nprivate-tmp = 1",
            "sandbox.private-tmp: expected a boolean",
        ),
        (
            "[sandbox]\nprivate-tmp = true\nread-only-paths = [\"/etc\", \"/tmp/cache\"]",
            "3:28: error: sandbox.read-only-paths[1]: /tmp/cache is in /tmp, which `private-tmp` replaces with an empty tmpfs: the unit would never see it (keep it out of /tmp, or drop `private-tmp`)",
        ),
        (
            "[sandbox]\nprivate-tmp = true\nread-only-paths = [\"/tmp\"]",
            "sandbox.read-only-paths[0]: /tmp is in /tmp",
        ),
        (
            "[sandbox]\nprivate-tmp = true\nread-only-paths = [\"/var/../tmp/./x\"]",
            "sandbox.read-only-paths[0]: /var/../tmp/./x is in /tmp",
        ),
        // slices hold only kind, description, slice and [resources]
        (
            "kind = \"slice\"\nafter = [\"x\"]",
            "2:1: error: after: `after` is not allowed in a slice (a slice holds only",
        ),
        (
            "kind = \"slice\"\nenabled = false",
            "enabled: `enabled` is not allowed in a slice",
        ),
        (
            "kind = \"slice\"\n[exec]\ncommand = [\"x\"]",
            "2:2: error: exec: [exec] is not allowed in a slice",
        ),
        (
            "kind = \"slice\"\n[oom]\ngroup-kill = true",
            "oom: [oom] is not allowed in a slice",
        ),
        (
            "kind = \"slice\"\n[resources]\ncpu-weight = 0",
            "resources.cpu-weight: 0 is out of range",
        ),
        // a service or oneshot needs [exec]
        (
            "description = \"no exec\"",
            "units/web.toml: error: exec: a service needs an [exec] section with `command`",
        ),
        (
            "kind = \"oneshot\"",
            "units/web.toml: error: exec: a oneshot needs an [exec] section with `command`",
        ),
    ];
    for (text, want) in cases {
        let text = match *text {
            "description = \"no exec\"" | "kind = \"oneshot\"" | "exec = 1" => (*text).to_owned(),
            t if t.contains("slcie") => t.to_owned(),
            t => service(t),
        };
        let got = errors(&text);
        assert_eq!(got.len(), 1, "{text:?}: expected one error, got {got:#?}");
        let want = if want.starts_with("units/") {
            (*want).to_owned()
        } else if want.as_bytes()[0].is_ascii_digit() {
            format!("units/web.toml:{want}")
        } else {
            format!(": error: {want}")
        };
        assert!(
            got[0].contains(&want),
            "{text:?}:\n got  {}\n want {want}",
            got[0]
        );
    }
}

/// Every numeric key, at each end of its documented range (docs/units.md) and one step past it.
#[test]
fn numeric_keys_take_their_documented_range_and_nothing_past_it() {
    let probe = "[health]\ntcp = \"127.0.0.1:80\"\n";
    /// Section and key, lowest accepted, highest accepted, below (if any), above, the range.
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a str, &'a str);
    let cases: &[Case] = &[
        (
            "exec start-timeout",
            "\"1ms\"",
            "\"365d\"",
            Some("\"0s\""),
            "\"366d\"",
            "out of range 1ms..=365d",
        ),
        (
            "restart delay",
            "\"0s\"",
            "\"365d\"",
            None,
            "\"366d\"",
            "out of range 0s..=365d",
        ),
        (
            "restart max-delay",
            "\"0s\"",
            "\"365d\"",
            None,
            "\"366d\"",
            "out of range 0s..=365d",
        ),
        (
            "restart reset-after",
            "\"0s\"",
            "\"365d\"",
            None,
            "\"400d\"",
            "out of range 0s..=365d",
        ),
        (
            "restart start-limit-interval",
            "\"0s\"",
            "\"365d\"",
            None,
            "\"1000y\"",
            "out of range 0s..=365d",
        ),
        (
            "restart start-limit-burst",
            "1",
            "4294967295",
            Some("0"),
            "4294967296",
            "out of range 1..=4294967295",
        ),
        (
            "stop timeout",
            "\"0s\"",
            "\"365d\"",
            None,
            "\"366d\"",
            "out of range 0s..=365d",
        ),
        (
            "health interval",
            "\"1ms\"",
            "\"365d\"",
            Some("\"0s\""),
            "\"366d\"",
            "out of range 1ms..=365d",
        ),
        (
            "health timeout",
            "\"1ms\"",
            "\"365d\"",
            Some("\"0s\""),
            "\"366d\"",
            "out of range 1ms..=365d",
        ),
        (
            "health initial-delay",
            "\"0s\"",
            "\"365d\"",
            None,
            "\"366d\"",
            "out of range 0s..=365d",
        ),
        (
            "health failure-threshold",
            "1",
            "4294967295",
            Some("0"),
            "4294967296",
            "out of range 1..=4294967295",
        ),
        (
            "health success-threshold",
            "1",
            "4294967295",
            Some("0"),
            "4294967296",
            "out of range 1..=4294967295",
        ),
        (
            "resources cpu-quota",
            "\"10%\"",
            "\"1000000%\"",
            Some("\"0%\""),
            "\"1000001%\"",
            "out of range 1%..=1000000%",
        ),
        (
            "resources cpu-quota-period",
            "\"1ms\"",
            "\"1s\"",
            Some("\"999us\""),
            "\"1001ms\"",
            "out of range 1ms..=1s",
        ),
        (
            "resources cpu-weight",
            "1",
            "10000",
            Some("0"),
            "10001",
            "out of range 1..=10000",
        ),
        (
            "resources io-weight",
            "1",
            "10000",
            Some("0"),
            "10001",
            "out of range 1..=10000",
        ),
        (
            "resources memory-max",
            "\"1M\"",
            "\"1024T\"",
            Some("\"0\""),
            "\"1025T\"",
            "out of range 1M..=1024T",
        ),
        (
            "resources memory-max",
            "1048576",
            "\"max\"",
            Some("1048575"),
            "1125899906842625",
            "out of range 1M..=1024T",
        ),
        (
            "resources memory-high",
            "\"1M\"",
            "\"1024T\"",
            Some("\"512\""),
            "\"2048T\"",
            "out of range 1M..=1024T",
        ),
        (
            "resources memory-swap-max",
            "\"0\"",
            "\"1024T\"",
            None,
            "\"1025T\"",
            "out of range 0..=1024T",
        ),
        (
            "resources pids-max",
            "1",
            "4194304",
            Some("0"),
            "4194305",
            "out of range 1..=4194304",
        ),
        (
            "oom score-adjust",
            "-1000",
            "1000",
            Some("-1001"),
            "1001",
            "out of range -1000..=1000",
        ),
    ];
    for (key, lo, hi, below, above, message) in cases {
        let (section, key) = key.split_once(' ').unwrap();
        let unit = |value: &str| match section {
            "exec" => format!("[exec]\ncommand = [\"x\"]\n{key} = {value}\n"),
            "health" => service(&format!("{probe}{key} = {value}\n")),
            _ => service(&format!("[{section}]\n{key} = {value}\n")),
        };
        for good in [lo, hi] {
            if let Err(d) = parse(&unit(good)) {
                panic!("{section}.{key} = {good}: {}", LoadError { diagnostics: d });
            }
        }
        for bad in below.iter().chain([above]) {
            let got = errors(&unit(bad));
            assert_eq!(got.len(), 1, "{section}.{key} = {bad}: {got:#?}");
            let want = format!("error: {section}.{key}: ");
            assert!(
                got[0].starts_with("units/web.toml:")
                    && got[0].contains(&want)
                    && got[0].contains(message),
                "{section}.{key} = {bad}:\n got  {}\n want {want}... {message}",
                got[0]
            );
        }
    }
    // An io limit: 0 bytes per second is "no limit" to v1's blkio, so it is refused.
    for (key, lo, hi, below, above, message) in [
        (
            "read-bps",
            "\"1\"",
            "\"1024T\"",
            "\"0\"",
            "\"1025T\"",
            "out of range 1..=1024T",
        ),
        (
            "write-bps",
            "1",
            "\"max\"",
            "0",
            "\"2048T\"",
            "out of range 1..=1024T",
        ),
        (
            "read-iops",
            "1",
            "4294967295",
            "0",
            "4294967296",
            "out of range 1..=4294967295",
        ),
        (
            "write-iops",
            "1",
            "4294967295",
            "0",
            "4294967296",
            "out of range 1..=4294967295",
        ),
    ] {
        let unit = |v: &str| {
            service(&format!(
                "[[resources.io]]\ndevice = \"8:0\"\n{key} = {v}\n"
            ))
        };
        for good in [lo, hi] {
            assert!(parse(&unit(good)).is_ok(), "io {key} = {good}");
        }
        for bad in [below, above] {
            let got = errors(&unit(bad));
            assert_eq!(got.len(), 1, "io {key} = {bad}: {got:#?}");
            assert!(
                got[0].contains(&format!(
                    "3:{}: error: resources.io[0].{key}: ",
                    key.len() + 4
                )) && got[0].contains(message),
                "io {key} = {bad}: {}",
                got[0]
            );
        }
    }
    // The message names the value, the range and what to write instead.
    let got = errors(&service("[resources]\nmemory-max = \"0\"\n"));
    assert_eq!(
        got,
        [
            "units/web.toml:2:14: error: resources.memory-max: 0 is out of range 1M..=1024T \
          (a limit this low leaves the unit unable to run; write \"max\" for no limit)"
        ]
    );
}

#[test]
fn good_values_land_in_the_model() {
    let u = ok("");
    assert_eq!(u.name, name("web"));
    assert_eq!(u.kind, UnitKind::Service);
    assert_eq!(u.source, PathBuf::from("units/web.toml"));
    assert!(u.enabled);
    assert_eq!(u.restart, RestartConfig::default_for(UnitKind::Service));
    assert_eq!(u.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(u.stop, StopConfig::default());
    assert_eq!(u.resources, Resources::default());
    assert_eq!(u.namespaces, Namespaces::default());
    assert_eq!(u.sandbox, Sandbox::default());
    assert_eq!(u.exec.as_ref().map(|e| e.user.clone()), Some(None));

    assert_eq!(
        ok("kind = \"oneshot\"").restart.policy,
        RestartPolicy::Never
    );
    assert_eq!(
        ok("kind = \"oneshot\"\n[restart]\npolicy = \"on-failure\"")
            .restart
            .policy,
        RestartPolicy::OnFailure
    );
    assert!(!ok("enabled = false").enabled);
    assert_eq!(ok("description = \"d\"").description.as_deref(), Some("d"));
    assert_eq!(
        ok("slice = \"front.end@1\"").slice,
        Some(name("front.end@1"))
    );
    assert_eq!(
        ok("after = [\"a\", \"b\"]\nrequires = [\"c\"]")
            .ordering_deps()
            .count(),
        3
    );

    let r = ok("[restart]\npolicy = \"on-oom\"\ndelay = \"1s\"\nmax-delay = \"1m 30s\"\nreset-after = \"1h\"\nstart-limit-burst = 3\nstart-limit-interval = \"500ms\"\nsuccess-exit-codes = [2, 0, 2]").restart;
    assert_eq!(
        r,
        RestartConfig {
            policy: RestartPolicy::OnOom,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(90),
            reset_after: Duration::from_secs(3600),
            start_limit_burst: 3,
            start_limit_interval: Duration::from_millis(500),
            success_exit_codes: vec![0, 2],
        }
    );
    for (policy, want) in [
        ("never", RestartPolicy::Never),
        ("on-abnormal", RestartPolicy::OnAbnormal),
        ("always", RestartPolicy::Always),
    ] {
        assert_eq!(
            ok(&format!("[restart]\npolicy = \"{policy}\""))
                .restart
                .policy,
            want
        );
    }

    for (sig, want) in [
        ("\"TERM\"", Signal::SIGTERM),
        ("\"sigint\"", Signal::SIGINT),
        ("9", Signal::SIGKILL),
        ("\"SIGQUIT\"", Signal::SIGQUIT),
    ] {
        assert_eq!(
            ok(&format!("[stop]\nsignal = {sig}\ntimeout = \"0s\"")).stop,
            StopConfig {
                signal: SignalSpec(want),
                timeout: Duration::ZERO
            }
        );
    }

    let res = ok("[resources]\ncpu-quota = \"max\"\nmemory-max = 2097152\nmemory-high = \"1 MiB\"\nmemory-swap-max = \"0\"\npids-max = \"max\"").resources;
    assert_eq!(res.cpu_quota, None);
    assert_eq!(res.memory_max, Some(ByteLimit::Bytes(2 << 20)));
    assert_eq!(res.memory_high, Some(ByteLimit::Bytes(1 << 20)));
    assert_eq!(res.memory_swap_max, Some(ByteLimit::Bytes(0)));
    assert_eq!(res.pids_max, Some(None));
    let res =
        ok("[resources]\nmemory-max = \"max\"\npids-max = 64\nallowed-cpus = \"0-1, 3\"").resources;
    assert_eq!(res.memory_max, Some(ByteLimit::Max));
    assert_eq!(res.pids_max, Some(Some(64)));
    assert_eq!(res.allowed_cpus.as_deref(), Some("0-1,3"));
    let io = ok("[[resources.io]]\ndevice = \"253:0\"\nwrite-bps = \"max\"")
        .resources
        .io
        .clone();
    assert_eq!(
        io,
        vec![IoLimit {
            device: DeviceSpec::Number {
                major: 253,
                minor: 0
            },
            read_bps: None,
            write_bps: Some(ByteLimit::Max),
            read_iops: None,
            write_iops: None,
        }]
    );

    let oom = ok("[oom]\nscore-adjust = -1000").oom;
    assert_eq!(
        oom,
        OomConfig {
            group_kill: false,
            score_adjust: Some(-1000),
            pressure: None,
        }
    );
}

#[test]
fn user_and_group_resolve_to_credentials() {
    let creds = |text: &str| {
        ok(&format!("[exec]\ncommand = [\"x\"]\n{text}"))
            .exec
            .and_then(|e| e.user.map(|user| *user))
    };
    let www = Credentials {
        user_name: "www-data".into(),
        uid: 33,
        gid: 33,
        home: "/var/www".into(),
        groups: vec![33, 4],
    };
    assert_eq!(creds("user = \"www-data\""), Some(www.clone()));
    assert_eq!(creds("user = 33"), Some(www.clone()));
    assert_eq!(creds("user = \"33\""), Some(www.clone()));
    assert_eq!(
        creds("user = \"www-data\"\ngroup = \"log\""),
        Some(Credentials {
            gid: 4,
            groups: vec![4],
            ..www.clone()
        })
    );
    assert_eq!(
        creds("user = \"www-data\"\ngroup = 0"),
        Some(Credentials {
            gid: 0,
            groups: vec![0, 4],
            ..www
        })
    );
    assert_eq!(
        creds("user = \"root\"").map(|c| (c.uid, c.gid, c.home)),
        Some((0, 0, "/root".into()))
    );
}

#[test]
fn implied_namespaces_and_sandbox() {
    let ns = ok("[namespaces]\nhostname = \"web-01\"").namespaces;
    assert!(ns.uts && !ns.mount);
    assert!(ok("[namespaces]\npid = true").namespaces.mount);
    assert!(ok("[sandbox]\nprivate-tmp = true").namespaces.mount);
    assert!(
        ok("[sandbox]\nread-only-paths = [\"/etc\"]")
            .namespaces
            .mount
    );
    assert!(!ok("[sandbox]\nread-only-paths = []").namespaces.mount);
    // Outside /tmp (a name that only begins like it, `/` above it), read-only paths and a
    // private /tmp go together.
    let sb = ok(
        "[sandbox]\nprivate-tmp = true\nread-only-paths = [\"/\", \"/tmpfiles\", \"/tmp/../etc\"]",
    )
    .sandbox;
    assert_eq!(sb.read_only_paths.len(), 3);
    let ns = ok("[namespaces]\nuser = true\nuid-map = \"0 1000 1\\n1 100000 65535\"\ngid-map = \"0 1000 1, 1 100000 65535\"").namespaces;
    let map = vec![
        IdMapEntry {
            inside: 0,
            outside: 1000,
            count: 1,
        },
        IdMapEntry {
            inside: 1,
            outside: 100000,
            count: 65535,
        },
    ];
    assert_eq!((ns.uid_map.clone(), ns.gid_map.clone()), (map.clone(), map));
    let sb = ok(
        "[sandbox]\ncapabilities = [\"CAP_KILL\", \"net_bind_service\", \"CAP_CHOWN\", \"kill\"]",
    )
    .sandbox;
    assert_eq!(
        sb.capabilities,
        Some(vec![Capability(0), Capability(5), Capability(10)])
    );
    assert_eq!(
        ok("[sandbox]\ncapabilities = []").sandbox.capabilities,
        Some(vec![])
    );
}

const COMPLETE_EXAMPLE: &str = r#"
kind = "service"              # "service" (default) | "oneshot" | "slice"
description = "static web server"
slice = "frontend"            # parent slice unit; default: the root
after = ["db"]                # start only after these are running (oneshot: exited successfully)
requires = ["db"]             # like after; also stop this unit when a required unit stops or fails
enabled = true                # start when corral starts (default true)

[exec]                        # not allowed in a slice
command = ["python3", "-m", "http.server", "8080"]  # argv, required; bare name searched in PATH
working-dir = "/srv/www"
env = { PORT = "8080" }
user = "www-data"             # name or uid; group defaults to the user's primary group
group = "www-data"

[restart]
policy = "on-failure"         # never | on-failure | on-abnormal | on-oom | always
                              # default: on-failure for a service, never for a oneshot
delay = "100ms"               # first restart delay; doubles on each consecutive failure
max-delay = "1m"              # cap of the delay
reset-after = "10m"           # running this long resets the delay and the failure count
start-limit-burst = 5         # more starts than this within start-limit-interval: state failed
start-limit-interval = "10s"
success-exit-codes = [0]

[stop]
signal = "SIGTERM"
timeout = "10s"               # then SIGKILL to every process left in the unit's cgroup

[resources]                   # allowed in services and slices
cpu-quota = "150%"            # 1.5 CPUs of time per period
cpu-quota-period = "100ms"
cpu-weight = 100              # 1..10000
allowed-cpus = "0-1"
memory-max = "512M"
memory-high = "400M"
memory-swap-max = "0"
pids-max = 64
io-weight = 100               # 1..10000
[[resources.io]]
device = "/dev/vda"           # a block device path or "MAJ:MIN"
read-bps = "100M"
write-bps = "50M"
read-iops = 2000
write-iops = 1000

[oom]
group-kill = true             # an OOM kill takes the whole unit, not one process (v2 memory.oom.group)
score-adjust = 0              # oom_score_adj of the unit's processes

[namespaces]                  # each true gives the unit a new namespace of that kind
pid = true                    # the unit's command is PID 1 of a new pid namespace; /proc shows only it
net = true                    # new network namespace with only loopback, up
mount = true                  # private mount namespace (nothing propagates back to the host)
uts = true
hostname = "web-01"           # implies uts
ipc = true
cgroup = true
user = true                   # new user namespace
uid-map = "0 100000 65536"    # as in /proc/PID/uid_map; default maps 0 inside to the unit's user
gid-map = "0 100000 65536"

[sandbox]
no-new-privileges = true
capabilities = ["CAP_NET_BIND_SERVICE"]   # the bounding set kept; all others dropped
read-only-paths = ["/etc"]
private-tmp = true            # a fresh tmpfs on /tmp (implies mount)
"#;

#[test]
fn spec_example_parses_into_the_expected_model() {
    let (unit, warnings) = parse(COMPLETE_EXAMPLE).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let map = vec![IdMapEntry {
        inside: 0,
        outside: 100000,
        count: 65536,
    }];
    let expected = Unit {
        name: name("web"),
        kind: UnitKind::Service,
        source: "units/web.toml".into(),
        description: Some("static web server".into()),
        slice: Some(name("frontend")),
        after: vec![name("db")],
        requires: vec![name("db")],
        enabled: true,
        exec: Some(Exec {
            command: ["python3", "-m", "http.server", "8080"]
                .map(String::from)
                .to_vec(),
            working_dir: Some("/srv/www".into()),
            env: [("PORT".to_owned(), "8080".to_owned())].into(),
            env_files: Vec::new(),
            user: Some(Box::new(Credentials {
                user_name: "www-data".into(),
                uid: 33,
                gid: 33,
                home: "/var/www".into(),
                groups: vec![33, 4],
            })),
        }),
        restart: RestartConfig::default_for(UnitKind::Service).into(),
        stop: StopConfig::default(),
        resources: Resources {
            cpu_quota: Some(CpuPercent(150)),
            cpu_quota_period: Some(Duration::from_millis(100)),
            cpu_weight: Some(100),
            allowed_cpus: Some("0-1".into()),
            memory_max: Some(ByteLimit::Bytes(512 << 20)),
            memory_high: Some(ByteLimit::Bytes(400 << 20)),
            memory_swap_max: Some(ByteLimit::Bytes(0)),
            pids_max: Some(Some(64)),
            io_weight: Some(100),
            io: vec![IoLimit {
                device: DeviceSpec::Path("/dev/vda".into()),
                read_bps: Some(ByteLimit::Bytes(100 << 20)),
                write_bps: Some(ByteLimit::Bytes(50 << 20)),
                read_iops: Some(2000),
                write_iops: Some(1000),
            }],
        }
        .into(),
        oom: OomConfig {
            group_kill: true,
            score_adjust: Some(0),
            pressure: None,
        }
        .into(),
        namespaces: Namespaces {
            pid: true,
            net: true,
            mount: true,
            uts: true,
            hostname: Some("web-01".into()),
            ipc: true,
            cgroup: true,
            user: true,
            uid_map: map.clone(),
            gid_map: map,
        }
        .into(),
        sandbox: Sandbox {
            no_new_privileges: true,
            capabilities: Some(vec![Capability(10)]),
            read_only_paths: vec!["/etc".into()],
            private_tmp: true,
        }
        .into(),
        readiness: Default::default(),
        health: None,
        logs: Default::default(),
    };
    assert_eq!(unit, expected);
}

#[test]
fn all_errors_of_a_file_are_reported_with_their_positions() {
    let text = "\
kind = \"service\"
enabeld = true
[exec]
command = \"ls\"
working-dir = \"rel\"
[restart]
delay = \"soon\"
start-limit-burst = 0
[resources]
memory-max = \"lots\"
";
    let got = errors(text);
    assert_eq!(
        got,
        [
            "units/web.toml:2:1: error: enabeld: unknown key (did you mean `enabled`?)",
            "units/web.toml:4:11: error: exec.command: expected an array, found a string",
            "units/web.toml:5:15: error: exec.working-dir: path \"rel\" is not absolute",
            "units/web.toml:7:9: error: restart.delay: invalid duration \"soon\": expected number at 0 (write durations like \"100ms\", \"10s\" or \"1m 30s\")",
            "units/web.toml:8:21: error: restart.start-limit-burst: 0 is out of range 1..=4294967295",
            "units/web.toml:10:14: error: resources.memory-max: invalid size \"lots\" (write sizes as bytes or with K, M, G, T (powers of 1024), e.g. \"512M\", or \"max\")",
        ]
    );
}

#[test]
fn malformed_toml_is_one_error_with_its_position() {
    let got = errors("kind = \"service\"\n[exec]\ncommand = [\"a\",\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("units/web.toml:3:16: error: invalid TOML: unclosed array"),
        "{}",
        got[0]
    );
    let got = errors("a = 1\na = 2\n");
    assert_eq!(
        got,
        ["units/web.toml:2:1: error: invalid TOML: duplicate key"]
    );
}

#[test]
fn warnings_do_not_fail_a_unit() {
    let (_, warnings) = parse(&service(
        "after = [\"db\", \"db\"]\n[restart]\ndelay = \"2m\"\n[resources]\nmemory-max = \"1G\"\nmemory-high = \"1G\"",
    ))
    .unwrap();
    let got: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "units/web.toml:1:16: warning: after[1]: `db` is listed twice",
            "units/web.toml:3:9: warning: restart.delay: delay (2m) is above max-delay (1m), so every restart waits max-delay",
            "units/web.toml:6:15: warning: resources.memory-high: memory-high is not below memory-max, so it never throttles",
        ]
    );
}

#[test]
fn ignored_file_names() {
    for n in [
        ".web.toml",
        "..data",
        ".",
        "web.toml~",
        "web.toml.swp",
        "web.swp",
        "web.toml.tmp",
        "#web.toml#",
        "README.md",
        "web",
        "web.TOML",
        "web.toml.bak",
    ] {
        assert!(is_ignored_file_name(n), "{n}");
    }
    for n in ["web.toml", "a@b.toml", "x-1.y_z.toml", "#web.toml"] {
        assert!(!is_ignored_file_name(n), "{n}");
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    fs::write(dir.join(file), text).unwrap();
}

const EXEC: &str = "[exec]\ncommand = [\"true\"]\n";

fn load_errors(dir: &Path) -> Vec<String> {
    let err = load_dir(dir, &db()).unwrap_err();
    err.errors()
        .map(|d| d.to_string().replace(&format!("{}/", dir.display()), ""))
        .collect()
}

#[test]
fn load_dir_reads_units_and_skips_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "web.toml", &format!("after = [\"db\"]\n{EXEC}"));
    write(d, "db.toml", EXEC);
    write(
        d,
        "front.toml",
        "kind = \"slice\"\n[resources]\ncpu-weight = 10",
    );
    for junk in [
        ".hidden.toml",
        "web.toml~",
        "#web.toml#",
        "web.toml.swp",
        "x.tmp",
        "README.md",
    ] {
        write(d, junk, "not = [toml");
    }
    fs::create_dir(d.join("sub.toml")).unwrap();
    write(&d.join("sub.toml"), "inner.toml", EXEC);
    let loaded = load_dir(d, &db()).unwrap();
    assert_eq!(
        loaded
            .units
            .keys()
            .map(UnitName::as_str)
            .collect::<Vec<_>>(),
        ["db", "front", "web"]
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.units[&name("web")].source, d.join("web.toml"));
    assert_eq!(loaded.units[&name("front")].kind, UnitKind::Slice);
}

#[test]
fn load_dir_follows_symlinks_like_a_configmap() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("units");
    fs::create_dir_all(d.join("..2024_01_01")).unwrap();
    write(&d.join("..2024_01_01"), "web.toml", EXEC);
    std::os::unix::fs::symlink("..2024_01_01", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/web.toml", d.join("web.toml")).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&d, &link).unwrap();
    for dir in [&d, &link] {
        let loaded = load_dir(dir, &db()).unwrap();
        assert_eq!(
            loaded
                .units
                .keys()
                .map(UnitName::as_str)
                .collect::<Vec<_>>(),
            ["web"]
        );
    }
    std::os::unix::fs::symlink("..data/gone.toml", d.join("gone.toml")).unwrap();
    assert_eq!(load_errors(&d).len(), 1);
    assert!(load_errors(&d)[0].starts_with("gone.toml: error: cannot read unit file: "));
}

#[test]
fn load_dir_of_a_missing_directory_is_one_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = load_dir(&missing, &db()).unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    assert!(err.to_string().starts_with(&format!(
        "{}: error: cannot read units directory: ",
        missing.display()
    )));
}

#[test]
fn empty_directory_loads_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = load_dir(tmp.path(), &db()).unwrap();
    assert!(loaded.units.is_empty());
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].message.contains("no unit files"));
}

#[test]
fn bad_unit_file_name_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "we b.toml", EXEC);
    assert_eq!(
        load_errors(tmp.path()),
        [
            "we b.toml: error: invalid unit name \"we b\" (unit names use only letters, digits and `_ . @ -`)"
        ]
    );
}

#[test]
fn cross_unit_problems_across_all_files_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "db.toml", EXEC);
    write(
        d,
        "web.toml",
        &format!("slice = \"db\"\nafter = [\"dbb\"]\nrequires = [\"cache\"]\n{EXEC}"),
    );
    write(
        d,
        "cache.toml",
        "[exec]\ncommand = [\"x\"]\nuser = \"ghost\"",
    );
    write(d, "api.toml", &format!("slice = \"frontend\"\n{EXEC}"));
    write(
        d,
        "box.toml",
        "kind = \"slice\"\n[exec]\ncommand = [\"x\"]\n",
    );
    write(d, "lazy.toml", "description = \"no exec\"\n");
    assert_eq!(
        load_errors(d),
        [
            "api.toml:1:9: error: slice: unknown unit `frontend`",
            "box.toml:2:2: error: exec: [exec] is not allowed in a slice (a slice holds only `kind`, `description`, `slice` and [resources])",
            "cache.toml:3:8: error: exec.user: no such user `ghost`",
            "lazy.toml: error: exec: a service needs an [exec] section with `command`",
            "web.toml:1:9: error: slice: `db` is a service, not a slice",
            "web.toml:2:10: error: after[0]: unknown unit `dbb` (did you mean `db`?)",
        ]
    );
}

#[test]
fn dependency_and_slice_cycles_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "a.toml", &format!("after = [\"b\"]\n{EXEC}"));
    write(d, "b.toml", &format!("requires = [\"x\", \"c\"]\n{EXEC}"));
    write(d, "c.toml", &format!("after = [\"a\"]\n{EXEC}"));
    write(d, "x.toml", EXEC);
    write(d, "s1.toml", "kind = \"slice\"\nslice = \"s2\"");
    write(d, "s2.toml", "kind = \"slice\"\nslice = \"s1\"");
    assert_eq!(
        load_errors(d),
        [
            "a.toml:1:10: error: after[0]: dependency cycle: a -> b -> c -> a",
            "s1.toml:2:9: error: slice: slice cycle: s1 -> s2 -> s1",
        ]
    );
}

#[test]
fn load_error_lists_errors_before_warnings_and_spares_refs_to_broken_units() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(
        d,
        "a.toml",
        &format!("after = [\"b\", \"b\", \"s\"]\n{EXEC}"),
    );
    write(d, "b.toml", &format!("bogus = 1\n{EXEC}"));
    write(d, "s.toml", "kind = \"slice\"");
    let err = load_dir(d, &db()).unwrap_err();
    let got: Vec<String> = err
        .diagnostics
        .iter()
        .map(|x| x.to_string().replace(&format!("{}/", d.display()), ""))
        .collect();
    assert_eq!(
        got,
        [
            "b.toml:1:1: error: bogus: unknown key",
            "a.toml:1:15: warning: after[1]: `b` is listed twice",
            "a.toml:1:20: warning: after[2]: `s` is a slice: ordering against a slice has no effect",
        ]
    );
}

#[test]
fn a_templates_slice_is_no_ordering() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "pool.toml", "kind = \"slice\"");
    write(d, "w@.toml", &format!("slice = \"pool\"\n{EXEC}"));
    write(d, "w@1.toml", "");
    let loaded = load_dir(d, &db()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.units[&UnitName::new("w@1").unwrap()].slice,
        Some(UnitName::new("pool").unwrap())
    );
}

#[test]
fn graph_helpers_see_loaded_units() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "front.toml", "kind = \"slice\"");
    write(d, "db.toml", EXEC);
    write(
        d,
        "web.toml",
        &format!("slice = \"front\"\nrequires = [\"db\"]\n{EXEC}"),
    );
    let units = load_dir(d, &db()).unwrap().units;
    let order = crate::core::graph::dependency_graph(&units)
        .topological_order()
        .unwrap();
    assert_eq!(
        order.iter().map(UnitName::as_str).collect::<Vec<_>>(),
        ["db", "front", "web"]
    );
    let dependents = crate::core::graph::ordering_graph(&units).dependents(&name("db"));
    assert_eq!(dependents.into_iter().collect::<Vec<_>>(), [name("web")]);
}

#[test]
fn a_unit_in_its_own_network_namespace_may_use_notify_and_a_watchdog() {
    // The notify socket is a path, which a network namespace does not hide.
    let unit = ok("[exec]\ncommand = [\"x\"]\nready = \"notify\"\n[namespaces]\nnet = true");
    assert!(unit.namespaces.net && unit.wants_notify_socket());
    let unit = ok("[health]\nwatchdog = \"1s\"\n[namespaces]\nnet = true");
    assert!(unit.namespaces.net && unit.wants_notify_socket());
}

#[test]
fn readiness_and_health_keys_parse_with_their_defaults() {
    let unit = ok("[exec]\ncommand = [\"db\"]\nready = \"notify\"\nstart-timeout = \"5s\"");
    assert_eq!(
        unit.readiness,
        Readiness {
            mode: ReadyMode::Notify,
            start_timeout: Duration::from_secs(5),
            pattern: None,
        }
    );
    assert_eq!(unit.health, None);
    assert_eq!(ok("").readiness, Readiness::default());
    let unit = ok(
        "[exec]\ncommand = [\"db\"]\nready = \"log-line\"\nready-pattern = \"listening on [0-9]+\"",
    );
    assert_eq!(unit.readiness.mode, ReadyMode::LogLine);
    let pattern = unit.readiness.pattern.as_ref().map(|p| p.as_str());
    assert_eq!(pattern, Some("listening on [0-9]+"));
    assert!(
        unit.readiness
            .pattern
            .as_ref()
            .is_some_and(|p| p.is_match("db: listening on 5432"))
    );

    let unit = ok("[health]\nhttp = \"http://127.0.0.1:8080/healthz?full=1\"");
    let probe = unit.health.unwrap().probe.unwrap();
    assert_eq!(
        probe,
        ProbeConfig {
            probe: Probe::Http(HttpTarget {
                addr: "127.0.0.1:8080".parse().unwrap(),
                host: "127.0.0.1:8080".into(),
                path: "/healthz?full=1".into(),
            }),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            initial_delay: Duration::ZERO,
            failure_threshold: 3,
            success_threshold: 1,
        }
    );
    let health = ok(
        "[health]\ntcp = \"localhost:5432\"\ninterval = \"2s\"\ntimeout = \"500ms\"\n\
         initial-delay = \"3s\"\nfailure-threshold = 5\nsuccess-threshold = 2\nwatchdog = \"30s\"",
    )
    .health
    .unwrap();
    let probe = health.probe.unwrap();
    assert_eq!(probe.probe, Probe::Tcp("127.0.0.1:5432".parse().unwrap()));
    assert_eq!(
        (probe.interval, probe.timeout, probe.initial_delay),
        (
            Duration::from_secs(2),
            Duration::from_millis(500),
            Duration::from_secs(3)
        )
    );
    assert_eq!((probe.failure_threshold, probe.success_threshold), (5, 2));
    assert_eq!(health.watchdog, Some(Duration::from_secs(30)));

    let health = ok("[exec]\ncommand = [\"pg\"]\n[health]\nexec = [\"pg_isready\", \"-q\"]")
        .health
        .unwrap();
    assert_eq!(
        health.probe.map(|p| p.probe),
        Some(Probe::Exec(vec!["pg_isready".into(), "-q".into()]))
    );
    let health = ok("[health]\nwatchdog = \"10s\"").health.unwrap();
    assert_eq!(
        (health.probe, health.watchdog),
        (None, Some(Duration::from_secs(10)))
    );
    let http = ok("[health]\nhttp = \"http://[::1]\"")
        .health
        .unwrap()
        .probe
        .unwrap();
    assert_eq!(
        http.probe,
        Probe::Http(HttpTarget {
            addr: "[::1]:80".parse().unwrap(),
            host: "[::1]".into(),
            path: "/".into(),
        })
    );
}

#[test]
fn readiness_and_health_mistakes_are_reported_with_position_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[exec]\ncommand = [\"x\"]\nready = \"notfy\"",
            "3:9: error: exec.ready: invalid value \"notfy\" (did you mean `notify`?)",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nstart-timeout = \"0s\"",
            "3:17: error: exec.start-timeout: 0s is out of range 1ms..=365d (must be longer than zero)",
        ),
        (
            "kind = \"oneshot\"\n[exec]\ncommand = [\"x\"]\nready = \"notify\"",
            "4:9: error: exec.ready: `ready = \"notify\"` is for services",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nready = \"log-line\"",
            "3:9: error: exec.ready-pattern: `ready = \"log-line\"` needs `ready-pattern`",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nready = \"log-line\"\nready-pattern = \"listening (on\"",
            "4:17: error: exec.ready-pattern: invalid regular expression",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nready = \"log-line\"\nready-pattern = \"\"",
            "4:17: error: exec.ready-pattern: the pattern is empty",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nready-pattern = \"up\"",
            "3:17: error: exec.ready-pattern: `ready-pattern` is read only with `ready = \"log-line\"`",
        ),
        (
            "kind = \"oneshot\"\n[exec]\ncommand = [\"x\"]\nready = \"log-line\"\nready-pattern = \"up\"",
            "4:9: error: exec.ready: `ready = \"log-line\"` is for services",
        ),
        (
            "[health]\nhttp = \"https://127.0.0.1/\"",
            "2:8: error: health.http: \"https://127.0.0.1/\" is not an http:// URL (https is not probed",
        ),
        (
            "[health]\ntcp = \"db.internal:5432\"",
            "2:7: error: health.tcp: \"db.internal\" is not an IP address",
        ),
        (
            "[health]\ntcp = \"127.0.0.1\"",
            "2:7: error: health.tcp: \"127.0.0.1\" has no port",
        ),
        (
            "[health]\ntcp = \"127.0.0.1:99999\"",
            "2:7: error: health.tcp: invalid port \"99999\"",
        ),
        (
            "[health]\ntcp = \"127.0.0.1:1\"\nhttp = \"http://127.0.0.1/\"",
            "3:8: error: health.http: a unit has one probe: `tcp` and `http` are both set",
        ),
        (
            "[health]\ninterval = \"1s\"\nwatchdog = \"1s\"",
            "2:12: error: health.interval: `interval` tunes a probe, and [health] has none",
        ),
        (
            "[health]\n",
            "error: health: [health] needs a probe or a watchdog",
        ),
        (
            "[exec]\ncommand = [\"x\"]\n[health]\nexec = []",
            "4:8: error: health.exec: the probe's command must not be empty",
        ),
        (
            "[health]\nwatchdog = \"0s\"",
            "2:12: error: health.watchdog: 0s is out of range 1ms..=365d (must be longer than zero)",
        ),
        (
            "[health]\ntcp = \"127.0.0.1:1\"\nfailure-threshold = 0",
            "3:21: error: health.failure-threshold: 0 is out of range",
        ),
        (
            "[health]\ntcp = \"127.0.0.1:1\"\nprobe = 1",
            "3:1: error: health.probe: unknown key",
        ),
        (
            "kind = \"oneshot\"\n[exec]\ncommand = [\"x\"]\n[health]\nwatchdog = \"1s\"",
            "error: health: [health] is for services",
        ),
    ];
    for (text, want) in cases {
        let text = service(text);
        let got = errors(&text);
        assert_eq!(got.len(), 1, "{text:?}: expected one error, got {got:#?}");
        assert!(
            got[0].contains(want),
            "{text:?}:\n  got  {}\n  want {want}",
            got[0]
        );
    }
}

/// The units directory is read on the event loop: a unit file above the size bound is an error
/// naming the file (it is not read into memory), and a FIFO posing as a unit file is refused
/// rather than blocking the read for a writer that never comes.
#[test]
fn an_oversized_unit_file_or_a_fifo_is_an_error_not_a_stall() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "ok.toml", EXEC);
    let padding = "# padding\n".repeat((MAX_UNIT_FILE_BYTES / 10 + 1) as usize);
    write(d, "huge.toml", &format!("{EXEC}{padding}"));
    nix::unistd::mkfifo(&d.join("pipe.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let errors = load_errors(d);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("huge.toml") && e.contains("a unit file may have")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("pipe.toml") && e.contains("not a regular file")),
        "{errors:?}"
    );
}

/// The EnvironmentFile= grammar of systemd.exec(5), case by case.
#[test]
fn env_files_parse_as_systemd_documents() {
    let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("", &[]),
        ("A=1\nB=2\n", &[("A", "1"), ("B", "2")]),
        // No newline at the end; CRLF line ends.
        ("A=1", &[("A", "1")]),
        ("A=1\r\nB=2\r\n", &[("A", "1"), ("B", "2")]),
        // Comments and blank lines; `#` inside a value is kept.
        (
            "# a comment\n; another\n\n   \nA=x#y\n  # indented comment\n",
            &[("A", "x#y")],
        ),
        // A comment ending in a backslash does not swallow the next line (systemd v254).
        ("# note \\\nA=1\n", &[("A", "1")]),
        // Whitespace around the key and the value goes; inside the value it stays.
        ("  KEY  =  two  words  \n", &[("KEY", "two  words")]),
        ("A=\n", &[("A", "")]),
        ("A=   \n", &[("A", "")]),
        // Single quotes: verbatim, across lines, no escapes.
        ("A='  x \\n $y  '\n", &[("A", "  x \\n $y  ")]),
        (
            "A='line 1\nline 2'\nB=2\n",
            &[("A", "line 1\nline 2"), ("B", "2")],
        ),
        // Double quotes: \" \\ \` \$ unescape, other escapes are kept, may span lines.
        (
            "A=\"say \\\"hi\\\" \\\\ \\$HOME \\` \\n\"\n",
            &[("A", "say \"hi\" \\ $HOME ` \\n")],
        ),
        ("A=\"one\ntwo\"\n", &[("A", "one\ntwo")]),
        ("A=\"one \\\ntwo\"\n", &[("A", "one two")]),
        // Unquoted: a backslash keeps the next character, before a newline continues the line.
        ("A=a\\ b\\\\c\n", &[("A", "a b\\c")]),
        (
            "A=first \\\nsecond\nB=3\n",
            &[("A", "first second"), ("B", "3")],
        ),
        // An escaped blank at the end is kept; quotes after the first character are kept.
        ("A=x\\ \n", &[("A", "x ")]),
        ("A=it's \"fine\"\n", &[("A", "it's \"fine\"")]),
        // Quoted and unquoted parts join.
        ("A='x'\"y\"z\n", &[("A", "xyz")]),
        ("A='x' 'y'\n", &[("A", "xy")]),
        // `=` in the value; a later assignment of the same name comes later.
        (
            "URL=a=b=c\nA=1\nA=2\n",
            &[("URL", "a=b=c"), ("A", "1"), ("A", "2")],
        ),
        ("_X9=ok\n", &[("_X9", "ok")]),
    ];
    for (text, want) in cases {
        assert_eq!(parse_env_file(text), Ok(vars(want)), "{text:?}");
    }
    let refused: &[(&str, usize, &str)] = &[
        ("A=1\njust words\n", 2, "expected KEY=VALUE, found no `=`"),
        (
            "export SECRET=hunter2\n",
            1,
            "`export SECRET`: env files have no `export`",
        ),
        ("1A=x\n", 1, "invalid variable name \"1A\""),
        ("A B=x\n", 1, "invalid variable name \"A B\""),
        ("=x\n", 1, "invalid variable name \"\""),
        (
            "A=1\n\nB='open\nstill\n",
            3,
            "B: the ' quote is never closed",
        ),
        ("B=\"open\n", 1, "B: the \" quote is never closed"),
        ("A=x\0y\n", 1, "A: the value holds a NUL character"),
    ];
    for (text, line, message) in refused {
        let e = parse_env_file(text).expect_err(text);
        assert_eq!(e.line, *line, "{text:?}: {e}");
        assert!(e.message.contains(message), "{text:?}: {e}");
        // The value is never repeated: env files hold secrets.
        assert!(
            !e.to_string().contains("hunter2") && !e.to_string().contains("open"),
            "{e}"
        );
    }
}

#[test]
fn env_file_entries_are_absolute_paths_optionally_marked_with_a_dash() {
    let files = |text: &str| ok(text).exec.unwrap().env_files;
    let f = |path: &str, optional| EnvFile {
        path: path.into(),
        optional,
    };
    assert_eq!(
        files("[exec]\ncommand = [\"x\"]\nenv-file = [\"/etc/app/env\", \"-/etc/app/env.local\"]"),
        [f("/etc/app/env", false), f("/etc/app/env.local", true)]
    );
    assert_eq!(
        files("[exec]\ncommand = [\"x\"]\nenv-file = \"-/run/app.env\""),
        [f("/run/app.env", true)]
    );
    assert!(files("[exec]\ncommand = [\"x\"]").is_empty());
    for (text, want) in [
        (
            "[exec]\ncommand = [\"x\"]\nenv-file = [\"app.env\"]",
            "3:13: error: exec.env-file[0]: path \"app.env\" is not absolute",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nenv-file = \"-app.env\"",
            "3:12: error: exec.env-file: path \"app.env\" is not absolute",
        ),
        (
            "[exec]\ncommand = [\"x\"]\nenv-file = 1",
            "3:12: error: exec.env-file: expected an array, found an integer",
        ),
    ] {
        let got = errors(text);
        assert_eq!(got.len(), 1, "{text}: {got:?}");
        assert!(
            got[0].contains(want),
            "{text}:\n got  {}\n want {want}",
            got[0]
        );
    }
}

// ---- templates, instances, specifiers, drop-ins ----

use super::specifier::{NameKind, Specifiers, name_kind};

fn specifiers(instance: &str) -> Specifiers {
    Specifiers::for_instance(&name(&format!("worker@{instance}"))).unwrap()
}

#[test]
fn specifiers_expand_i_n_and_double_percent_and_refuse_the_rest() {
    let s = specifiers("3");
    for (text, want) in [
        ("plain", Ok("plain")),
        ("%i", Ok("3")),
        ("/srv/%i/data", Ok("/srv/3/data")),
        ("%n.log", Ok("worker@3.log")),
        ("%i-%i", Ok("3-3")),
        ("100%%", Ok("100%")),
        ("%%i", Ok("%i")),
        ("date +%%s", Ok("date +%s")),
        ("é%iü", Ok("é3ü")),
        ("", Ok("")),
        ("%I", Err("unknown specifier `%I`")),
        ("date +%s", Err("unknown specifier `%s`")),
        ("50%", Err("`%` at the end, with no specifier")),
    ] {
        let got = s
            .expand(text)
            .map(|c| c.into_owned())
            .map_err(|e| e.message);
        assert_eq!(
            got,
            want.map(str::to_owned).map_err(str::to_owned),
            "{text:?}"
        );
    }
    // An instance name may hold `@`: `%i` is everything after the first one.
    let nested = Specifiers::for_instance(&name("a@b@c")).unwrap();
    assert_eq!(nested.instance, "b@c");
    assert_eq!(Specifiers::for_instance(&name("web")), None);
}

#[test]
fn names_are_plain_templates_or_instances() {
    for (n, want) in [
        ("web", Ok(NameKind::Plain)),
        ("worker@", Ok(NameKind::Template)),
        (
            "worker@3",
            Ok(NameKind::Instance {
                template: "worker@",
            }),
        ),
        ("a@b@c", Ok(NameKind::Instance { template: "a@" })),
        ("@3", Err("invalid unit name \"@3\": nothing before `@`")),
        ("@", Err("invalid unit name \"@\": nothing before `@`")),
    ] {
        assert_eq!(
            name_kind(n).map_err(|e| e.message),
            want.map_err(str::to_owned),
            "{n}"
        );
    }
}

/// Parses `files` (path, text) merged in order; a name with `@` is an instance of a template
/// made of the first `template_layers`, named by `units/<unit>.toml`.
fn parse_merged(
    unit: &str,
    files: &[(&str, &str)],
    template_layers: usize,
) -> Result<Unit, Vec<String>> {
    let layers: Vec<Layer> = files.iter().map(|(f, t)| Layer::new(*f, t)).collect();
    let main = format!("units/{unit}.toml");
    let n = name(unit);
    let layers = if unit.contains('@') {
        UnitLayers::instance(&n, main, layers, template_layers)
    } else {
        UnitLayers::plain(main, layers)
    };
    let p = super::parse::parse_layers(&n, &layers, &db());
    match p.unit {
        Some(u) if p.diagnostics.is_empty() => Ok(std::sync::Arc::unwrap_or_clone(u)),
        Some(_) | None => Err(p.diagnostics.iter().map(ToString::to_string).collect()),
    }
}

#[test]
fn drop_ins_merge_tables_key_by_key_and_replace_arrays_and_scalars() {
    let base = "description = \"web\"\n\
                after = [\"a\", \"b\"]\n\
                [exec]\n\
                command = [\"serve\", \"--port\", \"80\"]\n\
                env = { A = \"1\", B = \"2\" }\n\
                [resources]\n\
                memory-max = \"512M\"\n\
                pids-max = 64\n";
    for (drop_ins, check) in [
        (
            vec!["[resources]\nmemory-max = \"1G\"\n"],
            Box::new(|u: &Unit| {
                assert_eq!(u.resources.memory_max, Some(ByteLimit::Bytes(1 << 30)));
                // The rest of the table stays.
                assert_eq!(u.resources.pids_max, Some(Some(64)));
                assert_eq!(u.exec.as_ref().unwrap().command, ["serve", "--port", "80"]);
            }) as Box<dyn Fn(&Unit)>,
        ),
        (
            // Arrays replace, they do not append.
            vec!["after = [\"c\"]\n[exec]\ncommand = [\"serve\"]\n"],
            Box::new(|u: &Unit| {
                assert_eq!(u.after, [name("c")]);
                assert_eq!(u.exec.as_ref().unwrap().command, ["serve"]);
                assert_eq!(u.exec.as_ref().unwrap().env.len(), 2);
            }),
        ),
        (
            // An inline table is a table: its keys merge too.
            vec!["[exec.env]\nB = \"two\"\nC = \"3\"\n"],
            Box::new(|u: &Unit| {
                let env = &u.exec.as_ref().unwrap().env;
                let got: Vec<_> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                assert_eq!(got, ["A=1", "B=two", "C=3"]);
            }),
        ),
        (
            // In order: the later drop-in wins.
            vec![
                "description = \"one\"\n[resources]\npids-max = 1\n",
                "description = \"two\"\n",
            ],
            Box::new(|u: &Unit| {
                assert_eq!(u.description.as_deref(), Some("two"));
                assert_eq!(u.resources.pids_max, Some(Some(1)));
            }),
        ),
    ] {
        let mut files = vec![("units/web.toml", base)];
        let names: Vec<String> = (0..drop_ins.len())
            .map(|i| format!("units/web.toml.d/{i}0.toml"))
            .collect();
        for (n, text) in names.iter().zip(&drop_ins) {
            files.push((n, text));
        }
        // `after` names units of no directory here: parse_layers does not cross-check.
        let unit = parse_merged("web", &files, 0).unwrap_or_else(|e| panic!("{drop_ins:?}: {e:?}"));
        check(&unit);
        assert_eq!(unit.source, Path::new("units/web.toml"));
    }
}

#[test]
fn a_drop_ins_errors_name_the_drop_in_and_its_line() {
    let base = "[exec]\ncommand = [\"serve\"]\n";
    for (drop_in, want) in [
        (
            "\n[resources]\nmemory-max = \"0\"\n",
            "units/web.toml.d/10-mem.toml:3:14: error: resources.memory-max: 0 is out of range 1M..=1024T",
        ),
        (
            "[exec]\ncomand = [\"x\"]\n",
            "units/web.toml.d/10-mem.toml:2:1: error: exec.comand: unknown key (did you mean `command`?)",
        ),
        (
            "exec = \"serve\"\n",
            "units/web.toml.d/10-mem.toml:1:8: error: exec: expected a table, found a string",
        ),
        (
            "[exec\n",
            "units/web.toml.d/10-mem.toml:1:6: error: invalid TOML:",
        ),
    ] {
        let errs = parse_merged(
            "web",
            &[
                ("units/web.toml", base),
                ("units/web.toml.d/10-mem.toml", drop_in),
            ],
            0,
        )
        .unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{drop_in:?}: want {want:?}, got {errs:?}"
        );
    }
    // A problem of the base file still names the base file, drop-ins or not.
    let errs = parse_merged(
        "web",
        &[
            (
                "units/web.toml",
                "[exec]\ncommand = [\"serve\"]\nuser = \"nobody-here\"\n",
            ),
            ("units/web.toml.d/10-mem.toml", "description = \"x\"\n"),
        ],
        0,
    )
    .unwrap_err();
    assert_eq!(
        errs,
        ["units/web.toml:3:8: error: exec.user: no such user `nobody-here`"]
    );
}

#[test]
fn instances_expand_specifiers_in_what_runs_and_nowhere_else() {
    let template = "description = \"worker %i of %n\"\n\
                    [exec]\n\
                    command = [\"work\", \"--id=%i\", \"100%%\"]\n\
                    working-dir = \"/srv/%i\"\n\
                    env = { ID = \"%i\", NAME = \"%n\" }\n\
                    env-file = \"-/etc/work/%i.env\"\n\
                    [namespaces]\n\
                    hostname = \"w-%i\"\n\
                    [health]\n\
                    exec = [\"check\", \"%i\"]\n";
    let unit = parse_merged("worker@3", &[("units/worker@.toml", template)], 1).unwrap();
    assert_eq!(unit.name, name("worker@3"));
    assert_eq!(unit.description.as_deref(), Some("worker 3 of worker@3"));
    let exec = unit.exec.as_ref().unwrap();
    assert_eq!(exec.command, ["work", "--id=3", "100%"]);
    assert_eq!(exec.working_dir.as_deref(), Some(Path::new("/srv/3")));
    assert_eq!(exec.env["ID"], "3");
    assert_eq!(exec.env["NAME"], "worker@3");
    assert_eq!(exec.env_files[0].path, Path::new("/etc/work/3.env"));
    assert!(exec.env_files[0].optional);
    assert_eq!(unit.namespaces.hostname.as_deref(), Some("w-3"));
    let probe = unit.health.as_ref().unwrap().probe.as_ref().unwrap();
    assert_eq!(probe.probe, Probe::Exec(vec!["check".into(), "3".into()]));

    // A plain unit keeps `%` as written: nothing that worked before changes meaning.
    let plain = ok("[exec]\ncommand = [\"date\", \"+%s %i\"]\n");
    assert_eq!(plain.exec.unwrap().command, ["date", "+%s %i"]);
    // Other keys of a template keep `%` too.
    let errs = parse_merged(
        "worker@3",
        &[(
            "units/worker@.toml",
            "[exec]\ncommand = [\"w\"]\nuser = \"%i\"\n",
        )],
        1,
    )
    .unwrap_err();
    assert_eq!(
        errs,
        [
            "units/worker@.toml:3:8: error: in instance units/worker@3.toml: exec.user: no such user `%i`"
        ]
    );
}

#[test]
fn an_instance_file_merges_over_its_template_like_a_drop_in() {
    let template = "[exec]\ncommand = [\"work\", \"%i\"]\n[resources]\nmemory-max = \"256M\"\n";
    let files = [
        ("units/worker@.toml", template),
        (
            "units/worker@.toml.d/10.toml",
            "[resources]\npids-max = 10\n",
        ),
        (
            "units/worker@big.toml",
            "[resources]\nmemory-max = \"2G\"\n",
        ),
        (
            "units/worker@big.toml.d/10.toml",
            "description = \"the big one: %n\"\n",
        ),
    ];
    let unit = parse_merged("worker@big", &files, 2).unwrap();
    assert_eq!(unit.source, Path::new("units/worker@big.toml"));
    assert_eq!(unit.exec.as_ref().unwrap().command, ["work", "big"]);
    assert_eq!(unit.resources.memory_max, Some(ByteLimit::Bytes(2 << 30)));
    assert_eq!(unit.resources.pids_max, Some(Some(10)));
    assert_eq!(unit.description.as_deref(), Some("the big one: worker@big"));
}

#[test]
fn an_instances_problems_name_their_file_and_a_templates_line_names_the_instance() {
    let template = "[exec]\ncommand = [\"work\"]\n[namespaces]\nhostname = \"w-%i\"\n";
    for (files, template_layers, unit, want) in [
        (
            // Valid as a template (`w-0`), not for this instance: `_` is no host name character.
            vec![("units/worker@.toml", template)],
            1,
            "worker@a_b",
            "units/worker@.toml:4:12: error: in instance units/worker@a_b.toml: namespaces.hostname: invalid host name \"w-a_b\"",
        ),
        (
            vec![(
                "units/worker@.toml",
                "[exec]\ncommand = [\"work\", \"%x\"]\n",
            )],
            1,
            "worker@3",
            "units/worker@.toml:2:20: error: in instance units/worker@3.toml: exec.command[1]: unknown specifier `%x`",
        ),
        (
            // The instance's own file: no instance note, its own line.
            vec![
                ("units/worker@.toml", template),
                ("units/worker@3.toml", "\n[exec]\nstart-timeout = \"0s\"\n"),
            ],
            1,
            "worker@3",
            "units/worker@3.toml:3:17: error: exec.start-timeout: 0s is out of range 1ms..=365d",
        ),
        (
            // A drop-in of the template counts as the template.
            vec![
                ("units/worker@.toml", template),
                (
                    "units/worker@.toml.d/x.toml",
                    "[exec]\nenv = { A = \"%\" }\n",
                ),
                ("units/worker@3.toml", ""),
            ],
            2,
            "worker@3",
            "units/worker@.toml.d/x.toml:2:13: error: in instance units/worker@3.toml: exec.env.A: `%` at the end",
        ),
    ] {
        // With only the template's files, the instance is a symlink to it: the instance's
        // file still names the unit.
        let errs = parse_merged(unit, &files, template_layers).unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "want {want:?}, got {errs:?}"
        );
    }
}

#[test]
fn load_dir_makes_instances_of_templates_by_file_or_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "worker@.toml", "[exec]\ncommand = [\"work\", \"%i\"]\n");
    std::os::unix::fs::symlink("worker@.toml", d.join("worker@1.toml")).unwrap();
    std::os::unix::fs::symlink(d.join("worker@.toml"), d.join("worker@2.toml")).unwrap();
    write(d, "worker@big.toml", "description = \"big\"\n");
    fs::create_dir(d.join("worker@.toml.d")).unwrap();
    write(
        &d.join("worker@.toml.d"),
        "10.toml",
        "[resources]\npids-max = 8\n",
    );
    fs::create_dir(d.join("worker@2.toml.d")).unwrap();
    write(
        &d.join("worker@2.toml.d"),
        "10.toml",
        "[resources]\npids-max = 9\n",
    );
    let loaded = load_dir(d, &db()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // The template is no unit.
    let names: Vec<_> = loaded.units.keys().map(UnitName::as_str).collect();
    assert_eq!(names, ["worker@1", "worker@2", "worker@big"]);
    for (n, command, pids) in [
        ("worker@1", "1", 8),
        ("worker@2", "2", 9),
        ("worker@big", "big", 8),
    ] {
        let u = &loaded.units[&name(n)];
        assert_eq!(u.exec.as_ref().unwrap().command, ["work", command], "{n}");
        assert_eq!(u.resources.pids_max, Some(Some(pids)), "{n}");
        assert_eq!(u.source, d.join(format!("{n}.toml")), "{n}");
    }
    assert_eq!(
        loaded.units[&name("worker@big")].description.as_deref(),
        Some("big")
    );
}

#[test]
fn load_dir_reports_template_and_drop_in_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // An instance with no template, and a name with nothing before `@`.
    write(d, "ghost@1.toml", EXEC);
    write(d, "@1.toml", EXEC);
    // A broken template: its problem shows once, not once more per instance.
    write(
        d,
        "bad@.toml",
        "after = [\"nothing\"]\n[exec]\ncommand = [\"x\"]\nstart-timeout = \"0s\"\n",
    );
    std::os::unix::fs::symlink("bad@.toml", d.join("bad@1.toml")).unwrap();
    std::os::unix::fs::symlink("bad@.toml", d.join("bad@2.toml")).unwrap();
    // Naming a template where a unit is meant.
    write(d, "web.toml", &format!("after = [\"bad@\"]\n{EXEC}"));
    fs::create_dir(d.join("web.toml.d")).unwrap();
    write(
        &d.join("web.toml.d"),
        "10-mem.toml",
        "[resources]\nmemory-max = 0\n",
    );
    assert_eq!(
        load_errors(d),
        [
            "@1.toml: error: invalid unit name \"@1\": nothing before `@` (a template is named like `worker@`, its instances like `worker@3`)",
            "bad@.toml:1:10: error: after[0]: unknown unit `nothing`",
            "bad@.toml:4:17: error: exec.start-timeout: 0s is out of range 1ms..=365d (must be longer than zero)",
            "ghost@1.toml: error: `ghost@1` is an instance of `ghost@`, which has no file (create the template ghost@.toml, or name this unit without `@`)",
            "web.toml:1:10: error: after[0]: unknown unit `bad@` (`bad@` is a template; name one of its instances, such as `bad@1`)",
            "web.toml.d/10-mem.toml:2:14: error: resources.memory-max: 0 is out of range 1M..=1024T (a limit this low leaves the unit unable to run; write \"max\" for no limit)",
        ]
    );
}

#[test]
fn load_dir_warns_of_drop_ins_without_a_unit_and_skips_leftovers_in_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "web.toml", EXEC);
    fs::create_dir(d.join("web.toml.d")).unwrap();
    let drop_ins = d.join("web.toml.d");
    write(&drop_ins, "20-b.toml", "description = \"b\"\n");
    write(&drop_ins, "10-a.toml", "description = \"a\"\n");
    for junk in [".20-c.toml.swp", "30-d.toml~", "README"] {
        write(&drop_ins, junk, "not = [toml");
    }
    fs::create_dir(d.join("ghost.toml.d")).unwrap();
    let loaded = load_dir(d, &db()).unwrap();
    // Name order: 20-b merges last.
    assert_eq!(loaded.units[&name("web")].description.as_deref(), Some("b"));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [format!(
            "{}: warning: ignored: no unit file ghost.toml for these drop-ins",
            d.join("ghost.toml.d").display()
        )]
    );
}

#[test]
fn show_prints_the_merged_unit_with_the_origin_of_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(
        d,
        "web.toml",
        "description = \"web\"\n[exec]\ncommand = [\"serve\", \"80\"]\nenv = { A = \"1\" }\n[resources]\nmemory-max = \"512M\"\n",
    );
    fs::create_dir(d.join("web.toml.d")).unwrap();
    write(
        &d.join("web.toml.d"),
        "10-mem.toml",
        "[resources]\n\nmemory-max = \"1G\"\n[exec.env]\nB = \"\\u001b[31m\"\n",
    );
    write(d, "worker@.toml", "[exec]\ncommand = [\"work\", \"%i\"]\n");
    std::os::unix::fs::symlink("worker@.toml", d.join("worker@7.toml")).unwrap();
    assert_eq!(
        show_unit(d, "web").unwrap(),
        "# merged from web.toml, web.toml.d/10-mem.toml\n\
         description = \"web\"  # from web.toml:1\n\
         \n\
         [exec]\n\
         command = [\"serve\", \"80\"]  # from web.toml:3\n\
         \n\
         [exec.env]\n\
         A = \"1\"  # from web.toml:4\n\
         B = \"\\u001B[31m\"  # from web.toml.d/10-mem.toml:5\n\
         \n\
         [resources]\n\
         memory-max = \"1G\"  # from web.toml.d/10-mem.toml:3\n"
    );
    // An instance shows what runs; a template what is written.
    assert_eq!(
        show_unit(d, "worker@7").unwrap(),
        "# merged from worker@.toml\n\n[exec]\ncommand = [\"work\", \"7\"]  # from worker@.toml:2\n"
    );
    assert!(
        show_unit(d, "worker@")
            .unwrap()
            .contains("[\"work\", \"%i\"]")
    );
    let err = show_unit(d, "nope").unwrap_err().to_string();
    assert!(err.ends_with("error: no unit `nope` here"), "{err}");
}

fn runtime(names: &[&str]) -> std::collections::BTreeSet<UnitName> {
    names.iter().map(|n| name(n)).collect()
}

#[test]
fn runtime_instances_are_made_from_their_template_unless_a_file_gives_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(
        d,
        "worker@.toml",
        "[exec]\ncommand = [\"work\", \"%i\", \"%n\"]\n",
    );
    fs::create_dir(d.join("worker@.toml.d")).unwrap();
    write(
        &d.join("worker@.toml.d"),
        "10.toml",
        "[resources]\npids-max = 8\n",
    );
    // A drop-in of a runtime instance applies to it, as to a file instance.
    fs::create_dir(d.join("worker@7.toml.d")).unwrap();
    write(
        &d.join("worker@7.toml.d"),
        "10.toml",
        "[resources]\npids-max = 9\n",
    );
    write(d, "worker@2.toml", "description = \"by file\"\n");
    let asked = runtime(&["worker@1", "worker@2", "worker@7", "gone@1"]);
    let loaded = load_dir_with_instances(d, &db(), &asked).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let names: Vec<_> = loaded.units.keys().map(UnitName::as_str).collect();
    assert_eq!(names, ["worker@1", "worker@2", "worker@7"]);
    // worker@2 has a file, gone@ no template: neither was made at runtime.
    assert_eq!(loaded.runtime_instances, runtime(&["worker@1", "worker@7"]));
    for (n, pids) in [("worker@1", 8), ("worker@7", 9)] {
        let u = &loaded.units[&name(n)];
        let want = ["work", n.trim_start_matches("worker@"), n];
        assert_eq!(u.exec.as_ref().unwrap().command, want, "{n}");
        assert_eq!(u.resources.pids_max, Some(Some(pids)), "{n}");
    }
    assert_eq!(
        loaded.units[&name("worker@2")].description.as_deref(),
        Some("by file")
    );
    // Without the runtime set, worker@7's drop-ins are ignored with a warning, as before.
    let plain = load_dir(d, &db()).unwrap();
    assert_eq!(plain.units.len(), 1);
    assert!(plain.runtime_instances.is_empty());
}

#[test]
fn a_runtime_instance_is_checked_like_a_file_instance_and_cannot_be_depended_on() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(
        d,
        "worker@.toml",
        "[exec]\ncommand = [\"work\"]\n[namespaces]\nhostname = \"w-%i\"\n",
    );
    // An instance whose name makes the template invalid: the template's line, the instance.
    let errs: Vec<String> = load_dir_with_instances(d, &db(), &runtime(&["worker@a_b"]))
        .unwrap_err()
        .diagnostics
        .iter()
        .map(|e| e.to_string().replace(&format!("{}/", d.display()), ""))
        .collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "worker@.toml:4:12: error: in instance worker@a_b.toml: namespaces.hostname: invalid host name \"w-a_b\""
        ),
        "{errs:?}"
    );
    // A file naming a runtime instance would break when `stop` or `scale` removes it.
    write(d, "web.toml", &format!("after = [\"worker@1\"]\n{EXEC}"));
    let errs: Vec<String> = load_dir_with_instances(d, &db(), &runtime(&["worker@1"]))
        .unwrap_err()
        .diagnostics
        .iter()
        .map(|e| e.to_string().replace(&format!("{}/", d.display()), ""))
        .collect();
    assert_eq!(
        errs,
        [
            "web.toml:1:10: error: after[0]: `worker@1` is a runtime instance, with no file \
          (`corral stop` or `corral scale` can remove it at any time; to depend on it, give it \
          a file (a symlink to its template: worker@1.toml))"
        ]
    );
}

#[test]
fn runtime_instance_names_follow_the_rules_of_file_names() {
    let long = format!("w@{}", "1".repeat(249));
    for (given, want) in [
        ("worker@3", Ok(Some("worker@"))),
        ("worker@a@b", Ok(Some("worker@"))),
        ("web", Ok(None)),
        (
            "worker@a b",
            Err(
                "invalid unit name \"worker@a b\" (unit names use only letters, digits and `_ . @ -`)",
            ),
        ),
        (
            "@3",
            Err(
                "invalid unit name \"@3\": nothing before `@` (a template is named like `worker@`, its instances like `worker@3`)",
            ),
        ),
        (
            "worker@",
            Err(
                "`worker@` is a template, never started itself (name one of its instances, such as `worker@1`)",
            ),
        ),
        (
            long.as_str(),
            Err(
                "invalid unit name: 251 bytes, more than the 250 a unit file's name allows (255 with `.toml`)",
            ),
        ),
    ] {
        let got = template_of_instance(given);
        let got = got
            .as_ref()
            .map(|t| t.as_ref().map(UnitName::as_str))
            .map_err(String::as_str);
        assert_eq!(got, want, "{given}");
    }
    assert!(template_of_instance(&format!("w@{}", "1".repeat(248))).is_ok());
}

#[test]
fn pressure_keys_land_in_the_model() {
    let unit = ok(r#"
[resources]
memory-max = "64M"
[oom]
usage-threshold = "80%"
pressure-threshold = "some 20% over 5s"
sustain = "2s"
action = "restart"
cool-down = "5m"
"#);
    let policy = unit.oom.pressure.clone().expect("a policy");
    assert_eq!(policy.usage_percent, Some(80));
    let psi = policy.psi.expect("a PSI threshold");
    assert_eq!(psi.trigger(), "some 1000000 5000000");
    assert_eq!(psi.to_string(), "some 20% over 5s");
    assert_eq!(policy.sustain, Duration::from_secs(2));
    assert_eq!(policy.action, PressureAction::Restart);
    assert_eq!(policy.cool_down, Duration::from_secs(300));

    let unit = ok(r#"
[oom]
pressure-threshold = "full 10% over 500ms"
action = "signal"
signal = "SIGUSR1"
"#);
    let policy = unit.oom.pressure.clone().expect("a policy");
    assert_eq!(
        policy.psi.map(|p| p.trigger()).as_deref(),
        Some("full 50000 500000")
    );
    assert_eq!(
        policy.action,
        PressureAction::Signal(SignalSpec(crate::core::signal::Signal::SIGUSR1))
    );
    assert_eq!(policy.cool_down, Duration::from_secs(60), "the default");
    assert_eq!(policy.sustain, Duration::ZERO, "the default");
    assert_eq!(ok("[oom]\ngroup-kill = true\n").oom.pressure, None);
}

#[test]
fn pressure_keys_are_validated_with_file_line_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[oom]\nusage-threshold = \"90%\"\n",
            "units/web.toml:2:19: error: oom.usage-threshold: `usage-threshold` is a share of memory-max, which is not set",
        ),
        (
            "[resources]\nmemory-max = \"max\"\n[oom]\nusage-threshold = \"90%\"\n",
            "units/web.toml:4:19: error: oom.usage-threshold: `usage-threshold` is a share of memory-max",
        ),
        (
            "[resources]\nmemory-max = \"64M\"\n[oom]\nusage-threshold = \"100%\"\n",
            "oom.usage-threshold: 100% is out of range 1%..=99%",
        ),
        (
            "[resources]\nmemory-max = \"64M\"\n[oom]\nusage-threshold = 90\n",
            "oom.usage-threshold: expected a string",
        ),
        (
            "[oom]\npressure-threshold = \"some 20% over 20s\"\n",
            "oom.pressure-threshold: window 20s is out of range 500ms..=10s",
        ),
        (
            "[oom]\npressure-threshold = \"most 20% over 2s\"\n",
            "oom.pressure-threshold: invalid pressure kind \"most\"",
        ),
        (
            "[oom]\npressure-threshold = \"some 0% over 2s\"\n",
            "oom.pressure-threshold: 0% is out of range 1%..=100%",
        ),
        (
            "[oom]\npressure-threshold = \"some 20%\"\n",
            "oom.pressure-threshold: invalid pressure threshold",
        ),
        (
            "[oom]\naction = \"restart\"\n",
            "units/web.toml:2:10: error: oom.action: `action` needs a threshold",
        ),
        (
            "[oom]\npressure-threshold = \"some 20% over 2s\"\naction = \"signal\"\n",
            "oom.action: `action = \"signal\"` needs `signal`",
        ),
        (
            "[oom]\npressure-threshold = \"some 20% over 2s\"\nsignal = \"SIGUSR1\"\n",
            "oom.signal: `signal` is only for `action = \"signal\"`",
        ),
        (
            "[oom]\npressure-threshold = \"some 20% over 2s\"\naction = \"reboot\"\n",
            "oom.action: invalid value \"reboot\"",
        ),
        (
            "[oom]\npressure-threshold = \"some 20% over 2s\"\ncool-down = \"10ms\"\n",
            "oom.cool-down: 10ms is out of range 1s..=365d",
        ),
    ];
    for (text, want) in cases {
        let got = errors(&service(text));
        assert!(
            got.iter().any(|e| e.contains(want)),
            "{text:?}: wanted {want:?} in {got:#?}"
        );
    }
}

#[test]
fn logs_keys_land_in_the_model_and_bad_ones_name_file_line_and_key() {
    assert_eq!(ok("").logs, LogConfig::default());
    let unit = ok(
        "[logs]\nfile = \"/var/log/corral/web.log\"\nmax-size = \"1M\"\nkeep = 3\ncompress = true",
    );
    assert_eq!(
        unit.logs,
        LogConfig {
            file: Some(PathBuf::from("/var/log/corral/web.log")),
            max_size: 1 << 20,
            keep: 3,
            compress: true,
        }
    );
    let cases = [
        (
            "[logs]\nfile = \"web.log\"",
            "2:8: error: logs.file: path \"web.log\" is not absolute",
        ),
        (
            "[logs]\nfile = \"/var/log/\"",
            "2:8: error: logs.file: \"/var/log/\" names a directory",
        ),
        (
            "[logs]\nfile = \"/var/log/../etc/x\"",
            "2:8: error: logs.file: \"/var/log/../etc/x\" has `.` or `..`",
        ),
        (
            "[logs]\nfile = \"/proc/sys/kernel/core_pattern\"",
            "2:8: error: logs.file: \"/proc/sys/kernel/core_pattern\" is inside /proc",
        ),
        (
            "[logs]\nfile = \"/dev/sda\"",
            "2:8: error: logs.file: \"/dev/sda\" is inside /dev",
        ),
        (
            "[logs]\nmax-size = \"1K\"",
            "2:12: error: logs.max-size: 1K is out of range 4K..=1G",
        ),
        (
            "[logs]\nmax-size = \"max\"",
            "2:12: error: logs.max-size: a log file needs a size to rotate at",
        ),
        (
            "[logs]\nkeep = 101",
            "2:8: error: logs.keep: 101 is out of range 0..=100",
        ),
        (
            "[logs]\ncompress = \"yes\"",
            "2:12: error: logs.compress: expected a boolean",
        ),
        (
            "[logs]\nrotate = true",
            "2:1: error: logs.rotate: unknown key",
        ),
    ];
    for (text, want) in cases {
        let text = service(text);
        let got = errors(&text);
        assert_eq!(got.len(), 1, "{text:?}: expected one error, got {got:#?}");
        assert!(
            got[0].contains(want),
            "{text:?}:\n  got  {}\n  want {want}",
            got[0]
        );
    }
    let slice = errors("kind = \"slice\"\n[logs]\nfile = \"/var/log/s.log\"");
    assert!(
        slice
            .iter()
            .any(|e| e.contains("[logs] is not allowed in a slice")),
        "{slice:?}"
    );
}
