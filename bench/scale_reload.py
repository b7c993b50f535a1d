#!/usr/bin/env python3
"""The reload row of bench/scale.py (`reload of one changed file among N`, disabled units) for
several corral binaries in turns, in one run: `sudo bench/scale_reload.py --n 10000 --rounds 2
NAME=BINARY ...`. Each turn is bench/scale.py's whole `one(N, disabled)` (check, load, status,
metrics, top, then the reloads), so the reload is measured in the same state as there; prints
each turn's figures and the medians per binary as JSON on stdout.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("binaries", nargs="+", help="NAME=PATH")
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.binaries]
    out = {name: [] for name, _ in bins}
    for r in range(args.rounds):
        order = bins if r % 2 == 0 else list(reversed(bins))
        for name, path in order:
            s = scale.Scale(args, Path(path))
            try:
                one = s.one(args.n, False)
            finally:
                shutil.rmtree(s.work, ignore_errors=True)
            keep = {k: one[k] for k in ("reload_ms", "floor_scan_ms", "check_ms", "load_ms",
                                         "rss_kib", "anon_kib") if k in one}
            keep["loadavg"] = os.getloadavg()
            scale.log(f"{name} round {r}: {json.dumps(keep)}")
            out[name].append(keep)
    summary = {}
    for name, runs in out.items():
        rel = [x for run in runs for x in run["reload_ms"]]
        flo = [x for run in runs for x in run["floor_scan_ms"]]
        summary[name] = {"reload_ms_median": statistics.median(rel),
                         "reload_ms_all": rel,
                         "floor_scan_ms_median": statistics.median(flo),
                         "anon_kib": [run.get("anon_kib") for run in runs]}
    print(json.dumps({"runs": out, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
