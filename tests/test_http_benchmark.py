"""Smoke test of the HTTP benchmark: `jupyter faas serve` and the floor answer under load, without errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Benchmark scripts, not guarantees of the package: CI runs them in its second, `-m slow`, pass.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "http_endpoints.py"


@pytest.mark.timeout(120)
def test_quick_http_benchmark_serves_faas_and_floor(tmp_path: Path) -> None:
    # wrk when it is on PATH, else the script's httpx fallback: either way the run must succeed.
    out = tmp_path / "http.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--targets", "faas,floor", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    report = json.loads(out.read_text())
    assert report["client"]["name"] == ("wrk" if shutil.which("wrk") else "httpx")
    assert report["connections"] == [1, 8]
    assert set(report["results"]) == {"faas", "floor"}
    for target in ("faas", "floor"):
        result = report["results"][target]
        assert result["status"] == "ok", result.get("reason")
        for connections in ("1", "8"):
            run = result["runs"][connections]
            assert "error" not in run, run
            assert run["requests_per_s"] > 0 and run["requests"] > 0, (target, connections, run)
            assert run["non_2xx"] == 0 and run["socket_errors"] == 0, (target, connections, run)
            assert 0 < run["p50_ms"] <= run["p99_ms"], (target, connections, run)
    assert report["ratios"]["faas/floor"]["8"] > 0
    assert report["ratios"]["faas/kernel_gateway"]["8"] is None
    for heading in ("jupyter faas serve", "bare Tornado handler (floor)", "jupyter-faas / floor", "req/s"):
        assert heading in done.stdout
