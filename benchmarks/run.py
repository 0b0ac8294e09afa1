"""jupyter-faas beside plain distributed, a process pool and the in-process call, in one run on one machine.

    python benchmarks/run.py [--size tiny|default|full] [--repeat N] [--json PATH]

--repeat N runs every measurement N times in one process and prints the median and the min-max of each
figure and of each ratio, with the load average before and after and the machine's facts.

Prints one table: warm invocation p50/p99, map throughput, cold start from zero workers and the idle
platform's resident memory, with the ratio jupyter-faas / plain distributed for each row. It reports
figures only and asserts none. Every cluster and pool it starts is shut down, also on error.

Work stays under `if __name__ == "__main__":` and module-level imports stay light: worker processes
start with forkserver and import this module.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform as python_platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

MB = 2**20
# Sleep after the platform reports zero workers, before a cold trial: the keep-alive thread finishes
# its retirement (and releases the invocations it holds) a moment after the worker count reaches zero.
SETTLE_S = 0.5
# No single call may hang the benchmark: a cold call that takes longer than this counts as failed.
CALL_TIMEOUT_S = 120.0
SCALE_DEADLINE_S = 60.0
WORKERS = 2
COLUMNS = ("jupyter_faas", "plain_distributed", "processpool", "in_process")
HEADINGS = {
    "jupyter_faas": "jupyter-faas",
    "plain_distributed": "plain distributed",
    "processpool": "ProcessPool(2)",
    "in_process": "in-process",
}
ROWS = (
    ("warm_p50_ms", "warm call p50 (ms)"),
    ("warm_p99_ms", "warm call p99 (ms)"),
    ("map_calls_per_s", "map throughput (calls/s)"),
    ("cold_start_ms", "cold start, 0 workers -> result (ms)"),
    ("idle_memory_mb", "idle memory at 0 workers, net (MB)"),
)


@dataclass(frozen=True)
class Size:
    warm: int
    map_items: int
    plain_map_items: int
    cold_trials: int


SIZES = {
    "tiny": Size(warm=30, map_items=200, plain_map_items=200, cold_trials=1),
    "default": Size(warm=300, map_items=5000, plain_map_items=5000, cold_trials=3),
    "full": Size(warm=1000, map_items=100_000, plain_map_items=20_000, cold_trials=5),
}


def _square(x: int) -> int:
    return x * x


# -- measuring ---------------------------------------------------------------------------------------


def percentile(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, -(-len(sorted_samples) * q // 100))
    return sorted_samples[min(int(rank), len(sorted_samples)) - 1]


def latency_figures(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(s * 1000 for s in samples_s)
    return {"warm_p50_ms": statistics.median(ordered), "warm_p99_ms": percentile(ordered, 99)}


def time_calls(call: Callable[[int], Any], n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - start)
    return samples


def time_map(run: Callable[[int], list[Any]], n: int) -> float:
    """Calls per second of `run(n)`, which must return the squares of range(n)."""
    start = time.perf_counter()
    results = run(n)
    elapsed = time.perf_counter() - start
    if len(results) != n or results[-1] != (n - 1) ** 2 or sum(results) != sum(i * i for i in range(n)):
        raise RuntimeError("map returned wrong results")
    return n / elapsed


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def rss_now() -> int:
    return psutil.Process().memory_info().rss


def children_rss() -> list[dict[str, Any]]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            found.append({"pid": child.pid, "rss_mb": child.memory_info().rss / MB, "cmdline": cmdline[:160]})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def worker_processes() -> list[psutil.Process]:
    """Workers and sandboxes under this process: processes the forkserver forked, and what they started.

    A forked worker has the forkserver's own command line, so it is told apart by its parent."""
    me = psutil.Process()
    found = []
    for child in me.children(recursive=True):
        try:
            if child.ppid() != me.pid:
                found.append(child)
        except psutil.Error:
            continue
    return found


def describe_child(cmdline: str) -> str:
    for marker, label in (
        ("forkserver", "forkserver"),
        ("resource_tracker", "resource tracker"),
        ("jupyter_faas.worker.sandbox", "sandbox"),
        ("spawn_main", "worker"),
    ):
        if marker in cmdline:
            return label
    return cmdline.split(" ")[0] or "?"


