"""A soak: a steady mixed load on jupyter-faas for minutes, reporting throughput, latency, errors and memory over time.

    python benchmarks/soak.py                 # the full size: 10 minutes
    python benchmarks/soak.py --seconds 30    # a short run (the test suite runs one)
    python benchmarks/soak.py --json soak.json

At once, for the whole run:
- warm calls: one blocking call at a time, from this process's embedded platform;
- maps: a map of 200 items every 2 s, on the same platform;
- HTTP: 8 connections posting to a `jupyter faas serve` of a generated notebook, each waiting for its answer;
- a schedule firing every second, and a file trigger fed a file every 0.5 s, in that serve.

Every answer is checked. Resident memory of this process and of serve (each with its workers and sandboxes) is
sampled throughout. It reports figures and asserts none; the exit status is 1 if any error was seen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nbformat
import psutil

CONNECTIONS = 8


@dataclass
class Load:
    """One workload's outcomes: latencies of its successes (ms), and its errors."""

    name: str
    # Compact (8 bytes a sample): a list of floats would itself grow the memory being measured.
    latencies: array = field(default_factory=lambda: array("d"))
    errors: list[str] = field(default_factory=list)
    units: int = 0  # calls made (a map counts its items)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, started: float, units: int = 1) -> None:
        with self.lock:
            self.latencies.append((time.perf_counter() - started) * 1000)
            self.units += units

    def failed(self, error: str) -> None:
        with self.lock:
            self.errors.append(error)

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def nearest(q: float) -> float | None:
            if not ordered:
                return None
            return ordered[min(len(ordered), max(1, round(q / 100 * len(ordered)))) - 1]

        return {
            "load": self.name,
            "per_second": self.units / seconds,
            "p50_ms": nearest(50),
            "p99_ms": nearest(99),
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
        }


