"""Reading invocation records back from the durable log, across processes and restarts."""

from __future__ import annotations

from datetime import datetime

from jupyter_faas import config as _config
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.record.log import read_invocations
from jupyter_faas.record.records import InvocationRecord


def invocations(
    function: str | None = None, since: float | datetime | None = None, limit: int | None = None
) -> list[InvocationRecord]:
    """Invocation records from the durable log under `faas.state-dir`, newest last.

    `since` is a unix time or a datetime; `limit` keeps the newest. This process's own records are
    committed first, so they are included.
    """
    current = _platform.current(start=False)
    current.flush_log()
    return read_invocations(_config.state_dir(), function=function, since=since, limit=limit)
