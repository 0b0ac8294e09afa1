"""The function object users call, and the `function` decorator that makes one from a def."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypedDict, overload

import cloudpickle
from typing_extensions import Unpack

from jupyter_faas import config as _config
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.client import traffic as _traffic
from jupyter_faas.definition import kinds as _kinds
from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import FunctionDefinition, from_callable
from jupyter_faas.definition.requirements import with_requirements
from jupyter_faas.definition.secrets import with_secrets
from jupyter_faas.dispatch import compose as _compose
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.dispatch import streams as _streams
from jupyter_faas.errors import ConfigError, LogError, UsageError
from jupyter_faas.export import build as _export
from jupyter_faas.gateway import triggers as _triggers
from jupyter_faas.gateway.keys import NewKey
from jupyter_faas.gateway.ratelimit import check as check_limits
from jupyter_faas.record.deadletters import keep_if_failed
from jupyter_faas.record.log import read_invocations
from jupyter_faas.record.records import InvocationRecord
from jupyter_faas.ui.output import CallOutput, logs_text, show_map_output
from jupyter_faas.worker.children import Callee

if TYPE_CHECKING:
    from jupyter_faas.ui.widgets import FunctionCard

# Makes each function's card once, also when two threads ask at the same time.
_card_made = threading.Lock()

# A map still running after this many seconds shows its progress; faster ones show nothing at all.
PROGRESS_AFTER = 2.0


class FaasFunction:
    """A stateless function that runs on the platform's workers.

    Call it like the function it wraps; `submit` returns a future, `map` runs many calls,
    and `local` runs it here, for debugging, with the same stateless semantics.
    """

    def __init__(self, definition: FunctionDefinition) -> None:
        self._definition = definition
        _compose.defined_here(definition)
        self.__name__ = definition.name
        self.__doc__ = definition.load().__doc__
        self.__signature__ = definition.signature
        self._card: FunctionCard | None = None
        # In a kernel of a Jupyter server, its invocations there (HTTP, triggers) count here too.
        _traffic.follow(definition)
        # The endpoint's limits per caller ("50/s", "10000/day"), kept for every later deploy of this function.
        self._rate: str | None = None
        self._quota: str | None = None
        # A warm class's instance for local(): set up once in this process, on the first local call.
        self._local_instance: Any = None

    @property
    def name(self) -> str:
        return self._definition.name

    @property
    def version(self) -> str:
        """Content hash of the serialized function; a new definition with other code or captures changes it."""
        return self._definition.version

    @property
    def signature(self) -> inspect.Signature:
        return self._definition.signature

    @property
    def limits(self) -> Limits:
        return self._definition.limits

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self._definition.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}(): {e}") from None

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """Start one invocation; the concurrent.futures.Future ends with its result or error."""
        self._check_arguments(args, kwargs)
        if self._definition.streams:
            raise UsageError(
                f"{self.name} is a generator function: its items stream to whoever iterates them. "
                f"Call it, `for item in {self.name}(...)`, or `async for item in {self.name}.aio(...)`"
            )
        blob = _platform.pack_calls(self.name, [(args, kwargs)])
        return _platform.calling().invoke(self._definition, blob)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        self._check_arguments(args, kwargs)
        if self._definition.streams:
            return self._stream(args, kwargs)
        blob = _platform.pack_calls(self.name, [(args, kwargs)])
        output = CallOutput(self.name)
        future = _platform.calling().invoke(self._definition, blob, on_output=output.collect)
        try:
            # What the function prints appears here as it runs, as it would for a local call.
            output.wait(future)
            return future.result()
        except BaseException as error:
            if not future.done():
                future.cancel()
                raise
            # Drop the frames of concurrent.futures, so the traceback is the caller's and the function's.
            raise error.with_traceback(None) from error.__cause__

    def _stream(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _streams.ItemStream:
        """A generator call: its items, as the function yields them."""
        blob = _platform.pack_calls(self.name, [(args, kwargs)])
        stream = _streams.ItemStream(self.name, self.limits.timeout)
        platform = _platform.calling()
        if not isinstance(platform, _platform.Platform):
            raise UsageError(
                f"{self.name} is a generator function: its items cannot yet stream back into another function. "
                "Call a plain function from here, or iterate it from the notebook or over HTTP"
            )
        stream.attach(platform.invoke(self._definition, blob, on_item=stream.sink))
        return stream

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        """Call without blocking an event loop: `await fn.aio(...)`; for a generator, `async for x in fn.aio(...)`."""
        self._check_arguments(args, kwargs)
        if self._definition.streams:
            return self._stream(args, kwargs)
        return self._awaited(self.submit(*args, **kwargs))

    async def _awaited(self, future: Future[Any]) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # not yet sent: it never runs
            raise
        except BaseException as error:
            raise error.with_traceback(None) from error.__cause__

    def map(self, iterable: Iterable[Any], *iterables: Iterable[Any], return_exceptions: bool = False) -> list[Any]:
        """Results in input order; with return_exceptions, a failed item gives its exception in place."""
        __tracebackhide__ = True
        if self._definition.streams:
            raise UsageError(
                f"{self.name} is a generator function, and map() collects one value per call: call it per item "
                f"instead, `for x in items: for item in {self.name}(x): ...`"
            )
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (items, {}) for items in zip(iterable, *iterables, strict=False)
        ]
        if calls:
            # Every item has the same number of positional arguments, so one check covers them all.
            self._check_arguments(calls[0][0], {})
        began = time.monotonic()
        platform = _platform.calling()
        results = platform.map(self._definition, calls)
        try:
            if not isinstance(platform, _platform.Platform):
                results.wait()  # inside a function: no progress bar, nobody watches this cell
            elif not results.wait(PROGRESS_AFTER):
                # Imported only now: widgets cost nothing to maps that finish within the threshold.
                from jupyter_faas.ui import widgets as _widgets

                _widgets.wait_with_progress(self.name, results, began)
        except KeyboardInterrupt:
            # Invocations not yet started are dropped; those already running finish and are recorded.
            results.cancelled = True
            raise
        if results.with_output:
            show_map_output(self.name, results.shown, results.with_output, results.output_lines)
        if return_exceptions:
            pairs = zip(results.values, results.errors, strict=True)
            return [value if error is None else error for value, error in pairs]
        for error in results.errors:
            if error is not None:
                raise error.with_traceback(None) from error.__cause__
        return results.values

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run here in the notebook process, on a fresh copy, as a worker would; limits are not enforced.

        A warm class's setup() runs once, on the first local call; its instance serves the later ones. An
        async function's coroutine is run to its end (or returned to await, inside a running event loop).
        """
        self._check_arguments(args, kwargs)
        loaded = self._definition.load()
        if isinstance(loaded, type):
            loaded = self._local_warm(loaded)
        else:
            names = getattr(loaded, "__globals__", {})
            for key, value in list(names.items()):
                if isinstance(value, Callee):
                    # Here, its own name is itself (recursion stays local), and another function is that function.
                    names[key] = (
                        self.local if not value.definition else FaasFunction(cloudpickle.loads(value.definition))
                    )
        value = loaded(*args, **kwargs)
        if inspect.iscoroutine(value):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(value)
        return value

    def _local_warm(self, cls: type) -> Any:
        if self._local_instance is None:
            instance = cls()
            setup = getattr(instance, "setup", None)
            if setup is not None:
                setup()
            self._local_instance = instance
        # Fresh module globals for each call, as on a worker: only the instance carries over.
        call = cls.__dict__["__call__"]
        fresh = _kinds.rebind(cls, dict(call.__globals__), cls.__qualname__)
        self._local_instance.__class__ = fresh
        return self._local_instance

    def __faas_callee__(self) -> Callee:
        """This function as another's payload ships it: its definition, and calls that go to the platform."""
        return Callee(self.name, cloudpickle.dumps(self._definition, protocol=5))

    def deploy(self, rate: str | None = None, quota: str | None = None) -> str:
        """Deploy this version as an HTTP endpoint: POST {base_url}faas/functions/NAME. Returns its URL.

        Deploying again switches the name to the new version; requests under way finish on the old one.
        `rate="50/s"` limits each caller (each function key, the owner's token) to a token bucket of that rate,
        `quota="10000/day"` to that many calls a UTC day; past either the answer is 429 with Retry-After, and the
        function does not run. Both are kept for later deploys of this function object.
        """
        check_limits(rate, quota)
        self._rate = rate if rate is not None else self._rate
        self._quota = quota if quota is not None else self._quota
        return _deploy.deploy(self._definition, rate=self._rate, quota=self._quota)

    def undeploy(self) -> bool:
        """Remove the endpoint; False if it was not deployed."""
        return _deploy.undeploy(self.name)

    def create_key(self, note: str = "") -> NewKey:
        """A new function key that calls this function's endpoint and nothing else: the secret (`fk_...`), shown
        this once only (the server keeps its sha256), with `.id` to revoke it."""
        key, secret = _deploy.key_store().create([self.name], note)
        return NewKey(secret, key)

    def revoke_key(self, key_id: str) -> bool:
        """Refuse the key with this id from now on, on every route; False if there is none."""
        return _deploy.key_store().revoke(key_id)

    def schedule(self, every: Any = None, cron: str | None = None) -> dict[str, Any]:
        """Invoke on a schedule: `every="30s"` or `cron="*/5 * * * *"`, from the server that owns the platform.

        A function without parameters is called with none; otherwise with the scheduled time (a UTC
        datetime). Ticks missed while the server was down are skipped, not replayed. This deploys the
        current version, which the schedule fires.
        """
        spec = _triggers.schedule_spec(self.name, every=every, cron=cron)
        _deploy.add_trigger(self._definition, spec)
        return spec.to_dict()

    def unschedule(self) -> bool:
        """Stop the schedule; False if there was none."""
        return _deploy.remove_trigger(self.name, "schedule")

    def on_file(self, directory: Any, pattern: str = "*") -> dict[str, Any]:
        """Invoke once for every file in `directory` matching `pattern`: those there now, and each new one.

        The function gets the file's path, or its bytes when its first parameter is annotated `bytes`.
        A file is marked done once its invocation succeeds; a failure goes to the dead letters.
        """
        spec = _triggers.file_spec(self.name, directory, pattern)
        _deploy.add_trigger(self._definition, spec)
        return spec.to_dict()

    def off_file(self) -> bool:
        """Stop the file trigger; False if there was none. What was handled stays recorded."""
        return _deploy.remove_trigger(self.name, "file")

    def enqueue(self, *args: Any, **kwargs: Any) -> str:
        """Fire and forget: start one invocation and return its id at once.

        Retries follow the function's setting; an invocation that still fails is written to the
        dead-letter list, which `GET {base_url}faas/api/dead-letters` shows.
        """
        self._check_arguments(args, kwargs)
        blob = _platform.pack_calls(self.name, [(args, kwargs)])
        future = _platform.calling().invoke(self._definition, blob, trigger="queue", background=True)
        future.add_done_callback(lambda done: _dead_letter_if_failed(self._definition, args, kwargs, done))
        return future.id

    def export(self, to: str, out: str | os.PathLike[str]) -> _export.ExportResult:
        """Write this function as a build context for `to` ("knative", "openfaas" or "lambda") in the folder `out`:
        readable code, captured values as data, requirements.txt, a Dockerfile and the target's settings."""
        return _export.export_definition(self._definition, to, out)

    @property
    def invocations(self) -> list[InvocationRecord]:
        """Records of this function's invocations, newest last."""
        return _platform.current(start=False).records(self.name)

    def logs(self, n: int = 20) -> str:
        """What the newest `n` invocations that wrote anything printed or logged, oldest first, as text.

        Output no longer kept in memory is read back from the durable log.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{self.name}.logs(): n must be a positive whole number, got {n!r}")
        platform = _platform.current(start=False)
        records = [record for record in platform.records(self.name) if record.output != ""][-n:]
        if any(record.output is None for record in records):
            records = _with_logged_output(self.name, records)
        return logs_text(self.name, records)

    def stats(self) -> dict[str, Any]:
        """Invocations, errors, cold starts and end-to-end latency percentiles (ms)."""
        return _platform.current(start=False).stats(self.name)

    @property
    def card(self) -> FunctionCard:
        """A live ipywidgets card of this function's figures: made on first use, kept current as invocations end."""
        # ipywidgets loads only when a card is asked for: a worker that unpickles a function never pays for it.
        from jupyter_faas.ui import widgets as _widgets

        with _card_made:
            if self._card is None:
                self._card = _widgets.FunctionCard(self, _deploy.function_triggers, _deploy.triggers_stamp)
            return self._card

    def card_triggers(self) -> list[str]:
        """What fires this function besides calls, as the card shows it."""
        return _deploy.function_triggers(self.name)

    def card_header(self) -> dict[str, str]:
        """The card's header facts: name, version, signature and limits, as text."""
        definition = self._definition
        return {
            "name": self.name,
            "version": definition.short_version,
            "signature": definition.describe_signature(),
            "limits": self.limits.describe(),
        }

    def __getstate__(self) -> dict[str, Any]:
        # The card is a widget of this process, with its comm and locks; a copy makes its own when asked. A warm
        # instance set up here stays here.
        return {**self.__dict__, "_card": None, "_local_instance": None}

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        # The card in a kernel, the same figures as text in a terminal; repr() stays one line.
        # Imported here for the same reason as in `card`.
        from jupyter_faas.ui import widgets as _widgets

        return _widgets.function_mimebundle(self, lambda: self.card)

    def __repr__(self) -> str:
        return (
            f"<faas function {self._definition.describe_signature()} "
            f"version {self._definition.short_version}: {self.limits.describe()}>"
        )