def tree_rss(process: psutil.Process, leave_out: set[int] | frozenset[int] = frozenset()) -> int:
    """Resident memory of a process and all its descendants but those in `leave_out` (and theirs), in bytes."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            if member.pid in leave_out or member.ppid() in leave_out:
                continue
            total += member.memory_info().rss
    return total


def write_notebook(folder: Path, inbox: Path) -> Path:
    cells = [
        "%%faas echo x:int\nx",
        "%%faas ticker --every 1s\n'tick'",
        f"%%faas shout path --on-file {inbox} --pattern '*.txt'\nopen(path).read().upper()",
    ]
    path = folder / "soak.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)
    return path


def start_serve(notebook: Path, state: Path, token: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "DASK_FAAS__STATE_DIR": str(state), "JUPYTER_FAAS_TOKEN": token}
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_faas.cli", "serve", str(notebook), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r"function\(s\) of .* at (http://\S+/)", line)
        if found:
            # Keep reading its output, so a full pipe never blocks it.
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
            return process, found.group(1)
    stop(process)
    raise RuntimeError("jupyter faas serve did not start")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def run(seconds: float, sample_every: float) -> dict[str, Any]:
    import jupyter_faas
    from jupyter_faas.client import function as _function

    _function.PROGRESS_AFTER = float("inf")  # a map's progress bar would only clutter the report

    @jupyter_faas.function(name="soak_work")
    def work(x: int) -> int:
        return 2 * x

    stop_event = threading.Event()
    warm, maps, http = Load("warm calls"), Load("maps (200 items)"), Load(f"HTTP, {CONNECTIONS} connections")

    def warm_calls() -> None:
        i = 0
        while not stop_event.is_set():
            started = time.perf_counter()
            try:
                if work(i) != 2 * i:
                    warm.failed(f"wrong result for {i}")
                else:
                    warm.ok(started)
            except Exception as e:
                warm.failed(f"{type(e).__name__}: {e}")
            i += 1

    def map_calls() -> None:
        while not stop_event.wait(2.0):
            started = time.perf_counter()
            try:
                if work.map(range(200)) != [2 * x for x in range(200)]:
                    maps.failed("wrong results")
                else:
                    maps.ok(started, 200)
            except Exception as e:
                maps.failed(f"{type(e).__name__}: {e}")

    with tempfile.TemporaryDirectory(prefix="faas-soak-") as folder_name:
        folder = Path(folder_name)
        inbox = folder / "inbox"
        inbox.mkdir()
        token = secrets.token_hex(16)
        serve, url = start_serve(write_notebook(folder, inbox), folder / "state", token)
        headers = {"Authorization": f"Bearer {token}"}
        dropped = 0

        load_generators: set[int] = set()

        def http_calls() -> None:
            # A process of its own: its threads must not share this one's interpreter lock with the calls above.
            client = subprocess.Popen(
                [sys.executable, __file__, "--http-client", url, token, str(seconds)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "JUPYTER_FAAS_TOKEN": ""},
            )
            load_generators.add(client.pid)  # measuring equipment: left out of the memory figures
            stdout, stderr = client.communicate()
            try:
                measured = json.loads(stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                http.failed(f"the HTTP client failed: {stderr[-2000:]}")
                return
            http.latencies = array("d", measured["latencies"])
            http.errors, http.units = measured["errors"], measured["units"]

        def drop_files() -> None:
            nonlocal dropped
            while not stop_event.wait(0.5):
                (inbox / f"{dropped:06d}.txt").write_text(f"file {dropped}")
                dropped += 1

        samples: list[dict[str, Any]] = []
        me, serving = psutil.Process(), psutil.Process(serve.pid)

        def sample() -> None:
            began = time.monotonic()
            while True:
                samples.append(
                    {
                        "t": round(time.monotonic() - began, 1),
                        "soak_mb": tree_rss(me, load_generators) / 2**20,
                        "serve_mb": tree_rss(serving) / 2**20,
                        "calls": warm.units + maps.units + http.units,
                    }
                )
                if stop_event.wait(sample_every):
                    return

        threads = [
            threading.Thread(target=warm_calls, daemon=True),
            threading.Thread(target=map_calls, daemon=True),
            threading.Thread(target=drop_files, daemon=True),
            threading.Thread(target=sample, daemon=True),
            threading.Thread(target=http_calls, daemon=True),
        ]
        began = time.monotonic()
        try:
            for thread in threads:
                thread.start()
            stop_event.wait(seconds)
        finally:
            stop_event.set()
            for thread in threads:
                thread.join(timeout=120)
            elapsed = time.monotonic() - began
            try:
                with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                    # The last files dropped get a few seconds to be handled.
                    deadline = time.monotonic() + 30
                    while True:
                        listed = {t["id"]: t for t in client.get("faas/api/triggers").json()["triggers"]}
                        file_trigger = listed["shout.file"]
                        if file_trigger.get("files_done", 0) >= dropped or time.monotonic() > deadline:
                            break
                        time.sleep(0.2)
                    ticks = client.get("faas/api/functions/ticker").json()["stats"]["invocations"]
                    shouts = client.get("faas/api/functions/shout").json()["stats"]
            finally:
                stop(serve)
                jupyter_faas.platform().shutdown()

    quarter = max(1, len(samples) // 4)

    def growth(key: str) -> dict[str, float]:
        first = statistics.median(s[key] for s in samples[:quarter])
        last = statistics.median(s[key] for s in samples[-quarter:])
        return {"first_quarter_mb": first, "last_quarter_mb": last, "peak_mb": max(s[key] for s in samples)}

    return {
        "seconds": elapsed,
        "loads": [load.summary(elapsed) for load in (warm, maps, http)],
        "schedule": {"ticks": ticks, "expected_about": int(elapsed)},
        "files": {
            "dropped": dropped,
            "done": file_trigger.get("files_done", 0),
            "failed": file_trigger.get("files_failed", 0),
            "errors": shouts["errors"],
        },
        "memory": {"soak": growth("soak_mb"), "serve": growth("serve_mb")},
        "samples": samples,
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"soak of {result['seconds']:.0f} s on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", ""]
    lines.append(f"{'load':<22} {'per second':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for load in result["loads"]:
        p50 = "-" if load["p50_ms"] is None else f"{load['p50_ms']:.2f}"
        p99 = "-" if load["p99_ms"] is None else f"{load['p99_ms']:.2f}"
        lines.append(f"{load['load']:<22} {load['per_second']:>11,.1f} {p50:>8} {p99:>8} {load['errors']:>7}")
    files, schedule = result["files"], result["schedule"]
    lines += [
        "",
        f"schedule: {schedule['ticks']} ticks in {result['seconds']:.0f} s (every 1 s)",
        f"file trigger: {files['dropped']} dropped, {files['done']} done, {files['failed']} failed",
        "",
        "resident memory (MB)   first quarter  last quarter    peak",
    ]
    for who, label in (("soak", "this process + workers"), ("serve", "serve + workers")):
        m = result["memory"][who]
        lines.append(f"{label:<22} {m['first_quarter_mb']:>13.0f} {m['last_quarter_mb']:>13.0f} {m['peak_mb']:>7.0f}")
    for load in result["loads"]:
        if load["first_error"]:
            lines.append(f"first error of {load['load']}: {load['first_error']}")
    return "\n".join(lines)


def http_client(url: str, token: str, seconds: float) -> None:
    """CONNECTIONS threads posting to serve for `seconds`, each waiting for its answer; prints a JSON summary."""
    load = Load("http")
    deadline = time.monotonic() + seconds

    def connection(first: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            i = first
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    answer = client.post("faas/functions/echo", json={"x": i})
                    if answer.status_code != 200 or answer.json() != i:
                        load.failed(f"{answer.status_code}: {answer.text[:200]}")
                    else:
                        load.ok(started)
                except Exception as e:
                    load.failed(f"{type(e).__name__}: {e}")
                i += CONNECTIONS

    threads = [threading.Thread(target=connection, args=(c,)) for c in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"latencies": load.latencies.tolist(), "errors": load.errors, "units": load.units}))


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--http-client":
        http_client(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the load runs (default 600)")
    parser.add_argument("--sample-every", type=float, default=None, help="memory sampling interval, s")
    parser.add_argument("--json", type=Path, help="also write the figures, samples included, here")
    args = parser.parse_args()
    sample_every = args.sample_every or max(1.0, args.seconds / 60)
    result = run(args.seconds, sample_every)
    print(report(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    errors = sum(load["errors"] for load in result["loads"]) + result["files"]["failed"] + result["files"]["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
