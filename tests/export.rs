//! `corral export` end to end: every example directory exported to Kubernetes (`--wrap`,
//! `--split`) and to systemd, compared with the golden files under tests/golden/, and checked
//! by each platform's own validator: the official `kubernetes` Python client's models
//! (tests/k8s_validate.py, a strict walk) and `systemd-analyze verify`.
//!
//! `CORRAL_BLESS=1 cargo test --test export` rewrites the golden files from the current output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, Out, run_bounded};

/// Every units directory of the repository, with the name its golden files go under.
const EXAMPLES: [(&str, &str); 6] = [
    ("units", "units"),
    ("container", "examples/container/units"),
    ("namespaces", "examples/namespaces/units"),
    ("oom-restart", "examples/oom-restart"),
    ("readiness", "examples/readiness"),
    ("slices", "examples/slices"),
];

/// The PATH `export systemd` resolves commands from in these tests, so the golden files name
/// the same absolute paths on every Debian machine.
const EXPORT_PATH: &str = "/usr/bin:/bin";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corral(args: &[&str]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(repo()).env("PATH", EXPORT_PATH);
    run_bounded(cmd)
}

fn ok(args: &[&str]) -> Out {
    let out = corral(args);
    assert_eq!(out.code, 0, "corral {args:?} failed: {}", out.stderr);
    out
}

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Compares `actual` with the golden file `name` (or writes it under `CORRAL_BLESS=1`).
fn golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("CORRAL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e} (CORRAL_BLESS=1 writes it)", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the output at line {} (CORRAL_BLESS=1 rewrites it):\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            first + 1,
            expected
                .lines()
                .skip(first)
                .take(5)
                .collect::<Vec<_>>()
                .join("\n"),
            actual
                .lines()
                .skip(first)
                .take(5)
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
}

/// True when the official Kubernetes client is importable; under `CI=true` its absence fails.
fn require_kubernetes_client() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import kubernetes.client, kubernetes.utils, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if under_ci() {
        panic!(
            "the Kubernetes checks need python3 with the `kubernetes` client (pip install kubernetes), \
             and CI=true does not allow skipping them"
        );
    }
    eprintln!("SKIPPED: the Kubernetes checks need python3 with the `kubernetes` client");
    false
}

/// True when `systemd-analyze` is installed; under `CI=true` its absence fails.
fn require_systemd_analyze() -> bool {
    if common::in_path("systemd-analyze").is_some() {
        return true;
    }
    if under_ci() {
        panic!(
            "the systemd checks need `systemd-analyze` (Debian's systemd package), and CI=true \
             does not allow skipping them"
        );
    }
    eprintln!("SKIPPED: the systemd checks need `systemd-analyze`");
    false
}

/// Runs tests/k8s_validate.py on `yaml`; `Err` carries its complaints.
fn validate_k8s(yaml: &str) -> Result<(), String> {
    validate_k8s_streams(&[("objects".to_owned(), yaml.to_owned())])
}

/// Runs tests/k8s_validate.py once on every `(label, yaml)` stream (one Python start for all:
/// importing the client is the slow part); `Err` carries its complaints, each naming its label.
fn validate_k8s_streams(streams: &[(String, String)]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/k8s_validate.py"))
        .current_dir(dir.path());
    for (label, yaml) in streams {
        let file = format!("{}.yaml", label.replace(['/', ' '], "_"));
        std::fs::write(dir.path().join(&file), yaml).unwrap();
        cmd.arg(file);
    }
    let out = run_bounded(cmd);
    if out.code == 0 && out.stdout.starts_with("ok: ") {
        Ok(())
    } else {
        Err(format!("{}{}", out.stdout, out.stderr))
    }
}

/// The installed systemd's version, from `systemd-analyze --version` (`systemd 252 (...)`).
fn systemd_version() -> u32 {
    let out = run_bounded({
        let mut c = Command::new("systemd-analyze");
        c.arg("--version");
        c
    });
    out.stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {:?}", out.stdout))
}

/// Runs `systemd-analyze verify` on every file of `dir`. It exits 0 on unknown keys and
/// invalid values (it only logs them), so any line it prints is a failure too, except those
/// `allowed` (directives newer than the installed systemd).
fn verify_systemd(dir: &Path, allowed: &[&str]) -> Result<(), String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| format!("./{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    files.sort();
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"])
        .args(&files)
        .current_dir(dir);
    let out = run_bounded(cmd);
    let complaints: Vec<&str> = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| !allowed.iter().any(|a| l.contains(a)))
        .collect();
    if out.code == 0 && complaints.is_empty() {
        Ok(())
    } else {
        Err(format!("exit {}: {}", out.code, complaints.join("\n")))
    }
}