# -- the phases --------------------------------------------------------------------------------------


def bench_in_process(size: Size) -> dict[str, Any]:
    figures = latency_figures(time_calls(_square, size.warm))
    figures["map_calls_per_s"] = time_map(lambda n: list(map(_square, range(n))), size.map_items)
    figures["map_items"] = size.map_items
    return figures


def bench_processpool(size: Size) -> dict[str, Any]:
    pool = ProcessPoolExecutor(WORKERS)
    try:
        for future in [pool.submit(_square, i) for i in range(4 * WORKERS)]:
            future.result()
        figures = latency_figures(time_calls(lambda i: pool.submit(_square, i).result(), size.warm))
        figures["map_calls_per_s"] = time_map(lambda n: list(pool.map(_square, range(n), chunksize=1)), size.map_items)
        figures["map_items"] = size.map_items
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return figures


def idle_memory(p: Any, driver_before: int) -> dict[str, Any]:
    """RSS of this process and of its children that remain once the platform is at zero workers."""
    wait_for_zero(p)
    # At zero workers, a retired worker process can still be on its way out for a moment (its nanny is gone from
    # the cluster first): measured with it, the idle figure would count a whole worker.
    wait_until(lambda: not worker_processes(), SCALE_DEADLINE_S)
    driver = rss_now()
    children = children_rss()
    children_mb = sum(c["rss_mb"] for c in children)
    total_mb = driver / MB + children_mb
    return {
        "workers": p.workers,
        "driver_before_platform_mb": driver_before / MB,
        "driver_mb": driver / MB,
        "children": children,
        "children_mb": children_mb,
        "total_mb": total_mb,
        "net_mb": total_mb - driver_before / MB,
    }


def wait_for_zero(p: Any) -> None:
    if not wait_until(lambda: p.workers == 0, SCALE_DEADLINE_S):
        raise RuntimeError(f"the platform still had {p.workers} workers after {SCALE_DEADLINE_S:.0f}s")
    # The keep-alive thread ends its retirement a moment after the count reaches zero; a call submitted
    # before that is held by the platform, so step around that window.
    time.sleep(SETTLE_S)


def cold_trial(p: Any, square: Any) -> dict[str, Any]:
    wait_for_zero(p)
    workers_before = p.workers
    start = time.perf_counter()
    future = square.submit(3)
    try:
        value = future.result(timeout=CALL_TIMEOUT_S)
    except TimeoutError:
        future.cancel()
        return {"ok": False, "workers_before": workers_before, "error": f"no result in {CALL_TIMEOUT_S:.0f}s"}
    elapsed_ms = (time.perf_counter() - start) * 1000
    record = square.invocations[-1]
    return {
        "ok": value == 9,
        "ms": elapsed_ms,
        "workers_before": workers_before,
        "cold_start": record.cold_start,
        "queued_ms": record.queued_ms,
        "latency_ms": record.latency_ms,
    }


