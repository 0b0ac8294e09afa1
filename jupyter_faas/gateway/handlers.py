"""Tornado handlers of the endpoints and the REST API: they parse, authorize and delegate to Endpoints.

Over 400 lines, barely: one short handler class per route of the REST API, and the base they share.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
from typing import Any

from tornado import web

from jupyter_faas import config as _config
from jupyter_faas.dispatch.streams import ItemStream
from jupyter_faas.errors import FunctionKeyError
from jupyter_faas.gateway import streaming as _streaming
from jupyter_faas.gateway.idempotency import HEADER as IDEMPOTENCY_HEADER
from jupyter_faas.gateway.keys import Caller, described
from jupyter_faas.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from jupyter_faas.gateway.service import Endpoints, HttpError, Reply
from jupyter_faas.record.deadletters import DEFAULT_PAGE, MAX_PAGE
from jupyter_faas.record.tracing import TRACEPARENT_HEADER

_NAME = r"(?P<name>[^/]+)"
_ID = r"(?P<ident>[^/]+)"

# Request headers past this many bytes get 431 (the HTTP server itself drops a connection far past it).
MAX_HEADER_BYTES = 32 * 2**10
# The body of a refused request is read and dropped before the answer when it declares at most this many bytes;
# a larger or chunked one is answered at once, and its connection closed unread.
SMALL_REFUSED_BODY = 64 * 2**10
# What a 503 for a limit of the server's own asks the caller to wait before trying again, in seconds.
RETRY_AFTER = 1


class Busy(HttpError):
    """503: the server is at a limit of its own (named in the message); the caller may retry after a while."""

    def __init__(self, message: str, retry_after: int = RETRY_AFTER) -> None:
        super().__init__(503, "Busy", message, retry_after=retry_after)


class BodyBudget:
    """The bytes of request bodies one server holds in memory at once (`faas.http.max-body-memory`).

    A request reserves its declared Content-Length (a chunked one, the whole `faas.http.max-body`) before its
    body is read, and gives it back when it is answered or its connection closes.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.held -= size


def settings_for(endpoints: Endpoints) -> dict[str, Any]:
    """The Tornado settings every app serving these handlers gives them."""
    return {"faas_endpoints": endpoints, "faas_body_budget": BodyBudget(_config.http_max_body_memory())}


