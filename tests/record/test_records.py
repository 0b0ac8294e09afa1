"""Invocation records and their statistics."""

from __future__ import annotations

import pytest

from jupyter_faas.config import Pricing
from jupyter_faas.record.records import InvocationRecord, RecordStore, percentile

PRICES = Pricing(gb_second=0.0000166667, request=0.0000002, server_hour=0.085)


def record(n: int, status: str = "ok", cold: bool = False, latency: float = 1.0) -> InvocationRecord:
    return InvocationRecord(
        id=str(n), function="f", version="v", submitted=0.0, started=0.1, finished=0.2, queued_ms=100.0,
        cold_start=cold, duration_ms=100.0, latency_ms=latency, worker="w", status=status,
        error=None if status == "ok" else "ValueError", message=None if status == "ok" else f"bad {n}",
        attempts=1, peak_memory=1000 + n, memory_limit=2**30,
    )  # fmt: skip


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_stats_count_everything_and_the_window_is_bounded() -> None:
    store = RecordStore(max_records=10)
    for n in range(25):
        store.add(record(n, status="error" if n % 5 == 0 else "ok", cold=n < 2, latency=float(n)))
    stats = store.stats(PRICES)
    assert stats["invocations"] == 25 and stats["errors"] == 5 and stats["cold_starts"] == 2
    # 25 invocations of 100 ms at 1 GiB: 2.5 GB-seconds
    assert stats["gb_seconds"] == pytest.approx(2.5)
    assert stats["cost_usd"] == pytest.approx(2.5 * 0.0000166667 + 25 * 0.0000002)
    assert stats["last_error"] == {"type": "ValueError", "message": "bad 20", "id": "20"}
    assert stats["peak_memory_max"] == 1024
    assert [r.id for r in store.records()] == [str(n) for n in range(15, 25)]
    # percentiles over the records still kept: latencies 15..24
    assert stats["p50_ms"] == 19.0 and stats["p99_ms"] == 24.0


def test_empty_stats() -> None:
    assert RecordStore(5).stats(PRICES) == {
        "invocations": 0, "errors": 0, "cold_starts": 0, "gb_seconds": 0.0, "cost_usd": 0.0,
        "p50_ms": None, "p95_ms": None, "p99_ms": None,
        "peak_memory_p50": None, "peak_memory_max": None, "last_error": None,
    }  # fmt: skip


def with_output(n: int, output: str) -> InvocationRecord:
    kept = record(n)
    kept.output = output
    return kept


def test_output_is_kept_for_the_newest_records_within_a_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jupyter_faas.record.records.OUTPUT_KEPT_BYTES", 25)
    store = RecordStore(max_records=100)
    for n in range(5):
        store.add(with_output(n, f"out{n}-----\n"))  # 10 characters each
    store.add(record(5))
    outputs = [r.output for r in store.records()]
    # The two newest outputs fit in 25; older ones are None (only in the durable log); no output is "".
    assert outputs == [None, None, None, "out3-----\n", "out4-----\n", ""]
    assert store.find("4").output == "out4-----\n" and store.find("0").output is None
    assert [r.output for r in store.last(2)] == ["out4-----\n", ""]
    assert store.find("missing") is None


def test_output_leaves_memory_with_its_record() -> None:
    store = RecordStore(max_records=2)
    for n in range(4):
        store.add(with_output(n, f"o{n}"))
    assert [(r.id, r.output) for r in store.records()] == [("2", "o2"), ("3", "o3")]
    assert list(store._outputs) == ["2", "3"]
