"""Smoke tests of the benchmark scripts: the tiny sizes run end to end, twice, and report every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import WASM_CACHE

# Benchmark scripts, not guarantees of the package: CI runs them in its second, `-m slow`, pass.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "run.py"
SCALING = ROOT / "benchmarks" / "scaling.py"
PLOT = ROOT / "benchmarks" / "plot_scaling.py"
ROW_LABELS = (
    "warm call p50 (ms)",
    "warm call p99 (ms)",
    "map throughput (calls/s)",
    "cold start, 0 workers -> result (ms)",
    "idle memory at 0 workers, net (MB)",
)


def _positive(section: dict[str, Any], key: str) -> float:
    value = section[key]
    assert isinstance(value, int | float) and value > 0, f"{key} = {value!r}"
    return float(value)


def _spread_is_sound(s: dict[str, Any], runs: int) -> None:
    assert s["n"] == runs == len(s["values"]), s
    assert s["min"] <= s["median"] <= s["max"], s
    assert s["min"] == min(s["values"]) and s["max"] == max(s["values"]), s


@pytest.mark.timeout(400)
def test_tiny_benchmark_runs_twice_and_reports_median_and_range(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--repeat", "2", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "DASK_FAAS__RUNTIMES__WASM_CACHE": str(WASM_CACHE)},
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    report = json.loads(out.read_text())
    assert report["size"] == "tiny"
    assert report["repeat"] == 2 and len(report["runs"]) == 2
    for key in ("loadavg_before", "loadavg_after"):
        assert len(report["machine"][key]) == 3
    assert "load average (1, 5, 15 min): before" in done.stdout
    # Every ratio and every figure of the table, the extra rows and the runtimes: a median and a range over
    # both runs, each run's value kept, and printed.
    summary = report["summary"]
    for key in ("warm_p50_ms", "warm_p99_ms", "map_calls_per_s", "cold_start_ms"):
        label = next(label for label, s in summary.items() if s["path"] == ["ratios_faas_over_plain", key])
        _spread_is_sound(summary[label], 2)
        assert summary[label]["values"] == [run["ratios_faas_over_plain"][key] for run in report["runs"]]
    for label in (
        "jupyter-faas: warm call p50 (ms)",
        "plain distributed: map throughput (calls/s)",
        "jupyter-faas, nested call: caller p50 (ms)",
        "jupyter-faas, durable log off: warm call p50 (ms)",
        "runtime wasm: warm call p50 (ms)",
        "runtime bash: cold start, 0 workers -> result (ms)",
    ):
        _spread_is_sound(summary[label], 2)
    lines = done.stdout.splitlines()
    for label in summary:
        printed = [line for line in lines if line.startswith(label + " ")]
        assert printed and printed[0].split()[-1] == "2/2", (label, printed)
    assert sum(1 for line in lines if line.startswith("ratio faas/plain: ")) == 4
    for key in ("cpu_count", "python", "dask", "date"):
        assert report["machine"][key]
    results = report["results"]
    assert set(results) == {"jupyter_faas", "plain_distributed", "processpool", "in_process"}

    faas, plain = results["jupyter_faas"], results["plain_distributed"]
    for key in ("warm_p50_ms", "warm_p99_ms", "map_calls_per_s", "cold_start_ms", "idle_memory_mb"):
        _positive(faas, key)
    assert _positive(faas, "warm_p99_ms") >= _positive(faas, "warm_p50_ms")
    assert len(faas["cold_trials"]) == 1
    for key in ("warm_p50_ms", "warm_p99_ms", "map_calls_per_s", "cold_start_ms"):
        _positive(plain, key)
    for section in (results["processpool"], results["in_process"]):
        for key in ("warm_p50_ms", "warm_p99_ms", "map_calls_per_s"):
            _positive(section, key)
    for key in ("warm_p50_ms", "warm_p99_ms", "map_calls_per_s", "cold_start_ms"):
        _positive(report["ratios_faas_over_plain"], key)
    memory = report["memory"]
    assert memory["workers"] == 0
    assert memory["total_mb"] > memory["driver_before_platform_mb"] > 0

    for heading in ("jupyter-faas", "plain distributed", "ProcessPool(2)", "in-process", "faas/plain", *ROW_LABELS):
        assert heading in done.stdout

    # The runtimes, on the same task: every one answered, warm and cold; wasm's start-up figures too.
    runtimes = report["runtimes"]
    assert set(runtimes) == {"python sandbox", "wasm", "javascript", "bash"}
    for section in runtimes.values():
        for key in ("warm_p50_ms", "warm_p99_ms", "cold_start_ms"):
            _positive(section, key)
    _positive(runtimes["wasm"], "init_p50_ms")
    _positive(runtimes["wasm"], "new_process_ms")
    for label in ("same task (sha256 of a short text)", "instantiation per call p50 (ms)"):
        assert label in done.stdout


@pytest.mark.timeout(300)
def test_tiny_scaling_runs_twice_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    done = subprocess.run(
        [sys.executable, str(SCALING), "--size", "tiny", "--repeat", "2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert set(summary) == {"workers", "sizes", "records", "stages", "http"}
    for part, runs in report["runs"].items():
        assert len(runs) == 2, part

    # Every worker count ran its map on that many external workers.
    for workers, row in summary["workers"].items():
        _spread_is_sound({**row["calls_per_s"], "n": 2}, 2)
        assert row["workers_used"]["values"] == [int(workers)] * 2
    # Each size beside its floor; the floor is a plain socket, so it moves the bytes faster.
    for row in summary["sizes"].values():
        for key in ("faas_p50_ms", "floor_p50_ms", "faas_bytes_per_s", "floor_bytes_per_s"):
            assert row[key]["min"] > 0, (key, row)
    (records,) = summary["records"].values()
    assert records["records_in_memory"]["min"] > 2000
    assert records["log_bytes_per_invocation"]["min"] > 0
    stages = summary["stages"]
    whole = stages["whole call, as the caller times it"]["ms"]["median"]
    parts = [s["ms"]["median"] for label, s in stages.items() if not label.startswith((" ", "whole", "durable"))]
    assert all(p > 0 for p in parts) and sum(parts) <= whole * 1.5, stages
    for connections, row in summary["http"].items():
        if connections.startswith("_"):
            continue
        for key in ("faas_requests_per_s", "faas_p50_ms", "faas_p99_ms", "floor_p99_ms"):
            assert len(row[key]["values"]) == 2 and row[key]["min"] > 0, (connections, key, row)
    for title in ("external cluster", "floor p50 ms", "RSS MB per 100k", "stage", "conns"):
        assert title in done.stdout

    # The plots for the docs are drawn from that JSON.
    drawn = subprocess.run(
        [sys.executable, str(PLOT), str(out), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert drawn.returncode == 0, drawn.stderr
    for name in ("scaling-workers.png", "scaling-sizes.png", "scaling-http.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
