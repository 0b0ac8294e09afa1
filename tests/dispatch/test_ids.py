"""Invocation ids are random: none can be guessed from another, in calls and in maps."""

from __future__ import annotations

import itertools

from jupyter_faas import function
from jupyter_faas.dispatch.platform import Platform, new_ids
from tests.helpers import shared_prefix


@function
def ident(x: int) -> int:
    return x


def test_ids_of_calls_and_maps_share_no_structure(platform: Platform) -> None:
    futures = [ident.submit(n) for n in range(20)]
    assert [f.result(timeout=60) for f in futures] == list(range(20))
    assert ident.map(range(200)) == list(range(200))
    ids = [record.id for record in ident.invocations[-220:]]
    assert len(set(ids)) == 220
    # Consecutive ids, from one map and from single calls, share no prefix longer than chance allows.
    longest = max(shared_prefix(a, b) for a, b in itertools.pairwise(ids))
    assert longest <= 6, longest
    # Every hex digit turns up at every position: nothing is a fixed prefix or a counter.
    for position in range(16):
        assert len({i[position] for i in ids}) >= 12, position


def test_new_ids_are_16_hex_digits_and_unique() -> None:
    ids = new_ids(100_000)
    assert len(set(ids)) == 100_000
    assert all(len(i) == 16 for i in ids[:1000]) and int(ids[-1], 16) >= 0