#[test]
fn k8s_exports_of_every_example_match_their_golden_files_and_pass_the_client_models() {
    let mut streams = Vec::new();
    for (name, dir) in EXAMPLES {
        for layout in ["wrap", "split"] {
            let out = ok(&["export", "k8s", &format!("--{layout}"), dir]);
            golden(&format!("{name}/k8s-{layout}.yaml"), &out.stdout);
            golden(&format!("{name}/k8s-{layout}.stderr"), &out.stderr);
            streams.push((format!("{name} --{layout}"), out.stdout));
        }
        for args in [
            ["--split", "--deployment", "--image=app:1"],
            ["--wrap", "--deployment", "--privileged"],
        ] {
            let mut argv = vec!["export", "k8s"];
            argv.extend(args);
            argv.push(dir);
            streams.push((format!("{name} {}", args.join(" ")), ok(&argv).stdout));
        }
    }
    if require_kubernetes_client() {
        validate_k8s_streams(&streams).unwrap_or_else(|e| panic!("rejected:\n{e}"));
    }
}

/// The systemd golden files hold the absolute paths export resolves through `PATH`; the
/// examples name `busybox`, which a machine without it leaves bare (and says so).
fn require_busybox_in_path() -> bool {
    if common::in_path("busybox").is_some() {
        return true;
    }
    if under_ci() {
        panic!(
            "the systemd golden files need `busybox` in PATH (Debian's busybox-static), and \
             CI=true does not allow skipping them"
        );
    }
    eprintln!("SKIPPED: the systemd golden files need `busybox` in PATH");
    false
}

#[test]
fn systemd_exports_of_every_example_match_their_golden_files_and_pass_systemd_analyze_verify() {
    if !require_busybox_in_path() {
        return;
    }
    let check = require_systemd_analyze();
    let installed = if check { systemd_version() } else { 0 };
    for (name, dir) in EXAMPLES {
        let out = ok(&["export", "systemd", dir]);
        golden(&format!("{name}/systemd.txt"), &out.stdout);
        golden(&format!("{name}/systemd.stderr"), &out.stderr);

        // --output writes the same files the stream shows.
        let written = tempfile::tempdir().unwrap();
        let target = written.path().join("units");
        ok(&[
            "export",
            "systemd",
            "--output",
            target.to_str().unwrap(),
            dir,
        ]);
        let mut stream = String::new();
        let mut names: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by_key(|n| (!n.ends_with(".slice"), n.clone()));
        for (i, file) in names.iter().enumerate() {
            if i > 0 {
                stream.push('\n');
            }
            stream.push_str(&format!("# ==> {file} <==\n"));
            stream.push_str(&std::fs::read_to_string(target.join(file)).unwrap());
        }
        assert_eq!(stream, out.stdout, "{dir}: --output differs from stdout");

        if check {
            verify_systemd(&target, &[])
                .unwrap_or_else(|e| panic!("{dir}: systemd-analyze verify: {e}"));
            // The newest directives, on a systemd that may predate them: only "unknown key"
            // for exactly those is accepted.
            let newest = written.path().join("v257");
            ok(&[
                "export",
                "systemd",
                "--systemd-version=257",
                "--output",
                newest.to_str().unwrap(),
                dir,
            ]);
            let mut allowed = Vec::new();
            if installed < 254 {
                allowed.extend([
                    "Unknown key 'RestartSteps'",
                    "Unknown key 'RestartMaxDelaySec'",
                ]);
            }
            if installed < 257 {
                allowed.push("Unknown key 'PrivatePIDs'");
            }
            verify_systemd(&newest, &allowed)
                .unwrap_or_else(|e| panic!("{dir} (systemd 257): systemd-analyze verify: {e}"));
        }
    }
}

