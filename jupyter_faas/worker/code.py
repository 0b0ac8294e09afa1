"""Giving loaded functions back the filename that cloudpickle replaces, so tracebacks show the cell's lines."""

from __future__ import annotations

import types


def with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    """`code`, and the code nested in it, renamed to `filename`."""
    consts = tuple(with_filename(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
