//! Tier 4: cgroup v2 in a VM. This machine runs cgroup v1, so the v2 paths are proven by booting
//! Debian's kernel under qemu (TCG) with an initramfs whose `/init` mounts cgroup2 and `exec`s
//! corral as PID 1. The oneshot unit `scenario` (tests/vm/scenario.sh) checks everything from
//! inside and prints `RESULT <name> PASS|FAIL|SKIP <detail>` lines; corral logs them as the unit's
//! output in JSON on the serial console, which is qemu's stdout here. At the end the script asks
//! corral to `shutdown --poweroff`, and this test checks the stop order in corral's log and that
//! qemu exits by itself.
//!
//! The scenario also runs corral as the process of OCI containers under Debian's runc, with the
//! container's /sys/fs/cgroup read-only and read-write (tests/vm/oci.sh): the cgroup v2 side of
//! tests/oci.rs.
//!
//! Needs `qemu-system-x86_64`, a kernel at `/boot/vmlinuz-*`, busybox and runc (`.ci/run`
//! installs them); skips without them, except under `CI=true`, where it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_corral");
const QEMU: &str = "qemu-system-x86_64";
/// The whole VM run: boot (20-30 s under TCG), the scenarios, shutdown. Generous for slow CI.
const VM_DEADLINE: Duration = Duration::from_secs(240);
/// After the last RESULT line the machine must power itself off within this.
const POWEROFF_DEADLINE: Duration = Duration::from_secs(60);

/// Every check the scenario script reports, and whether it may SKIP (with its reason) on a kernel
/// that lacks the feature. Anything else must PASS.
const EXPECTED: &[(&str, bool)] = &[
    ("host-init.broken-start", false),
    ("host-init.rescued", false),
    ("cgroup2-mounted", false),
    ("corral-scope", false),
    ("unit-cgroup", false),
    ("subtree-control", false),
    ("slice.cpu.max", false),
    ("slice.cpu.weight", false),
    ("slice.cpuset.cpus", false),
    ("slice.memory.max", false),
    ("slice.memory.high", false),
    ("slice.memory.swap.max", true),
    ("slice.pids.max", false),
    ("slice.io.weight", true),
    ("slice.io.max", true),
    ("service.cpu.max", false),
    ("service.cpu.weight", false),
    ("service.cpuset.cpus", false),
    ("service.memory.max", false),
    ("service.memory.high", false),
    ("service.memory.swap.max", true),
    ("service.pids.max", false),
    ("service.io.weight", true),
    ("service.io.max", true),
    ("limits-enforced", true),
    ("freeze", false),
    ("thaw", false),
    ("oom-kill-restart", false),
    ("oom-wrapper-restart", false),
    ("oom-group.file", false),
    ("oom-group.kill", false),
    ("fork-bomb.held", false),
    ("fork-bomb.stop", false),
    ("cgroup-kill-stop", false),
    ("joined-stop", false),
    ("reload-in-place", false),
    ("namespaces.audit", false),
    ("namespaces.pid", false),
    ("namespaces.net", false),
    ("namespaces.uts", false),
    ("namespaces.user", false),
    ("namespaces.cgroup", false),
    ("namespaces.sandbox", false),
    ("namespaces.mount", false),
    ("namespaces.stop-trap", false),
    ("v2-usage", false),
    // Only a kernel without PSI lacks the pressure files.
    ("v2-pressure", true),
    ("v2-metrics", false),
    ("v2-top", false),
    ("v2-memory-warning", false),
    ("pressure.psi-restart", false),
    ("pressure.env", false),
    ("pressure.warn-oom", false),
    // tests/vm/oci.sh: corral under runc, the container's /sys/fs/cgroup read-only and read-write.
    ("oci-ro.units-start", false),
    ("oci-ro.orphan-reaped", false),
    ("oci-ro.restart", false),
    ("oci-ro.cgroups", false),
    ("oci-ro.stop", false),
    ("oci-rw.units-start", false),
    ("oci-rw.orphan-reaped", false),
    ("oci-rw.restart", false),
    ("oci-rw.cgroups", false),
    ("oci-rw.stop", false),
    ("scenarios-done", false),
];