#[test]
fn the_validators_reject_what_they_exist_to_catch() {
    if require_kubernetes_client() {
        let good = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: a\n    image: x\n";
        validate_k8s(good).unwrap();
        for (bad, needle) in [
            (
                good.replace("image: x", "imgae: x"),
                "unknown field 'imgae'",
            ),
            (
                good.replace("image: x", "image: x\n    ports: [{containerPort: '80'}]"),
                "expected an integer",
            ),
            (good.replace("name: a", "name: A_b"), "not a DNS label"),
            (
                good.replace("image: x", "image: x\n    restartPolicy: Always"),
                "only an init container may set restartPolicy",
            ),
            (
                good.replace(
                    "image: x",
                    "image: x\n    resources: {limits: {memory: 12Q}}",
                ),
                "not a quantity",
            ),
            (
                good.replace("kind: Pod", "kind: Pdo"),
                "unexpected apiVersion/kind",
            ),
        ] {
            let e = validate_k8s(&bad).expect_err(&bad);
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
    if require_systemd_analyze() {
        let dir = tempfile::tempdir().unwrap();
        let unit = "[Service]\nExecStart=/bin/true\n";
        std::fs::write(dir.path().join("a.service"), unit).unwrap();
        verify_systemd(dir.path(), &[]).unwrap();
        std::fs::write(
            dir.path().join("a.service"),
            format!("{unit}MemoryMaks=1M\n"),
        )
        .unwrap();
        let e = verify_systemd(dir.path(), &[]).expect_err("an unknown key passes");
        assert!(e.contains("MemoryMaks"), "{e}");
        std::fs::write(
            dir.path().join("a.service"),
            "[Service]\nExecStart=/nonexistent/x\n",
        )
        .unwrap();
        verify_systemd(dir.path(), &[]).expect_err("a missing binary passes");
    }
}

#[test]
fn export_needs_a_layout_and_a_valid_directory() {
    let out = corral(&["export", "k8s", "units"]);
    assert_eq!(out.code, 2, "neither --wrap nor --split: {out:?}");
    let out = corral(&["export", "k8s", "--wrap", "--split", "units"]);
    assert_eq!(out.code, 2, "both: {out:?}");
    let out = corral(&["export", "k8s", "--split", "--privileged", "units"]);
    assert_eq!(out.code, 2, "--privileged is for --wrap: {out:?}");
    let out = corral(&["export", "k8s", "--wrap", "--name", "Bad_Name", "units"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = corral(&["export", "systemd", "--systemd-version", "251", "units"]);
    assert_eq!(out.code, 2, "older than the oldest supported: {out:?}");

    let empty = tempfile::tempdir().unwrap();
    let out = corral(&["export", "k8s", "--split", empty.path().to_str().unwrap()]);
    assert_eq!(out.code, 1, "a pod without containers: {out:?}");
    assert!(
        out.stderr.contains("a pod needs a container"),
        "{}",
        out.stderr
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[exec]\ncommand = \"sh\"\n").unwrap();
    for kind in [&["k8s", "--wrap"][..], &["systemd"]] {
        let mut args = vec!["export"];
        args.extend(kind);
        args.push(dir.path().to_str().unwrap());
        let out = corral(&args);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(
            out.stdout.is_empty(),
            "nothing is exported from an invalid directory: {out:?}"
        );
        assert!(
            out.stderr.contains("bad.toml:2:11: error: exec.command"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn wrap_keeps_unit_names_that_are_not_config_map_keys() {
    let dir = tempfile::tempdir().unwrap();
    // An instance of a template: both files travel in the ConfigMap.
    std::fs::write(
        dir.path().join("worker@.toml"),
        "[exec]\ncommand = [\"sleep\", \"9\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("worker@1.toml"), "description = \"one\"\n").unwrap();
    let out = ok(&["export", "k8s", "--wrap", dir.path().to_str().unwrap()]);
    assert!(out.stdout.contains("worker_at_1.toml: |"), "{}", out.stdout);
    assert!(out.stdout.contains("path: worker@1.toml"), "{}", out.stdout);
    if require_kubernetes_client() {
        validate_k8s(&out.stdout).unwrap_or_else(|e| panic!("rejected:\n{e}"));
    }
    let out = ok(&["export", "k8s", "--split", dir.path().to_str().unwrap()]);
    assert!(out.stdout.contains("name: worker-1"), "{}", out.stdout);
    assert!(
        out.stderr.contains("its container is named `worker-1`"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_manifest_in_docs_kubernetes_md_is_what_export_prints() {
    let doc = std::fs::read_to_string(repo().join("docs/kubernetes.md")).unwrap();
    let section = doc
        .split_once("### A complete manifest")
        .expect("docs/kubernetes.md has its manifest section")
        .1;
    let yaml = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a yaml block in the manifest section")
        .0;
    let stderr = section
        .split_once("on stderr:\n\n```\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the warnings block")
        .0;
    let out = ok(&["export", "k8s", "--wrap", "examples/container/units"]);
    assert_eq!(yaml, out.stdout, "docs/kubernetes.md's manifest is stale");
    assert_eq!(
        stderr, out.stderr,
        "docs/kubernetes.md's warnings are stale"
    );
}

#[test]
fn systemd_values_cannot_add_directives_or_swallow_the_next_line() {
    // A newline in a path would start a directive of its own (here `User=root`), and a value
    // ending in `\` continues onto the next line, which then stops being a directive.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "description = \"ends in a backslash \\\\\"\n\
         [exec]\ncommand = [\"/bin/true\"]\nworking-dir = \"/srv\\nUser=root\"\n\
         [sandbox]\nread-only-paths = [\"/etc\\nPrivileged=yes\", \"/data\\\\\", \"/x y\"]\n",
    )
    .unwrap();
    let out = ok(&["export", "systemd", dir.path().to_str().unwrap()]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("User=") || l.starts_with("Privileged=")),
        "a value added a directive:\n{}",
        out.stdout
    );
    assert!(
        !lines.iter().any(|l| l.ends_with('\\')),
        "a line continues onto the next:\n{}",
        out.stdout
    );
    assert!(
        lines.contains(&"StartLimitIntervalSec=10s"),
        "{}",
        out.stdout
    );
    assert!(lines.contains(&"ReadOnlyPaths=\"/x y\""), "{}", out.stdout);
    assert!(
        out.stderr.contains("a: exec.working-dir:"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("a: sandbox.read-only-paths:"),
        "{}",
        out.stderr
    );
}
