"""HTTP throughput of `jupyter faas serve` beside kernel_gateway's notebook-http mode and a bare Tornado handler.

    python benchmarks/http_endpoints.py [--duration S | --quick] [--repeat N] [--targets faas,kernel_gateway,floor]
        [--connections 1,8] [--json PATH]

Starts each server in a subprocess of its own on 127.0.0.1, warms it up, loads its `square` endpoint with wrk at
1 and 8 connections, stops it, and goes on to the next. Prints one table: requests/s, p50, p99, non-2xx
responses and socket errors, with jupyter-faas / kernel_gateway and jupyter-faas / floor for requests/s. It
reports figures only and asserts none. Every process it starts is stopped, with its children, also on error.
Without wrk on PATH it falls back to an asyncio client built on httpx, and says so; without kernel_gateway
installed it measures the others and says so. --repeat N loads each point N times on the same server and prints
the median and min-max of each figure and ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform as python_platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

TARGETS = ("faas", "kernel_gateway", "floor")
HEADINGS = {
    "faas": "jupyter faas serve",
    "kernel_gateway": "kernel_gateway notebook-http",
    "floor": "bare Tornado handler (floor)",
}
CONNECTIONS = (1, 8)
DURATION_S = 8
WARMUP_S = 3
QUICK_S = 1
BODY = '{"x": 7}'
EXPECTED = 49
# How long each server may take from its start to a correct answer; the embedded cluster starts its
# workers on the first call, and kernel_gateway starts its kernels before it listens.
START_DEADLINE_S = {"faas": 120.0, "kernel_gateway": 120.0, "floor": 30.0}
# After SIGTERM: how long the server has to shut down (its cluster or its kernels), then its children.
STOP_GRACE_S = 15.0
CHILD_GRACE_S = 5.0
# wrk's own default is 2s, after which a request counts as a timeout and leaves the latency figures.
WRK_TIMEOUT = "10s"
REQUEST_TIMEOUT_S = 10.0
# The jupyter-faas target, as its README states it, at 8 connections.
GOAL_REQUESTS_PER_S = 1000.0
GOAL_P99_MS = 25.0
ANNOUNCE = re.compile(r"^jupyter faas serve: (\d+) function\(s\) of (.+) at (http://\S+/)\s*$", re.M)
FLOOR_READY = re.compile(r"^floor listening at (http://\S+/)\s*$", re.M)

# The floor, as in the project's reference script (kernel_gateway_http.sh): the same handler, on a port of
# its own choosing, which it prints.
FLOOR_SOURCE = """\
import asyncio, json, tornado.httpserver, tornado.netutil, tornado.web
class Square(tornado.web.RequestHandler):
    def post(self):
        self.write(json.dumps(json.loads(self.request.body)["x"] ** 2))