/// Shutdown must stop these in this order (top after mid, mid requires base).
const STOP_ORDER: [&str; 3] = ["top", "mid", "base"];

/// The warnings the scenarios cause on purpose (OOM kills, stops that need SIGKILL); corral
/// logging any other warning or error in the VM fails the test.
const EXPECTED_WARNINGS: &[&str] = &[
    "OOM kill of the unit's main process",
    "OOM kill of a process of the unit, and the main process ended with it",
    "(OOM kill); restarting in",
    "(OOM kill); not restarting",
    "did not stop within 1s; sending SIGKILL",
    // The fork bomb at pids-max, the OOM scenarios and `nearmax` near memory-max.
    "near a limit: ",
    // [oom] thresholds: psigrow's restart and psiwarn's warning (pressure.* scenarios).
    "memory pressure: ",
    // psigrow grows past its memory-high, where the pressure comes from.
    "memory above memory-high: ",
];

/// The one error corral logs in the VM on purpose: /init breaks a unit before corral starts
/// (rescue.sh fixes it), and the machine's init reports it and stays up.
const EXPECTED_ERROR: &str =
    "units in /units are invalid; as the machine's init corral does not exit";

/// What the host must have to boot the VM.
struct Host {
    qemu: PathBuf,
    kernel: PathBuf,
    /// The kernel's module directory, for the RAM disk driver (brd) that io.max needs.
    modules: PathBuf,
    busybox: PathBuf,
    /// Debian's runc, for the OCI scenarios (tests/vm/oci.sh).
    runc: PathBuf,
}

fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// "6.1.0-26-amd64" sorts before "6.1.0-100-amd64": digit runs compare as numbers.
fn version_key(text: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, tail) = rest.split_at(digits);
        let others = tail.len() - tail.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (word, tail) = tail.split_at(others);
        key.push((number.parse().unwrap_or(0), word.to_owned()));
        rest = tail;
    }
    key
}

/// The newest readable `/boot/vmlinuz-*`, or why there is none.
fn newest_kernel() -> Result<PathBuf, String> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map_err(|e| format!("a kernel (/boot: {e})"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort_by_key(|p| version_key(&p.to_string_lossy()));
    let kernel = kernels
        .pop()
        .ok_or("a kernel at /boot/vmlinuz-* (package linux-image-amd64)")?;
    File::open(&kernel).map_err(|e| format!("a readable kernel ({}: {e})", kernel.display()))?;
    Ok(kernel)
}

/// The host's tools, or None when the test skips (it panics instead under `CI=true`).
fn host() -> Option<Host> {
    let mut missing = Vec::new();
    let qemu = in_path(QEMU);
    if qemu.is_none() {
        missing.push(format!("{QEMU} (package qemu-system-x86)"));
    }
    let kernel = newest_kernel().map_err(|e| missing.push(e)).ok();
    let busybox =
        in_path("busybox").or_else(|| Some(PathBuf::from("/bin/busybox")).filter(|p| p.is_file()));
    if busybox.is_none() {
        missing.push("busybox (package busybox-static)".into());
    }
    let runc =
        in_path("runc").or_else(|| Some(PathBuf::from("/usr/sbin/runc")).filter(|p| p.is_file()));
    if runc.is_none() {
        missing.push("runc (package runc)".into());
    }
    if let (Some(qemu), Some(kernel), Some(busybox), Some(runc)) = (qemu, kernel, busybox, runc) {
        let release = kernel.to_string_lossy().replacen("/boot/vmlinuz-", "", 1);
        return Some(Host {
            qemu,
            modules: Path::new("/lib/modules").join(release),
            kernel,
            busybox,
            runc,
        });
    }
    let why = format!("the cgroup v2 VM test needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true does not allow skipping it (.ci/run installs them)");
    }
    eprintln!(
        "SKIPPED: {why}; try `apt-get install qemu-system-x86 linux-image-amd64 busybox-static runc`"
    );
    None
}

