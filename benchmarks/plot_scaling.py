"""Draws the JSON of benchmarks/scaling.py as PNGs for the docs: workers, argument size and HTTP connections.

    python benchmarks/plot_scaling.py scaling.json [--out docs]

Each point is the median over the runs; the bars span the min-max. The title carries the date, the command and
the load average, so a figure never travels without the conditions it was measured under.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt

MB = 2**20


def _points(rows: dict[str, dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list[float], list[list[float]]]:
    medians, errors_low, errors_high = [], [], []
    for row in rows.values():
        s = row[key]
        medians.append(s["median"] / scale)
        errors_low.append((s["median"] - s["min"]) / scale)
        errors_high.append((s["max"] - s["median"]) / scale)
    return medians, [errors_low, errors_high]


def caption(report: dict[str, Any]) -> str:
    m = report["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["loadavg_before"])
    loaded = (
        " MEASURED UNDER LOAD (load average above the CPU count)." if m["loadavg_before"][0] > m["cpu_count"] else ""
    )
    return f"{m['date'][:16]} UTC, {m['cpu_count']} CPUs, load avg {load} before; {report['command']}.{loaded}"


def plot_workers(report: dict[str, Any], out: Path) -> Path:
    rows = report["summary"]["workers"]
    x = [int(w) for w in rows]
    y, err = _points(rows, "calls_per_s")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4)
    ax.set_xticks(x)
    ax.set_xlabel("workers (2 slots each), external dask cluster on one machine")
    ax.set_ylabel("map throughput (calls/s)")
    ax.set_ylim(bottom=0)
    ax.set_title("map of square: throughput against workers", fontsize=10)
    fig.text(0.01, 0.01, caption(report), fontsize=6)
    return _save(fig, out / "scaling-workers.png")


def plot_sizes(report: dict[str, Any], out: Path) -> Path:
    rows = report["summary"]["sizes"]
    labels = list(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    for key, name in (("faas_p50_ms", "jupyter-faas call"), ("floor_p50_ms", "plain socket echo (floor)")):
        y, err = _points(rows, key)
        left.errorbar(labels, y, yerr=err, marker="o", capsize=4, label=name)
    left.set_yscale("log")
    left.set_ylabel("round trip p50 (ms, log scale)")
    left.set_xlabel("argument and result size")
    left.legend(fontsize=8)
    for key, name in (("faas_bytes_per_s", "jupyter-faas call"), ("floor_bytes_per_s", "plain socket echo (floor)")):
        y, err = _points(rows, key, MB)
        right.errorbar(labels, y, yerr=err, marker="o", capsize=4, label=name)
    right.set_yscale("log")
    right.set_ylabel("MB/s, both directions (log scale)")
    right.set_xlabel("argument and result size")
    right.legend(fontsize=8)
    fig.suptitle("argument size: latency and bytes/s beside the loopback floor", fontsize=10)
    fig.text(0.01, 0.01, caption(report), fontsize=6)
    return _save(fig, out / "scaling-sizes.png")


def plot_http(report: dict[str, Any], out: Path) -> Path:
    rows = {c: r for c, r in report["summary"]["http"].items() if not c.startswith("_")}
    x = [int(c) for c in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name in (
        ("faas_p50_ms", "serve p50"),
        ("faas_p99_ms", "serve p99"),
        ("floor_p50_ms", "floor p50"),
        ("floor_p99_ms", "floor p99"),
    ):
        if all(key in r for r in rows.values()):
            y, err = _points(rows, key)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=name, linestyle="--" if "floor" in key else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(c) for c in x])
    ax.set_yscale("log")
    ax.set_xlabel("wrk connections")
    ax.set_ylabel("latency (ms, log scale)")
    ax.legend(fontsize=8)
    ax.set_title("jupyter faas serve: latency percentiles against connections", fontsize=10)
    fig.text(0.01, 0.01, caption(report), fontsize=6)
    return _save(fig, out / "scaling-http.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the JSON written by scaling.py --json")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    drawn = []
    for part, plot in (("workers", plot_workers), ("sizes", plot_sizes), ("http", plot_http)):
        if part in report["summary"]:
            drawn.append(plot(report, args.out))
    for path in drawn:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
