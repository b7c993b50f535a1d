#!/usr/bin/env python3
"""Running units beside many disabled ones (issue #22): what one input costs when N units rest.

    sudo bench/beside.py --corral OLD --corral NEW [--idle 10000] [--busy 1000] [--reps 2]

Each binary in turns (the order alternates every repetition), one corral at a time, on the same
units: IDLE disabled units and BUSY enabled ones (`sleep 86400`, one in ten in a slice). Times:
from the exec to the first answer (the load and the first turn, which starts every busy unit)
and to every busy unit running (the daemon's own `states` filter, polled every 50 ms),
then 20 `start` round trips of one more disabled unit each (20 spares beside the IDLE) (a start waits until the unit runs: one
input and its follow-ups, the spawn included), and the shutdown. Prints a Markdown table with
the medians; bench/analysis.md ("Scale") quotes it. Standard library only.
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


def request(path, obj, timeout=600):
    """One request; its answer line and the seconds it took."""
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
        return json.loads(b"".join(chunks)), time.perf_counter() - t0
    finally:
        s.close()


def make_units(d, idle, busy):
    units = d / "units"
    units.mkdir()
    (units / "pool.toml").write_text('kind = "slice"\n')
    for i in range(idle):
        (units / f"idle-{i:05d}.toml").write_text(
            'enabled = false\n[exec]\ncommand = ["sleep", "86400"]\n')
    for i in range(20):
        (units / f"spare-{i:02d}.toml").write_text(
            'enabled = false\n[exec]\ncommand = ["sleep", "86400"]\n')
    for i in range(busy):
        slice_line = 'slice = "pool"\n' if i % 10 == 0 else ""
        (units / f"busy-{i:05d}.toml").write_text(
            f'{slice_line}[exec]\ncommand = ["sleep", "86400"]\n')
    return units


def one(binary, units, work, k):
    sock = work / f"ctl-{k}.sock"
    root = f"/corral-beside-{os.getpid()}-{k}"
    logf = open(work / f"corral-{k}.log", "wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, "run", str(units), "--socket", str(sock),
                             "--cgroup-root", root],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    out = {}
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{binary} exited {proc.returncode}")
            try:
                answer, _ = request(sock, {"verb": "status", "states": ["running"]})
                # The first answer comes after the first turn: the load and every start.
                out.setdefault("first_answer_s", time.perf_counter() - t0)
                if len(answer.get("units") or []) == args.busy:
                    break
            except (OSError, ValueError):
                pass
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError("not every busy unit running after 1800 s")
            time.sleep(0.05)
        out["all_running_s"] = time.perf_counter() - t0
        # corral's own CPU time so far, user and kernel (utime, stime: proc(5)).
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        out["cpu_user_s"], out["cpu_sys_s"] = int(fields[11]) / tick, int(fields[12]) / tick
        starts = []
        for i in range(20):
            answer, t = request(sock, {"verb": "start", "units": [f"spare-{i:02d}"]})
            if not answer.get("ok"):
                raise RuntimeError(f"start: {answer}")
            starts.append(t * 1e3)
        out["start_one_ms"] = statistics.median(starts)
    finally:
        t1 = time.perf_counter()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out["shutdown_s"] = time.perf_counter() - t1
        logf.close()
        for h in Path("/sys/fs/cgroup").iterdir():
            if (h / root.lstrip("/")).is_dir():
                out.setdefault("problems", []).append(f"cgroup left in {h.name}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral", action="append", required=True, help="a binary (repeatable)")
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--busy", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (cgroups)")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="corral-beside-"))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results = {b: [] for b in args.corral}
    try:
        units = make_units(work, args.idle, args.busy)
        k = 0
        for rep in range(args.reps):
            order = args.corral if rep % 2 == 0 else list(reversed(args.corral))
            for b in order:
                r = one(b, units, work, k)
                k += 1
                print(f"rep {rep} {b}: {r}", file=sys.stderr, flush=True)
                results[b].append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.busy} running beside {args.idle} disabled, {args.reps} repetitions, medians "
          f"(load average {load} before, "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} after):\n")
    print("| binary | first answer | all running | per busy unit | corral's CPU then (user + "
          "kernel) | `start` of one more | shutdown |")
    print("|---|---|---|---|---|---|---|")
    for b, rs in results.items():
        first = statistics.median(r["first_answer_s"] for r in rs)
        run = statistics.median(r["all_running_s"] for r in rs)
        start = statistics.median(r["start_one_ms"] for r in rs)
        down = statistics.median(r["shutdown_s"] for r in rs)
        problems = sorted({p for r in rs for p in r.get("problems", [])})
        per = f"{run / args.busy * 1e3:.1f} ms" if args.busy else "-"
        usr = statistics.median(r["cpu_user_s"] for r in rs)
        ker = statistics.median(r["cpu_sys_s"] for r in rs)
        print(f"| {b} | {first:.2f} s | {run:.2f} s | {per} | {usr:.2f} + {ker:.2f} s | "
              f"{start:.1f} ms | "
              f"{down:.2f} s |" + (f" {problems}" if problems else ""))