def _dead_letter_if_failed(
    definition: FunctionDefinition, args: tuple[Any, ...], kwargs: dict[str, Any], future: Future[Any]
) -> None:
    letter_id: str = future.id  # type: ignore[attr-defined]
    keep_if_failed(letter_id, definition.name, definition.version, args, kwargs, future.exception())


def _with_logged_output(name: str, records: list[InvocationRecord]) -> list[InvocationRecord]:
    """The records, with output that memory no longer holds read back from the durable log where it can be."""
    try:
        since = min(record.submitted for record in records)
        logged = {r.id: r.output for r in read_invocations(_config.state_dir(), name, since=since)}
    except (LogError, ConfigError):
        return records
    for record in records:
        if record.output is None:
            record.output = logged.get(record.id)
    return records


class FunctionOptions(TypedDict, total=False):
    """The options `@function(...)` takes, as `%%faas` takes them on its line."""

    name: str | None
    timeout: Any
    memory: Any
    retries: Any
    concurrency: Any
    zones: Any
    isolation: Any
    requirements: Iterable[str]
    secrets: Iterable[str]
    setup_timeout: Any
    inputs: Any


@overload
def function(fn: Callable[..., Any], /) -> FaasFunction: ...


@overload
def function(**options: Unpack[FunctionOptions]) -> Callable[[Callable[..., Any]], FaasFunction]: ...


