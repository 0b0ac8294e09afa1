"""The Jupyter server extension: it owns the server's platform, its registry and its endpoints."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any
from urllib.parse import urlsplit

import prometheus_client
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from tornado import web

from jupyter_faas import config as _config
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.dispatch.sharing import Sharing
from jupyter_faas.gateway.handlers import routes, settings_for
from jupyter_faas.gateway.keys import OWNER, PREFIX, Caller, bearer, caller_of
from jupyter_faas.gateway.service import Endpoints, HttpError
from jupyter_faas.gateway.triggers import TriggerStore
from jupyter_faas.record.registry import Registry


class _JupyterBase(APIHandler):
    """The server's own authentication and authorization, on the resource "faas".

    CORS only as the server is configured for it (`allow_origin`, `allow_origin_pat`, or an
    Access-Control-Allow-Origin in its `headers`): not jupyter_server's default of echoing any Origin
    to a token-authenticated request, nor allow headers on every preflight.

    The server checks the Host itself. A request from a web page of another origin is refused on every faas
    route, token or not, unless the server's CORS settings allow that origin.

    A function key (`Authorization: Bearer fk_...`) is no login of the server's: its identity provider never
    knows it, so on every route of the server's own (contents, kernels, terminals) it is no user at all. Here it
    reaches its own functions only.
    """

    auth_resource = "faas"

    def faas_admit(self) -> None:
        origin = self.request.headers.get("Origin")
        # A preflight runs nothing; options() answers it (405 unless CORS is configured).
        if origin is None or self.allow_origin == "*" or self.request.method == "OPTIONS":
            return
        origin = origin.strip().lower()
        if urlsplit(origin).netloc and urlsplit(origin).netloc == self.request.headers.get("Host", "").lower():
            return
        if self.allow_origin and self.allow_origin == origin:
            return
        # re.match takes the pattern as a string or compiled, as jupyter_server keeps it (2.14 and later).
        if self.allow_origin_pat and re.match(self.allow_origin_pat, origin):
            return
        raise HttpError(403, "OriginNotAllowed", "requests from the web pages of other origins are refused")

    def _cors_configured(self) -> bool:
        return bool(
            self.allow_origin
            or self.allow_origin_pat
            or "Access-Control-Allow-Origin" in self.settings.get("headers", {})
        )

    def set_cors_headers(self) -> None:
        if self._cors_configured():
            super().set_cors_headers()

    @allow_unauthenticated
    def options(self, *args: Any, **kwargs: Any) -> None:
        if not self._cors_configured():
            raise web.HTTPError(405)
        super().options(*args, **kwargs)

    def _function_key(self) -> str | None:
        given = bearer(self.request.headers.get("Authorization", ""))
        return given if given is not None and given.startswith(PREFIX) else None

    def check_xsrf_cookie(self) -> None:
        # A function key comes in a header no web page of another origin can set without CORS: no XSRF to fear.
        if self._function_key() is not None and not getattr(self, "_jupyter_current_user", None):
            return
        super().check_xsrf_cookie()

    def faas_guard(self, public: bool = False) -> Caller:
        user = self.current_user
        if not user:
            given = self._function_key()
            caller = None if given is None else caller_of(self.settings["faas_endpoints"].keys, given)
            if caller is not None:
                return caller
            if given is not None:
                raise HttpError(403, "Forbidden", "the function key is wrong, or it was revoked")
            raise web.HTTPError(403, "log in, or send Authorization: token YOUR_TOKEN")
        action = "read" if self.request.method in ("GET", "HEAD") else "write"
        if not self.authorizer.is_authorized(self, user, action, self.auth_resource):
            raise web.HTTPError(403, f"not allowed to {action} faas")
        return OWNER


class FaasExtension(ExtensionApp):
    """Serverless functions for this Jupyter server: `%%faas NAME --http` in any of its kernels deploys one."""

    name = "jupyter_faas"
    description = "Serverless functions on an elastic Dask cluster, as HTTP endpoints of this server."
    load_other_extensions = True

    def initialize_settings(self) -> None:
        platform = _platform.current(start=False)
        failure: list[BaseException] = []

        def start() -> None:
            try:
                platform.start()
            except BaseException as e:
                failure.append(e)

        # Dask's synchronous API must not run on the thread of the server's event loop.
        starter = threading.Thread(target=start, name="faas-start")
        starter.start()
        starter.join()
        if failure:
            raise failure[0]
        state_dir = _config.state_dir()
        registry = Registry(state_dir / "registry")
        self._platform = platform
        # jupyter_server sets serverapp before it calls initialize_settings.
        serverapp = self.serverapp
        if serverapp is None:
            raise RuntimeError("jupyter-faas: the server extension was loaded without a server")
        url = serverapp.connection_url
        self._endpoints = Endpoints(platform, registry, state_dir, serverapp.base_url, url, starting=True)
        triggers = TriggerStore(state_dir / "triggers")
        # The faas_* series also on the server's own /metrics, under its authenticate_prometheus setting.
        try:
            self._unpublish_metrics = self._endpoints.metrics.publish_on(prometheus_client.REGISTRY)
        except ValueError as e:  # a series of the same name from elsewhere: faas/metrics still has them all
            self.log.warning("jupyter-faas: the faas_* series are not on the server's /metrics: %s", e)
            self._unpublish_metrics = lambda: None
        self._endpoints.start_triggers(triggers)
        self._endpoints.mark_ready()
        self._sharing = Sharing(platform, state_dir / "registry", url, state_dir)
        _deploy.serve_here(registry, url, triggers)
        self.settings.update(settings_for(self._endpoints))
        self.log.info(
            "jupyter-faas: %d function(s) deployed, cluster at %s (up to %d workers)",
            len(registry.deployments()), platform.scheduler_address, platform.maximum,
        )  # fmt: skip

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes(_JupyterBase, "", mark_public=allow_unauthenticated))

    async def stop_extension(self) -> None:
        sharing = getattr(self, "_sharing", None)
        if sharing is not None:
            sharing.close()
            self._unpublish_metrics()
            self._endpoints.close()
            _deploy.serve_here(None)
            await asyncio.to_thread(self._platform.shutdown)


def extension_points() -> list[dict[str, Any]]:
    return [{"module": "jupyter_faas.gateway.extension", "app": FaasExtension}]
