#!/usr/bin/env python3
"""Memory at rest of one or more corral binaries, side by side in one run (issues #20, #22).

For each binary and each N it starts `corral run` on N units, waits until every unit is loaded
(and, for running units, until all N run), lets it settle 1 s, and reads VmRSS and RssAnon of
the main process from /proc/PID/status; then once more after a full `status` and `metrics`
answer (what bench/scale.py reads). An empty units directory gives the baseline, so the
per-unit figure is (RssAnon(N) - RssAnon(0)) / N. The binaries run in turns (the order rotates
each repetition), medians are reported.

Unit files: `scale` is bench/scale.py's (a description, one in ten in a slice, one in five with
limits), `bench` is bench/bench.py's (restart always, delay 0). Needs root (cgroups).

    sudo bench/footprint.py --corral old=/tmp/corral-old --corral new=target/release/corral \\
        --disabled 10000 --running 1000 --reps 3
"""

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (its unit text and socket client)

BENCH_UNIT = (
    '[exec]\ncommand = ["sleep", "86400"]\n'
    '[restart]\npolicy = "always"\ndelay = "0"\nmax-delay = "0"\n'
    'start-limit-burst = 1000000\nstart-limit-interval = "1s"\n'
)


def make_units(d, n, enabled, style):
    units = d / "units"
    units.mkdir()
    if style == "scale":
        (units / "pool.toml").write_text('kind = "slice"\n')
        for i in range(n):
            (units / f"u{i:05d}.toml").write_text(scale.unit_text(enabled, i))
    else:
        for i in range(n):
            text = BENCH_UNIT if enabled else "enabled = false\n" + BENCH_UNIT
            (units / f"s{i:05d}.toml").write_text(text)
    return units


def cgroup_leftovers(root):
    base = Path("/sys/fs/cgroup")
    dirs = [base / root.lstrip("/")] + [h / root.lstrip("/") for h in base.iterdir() if h.is_dir()]
    return [str(p) for p in dirs if p.exists()]


def measure(binary, n, enabled, style, work, k):
    d = Path(tempfile.mkdtemp(dir=work))
    units = make_units(d, n, enabled, style)
    sock = d / "ctl.sock"
    root = f"/corral-footprint-{os.getpid()}-{k}"
    argv = [binary, "run", str(units), "--socket", str(sock), "--cgroup-root", root]
    log = open(d / "corral.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = {}
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{binary} N={n} exited {proc.returncode}")
            try:
                states = ["running"] if enabled else ["failed"]
                reply, _ = scale.request(sock, {"verb": "status", "states": states})
                if not enabled:
                    json.loads(reply)
                    break
                running = len(json.loads(reply).get("units") or [])
                if running == n:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"{binary} N={n}: not settled after 900 s")
            time.sleep(0.05)
        time.sleep(1.0)
        out["rest"] = scale.proc_memory(proc.pid)
        scale.request(sock, {"verb": "status"})
        scale.request(sock, {"verb": "metrics"})
        time.sleep(1.0)
        out["after_status"] = scale.proc_memory(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
        left = cgroup_leftovers(root)
        for p in left:
            subprocess.run(["rmdir", p], capture_output=True)
        if left:
            print(f"  left cgroups: {left}", file=sys.stderr)
        shutil.rmtree(d, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral", action="append", required=True, help="LABEL=PATH")
    ap.add_argument("--disabled", default="10000", help="N of disabled units, comma-separated")
    ap.add_argument("--running", default="1000", help="N of running units, comma-separated")
    ap.add_argument("--style", choices=("scale", "bench"), default="scale")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bins = [tuple(c.split("=", 1)) for c in args.corral]
    plan = [(0, False)]
    plan += [(int(n), False) for n in args.disabled.split(",") if n]
    plan += [(int(n), True) for n in args.running.split(",") if n]
    work = Path(tempfile.mkdtemp(prefix="corral-footprint-"))
    res = {}
    k = 0
    try:
        for rep in range(args.reps):
            order = bins[rep % len(bins):] + bins[:rep % len(bins)]
            for n, enabled in plan:
                for label, path in order:
                    k += 1
                    m = measure(path, n, enabled, args.style, work, k)
                    res.setdefault((label, n, enabled), []).append(m)
                    print(f"rep {rep} {label} N={n} {'running' if enabled else 'disabled'}: "
                          f"{m}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(label, n, enabled, when, key):
        return statistics.median(r[when][key] for r in res[(label, n, enabled)])

    print(f"\nload average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
          f"units: {args.style}; {args.reps} repetitions, medians; KiB per unit is RssAnon "
          "above the same binary's empty corral, divided by N\n")
    print("| binary | units | N | VmRSS MiB | RssAnon MiB | KiB per unit | after status+metrics: "
          "RssAnon MiB | KiB per unit |")
    print("|---|---|---|---|---|---|---|---|")
    for n, enabled in plan:
        for label, _ in bins:
            rss = med(label, n, enabled, "rest", "VmRSS")
            anon = med(label, n, enabled, "rest", "RssAnon")
            anon2 = med(label, n, enabled, "after_status", "RssAnon")
            base = med(label, 0, False, "rest", "RssAnon")
            base2 = med(label, 0, False, "after_status", "RssAnon")
            per = (anon - base) / n if n else 0
            per2 = (anon2 - base2) / n if n else 0
            print(f"| {label} | {'running' if enabled else 'disabled'} | {n} | {rss / 1024:.2f} | "
                  f"{anon / 1024:.2f} | {per:.2f} | {anon2 / 1024:.2f} | {per2:.2f} |")


if __name__ == "__main__":
    main()
