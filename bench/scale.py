#!/usr/bin/env python3
"""corral at scale: `bench/run --scale` (full) or `bench/run --scale --smoke`.

N units (N = 1000, 5000, 10000 by default), all disabled or all enabled (`sleep`), one corral
each: load time, `check` time, the status round trip (socket and CLI), `metrics`, one changed
file reloaded, main RSS per unit and `top --once`'s refresh. Each timing is also given per unit
and next to its floor where one exists (see bench/README.md, "Scale"). Writes bench/scale.json,
bench/plots/scale_*.png and the "Scale" section of bench/RESULTS.md (between its markers);
`--smoke` (N = 100, 300) prints the section and writes nothing.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BEGIN, END = "<!-- scale: begin (bench/scale.py writes this section) -->", "<!-- scale: end -->"

# The targets (#22).
STATUS_TARGET_MS = 100.0
RELOAD_TARGET_MS = 50.0
RSS_TARGET_KIB = {"disabled": 2.0, "enabled": 8.0}


def log(msg):
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def med(xs):
    return statistics.median(xs) if xs else None


def request(path, obj, timeout=120):
    """One request; the whole answer (its first line) and the seconds it took."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t0 = time.perf_counter()
    try:
        s.connect(str(path))
        s.sendall(json.dumps(obj).encode() + b"\n")
        chunks = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
            if b.endswith(b"\n"):
                break
        return b"".join(chunks), time.perf_counter() - t0
    finally:
        s.close()


def proc_memory(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0])  # KiB
    return out


def unit_text(enabled, i):
    # A realistic small unit: a description, a slice for one in ten, limits for one in five.
    text = f'description = "worker {i}"\n'
    if not enabled:
        text += "enabled = false\n"
    if i % 10 == 0:
        text += 'slice = "pool"\n'
    text += '[exec]\ncommand = ["sleep", "86400"]\n'
    if i % 5 == 0:
        text += '[resources]\nmemory-max = "64M"\npids-max = 16\n'
    return text


def make_units(d, n, enabled):
    units = d / "units"
    units.mkdir()
    (units / "pool.toml").write_text('kind = "slice"\n')
    for i in range(n):
        (units / f"u{i:05d}.toml").write_text(unit_text(enabled, i))
    return units