class _Faas(web.RequestHandler):
    """What every handler shares; the app's own base class supplies `faas_admit()`, which refuses a request
    from a foreign Host or Origin, and its authentication, as `faas_guard(public=False)`, which raises unless
    the request may go on. Both run in `prepare`, before any of the body is read: every handler streams its
    body (see `joined`), so a refused request never makes the server hold its body. One that declared a body
    over SMALL_REFUSED_BODY (or a chunked one) is answered at once and its connection closed; a smaller body is
    read and dropped, then the refusal answered.

    `unauthenticated` names the methods that need no token at all; `public_methods` those that need none when
    the app serves its functions publicly (`serve --public`); `key_methods` those a function key may use (the
    handler then checks that the key names the function); every other method needs the owner's token.
    `faas_guard` answers the `Caller` a request speaks for, kept as `faas_caller`.

    Every answer carries `X-Content-Type-Options: nosniff` and an `X-Request-Id`: the invocation's id when
    the request started one, a fresh random id otherwise; and no `Server` banner.
    """

    faas_guard: Any
    faas_admit: Any
    unauthenticated: tuple[str, ...] = ()
    public_methods: tuple[str, ...] = ()
    key_methods: tuple[str, ...] = ()
    faas_caller: Caller | None = None
    _faas_request_id: str | None = None
    _refusal: BaseException | None = None
    _closing = False

    @property
    def endpoints(self) -> Endpoints:
        endpoints: Endpoints = self.settings["faas_endpoints"]
        return endpoints

    @property
    def request_id(self) -> str:
        if self._faas_request_id is None:
            # 128 random bits as 32 hex digits, as uuid4().hex gave, at a fraction of its cost.
            self._faas_request_id = os.urandom(16).hex()
        return self._faas_request_id

    def set_default_headers(self) -> None:
        # Called again when an error clears the headers: the same id then. A fresh id is made only when the
        # headers are sent (flush): a request that starts an invocation takes the invocation's id instead.
        super().set_default_headers()
        self.clear_header("Server")
        self.set_header("X-Content-Type-Options", "nosniff")
        if self._faas_request_id is not None:
            self.set_header("X-Request-Id", self._faas_request_id)

    def flush(self, include_footers: bool = False) -> Any:
        if not self._headers_written and "X-Request-Id" not in self._headers:
            self.set_header("X-Request-Id", self.request_id)
        return super().flush(include_footers)

    def note_invocation(self, invocation_id: str) -> None:
        """This request started an invocation: its id is the request's, so the record can be found from it."""
        self._faas_request_id = invocation_id
        self.set_header("X-Request-Id", invocation_id)

    async def prepare(self) -> None:
        try:
            await self.admit()
        except (HttpError, web.HTTPError) as refusal:
            if self._finished or not self._small_body():
                self._closing = True
                raise  # answered at once, and the connection closed: its body is never read
            # A small body is read (and dropped) first, then the refusal answered: a client that writes its whole
            # request before it reads gets the answer, where closing with its body unread would reset the
            # connection under it.
            self._refusal = refusal
            setattr(self, (self.request.method or "get").lower(), self._refuse)

    async def admit(self) -> None:
        """Raise the answer to a request that may not go on; runs before any of the body is read."""
        size = sum(len(name) + len(value) + 4 for name, value in self.request.headers.get_all())
        if size > MAX_HEADER_BYTES:
            raise HttpError(
                431, "HeadersTooLarge", f"the request headers are {size} bytes; the limit is {MAX_HEADER_BYTES}"
            )
        method = (self.request.method or "").lower()
        if getattr(type(self), method, None) is web.RequestHandler._unimplemented_method:
            raise web.HTTPError(405)  # before the token: a method no route here has is refused alike for all
        self.faas_admit()
        awaitable = super().prepare()
        if awaitable is not None:
            await awaitable
        if self._finished:
            return
        # A preflight runs nothing and carries no credentials: options() answers it (405 unless CORS is configured).
        if method not in (*self.unauthenticated, "options"):
            caller: Caller = self.faas_guard(public=method in self.public_methods)
            if not caller.admin and method not in self.key_methods:
                raise HttpError(
                    403, "Forbidden", "a function key reaches only its functions; this route needs the server's token"
                )
            self.faas_caller = caller

    def check_scope(self, name: str) -> None:
        """403 unless the request's caller may call the function `name`."""
        if self.faas_caller is not None and not self.faas_caller.may_call(name):
            raise HttpError(403, "Forbidden", "this function key does not reach that function")

    def _small_body(self) -> bool:
        if "chunked" in self.request.headers.get("Transfer-Encoding", "").lower():
            return False
        declared = self.request.headers.get("Content-Length", "0")
        return declared.isdigit() and int(declared) <= SMALL_REFUSED_BODY

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        assert self._refusal is not None
        raise self._refusal

    def data_received(self, chunk: bytes) -> None:
        """Only the function endpoints take a body; any other route's is read and dropped, never kept."""

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def send_reply(self, reply: Reply) -> None:
        if isinstance(reply.body, bytes):
            self.set_status(reply.status)
            self.set_header("Content-Type", "application/octet-stream")
            self.finish(reply.body)
        else:
            self.send_json(reply.body, reply.status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if self._closing:
            self.set_header("Connection", "close")  # Tornado closes it, its body unread: say so to keep-alive clients
        if isinstance(error, HttpError):
            self.set_status(error.status)
            if error.retry_after is not None:
                self.set_header("Retry-After", str(error.retry_after))
            if error.status == 401:
                self.set_header("WWW-Authenticate", 'Bearer realm="jupyter-faas"')
            body = error.body()
        else:
            reason = http.client.responses.get(status_code, "Error")
            message = getattr(error, "log_message", None) or reason
            if not isinstance(error, web.HTTPError) and error is not None:
                # Our own bug: say so plainly; the details go to the server's log, never to the caller.
                message = "the gateway failed while handling this request; see the server log"
            body = {"error": {"type": reason.replace(" ", ""), "message": message}}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HttpError):
            return  # an answer, not a failure of the server
        super().log_exception(typ, value, tb)


