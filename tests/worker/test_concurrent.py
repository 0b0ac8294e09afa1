"""async functions on the real embedded cluster: both magic forms and the decorator, fn.aio, and --inputs N."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasMemoryError, FaasTimeout, function
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import DefinitionError


@function(timeout="20s")
async def doubled(x: int) -> int:
    await asyncio.sleep(0.05)
    return 2 * x


@function(timeout="20s", inputs=4)
async def spans(x: float) -> tuple[int, float, float]:
    began = time.time()
    await asyncio.sleep(x)
    return os.getpid(), began, time.time()


@function(timeout="1s", inputs=4, retries=0)
async def naps(x: float) -> float:
    await asyncio.sleep(x)
    return x


@function(timeout="20s", inputs=4, memory="128MB", retries=0)
async def grows(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    await asyncio.sleep(3)
    return len(block)


def test_an_async_function_is_called_like_any_other_and_awaited_with_aio(platform: Platform) -> None:
    assert doubled(4) == 8
    assert doubled.map([1, 2, 3]) == [2, 4, 6]

    async def from_async_code() -> list[int]:
        return list(await asyncio.gather(*(doubled.aio(x) for x in range(5))))

    assert asyncio.run(from_async_code()) == [0, 2, 4, 6, 8]
    assert doubled.local(21) == 42


def test_aio_raises_the_functions_own_error(platform: Platform) -> None:
    @function(retries=0)
    async def fails() -> None:
        raise KeyError("missing on purpose")

    with pytest.raises(KeyError, match="missing on purpose"):
        asyncio.run(fails.aio())


def test_inputs_lets_one_sandbox_run_calls_at_once(platform: Platform) -> None:
    results = spans.map([0.5] * 8)
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for pid, began, ended in results:
        by_pid.setdefault(pid, []).append((began, ended))
    # Within one sandbox, some calls overlapped in time: they ran at once on its event loop.
    overlapping = [
        pid
        for pid, spans_of in by_pid.items()
        if any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans_of) for b in spans_of[i + 1 :])
    ]
    assert overlapping, by_pid


def test_a_timeout_cancels_that_calls_task_and_no_other(platform: Platform) -> None:
    results = naps.map([0.1, 30, 0.2, 0.3], return_exceptions=True)
    assert results[0] == 0.1 and results[2] == 0.2 and results[3] == 0.3
    assert isinstance(results[1], FaasTimeout)
    records = {record.status for record in naps.invocations[-4:]}
    assert records == {"ok", "timeout"}


def test_a_memory_kill_fails_every_call_in_that_sandbox(platform: Platform) -> None:
    results = grows.map([400, 1, 1, 1], return_exceptions=True)
    assert all(isinstance(result, FaasMemoryError) for result in results), results
    assert {record.status for record in grows.invocations[-4:]} == {"memory"}


def test_both_magic_forms_take_async_code(shell: InteractiveShell, platform: Platform) -> None:
    shell.run_cell_magic("faas", "slow_echo text:str", "import asyncio\nawait asyncio.sleep(0.01)\ntext")
    cell = "import asyncio\n\nasync def tripled(x: int) -> int:\n    await asyncio.sleep(0)\n    return 3 * x\n"
    shell.run_cell_magic("faas", "--inputs 3", cell)
    assert shell.user_ns["slow_echo"]("hi") == "hi"
    assert shell.user_ns["tripled"].map([1, 2]) == [3, 6]
    assert shell.user_ns["tripled"].limits.inputs == 3


def test_inputs_above_one_on_a_plain_def_is_refused_with_the_reason(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="only an async function"):
        shell.run_cell_magic("faas", "--inputs 4", "def plain(x):\n    return x\n")
    with pytest.raises(DefinitionError, match="plain def"):

        @function(inputs=2)
        def also_plain(x: int) -> int:
            return x

    with pytest.raises(UsageError, match="inputs"):
        shell.run_cell_magic("faas", "--inputs 0", "async def zero(x):\n    return x\n")


@function(timeout="30s")
async def fans_out(n: int) -> int:
    values = await asyncio.gather(*(doubled.aio(i) for i in range(n)))
    return sum(values)


def test_aio_inside_an_async_function_calls_back_to_the_platform(platform: Platform) -> None:
    assert fans_out(4) == 12
    top = fans_out.invocations[-1]
    children = [record for record in doubled.invocations if record.parent == top.id]
    assert len(children) == 4 and all(record.root == top.id for record in children)


@function(timeout="20s", inputs=2)
class Greets:
    def setup(self) -> None:
        self.prefix = "hi"

    async def __call__(self, name: str) -> str:
        await asyncio.sleep(0.01)
        return f"{self.prefix} {name}"


def test_a_warm_class_may_have_an_async_call(platform: Platform) -> None:
    assert Greets("ann") == "hi ann"
    assert Greets.map(["a", "b", "c"]) == ["hi a", "hi b", "hi c"]
    assert asyncio.run(Greets.aio("z")) == "hi z"
    assert Greets.local("me") == "hi me"
