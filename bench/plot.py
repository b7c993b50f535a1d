#!/usr/bin/env python3
"""Draws bench/plots/*.png from results.json: one picture per workload, medians over N."""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["floor", "corral", "corral+limits", "tini", "dumb-init", "supervisord", "runit", "s6"]
STYLE = {
    "floor": dict(color="black", linestyle="--", marker="o"),
    "corral": dict(color="tab:red", linewidth=2.5, marker="o"),
    "corral+limits": dict(color="tab:red", linestyle=":", marker="x"),
    "tini": dict(color="tab:blue", marker="s"),
    "dumb-init": dict(color="tab:cyan", marker="s"),
    "supervisord": dict(color="tab:green", marker="^"),
    "runit": dict(color="tab:purple", marker="v"),
    "s6": dict(color="tab:orange", marker="D"),
}


def median_of(v, key=None):
    if isinstance(v, dict):
        v = v[key]
    return statistics.median(v) if isinstance(v, list) else v


def over_n(ax, data, key=None, scale=1.0):
    for sup in ORDER:
        if sup not in data:
            continue
        ns = sorted(int(n) for n in data[sup])
        ys = [median_of(data[sup][str(n)] if str(n) in data[sup] else data[sup][n], key) * scale
              for n in ns]
        ax.plot(ns, ys, label=sup, **STYLE[sup])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N units")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def main():
    doc = json.loads(Path(sys.argv[1]).read_text())
    res, out = doc["results"], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    meta = doc["meta"]
    foot = f"{meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}; {meta['date']}"
    figures = [
        ("cold_start.png", "Cold start: launch until all N sleeps run", "ms (median)", "cold", None, 1),
        ("restart.png", "Restart latency after SIGKILL (exit -> new exec)", "ms (median)",
         "restart", None, 1),
        ("shutdown.png", "Shutdown: signal until every process is gone", "ms (median)",
         "shutdown", None, 1),
        ("memory_main.png", "RSS of the main supervisor process", "MiB", "memory", "rss_main_kb",
         1 / 1024),
        ("memory_all.png", "RSS of all supervisor processes", "MiB", "memory", "rss_all_kb",
         1 / 1024),
    ]
    for name, title, ylabel, key, sub, scale in figures:
        if not res.get(key):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        over_n(ax, res[key], sub, scale)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        fig.text(0.01, 0.01, foot, fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    burst = {s: v for s, v in res.get("burst", {}).items() if v}
    if burst:
        sups = [s for s in ORDER if s in burst]
        ms = [statistics.median(x["reap_ms"] for x in burst[s]) for s in sups]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        bars = ax.bar(sups, ms, color=[STYLE[s]["color"] for s in sups])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms until all reaped (median)")
        ax.set_title("PID-1 zombie burst: orphans killed at once")
        fig.text(0.01, 0.01, foot, fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / "zombie_burst.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