def timed(argv, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    t0 = time.perf_counter()
    cp = subprocess.run(argv, stderr=subprocess.PIPE, **kw)
    return time.perf_counter() - t0, cp


class Scale:
    def __init__(self, args, corral):
        self.args = args
        self.bin = str(corral)
        self.work = Path(tempfile.mkdtemp(prefix="corral-scale-"))
        self.roots = []

    def floor_read(self, units):
        """The least a loader does: read every file (one `cat` of them all)."""
        files = sorted(str(p) for p in units.iterdir())
        t, cp = timed(["cat", *files], stdout=subprocess.DEVNULL)
        return t

    def floor_scan(self, units):
        """The least a reload does: stat every entry of the directory, read the one that changed."""
        t0 = time.perf_counter()
        for e in os.scandir(units):
            e.stat()
        (units / "u00001.toml").read_bytes()
        return time.perf_counter() - t0

    def one(self, n, enabled):
        d = Path(tempfile.mkdtemp(dir=self.work))
        mode = "enabled" if enabled else "disabled"
        units = make_units(d, n, enabled)
        total = n + 1  # the slice
        out = {"n": n, "mode": mode}
        reps = self.args.reps
        # check: no daemon
        checks = []
        for _ in range(reps):
            t, cp = timed([self.bin, "check", str(units)])
            if cp.returncode != 0:
                raise BenchError(f"check N={n}: exit {cp.returncode}: {cp.stderr[-300:]!r}")
            checks.append(t * 1e3)
        out["check_ms"] = checks
        out["floor_read_ms"] = [self.floor_read(units) * 1e3 for _ in range(reps)]
        sock = d / "ctl.sock"
        root = f"/corral-scale-{os.getpid()}-{len(self.roots)}"
        self.roots.append(root)
        argv = [self.bin, "run", str(units), "--socket", str(sock), "--cgroup-root", root]
        t0 = time.perf_counter()
        logf = open(d / "corral.log", "wb")
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            # load: from the exec to the first answer about the last unit (every unit is
            # loaded before the socket answers; one unit's status costs little)
            last = f"u{n - 1:05d}"
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"corral N={n} exited {proc.returncode}")
                try:
                    reply, _ = request(sock, {"verb": "status", "units": [last]})
                    if json.loads(reply)["units"][0]["name"] == last:
                        break
                except (OSError, ValueError, KeyError, IndexError):
                    pass
                if time.perf_counter() - t0 > 600:
                    raise BenchError(f"corral N={n}: no complete status after 600 s")
                time.sleep(0.005)
            out["load_ms"] = (time.perf_counter() - t0) * 1e3
            if enabled:
                # every unit running: from the exec, counted with the daemon's own filter
                while True:
                    reply, _ = request(sock, {"verb": "status", "states": ["running"]})
                    running = len(json.loads(reply).get("units") or [])
                    if running == n:
                        break
                    if time.perf_counter() - t0 > 900:
                        raise BenchError(f"corral N={n}: {running} of {n} running after 900 s")
                    time.sleep(0.05)
                out["all_running_ms"] = (time.perf_counter() - t0) * 1e3
            time.sleep(1.0)  # settle (the pages of the first answers are counted, not in flight)
            mem = proc_memory(proc.pid)
            out["rss_kib"], out["anon_kib"] = mem["VmRSS"], mem.get("RssAnon")
            # status: the socket round trip of the whole answer, and the CLI's table and JSON
            sts, size = [], 0
            for _ in range(reps * 3):
                reply, t = request(sock, {"verb": "status"})
                sts.append(t * 1e3)
                size = len(reply)
            doc = json.loads(reply)
            if len(doc["units"]) != total:
                raise BenchError(f"status N={n}: {len(doc['units'])} of {total} units")
            out["status_ms"], out["status_bytes"] = sts, size
            filt = []
            for _ in range(reps * 3):
                reply, t = request(sock, {"verb": "status", "states": ["failed"]})
                filt.append(t * 1e3)
            out["status_failed_ms"] = filt
            for key, extra in (("cli_table_ms", []), ("cli_json_ms", ["--json"])):
                times = []
                for _ in range(reps):
                    t, cp = timed([self.bin, "status", *extra, "--socket", str(sock)])
                    if cp.returncode != 0:
                        raise BenchError(f"status {extra} N={n}: exit {cp.returncode}")
                    times.append(t * 1e3)
                out[key] = times
            mets = []
            for _ in range(reps):
                reply, t = request(sock, {"verb": "metrics"})
                if not json.loads(reply).get("ok"):
                    raise BenchError(f"metrics N={n}: {reply[:300]!r}")
                mets.append(t * 1e3)
            out["metrics_ms"], out["metrics_bytes"] = mets, len(reply)
            tops = []
            for _ in range(reps):
                # two snapshots 100 ms apart (the shortest interval): the wait is taken off
                t, cp = timed([self.bin, "top", "--once", "--interval", "100ms", "--socket",
                               str(sock)])
                if cp.returncode != 0:
                    raise BenchError(f"top --once N={n}: exit {cp.returncode}: {cp.stderr!r}")
                tops.append(t * 1e3 - 100.0)
            out["top_ms"] = tops
            # reload of one changed file: its description changes (an update, no restart)
            rels = []
            for k in range(reps):
                f = units / "u00001.toml"
                f.write_text(unit_text(enabled, 1).replace("worker 1", f"worker one {k}"))
                reply, t = request(sock, {"verb": "reload"})
                doc = json.loads(reply)
                if not doc.get("ok") or doc["reload"]["updated"] != ["u00001"]:
                    raise BenchError(f"reload N={n}: {reply[:300]!r}")
                rels.append(t * 1e3)
            out["reload_ms"] = rels
            out["floor_scan_ms"] = [self.floor_scan(units) * 1e3 for _ in range(reps)]
        finally:
            t1 = time.perf_counter()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=600)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            out["shutdown_ms"] = (time.perf_counter() - t1) * 1e3
            logf.close()
            for h in Path("/sys/fs/cgroup").iterdir():
                left = h / root.lstrip("/")
                if left.is_dir():
                    out.setdefault("problems", []).append(f"cgroup left: {left}")
            shutil.rmtree(d, ignore_errors=True)
        return out

    def baseline(self):
        """RssAnon with no unit at all: what per-unit memory is counted above."""
        d = Path(tempfile.mkdtemp(dir=self.work))
        (d / "units").mkdir()
        sock = d / "ctl.sock"
        proc = subprocess.Popen([self.bin, "run", str(d / "units"), "--socket", str(sock)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            for _ in range(2000):
                try:
                    request(sock, {"verb": "status"})
                    break
                except OSError:
                    time.sleep(0.005)
            request(sock, {"verb": "status"})
            request(sock, {"verb": "metrics"})
            time.sleep(1.0)
            return proc_memory(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            shutil.rmtree(d, ignore_errors=True)


def per_unit(r, key, n):
    v = med(r.get(key) or []) if isinstance(r.get(key), list) else r.get(key)
    return None if v is None else v * 1000.0 / n  # µs per unit


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v:.3g} ms" if v < 1000 else f"{v / 1000:.3g} s"


def slope_ok(points, key, tol=1.35):
    """Linear or better: the cost per unit at the largest N is at most `tol` times that at the
    smallest (a quadratic cost grows 10× from 1000 to 10000)."""
    pts = [(r["n"], med(r[key]) if isinstance(r[key], list) else r[key]) for r in points
           if r.get(key) is not None]
    if len(pts) < 2:
        return None, None
    (n0, v0), (n1, v1) = pts[0], pts[-1]
    ratio = (v1 / n1) / (v0 / n0) if v0 else None
    return ratio, ratio is not None and ratio <= tol


def markdown(res):
    meta, rows = res["meta"], res["runs"]
    base = res.get("baseline") or {}
    lines = [BEGIN, "", "## Scale: thousands of units on one corral", ""]
    lines.append(
        f"Written by `bench/run --scale{' --smoke' if res['smoke'] else ''}` on {meta['date']} "
        f"in {meta['elapsed_s']:.0f} s; corral {meta['commit']}; {meta['reps']} repetitions "
        f"(status and filtered status 3× as many), medians. The machine's 2 cores were shared "
        f"with other builds (load average {meta['load_before']} before, {meta['load_after']} "
        "after): ratios and slopes matter more than absolute times. Each unit is a `sleep 86400` "
        "service with a description; one in ten is in a slice, one in five has `memory-max` and "
        "`pids-max` (bench/scale.py). Floors: `cat` of every unit file (load, `check`); a stat "
        "of every directory entry plus a read of the changed file (reload).")
    lines.append("")
    lines.append("### Targets (issue #22)")
    lines.append("")
    lines.append("| target | measured | verdict |")
    lines.append("|---|---|---|")
    verdict = lambda ok: "**met**" if ok else "**not met**"
    for mode in ("disabled", "enabled"):
        pts = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["n"])
        if not pts:
            continue
        for key, what in (("load_ms", "load"), ("check_ms", "`check`"),
                          ("status_ms", "status round trip"), ("reload_ms", "reload of one file"),
                          ("top_ms", "`top` refresh"), ("metrics_ms", "`metrics`"),
                          ("anon_kib", "main RssAnon")):
            ratio, ok = slope_ok(pts, key)
            if ratio is None:
                continue
            lines.append(f"| {what}, {mode}: linear or better in N | per unit at N={pts[-1]['n']} "
                         f"is {ratio:.2f}× that at N={pts[0]['n']} | {verdict(ok)} |")
        big = pts[-1]
        st = med(big["status_ms"])
        lines.append(f"| status of {big['n']} {mode} units < {STATUS_TARGET_MS:.0f} ms | "
                     f"{fmt_ms(st)} (CLI table {fmt_ms(med(big['cli_table_ms']))}, "
                     f"`--json` {fmt_ms(med(big['cli_json_ms']))}) | "
                     f"{verdict(st < STATUS_TARGET_MS)} |")
        rl = med(big["reload_ms"])
        lines.append(f"| reload of one changed file among {big['n']} ({mode}) < "
                     f"{RELOAD_TARGET_MS:.0f} ms | {fmt_ms(rl)} | "
                     f"{verdict(rl < RELOAD_TARGET_MS)} |")
        if base.get("RssAnon") is not None and big.get("anon_kib") is not None:
            per = (big["anon_kib"] - base["RssAnon"]) / big["n"]
            lines.append(f"| memory at rest per {mode} unit < {RSS_TARGET_KIB[mode]:g} KiB | "
                         f"{per:.2f} KiB (RssAnon {big['anon_kib'] / 1024:.1f} MiB at "
                         f"N={big['n']}, {base['RssAnon'] / 1024:.2f} MiB with none) | "
                         f"{verdict(per < RSS_TARGET_KIB[mode])} |")
    lines.append("")
    lines.append("### Figures, per unit and next to the floor")
    lines.append("")
    lines.append("| units | N | load | `check` (floor) | status (bytes) | `status` CLI table / "
                 "`--json` | `--state failed` | `metrics` (bytes) | `top --once` | reload of one "
                 "(floor) | RSS / RssAnon | shutdown |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["mode"], r["n"])):
        n = r["n"]
        pu = lambda key: f"{per_unit(r, key, n):.1f} µs/unit"
        load = fmt_ms(r["load_ms"]) + f" ({pu('load_ms')})"
        if r.get("all_running_ms"):
            load += f"; all running {fmt_ms(r['all_running_ms'])}"
        lines.append(
            f"| {r['mode']} | {n} | {load} | {fmt_ms(med(r['check_ms']))} ({pu('check_ms')}; "
            f"floor {fmt_ms(med(r['floor_read_ms']))}) | {fmt_ms(med(r['status_ms']))} "
            f"({pu('status_ms')}; {r['status_bytes'] / 1024:.0f} KiB) | "
            f"{fmt_ms(med(r['cli_table_ms']))} / {fmt_ms(med(r['cli_json_ms']))} | "
            f"{fmt_ms(med(r['status_failed_ms']))} | {fmt_ms(med(r['metrics_ms']))} "
            f"({r['metrics_bytes'] / 1024:.0f} KiB) | {fmt_ms(med(r['top_ms']))} | "
            f"{fmt_ms(med(r['reload_ms']))} (floor {fmt_ms(med(r['floor_scan_ms']))}) | "
            f"{r['rss_kib'] / 1024:.1f} / {r['anon_kib'] / 1024:.1f} MiB | "
            f"{fmt_ms(r['shutdown_ms'])} |")
    problems = [p for r in rows for p in r.get("problems", [])] + res.get("errors", [])
    if problems:
        lines += ["", "Problems: " + "; ".join(problems)]
    if not res["smoke"]:
        lines += ["", "![scale: time per unit](plots/scale_time.png)",
                  "![scale: memory](plots/scale_memory.png)"]
    lines += ["", "Why a target is missed: bench/analysis.md, \"Scale\".", "", END]
    return "\n".join(lines) + "\n"


def splice(results_md, section):
    text = results_md.read_text() if results_md.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)


def plot(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, mode in zip(axes, ("disabled", "enabled")):
        pts = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["n"])
        if not pts:
            ax.set_visible(False)
            continue
        ns = [r["n"] for r in pts]
        for key, label in (("load_ms", "load"), ("check_ms", "check"),
                           ("floor_read_ms", "floor: cat every file"),
                           ("status_ms", "status (socket)"), ("cli_table_ms", "status (CLI table)"),
                           ("metrics_ms", "metrics"), ("top_ms", "top --once"),
                           ("reload_ms", "reload of one file"),
                           ("floor_scan_ms", "floor: stat every entry")):
            ys = [(med(r[key]) if isinstance(r[key], list) else r[key]) * 1000 / r["n"]
                  for r in pts]
            ax.plot(ns, ys, marker="o", label=label,
                    linestyle="--" if key.startswith("floor") else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("units (N)")
        ax.set_ylabel("µs per unit (flat = linear in N)")
        ax.set_title(f"{mode} units")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scale_time.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 5))
    base = (res.get("baseline") or {}).get("RssAnon", 0)
    for mode in ("disabled", "enabled"):
        pts = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["n"])
        if pts:
            ax.plot([r["n"] for r in pts], [(r["anon_kib"] - base) / r["n"] for r in pts],
                    marker="o", label=f"{mode}: RssAnon above an empty corral, per unit")
            ax.axhline(RSS_TARGET_KIB[mode], linestyle=":", color="grey")
            ax.text(pts[0]["n"], RSS_TARGET_KIB[mode], f" target {mode}", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("units (N)")
    ax.set_ylabel("KiB per unit")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scale_memory.png", dpi=100)
    plt.close(fig)


def ensure_matplotlib(py):
    if subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode != 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "python3-matplotlib"], env=env, check=False, stdout=subprocess.DEVNULL)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench/run --scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true",
                    help="N = 100, 300 (100 running), one repetition, the debug build, no files")
    ap.add_argument("--sizes", default=None, help="N for disabled units (default 1000,5000,10000)")
    ap.add_argument("--enabled-sizes", default=None,
                    help="N for running units (default as --sizes; empty: none)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; smoke 1)")
    ap.add_argument("--corral", default=None, help="measure this binary instead of building one")
    ap.add_argument("--corral-rev", default=None, help="with --corral: the commit it was built from")
    ap.add_argument("--out", default=None, help="where scale.json, plots/ and RESULTS.md go")
    args = ap.parse_args(argv)
    sizes = args.sizes or ("100,300" if args.smoke else "1000,5000,10000")
    args.sizes = [int(x) for x in sizes.split(",") if x]
    en = args.enabled_sizes if args.enabled_sizes is not None else ("100" if args.smoke else sizes)
    args.enabled_sizes = [int(x) for x in en.split(",") if x]
    args.reps = args.reps or (1 if args.smoke else 3)
    if os.geteuid() != 0:
        sys.exit("bench/run --scale needs root (cgroups)")
    t_start = time.monotonic()
    if args.corral:
        corral = Path(args.corral)
        commit = args.corral_rev or "unknown (--corral)"
    else:
        cmd = ["cargo", "build", "--locked"] + ([] if args.smoke else ["--release"])
        subprocess.run(cmd, cwd=REPO, check=True)
        corral = REPO / "target" / ("debug" if args.smoke else "release") / "corral"
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()
        if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=REPO).returncode:
            commit += " + uncommitted changes in src/"
    # A running unit holds about four descriptors (its output pipes, its OOM eventfd, its exec
    # report while it starts): corral inherits this soft limit, so it is raised to the hard one.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for n in args.enabled_sizes:
        if 4 * n + 256 > hard:
            log(f"N={n} running needs about {4 * n + 256} descriptors; the limit is {hard}")
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    sc = Scale(args, corral)
    res = {"smoke": args.smoke, "runs": [], "errors": []}
    try:
        res["baseline"] = sc.baseline()
        plan = [(n, False) for n in args.sizes] + [(n, True) for n in args.enabled_sizes]
        for n, enabled in plan:
            if enabled and 3 * n + 256 > hard:
                # Not run: three descriptors a unit that runs (its two pipes, its OOM eventfd)
                # do not fit, so its units would fail their spawns and the row would time out
                # after 15 minutes, measuring nothing (bench/analysis.md). (The warning above
                # counts four: a unit's exec report too, while it starts.)
                res["errors"].append(f"N={n} running not run: it needs at least {3 * n + 256} "
                                     f"descriptors and the hard limit is {hard}")
                log(f"N={n} enabled: not run, too few descriptors")
                continue
            log(f"N={n} {'enabled' if enabled else 'disabled'}")
            try:
                res["runs"].append(sc.one(n, enabled))
            except (BenchError, OSError, ValueError, KeyError) as e:
                res["errors"].append(str(e))
                log(f"FAILED: {e}")
    finally:
        shutil.rmtree(sc.work, ignore_errors=True)
    res["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
                   "reps": args.reps, "elapsed_s": time.monotonic() - t_start,
                   "load_before": load_before,
                   "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
    section = markdown(res)
    if args.smoke and not args.out:
        print(section)
    else:
        out = Path(args.out) if args.out else BENCH
        (out / "plots").mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(res, indent=1, sort_keys=True))
        splice(out / "RESULTS.md", section)
        py = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        ensure_matplotlib(py)
        cp = subprocess.run([py, str(Path(__file__).resolve()), "--plot-from",
                             str(out / "scale.json"), str(out / "plots")]) if py != sys.executable \
            else None
        if cp is None:
            plot(res, out / "plots")
        log(f"wrote {out / 'scale.json'}, {out / 'RESULTS.md'} and {out / 'plots'}/scale_*.png")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--plot-from":
        plot(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]))
        sys.exit(0)
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"FAILED: {e}")
        sys.exit(1)