def bench_platform(size: Size, driver_before: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """jupyter-faas warm, map, cold starts and idle memory; then plain distributed on the platform's cluster."""
    import dask

    import jupyter_faas
    from jupyter_faas import function

    # The platform re-reads the keep-alive on every tick: 1s where it must scale to zero, 10 minutes
    # where it must not, plain distributed's phases included (the platform does not see those tasks).
    keep_short, keep_long = {"faas.cluster.idle-timeout": "1s"}, {"faas.cluster.idle-timeout": "10 minutes"}
    dask.config.set({**keep_short, "faas.cluster.maximum": WORKERS})
    square = function(timeout="30s", name="square")(_square)
    faas: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    p = jupyter_faas.platform()
    faas["slots_per_worker"] = dask.config.get("faas.cluster.slots-per-worker")
    try:
        start = time.perf_counter()
        square(1)
        faas["first_call_after_platform_start_ms"] = (time.perf_counter() - start) * 1000
        memory["after_first_call"] = idle_memory(p, driver_before)

        dask.config.set(keep_long)
        square(1)
        faas.update(latency_figures(time_calls(square, size.warm)))
        faas["warm_calls_marked_cold"] = sum(r.cold_start for r in square.invocations[-size.warm :])
        faas["map_calls_per_s"] = time_map(lambda n: square.map(range(n)), size.map_items)
        faas["map_items"] = size.map_items
        faas["map_calls_marked_cold"] = sum(r.cold_start for r in square.invocations[-size.map_items :])

        dask.config.set(keep_short)
        trials = [cold_trial(p, square) for _ in range(size.cold_trials)]
        faas["cold_trials"] = trials
        good = [t["ms"] for t in trials if t["ok"]]
        faas["cold_start_ms"] = statistics.median(good) if good else None
        faas["stats"] = square.stats()
        memory.update(idle_memory(p, driver_before))
        faas["idle_memory_mb"] = memory["net_mb"]
        faas["idle_memory_total_mb"] = memory["total_mb"]

        dask.config.set(keep_long)
        square.map(range(4 * WORKERS))  # demand for every worker
        if not wait_until(lambda: p.workers >= WORKERS, SCALE_DEADLINE_S):
            print(f"note: only {p.workers} of {WORKERS} workers up for plain distributed", file=sys.stderr)
        plain["workers"] = p.workers
        client = p.client
        client.submit(_square, 1, pure=False).result()
        plain.update(latency_figures(time_calls(lambda i: client.submit(_square, i, pure=False).result(), size.warm)))

        def plain_map(n: int) -> list[int]:
            futures = client.map(_square, range(n), pure=False)
            try:
                return client.gather(futures)
            finally:
                del futures[:]

        plain["map_calls_per_s"] = time_map(plain_map, size.plain_map_items)
        plain["map_items"] = size.plain_map_items
    finally:
        p.shutdown()
    return faas, plain, memory


def _warm_calls(size: Size, name: str, config: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Warm-call latency of `square` made with `options`, on a platform started under `config`."""
    import dask

    import jupyter_faas
    from jupyter_faas import function

    square = function(timeout="30s", name=name, **options)(_square)
    with dask.config.set({"faas.cluster.idle-timeout": "10 minutes", **config}):
        p = jupyter_faas.platform()
        try:
            square(1)
            square(1)
            return latency_figures(time_calls(square, size.warm))
        finally:
            p.shutdown()


def bench_log_off(size: Size) -> dict[str, Any]:
    """Warm calls on a platform with the durable log turned off, to set beside the main figures (log on)."""
    return _warm_calls(size, "square_log_off", {"faas.log.enabled": False})


def bench_nested(size: Size) -> dict[str, Any]:
    """Warm calls of `square` from the notebook, and of a function that calls `square` inside, on one platform."""
    import dask

    import jupyter_faas
    from jupyter_faas import function

    square = function(timeout="30s", name="square_leaf")(_square)

    def call_square(x: int) -> int:
        return int(square(x))

    caller = function(timeout="30s", name="square_caller")(call_square)
    with dask.config.set({"faas.cluster.idle-timeout": "10 minutes"}):
        p = jupyter_faas.platform()
        try:
            for _ in range(3):  # the first call a sandbox makes imports the client there
                caller(1)
                square(1)
            top = latency_figures(time_calls(square, size.warm))
            nested = latency_figures(time_calls(caller, size.warm))
            child_latencies = sorted(r.latency_ms / 1000 for r in square.invocations if r.parent is not None)
            return {"top": top, "caller": nested, "child": latency_figures(child_latencies[-size.warm :])}
        finally:
            p.shutdown()


def bench_plain_cold(trials: int, method: str) -> dict[str, Any]:
    """An adaptive LocalCluster from zero workers to the first result, as the reference measures it."""
    import dask
    from distributed import Client, LocalCluster

    samples: list[float] = []

    def at_zero() -> bool:
        return not cluster.scheduler_info["workers"]

    # The platform sets distributed's start method for the whole process; pin the one asked for here.
    with dask.config.set({"distributed.worker.multiprocessing-method": method}), warnings.catch_warnings():
        # dashboard_address=None, as in the reference, means the default port; taken is fine.
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True, dashboard_address=None)
        try:
            cluster.adapt(minimum=0, maximum=WORKERS, interval="100ms", wait_count=10)
            client = Client(cluster, set_as_default=False)
            try:
                for _ in range(trials):
                    if not wait_until(at_zero, SCALE_DEADLINE_S):
                        raise RuntimeError("the adaptive LocalCluster did not go back to zero workers")
                    start = time.perf_counter()
                    client.submit(_square, 3, pure=False).result(timeout=CALL_TIMEOUT_S)
                    samples.append((time.perf_counter() - start) * 1000)
                # Closing with a worker still up makes it log a failed heartbeat; let adapt retire it first.
                wait_until(at_zero, SCALE_DEADLINE_S)
            finally:
                client.close()
        finally:
            cluster.close()
    return {"cold_start_ms": statistics.median(samples), "cold_trials_ms": samples, "start_method": method}


# -- reporting ---------------------------------------------------------------------------------------


def bench_fresh(size: Size) -> dict[str, Any]:
    """Warm calls of a function with --isolation fresh (a process forked per call), beside the warm default."""
    return _warm_calls(size, "square_fresh", {}, isolation="fresh")


# The same task in every runtime: the SHA-256 of a short text, as hex.
RUNTIME_TEXT = "edge"
RUNTIME_CELLS = {
    "python sandbox": ("python", "import hashlib\nhashlib.sha256(text.encode()).hexdigest()"),
    "wasm": ("wasm", "import hashlib\nhashlib.sha256(text.encode()).hexdigest()"),
    "javascript": ("javascript", "return require('crypto').createHash('sha256').update(text).digest('hex');"),
    "bash": ("bash", 'printf %s "$text" | sha256sum | cut -d " " -f 1'),
}
RUNTIME_ROWS = (
    ("warm_p50_ms", "warm call p50 (ms)"),
    ("warm_p99_ms", "warm call p99 (ms)"),
    ("cold_start_ms", "cold start, 0 workers -> result (ms)"),
    ("new_process_ms", "cached artefact -> first result, new process (ms)"),
    ("init_p50_ms", "instantiation per call p50 (ms)"),
)
# Loads the cached compiled component in a new process and times it to the first result (interpreter start and
# imports excluded: a worker's sandbox has them already).
_NEW_PROCESS = """
import pickle, sys, time
import jupyter_faas.worker.runtimes.wasm
function = pickle.loads(sys.stdin.buffer.read())
began = time.perf_counter()
value = function(sys.argv[1])
print((time.perf_counter() - began) * 1000, value)
"""


def _runtime_function(label: str, runtime: str, cell: str) -> Any:
    from jupyter_faas.client.function import FaasFunction
    from jupyter_faas.definition.limits import Limits
    from jupyter_faas.definition.model import from_cell
    from jupyter_faas.definition.polyglot import from_lang_cell, from_wasm_cell

    limits = Limits(timeout=30.0, memory=256 * MB, retries=0, concurrency=None)
    name = "sha_" + label.split()[0]
    if runtime == "python":
        definition = from_cell(cell, {}, limits, name=name, params=["text"])
    elif runtime == "wasm":
        definition = from_wasm_cell(
            cell, {}, limits, name=name, params=["text"], on_progress=lambda text: print(f"... {text}", file=sys.stderr)
        )
    else:
        definition = from_lang_cell(cell, runtime, limits, name, ["text"])
    return FaasFunction(definition)


def bench_runtimes(size: Size) -> dict[str, dict[str, Any]]:
    """The same task in each runtime: warm calls, a cold start from zero workers; for wasm, instantiation per
    call and the load of its cached artefact in a new process."""
    import hashlib

    import cloudpickle
    import dask

    import jupyter_faas
    from jupyter_faas.worker import runtimes as _runtimes

    expected = hashlib.sha256(RUNTIME_TEXT.encode()).hexdigest()
    functions = {label: _runtime_function(label, *spec) for label, spec in RUNTIME_CELLS.items()}
    results: dict[str, dict[str, Any]] = {}
    with dask.config.set({"faas.cluster.idle-timeout": "1s"}):
        p = jupyter_faas.platform()
        try:
            for label, fn in functions.items():
                cold = []
                for _ in range(max(1, size.cold_trials)):
                    wait_for_zero(p)
                    start = time.perf_counter()
                    if fn(RUNTIME_TEXT) != expected:
                        raise RuntimeError(f"{label} computed a wrong hash")
                    cold.append((time.perf_counter() - start) * 1000)
                fn(RUNTIME_TEXT)
                results[label] = {
                    **latency_figures(time_calls(lambda _i, fn=fn: fn(RUNTIME_TEXT), size.warm)),
                    "cold_start_ms": statistics.median(cold),
                    "cold_trials_ms": cold,
                }
        finally:
            p.shutdown()
    # Instantiation per call, in this process (the sandbox does the same): a fresh Store and instance each.
    local = functions["wasm"]._definition.load()
    inits = []
    for _ in range(size.warm):
        local(RUNTIME_TEXT)
        if _runtimes.last_init_ms is not None:
            inits.append(_runtimes.last_init_ms)
    _runtimes.stop_all()
    results["wasm"]["init_p50_ms"] = statistics.median(inits)
    new_process = []
    for _ in range(max(1, size.cold_trials)):
        done = subprocess.run(
            [sys.executable, "-c", _NEW_PROCESS, RUNTIME_TEXT],
            input=cloudpickle.dumps(functions["wasm"]._definition.load()),
            capture_output=True,
            check=True,
            timeout=CALL_TIMEOUT_S,
        )
        ms, value = done.stdout.decode().split()
        if value != expected:
            raise RuntimeError("wasm in a new process computed a wrong hash")
        new_process.append(float(ms))
    results["wasm"]["new_process_ms"] = statistics.median(new_process)
    return results


def runtime_table(results: dict[str, dict[str, Any]]) -> str:
    columns = list(results)
    label_width = max(len(label) for _, label in RUNTIME_ROWS) + 2
    widths = [max(len(c), 10) + 2 for c in columns]
    lines = ["same task (sha256 of a short text)".ljust(label_width) + "".join(
        c.rjust(w) for c, w in zip(columns, widths, strict=True)
    )]  # fmt: skip
    lines.append("-" * len(lines[0]))
    for key, label in RUNTIME_ROWS:
        cells = "".join(fmt(results[c].get(key)).rjust(w) for c, w in zip(columns, widths, strict=True))
        lines.append(label.ljust(label_width) + cells)
    return "\n".join(lines)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 0.01:
        return f"{value:.2f}"
    return f"{value:.5f}"


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, _ in ROWS:
        faas, plain = results["jupyter_faas"].get(key), results["plain_distributed"].get(key)
        out[key] = faas / plain if faas is not None and plain else None
    return out


def table(results: dict[str, dict[str, Any]], ratio: dict[str, float | None]) -> str:
    label_width = max(len(label) for _, label in ROWS) + 2
    widths = [max(len(HEADINGS[c]), 10) + 2 for c in COLUMNS]
    lines = [
        "".ljust(label_width)
        + "".join(HEADINGS[c].rjust(w) for c, w in zip(COLUMNS, widths, strict=True))
        + "  faas/plain"
    ]
    lines.append("-" * len(lines[0]))
    for key, label in ROWS:
        cells = "".join(fmt(results[c].get(key)).rjust(w) for c, w in zip(COLUMNS, widths, strict=True))
        r = ratio[key]
        lines.append(label.ljust(label_width) + cells + ("-" if r is None else f"{r:.2f}x").rjust(11))
    return "\n".join(lines)


def git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when the package has uncommitted changes; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "jupyter_faas"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    import dask
    import distributed

    import jupyter_faas

    return {
        "cpu_count": os.cpu_count(),
        "python": python_platform.python_version(),
        "implementation": python_platform.python_implementation(),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "jupyter_faas": jupyter_faas.__version__,
        "jupyter_faas_commit": git_commit(),
        "platform": python_platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def notes(size: Size, report: dict[str, Any]) -> list[str]:
    faas, plain = report["results"]["jupyter_faas"], report["results"]["plain_distributed"]
    memory = report["memory"]
    lines = []
    for i, trial in enumerate(faas["cold_trials"], 1):
        if trial["ok"]:
            lines.append(
                f"jupyter-faas cold trial {i}: {trial['ms']:.1f} ms, workers before {trial['workers_before']}, "
                f"invocations[-1].cold_start={trial['cold_start']}, queued {fmt(trial['queued_ms'])} ms"
            )
        else:
            lines.append(f"jupyter-faas cold trial {i}: FAILED ({trial['error']})")
    lines.append(
        "plain distributed cold start: separate adaptive LocalCluster(n_workers=0), adapt(0..2, 100ms, wait_count=10), "
        f"start method {plain['cold_start_method']}, trials {', '.join(f'{t:.0f}' for t in plain['cold_trials_ms'])} ms"
    )
    forkserver = report["extra"].get("plain_cold_forkserver")
    if forkserver:
        lines.append(
            f"plain distributed cold start with forkserver (jupyter-faas's start method): "
            f"median {forkserver['cold_start_ms']:.0f} ms"
        )
    log_off = report["extra"].get("faas_warm_log_off")
    if log_off:
        lines.append(
            f"jupyter-faas warm call with the durable log on (the table): p50 {faas['warm_p50_ms']:.3f} ms, "
            f"p99 {faas['warm_p99_ms']:.3f} ms; with it off: p50 {log_off['warm_p50_ms']:.3f} ms, "
            f"p99 {log_off['warm_p99_ms']:.3f} ms"
        )
    fresh = report["extra"].get("faas_warm_fresh")
    if fresh:
        lines.append(
            f"jupyter-faas warm call with --isolation fresh (a process forked per call): p50 "
            f"{fresh['warm_p50_ms']:.3f} ms, p99 {fresh['warm_p99_ms']:.3f} ms; default warm isolation: p50 "
            f"{faas['warm_p50_ms']:.3f} ms"
        )
    nested = report["extra"].get("faas_nested")
    if nested:
        caller, top, child = nested["caller"], nested["top"], nested["child"]
        lines.append(
            "jupyter-faas nested call: a function whose body is square(x), warm p50 "
            f"{caller['warm_p50_ms']:.3f} ms (p99 {caller['warm_p99_ms']:.3f}), beside square called from here, "
            f"p50 {top['warm_p50_ms']:.3f} ms (p99 {top['warm_p99_ms']:.3f}); the inner call's own latency as its "
            f"platform saw it: p50 {child['warm_p50_ms']:.3f} ms"
        )
    children = ", ".join(f"{describe_child(c['cmdline'])} {c['rss_mb']:.1f}" for c in memory["children"])
    first = memory["after_first_call"]
    lines.append(
        f"idle memory right after the first call: net {first['net_mb']:.1f} MB "
        f"(driver {first['driver_mb']:.1f} MB + children {first['children_mb']:.1f} MB)"
    )
    lines.append(
        f"idle memory at {memory['workers']} workers after {faas['stats']['invocations']} invocations: "
        f"driver {memory['driver_mb']:.1f} MB + children "
        f"{memory['children_mb']:.1f} MB ({children or 'none'}) = {memory['total_mb']:.1f} MB total; "
        f"driver before the platform {memory['driver_before_platform_mb']:.1f} MB; "
        f"net {memory['net_mb']:.1f} MB (RSS, shared pages counted in each process)"
    )
    lines.append(
        f"jupyter-faas: {WORKERS} workers x {faas['slots_per_worker']} slots (sandbox processes); "
        "plain distributed warm/map ran on the same "
        f"cluster with {plain['workers']} workers; first call after platform start "
        f"{faas['first_call_after_platform_start_ms']:.0f} ms; calls recorded as cold_start: "
        f"{faas['warm_calls_marked_cold']} of {size.warm} warm, {faas['map_calls_marked_cold']} of {size.map_items} map"
    )
    if size.plain_map_items != size.map_items:
        lines.append(
            f"plain distributed map capped at {size.plain_map_items} items; jupyter-faas, the process pool "
            f"and in-process mapped {size.map_items}"
        )
    lines.append("ratio < 1 is better for times and memory; > 1 is better for throughput")
    return lines


# -- main --------------------------------------------------------------------------------------------


class Stopped(BaseException):
    """SIGTERM, raised in the main thread so that every finally block shuts its cluster or pool down."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise Stopped(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures, every run's, as JSON here")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="run every measurement N times (default 1)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat is at least 1")
    # The durable log stays on, as by default, but in a folder of its own rather than the user's.
    state_dir = tempfile.mkdtemp(prefix="faas-bench-state-")
    os.environ["DASK_FAAS__STATE_DIR"] = state_dir
    # WebAssembly builds (seconds each) are kept between runs, unless a cache is set already.
    wasm_cache = Path.home() / ".cache" / "jupyter-faas" / "bench-wasm"
    os.environ.setdefault("DASK_FAAS__RUNTIMES__WASM_CACHE", str(wasm_cache))
    try:
        return _run(args)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def one_run(size: Size, index: int, repeat: int) -> dict[str, Any]:
    """Every measurement once: the table's columns, the extra rows, the runtimes, with the load around them."""
    load_before = os.getloadavg()
    began = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str, run: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        print(f"... run {index}/{repeat}: {name}", file=sys.stderr, flush=True)
        try:
            return run()
        finally:
            phases[name] = round(time.perf_counter() - start, 2)

    in_process = phase("in-process", lambda: bench_in_process(size))
    # The pool forks: the first run makes it before the platform starts any thread in this process; later
    # runs fork from a process whose platform threads have ended with its shutdown.
    pool = phase("process pool", lambda: bench_processpool(size))
    driver_before = rss_now()
    faas, plain, memory = phase("jupyter-faas and plain distributed", lambda: bench_platform(size, driver_before))
    log_off = phase("jupyter-faas, durable log off", lambda: bench_log_off(size))
    fresh = phase("jupyter-faas, --isolation fresh", lambda: bench_fresh(size))
    nested = phase("jupyter-faas, a call made inside a function", lambda: bench_nested(size))
    runtimes = phase("runtimes: python sandbox, wasm, javascript, bash", lambda: bench_runtimes(size))
    cold = phase("plain distributed cold start", lambda: bench_plain_cold(size.cold_trials, "spawn"))
    cold_fs = phase(
        "plain distributed cold start, forkserver", lambda: bench_plain_cold(size.cold_trials, "forkserver")
    )
    plain["cold_start_ms"] = cold["cold_start_ms"]
    plain["cold_trials_ms"] = cold["cold_trials_ms"]
    plain["cold_start_method"] = cold["start_method"]
    results = {"jupyter_faas": faas, "plain_distributed": plain, "processpool": pool, "in_process": in_process}
    return {
        "results": results,
        "ratios_faas_over_plain": ratios(results),
        "memory": memory,
        "extra": {
            "plain_cold_forkserver": cold_fs,
            "faas_warm_log_off": log_off,
            "faas_warm_fresh": fresh,
            "faas_nested": nested,
        },
        "runtimes": runtimes,
        "phase_seconds": phases,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "elapsed_s": round(time.perf_counter() - began, 2),
    }


