//! corral as the process of a real OCI container: Debian's runc runs a bundle whose rootfs is
//! busybox-static and corral, with /sys/fs/cgroup mounted read-only (a runtime's default for
//! an unprivileged container) and read-write; units start, restart, have their orphans reaped,
//! stop in order on `runc kill TERM`, and get their limits exactly where the ladder says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, Corral, in_path, is_about, msg, proc_state, require_cgroup_v1, require_root};
use serde_json::{Value, json};

/// The runtime, or None (and a skip) on a laptop without it; under CI=true a missing runtime
/// fails the test.
fn runtime() -> Option<PathBuf> {
    if !require_root() || !require_cgroup_v1() {
        return None;
    }
    if let Some(runc) = in_path("runc") {
        return Some(runc);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the OCI tests need runc (package runc), and CI=true does not allow skipping them");
    }
    eprintln!("SKIPPED: the OCI tests need runc (apt-get install runc)");
    None
}

/// A running container; dropping it removes it whatever state it is in.
struct Container {
    runc: PathBuf,
    id: String,
    /// The bundle (config.json); the rootfs is the Corral's temp dir.
    _bundle: tempfile::TempDir,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(&self.runc)
            .args(["delete", "--force", &self.id])
            .output();
    }
}

impl Container {
    /// `runc state`: the container's init (corral) as the host sees it.
    fn pid(&self) -> i32 {
        let out = Command::new(&self.runc)
            .args(["state", &self.id])
            .output()
            .expect("runc state");
        let state: Value = serde_json::from_slice(&out.stdout).expect("runc state's JSON");
        state["pid"].as_i64().expect("a pid in runc state") as i32
    }

    fn kill(&self, signal: &str) {
        let out = Command::new(&self.runc)
            .args(["kill", &self.id, signal])
            .output()
            .expect("runc kill");
        assert!(out.status.success(), "runc kill: {out:?}");
    }
}

/// Copies `binary` and the shared objects it loads (as ldd resolves them) into `rootfs`.
fn install(binary: &Path, rootfs: &Path, at: &str) {
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    };
    copy(binary, &rootfs.join(at.trim_start_matches('/')));
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd (package libc-bin)");
    // A static binary makes ldd exit 1 ("not a dynamic executable"): nothing to copy.
    for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if word.starts_with('/') {
            let lib = std::fs::canonicalize(word).unwrap();
            copy(&lib, &rootfs.join(word.trim_start_matches('/')));
        }
    }
}

/// How the container is made.
#[derive(Clone, Copy)]
struct Shape {
    writable_cgroups: bool,
    /// A restricted pod: uid 1000, a read-only root file system, a tmpfs only at /run (the
    /// pod user's, as an emptyDir with an fsGroup is), no capabilities.
    restricted: bool,
    /// The container's own memory limit (the runtime's `resources.memory.limit`), bytes.
    memory_limit: Option<u64>,
}

const RO: Shape = Shape {
    writable_cgroups: false,
    restricted: false,
    memory_limit: None,
};
const RW: Shape = Shape {
    writable_cgroups: true,
    restricted: false,
    memory_limit: None,
};

/// Builds the rootfs in `c`'s temp dir (so the units are where `c` has them) and the bundle's
/// config.json for `shape`, running `args` (corral's command line).
fn bundle(c: &Corral, runc: &Path, shape: Shape, args: &[&str]) -> tempfile::TempDir {
    let rootfs = c.root().to_owned();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox-static's /bin/busybox");
    install(busybox, &rootfs, "/bin/busybox");
    for applet in ["sh", "sleep", "cat", "echo", "kill", "tail"] {
        let link = rootfs.join("bin").join(applet);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("busybox", link).unwrap();
    }
    install(Path::new(BIN), &rootfs, "/usr/bin/corral");
    for dir in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }

    let bundle = tempfile::tempdir().unwrap();
    let out = Command::new(runc)
        .args(["spec", "--bundle"])
        .arg(bundle.path())
        .output()
        .expect("runc spec");
    assert!(out.status.success(), "runc spec: {out:?}");
    let config = bundle.path().join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["root"] = json!({ "path": rootfs, "readonly": false });
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("CORRAL_LOG=debug"));
    spec["linux"]["cgroupsPath"] = json!(c.cgroup_root_path());
    for mount in spec["mounts"].as_array_mut().unwrap() {
        if mount["destination"] == "/sys/fs/cgroup" {
            let options = mount["options"].as_array_mut().unwrap();
            options.retain(|o| o != "ro" && o != "rw");
            options.push(json!(if shape.writable_cgroups { "rw" } else { "ro" }));
        }
    }
    if let Some(limit) = shape.memory_limit {
        spec["linux"]["resources"]["memory"] = json!({ "limit": limit, "swap": limit });
    }
    if shape.restricted {
        spec["root"]["readonly"] = json!(true);
        spec["process"]["user"] = json!({ "uid": 1000, "gid": 1000 });
        spec["process"]["capabilities"] = json!({});
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=0755", "uid=1000", "gid=1000"]
        }));
        // The units and the rootfs belong to root and are readable by all, as in an image.
        for dir in [rootfs.as_path(), &rootfs.join("units")] {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
    }
    std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    bundle
}

