//! Table tests of both exports on units parsed from text: what maps, and what is warned about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::k8s::{self, Layout, Object, Workload};
use super::systemd;
use super::*;
use crate::unit::{MemoryUserDb, parse_unit};

fn units(files: &[(&str, &str)]) -> UnitSet {
    let users = MemoryUserDb::new().with_user("www", 33, 33, "/var/www");
    files
        .iter()
        .map(|(name, text)| {
            let name = UnitName::new(name).unwrap();
            let file = PathBuf::from(format!("{name}.toml"));
            let (unit, _) = parse_unit(&name, &file, text, &users).unwrap();
            (name, std::sync::Arc::new(unit))
        })
        .collect()
}

fn options(layout: Layout) -> k8s::Options {
    k8s::Options {
        layout,
        workload: Workload::Pod,
        name: "demo".into(),
        image: "img".into(),
        privileged: false,
    }
}

fn pod_spec(units: &UnitSet, layout: Layout) -> (PodSpec, Vec<String>) {
    let sources: BTreeMap<UnitName, String> =
        units.keys().map(|n| (n.clone(), String::new())).collect();
    let out = k8s::export(units, &sources, &options(layout)).unwrap();
    let spec = out
        .objects
        .iter()
        .find_map(|o| match o {
            Object::Pod(p) => p.spec.clone(),
            _ => None,
        })
        .unwrap();
    (spec, out.warnings.iter().map(ToString::to_string).collect())
}

fn names(containers: &Option<Vec<Container>>) -> Vec<&str> {
    containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

fn has(warnings: &[String], needle: &str) -> bool {
    warnings.iter().any(|w| w.contains(needle))
}

const CMD: &str = "[exec]\ncommand = [\"sleep\", \"1\"]\n";

#[test]
fn split_puts_oneshots_and_dependencies_first_in_dependency_order() {
    let set = units(&[
        ("migrate", &format!("kind = \"oneshot\"\n{CMD}")),
        (
            "db",
            &format!(
                "after = [\"migrate\"]\n{CMD}[health]\ntcp = \"127.0.0.1:5432\"\ninterval = \"2s\"\n"
            ),
        ),
        ("api", &format!("requires = [\"db\"]\n{CMD}")),
    ]);
    let (spec, warnings) = pod_spec(&set, Layout::Split);
    assert_eq!(names(&spec.init_containers), ["migrate", "db"]);
    assert_eq!(names(&Some(spec.containers.clone())), ["api"]);
    let inits = spec.init_containers.unwrap();
    assert_eq!(
        inits[0].restart_policy, None,
        "a oneshot runs to completion"
    );
    assert_eq!(
        inits[1].restart_policy.as_deref(),
        Some("Always"),
        "native sidecar"
    );
    let startup = inits[1].startup_probe.as_ref().expect("the sidecar's gate");
    assert_eq!(startup.period_seconds, Some(2));
    // start-timeout 90s / interval 2s
    assert_eq!(startup.failure_threshold, Some(45));
    assert!(startup.tcp_socket.as_ref().unwrap().host.is_none());
    assert!(inits[1].liveness_probe.is_some());
    assert!(!has(&warnings, "not a chain"), "{warnings:?}");
    assert!(has(
        &warnings,
        "api: requires: the kubelet restarts a failed sidecar (db)"
    ));
    assert!(has(
        &warnings,
        "db: health: the kubelet probes the pod's IP"
    ));
}

#[test]
fn split_warns_when_kubernetes_serializes_what_corral_runs_side_by_side() {
    let set = units(&[
        ("a", CMD),
        ("b", CMD),
        ("c", &format!("after = [\"a\", \"b\"]\n{CMD}")),
        ("d", CMD),
    ]);
    let (spec, warnings) = pod_spec(&set, Layout::Split);
    assert_eq!(names(&spec.init_containers), ["a", "b"]);
    let chain: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("not a chain"))
        .collect();
    assert_eq!(chain.len(), 1, "{warnings:?}");
    assert!(chain[0].contains("b also waits for a"), "{}", chain[0]);
    assert!(chain[0].contains("d also waits for a, b"), "{}", chain[0]);
}

