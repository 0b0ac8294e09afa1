"""Parsing and validation of per-function limits: timeout, memory, retries, concurrency, isolation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jupyter_faas import config as _config
from jupyter_faas.units import MIN_MEMORY, format_size, parse_count, parse_duration, parse_isolation, parse_size


@dataclass(frozen=True)
class Limits:
    """What one function may use per invocation, and how it is retried and throttled."""

    timeout: float
    memory: int
    retries: int
    concurrency: int | None
    # Spread invocations over this many zones of workers, and keep a worker in each while warm.
    zones: int | None = None
    isolation: str = "warm"
    # How long a warm class's setup() may take; None: as long as the timeout.
    setup_timeout: float | None = None
    # Invocations of an async function one sandbox runs at once (--inputs).
    inputs: int = 1

    @classmethod
    def resolve(
        cls,
        *,
        timeout: Any = None,
        memory: Any = None,
        retries: Any = None,
        concurrency: Any = None,
        zones: Any = None,
        isolation: Any = None,
        option_prefix: str = "",
        setup_timeout: Any = None,
        inputs: Any = None,
    ) -> Limits:
        """Limits from user values, falling back to `faas.defaults.*` for those left as None."""
        defaults = _config.function_defaults()
        p = option_prefix
        return cls(
            timeout=defaults.timeout if timeout is None else parse_duration(timeout, f"{p}timeout"),
            memory=defaults.memory if memory is None else parse_size(memory, f"{p}memory", minimum=MIN_MEMORY),
            # parse_count gives None only with allow_none, so `or 0` never changes a value: it narrows the type.
            retries=defaults.retries if retries is None else parse_count(retries, f"{p}retries", minimum=0) or 0,
            concurrency=(
                defaults.concurrency
                if concurrency is None
                else parse_count(concurrency, f"{p}concurrency", minimum=1, allow_none=True)
            ),
            zones=None if zones is None else parse_count(zones, f"{p}zones", minimum=1, allow_none=True),
            isolation=defaults.isolation if isolation is None else parse_isolation(isolation, f"{p}isolation"),
            setup_timeout=None if setup_timeout is None else parse_duration(setup_timeout, f"{p}setup-timeout"),
            inputs=1 if inputs is None else parse_count(inputs, f"{p}inputs", minimum=1) or 1,
        )

    @property
    def setup_limit(self) -> float:
        """The time a warm class's setup() may take: --setup-timeout, or else the timeout."""
        return self.timeout if self.setup_timeout is None else self.setup_timeout

    def describe(self) -> str:
        concurrency = "unlimited" if self.concurrency is None else str(self.concurrency)
        zones = f", zones {self.zones}" if self.zones and self.zones > 1 else ""
        zones += ", isolation fresh" if self.isolation == "fresh" else ""
        zones += f", setup timeout {self.setup_timeout:g}s" if self.setup_timeout is not None else ""
        zones += f", inputs {self.inputs}" if self.inputs > 1 else ""
        return (
            f"timeout {self.timeout:g}s, memory {format_size(self.memory)}, "
            f"retries {self.retries}, concurrency {concurrency}{zones}"
        )
