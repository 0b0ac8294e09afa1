"""An invocation's call tree, from records: its waterfall of calls and what the whole tree cost."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypedDict

from jupyter_faas.config import Pricing
from jupyter_faas.record.cost import invocation_cost
from jupyter_faas.record.records import InvocationRecord, RecordStatus


class WaterfallRow(TypedDict):
    """One call of a tree, placed in time against the top of the tree."""

    id: str
    function: str
    parent: str | None
    depth: int
    status: RecordStatus
    # Milliseconds from the top invocation's submission to this call's start (its submission, if it never started).
    offset_ms: float
    duration_ms: float | None
    cost_usd: float


def _cost(record: InvocationRecord, pricing: Pricing) -> float:
    return invocation_cost(record.memory_limit, record.duration_ms or 0.0, pricing)


def waterfall(
    top: InvocationRecord, children_of: Callable[[str], Iterable[InvocationRecord]], pricing: Pricing
) -> list[WaterfallRow]:
    """The top invocation, then every call below it depth first, in the order each was made."""
    rows: list[WaterfallRow] = []
    seen: set[str] = set()
    pending: list[tuple[InvocationRecord, int]] = [(top, 0)]
    while pending:
        record, depth = pending.pop()
        if record.id in seen:
            continue  # ids are random; a repeat would be a damaged log, and must not loop forever
        seen.add(record.id)
        began = record.started if record.started is not None else record.submitted
        rows.append(
            {
                "id": record.id,
                "function": record.function,
                "parent": record.parent,
                "depth": depth,
                "status": record.status,
                "offset_ms": max(0.0, (began - top.submitted) * 1000),
                "duration_ms": record.duration_ms,
                "cost_usd": _cost(record, pricing),
            }
        )
        below = sorted(children_of(record.id), key=lambda child: child.submitted, reverse=True)
        pending.extend((child, depth + 1) for child in below)
    return rows


def tree_cost(rows: Iterable[WaterfallRow]) -> float:
    """USD for every invocation of the tree, the top one included."""
    return sum(row["cost_usd"] for row in rows)


def summary(rows: list[WaterfallRow]) -> dict[str, Any]:
    """What the REST API and the sidebar show of a tree: its calls, and their cost together."""
    return {"calls": rows, "tree_cost_usd": tree_cost(rows)}
