"""`python -m jupyter_faas demo`: one function through its whole life on the embedded elastic cluster."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import dask

# The demo's global counter: each invocation gets its own copy, so it never counts.
counter = 0


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def demo(idle_timeout: str) -> int:
    import jupyter_faas
    from jupyter_faas import FaasTimeout, function

    dask.config.set({"faas.cluster.idle-timeout": idle_timeout})

    _step("Defining word_count: a stateless function, its free names captured by value")
    min_len_default = 2

    @function(timeout="10s", memory="256MB")
    def word_count(text: str, min_len: int = min_len_default) -> int:
        return len([w for w in text.split() if len(w) >= min_len])

    print(repr(word_count))

    _step("First call: the cluster starts with zero workers, so this is a cold start")
    began = time.perf_counter()
    result = word_count("serverless functions scale to zero when idle")
    record = word_count.invocations[-1]
    print(
        f"result {result}; {1000 * (time.perf_counter() - began):.0f} ms including the scheduler's start; "
        f"cold_start={record.cold_start}, ran on {record.worker}"
    )

    _step("Warm calls")
    latencies = []
    for _ in range(30):
        began = time.perf_counter()
        word_count("a bb ccc dddd")
        latencies.append(1000 * (time.perf_counter() - began))
    print(f"30 warm calls: median {statistics.median(latencies):.1f} ms")

    _step("map over 1,000 inputs, results in input order")
    began = time.perf_counter()
    counts = word_count.map([("x " * n).strip() for n in range(1000)], [1] * 1000)
    elapsed = time.perf_counter() - began
    print(f"first five {counts[:5]}, {1000 / elapsed:.0f} invocations/s")

    _step("Stateless: a global counter never counts")

    @function
    def bump() -> int:
        global counter
        counter += 1
        return counter

    print(f"five calls return {[bump() for _ in range(5)]}")

    _step("A hard timeout: the worker's sandbox is killed, and the caller hears about it")

    @function(timeout="1s")
    def too_slow() -> None:
        time.sleep(30)

    began = time.perf_counter()
    try:
        too_slow()
    except FaasTimeout as error:
        print(f"FaasTimeout after {time.perf_counter() - began:.1f} s: {error}")

    platform = jupyter_faas.platform()
    _step(f"Scale to zero: no work for the keep-alive ({idle_timeout}), so every worker is retired")
    deadline = time.monotonic() + 120
    while platform.workers and time.monotonic() < deadline:
        time.sleep(0.2)
    print("worker count over time: " + ", ".join(f"{n}" for _, n in platform.scale_events))
    stats = word_count.stats()
    print(
        f"word_count: {stats['invocations']} invocations, {stats['cold_starts']} cold starts, "
        f"p50 {stats['p50_ms']:.1f} ms, {stats['gb_seconds']:.4f} GB-s, ${stats['cost_usd']:.6f}"
    )
    cost = platform.cost_comparison()
    print(
        f"pay-per-use ${cost.serverless_usd:.6f} against ${cost.always_on_usd:.6f} for an always-on server "
        f"over the same {cost.period_s:.0f} s; that server would have been {100 * cost.idle_fraction:.1f} % idle"
    )
    print(f"dashboard: {platform.dashboard_link}")
    platform.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jupyter_faas", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    run_demo = commands.add_parser("demo", help="run one function through its life on the embedded cluster")
    run_demo.add_argument("--idle-timeout", default="3s", help="keep-alive before scale to zero (default 3s)")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        return demo(getattr(args, "idle_timeout", "3s"))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
