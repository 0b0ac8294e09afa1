"""The soak at a short size: a mixed load of warm calls, maps, HTTP, a schedule and a file trigger, with no errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).parents[2] / "benchmarks" / "soak.py"
SECONDS = float(os.environ.get("FAAS_SOAK_SECONDS", "10"))


@pytest.mark.timeout(600)
def test_a_short_soak_has_no_errors_and_every_load_made_progress(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--sample-every", "1", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 300,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(figures.read_text())
    for load in result["loads"]:
        assert load["errors"] == 0, load
        assert load["per_second"] > 0 and load["p50_ms"] is not None, load
    assert result["schedule"]["ticks"] >= SECONDS // 2
    files = result["files"]
    assert files["dropped"] >= SECONDS and files["done"] == files["dropped"] and files["failed"] == 0
    assert len(result["samples"]) >= SECONDS // 2
    assert all(sample["soak_mb"] > 0 and sample["serve_mb"] > 0 for sample in result["samples"])