def summary_paths(runs: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
    """The figures that get a median and a range over the runs: (label, path into one run's report)."""
    paths: list[tuple[str, tuple[str, ...]]] = []
    for column in COLUMNS:
        for key, label in ROWS:
            paths.append((f"{HEADINGS[column]}: {label}", ("results", column, key)))
    for key, label in ROWS:
        paths.append((f"ratio faas/plain: {label}", ("ratios_faas_over_plain", key)))
    paths += [
        ("plain distributed, forkserver: cold start (ms)", ("extra", "plain_cold_forkserver", "cold_start_ms")),
        ("jupyter-faas, durable log off: warm call p50 (ms)", ("extra", "faas_warm_log_off", "warm_p50_ms")),
        ("jupyter-faas, --isolation fresh: warm call p50 (ms)", ("extra", "faas_warm_fresh", "warm_p50_ms")),
        ("jupyter-faas, nested call: caller p50 (ms)", ("extra", "faas_nested", "caller", "warm_p50_ms")),
        ("jupyter-faas, nested call: inner call p50 (ms)", ("extra", "faas_nested", "child", "warm_p50_ms")),
    ]
    for runtime in runs[0]["runtimes"]:
        for key, label in RUNTIME_ROWS:
            paths.append((f"runtime {runtime}: {label}", ("runtimes", runtime, key)))
    return paths


def dig(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = report
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max of one figure over the runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for label, path in summary_paths(runs):
        values = [float(v) for v in (dig(run, path) for run in runs) if isinstance(v, int | float)]
        if values:
            summary[label] = {"path": list(path), **spread(values), "values": values}
    return summary


def median_results(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The table's cells as the median over the runs."""
    out: dict[str, dict[str, Any]] = {}
    for column in COLUMNS:
        out[column] = {}
        for key, _ in ROWS:
            values = [v for v in (dig(r, ("results", column, key)) for r in runs) if isinstance(v, int | float)]
            out[column][key] = statistics.median(values) if values else None
    return out


def summary_table(summary: dict[str, dict[str, Any]], runs: int) -> str:
    width = max(len(label) for label in summary) + 2
    head = "figure".ljust(width) + "median".rjust(12) + "min".rjust(12) + "max".rjust(12) + "  runs"
    lines = [head, "-" * len(head)]
    for label, s in summary.items():
        cells = fmt(s["median"]).rjust(12) + fmt(s["min"]).rjust(12) + fmt(s["max"]).rjust(12)
        lines.append(label.ljust(width) + cells + f"  {s['n']}/{runs}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    size = SIZES[args.size]
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    began = time.perf_counter()
    load_before = os.getloadavg()
    runs = [one_run(size, i, args.repeat) for i in range(1, args.repeat + 1)]
    load_after = os.getloadavg()
    last = runs[-1]
    summary = summarise(runs)
    report: dict[str, Any] = {
        "size": args.size,
        "repeat": args.repeat,
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "parameters": asdict(size),
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": load_after},
        # The last run's sections, under the names they had before --repeat, so older readers keep working.
        "results": last["results"],
        "ratios_faas_over_plain": last["ratios_faas_over_plain"],
        "memory": last["memory"],
        "extra": last["extra"],
        "runtimes": last["runtimes"],
        "phase_seconds": last["phase_seconds"],
        "summary": summary,
        "runs": runs,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    m = report["machine"]
    plural = "s" if args.repeat > 1 else ""
    print(
        f"jupyter-faas benchmark, size {args.size}, {args.repeat} run{plural} (warm {size.warm} calls, map "
        f"{size.map_items} items, {size.cold_trials} cold trials): {m['date']}, {m['cpu_count']} CPUs, "
        f"{m['memory_gb']} GB, {m['platform']}, Python {m['python']}, dask {m['dask']}, "
        f"jupyter-faas {m['jupyter_faas']} ({m['jupyter_faas_commit'] or 'no git'})"
    )
    print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in load_after)
    )
    medians = median_results(runs)
    # The ratio column is the median of each run's own ratio (both sides measured under the same load), as
    # in the table below, not the ratio of the medians.
    median_ratios: dict[str, float | None] = {key: None for key, _ in ROWS}
    for spread_of in summary.values():
        if spread_of["path"][0] == "ratios_faas_over_plain":
            median_ratios[spread_of["path"][1]] = spread_of["median"]
    print(f"median of {args.repeat} run{plural}; faas/plain is the median of the runs' ratios:")
    print(table(medians, median_ratios))
    print()
    print(summary_table(summary, args.repeat))
    print()
    print(f"last run (load average {last['loadavg_before'][0]:.2f} before it):")
    for line in notes(size, report):
        print(f"  {line}")
    print()
    print(runtime_table(last["runtimes"]))
    print(f"  elapsed {report['elapsed_s']:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Stopped) as stop:
        # The finally blocks have shut every cluster and pool down by now. Stopped mid-map, the platform
        # can leave a callback thread waiting on its closed client, which would hang the interpreter's exit.
        print(f"stopped: {type(stop).__name__}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(stop.args[0] if isinstance(stop, Stopped) else 130)