#[test]
fn split_maps_limits_and_sandbox_and_warns_for_the_rest() {
    let set = units(&[(
        "web",
        &format!(
            "{CMD}user = \"www\"\n[resources]\ncpu-quota = \"150%\"\ncpu-weight = 50\nmemory-max = \"512M\"\n\
             memory-high = \"400M\"\nmemory-swap-max = \"0\"\npids-max = 64\nio-weight = 10\n\
             [[resources.io]]\ndevice = \"8:0\"\nread-bps = \"1M\"\n\
             [restart]\npolicy = \"on-oom\"\ndelay = \"1s\"\n\
             [sandbox]\nno-new-privileges = true\ncapabilities = [\"net_bind_service\"]\n\
             read-only-paths = [\"/\", \"/etc\"]\nprivate-tmp = true\n"
        ),
    )]);
    let (spec, warnings) = pod_spec(&set, Layout::Split);
    let c = &spec.containers[0];
    let r = c.resources.as_ref().unwrap();
    let limits = r.limits.as_ref().unwrap();
    assert_eq!(limits["cpu"].0, "1500m");
    assert_eq!(limits["memory"].0, "512Mi");
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "500m");
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(33));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_BIND_SERVICE".to_owned()][..])
    );
    assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/tmp");
    let tmp = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(
        tmp.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    for key in [
        "resources.memory-high",
        "resources.memory-swap-max",
        "resources.pids-max",
        "resources.io-weight",
        "resources.io:",
        "restart.policy: on-oom",
        "restart: delay",
        "sandbox.read-only-paths: /etc",
        "sandbox.capabilities",
    ] {
        assert!(
            has(&warnings, &format!("web: {key}")),
            "{key}: {warnings:?}"
        );
    }
}

#[test]
fn wrap_sums_limits_with_slices_bounding_their_members() {
    let set = units(&[
        (
            "app",
            "kind = \"slice\"\n[resources]\nmemory-max = \"256M\"\n",
        ),
        (
            "a",
            &format!(
                "slice = \"app\"\n{CMD}[resources]\nmemory-max = \"200M\"\ncpu-quota = \"50%\"\n"
            ),
        ),
        (
            "b",
            &format!(
                "slice = \"app\"\n{CMD}[resources]\nmemory-max = \"200M\"\ncpu-quota = \"25%\"\n"
            ),
        ),
        (
            "c",
            &format!("{CMD}[resources]\nmemory-max = \"64M\"\ncpu-quota = \"100%\"\n"),
        ),
    ]);
    let (spec, warnings) = pod_spec(&set, Layout::Wrap);
    let limits = spec.containers[0]
        .resources
        .clone()
        .unwrap()
        .limits
        .unwrap();
    // app: min(256M, 400M) + c: 64M + corral's own 32M
    assert_eq!(limits["memory"].0, "352Mi");
    // app has no cpu-quota: a's and b's, plus c's
    assert_eq!(limits["cpu"].0, "1750m");
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    // three stop timeouts of 10s side by side, corral's shutdown-timeout and the margin
    assert_eq!(spec.termination_grace_period_seconds, Some(25));
    assert!(has(&warnings, "privileged"), "{warnings:?}");

    let unbounded = units(&[
        ("x", CMD),
        ("y", &format!("{CMD}[resources]\nmemory-max = \"1G\"\n")),
    ]);
    let (spec, warnings) = pod_spec(&unbounded, Layout::Wrap);
    assert!(spec.containers[0].resources.is_none());
    assert!(has(
        &warnings,
        "no memory limit for the pod: x has no memory-max"
    ));
}

#[test]
fn wrap_grace_period_covers_the_longest_stop_chain() {
    let set = units(&[
        ("a", &format!("{CMD}[stop]\ntimeout = \"30s\"\n")),
        (
            "b",
            &format!("after = [\"a\"]\n{CMD}[stop]\ntimeout = \"20s\"\n"),
        ),
        ("c", &format!("{CMD}[stop]\ntimeout = \"40s\"\n")),
    ]);
    assert_eq!(shutdown_chain(&set), std::time::Duration::from_secs(50));
    let (spec, _) = pod_spec(&set, Layout::Wrap);
    assert_eq!(spec.termination_grace_period_seconds, Some(65));
}

#[test]
fn wrap_probes_ask_the_probe_listener_that_its_command_opens() {
    let set = units(&[("a", CMD)]);
    let (spec, _) = pod_spec(&set, Layout::Wrap);
    let c = &spec.containers[0];
    let command = c.command.clone().unwrap();
    let listen = format!("0.0.0.0:{}", k8s::PROBE_PORT);
    assert!(
        command
            .windows(2)
            .any(|w| w == ["--probe-listen", listen.as_str()]),
        "{command:?}"
    );
    // corral takes the option as its run option (not as a units directory).
    assert_eq!(command.last().map(String::as_str), Some(k8s::UNITS_MOUNT));
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(port.container_port, i32::from(k8s::PROBE_PORT));
    let name = port.name.clone().unwrap();
    let asks = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        let k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(port) = &get.port
        else {
            panic!("a named port: {:?}", get.port);
        };
        assert_eq!(port, &name);
        get.path.clone().unwrap()
    };
    assert_eq!(asks(&c.startup_probe), "/livez");
    assert_eq!(asks(&c.liveness_probe), "/livez");
    assert_eq!(asks(&c.readiness_probe), "/readyz");
}