async def main():
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
    tornado.httpserver.HTTPServer(tornado.web.Application([(r"/square", Square)])).add_sockets(sockets)
    print(f"floor listening at http://127.0.0.1:{sockets[0].getsockname()[1]}/", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Skip(Exception):
    """A target that cannot start: the message says why."""


class Stopped(BaseException):
    """SIGTERM, raised in the main thread so that every finally block stops its servers."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise Stopped(128 + signum)


# -- processes ---------------------------------------------------------------------------------------


def executable(name: str) -> str | None:
    """`name` in the bin folder of this Python (its venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def child_env(work: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Kernel connection files and the like go to the run's folder, not the user's.
    env["JUPYTER_RUNTIME_DIR"] = str(work / "runtime")
    env.update(extra)
    return env


def stop(process: subprocess.Popen[bytes]) -> list[str]:
    """SIGTERM to the server, then SIGKILL to whatever is left: the server, its process group, its descendants.

    The descendants are collected first: kernels run in sessions of their own, outside the server's group.
    Returns notes on anything that had to be killed.
    """
    notes: list[str] = []
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        family = []
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            notes.append(f"pid {process.pid} ignored SIGTERM for {STOP_GRACE_S:.0f}s: killed")
            process.kill()
            process.wait()
    _, alive = psutil.wait_procs(family, timeout=CHILD_GRACE_S)
    for child in alive:
        try:
            child.kill()
            notes.append(f"child pid {child.pid} still running {CHILD_GRACE_S:.0f}s after its server: killed")
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
        notes.append(f"process group {process.pid} still had members: killed")
    except (ProcessLookupError, PermissionError):
        pass
    return notes


class Processes:
    """The subprocesses of one target, each stopped (with its children) when the block ends."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.notes: list[str] = []

    def launch(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.out", "wb") as out, open(self.work / f"{name}.err", "wb") as err:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.work,
                start_new_session=True,
            )
        self.started.append((name, process))
        return process

    def output(self, name: str, stream: str = "out") -> str:
        path = self.work / f"{name}.{stream}"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, name: str, lines: int = 6) -> str:
        text = (self.output(name, "err") + self.output(name, "out")).strip().splitlines()
        return " | ".join(line.strip() for line in text[-lines:])

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        while self.started:
            name, process = self.started.pop()
            self.notes += [f"{name}: {note}" for note in stop(process)]


def wait_for(check: Callable[[], T | None], process: subprocess.Popen[bytes], deadline_s: float, what: str) -> T:
    """Poll `check()` until it returns something truthy; Skip if the process exits or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if process.poll() is not None:
            raise Skip(f"{what}: the process exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise Skip(f"{what}: not after {deadline_s:.0f}s")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- HTTP probes (stdlib, no proxy) ------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(url: str, headers: dict[str, str] | None = None, body: str | None = None) -> tuple[int, bytes] | None:
    """(status, body), or None when nothing answers yet."""
    data = None if body is None else body.encode()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="GET" if body is None else "POST")
    try:
        with _OPENER.open(req, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return None


def answers_square(url: str, headers: dict[str, str]) -> bool:
    """True once POST {"x": 7} answers 200 with 49."""
    got = request(url, headers, BODY)
    if got is None or got[0] != 200:
        return False
    try:
        return json.loads(got[1]) == EXPECTED
    except ValueError:
        return False


# -- the targets -------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    headers: dict[str, str]
    startup_s: float
    info: dict[str, Any] = field(default_factory=dict)


def write_notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec})
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(notebook, path)
    return path


def start_faas(procs: Processes, token: str) -> Server:
    exe = executable("jupyter-faas")
    if exe is None:
        raise Skip("jupyter-faas is not installed beside this Python nor on PATH (pip install -e .)")
    notebook = write_notebook(procs.work / "square.ipynb", ["%load_ext jupyter_faas", "%%faas square x:int\nx * x"])
    env = child_env(
        procs.work,
        DASK_FAAS__STATE_DIR=str(procs.work / "faas-state"),
        DASK_FAAS__CLUSTER__IDLE_TIMEOUT="600s",  # the workers stay up between the measurements
    )
    began = time.perf_counter()
    command = [exe, "serve", str(notebook), "--ip", "127.0.0.1", "--port", "0", f"--token={token}"]
    process = procs.launch("faas", command, env)
    deadline = START_DEADLINE_S["faas"]
    found = wait_for(
        lambda: ANNOUNCE.search(procs.output("faas")), process, deadline, "jupyter faas serve's start line"
    )
    if int(found.group(1)) < 1:
        raise Skip(f"jupyter faas serve found no function in {notebook.name}")
    base = found.group(3)
    health = base + "faas/api/health"
    wait_for(lambda: (request(health) or (0, b""))[0] == 200, process, deadline, f"GET {health}")
    url = base + "faas/functions/square"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    wait_for(lambda: answers_square(url, headers), process, deadline, f"POST {url} answering {EXPECTED}")
    return Server(url, headers, time.perf_counter() - began, {"functions": int(found.group(1))})


def start_kernel_gateway(procs: Processes) -> Server:
    jupyter, gateway = executable("jupyter"), executable("jupyter-kernelgateway")
    if jupyter is None or gateway is None:
        raise Skip("jupyter-kernel-gateway is not installed (pip install jupyter-kernel-gateway)")
    notebook = write_notebook(
        procs.work / "kg.ipynb",
        ["import json", "# POST /square\nreq = json.loads(REQUEST)\nprint(json.dumps(req['body']['x'] ** 2))"],
    )
    port = free_port()
    command = [
        jupyter,
        "kernelgateway",
        "--KernelGatewayApp.api=kernel_gateway.notebook_http",
        f"--KernelGatewayApp.seed_uri={notebook}",
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",  # fail on a taken port rather than move to another
        "--KernelGatewayApp.prespawn_count=2",
    ]
    began = time.perf_counter()
    process = procs.launch("kernel_gateway", command, child_env(procs.work))
    url = f"http://127.0.0.1:{port}/square"
    headers = {"Content-Type": "application/json"}
    wait_for(lambda: answers_square(url, headers), process, START_DEADLINE_S["kernel_gateway"], f"POST {url}")
    return Server(url, headers, time.perf_counter() - began, {"prespawn_count": 2})


def start_floor(procs: Processes) -> Server:
    script = procs.work / "tornado_floor.py"
    script.write_text(FLOOR_SOURCE)
    began = time.perf_counter()
    process = procs.launch("floor", [sys.executable, str(script)], child_env(procs.work))
    deadline = START_DEADLINE_S["floor"]
    found = wait_for(lambda: FLOOR_READY.search(procs.output("floor")), process, deadline, "the floor's start line")
    url = found.group(1) + "square"
    headers = {"Content-Type": "application/json"}
    wait_for(lambda: answers_square(url, headers), process, deadline, f"POST {url}")
    return Server(url, headers, time.perf_counter() - began)


# -- load generators ---------------------------------------------------------------------------------

_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNIT_S[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50, p99, non-2xx and socket errors from wrk's report with --latency."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M)
    # Thread Stats: Latency avg, stdev, max. The max is one response; wrk's percentiles are corrected.
    stats = re.search(
        r"^\s*Latency\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)", output, re.M
    )
    if not (rate and p50 and p99 and total and stats):
        raise RuntimeError(f"cannot read wrk's report:\n{output}")
    # wrk counts a status of 400 and above here, whatever the line says about 3xx.
    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", output, re.M)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    kinds = ("connect", "read", "write", "timeout")
    socket_errors = dict(zip(kinds, map(int, sockets.groups()), strict=True)) if sockets else {}
    return {
        "requests_per_s": float(rate.group(1)),
        "p50_ms": _seconds(*p50.groups()) * 1000,
        "p99_ms": _seconds(*p99.groups()) * 1000,
        "max_ms": _seconds(stats.group(5), stats.group(6)) * 1000,
        "mean_ms": _seconds(stats.group(1), stats.group(2)) * 1000,
        "requests": int(total.group(1)),
        "elapsed_s": _seconds(total.group(2), total.group(3)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(socket_errors.values()),
        "socket_errors_by_kind": socket_errors,
    }


def lua_quote(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for this ASCII text


def write_lua(path: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_quote(BODY)}"]
    lines += [f"wrk.headers[{lua_quote(k)}] = {lua_quote(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class LoadGenerator:
    """wrk, or the httpx fallback: `run(url, headers, connections, seconds)` -> figures."""

    name: str
    version: str
    note: str
    work: Path
    wrk: str | None = None

    def run(self, url: str, headers: dict[str, str], connections: int, seconds: int) -> dict[str, Any]:
        if self.wrk is None:
            return asyncio.run(httpx_load(url, headers, connections, seconds))
        lua = write_lua(self.work / f"post-{secrets.token_hex(4)}.lua", headers)
        command = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", WRK_TIMEOUT]
        command += ["-s", str(lua), "--latency", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0:
            raise RuntimeError(f"wrk exited with code {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
        return parse_wrk(done.stdout)


def percentile(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, -(-len(sorted_samples) * q // 100))
    return sorted_samples[min(int(rank), len(sorted_samples)) - 1]


async def httpx_load(url: str, headers: dict[str, str], connections: int, seconds: float) -> dict[str, Any]:
    """`connections` keep-alive connections, each sending the next request when the last one answers."""
    import httpx

    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0}

    async def connection(end: float) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    response = await client.post(url, content=BODY, headers=headers)
                except httpx.HTTPError:
                    counts["errors"] += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - start)
                if not 200 <= response.status_code < 300:
                    counts["non_2xx"] += 1

    began = time.perf_counter()
    await asyncio.gather(*(connection(began + seconds) for _ in range(connections)))
    elapsed = time.perf_counter() - began
    ordered = sorted(s * 1000 for s in latencies)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(ordered) if ordered else None,
        "p99_ms": percentile(ordered, 99) if ordered else None,
        "max_ms": ordered[-1] if ordered else None,
        "mean_ms": statistics.fmean(ordered) if ordered else None,
        "requests": len(latencies),
        "elapsed_s": elapsed,
        "non_2xx": counts["non_2xx"],
        "socket_errors": counts["errors"],
        "socket_errors_by_kind": {},
    }


def load_generator(choice: str, work: Path) -> LoadGenerator:
    wrk = shutil.which("wrk") if choice in ("auto", "wrk") else None
    if wrk is not None:
        probe = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
        version = (probe.stdout + probe.stderr).strip().split("\n", 1)[0].split(" Copyright")[0]
        return LoadGenerator("wrk", version, f"{version}, 1 thread, --timeout {WRK_TIMEOUT}", work, wrk)
    if choice == "wrk":
        raise SystemExit("http_endpoints.py: wrk is not on PATH (apt-get install wrk), and --client wrk was asked for")
    import httpx

    why = "wrk is not on PATH" if choice == "auto" else "--client httpx"
    note = (
        f"FALLBACK: asyncio + httpx {httpx.__version__} in this process ({why}); "
        "the client costs more CPU than wrk and shares the 2 cores with the server, so figures are lower bounds"
        if (os.cpu_count() or 1) <= 2
        else f"FALLBACK: asyncio + httpx {httpx.__version__} in this process ({why}); slower than wrk"
    )
    return LoadGenerator("httpx", f"httpx {httpx.__version__}", note, work)


# -- the run -----------------------------------------------------------------------------------------


def measure(target: str, args: argparse.Namespace, client: LoadGenerator, work: Path, token: str) -> dict[str, Any]:
    """Start the target, warm it up, load it at each connection count, stop it."""
    folder = work / target
    folder.mkdir()
    result: dict[str, Any] = {"status": "skipped"}
    procs = Processes(folder)
    try:
        with procs:
            try:
                if target == "faas":
                    server = start_faas(procs, token)
                elif target == "kernel_gateway":
                    server = start_kernel_gateway(procs)
                else:
                    server = start_floor(procs)
            except Skip as e:
                tail = procs.tail(target)
                result["reason"] = f"{e}" + (f" (log: {tail})" if tail else "")
                return result
            result.update(status="ok", url=server.url, startup_s=round(server.startup_s, 2), **server.info)
            print(f"... {target}: up in {server.startup_s:.1f}s at {server.url}; warm-up", file=sys.stderr, flush=True)
            if args.warmup > 0:
                result["warmup"] = client.run(server.url, server.headers, max(args.connections), args.warmup)
            runs: dict[str, Any] = {}
            for connections in args.connections:
                repeats: list[dict[str, Any]] = []
                for i in range(1, args.repeat + 1):
                    print(
                        f"... {target}: {connections} connection(s), {args.duration}s, run {i}/{args.repeat}",
                        file=sys.stderr,
                        flush=True,
                    )
                    try:
                        repeats.append(client.run(server.url, server.headers, connections, args.duration))
                    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                        repeats.append({"error": str(e)})
                runs[str(connections)] = merge_repeats(repeats)
            result["runs"] = runs
    finally:
        if procs.notes:
            result["stop_notes"] = procs.notes
    return result


# The figures that get a median and a min-max over the repeats.
SPREAD_KEYS = ("requests_per_s", "p50_ms", "p99_ms", "max_ms")


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def merge_repeats(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one measurement as one: the median of each figure, errors and requests summed, and
    every repeat kept. A measurement with any failed repeat reports the first failure."""
    failed = [r for r in repeats if "error" in r]
    if failed:
        return {**failed[0], "repeats": repeats}
    merged: dict[str, Any] = {k: statistics.median(r[k] for r in repeats) for k in (*SPREAD_KEYS, "mean_ms")}
    for key in ("requests", "non_2xx", "socket_errors"):
        merged[key] = sum(r[key] for r in repeats)
    merged["spread"] = {k: spread([r[k] for r in repeats]) for k in SPREAD_KEYS}
    merged["repeats"] = repeats
    return merged


def ratio_spreads(results: dict[str, dict[str, Any]], connections: list[int]) -> dict[str, dict[str, Any]]:
    """jupyter-faas / other in requests/s, repeat by repeat (the i-th of each), as median and min-max."""

    def rates(target: str, c: int) -> list[float]:
        run = results.get(target, {}).get("runs", {}).get(str(c), {})
        return [r["requests_per_s"] for r in run.get("repeats", []) if "error" not in r]

    out: dict[str, dict[str, Any]] = {}
    for other in ("kernel_gateway", "floor"):
        row: dict[str, Any] = {}
        for c in connections:
            faas, base = rates("faas", c), rates(other, c)
            pairs = [f / b for f, b in zip(faas, base, strict=False) if b]
            row[str(c)] = spread(pairs) if pairs else None
        out[f"faas/{other}"] = row
    return out


def spread_table(results: dict[str, dict[str, Any]], connections: list[int], ratio: dict[str, Any]) -> str:
    """Each figure and each ratio as median (min-max) over the repeats."""

    def cell(s: dict[str, float] | None, suffix: str = "") -> str:
        if s is None:
            return "-"
        return f"{fmt(s['median'])}{suffix} ({fmt(s['min'])}-{fmt(s['max'])})"

    label_width = len("jupyter-faas / kernel_gateway req/s") + 2
    columns = ("conns", "req/s", "p50 ms", "p99 ms", "max ms")
    widths = (6, 24, 22, 22, 22)
    head = "median (min-max)".ljust(label_width) + "".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    lines = [head, "-" * len(head)]
    for target, result in results.items():
        if result["status"] != "ok":
            continue
        for c in connections:
            run = result["runs"].get(str(c), {})
            if "spread" not in run:
                continue
            cells = (str(c), *(cell(run["spread"][k]) for k in SPREAD_KEYS))
            lines.append(
                HEADINGS[target].ljust(label_width) + "".join(x.rjust(w) for x, w in zip(cells, widths, strict=True))
            )
    for other in ("kernel_gateway", "floor"):
        if results.get(other, {}).get("status") != "ok":
            continue  # said above the first table
        label = f"jupyter-faas / {other} req/s"
        for c in connections:
            lines.append(
                label.ljust(label_width) + str(c).rjust(6) + cell(ratio[f"faas/{other}"][str(c)], "x").rjust(24)
            )
    return "\n".join(lines)


def ratios(results: dict[str, dict[str, Any]], connections: list[int]) -> dict[str, dict[str, float | None]]:
    def rate(target: str, c: int) -> float | None:
        run = results.get(target, {}).get("runs", {}).get(str(c), {})
        return run.get("requests_per_s")

    out: dict[str, dict[str, float | None]] = {}
    for other in ("kernel_gateway", "floor"):
        row: dict[str, float | None] = {}
        for c in connections:
            faas, base = rate("faas", c), rate(other, c)
            row[str(c)] = faas / base if faas is not None and base else None
        out[f"faas/{other}"] = row
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(results: dict[str, dict[str, Any]], connections: list[int], ratio: dict[str, dict[str, Any]]) -> str:
    ratio_labels = (("faas/kernel_gateway", "jupyter-faas / kernel_gateway"), ("faas/floor", "jupyter-faas / floor"))
    label_width = max(len(label) for label in [*(HEADINGS[t] for t in results), *(b for _, b in ratio_labels)]) + 2
    columns = ("conns", "req/s", "p50 ms", "p99 ms", "max ms", "non-2xx", "socket errors")
    widths = (6, 10, 9, 9, 9, 9, 15)
    head = "target".ljust(label_width) + "".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    lines = [head, "-" * len(head)]
    for target, result in results.items():
        if result["status"] != "ok":
            lines.append(HEADINGS[target].ljust(label_width) + f"  skipped: {result['reason']}")
            continue
        for c in connections:
            run = result["runs"].get(str(c), {})
            if "error" in run:
                lines.append(HEADINGS[target].ljust(label_width) + f"{c:>6}  failed: {run['error'][:200]}")
                continue
            cells = (
                str(c),
                fmt(run["requests_per_s"]),
                fmt(run["p50_ms"]),
                fmt(run["p99_ms"]),
                fmt(run["max_ms"]),
                str(run["non_2xx"]),
                str(run["socket_errors"]),
            )
            lines.append(
                HEADINGS[target].ljust(label_width) + "".join(x.rjust(w) for x, w in zip(cells, widths, strict=True))
            )
    lines.append("")
    ratio_head = "req/s ratio".ljust(label_width) + "".join(
        (f"{c} conn" + ("s" if c != 1 else "")).rjust(10) for c in connections
    )
    lines += [ratio_head, "-" * len(ratio_head)]
    for key, label in ratio_labels:
        row = ratio[key]
        lines.append(
            label.ljust(label_width)
            + "".join(("-" if row[str(c)] is None else f"{row[str(c)]:.2f}x").rjust(10) for c in connections)
        )
    return "\n".join(lines)


def goal_note(results: dict[str, dict[str, Any]], client: LoadGenerator) -> str | None:
    run = results.get("faas", {}).get("runs", {}).get("8")
    if not run or "error" in run:
        return None
    met = run["requests_per_s"] >= GOAL_REQUESTS_PER_S and run["p99_ms"] is not None and run["p99_ms"] <= GOAL_P99_MS
    met = met and run["non_2xx"] == 0 and run["socket_errors"] == 0
    return (
        f"jupyter-faas goal at 8 connections: >= {GOAL_REQUESTS_PER_S:,.0f} req/s with p99 <= {GOAL_P99_MS:.0f} ms "
        f"and no errors; measured {fmt(run['requests_per_s'])} req/s, p99 {fmt(run['p99_ms'])} ms: "
        + ("met" if met else "NOT met")
        + ("" if client.name == "wrk" else " (with the httpx fallback, which the goal was not set for)")
    )


def package_info() -> dict[str, Any]:
    """Versions, and where this Python finds jupyter_faas (the servers run that copy), with its git commit."""

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    spec = importlib.util.find_spec("jupyter_faas")
    location = Path(spec.origin).parent if spec and spec.origin else None
    commit = None
    if location is not None:
        try:
            root = location.parent
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--", "jupyter_faas"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            )
            if head.returncode == 0:
                commit = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return {
        "jupyter_faas": version("jupyter-faas"),
        "jupyter_faas_location": str(location) if location else None,
        "jupyter_faas_commit": commit,
        "jupyter_kernel_gateway": version("jupyter-kernel-gateway"),
        "tornado": version("tornado"),
        "distributed": version("distributed"),
    }


def parse_targets(text: str) -> list[str]:
    chosen = [t.strip().replace("-", "_") for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"targets are a comma-separated subset of {','.join(TARGETS)}")
    return [t for t in TARGETS if t in chosen]


def parse_connections(text: str) -> list[int]:
    try:
        counts = sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("connections are comma-separated positive integers, e.g. 1,8")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, metavar="S", help=f"seconds per measurement (default {DURATION_S})")
    parser.add_argument("--warmup", type=int, metavar="S", help=f"seconds of warm-up per target (default {WARMUP_S})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_S}s measurements and warm-up: a smoke test")
    parser.add_argument("--targets", type=parse_targets, default=list(TARGETS), help="default: " + ",".join(TARGETS))
    parser.add_argument("--connections", type=parse_connections, default=list(CONNECTIONS), help="default: 1,8")
    parser.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto", help="auto: wrk if on PATH")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="each measurement N times (default 1)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat is at least 1")
    if args.duration is None:
        args.duration = QUICK_S if args.quick else DURATION_S
    if args.warmup is None:
        args.warmup = QUICK_S if args.quick else WARMUP_S
    if args.duration < 1 or args.warmup < 0:
        parser.error("--duration is at least 1 second (wrk counts whole seconds), --warmup at least 0")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="faas-http-bench-"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    began = time.perf_counter()
    load_before = os.getloadavg()
    client = load_generator(args.client, work)
    if client.name != "wrk":
        print(f"note: {client.note}", file=sys.stderr, flush=True)
    token = secrets.token_urlsafe(24)
    results: dict[str, dict[str, Any]] = {}
    for target in args.targets:
        results[target] = measure(target, args, client, work, token)
        if results[target]["status"] != "ok":
            print(f"... {target}: skipped: {results[target]['reason']}", file=sys.stderr, flush=True)
    ratio = ratios(results, args.connections)
    ratio_spread = ratio_spreads(results, args.connections)
    report: dict[str, Any] = {
        "repeat": args.repeat,
        "command": " ".join(["python", "benchmarks/http_endpoints.py", *sys.argv[1:]]),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "client": {"name": client.name, "version": client.version, "note": client.note},
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": python_platform.python_version(),
            "platform": python_platform.platform(),
            **package_info(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "results": results,
        "ratios": ratio,
        "ratio_spreads": ratio_spread,
        "elapsed_s": round(time.perf_counter() - began, 2),
    }
    m = report["machine"]
    most = max(args.connections)
    print(
        f"jupyter-faas HTTP benchmark: POST {BODY} to a square endpoint on 127.0.0.1, {args.duration}s per "
        f"measurement after a {args.warmup}s warm-up at {most} connection{'s' if most > 1 else ''}; "
        f"{m['cpu_count']} CPUs, Python {m['python']}, {m['date']}, {args.repeat} run(s) of each"
    )
    print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in m["loadavg_after"])
    )
    if "kernel_gateway" in results and results["kernel_gateway"]["status"] != "ok":
        print(f"note: kernel_gateway not measured: {results['kernel_gateway']['reason']}")
    print(table(results, args.connections, ratio))
    print()
    print(spread_table(results, args.connections, ratio_spread))
    notes = [f"load generator: {client.note}"]
    if client.name == "wrk":
        notes.append(
            "wrk corrects its percentiles for coordinated omission: a response slower than the mean interval also "
            "counts the requests a constant-rate client would have sent meanwhile, so a few stalls make the p99; "
            "max ms is the slowest single response"
        )
    goal = goal_note(results, client)
    if goal:
        notes.append(goal)
    for target, result in results.items():
        if result["status"] == "ok":
            notes.append(f"{HEADINGS[target]}: ready {result['startup_s']:.1f}s after its start, at {result['url']}")
        notes += [f"{HEADINGS[target]}: {note}" for note in result.get("stop_notes", [])]
    notes.append(
        f"jupyter-faas {m['jupyter_faas']} from {m['jupyter_faas_location']} ({m['jupyter_faas_commit'] or 'no git'}); "
        f"kernel_gateway {m['jupyter_kernel_gateway'] or 'not installed'}; tornado {m['tornado']}"
    )
    notes.append("ratio > 1: jupyter-faas serves more requests per second")
    for line in notes:
        print(f"  {line}")
    print(f"  elapsed {report['elapsed_s']:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if any(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Stopped) as stop_signal:
        # The finally blocks have stopped every server by now.
        print(f"stopped: {type(stop_signal).__name__}", file=sys.stderr, flush=True)
        sys.exit(stop_signal.args[0] if isinstance(stop_signal, Stopped) else 130)