/// The container id for `shape`, unique to this test process.
fn container_id(shape: Shape) -> String {
    let kind = match (shape.restricted, shape.writable_cgroups, shape.memory_limit) {
        (true, _, _) => "restricted",
        (false, _, Some(_)) => "limited",
        (false, true, None) => "rw",
        (false, false, None) => "ro",
    };
    format!("corral-test-{}-{kind}", std::process::id())
}

/// The default command line: units in /units, the socket where `c` looks for it.
const CORRAL_RUN: &[&str] = &[
    "/usr/bin/corral",
    "run",
    "/units",
    "--socket",
    "/run/control.sock",
    "--log-format",
    "json",
];

/// Starts corral in a container whose rootfs is `c`'s temp dir (so the control socket and the
/// units are where `c` has them), in the cgroup `c` would give it.
fn run_in_container(c: &mut Corral, runc: &Path, shape: Shape) -> Container {
    run_with(c, runc, shape, CORRAL_RUN)
}

fn run_with(c: &mut Corral, runc: &Path, shape: Shape, args: &[&str]) -> Container {
    let bundle = bundle(c, runc, shape, args);
    let id = container_id(shape);
    let mut cmd = Command::new(runc);
    cmd.args(["run", "--bundle"]).arg(bundle.path()).arg(&id);
    let container = Container {
        runc: runc.to_owned(),
        id,
        _bundle: bundle,
    };
    c.launch_command(cmd);
    c.set_corral_pid(container.pid());
    container
}

const UNITS: &[(&str, &str)] = &[
    (
        "db",
        "[exec]\ncommand = [\"sleep\", \"1000\"]\n[resources]\nmemory-max = \"32M\"\n",
    ),
    (
        "app",
        "requires = [\"db\"]\n[exec]\ncommand = [\"sleep\", \"1000\"]\n",
    ),
    (
        "flaky",
        "[exec]\ncommand = [\"sleep\", \"1000\"]\n[restart]\npolicy = \"always\"\ndelay = \"100ms\"\n",
    ),
    // Leaves an orphan that exits 7: PID 1 of the container, corral, must reap it.
    (
        "orphaner",
        "[exec]\ncommand = [\"sh\", \"-c\", \"(sh -c 'exit 7' &); exec sleep 1000\"]\n",
    ),
];

/// Every pid in the container's cgroup tree (the pids hierarchy), as the host sees them.
fn container_pids(c: &Corral) -> Vec<i32> {
    fn walk(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), out);
            }
        }
    }
    let mut pids = Vec::new();
    walk(&c.cgroup_file("pids", ""), &mut pids);
    pids
}

/// What both modes share: the units run, an orphan is reaped, a killed unit restarts, and
/// `runc kill TERM` stops app before db and ends with 0.
fn scenario(c: &mut Corral, container: &Container) {
    for unit in ["db", "app", "flaky", "orphaner"] {
        c.wait_exec(unit, 1);
    }
    let reaped = c.wait_log("the orphan's exit 7, reaped by corral", |l| {
        msg(l).starts_with("reaped: exited with code 7")
    });
    let pids = container_pids(c);
    assert!(
        pids.contains(&container.pid()),
        "corral is in the container's cgroup: {pids:?}"
    );
    let zombies: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| proc_state(*p) == Some('Z'))
        .collect();
    assert!(zombies.is_empty(), "zombies {zombies:?} after {reaped}");

    c.ok(&["kill", "flaky", "--signal", "SIGKILL"]);
    c.wait_log("flaky restarts", |l| {
        is_about(l, "flaky", "killed by SIGKILL; restarting in")
    });
    c.wait_exec("flaky", 2);
    assert_eq!(c.status("flaky")["restarts"], 1);

    container.kill("TERM");
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(0), "corral's exit through runc");
    let stopped = |unit: &str| {
        c.seen
            .iter()
            .position(|l| is_about(l, unit, "stopped"))
            .unwrap_or_else(|| panic!("{unit} was not stopped: {:?}", c.seen.len()))
    };
    assert!(
        stopped("app") < stopped("db"),
        "app (requires db) stops first"
    );
}

#[test]
fn in_a_container_with_a_read_only_cgroup_tree_corral_supervises_and_says_what_is_not_enforced() {
    let Some(runc) = runtime() else { return };
    let mut c = Corral::new();
    for (name, toml) in UNITS {
        c.unit(name, toml);
    }
    let container = run_in_container(&mut c, &runc, RO);
    let report = c.wait_log("the report of what is not enforced", |l| {
        msg(l).starts_with("not enforced: db: memory-max; to enforce them, ")
    });
    assert!(msg(&report).contains("writable-cgroups=true"), "{report}");
    let out = c.ok(&["status", "--json"]).json();
    assert_eq!(out["cgroups"]["rung"], "read-only", "{out}");
    let db = c.status("db");
    assert_eq!(db["limits_enforced"], false, "{db}");
    let reason = db["limits_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("read-only") && reason.contains("not enforced: memory-max"),
        "{db}"
    );
    scenario(&mut c, &container);
}

