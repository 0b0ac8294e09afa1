"""Dask preload for the embedded cluster's workers: a kernel interrupt is for the notebook, not for them."""

from __future__ import annotations

import signal
from typing import Any


def dask_setup(worker: Any) -> None:
    # Jupyter interrupts a kernel by signalling its whole process group, and the embedded workers are in
    # it: ignored here, SIGINT stops the notebook's wait while invocations on the workers run to the end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
