"""How jupyter-faas's cost grows: workers, argument size, records, HTTP connections, and a warm call's stages.

    python benchmarks/scaling.py [--size tiny|default] [--repeat N] [--parts workers,sizes,...] [--json PATH]

Parts (all by default):
  workers  map throughput against 1, 2 and 4 workers of an external `dask scheduler`/`dask worker` cluster
  sizes    latency and bytes/s of calls whose argument and result are 1 KB, 1 MB and 10 MB, beside the
           loopback floor: the same bytes echoed through a plain TCP socket on 127.0.0.1, in the same run
  records  the notebook process's resident memory per 100,000 recorded invocations, durable-log bytes per one
  stages   where a warm call's time goes: client, wire, worker and sandbox, record, log (from the records'
           timestamps and stand-alone measurements; nothing is added to the package's hot path)
  http     `jupyter faas serve` latency percentiles at 1, 8, 32 and 64 connections (benchmarks/http_endpoints.py,
           one server per target, each point loaded --repeat times)

Each part runs --repeat times; every figure is printed as the median with the min-max. Reports, asserts nothing.
Every cluster, platform and server it starts is shut down, also on error. `plot_scaling.py` draws the JSON.
Module-level imports stay light, as in run.py: worker processes start with forkserver and import this module.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform as python_platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
KB, MB = 2**10, 2**20
DASK = str(Path(sys.executable).parent / "dask")
START_DEADLINE_S = 90.0
PARTS = ("workers", "sizes", "records", "stages", "http")


@dataclass(frozen=True)
class Size:
    worker_counts: tuple[int, ...]
    map_items: int
    payloads: tuple[int, ...]
    calls_per_payload: tuple[int, ...]
    recorded: int
    warm: int
    http_connections: tuple[int, ...]
    http_seconds: int


SIZES = {
    "tiny": Size(
        worker_counts=(1, 2),
        map_items=200,
        payloads=(KB, MB),
        calls_per_payload=(5, 3),
        recorded=2_000,
        warm=30,
        http_connections=(1, 8),
        http_seconds=1,
    ),
    "default": Size(
        worker_counts=(1, 2, 4),
        map_items=5_000,
        payloads=(KB, MB, 10 * MB),
        calls_per_payload=(100, 30, 10),
        recorded=100_000,
        warm=300,
        http_connections=(1, 8, 32, 64),
        http_seconds=8,
    ),
}


def _square(x: int) -> int:
    return x * x


def _echo(data: bytes) -> bytes:
    return bytes(data)


# -- helpers -----------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 0.01:
        return f"{value:.2f}"
    return f"{value:.4f}"


def cell(s: dict[str, Any] | None) -> str:
    """A median and its range, "1.23 (1.10-1.40)"; one value when every run gave the same."""
    if s is None:
        return "-"
    if len(s["values"]) == 1 or s["min"] == s["max"]:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


def print_table(title: str, head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) + 2 for i in range(len(head))]
    line = "".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(head))
    print(title)
    print(line)
    print("-" * len(line))
    for row in rows:
        print("".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
    print()


def combine(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Runs of {row: {figure: value}} as {row: {figure: spread over the runs}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in runs[0]:
        out[row] = {}
        for key in runs[0][row]:
            values = [float(r[row][key]) for r in runs if r.get(row, {}).get(key) is not None]
            if values:
                out[row][key] = spread(values)
    return out


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def platform_with(config: dict[str, Any]) -> Iterator[Any]:
    """A jupyter-faas platform under `config` (kept warm), shut down on the way out."""
    import dask

    import jupyter_faas

    with dask.config.set({"faas.cluster.idle-timeout": "10 minutes", **config}):
        p = jupyter_faas.platform()
        try:
            yield p
        finally:
            p.shutdown()


def faas_function(fn: Callable[..., Any], name: str) -> Any:
    from jupyter_faas import function

    return function(timeout="120s", name=name)(fn)


# -- the loopback floor ------------------------------------------------------------------------------


@contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """A thread that echoes what it reads on one TCP connection on 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while not stop.is_set():
                data = conn.recv(4 * MB)
                if not data:
                    return
                conn.sendall(data)

    thread = threading.Thread(target=serve, name="loopback-echo", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        stop.set()
        listener.close()


_FITS_IN_BUFFERS = 64 * 1024


def loopback_floor(payload: int, rounds: int) -> dict[str, float]:
    """Round-trip latency and bytes/s (sent + received) of echoing `payload` bytes through a plain socket."""
    data = os.urandom(payload)
    samples = []
    with echo_server() as address, socket.create_connection(address) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds + 1):
            start = time.perf_counter()
            # A large payload is sent from a thread of its own while this one reads: sending it all first
            # deadlocks once the echo's and this socket's buffers are full (10 MB did, now and then). A small one
            # fits in the buffers, and a thread's start would cost more than its round trip.
            sender: threading.Thread | None = None
            if payload > _FITS_IN_BUFFERS:
                sender = threading.Thread(target=conn.sendall, args=(data,), name="loopback-send", daemon=True)
                sender.start()
            else:
                conn.sendall(data)
            left = payload
            while left:
                chunk = conn.recv(min(left, 4 * MB))
                if not chunk:
                    raise RuntimeError("the loopback echo closed early")
                left -= len(chunk)
            if sender is not None:
                sender.join()
            samples.append(time.perf_counter() - start)
    samples = samples[1:]  # the first round opens the connection's buffers
    return {"p50_ms": statistics.median(samples) * 1000, "bytes_per_s": 2 * payload * len(samples) / sum(samples)}


