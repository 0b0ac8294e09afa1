"""Prometheus text for a platform's invocations: counts, errors, latency histograms and workers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from jupyter_faas.record.records import InvocationRecord

if TYPE_CHECKING:
    from jupyter_faas.dispatch.platform import Platform
    from jupyter_faas.record.registry import Registry

# Seconds; from a warm call's half millisecond to a minute-long invocation.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The series published on another registry now (one platform's at a time per target), to take back first.
_published: dict[int, Collector] = {}
_published_lock = threading.Lock()


class _Mirror(Collector):
    """Collects a Metrics registry's series for another registry: the same values, read when scraped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


class Metrics:
    """Series of one platform, in a registry of their own (not prometheus_client's global one)."""

    def __init__(self, platform: Platform, registry: Registry) -> None:
        self.registry = CollectorRegistry()
        self._invocations = Counter(
            "faas_invocations", "Finished invocations, by function and status.", ["function", "status"],
            registry=self.registry,
        )  # fmt: skip
        self._errors = Counter(
            "faas_invocation_errors", "Invocations that did not end with status ok.", ["function"],
            registry=self.registry,
        )  # fmt: skip
        self._latency = Histogram(
            "faas_invocation_latency_seconds", "From submission to result, by function.", ["function"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        workers = Gauge("faas_workers", "Workers connected now.", registry=self.registry)
        workers.set_function(lambda: platform.workers)
        maximum = Gauge("faas_workers_maximum", "Most workers the platform may start.", registry=self.registry)
        maximum.set_function(lambda: platform.maximum)
        deployed = Gauge("faas_deployed_functions", "Functions deployed as endpoints.", registry=self.registry)
        deployed.set_function(lambda: len(registry.deployments()))

    def observe(self, record: InvocationRecord) -> None:
        self._invocations.labels(record.function, record.status).inc()
        if record.status != "ok":
            self._errors.labels(record.function).inc()
        self._latency.labels(record.function).observe(record.latency_ms / 1000)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def publish_on(self, target: CollectorRegistry) -> Callable[[], None]:
        """Also show these series on `target`: jupyter_server's /metrics serves prometheus_client's global
        registry. Returns what takes them off again. A platform published there before is taken off first."""
        mirror = _Mirror(self.registry)
        with _published_lock:
            previous = _published.pop(id(target), None)
            if previous is not None:
                target.unregister(previous)
            target.register(mirror)
            _published[id(target)] = mirror

        def unpublish() -> None:
            with _published_lock:
                if _published.get(id(target)) is mirror:
                    del _published[id(target)]
                    target.unregister(mirror)

        return unpublish
