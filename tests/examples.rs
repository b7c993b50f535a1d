//! The examples as their READMEs say: examples/container/README.md's "Without Docker: runc"
//! blocks, taken from the README itself (each fenced block after an `<!-- example-test: NAME -->`
//! line) so that the docs and this test cannot drift, run in a scratch copy of the repository
//! whose `target/release/corral` is the corral these tests were built with. The `build` block
//! (rustup and a release build) is the one not run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{DEADLINE, in_path, require_root, wait_child};

/// The container's name in the README; the test runs its own, so that two test runs on one
/// machine do not share runc's state or the container's cgroup (runc names it after the id).
const README_NAME: &str = "corral-demo";

/// The tools the runc section needs, or None (a skip) on a laptop without them; under CI=true
/// a missing one fails the test.
fn tools() -> Option<()> {
    if !require_root() {
        return None;
    }
    let missing: Vec<&str> = [("runc", "runc"), ("jq", "jq"), ("ldd", "libc-bin")]
        .into_iter()
        .filter(|(tool, _)| in_path(tool).is_none())
        .map(|(_, package)| package)
        .chain((!Path::new("/bin/busybox").is_file()).then_some("busybox-static"))
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    let why = format!(
        "examples/container's runc section needs the packages {}",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true does not allow skipping it (.ci/run installs them)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// The fenced blocks of `readme` that follow an `<!-- example-test: NAME ... -->` line, by NAME.
fn marked_blocks(readme: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("<!-- example-test: ") else {
            continue;
        };
        let name = rest
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_owned();
        assert_eq!(
            lines.next().map(str::trim_end),
            Some("```sh"),
            "the marker {name} is followed by a ```sh fence"
        );
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_end() != "```")
            .collect();
        blocks.push((name, body.join("\n") + "\n"));
    }
    blocks
}

fn block<'a>(blocks: &'a [(String, String)], name: &str) -> &'a str {
    blocks
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b.as_str())
        .unwrap_or_else(|| panic!("examples/container/README.md has no block marked {name}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// `runc run` of the README, as a child of this test; dropping it removes the container (by
/// its name, which is this test's) and reaps the child.
struct Running {
    child: Child,
    name: String,
    log: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(script: &str, dir: &Path, name: String) -> Running {
        let mut child = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the README's runc run");
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            name,
            log,
            seen: Vec::new(),
        }
    }

    /// Reads corral's log (text, on the container's stderr) until a line contains `needle`.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?} within {DEADLINE:?}; the log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every log line until the log ends (the container is gone).
    fn drain(&mut self) {
        while let Ok(line) = self.log.recv_timeout(DEADLINE) {
            self.seen.push(line);
        }
    }

    fn position(&self, needle: &str) -> Option<usize> {
        self.seen.iter().position(|l| l.contains(needle))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.name])
            .output();
        let _ = wait_child(&mut self.child, Duration::from_secs(5));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_container_example_runs_under_runc_as_its_readme_says() {
    let Some(()) = tools() else { return };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("examples/container/README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["build", "bundle", "run", "meanwhile"], "{blocks:?}");

    // A scratch checkout: the example's units, and this build's corral where a release build
    // would put it.
    let checkout = tempfile::tempdir().unwrap();
    copy_dir(
        &repo.join("examples/container/units"),
        &checkout.path().join("examples/container/units"),
    );
    let release = checkout.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(common::BIN, release.join("corral")).unwrap();

    let out = Command::new("sh")
        .arg("-ec")
        .arg(block(&blocks, "bundle"))
        .current_dir(checkout.path())
        .output()
        .expect("running the README's bundle block");
    assert!(
        out.status.success(),
        "the bundle block: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config: PathBuf = checkout.path().join("demo/config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(spec["root"]["readonly"], true, "runc's read-only root");

    let name = format!("corral-demo-test-{}", std::process::id());
    let ours = |script: &str| {
        assert!(script.contains(README_NAME), "{script}");
        script.replace(README_NAME, &name)
    };
    let mut running = Running::start(&ours(block(&blocks, "run")), checkout.path(), name.clone());
    let rung = running.wait_line("membership: cgroups ");
    assert!(
        rung.contains("cgroups writable: ") && rung.contains("a private cgroup namespace"),
        "{rung}"
    );
    running.wait_line("ready (the health probe) unit=web");

    let out = Command::new("sh")
        .arg("-ec")
        .arg(ours(block(&blocks, "meanwhile")))
        .current_dir(checkout.path())
        .output()
        .expect("running the README's meanwhile block");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the meanwhile block: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for unit in ["web", "ticker"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(unit) && l.contains(" running ")),
            "{unit} runs: {stdout}"
        );
    }
    assert!(
        stdout.contains("seed") && stdout.contains("code 0"),
        "seed ran: {stdout}"
    );
    assert!(
        stdout.contains("<h1>served by a corral unit</h1>"),
        "the page: {stdout}"
    );

    let status = wait_child(&mut running.child, DEADLINE).expect("runc run exits after TERM");
    running.drain();
    assert_eq!(
        status.code(),
        Some(0),
        "runc run's exit code: {}",
        running.seen.join("\n")
    );
    let stop = running
        .position("SIGTERM received: stopping every unit")
        .expect("corral got the SIGTERM");
    for line in [
        "stopped (killed by SIGTERM) unit=web",
        "corral exits code=0",
    ] {
        assert!(
            running.position(line).is_some_and(|i| i > stop),
            "{line:?} after the SIGTERM: {}",
            running.seen.join("\n")
        );
    }
}

/// examples/README.md's commands for the container example are the example README's own.
#[test]
fn the_examples_index_gives_the_container_example_s_own_commands() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let index = std::fs::read_to_string(repo.join("examples/README.md")).unwrap();
    let own = std::fs::read_to_string(repo.join("examples/container/README.md")).unwrap();
    let row = index
        .lines()
        .find(|l| l.starts_with("| [`container/`]"))
        .expect("examples/README.md has a row for container/");
    let commands: Vec<&str> = row
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|code| code.split(" && "))
        .filter(|c| c.starts_with("docker "))
        .collect();
    assert_eq!(commands.len(), 2, "docker build and docker run in {row}");
    for command in commands {
        assert!(
            own.lines().any(|l| l.trim_end() == command),
            "examples/container/README.md has no line `{command}`"
        );
    }
}