# -- the parts ---------------------------------------------------------------------------------------


def spawn(command: list[str], folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, cwd=folder, env={**os.environ, "PYTHONPATH": ""}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group; SIGKILL what is left after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def external_cluster(workers: int) -> Iterator[str]:
    """`dask scheduler` and `workers` `dask worker` processes on 127.0.0.1, as tests/dispatch/test_external.py
    starts them; its address, and every process stopped on the way out."""
    from distributed import Client

    folder = Path(tempfile.mkdtemp(prefix="faas-scaling-cluster-"))
    scheduler_file = folder / "scheduler.json"
    started: list[subprocess.Popen[bytes]] = []
    try:
        command = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file"]
        started.append(spawn([*command, str(scheduler_file)], folder))
        wait_until(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, START_DEADLINE_S, "scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        for n in range(workers):
            command = [DASK, "worker", address, "--nthreads", "2", "--host", "127.0.0.1", "--no-dashboard",
                       "--name", f"scaling-{n}", "--memory-limit", "2GiB"]  # fmt: skip
            started.append(spawn(command, folder))
        with Client(address, timeout="30s") as client:
            wait_until(
                lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == workers,
                START_DEADLINE_S,
                f"{workers} workers",
            )
        yield address
    finally:
        for process in reversed(started):
            stop_group(process)
        shutil.rmtree(folder, ignore_errors=True)


def part_workers(size: Size) -> dict[str, dict[str, float]]:
    """map throughput of `square` on an external cluster of 1, 2, 4 workers (2 slots each)."""
    square = faas_function(_square, "scaling_square")
    rows: dict[str, dict[str, float]] = {}
    expected = [x * x for x in range(size.map_items)]
    for workers in size.worker_counts:
        print(f"... workers: {workers}", file=sys.stderr, flush=True)
        with external_cluster(workers) as address, platform_with({"faas.cluster.address": address}) as p:
            square.map(range(8 * workers))  # every worker's sandboxes warm
            start = time.perf_counter()
            if square.map(range(size.map_items)) != expected:
                raise RuntimeError("map returned wrong results")
            elapsed = time.perf_counter() - start
            used = {r.worker for r in square.invocations[-size.map_items :]}
            rows[str(workers)] = {
                "calls_per_s": size.map_items / elapsed,
                "workers_used": len(used),
                "workers_seen": p.workers,
            }
    return rows


def part_sizes(size: Size) -> dict[str, dict[str, float]]:
    """Calls whose argument and result are each `payload` bytes, beside a plain socket echo of the same bytes."""
    echo = faas_function(_echo, "scaling_echo")
    rows: dict[str, dict[str, float]] = {}
    with platform_with({}):
        echo(b"x")
        echo(b"x")
        for payload, calls in zip(size.payloads, size.calls_per_payload, strict=True):
            print(f"... sizes: {payload} bytes", file=sys.stderr, flush=True)
            data = os.urandom(payload)
            if echo(data) != data:
                raise RuntimeError("echo returned other bytes")
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                echo(data)
                samples.append(time.perf_counter() - start)
            floor = loopback_floor(payload, max(calls, 5))
            faas_rate = 2 * payload * calls / sum(samples)
            rows[label_bytes(payload)] = {
                "faas_p50_ms": statistics.median(samples) * 1000,
                "faas_bytes_per_s": faas_rate,
                "floor_p50_ms": floor["p50_ms"],
                "floor_bytes_per_s": floor["bytes_per_s"],
                "faas_over_floor": faas_rate / floor["bytes_per_s"],
            }
    return rows


def label_bytes(n: int) -> str:
    return f"{n // MB} MB" if n >= MB else f"{n // KB} KB"


def log_bytes(state_dir: Path) -> int:
    """The durable log's files: the database and its write-ahead log."""
    return sum(f.stat().st_size for f in state_dir.glob("invocations.sqlite*"))


def part_records(size: Size) -> dict[str, dict[str, float]]:
    """Resident memory of this process per 100,000 recorded invocations, and log bytes per invocation."""
    square = faas_function(_square, "scaling_recorded")
    state_dir = Path(tempfile.mkdtemp(prefix="faas-scaling-records-"))
    config = {"faas.state-dir": str(state_dir)}
    try:
        # A first platform writes the log's schema and a few rows: the baseline the map is measured over.
        with platform_with(config):
            square(1)
        log_before = log_bytes(state_dir)
        with platform_with(config):
            square(1)
            gc.collect()
            rss_before = psutil.Process().memory_info().rss
            done, batch = 0, 10_000
            while done < size.recorded:
                n = min(batch, size.recorded - done)
                square.map(range(n))
                done += n
            gc.collect()
            rss_after = psutil.Process().memory_info().rss
            kept = len(square.invocations)
        log_after = log_bytes(state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return {
        str(size.recorded): {
            "rss_mb_per_100k": (rss_after - rss_before) / MB * 100_000 / size.recorded,
            "log_bytes_per_invocation": (log_after - log_before) / size.recorded,
            "records_in_memory": kept,
        }
    }


def part_stages(size: Size) -> dict[str, dict[str, float]]:
    """Where a warm call's time goes, per stage, as medians over `size.warm` calls.

    The records hold the client's submission time, the sandbox's start and finish (wall clock, one machine)
    and the latency at the moment the result was concluded; the caller's own perf_counter brackets the rest.
    """
    import cloudpickle

    square = faas_function(_square, "scaling_stages")
    totals, outside, to_sandbox, in_sandbox, back = [], [], [], [], []
    with platform_with({}):
        for i in range(5):
            square(i)
        for i in range(size.warm):
            start = time.perf_counter()
            square(i)
            total = (time.perf_counter() - start) * 1000
            record = square.invocations[-1]
            if record.queued_ms is None or record.duration_ms is None:
                continue
            totals.append(total)
            outside.append(total - record.latency_ms)
            to_sandbox.append(record.queued_ms)
            in_sandbox.append(record.duration_ms)
            back.append(record.latency_ms - record.queued_ms - record.duration_ms)
    off = faas_function(_square, "scaling_stages_log_off")
    off_totals = []
    with platform_with({"faas.log.enabled": False}):
        for i in range(5):
            off(i)
        for i in range(size.warm):
            start = time.perf_counter()
            off(i)
            off_totals.append((time.perf_counter() - start) * 1000)
    packs = []
    for i in range(size.warm):
        start = time.perf_counter()
        cloudpickle.loads(cloudpickle.dumps(((i,), {})))
        packs.append((time.perf_counter() - start) * 1000)
    wire = loopback_floor(64, size.warm)["p50_ms"]
    median = statistics.median
    return {
        "whole call, as the caller times it": {"ms": median(totals)},
        "client: before submission and after the result (pack, record, return)": {"ms": median(outside)},
        "  of which pack + unpack of the arguments (cloudpickle, stand-alone)": {"ms": median(packs)},
        "dispatch -> wire -> worker -> sandbox, arguments loaded": {"ms": median(to_sandbox)},
        "  of which one loopback round trip (plain socket, 64 bytes)": {"ms": wire},
        "sandbox: run, pack the result, restore the process": {"ms": median(in_sandbox)},
        "sandbox end -> worker -> wire -> client, result concluded": {"ms": median(back)},
        "durable log: whole call with the log on minus off": {"ms": median(totals) - median(off_totals)},
    }


def part_http(size: Size, repeat: int) -> list[dict[str, dict[str, float]]]:
    """`jupyter faas serve` and the bare Tornado floor under wrk at each connection count; one server each,
    loaded `repeat` times at each count (http_endpoints.py --repeat), given back as one result per repeat."""
    with tempfile.TemporaryDirectory(prefix="faas-scaling-http-") as folder:
        out = Path(folder) / "http.json"
        connections = ",".join(str(c) for c in size.http_connections)
        command = [sys.executable, str(HERE / "http_endpoints.py"), "--targets", "faas,floor", "--connections",
                   connections, "--duration", str(size.http_seconds), "--warmup", str(size.http_seconds),
                   "--repeat", str(repeat), "--json", str(out)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"http_endpoints.py failed ({done.returncode}): {done.stderr[-2000:]}")
        report = json.loads(out.read_text())
    per_repeat = []
    for i in range(repeat):
        rows: dict[str, dict[str, float]] = {}
        for c in size.http_connections:
            row: dict[str, float] = {}
            for target in ("faas", "floor"):
                runs = report["results"].get(target, {}).get("runs", {}).get(str(c), {}).get("repeats", [])
                if i < len(runs) and "error" not in runs[i]:
                    row.update({f"{target}_{k}": runs[i][k] for k in ("requests_per_s", "p50_ms", "p99_ms", "max_ms")})
            rows[str(c)] = row
        rows["_client"] = {"wrk": 1.0 if report["client"]["name"] == "wrk" else 0.0}
        per_repeat.append(rows)
    return per_repeat


PART_RUNNERS: dict[str, Callable[[Size], dict[str, dict[str, float]]]] = {
    "workers": part_workers,
    "sizes": part_sizes,
    "records": part_records,
    "stages": part_stages,
}


# -- printing ----------------------------------------------------------------------------------------


def print_part(part: str, rows: dict[str, dict[str, dict[str, Any]]], size: Size) -> None:
    if part == "workers":
        table = [[w, cell(r.get("calls_per_s")), cell(r.get("workers_used"))] for w, r in rows.items()]
        print_table(
            f"map of {size.map_items:,} square calls on an external cluster (2 slots per worker)",
            ["workers", "calls/s", "workers used"],
            table,
        )
    elif part == "sizes":
        table = [
            [p, cell(r["faas_p50_ms"]), cell(r["floor_p50_ms"]), cell(_mb(r["faas_bytes_per_s"])),
             cell(_mb(r["floor_bytes_per_s"])), cell(r["faas_over_floor"])]
            for p, r in rows.items()
        ]  # fmt: skip
        print_table(
            "argument and result of each size (bytes/s counts both directions)",
            ["payload", "faas p50 ms", "floor p50 ms", "faas MB/s", "floor MB/s", "faas/floor"],
            table,
        )
    elif part == "records":
        table = [
            [n, cell(r["rss_mb_per_100k"]), cell(r["log_bytes_per_invocation"]), cell(r["records_in_memory"])]
            for n, r in rows.items()
        ]
        print_table(
            "recorded invocations (square.map, in batches of 10,000)",
            ["invocations", "RSS MB per 100k", "log bytes/invocation", "records kept in memory"],
            table,
        )
    elif part == "stages":
        table = [[stage, cell(r["ms"])] for stage, r in rows.items()]
        print_table(f"a warm call of square, medians over {size.warm} calls", ["stage", "ms"], table)
    elif part == "http":
        client = rows.pop("_client", {}).get("wrk")
        table = [
            [c, cell(r.get("faas_requests_per_s")), cell(r.get("faas_p50_ms")), cell(r.get("faas_p99_ms")),
             cell(r.get("faas_max_ms")), cell(r.get("floor_p50_ms")), cell(r.get("floor_p99_ms"))]
            for c, r in rows.items()
        ]  # fmt: skip
        by = "wrk" if client and client["median"] == 1.0 else "the httpx fallback (wrk is not on PATH)"
        print_table(
            f"jupyter faas serve beside the bare Tornado floor, {size.http_seconds}s per point, load by {by}",
            ["conns", "faas req/s", "faas p50 ms", "faas p99 ms", "faas max ms", "floor p50 ms", "floor p99 ms"],
            table,
        )


def _mb(s: dict[str, Any]) -> dict[str, Any]:
    return {**s, "median": s["median"] / MB, "min": s["min"] / MB, "max": s["max"] / MB,
            "values": [v / MB for v in s["values"]]}  # fmt: skip


def parse_parts(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"parts are a comma-separated subset of {','.join(PARTS)}")
    return [p for p in PARTS if p in chosen]


def machine() -> dict[str, Any]:
    import dask
    import distributed

    import jupyter_faas

    return {
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": python_platform.platform(),
        "python": python_platform.python_version(),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "jupyter_faas": jupyter_faas.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class Stopped(BaseException):
    """SIGTERM, raised in the main thread so that every finally block stops what it started."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise Stopped(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="run each part N times (default 1)")
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS), help="default: " + ",".join(PARTS))
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every run's figures as JSON here")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat is at least 1")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    state_dir = tempfile.mkdtemp(prefix="faas-scaling-state-")
    os.environ["DASK_FAAS__STATE_DIR"] = state_dir
    try:
        return _run(args)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    size = SIZES[args.size]
    began = time.perf_counter()
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runs: dict[str, list[dict[str, dict[str, float]]]] = {}
    loads: dict[str, list[list[float]]] = {}
    for part in args.parts:
        if part == "http":
            print(f"... http, {args.repeat} run(s) of each point", file=sys.stderr, flush=True)
            before = os.getloadavg()
            runs["http"] = part_http(size, args.repeat)
            loads["http"] = [[before[0], os.getloadavg()[0]]]
            continue
        for i in range(1, args.repeat + 1):
            print(f"... {part}, run {i}/{args.repeat}", file=sys.stderr, flush=True)
            before = os.getloadavg()
            runs.setdefault(part, []).append(PART_RUNNERS[part](size))
            loads.setdefault(part, []).append([before[0], os.getloadavg()[0]])
    load_after = os.getloadavg()
    summary = {part: combine(part_runs) for part, part_runs in runs.items()}
    m = {**machine(), "date": started}
    report = {
        "size": args.size,
        "repeat": args.repeat,
        "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
        "parameters": asdict(size),
        "machine": {**m, "loadavg_before": load_before, "loadavg_after": load_after},
        "summary": summary,
        "runs": runs,
        "loadavg_per_run": loads,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    print(
        f"jupyter-faas scaling, size {args.size}, {args.repeat} run(s) per part, median (min-max): {m['date']}, "
        f"{m['cpu_count']} CPUs, {m['memory_gb']} GB, {m['platform']}, Python {m['python']}, dask {m['dask']}"
    )
    print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in load_after)
    )
    print()
    for part in args.parts:
        print_part(part, {k: dict(v) for k, v in summary[part].items()}, size)
    print(f"elapsed {report['elapsed_s']:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Stopped) as stop:
        print(f"stopped: {type(stop).__name__}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(stop.args[0] if isinstance(stop, Stopped) else 130)
