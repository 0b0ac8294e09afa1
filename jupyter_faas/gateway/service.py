"""The HTTP contract of deployed functions as plain Python: a request's parts in, a status and a body out."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_faas import config as _config
from jupyter_faas.contract import is_json
from jupyter_faas.definition.signature import takes_bytes
from jupyter_faas.dispatch.admission import InvocationFuture
from jupyter_faas.dispatch.platform import Platform, new_ids, pack_calls
from jupyter_faas.dispatch.streams import ItemStream
from jupyter_faas.errors import ArgumentsTooLarge, InputRefused, LimitError, MissingSecret, QueueFull, RegistryError
from jupyter_faas.gateway.answers import (
    Call,
    as_json,
    check_types,
    describe_deployment,
    encode_result,
    error_for,
    finite,
    read_arguments,
    registry_failed,
    shown,
    status_of,
)

# Imported from here by the handlers, the extension, serve and tests; they live in answers.
from jupyter_faas.gateway.answers import HttpError as HttpError
from jupyter_faas.gateway.answers import Reply as Reply
from jupyter_faas.gateway.firing import TriggerFiring
from jupyter_faas.gateway.idempotency import IDEMPOTENCY_FOLDER, Idempotency, checked_key, fingerprint
from jupyter_faas.gateway.keys import Caller, KeyStore, keys_path
from jupyter_faas.gateway.metrics import Metrics
from jupyter_faas.gateway.openapi import document
from jupyter_faas.gateway.ratelimit import QUOTA_FOLDER, Limited, Limiter, parse_quota, parse_rate
from jupyter_faas.gateway.triggers import TriggerRunner, TriggerStore, read_dropped_file
from jupyter_faas.record.calltree import summary
from jupyter_faas.record.deadletters import DamagedLetter, DeadLetters, dead_letters_path, whole_input
from jupyter_faas.record.inflight import InFlight, inflight_path
from jupyter_faas.record.outcomes import AsyncOutcomes, AsyncStatus, Dropped
from jupyter_faas.record.registry import Deployment, Registry

log = logging.getLogger("jupyter_faas.endpoints")

# Most records one request for a function's invocations returns.
MAX_LISTED = 1000
# Seconds a request refused while the server starts is told to wait (Retry-After).
STARTING_RETRY_AFTER = 1


@dataclass
class _Pending:
    """An asynchronous invocation not yet settled; once settled, only its outcome is kept (in AsyncOutcomes)."""

    name: str
    future: Future[Any]
    call: Call
    # Where its input came from, when not the request itself: a file trigger's file, read again on replay.
    source: dict[str, Any] | None = None


class Endpoints:
    """Deployed functions answering requests on one platform: sync, async, dead letters, documents.

    The HTTP handlers of the server extension and of `jupyter faas serve` parse and authorize,
    then call this; nothing here knows about Tornado.
    """

    def __init__(
        self,
        platform: Platform,
        registry: Registry,
        state_dir: Path | None,
        base_url: str = "/",
        url: str = "",
        starting: bool = False,
    ) -> None:
        self.platform = platform
        self.registry = registry
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        # The full URL clients reach us at, for the URLs we list; the base path alone if unknown.
        self.url = url or self.base_url
        self.dead_letters = DeadLetters(None if state_dir is None else dead_letters_path(state_dir))
        self.in_flight = InFlight(None if state_dir is None else inflight_path(state_dir))
        self._settle_interrupted()
        self.metrics = Metrics(platform, registry)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._outcomes = AsyncOutcomes()
        self._lock = threading.Lock()
        self.triggers: TriggerRunner | None = None
        # `starting`: not ready until the owner has run what deploys (serve: its notebook) and calls mark_ready().
        self._ready = threading.Event()
        if not starting:
            self._ready.set()
        # Who may call what, how often, and the answers kept for repeated requests: all under the state dir.
        self.keys = KeyStore(None if state_dir is None else keys_path(state_dir))
        self.limiter = Limiter(None if state_dir is None else state_dir / QUOTA_FOLDER)
        self.idempotency = Idempotency(
            None if state_dir is None else state_dir / IDEMPOTENCY_FOLDER, _config.http_idempotency_ttl()
        )
        platform.add_listener(self.metrics.observe)

    def _settle_interrupted(self) -> None:
        """Asynchronous invocations a previous process accepted and never settled become dead letters."""
        for entry in self.in_flight.orphans():
            error = {
                "type": "Interrupted",
                "message": "the server stopped before this invocation finished; replay the dead letter to run it",
            }
            self.dead_letters.add(
                entry["id"], entry["function"], entry["version"], entry["content_type"], entry["body"], error,
                entry.get("source"),
            )  # fmt: skip
            self.in_flight.end(entry["id"])
            log.warning(
                "jupyter-faas: invocation %s of %s was interrupted by a restart", entry["id"], entry["function"]
            )

    @property
    def ready(self) -> bool:
        """Whether the functions and triggers are all set: health says "ok", and the functions answer."""
        return self._ready.is_set()

    def mark_ready(self, timeout: float = 10.0) -> None:
        """Ready from now on, once the trigger runner has armed the stored triggers (waits up to `timeout`)."""
        if self.triggers is not None:
            self.triggers.wait_armed(timeout)
        self._ready.set()

    def health(self) -> Reply:
        """200 `{"status": "ok"}` once ready; until then 503 `{"status": "starting"}` (a readiness probe's answer)."""
        return Reply(200, {"status": "ok"}) if self.ready else Reply(503, {"status": "starting"})

    def close(self) -> None:
        if self.triggers is not None:
            self.triggers.close()
        self.platform.remove_listener(self.metrics.observe)

    # -- triggers: schedules and file drops, fired from this process ---------------------------------

    def start_triggers(self, store: TriggerStore) -> TriggerRunner:
        firing = TriggerFiring(self.platform, self.registry, self.dead_letters)
        self.triggers = TriggerRunner(store, firing.launch, firing.failed, firing.takes_bytes)
        return self.triggers.start()

    def refresh_triggers(self) -> None:
        """Look at the trigger store now, rather than at the next tick."""
        if self.triggers is not None:
            self.triggers.refresh()

    def trigger_list(self) -> list[dict[str, Any]]:
        return [] if self.triggers is None else self.triggers.list()

    def max_body(self) -> int:
        return _config.http_max_body()

    def url_for(self, name: str) -> str:
        return f"{self.url}faas/functions/{name}"

    # -- invoking ------------------------------------------------------------------------------------

    def admit_call(self, caller: Caller, name: str) -> None:
        """Take one call of `name` from the caller's rate and quota, or raise the 429 that refuses it (run never)."""
        try:
            deployment = self.registry.get(name)
        except RegistryError as e:
            raise registry_failed(e) from None
        if deployment is None or (deployment.rate is None and deployment.quota is None):
            return  # not deployed: the request's own 404 says so
        try:
            rate = None if deployment.rate is None else parse_rate(deployment.rate)
            quota = None if deployment.quota is None else parse_quota(deployment.quota)
        except LimitError as e:
            log.error("jupyter-faas: the deployment of %s has a damaged limit: %s", name, e)
            message = "the function's deployment cannot be read; see the server log"
            raise HttpError(500, "RegistryError", message) from None
        try:
            self.limiter.admit(caller.id, name, rate, quota)
        except Limited as e:
            raise HttpError(429, "TooManyRequests", str(e), retry_after=e.retry_after) from None

    async def invoke_once(
        self,
        caller: Caller,
        key: str,
        name: str,
        content_type: str,
        body: bytes,
        asynchronous: bool,
        on_submit: Callable[[str], None],
        traceparent: str | None = None,
    ) -> tuple[Reply, str | None]:
        """A request with an Idempotency-Key: run once per (caller, function, key) within faas.http.idempotency-ttl;
        a repeat gets the first answer, with its invocation's id. The same key with another body is 422."""
        entry = Idempotency.entry(caller.id, name, checked_key(key))

        async def run(submitted: Callable[[str], None]) -> Reply:
            def noted(invocation_id: str) -> None:
                submitted(invocation_id)
                on_submit(invocation_id)

            if asynchronous:
                reply = await asyncio.to_thread(self.invoke_async, name, content_type, body, traceparent)
                noted(reply.body["id"])
                return reply
            return await self.invoke(name, content_type, body, on_submit=noted, traceparent=traceparent)

        return await self.idempotency.run_once(entry, fingerprint(content_type, body, asynchronous), run)

    def _deployment(self, name: str) -> Deployment:
        try:
            deployment = self.registry.get(name)
        except RegistryError as e:
            raise registry_failed(e) from None
        if deployment is None:
            raise HttpError(404, "NotFound", f"no function named {shown(name)} is deployed")
        return deployment

    def prepare(self, name: str, content_type: str, body: bytes) -> Call:
        """Read a request into a call of the deployed function, or raise the HttpError that answers it."""
        if not self.ready:
            raise HttpError(
                503, "Starting", "the server is still starting (running its notebook, setting its triggers); "
                "GET faas/api/health says when it is ready", retry_after=STARTING_RETRY_AFTER,
            )  # fmt: skip
        deployment = self._deployment(name)
        limit = _config.http_max_body()
        if len(body) > limit:
            raise HttpError(413, "PayloadTooLarge", f"the request body is {len(body)} bytes; the limit is {limit}")
        args, kwargs = read_arguments(name, content_type, body)
        call = Call(deployment, args, kwargs, content_type, body)
        try:
            check_types(call)
        except HttpError as e:
            if not is_json(content_type):
                e.message += (
                    f" (with Content-Type {content_type.split(';')[0]!r} the body is passed as bytes to the first "
                    "parameter; send Content-Type: application/json to pass JSON arguments)"
                )
            raise
        return call

    def streams(self, name: str) -> bool:
        """Whether the function deployed as `name` is a generator, whose answer streams; False if none is."""
        try:
            deployment = self.registry.get(name)
        except RegistryError:
            return False
        return deployment is not None and deployment.definition.streams

    def invoke_stream(
        self,
        name: str,
        content_type: str,
        body: bytes,
        on_submit: Callable[[str], None] | None = None,
        traceparent: str | None = None,
    ) -> ItemStream:
        """Start a generator's invocation: its items, as it yields them (an HttpError if it cannot start)."""
        call = self.prepare(name, content_type, body)
        stream = ItemStream(name, call.deployment.definition.limits.timeout)
        future = self._submit(call, _config.http_queue_timeout(), on_item=stream.sink, traceparent=traceparent)
        stream.attach(future)
        if on_submit is not None:
            on_submit(future.id)
        return stream

    def _submit(
        self,
        call: Call,
        queue_timeout: float | None,
        background: bool = False,
        on_item: Callable[[bytes], None] | None = None,
        traceparent: str | None = None,
    ) -> InvocationFuture:
        definition = call.deployment.definition
        try:
            blob = pack_calls(definition.name, [(call.args, call.kwargs)])
        except TypeError as e:
            raise HttpError(422, "ArgumentError", str(e)) from None
        except ArgumentsTooLarge as e:
            raise HttpError(413, "PayloadTooLarge", str(e)) from None
        invocation_id = new_ids(1)[0]
        tracing = self.platform.tracing
        if traceparent is not None and tracing is not None:
            # Kept against the id before it runs: its span (and its calls') are in the caller's trace.
            tracing.follow(invocation_id, traceparent)
        try:
            return self.platform.invoke(
                definition, blob, queue_timeout=queue_timeout, trigger="http", background=background, on_item=on_item,
                invocation_id=invocation_id,
            )  # fmt: skip
        except MissingSecret as e:
            raise HttpError(500, "MissingSecret", str(e)) from None
        except QueueFull as e:
            raise HttpError(429, "QueueFull", str(e), retry_after=e.retry_after) from None

    async def invoke(
        self,
        name: str,
        content_type: str,
        body: bytes,
        on_submit: Callable[[str], None] | None = None,
        traceparent: str | None = None,
    ) -> Reply:
        """Run the function and wait: 200 with its result, or an HttpError from the table in README.

        `on_submit` is told the invocation's id as soon as it has one (the handler's X-Request-Id); a W3C
        `traceparent` (the request's header) is the parent of its span, when spans are sent.
        """
        call = self.prepare(name, content_type, body)
        future = self._submit(call, _config.http_queue_timeout(), traceparent=traceparent)
        if on_submit is not None:
            on_submit(future.id)
        try:
            value = await asyncio.wrap_future(future)
        except Exception as error:
            raise error_for(name, error) from None
        return Reply(200, encode_result(name, value))

    def invoke_async(self, name: str, content_type: str, body: bytes, traceparent: str | None = None) -> Reply:
        """Queue the invocation and answer 202 with its id at once; it waits for capacity as long as it takes."""
        return self._queue(self.prepare(name, content_type, body), traceparent=traceparent)

    def _queue(self, call: Call, source: dict[str, Any] | None = None, traceparent: str | None = None) -> Reply:
        future = self._submit(call, None, background=True, traceparent=traceparent)
        pending = _Pending(call.deployment.name, future, call, source)
        # Journaled before the 202: an invocation a caller was told about is never silently forgotten.
        invocation_id: str = future.id
        deployment = call.deployment
        self.in_flight.begin(invocation_id, deployment.name, deployment.version, call.content_type, call.raw, source)
        with self._lock:
            self._pending[future.id] = pending
        future.add_done_callback(lambda _: self._settle(future.id, pending))
        return Reply(202, {"id": future.id, "status": "queued"})

    def _settle(self, invocation_id: str, pending: _Pending) -> None:
        """Runs when an asynchronous invocation ends; one that failed after its retries is a dead letter."""
        try:
            outcome = self._outcome_of(invocation_id, pending)
            # Kept within its byte budget before it stops being pending: a poll always finds one or the other.
            self._outcomes.keep(invocation_id, outcome, _config.http_async_results_max_bytes())
        finally:
            with self._lock:
                self._pending.pop(invocation_id, None)
            self.in_flight.end(invocation_id)

    def _outcome_of(self, invocation_id: str, pending: _Pending) -> dict[str, Any]:
        outcome: dict[str, Any] = {"function": pending.name}
        try:
            value = pending.future.result()
        except Exception as error:
            http = error_for(pending.name, error)
            outcome.update(status=status_of(error), error=http.body()["error"])
            self.dead_letters.add(
                invocation_id,
                pending.call.deployment.name,
                pending.call.deployment.version,
                pending.call.content_type,
                pending.call.raw,
                outcome["error"],
                pending.source,
            )
            return outcome
        try:
            outcome.update(status="ok", result=as_json(encode_result(pending.name, value)))
        except HttpError as e:
            outcome.update(status="error", error=e.body()["error"])
        return outcome

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        """An asynchronous invocation's state and outcome, or any finished invocation's record, with its output."""
        with self._lock:
            pending = self._pending.get(invocation_id)
        if pending is not None:
            # Still queued or running: polled often, and it has no record yet to look for.
            status: AsyncStatus = "running" if pending.future.running() else "queued"
            return {"id": invocation_id, "function": pending.name, "status": status}
        outcome = self._outcomes.get(invocation_id)
        if isinstance(outcome, Dropped):
            raise HttpError(
                410, "ResultGone", outcome.message(), invocation_status=outcome.status, function=outcome.function,
                limit="faas.http.async-results-max-bytes",
            )  # fmt: skip
        record = self.platform.find_record(invocation_id)
        if outcome is None:
            if record is not None:
                return finite({**record.to_dict(), **self._calls_of(invocation_id)})
            letter = self.dead_letters.get(invocation_id)
            if letter is not None:
                # An invocation that ended as a dead letter before this process knew of it (a restart).
                return {
                    "id": invocation_id,
                    "function": letter["function"],
                    "status": "error",
                    "error": letter["error"],
                }
            raise HttpError(404, "NotFound", f"no invocation {invocation_id!r} is known here")
        answer = {"id": invocation_id, **outcome}
        if record is not None:
            answer["output"] = record.output
            answer["record"] = finite(record.to_dict())
            answer.update(finite(self._calls_of(invocation_id)))
        return answer

    def _calls_of(self, invocation_id: str) -> dict[str, Any]:
        """The calls it made (`children`), and its whole call tree as a waterfall with its cost."""
        children = [record.to_dict() for record in self.platform.children(invocation_id)]
        return {"children": children, "call_tree": summary(self.platform.call_tree(invocation_id))}

    # -- dead letters: these do file work, so the handlers run them off the event loop ----------------

    def dead_letter_page(self, limit: int, after: str | None, function: str | None = None) -> dict[str, Any]:
        """One page of the list, oldest first (of one function's, if given); see the REST API for the contract."""
        try:
            page = self.dead_letters.page(limit, after, function)
        except ValueError:
            raise HttpError(400, "BadRequest", "after must be the `next` of an earlier page") from None
        return {
            "dead_letters": page.letters,
            "next": page.next,
            "total": page.total,
            "skipped": page.skipped,
            "damaged": page.damaged,
        }

    def dead_letter(self, letter_id: str) -> dict[str, Any]:
        """One letter with its whole input (JSON decoded, other bytes in base64)."""
        letter = self.dead_letters.get(letter_id)
        if letter is None:
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}")
        try:
            letter["input"] = whole_input(letter["content_type"], self.dead_letters.body(letter_id))
        except KeyError:
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}") from None
        except DamagedLetter as e:
            letter["damaged"] = str(e)
        return letter

    def replay(self, letter_id: str) -> Reply:
        """Run the letter's input again, asynchronously: a file event reads its file again, as its trigger does."""
        letter = self.dead_letters.get(letter_id)
        if letter is None:
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}")
        source = letter.get("source") or {}
        try:
            body = self.dead_letters.body(letter_id)
        except KeyError:
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}") from None
        except DamagedLetter as e:
            raise HttpError(422, "DeadLetterDamaged", f"dead letter {letter_id!r} cannot be replayed: {e}") from None
        deployment = self._deployment(letter["function"])
        if source.get("trigger") == "file" and takes_bytes(deployment.definition):
            path = Path(str(source.get("path")))
            try:
                data = read_dropped_file(path, _config.call_max_bytes())
            except (InputRefused, OSError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise HttpError(
                    422, "DeadLetterDamaged", f"dead letter {letter_id!r} cannot be replayed: {path.name}: {reason}"
                ) from None
            # The file's bytes are the argument; what is journaled (and dead-lettered again) is the path, as before.
            call = Call(deployment, (data,), {}, letter["content_type"], body)
            try:
                check_types(call)
            except TypeError as e:
                raise HttpError(422, "ArgumentError", f"{deployment.name}(): {e}") from None
            reply = self._queue(call, source)
        else:
            call = self.prepare(letter["function"], letter["content_type"], body)
            reply = self._queue(call, source or None)
        self.dead_letters.remove(letter_id)
        return reply

    def discard(self, letter_id: str) -> None:
        if not self.dead_letters.remove(letter_id):
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}")

    # -- reading -------------------------------------------------------------------------------------

    def describe(self, deployment: Deployment) -> dict[str, Any]:
        name = deployment.name
        last = next((r.submitted for r in self.platform.recent(name, 1)), None)
        return describe_deployment(deployment, self.url_for(name), self.platform.stats(name), last)

    def invocations_of(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The deployed function's newest invocation records on this platform, newest first."""
        self._deployment(name)
        records = self.platform.recent(name, max(0, min(limit, MAX_LISTED)))
        return [finite(record.to_dict()) for record in reversed(records)]

    def functions(self) -> list[dict[str, Any]]:
        try:
            return [self.describe(deployment) for deployment in self.registry.deployments()]
        except RegistryError as e:
            raise registry_failed(e) from None

    def function(self, name: str) -> dict[str, Any]:
        return self.describe(self._deployment(name))

    def undeploy(self, name: str) -> None:
        try:
            removed = self.registry.undeploy(name)
        except RegistryError as e:
            raise registry_failed(e) from None
        if not removed:
            raise HttpError(404, "NotFound", f"no function named {shown(name)} is deployed")

    def platform_state(self) -> dict[str, Any]:
        platform = self.platform
        return {
            "workers": platform.workers,
            "maximum": platform.maximum,
            "idle_timeout_s": platform.idle_timeout,
            "seconds_to_scale_to_zero": platform.seconds_to_scale_to_zero(),
            "scale_events": [{"time": when, "workers": count} for when, count in platform.scale_events],
            "dashboard_link": platform.dashboard_link or "",
        }

    def openapi(self) -> dict[str, Any]:
        from jupyter_faas import __version__

        try:
            deployments = self.registry.deployments()
        except RegistryError as e:
            raise registry_failed(e) from None
        return document(deployments, self.base_url, __version__)
