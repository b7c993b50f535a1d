#!/usr/bin/env python3
"""corral's own CPU time per restart beside N running units, for several binaries in turns:
`sudo bench/restart_cpu.py [--n 1000] [--kills 200] [--rounds 3] NAME=BINARY ...`.

bench/bench.py's restart row times the latency (exit to the replacement's exec); work the
daemon does after the exec is not in it. This counts all of it: each turn starts one corral on
N units of `sleep 86400` (restart always, delay 0, as bench.py's), waits until every unit runs
and 2 s more, then SIGKILLs the oldest child KILLS times, 20 ms apart, and 1 s after the last
reads the daemon's run time from /proc/PID/schedstat (nanoseconds on the CPU, kernel and user;
Documentation/scheduler/sched-stats.rst). Nothing polls corral meanwhile, so the figure is the
restarts' alone. Binaries in turns, the order reversed every round; prints the microseconds per
restart of every turn and the medians as JSON. Writes nothing; removes its cgroup roots
(corral removes them on exit; what is left is reported and removed). Standard library only.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNIT = (
    '[exec]\ncommand = ["sleep", "86400"]\n'
    '[restart]\npolicy = "always"\ndelay = "0"\nmax-delay = "0"\n'
    'start-limit-burst = 1000000\nstart-limit-interval = "1s"\n'
)


def children(pid):
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def run_ns(pid):
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def leftover_cgroups(root):
    return [p for p in Path("/sys/fs/cgroup").glob(f"*{root}") if p.is_dir()]


def one(binary, n, kills, root):
    """Microseconds of corral's CPU per restart, one turn."""
    d = Path(tempfile.mkdtemp(prefix="corral-restart-cpu-"))
    units = d / "units"
    units.mkdir()
    for i in range(n):
        (units / f"s{i:04d}.toml").write_text(UNIT)
    p = subprocess.Popen(
        [binary, "run", str(units), "--socket", str(d / "ctl.sock"), "--cgroup-root", root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(children(p.pid)) < n:
            if p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{binary}: not all {n} units ran")
            time.sleep(0.05)
        time.sleep(2)
        before = run_ns(p.pid)
        for _ in range(kills):
            os.kill(children(p.pid)[0], signal.SIGKILL)
            time.sleep(0.02)
        time.sleep(1)
        after = run_ns(p.pid)
        if len(children(p.pid)) != n:
            raise SystemExit(f"{binary}: {len(children(p.pid))} children after the kills, not {n}")
        return (after - before) / kills / 1000
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait()
        shutil.rmtree(d)
        for left in leftover_cgroups(root):
            print(f"corral left {left}: removed", file=sys.stderr)
            for sub in sorted(left.rglob("*"), reverse=True):
                if sub.is_dir():
                    sub.rmdir()
            left.rmdir()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("binaries", nargs="+", help="NAME=PATH")
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.binaries]
    turns = {name: [] for name, _ in bins}
    for r in range(args.rounds):
        for name, path in bins if r % 2 == 0 else list(reversed(bins)):
            root = f"/corral-restart-cpu-{os.getpid()}-{r}-{name}"
            turns[name].append(round(one(path, args.n, args.kills, root), 1))
    print(json.dumps({
        "n": args.n, "kills": args.kills, "load_average": os.getloadavg(),
        "us_per_restart": turns,
        "median": {name: statistics.median(v) for name, v in turns.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