#[test]
fn in_a_container_with_a_writable_cgroup_tree_corral_enforces_limits_inside_its_cgroup() {
    let Some(runc) = runtime() else { return };
    let mut c = Corral::new();
    for (name, toml) in UNITS {
        c.unit(name, toml);
    }
    let container = run_in_container(&mut c, &runc, RW);
    c.wait_exec("db", 1);
    let out = c.ok(&["status", "--json"]).json();
    assert_eq!(out["cgroups"]["rung"], "writable", "{out}");
    let db = c.status("db");
    assert_eq!(db["limits_enforced"], true, "{db}");
    // The unit's cgroup is below the container's, where the host sees it.
    assert_eq!(
        c.cgroup_read("memory", "db.service/memory.limit_in_bytes"),
        "33554432"
    );
    let pid = db["pid"].as_i64().unwrap();
    let procs = c.cgroup_read("memory", "db.service/cgroup.procs");
    assert_eq!(
        procs.lines().count(),
        1,
        "db's one process: {procs} (pid {pid} inside)"
    );
    scenario(&mut c, &container);
}

/// A restricted pod (non-root, read-only root file system, a writable tmpfs only at /run, no
/// capabilities): with no `--socket`, corral's default for a non-root user without
/// XDG_RUNTIME_DIR is under /tmp, which is read-only here; it must say so, naming the path and
/// the option. Pointed at /run, it supervises.
#[test]
fn in_a_restricted_pod_corral_names_the_path_it_cannot_use_and_runs_once_pointed_at_run() {
    let Some(runc) = runtime() else { return };
    let shape = Shape {
        writable_cgroups: false,
        restricted: true,
        memory_limit: None,
    };
    let mut c = Corral::new();
    c.unit("app", "[exec]\ncommand = [\"sleep\", \"1000\"]\n");
    // The rootfs is built once; the first run fails at its socket and leaves nothing running.
    let refused = bundle(&c, &runc, shape, &["/usr/bin/corral", "run", "/units"]);
    let mut cmd = Command::new(&runc);
    cmd.args(["run", "--bundle"])
        .arg(refused.path())
        .arg(container_id(shape));
    let out = common::run_bounded(cmd);
    let _ = Command::new(&runc)
        .args(["delete", "--force", &container_id(shape)])
        .output();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("/tmp/corral-1000") && out.stderr.contains("--socket"),
        "the error names the path and the option: {out:?}"
    );

    let args = [
        "/usr/bin/corral",
        "run",
        "/units",
        "--socket",
        "/run/corral/control.sock",
        "--log-format",
        "json",
    ];
    let container = run_with(&mut c, &runc, shape, &args);
    c.wait_exec("app", 1);
    // The socket is on the container's own /run: reach it through corral's root.
    let socket = format!("/proc/{}/root/run/corral/control.sock", container.pid());
    let mut status = Command::new(BIN);
    status.args(["--socket", &socket, "status", "app", "--json"]);
    let out = common::run_bounded(status);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["units"][0]["state"], "running", "{out:?}");
    container.kill("TERM");
    assert_eq!(c.wait_exit().code(), Some(0));
}

/// Read-only cgroups, so no unit has a cgroup of its own, in a container with a memory limit:
/// the kernel OOM-kills a unit that outgrows the container, and corral infers the OOM kill
/// from the container's own counter (docs/units.md), so `on-oom` restarts the unit.
#[test]
fn in_a_read_only_container_an_oom_kill_is_inferred_from_the_containers_counter() {
    let Some(runc) = runtime() else { return };
    let shape = Shape {
        writable_cgroups: false,
        restricted: false,
        memory_limit: Some(64 << 20),
    };
    let mut c = Corral::new();
    // busybox tail buffers a line of /dev/zero that never ends, until the container's limit.
    c.unit(
        "hog",
        "[exec]\ncommand = [\"tail\", \"/dev/zero\"]\n[restart]\npolicy = \"on-oom\"\ndelay = \"100ms\"\n",
    );
    let container = run_with(&mut c, &runc, shape, CORRAL_RUN);
    c.wait_log("the inferred OOM kill", |l| {
        is_about(l, "hog", "inferred from the container's own counter")
    });
    c.wait_log("on-oom restarts it", |l| {
        is_about(l, "hog", "(OOM kill); restarting in")
    });
    let hog = c.status("hog");
    assert_eq!(hog["last_exit"]["oom"], true, "{hog}");
    assert_eq!(hog["limits_enforced"], false, "{hog}");
    container.kill("KILL");
}