#[test]
fn object_names_are_dns_labels_that_leave_room_for_the_config_map() {
    assert!(k8s::valid_object_name("corral"));
    assert!(k8s::valid_object_name("a-1"));
    for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(58)] {
        assert!(!k8s::valid_object_name(bad), "{bad}");
    }
}

fn systemd_files(set: &UnitSet, version: u32) -> (BTreeMap<String, String>, Vec<String>) {
    let resolve = |name: &str| Some(Path::new("/usr/bin").join(name));
    let out = systemd::export(
        set,
        &systemd::Options {
            version,
            resolve: &resolve,
        },
    );
    (
        out.files.into_iter().map(|f| (f.name, f.text)).collect(),
        out.warnings.iter().map(ToString::to_string).collect(),
    )
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn systemd_maps_every_directive_it_has() {
    let set = units(&[
        (
            "my-app",
            "kind = \"slice\"\n[resources]\nmemory-max = \"1G\"\n",
        ),
        (
            "inner",
            "kind = \"slice\"\nslice = \"my-app\"\n[resources]\ncpu-quota = \"50%\"\n",
        ),
        ("db", &format!("{CMD}[namespaces]\nnet = true\n")),
        (
            "web",
            "slice = \"inner\"\nrequires = [\"db\"]\n\
             [exec]\ncommand = [\"python3\", \"-c\", \"print('100%', \\\"$HOME\\\")\", \";\"]\n\
             ready = \"notify\"\nenv = { A = \"x y\" }\n\
             [restart]\ndelay = \"100ms\"\nmax-delay = \"1m\"\nsuccess-exit-codes = [0, 3]\n\
             [resources]\ncpu-weight = 200\nallowed-cpus = \"0-1\"\nmemory-high = \"400M\"\n\
             memory-swap-max = \"0\"\npids-max = \"max\"\nio-weight = 20\n\
             [[resources.io]]\ndevice = \"8:0\"\nread-bps = \"10M\"\nwrite-iops = 100\n\
             [oom]\ngroup-kill = true\n\
             [namespaces]\nipc = true\nuser = true\n\
             [sandbox]\nno-new-privileges = true\ncapabilities = []\nread-only-paths = [\"/etc\"]\n\
             private-tmp = true\n",
        ),
    ]);
    let (files, warnings) = systemd_files(&set, 252);
    let names: Vec<&String> = files.keys().collect();
    assert_eq!(
        names,
        [
            "db.service",
            "my\\x2dapp-inner.slice",
            "my\\x2dapp.slice",
            "web.service"
        ]
    );
    let web = lines(&files["web.service"]);
    for line in [
        "After=db.service",
        "Requires=db.service",
        "Type=notify",
        "NotifyAccess=all",
        r#"ExecStart=/usr/bin/python3 -c "print('100%%', \"$$HOME\")" \;"#,
        r#"Environment="A=x y""#,
        "Slice=my\\x2dapp-inner.slice",
        "Restart=on-failure",
        "RestartSec=100ms",
        "SuccessExitStatus=3",
        "CPUWeight=200",
        "AllowedCPUs=0-1",
        "MemoryHigh=400M",
        "MemorySwapMax=0",
        "TasksMax=infinity",
        "IOWeight=20",
        "IOReadBandwidthMax=/dev/block/8:0 10M",
        "IOWriteIOPSMax=/dev/block/8:0 100",
        "OOMPolicy=kill",
        "PrivateIPC=yes",
        "PrivateUsers=yes",
        "PrivateMounts=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ReadOnlyPaths=/etc",
        "PrivateTmp=yes",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            web.contains(&line),
            "{line} missing from:\n{}",
            files["web.service"]
        );
    }
    assert!(!web.iter().any(|l| l.starts_with("RestartSteps")));
    assert!(lines(&files["db.service"]).contains(&"PrivateNetwork=yes"));
    assert!(has(&warnings, "web: restart.max-delay"), "{warnings:?}");
    assert!(
        has(&warnings, "web: requires: systemd's Requires="),
        "{warnings:?}"
    );
    assert!(lines(&files["my\\x2dapp-inner.slice"]).contains(&"CPUQuota=50%"));
    assert!(lines(&files["my\\x2dapp.slice"]).contains(&"MemoryMax=1G"));

    let (files, warnings) = systemd_files(&set, 254);
    let web = lines(&files["web.service"]);
    // 100ms doubling to 1m: 600x, ten doublings
    assert!(web.contains(&"RestartSteps=10"), "{}", files["web.service"]);
    assert!(web.contains(&"RestartMaxDelaySec=60s"));
    assert!(!has(&warnings, "restart.max-delay"));
}