/// A `newc` cpio archive (the format the kernel unpacks as an initramfs), written as it goes.
struct Cpio {
    out: BufWriter<File>,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    fn create(path: &Path) -> Cpio {
        let file = File::create(path).expect("creating the initramfs");
        Cpio {
            out: BufWriter::new(file),
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.out.write_all(bytes).expect("writing the initramfs");
        self.written += bytes.len() as u64;
    }

    fn pad(&mut self) {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..n as usize]);
    }

    /// One entry; `name` is relative to the archive's root ("bin/sh").
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        self.header(name, mode, nlink, rdev, data);
    }

    /// One of `nlink` entries of a regular file that share the current inode number.
    fn entry_linked(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) {
        self.header(name, mode, nlink, (0, 0), data);
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len(),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // check
        );
        self.next_ino += 1;
        self.put(header.as_bytes());
        self.put(name.as_bytes());
        self.put(&[0]);
        self.pad();
        self.put(data);
        self.pad();
    }

    /// `path` ("/a/b") and every parent of it, once each.
    fn dir(&mut self, path: &str) {
        let mut sofar = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !sofar.is_empty() {
                sofar.push('/');
            }
            sofar.push_str(part);
            if self.dirs.insert(sofar.clone()) {
                let name = sofar.clone();
                self.entry(&name, S_IFDIR | 0o755, (0, 0), &[]);
            }
        }
    }

    fn parent(&mut self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        path.to_owned()
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let name = self.parent(path);
        self.entry(&name, S_IFREG | mode, (0, 0), data);
    }

    /// A host file at `path` inside too (libraries go where the loader looks for them).
    fn copy(&mut self, host: &Path, path: &str, mode: u32) {
        let data =
            std::fs::read(host).unwrap_or_else(|e| panic!("reading {}: {e}", host.display()));
        self.file(path, mode, &data);
    }

    /// A host file at every one of `paths`, as hard links of one inode: the bundles' copies of
    /// corral and busybox cost no memory in the VM. The kernel's unpacker links an entry whose
    /// (inode, mode) it has seen with `nlink` >= 2 to the first one, which carries the data
    /// (init/initramfs.c, maybe_link).
    fn linked(&mut self, host: &Path, paths: &[String], mode: u32) {
        let data =
            std::fs::read(host).unwrap_or_else(|e| panic!("reading {}: {e}", host.display()));
        // The parent directories first: they take inode numbers of their own.
        let names: Vec<String> = paths.iter().map(|p| self.parent(p)).collect();
        let ino = self.next_ino;
        for (i, name) in names.iter().enumerate() {
            self.next_ino = ino;
            let body: &[u8] = if i == 0 { &data } else { &[] };
            self.entry_linked(name, S_IFREG | mode, names.len() as u32, body);
        }
        self.next_ino = ino + 1;
    }

    fn symlink(&mut self, path: &str, target: &str) {
        let name = self.parent(path);
        self.entry(&name, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        let name = self.parent(path);
        self.entry(&name, S_IFCHR | 0o600, (major, minor), &[]);
    }

    fn finish(mut self) {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out.flush().expect("writing the initramfs");
    }
}

/// The shared objects `binary` loads (the loader included), as `ldd` resolves them.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd (package libc-bin)");
    // A static binary makes ldd exit 1 ("not a dynamic executable"): no libraries.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm")
}

/// The files in `dir`, sorted.
fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The OCI bundles in the VM, `/oci/<mode>`: the container's /sys/fs/cgroup read-only, then
/// read-write.
const OCI_MODES: [&str; 2] = ["ro", "rw"];

/// `config.json` of the bundle `/oci/<mode>`: `runc spec`'s default with corral as the process,
/// a private cgroup namespace (runc 1.1's spec has none; Docker and Kubernetes give one on
/// cgroup v2), the container in the VM's cgroup `/oci-<mode>`, and /sys/fs/cgroup mounted `ro`
/// or `rw`. The rootfs stays writable: the control socket is at its /run/control.sock, where
/// the VM's scenario reaches it.
fn oci_config(runc: &Path, mode: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let out = Command::new(runc)
        .args(["spec", "--bundle"])
        .arg(dir.path())
        .output()
        .expect("running runc spec");
    assert!(out.status.success(), "runc spec: {out:?}");
    let config = dir.path().join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["root"] = serde_json::json!({ "path": "rootfs", "readonly": false });
    spec["process"]["terminal"] = Value::Bool(false);
    spec["process"]["args"] = serde_json::json!([
        "/bin/corral",
        "run",
        "/units",
        "--socket",
        "/run/control.sock",
        "--log-format",
        "json"
    ]);
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(Value::from("CORRAL_LOG=debug"));
    spec["linux"]["cgroupsPath"] = Value::from(format!("/oci-{mode}"));
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    if !namespaces.iter().any(|n| n["type"] == "cgroup") {
        namespaces.push(serde_json::json!({ "type": "cgroup" }));
    }
    for mount in spec["mounts"].as_array_mut().unwrap() {
        if mount["destination"] == "/sys/fs/cgroup" {
            let options = mount["options"].as_array_mut().unwrap();
            options.retain(|o| o != "ro" && o != "rw");
            options.push(Value::from(mode));
        }
    }
    serde_json::to_vec_pretty(&spec).unwrap()
}

