"""What the trigger runner calls in the gateway: start an invocation of a deployed function, dead-letter a failure."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from jupyter_faas.definition.signature import takes_bytes
from jupyter_faas.dispatch.platform import Platform, pack_calls
from jupyter_faas.errors import ArgumentsTooLarge, InputRefused, MissingSecret, QueueFull, RegistryError
from jupyter_faas.gateway.answers import error_for
from jupyter_faas.gateway.triggers import TriggerSpec
from jupyter_faas.record.deadletters import DeadLetters
from jupyter_faas.record.registry import Registry

log = logging.getLogger("jupyter_faas.endpoints")


class TriggerFiring:
    """Schedules and file drops, fired from this process as background invocations of what the registry holds."""

    def __init__(self, platform: Platform, registry: Registry, dead_letters: DeadLetters) -> None:
        self.platform = platform
        self.registry = registry
        self.dead_letters = dead_letters
        # (function, trigger kind) pairs already logged as waiting for a deployment: logged once, not every tick.
        self._missing: set[tuple[str, str]] = set()

    def launch(self, name: str, args: tuple[Any, ...], kind: str, on_done: Callable[[Future[Any]], None]) -> bool:
        """Start one invocation for a trigger; False (and a log line) if it cannot start now."""
        try:
            deployment = self.registry.get(name)
        except RegistryError as e:
            log.warning("jupyter-faas: %s trigger of %s cannot run: %s", kind, name, e)
            return False
        if deployment is None:
            if (name, kind) not in self._missing:
                self._missing.add((name, kind))
                log.warning("jupyter-faas: the %s trigger of %s waits: %s is not deployed", kind, name, name)
            return False
        self._missing.discard((name, kind))
        definition = deployment.definition
        if kind == "schedule" and not definition.signature.parameters:
            args = ()  # a function without parameters is called with none
        try:
            blob = pack_calls(name, [(args, {})])
        except ArgumentsTooLarge as e:
            log.warning("jupyter-faas: %s trigger of %s: %s", kind, name, e)
            if kind != "file":
                return False
            # A file within the limit on disk but not once serialized: it fails now, as a file past it does,
            # so it is dead-lettered and marked, never left waiting for a call that cannot be made.
            refused: Future[Any] = Future()
            refused.id = uuid.uuid4().hex  # type: ignore[attr-defined]  # read like an InvocationFuture's
            refused.set_exception(InputRefused(str(e)))
            on_done(refused)
            return True
        except TypeError as e:
            log.warning("jupyter-faas: %s trigger of %s: %s", kind, name, e)
            return False
        try:
            future = self.platform.invoke(definition, blob, trigger=kind, background=True)
        except (MissingSecret, QueueFull) as e:
            log.warning("jupyter-faas: %s trigger of %s waits: %s", kind, name, e)
            return False
        future.add_done_callback(on_done)
        return True

    def failed(self, spec: TriggerSpec, args: tuple[Any, ...], error: BaseException, ident: str) -> None:
        readable = [a.isoformat() if isinstance(a, datetime) else a for a in args]
        body = json.dumps(readable, default=str).encode()
        deployment = self.registry.get(spec.function)
        version = deployment.version if deployment else ""
        if isinstance(error, InputRefused):
            details = {"type": "InputRefused", "message": str(error)}
        else:
            details = error_for(spec.function, error).body()["error"]
        # A file event keeps its path, and its replay reads the file again the way the trigger does.
        source = {"trigger": "file", "path": str(args[0])} if spec.kind == "file" else None
        self.dead_letters.add(ident, spec.function, version, "application/json", body, details, source)

    def takes_bytes(self, name: str) -> bool:
        deployment = self.registry.get(name)
        return deployment is not None and takes_bytes(deployment.definition)
