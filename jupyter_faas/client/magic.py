"""The %%faas cell magic and the %faas line magic."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from IPython.core import magic_arguments as _magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from jupyter_faas import config as _config
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.client.function import FaasFunction
from jupyter_faas.contract import annotation_name
from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import check_name, from_cell
from jupyter_faas.definition.polyglot import LANGUAGES, from_lang_cell, from_wasm_cell
from jupyter_faas.definition.requirements import with_requirements
from jupyter_faas.definition.secrets import with_secrets
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.errors import ConfigError, DefinitionError, FaasError, FunctionKeyError, LimitError
from jupyter_faas.gateway.keys import NewKey
from jupyter_faas.gateway.ratelimit import check as check_limits
from jupyter_faas.ui import widgets as _widgets

_F = TypeVar("_F", bound=Callable[..., Any])


class _Decorator(Protocol):
    def __call__(self, func: _F, /) -> _F: ...


# IPython's magic_arguments decorators have no annotations; each returns the function it is given, with a parser.
magic_arguments = cast(Callable[[], _Decorator], _magic_arguments.magic_arguments)
argument = cast(Callable[..., _Decorator], _magic_arguments.argument)


def _faas_parser() -> argparse.ArgumentParser:
    """The parser `magic_arguments` hung on the `faas` method (an attribute it sets, unknown to the type checker)."""
    return cast(argparse.ArgumentParser, vars(FaasMagics.faas)["parser"])


_OPENERS = {"(": ")", "[": "]", "{": "}"}
# The function key each `%%faas NAME --http` of this kernel printed: the same one while the kernel lives and the
# key is not revoked, so that running the cell again does not make a new key each time.
_printed_keys: dict[str, NewKey] = {}
_LINE_COMMANDS = ("config", "status", "shutdown")


def split_line(line: str) -> list[str]:
    """Split on spaces outside quotes and brackets, keeping each token's text as written.

    `greeting="hello world"` and `xs=[1, 2]` stay one token each, quotes and all,
    so parameter defaults reach the Python parser unchanged.
    """
    tokens: list[str] = []
    current: list[str] = []
    closers: list[str] = []
    quote: str | None = None
    escaped = False
    for char in line:
        if quote is not None:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char.isspace() and not closers:
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(char)
        if char in "'\"":
            quote = char
        elif char in _OPENERS:
            closers.append(_OPENERS[char])
        elif closers and char == closers[-1]:
            closers.pop()
    if quote is not None:
        raise UsageError(f"%%faas: unterminated {quote} quote in {line.strip()!r}")
    if closers:
        raise UsageError(f"%%faas: unclosed bracket in {line.strip()!r}; expected {closers[-1]!r}")
    if current:
        tokens.append("".join(current))
    return tokens


def _unquote(value: str | None) -> str | None:
    if value and value[0] in "'\"":
        try:
            return str(ast.literal_eval(value))
        except (ValueError, SyntaxError):
            raise UsageError(f"%%faas: cannot read the quoted value {value}") from None
    return value


@magics_class
class FaasMagics(Magics):
    """`%%faas` makes a cell a stateless function on the platform; `%faas` shows and configures it."""

    @property
    def _user_ns(self) -> dict[str, Any]:
        # IPython sets `shell` when it registers the magics; only a FaasMagics made by hand has none.
        if self.shell is None:
            raise UsageError("%%faas needs an IPython shell")
        return cast(dict[str, Any], self.shell.user_ns)  # typed loosely (Any) in IPython

    @magic_arguments()
    @argument(
        "name",
        nargs="?",
        help="The function's name. With parameters (or a cell that is not a single def), the cell is its body.",
    )
    @argument("params", nargs="*", help="Parameters, one per token as in a def: text min_len=1 x:int")
    @argument("--timeout", help="Hard time limit, e.g. 30s, 500ms, '2 minutes' (default faas.defaults.timeout).")
    @argument("--memory", help="Memory limit, e.g. 256MB, 1GiB (default faas.defaults.memory).")
    @argument("--retries", help="Retries on an exception or a lost worker (default faas.defaults.retries).")
    @argument("--concurrency", help="Most invocations running at once (default: unlimited).")
    @argument("--zones", help="Spread invocations over this many zones of workers, and keep one warm in each.")
    @argument(
        "--isolation",
        help="warm: reuse a sandbox, restored after each call; fresh: a new process forked for each call "
        "(default faas.defaults.isolation).",
    )
    @argument(
        "--setup-timeout",
        dest="setup_timeout",
        help="For a class with setup(): how long setup may take in a new sandbox (default: the timeout).",
    )
    @argument(
        "--inputs",
        help="For an async function: invocations one sandbox runs at once on its event loop (default 1).",
    )
    @argument(
        "--requirements",
        nargs="+",
        metavar="REQ",
        help='Packages the function needs, e.g. "pillow>=10" numpy: checked here, installed on other clusters.',
    )
    @argument(
        "--secret",
        action="append",
        dest="secrets",
        metavar="NAME",
        help="Pass environment variable NAME from the platform's environment to each call (repeatable).",
    )
    @argument(
        "--http",
        action="store_true",
        help="Also deploy it as an HTTP endpoint of this notebook's Jupyter server (or of `jupyter faas serve`).",
    )
    @argument("--rate", help="With --http: calls per caller (each key, the owner) before it answers 429, e.g. 50/s.")
    @argument("--quota", help="With --http: calls per caller per UTC day past which it answers 429, e.g. 10000/day.")
    @argument("--every", help="Invoke it on a schedule, e.g. 30s or '5 minutes'.")
    @argument("--cron", help="Invoke it on a cron schedule, e.g. '*/5 * * * *'.")
    @argument("--on-file", dest="on_file", help="Invoke it once for each file dropped in this folder.")
    @argument("--pattern", help="With --on-file: only the files matching this glob, e.g. '*.png'.")
    @argument(
        "--runtime",
        help="python (default): the sandbox process; wasm: the cell built into a WebAssembly component, "
        "run by wasmtime in a fresh instance per call.",
    )
    @argument("--lang", help="python (default), javascript (Node.js) or bash: the language of the cell.")
    @argument("--allow-read", dest="allow_read", metavar="DIR", help="With --runtime wasm: one folder it may read.")
    @line_cell_magic
    def faas(self, line: str, cell: str | None = None) -> Any:
        """Turn the cell into a stateless function that runs on an elastic Dask cluster.

        Form 1, the cell is the body and its last expression the return value:

            %%faas word_count text min_len=1
            len([w for w in text.split() if len(w) >= min_len])

        Form 2, the cell defines one function (imports and constants beside it travel with it):

            %%faas --timeout 5s
            import hashlib
            def sha(data: bytes) -> str:
                return hashlib.sha256(data).hexdigest()

        As a line magic: `%faas` shows the platform's dashboard, `%faas status` one line about it,
        `%faas config [key=value ...]` reads or sets `faas.*` config, `%faas shutdown` stops the cluster.
        """
        if cell is None:
            return self._line(line)
        tokens = split_line(line)
        args = _faas_parser().parse_intermixed_args(tokens)
        try:
            name = None if args.name is None else check_name(args.name)
            limits = Limits.resolve(
                timeout=_unquote(args.timeout),
                memory=_unquote(args.memory),
                retries=_unquote(args.retries),
                concurrency=_unquote(args.concurrency),
                zones=_unquote(args.zones),
                isolation=_unquote(args.isolation),
                option_prefix="--",
                setup_timeout=_unquote(args.setup_timeout),
                inputs=_unquote(args.inputs),
            )
            runtime, lang = _runtime_options(args)
            if lang != "python":
                definition = from_lang_cell(cell, lang, limits, name, args.params, magic_line=line.strip())
            elif runtime == "wasm":
                progress = _BuildProgress()
                try:
                    definition = from_wasm_cell(
                        cell,
                        self._user_ns,
                        limits,
                        name=name,
                        params=args.params,
                        magic_line=line.strip(),
                        allow_read=_unquote(args.allow_read),
                        on_progress=progress,
                    )
                finally:
                    progress.done()
            else:
                definition = from_cell(
                    cell,
                    self._user_ns,
                    limits,
                    name=name,
                    params=args.params,
                    magic_line=line.strip(),
                )
            if args.requirements:
                definition = with_requirements(definition, [_unquote(r) or "" for r in args.requirements])
            if args.secrets:
                definition = with_secrets(definition, [_unquote(n) or "" for n in args.secrets])
            rate, quota = _unquote(args.rate), _unquote(args.quota)
            check_limits(rate, quota, prefix="--")
        except (LimitError, DefinitionError) as e:
            raise UsageError(str(e)) from None
        function = FaasFunction(definition)
        # Kept on the function: `jupyter faas serve` deploys every function of the notebook with them.
        function._rate, function._quota = rate, quota
        self._user_ns[definition.name] = function
        if args.http:
            try:
                url = function.deploy()
            except FaasError as e:
                raise UsageError(f"%%faas --http: {e}") from None
            print(_deployed_message(definition.name, url, definition.signature, _key_for(function)))
        if args.pattern is not None and args.on_file is None:
            raise UsageError("%%faas --pattern goes with --on-file FOLDER")
        try:
            if args.every is not None or args.cron is not None:
                spec = function.schedule(every=_unquote(args.every), cron=_unquote(args.cron))
                print(f"{definition.name} runs {spec['description']}")
            if args.on_file is not None:
                spec = function.on_file(_unquote(args.on_file), _unquote(args.pattern) or "*")
                print(f"{definition.name} runs for {spec['description']}")
        except FaasError as e:
            raise UsageError(f"%%faas: {e}") from None
        if _widgets.use_widgets():
            display(function.card)  # type: ignore[no-untyped-call]  # IPython's display has no annotations
            return None
        print(
            f"{definition.describe_signature()} is a serverless function ({definition.short_version}): "
            f"{limits.describe()}"
        )
        return None

    def _line(self, line: str) -> Any:
        words = split_line(line)
        if not words:
            _widgets.show_dashboard()
            return None
        command = words[0]
        if command == "status":
            platform = _platform.current(start=False)
            print(repr(platform))
            return None
        if command == "shutdown":
            _platform.current(start=False).shutdown()
            print("jupyter_faas platform shut down; it starts again on the next invocation")
            return None
        if command == "config":
            return self._config(words[1:])
        raise UsageError(
            f"%faas: unknown command {command!r}; use one of: {', '.join(_LINE_COMMANDS)} "
            "(or %%faas as a cell magic to define a function)"
        )

    def _config(self, assignments: list[str]) -> None:
        if not assignments:
            for key, value in _config.current().items():
                print(f"{key} = {value!r}")
            return
        for assignment in assignments:
            key, equals, raw = assignment.partition("=")
            if not equals or not key:
                raise UsageError(f"%faas config: expected key=value, got {assignment!r}")
            try:
                value = _config.set_value(key.strip(), raw.strip())
            except ConfigError as e:
                raise UsageError(str(e)) from None
            full_key = key if key.startswith("faas.") else f"faas.{key}"
            print(f"{full_key} = {value!r}")


def _runtime_options(args: argparse.Namespace) -> tuple[str, str]:
    """(runtime, language) from the magic line; options that apply only to the Python sandbox are refused."""
    runtime = (_unquote(args.runtime) or "python").lower()
    lang = (_unquote(args.lang) or "python").lower()
    if lang in ("js", "node"):
        lang = "javascript"
    if runtime not in ("python", "wasm"):
        raise UsageError(f"%%faas --runtime {runtime}: expected python or wasm")
    if lang not in LANGUAGES:
        raise UsageError(f"%%faas --lang {lang}: expected one of {', '.join(LANGUAGES)}")
    if lang != "python" and runtime == "wasm":
        raise UsageError(f"%%faas --runtime wasm runs Python cells; --lang {lang} runs on its own runner")
    if args.allow_read is not None and runtime != "wasm":
        raise UsageError("%%faas --allow-read goes with --runtime wasm (the Python sandbox reads what its user can)")
    if runtime == "python" and lang == "python":
        return runtime, lang
    chosen = f"--runtime {runtime}" if lang == "python" else f"--lang {lang}"
    python_only = {
        "--requirements": bool(args.requirements),
        "--secret": bool(args.secrets),
        "--isolation": args.isolation is not None and (_unquote(args.isolation) or "").lower() == "fresh",
    }
    for option, given in python_only.items():
        if given:
            raise UsageError(f"%%faas {option} applies to the Python sandbox only, not to {chosen}")
    return runtime, lang


class _BuildProgress:
    """Shows a WebAssembly build's progress in the cell's output, on one line rewritten in place."""

    def __init__(self) -> None:
        self._width = 0

    def __call__(self, text: str) -> None:
        padding = " " * max(self._width - len(text), 0)
        self._width = len(text)
        print(f"\r{text}{padding}", end="", flush=True)

    def done(self) -> None:
        if self._width:
            print(flush=True)


def _key_for(function: FaasFunction) -> str | None:
    """A function key for the printed curl line: this kernel's earlier one if still valid, else a new one."""
    try:
        earlier = _printed_keys.get(function.name)
        if earlier is not None and _deploy.key_store().get(earlier.id) is not None:
            return earlier
        made = function.create_key(note=f"printed by %%faas {function.name} --http")
    except (FunctionKeyError, FaasError):
        return None  # the line then asks for the server's token, as before keys
    _printed_keys[function.name] = made
    return made


def _deployed_message(name: str, url: str, signature: inspect.Signature, key: str | None = None) -> str:
    samples = {"int": 1, "float": 1.0, "str": "text", "bool": True, "list": [], "dict": {}}
    example = {
        p.name: samples.get(annotation_name(p.annotation) or "")
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
    }
    return (
        f"{name} is deployed at {url}\n"
        f"  curl -X POST {url} -H 'Authorization: Bearer {key or 'YOUR_TOKEN'}' "
        f"-H 'Content-Type: application/json' -d '{json.dumps(example)}'"
        + (
            f"\n  (a function key for {name} only; revoke it with {name}.revoke_key({getattr(key, 'id', '')!r}))"
            if key
            else ""
        )
    )