/// Builds the initramfs at `path`; returns whether it has the RAM disk module for io.max.
fn build_initramfs(host: &Host, path: &Path) -> bool {
    let mut cpio = Cpio::create(path);
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/run", "/root", "/bin"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for /init's stdio before anything is mounted.
    cpio.char_device("/dev/console", 5, 1);
    cpio.copy(&assets().join("init"), "/init", 0o755);

    // The OCI bundles' rootfs hold corral, busybox and corral's libraries as hard links of the
    // VM's own copies (tests/vm/oci.sh runs them under runc).
    let in_bundles = |path: &str| -> Vec<String> {
        let mut paths = vec![path.to_owned()];
        paths.extend(OCI_MODES.map(|mode| format!("/oci/{mode}/rootfs{path}")));
        paths
    };
    cpio.linked(&host.busybox, &in_bundles("/bin/busybox"), 0o755);
    let list = Command::new(&host.busybox)
        .arg("--list")
        .output()
        .expect("listing busybox's applets");
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    for applet in applets.lines().map(str::trim) {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            cpio.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    cpio.linked(Path::new(BIN), &in_bundles("/bin/corral"), 0o755);
    let corral_libraries: BTreeSet<PathBuf> =
        shared_libraries(Path::new(BIN)).into_iter().collect();
    let mut libraries = corral_libraries.clone();
    libraries.extend(shared_libraries(&host.busybox));
    libraries.extend(shared_libraries(&host.runc));
    for library in &libraries {
        let path = library.to_string_lossy();
        if corral_libraries.contains(library) {
            cpio.linked(library, &in_bundles(&path), 0o755);
        } else {
            cpio.copy(library, &path, 0o755);
        }
    }
    cpio.copy(&host.runc, "/bin/runc", 0o755);
    for mode in OCI_MODES {
        cpio.file(
            &format!("/oci/{mode}/config.json"),
            0o644,
            &oci_config(&host.runc, mode),
        );
        let rootfs = format!("/oci/{mode}/rootfs");
        for applet in ["sh", "sleep", "cat", "echo", "kill"] {
            cpio.symlink(&format!("{rootfs}/bin/{applet}"), "busybox");
        }
        for dir in ["proc", "dev", "sys", "tmp", "run"] {
            cpio.dir(&format!("{rootfs}/{dir}"));
        }
        for unit in sorted_files(&assets().join("oci-units")) {
            let name = unit.file_name().unwrap().to_string_lossy().into_owned();
            cpio.copy(&unit, &format!("{rootfs}/units/{name}"), 0o644);
        }
    }
    cpio.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    cpio.file("/etc/group", 0o644, b"root:x:0:\n");

    let mut has_brd = false;
    for (name, inside) in [
        ("brd.ko", "/lib/modules/brd.ko"),
        ("brd.ko.xz", "/lib/modules/brd.ko.xz"),
    ] {
        let module = host.modules.join("kernel/drivers/block").join(name);
        if !has_brd && module.is_file() {
            cpio.copy(&module, inside, 0o644);
            has_brd = true;
        }
    }

    cpio.dir("/units");
    for unit in sorted_files(&assets().join("units")) {
        let name = unit.file_name().unwrap().to_string_lossy().into_owned();
        cpio.copy(&unit, &format!("/units/{name}"), 0o644);
    }
    cpio.dir("/scenarios");
    for script in std::fs::read_dir(assets()).unwrap().flatten() {
        let name = script.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sh") {
            cpio.copy(&script.path(), &format!("/scenarios/{name}"), 0o755);
        }
    }
    cpio.finish();
    has_brd
}