#[test]
fn systemd_writes_oneshots_and_warns_for_what_it_lacks() {
    let set = units(&[
        (
            "seed",
            &format!("kind = \"oneshot\"\nenabled = false\n{CMD}"),
        ),
        (
            "job",
            &format!(
                "{CMD}[restart]\npolicy = \"on-oom\"\nreset-after = \"1h\"\n\
                 [health]\nhttp = \"http://127.0.0.1:80/\"\n\
                 [namespaces]\npid = true\nhostname = \"box\"\ncgroup = true\nuser = true\nuid-map = \"0 1000 1\"\n"
            ),
        ),
    ]);
    let (files, warnings) = systemd_files(&set, 252);
    let seed = lines(&files["seed.service"]);
    assert!(seed.contains(&"Type=oneshot"));
    assert!(seed.contains(&"RemainAfterExit=yes"));
    assert!(
        !seed.iter().any(|l| l.starts_with("WantedBy")),
        "disabled: not installed"
    );
    assert!(lines(&files["job.service"]).contains(&"Restart=on-abnormal"));
    for key in [
        "job: restart.policy: on-oom",
        "job: restart.reset-after",
        "job: health: systemd has no health probes",
        "job: namespaces.pid: PrivatePIDs= needs systemd 257",
        "job: namespaces.hostname",
        "job: namespaces.cgroup",
        "job: namespaces.uid-map",
    ] {
        assert!(has(&warnings, key), "{key}: {warnings:?}");
    }
    let (files, _) = systemd_files(&set, 257);
    assert!(lines(&files["job.service"]).contains(&"PrivatePIDs=yes"));
}

#[test]
fn systemd_names_keep_instances_and_escape_the_rest() {
    let set = units(&[("w@1", CMD), ("@odd", CMD)]);
    let (files, _) = systemd_files(&set, 252);
    assert!(files.contains_key("w@1.service"));
    assert!(files.contains_key("\\x40odd.service"));
}

#[test]
fn split_runs_the_last_oneshot_as_the_pods_container_when_nothing_else_is() {
    let set = units(&[
        ("a", &format!("kind = \"oneshot\"\n{CMD}")),
        ("b", &format!("kind = \"oneshot\"\nafter = [\"a\"]\n{CMD}")),
    ]);
    let (spec, _) = pod_spec(&set, Layout::Split);
    assert_eq!(names(&spec.init_containers), ["a"]);
    assert_eq!(names(&Some(spec.containers.clone())), ["b"]);
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));

    let none = units(&[
        ("s", "kind = \"slice\"\n"),
        ("off", &format!("enabled = false\n{CMD}")),
    ]);
    let sources = BTreeMap::new();
    assert!(k8s::export(&none, &sources, &options(Layout::Split)).is_err());
    assert!(k8s::export(&none, &sources, &options(Layout::Wrap)).is_ok());
}

#[test]
fn pressure_keys_are_warned_about_by_both_exports() {
    let set = units(&[(
        "web",
        &format!("{CMD}[oom]\npressure-threshold = \"some 10% over 2s\"\naction = \"restart\"\n"),
    )]);
    let (_, systemd_warnings) = systemd_files(&set, 255);
    assert!(has(&systemd_warnings, "oom.action"), "{systemd_warnings:?}");
    assert!(has(&systemd_warnings, "#25966"), "{systemd_warnings:?}");
    let (_, k8s_warnings) = pod_spec(&set, Layout::Split);
    assert!(has(&k8s_warnings, "oom.action"), "{k8s_warnings:?}");
}

#[test]
fn a_log_file_and_log_line_readiness_export_as_far_as_each_target_goes() {
    let set = units(&[(
        "web",
        "[exec]\ncommand = [\"web\"]\nready = \"log-line\"\nready-pattern = \"listening\"\n\
         [logs]\nfile = \"/var/log/corral/web.log\"\nkeep = 2\n",
    )]);
    let (files, warnings) = systemd_files(&set, 252);
    let web = lines(&files["web.service"]);
    assert!(web.contains(&"Type=simple"), "{web:?}");
    assert!(
        web.contains(&"StandardOutput=append:/var/log/corral/web.log"),
        "{web:?}"
    );
    assert!(
        web.contains(&"StandardError=append:/var/log/corral/web.log"),
        "{web:?}"
    );
    assert!(
        has(&warnings, "web: logs: StandardOutput=append: writes"),
        "{warnings:?}"
    );
    assert!(has(&warnings, "web: exec.ready: log-line"), "{warnings:?}");
    let (_, warnings) = pod_spec(&set, Layout::Split);
    assert!(
        has(&warnings, "web: logs.file: not exported"),
        "{warnings:?}"
    );
    assert!(has(&warnings, "web: exec.ready: log-line"), "{warnings:?}");
}