class _Invoke(_Faas):
    """POST {base}faas/functions/NAME: runs the function; ?async=true queues it instead.

    Its body is kept only once the request is admitted and authenticated, and only within the server's
    `BodyBudget`: a request that would take it past `faas.http.max-body-memory` gets 503 before its body is read.
    """

    public_methods = ("post",)
    key_methods = ("post",)
    _reserved = 0
    _received = False
    # A generator's items being answered: closed if the caller goes away, which stops the function.
    _answering: ItemStream | None = None

    @property
    def body_budget(self) -> BodyBudget:
        budget: BodyBudget = self.settings["faas_body_budget"]
        return budget

    async def admit(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = self.endpoints.max_body()
        await super().admit()
        if self._finished:
            return
        name = self.path_kwargs["name"]
        self.check_scope(name)
        if self.faas_caller is not None:
            # Before the body is read: a request past its rate or quota costs the server nothing more.
            self.endpoints.admit_call(self.faas_caller, name)
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._limit:
            raise HttpError(413, "PayloadTooLarge", f"the request body is {declared} bytes; the limit is {self._limit}")
        wanted = int(declared) if declared.isdigit() else self._limit
        if not self.body_budget.reserve(wanted):
            raise Busy(
                f"the server holds at most {self.body_budget.limit} bytes of request bodies at once "
                "(faas.http.max-body-memory); try again shortly"
            )
        self._reserved = wanted

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        # Past the limit (or the reservation) nothing more is kept; post() answers 413 once the body has been read.
        if self._size <= min(self._limit, self._reserved):
            self._chunks.append(chunk)

    def _release(self) -> None:
        if self._reserved:
            self.body_budget.release(self._reserved)
            self._reserved = 0

    def on_connection_close(self) -> None:
        # Gone before its body was whole: post() never runs. Once it runs, it gives the reservation back itself.
        if not self._received:
            self._chunks = []
            self._release()
        if self._answering is not None:
            # Also before its first item, when nothing has been written yet that could find the caller gone.
            self._answering.close()
        super().on_connection_close()

    def on_finish(self) -> None:
        self._release()
        super().on_finish()

    async def post(self, name: str) -> None:
        self._received = True
        try:
            if self._size > self._limit:
                raise HttpError(413, "PayloadTooLarge", f"the request body is over the limit of {self._limit} bytes")
            body = b"".join(self._chunks)
            self._chunks = []
            content_type = self.request.headers.get("Content-Type", "")
            asynchronous = self.get_query_argument("async", "false").lower() in ("true", "1", "yes")
            key = self.request.headers.get(IDEMPOTENCY_HEADER)
            # A W3C trace context: the parent of this invocation's span (and so of its calls').
            traceparent = self.request.headers.get(TRACEPARENT_HEADER)
            if key is not None and self.faas_caller is not None:
                reply, kept = await self.endpoints.invoke_once(
                    self.faas_caller, key, name, content_type, body, asynchronous, self.note_invocation, traceparent
                )
                if kept is not None:
                    self.set_header("Idempotent-Replayed", "true")
                    self.note_invocation(kept)
                self.send_reply(reply)
            elif asynchronous:
                # Journaling writes and syncs the body to disk: never on the event loop.
                reply = await asyncio.to_thread(self.endpoints.invoke_async, name, content_type, body, traceparent)
                self.note_invocation(reply.body["id"])
                self.send_reply(reply)
            elif self.endpoints.streams(name):
                await self._stream(name, content_type, body, traceparent)
            else:
                answer = await self.endpoints.invoke(
                    name, content_type, body, on_submit=self.note_invocation, traceparent=traceparent
                )
                self.send_reply(answer)
        finally:
            self._release()

    async def _stream(self, name: str, content_type: str, body: bytes, traceparent: str | None = None) -> None:
        """A generator's answer: chunked, each item as it is yielded (Server-Sent Events if the caller asks)."""
        stream = self.endpoints.invoke_stream(
            name, content_type, body, on_submit=self.note_invocation, traceparent=traceparent
        )
        events = _streaming.wants_events(self.request.headers.get("Accept", ""))
        self._answering = stream
        try:
            await _streaming.answer(self, name, stream, events)
        finally:
            self._answering = None


class _Functions(_Faas):
    def get(self) -> None:
        self.send_json({"functions": self.endpoints.functions()})


class _Function(_Faas):
    def get(self, name: str) -> None:
        self.send_json(self.endpoints.function(name))

    def delete(self, name: str) -> None:
        self.endpoints.undeploy(name)
        self.set_status(204)
        self.finish()


class _FunctionInvocations(_Faas):
    def get(self, name: str) -> None:
        try:
            limit = int(self.get_query_argument("limit", "20"))
        except ValueError:
            raise HttpError(400, "BadRequest", "limit must be a whole number") from None
        self.send_json({"invocations": self.endpoints.invocations_of(name, limit)})


class _Platform(_Faas):
    def get(self) -> None:
        self.send_json(self.endpoints.platform_state())


class _Health(_Faas):
    unauthenticated = ("get",)

    def get(self) -> None:
        reply = self.endpoints.health()
        if reply.status == 503:
            self.set_header("Retry-After", "1")
        self.send_reply(reply)


class _Invocation(_Faas):
    """An invocation's state: a function key reaches those of its own functions (the id of an async call)."""

    key_methods = ("get",)

    def get(self, ident: str) -> None:
        answer = self.endpoints.invocation(ident)
        self.check_scope(str(answer.get("function", "")))
        self.send_json(answer)


# The largest body the keys route reads: a list of function names.
MAX_KEYS_BODY = 64 * 2**10


class _Keys(_Faas):
    """GET: every function key, without secrets. POST {"functions": [NAME, ...] or "*", "note": TEXT}: a new key,
    its secret in the answer this once only (201)."""

    _kept: list[bytes]
    _kept_size = 0

    async def admit(self) -> None:
        self._kept = []
        await super().admit()

    def data_received(self, chunk: bytes) -> None:
        # Past the limit nothing more is kept; post() answers 413 once the body has been read.
        self._kept_size += len(chunk)
        if self._kept_size <= MAX_KEYS_BODY:
            self._kept.append(chunk)

    async def get(self) -> None:
        keys = await asyncio.to_thread(self.endpoints.keys.listed)
        self.send_json({"keys": described(keys)})

    async def post(self) -> None:
        if self._kept_size > MAX_KEYS_BODY:
            raise HttpError(413, "PayloadTooLarge", f"a key's request body is at most {MAX_KEYS_BODY} bytes")
        try:
            data = json.loads(b"".join(self._kept) or b"{}")
        except (ValueError, RecursionError) as e:
            raise HttpError(400, "InvalidJSON", f"the request body is not valid JSON: {e}") from None
        if not isinstance(data, dict) or "functions" not in data:
            raise HttpError(422, "KeyError", 'send {"functions": ["NAME", ...]}, or {"functions": "*"} for all')
        try:
            # The store writes and syncs a file: never on the event loop.
            key, secret = await asyncio.to_thread(self.endpoints.keys.create, data["functions"], data.get("note", ""))
        except FunctionKeyError as e:
            raise HttpError(422, "KeyError", str(e)) from None
        self.send_json({**key.to_dict(), "key": secret}, 201)


class _Key(_Faas):
    async def get(self, ident: str) -> None:
        key = await asyncio.to_thread(self.endpoints.keys.get, ident)
        if key is None:
            raise HttpError(404, "NotFound", f"no function key {shown_id(ident)}")
        self.send_json(key.to_dict())

    async def delete(self, ident: str) -> None:
        if not await asyncio.to_thread(self.endpoints.keys.revoke, ident):
            raise HttpError(404, "NotFound", f"no function key {shown_id(ident)}")
        self.set_status(204)
        self.finish()


def shown_id(ident: str) -> str:
    return repr(ident[:40])


class _DeadLetters(_Faas):
    """GET: one page of dead letters, `?limit=` (1 to 1000, default 100) from after `?after=` (a page's `next`),
    of one function's with `?function=NAME`."""

    async def get(self) -> None:
        try:
            limit = int(self.get_query_argument("limit", str(DEFAULT_PAGE)))
        except ValueError:
            raise HttpError(400, "BadRequest", "limit must be a whole number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise HttpError(400, "BadRequest", f"limit must be from 1 to {MAX_PAGE}")
        after = self.get_query_argument("after", None)
        function = self.get_query_argument("function", None)
        # Reading the index and stat-ing inputs is file work: never on the event loop.
        self.send_json(await asyncio.to_thread(self.endpoints.dead_letter_page, limit, after, function))


class _DeadLetter(_Faas):
    async def get(self, ident: str) -> None:
        self.send_json(await asyncio.to_thread(self.endpoints.dead_letter, ident))

    async def delete(self, ident: str) -> None:
        await asyncio.to_thread(self.endpoints.discard, ident)
        self.set_status(204)
        self.finish()


class _Replay(_Faas):
    async def post(self, ident: str) -> None:
        reply = await asyncio.to_thread(self.endpoints.replay, ident)
        self.note_invocation(reply.body["id"])
        self.send_reply(reply)


class _Triggers(_Faas):
    def get(self) -> None:
        self.send_json({"triggers": self.endpoints.trigger_list()})


class _OpenAPI(_Faas):
    def get(self) -> None:
        self.send_json(self.endpoints.openapi())


class _Metrics(_Faas):
    def get(self) -> None:
        self.set_header("Content-Type", METRICS_CONTENT_TYPE)
        self.finish(self.endpoints.metrics.text())


class NotFound(_Faas):
    """Any other path under faas/, any method: a JSON 404, with the same headers as every other answer."""

    unauthenticated = ("get", "head", "post", "put", "patch", "delete", "options")

    def _not_found(self, *args: Any, **kwargs: Any) -> None:
        raise HttpError(404, "NotFound", f"nothing is served at {self.request.path}")

    get = head = post = put = patch = delete = options = _not_found


_ROUTES: list[tuple[str, type[_Faas]]] = [
    (rf"faas/functions/{_NAME}", _Invoke),
    (r"faas/api/functions", _Functions),
    (rf"faas/api/functions/{_NAME}", _Function),
    (rf"faas/api/functions/{_NAME}/invocations", _FunctionInvocations),
    (r"faas/api/platform", _Platform),
    (r"faas/api/health", _Health),
    (rf"faas/api/invocations/{_ID}", _Invocation),
    (r"faas/api/dead-letters", _DeadLetters),
    (rf"faas/api/dead-letters/{_ID}", _DeadLetter),
    (rf"faas/api/dead-letters/{_ID}/replay", _Replay),
    (r"faas/api/triggers", _Triggers),
    (r"faas/api/openapi\.json", _OpenAPI),
    (r"faas/metrics", _Metrics),
    (r"faas/api/keys", _Keys),
    (rf"faas/api/keys/{_ID}", _Key),
]


def joined(handler: type[_Faas], base: type[web.RequestHandler], mark_public: Any = None) -> type:
    """`handler` joined with the app's base class (its authentication), streaming its body: Tornado would read
    a whole body before `prepare` otherwise, so before the request is admitted and authenticated."""
    namespace: dict[str, Any] = {}
    # A function key is no login of the app's own: the methods it may use are let through to `faas_guard`.
    for method in (*getattr(handler, "unauthenticated", ()), *getattr(handler, "key_methods", ())):
        if mark_public is not None:
            namespace[method] = mark_public(getattr(handler, method))
    combined = type(f"Faas{handler.__name__.lstrip('_')}Handler", (handler, base), namespace)
    return web.stream_request_body(combined)


def routes(base: type[web.RequestHandler], prefix: str, mark_public: Any = None) -> list[tuple[str, type]]:
    """The handlers, each joined with the app's base class under `prefix`; last, a JSON 404 for the rest of faas/.

    `mark_public` decorates the methods that need no authentication, for apps that check in `prepare`.
    """
    made = [(prefix + pattern, joined(handler, base, mark_public)) for pattern, handler in _ROUTES]
    made.append((prefix + r"faas(?:/.*)?", joined(NotFound, base, mark_public)))
    return made