/// What the reader threads pass on.
enum Line {
    Console(String),
    Qemu(String),
    ConsoleClosed,
}

/// The qemu process this test started; killed (by its pid) if still running when dropped.
struct Vm {
    child: Child,
}

impl Vm {
    fn boot(host: &Host, initramfs: &Path) -> (Vm, mpsc::Receiver<Line>) {
        let mut child = Command::new(&host.qemu)
            .args(["-accel", "tcg", "-cpu", "max", "-m", "1G", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&host.kernel)
            .arg("-initrd")
            .arg(initramfs)
            // loglevel=1: kernel messages (OOM reports) would otherwise interleave with corral's
            // JSON lines on the same serial port; panics still show.
            .args(["-append", "console=ttyS0 quiet loglevel=1 panic=-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting qemu");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let console = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\r', '\n']).to_owned();
                if console.send(Line::Console(text)).is_err() {
                    return;
                }
                buf.clear();
            }
            let _ = console.send(Line::ConsoleClosed);
        });
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(Line::Qemu(line)).is_err() {
                    return;
                }
            }
        });
        (Vm { child }, rx)
    }

    /// Waits at most `timeout` for qemu to exit; its status text, or None if it still runs.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to our qemu (by its pid, which stays ours until we reap it) and reap it.
    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `RESULT` line of the scenario script.
#[derive(Debug, Clone)]
struct Verdict {
    name: String,
    verdict: String,
    detail: String,
}

/// Everything seen on the console, parsed as it arrives.
#[derive(Default)]
struct Run {
    console: Vec<String>,
    /// corral's JSON log lines, in order.
    log: Vec<Value>,
    results: Vec<Verdict>,
    supervising_at: Option<Duration>,
    first_result_at: Option<Duration>,
    done_at: Option<Duration>,
    closed_at: Option<Duration>,
}

fn msg(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

fn unit_of(line: &Value) -> &str {
    line["fields"]["unit"].as_str().unwrap_or("")
}

impl Run {
    fn take(&mut self, text: String, at: Duration) {
        eprintln!("vm {:6.1}s | {text}", at.as_secs_f64());
        // A kernel message may precede the JSON on the same line; corral's line starts at '{'.
        if let Some(start) = text.find('{')
            && let Ok(value) = serde_json::from_str::<Value>(&text[start..])
        {
            if msg(&value) == "corral supervising" {
                self.supervising_at.get_or_insert(at);
            }
            if value["target"] == "unit"
                && unit_of(&value) == "scenario"
                && let Some(rest) = msg(&value).strip_prefix("RESULT ")
            {
                let mut parts = rest.splitn(3, ' ');
                let verdict = Verdict {
                    name: parts.next().unwrap_or("").to_owned(),
                    verdict: parts.next().unwrap_or("").to_owned(),
                    detail: parts.next().unwrap_or("").to_owned(),
                };
                self.first_result_at.get_or_insert(at);
                if verdict.name == "scenarios-done" {
                    self.done_at.get_or_insert(at);
                }
                self.results.push(verdict);
            }
            self.log.push(value);
        }
        self.console.push(text);
    }

    /// Index in the log of the first corral line about `unit` whose message starts with `prefix`.
    fn find(&self, from: usize, unit: &str, prefix: &str) -> Option<usize> {
        self.log
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, l)| {
                l["target"] != "unit" && unit_of(l) == unit && msg(l).starts_with(prefix)
            })
            .map(|(i, _)| i)
    }

    /// The first line of corral's own (not a unit's output: the OCI scenario's container runs
    /// a corral of its own, whose log a failing check may print).
    fn find_message(&self, needle: &str) -> Option<usize> {
        self.log
            .iter()
            .position(|l| l["target"] != "unit" && msg(l).contains(needle))
    }

    fn report(&self) -> String {
        let mut text = String::from("scenario results:\n");
        for r in &self.results {
            text.push_str(&format!("  {:<8} {:<24} {}\n", r.verdict, r.name, r.detail));
        }
        let secs =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()));
        text.push_str(&format!(
            "timings (since qemu started): corral supervising {}, first result {}, scenarios done {}, console closed {}\n",
            secs(self.supervising_at),
            secs(self.first_result_at),
            secs(self.done_at),
            secs(self.closed_at),
        ));
        text
    }

    fn tail(&self, n: usize) -> String {
        let skip = self.console.len().saturating_sub(n);
        self.console[skip..].join("\n")
    }
}

