"""The public names: the package's `__all__`, and the exception tree a user catches, all under FaasError."""

from __future__ import annotations

import jupyter_faas
from jupyter_faas import errors


def test_all_exports() -> None:
    assert jupyter_faas.__all__ == [
        "FaasError",
        "FaasFunction",
        "FaasMemoryError",
        "FaasTimeout",
        "InvocationRecord",
        "RemoteError",
        "WorkerLost",
        "dashboard",
        "function",
        "invocations",
        "platform",
        "triggers",
    ]
    for name in jupyter_faas.__all__:
        assert getattr(jupyter_faas, name) is not None


# Each public exception, with the bases a user may catch it by.
EXCEPTIONS = {
    "FaasError": (Exception,),
    "FaasTimeout": (errors.FaasError, TimeoutError),
    "FaasMemoryError": (errors.FaasError, MemoryError),
    "WorkerLost": (errors.FaasError,),
    "RemoteError": (errors.FaasError,),
    "JavaScriptError": (errors.RemoteError,),
    "ScriptExit": (errors.RemoteError,),
    "RuntimeFailure": (errors.FaasError,),
    "NoCapacity": (errors.FaasError,),
    "VersionMismatch": (errors.FaasError,),
    "MissingSecret": (errors.FaasError,),
    "DefinitionError": (errors.FaasError, ValueError),
    "LimitError": (errors.FaasError, ValueError),
    "ConfigError": (errors.LimitError,),
    "TriggerError": (errors.FaasError, ValueError),
    "InputRefused": (errors.FaasError,),
    "ArgumentsTooLarge": (errors.FaasError, ValueError),
    "ResultTooLarge": (errors.FaasError,),
    "QueueFull": (errors.FaasError,),
    "RegistryError": (errors.FaasError,),
    "LogError": (errors.FaasError, OSError),
    "CallDepthExceeded": (errors.FaasError,),
    "NestedCallError": (errors.FaasError,),
    "FunctionKeyError": (errors.FaasError, ValueError),
    "ExportError": (errors.FaasError, ValueError),
}


def test_the_public_exceptions_and_their_bases() -> None:
    public = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.FaasError) and not name.startswith("_")
    }
    assert public == set(EXCEPTIONS)
    for name, bases in EXCEPTIONS.items():
        assert getattr(errors, name).__bases__ == bases, name


def test_the_tree_in_the_docstring_names_every_public_exception() -> None:
    for name in EXCEPTIONS:
        assert f" {name}" in (errors.__doc__ or ""), name


def test_the_exceptions_of_the_public_api_are_those_of_errors() -> None:
    for name in ("FaasError", "FaasTimeout", "FaasMemoryError", "WorkerLost", "RemoteError"):
        assert getattr(jupyter_faas, name) is getattr(errors, name)
