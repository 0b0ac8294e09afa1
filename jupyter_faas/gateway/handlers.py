"""Tornado handlers of the endpoints and the REST API: they parse, authorize and delegate to Endpoints."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any

from tornado import web

from jupyter_faas.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from jupyter_faas.gateway.service import Endpoints, HttpError, Reply

_NAME = r"(?P<name>[^/]+)"
_ID = r"(?P<ident>[^/]+)"

# Request headers past this many bytes get 431 (the HTTP server itself drops a connection far past it).
MAX_HEADER_BYTES = 32 * 2**10


class _Faas(web.RequestHandler):
    """What every handler shares; the app's own base class supplies its authentication, as
    `faas_guard(public=False)`, which raises unless the request may go on.

    Every answer carries `X-Content-Type-Options: nosniff` and an `X-Request-Id`: the invocation's id when
    the request started one, a fresh random id otherwise; and no `Server` banner.
    """

    faas_guard: Any
    _faas_request_id: str | None = None

    @property
    def endpoints(self) -> Endpoints:
        return self.settings["faas_endpoints"]

    @property
    def request_id(self) -> str:
        if self._faas_request_id is None:
            self._faas_request_id = uuid.uuid4().hex
        return self._faas_request_id

    def set_default_headers(self) -> None:
        # Called again when an error clears the headers: the same id then.
        super().set_default_headers()
        self.clear_header("Server")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Request-Id", self.request_id)

    def note_invocation(self, invocation_id: str) -> None:
        """This request started an invocation: its id is the request's, so the record can be found from it."""
        self._faas_request_id = invocation_id
        self.set_header("X-Request-Id", invocation_id)

    def prepare(self) -> Any:
        size = sum(len(name) + len(value) + 4 for name, value in self.request.headers.get_all())
        if size > MAX_HEADER_BYTES:
            raise HttpError(
                431, "HeadersTooLarge", f"the request headers are {size} bytes; the limit is {MAX_HEADER_BYTES}"
            )
        return super().prepare()

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
        if isinstance(error, HttpError):
            self.set_status(error.status)
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
    """POST {base}faas/functions/NAME: runs the function; ?async=true queues it instead."""

    streams_body = True

    async def prepare(self) -> None:
        awaitable = super().prepare()
        if awaitable is not None:
            await awaitable
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = self.endpoints.max_body()
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._limit:
            raise HttpError(413, "PayloadTooLarge", f"the request body is {declared} bytes; the limit is {self._limit}")

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        # Past the limit nothing more is kept; post() answers 413 once the body has been read.
        if self._size <= self._limit:
            self._chunks.append(chunk)

    async def post(self, name: str) -> None:
        self.faas_guard(public=True)
        if self._size > self._limit:
            raise HttpError(413, "PayloadTooLarge", f"the request body is over the limit of {self._limit} bytes")
        body = b"".join(self._chunks)
        content_type = self.request.headers.get("Content-Type", "")
        if self.get_query_argument("async", "false").lower() in ("true", "1", "yes"):
            reply = self.endpoints.invoke_async(name, content_type, body)
            self.note_invocation(reply.body["id"])
            self.send_reply(reply)
        else:
            self.send_reply(await self.endpoints.invoke(name, content_type, body, on_submit=self.note_invocation))


class _Functions(_Faas):
    def get(self) -> None:
        self.faas_guard()
        self.send_json({"functions": self.endpoints.functions()})


class _Function(_Faas):
    def get(self, name: str) -> None:
        self.faas_guard()
        self.send_json(self.endpoints.function(name))

    def delete(self, name: str) -> None:
        self.faas_guard()
        self.endpoints.undeploy(name)
        self.set_status(204)
        self.finish()


class _FunctionInvocations(_Faas):
    def get(self, name: str) -> None:
        self.faas_guard()
        try:
            limit = int(self.get_query_argument("limit", "20"))
        except ValueError:
            raise HttpError(400, "BadRequest", "limit must be a whole number") from None
        self.send_json({"invocations": self.endpoints.invocations_of(name, limit)})


class _Platform(_Faas):
    def get(self) -> None:
        self.faas_guard()
        self.send_json(self.endpoints.platform_state())


class _Health(_Faas):
    unauthenticated = ("get",)

    def get(self) -> None:
        self.send_json({"status": "ok"})


class _Invocation(_Faas):
    def get(self, ident: str) -> None:
        self.faas_guard()
        self.send_json(self.endpoints.invocation(ident))


class _DeadLetters(_Faas):
    def get(self) -> None:
        self.faas_guard()
        self.send_json({"dead_letters": self.endpoints.dead_letters.list()})


class _DeadLetter(_Faas):
    def delete(self, ident: str) -> None:
        self.faas_guard()
        self.endpoints.discard(ident)
        self.set_status(204)
        self.finish()


class _Replay(_Faas):
    def post(self, ident: str) -> None:
        self.faas_guard()
        reply = self.endpoints.replay(ident)
        self.note_invocation(reply.body["id"])
        self.send_reply(reply)


class _Triggers(_Faas):
    def get(self) -> None:
        self.faas_guard()
        self.send_json({"triggers": self.endpoints.trigger_list()})


class _OpenAPI(_Faas):
    def get(self) -> None:
        self.faas_guard()
        self.send_json(self.endpoints.openapi())


class _Metrics(_Faas):
    def get(self) -> None:
        self.faas_guard()
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
]


def joined(handler: type[_Faas], base: type[web.RequestHandler], mark_public: Any = None) -> type:
    """`handler` joined with the app's base class (its authentication)."""
    namespace: dict[str, Any] = {}
    for method in getattr(handler, "unauthenticated", ()):
        if mark_public is not None:
            namespace[method] = mark_public(getattr(handler, method))
    combined = type(f"Faas{handler.__name__.lstrip('_')}Handler", (handler, base), namespace)
    if getattr(handler, "streams_body", False):
        combined = web.stream_request_body(combined)
    return combined


def routes(base: type[web.RequestHandler], prefix: str, mark_public: Any = None) -> list[tuple[str, type]]:
    """The handlers, each joined with the app's base class under `prefix`; last, a JSON 404 for the rest of faas/.

    `mark_public` decorates the methods that need no authentication, for apps that check in `prepare`.
    """
    made = [(prefix + pattern, joined(handler, base, mark_public)) for pattern, handler in _ROUTES]
    made.append((prefix + r"faas(?:/.*)?", joined(NotFound, base, mark_public)))
    return made