#[test]
fn cgroup_v2_scenarios_in_a_vm_with_corral_as_pid_1() {
    let Some(host) = host() else { return };
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let initramfs = dir.path().join("initramfs.cpio");
    let built = Instant::now();
    let has_brd = build_initramfs(&host, &initramfs);
    eprintln!(
        "initramfs {} ({} MiB, brd module: {has_brd}) built in {:.1}s; booting {}",
        initramfs.display(),
        std::fs::metadata(&initramfs).unwrap().len() >> 20,
        built.elapsed().as_secs_f64(),
        host.kernel.display()
    );

    let started = Instant::now();
    let (mut vm, lines) = Vm::boot(&host, &initramfs);
    let mut run = Run::default();
    let mut qemu_stderr = Vec::new();
    let mut timed_out = false;
    loop {
        let mut deadline = started + VM_DEADLINE;
        if let Some(done) = run.done_at {
            deadline = deadline.min(started + done + POWEROFF_DEADLINE);
        }
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Line::Console(text)) => run.take(text, started.elapsed()),
            Ok(Line::Qemu(text)) => {
                eprintln!("qemu: {text}");
                qemu_stderr.push(text);
            }
            Ok(Line::ConsoleClosed) | Err(RecvTimeoutError::Disconnected) => {
                run.closed_at = Some(started.elapsed());
                break;
            }
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    // Powered off: qemu closed the console as it exits. Otherwise end it ourselves.
    let status = if timed_out {
        vm.kill();
        None
    } else {
        let status = vm.wait(Duration::from_secs(20));
        vm.kill();
        status
    };
    // Let the stderr thread hand over qemu's last words.
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
        if let Line::Qemu(text) = line {
            qemu_stderr.push(text);
        }
    }
    let total = started.elapsed();
    let report = run.report();
    eprintln!("{report}total VM run {:.1}s", total.as_secs_f64());

    let mut failures = Vec::new();
    for (name, may_skip) in EXPECTED {
        match run.results.iter().find(|r| r.name == *name) {
            None => failures.push(format!("{name}: no RESULT line")),
            Some(r) if r.verdict == "PASS" => {}
            Some(r) if r.verdict == "SKIP" && *may_skip => {}
            Some(r) => failures.push(format!("{name}: {} {}", r.verdict, r.detail)),
        }
    }
    for r in &run.results {
        if !EXPECTED.iter().any(|(name, _)| *name == r.name) {
            failures.push(format!(
                "{}: unexpected RESULT {} {}",
                r.name, r.verdict, r.detail
            ));
        }
    }
    if has_brd {
        // The RAM disk was there, so io.max must have been checked, not skipped.
        for name in ["slice.io.max", "service.io.max", "limits-enforced"] {
            if let Some(r) = run
                .results
                .iter()
                .find(|r| r.name == name && r.verdict == "SKIP")
            {
                failures.push(format!(
                    "{name}: skipped although brd was loaded: {}",
                    r.detail
                ));
            }
        }
    }

    // On cgroup v2 every unit is created inside its cgroup by clone3, not by a write after fork.
    let starts: Vec<&Value> = run.log.iter().filter(|l| msg(l) == "started").collect();
    let written: Vec<String> = starts
        .iter()
        .filter(|l| l["fields"]["clone_into_cgroup"] != true)
        .map(|l| unit_of(l).to_owned())
        .collect();
    if starts.is_empty() || !written.is_empty() {
        failures.push(format!(
            "clone3 CLONE_INTO_CGROUP did not start these units: {written:?} (of {} starts)",
            starts.len()
        ));
    }
    // joined-stop passes on any wake of corral that comes after the joined process is gone
    // (other units' output wakes it too, and the SIGKILL may even win the race with the check
    // right after the main process's reap); that the cgroup's own `populated` event reaches
    // corral is shown here.
    let joiner_stop = run
        .log
        .iter()
        .position(|l| msg(l) == "control request" && l["fields"]["units"] == "[\"joiner\"]");
    if joiner_stop
        .and_then(|from| run.find(from, "joiner", "cgroup.events changed"))
        .is_none()
    {
        failures.push(format!(
            "joiner: no cgroup.events (populated) wake after its stop request (log line {joiner_stop:?})"
        ));
    }
    if run.find_message("running as the machine's init").is_none() {
        failures.push("corral did not recognise itself as the machine's init (PID 1)".into());
    }
    // Booted with rescued.toml invalid: the error named it, and the fix came by the file watcher
    // (no reload request), after which the unit started.
    let broken = run
        .log
        .iter()
        .position(|l| msg(l).starts_with(EXPECTED_ERROR) && msg(l).contains("rescued.toml:2:11"));
    let fixed = broken.and_then(|from| {
        let applied = (from..run.log.len()).find(|i| {
            msg(&run.log[*i]) == "reload applied"
                && run.log[*i]["fields"]["added"]
                    .as_str()
                    .is_some_and(|a| a.split(',').any(|u| u == "rescued"))
        })?;
        run.find(applied, "rescued", "started")
    });
    if fixed.is_none() {
        failures.push(format!(
            "host init rescue: the start-up error (log line {broken:?}) was not followed by a reload adding `rescued` and its start"
        ));
    }
    // Shutdown: requested by the scenario, units stopped in reverse dependency order, power-off.
    let shutdown = run
        .log
        .iter()
        .position(|l| msg(l) == "control request" && l["fields"]["verb"] == "Shutdown");
    match shutdown {
        None => failures.push("corral never got the shutdown request".into()),
        Some(from) => {
            let order: Vec<Option<usize>> = STOP_ORDER
                .iter()
                .map(|unit| run.find(from, unit, "stopped"))
                .collect();
            let in_order =
                order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]);
            if !in_order {
                failures.push(format!(
                    "shutdown stopped {STOP_ORDER:?} at log lines {order:?}, not in that order"
                ));
            }
            for needle in ["every unit is down", "syncing and powering down"] {
                if run.find_message(needle).is_none_or(|i| i < from) {
                    failures.push(format!(
                        "corral never logged {needle:?} after the shutdown request"
                    ));
                }
            }
        }
    }
    // corral's own warnings and errors: only the ones the scenarios provoke.
    for line in &run.log {
        let level = line["level"].as_str().unwrap_or("");
        if line["target"] == "unit" || !matches!(level, "WARN" | "ERROR") {
            continue;
        }
        let text = format!("{level} {}: {}", unit_of(line), msg(line));
        if level == "ERROR" && msg(line).starts_with(EXPECTED_ERROR) {
            continue;
        }
        if level == "ERROR" || !EXPECTED_WARNINGS.iter().any(|w| msg(line).contains(w)) {
            failures.push(format!("corral logged {text}"));
        }
    }
    for r in &run.results {
        let dying = r
            .detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dying="))
            .and_then(|n| n.trim_end_matches([',', ';']).parse::<u32>().ok())
            .unwrap_or(0);
        if dying > 0 {
            let text = format!(
                "{}: `corral stop` returned while {dying} of the unit's processes still ran",
                r.name
            );
            failures.push(text);
        }
    }
    match (timed_out, status) {
        (false, Some(status)) if status.success() => {}
        (false, Some(status)) => failures.push(format!("qemu exited with {status}")),
        (false, None) => failures.push("qemu closed its console but did not exit".into()),
        (true, _) if run.done_at.is_some() => failures.push(format!(
            "the VM did not power off within {POWEROFF_DEADLINE:?} of the last scenario; killed qemu"
        )),
        (true, _) => failures.push(format!(
            "the VM run did not finish within {VM_DEADLINE:?}; killed qemu"
        )),
    }
    if !qemu_stderr.is_empty() && !failures.is_empty() {
        failures.push(format!("qemu's stderr: {}", qemu_stderr.join(" / ")));
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) in the VM:\n  {}\n{report}last console lines:\n{}",
        failures.len(),
        failures.join("\n  "),
        run.tail(60)
    );
}