def function(
    fn: Callable[..., Any] | None = None, /, **options: Unpack[FunctionOptions]
) -> FaasFunction | Callable[[Callable[..., Any]], FaasFunction]:
    """Make a def or a class a serverless function: `@function` or `@function(timeout="5s", memory="128MB")`.

    Options: `name`, `timeout`, `memory`, `retries`, `concurrency`, `zones`, `isolation`, `requirements` and
    `secrets`, as the magic's. Free names are captured by value now, as `%%faas` does for a cell. `secrets`
    names environment variables each call gets from the environment of the process that runs the platform.
    `isolation="fresh"` runs each call in a new process forked for it. A class with `__call__` keeps one
    instance per sandbox, made by its `setup()` (limited by `setup_timeout`); `inputs=N` lets one sandbox run
    N calls of an async function at once.
    """
    unknown = sorted(set(options) - FunctionOptions.__optional_keys__)
    if unknown:
        raise TypeError(f"function() got unexpected keyword arguments: {', '.join(unknown)}")
    get = options.get
    limits = Limits.resolve(
        timeout=get("timeout"),
        memory=get("memory"),
        retries=get("retries"),
        concurrency=get("concurrency"),
        zones=get("zones"),
        isolation=get("isolation"),
        setup_timeout=get("setup_timeout"),
        inputs=get("inputs"),
    )
    name, requirements, secrets = options.get("name"), options.get("requirements", ()), options.get("secrets", ())

    def wrap(target: Callable[..., Any]) -> FaasFunction:
        definition = from_callable(target, limits, name)
        if requirements:
            definition = with_requirements(definition, requirements)
        if secrets:
            definition = with_secrets(definition, secrets)
        return FaasFunction(definition)

    return wrap if fn is None else wrap(fn)
