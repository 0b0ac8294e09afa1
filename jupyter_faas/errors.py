"""Every exception a user can see, and how a remote failure is raised again in the notebook.

Our exception hierarchy:

* FaasError
  + FaasTimeout (also TimeoutError)
  + FaasMemoryError (also MemoryError)
  + WorkerLost
  + RemoteError
    - JavaScriptError
    - ScriptExit
  + RuntimeFailure
  + NoCapacity
  + VersionMismatch
  + MissingSecret
  + DefinitionError (also ValueError)
  + LimitError (also ValueError)
    - ConfigError
  + TriggerError (also ValueError)
  + InputRefused
  + ArgumentsTooLarge (also ValueError)
  + QueueFull
  + ResultTooLarge
  + RegistryError
  + LogError (also OSError)
  + CallDepthExceeded
  + NestedCallError
  + FunctionKeyError (also ValueError)
  + ExportError (also ValueError)
"""

from __future__ import annotations

import contextlib


class FaasError(Exception):
    """Base class of jupyter-faas's own errors."""


class FaasTimeout(FaasError, TimeoutError):
    """An invocation ran past its timeout and was stopped."""


class FaasMemoryError(FaasError, MemoryError):
    """An invocation went over its memory limit and was stopped."""


class WorkerLost(FaasError):
    """The worker running an invocation went away before it answered."""


class RemoteError(FaasError):
    """An exception raised in a function whose type could not be rebuilt in the notebook."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message


class JavaScriptError(RemoteError):
    """An error a JavaScript cell threw: its name (`type_name`), its message, and the cell line it came from."""

    def __init__(self, type_name: str, message: str, line: int | None = None) -> None:
        super().__init__(type_name, message)
        self.line = line

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.line))


class ScriptExit(RemoteError):
    """A bash cell that exited with a non-zero status: `status`, and the end of its stderr."""

    def __init__(self, status: int, stderr: str) -> None:
        tail = stderr.strip()
        super().__init__("ScriptExit", f"exit status {status}" + (f"; stderr ends with:\n{tail}" if tail else ""))
        self.status = status
        self.stderr = stderr

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.status, self.stderr))


class RuntimeFailure(FaasError):
    """A runtime of another language, or its runner process, broke (not the cell): it is replaced for the next call."""


class NoCapacity(FaasError):
    """An invocation found no free slot within its queue timeout, and was never sent."""


class VersionMismatch(FaasError):
    """The client and the workers differ in a version that breaks unpickling; the message names both."""


class MissingSecret(FaasError):
    """A function declares a secret that the environment of the process running its platform does not have."""


class DefinitionError(FaasError, ValueError):
    """A cell or def that cannot become a function; the message says what to write instead."""


class LimitError(FaasError, ValueError):
    """A limit or config value that does not parse; the message names the option and the accepted form."""


class ConfigError(LimitError):
    """A `faas.*` config value that is missing, unknown or malformed."""


class TriggerError(FaasError, ValueError):
    """A trigger that cannot be set up; the message says what to write instead."""


class InputRefused(FaasError):
    """A dropped file that is not given to the function: past the call size limit, or not a regular file."""


class ArgumentsTooLarge(FaasError, ValueError):
    """A call's arguments, serialized, are past `faas.call.max-bytes`: refused before anything is sent."""


class QueueFull(FaasError):
    """Too many invocations that nobody waits on are pending: refused, never run; try again after `retry_after` s."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ResultTooLarge(FaasError):
    """A function's result, serialized, is past `faas.call.max-bytes`: dropped in the sandbox, never sent."""


class RegistryError(FaasError):
    """The registry folder cannot be read or written; the message names the path (never shown to an HTTP caller)."""


class LogError(FaasError, OSError):
    """The invocation log cannot be created, read or written; the message names the file."""


class CallDepthExceeded(FaasError):
    """A call made inside a function went deeper than faas.compose.max-depth; the message names the chain."""


class NestedCallError(FaasError):
    """A call made inside a function cannot go where it was made from: e.g. a process the function started."""


class FunctionKeyError(FaasError, ValueError):
    """A function key cannot be made, found or revoked, or the key store cannot be read; the message says which."""


def type_name(error: BaseException) -> str:
    """The name of the error's type as the function raised it, also when it could not be rebuilt here."""
    return error.type_name if isinstance(error, RemoteError) else type(error).__name__


class RemoteTraceback(Exception):
    """Carries the function's own traceback text, chained as the cause of the re-raised error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nThe function's traceback, on the worker:\n\n{self.text}"


def present(error: BaseException, function: str, worker: str | None, traceback_text: str) -> BaseException:
    """Make a remote error read like a local one: the function's own traceback, not the platform's frames.

    Plain Python shows the function's traceback as the chained cause; IPython shows only it,
    through its `_render_traceback_` protocol.
    """
    if traceback_text:
        error.__cause__ = RemoteTraceback(traceback_text)
        body = traceback_text.rstrip("\n").splitlines()
    else:
        body = [f"{type(error).__qualname__}: {error}"]
    where = f" on worker {worker}" if worker else ""
    lines = [f"{function} failed{where}:", *body]
    with contextlib.suppress(AttributeError, TypeError):
        error._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    return error


class ExportError(FaasError, ValueError):
    """A notebook or function that cannot be exported as asked: the message names the option and what to do."""
