"""Smoke test of the benchmark script: the tiny size runs end to end and reports every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import WASM_CACHE

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "run.py"
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


@pytest.mark.timeout(300)
def test_tiny_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "DASK_FAAS__RUNTIMES__WASM_CACHE": str(WASM_CACHE)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    report = json.loads(out.read_text())
    assert report["size"] == "tiny"
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
