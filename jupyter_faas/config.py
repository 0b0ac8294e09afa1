"""The `faas` namespace of Dask's config: defaults, typed reads and validation."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dask.config
import yaml

# Re-exported: callers catch config.ConfigError next to the reads that raise it.
from jupyter_faas.errors import ConfigError as ConfigError
from jupyter_faas.errors import LimitError
from jupyter_faas.units import MIN_MEMORY, parse_count, parse_duration, parse_isolation, parse_size

_DEFAULTS_FILE = Path(__file__).with_name("faas.yaml")
with _DEFAULTS_FILE.open() as _f:
    DEFAULTS: dict[str, Any] = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)


def _flat_keys(tree: dict[str, Any], prefix: str) -> list[str]:
    keys = []
    for key, value in tree.items():
        full = f"{prefix}.{key}"
        # factory is a mapping value of its own, not a subtree of known keys
        if isinstance(value, dict) and full != "faas.cluster.factory":
            keys.extend(_flat_keys(value, full))
        else:
            keys.append(full)
    return keys


KNOWN_KEYS: tuple[str, ...] = tuple(_flat_keys(DEFAULTS["faas"], "faas"))


def _get(key: str) -> Any:
    # A call reads several keys: walking the nested config costs a tenth of dask.config.get, which first
    # canonicalises every part of the key. Where the exact key is not there, dask.config.get answers.
    node: Any = dask.config.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return dask.config.get(key)
        node = node[part]
    return node


_T = TypeVar("_T")


def _whole(value: Any, option: str, *, minimum: int) -> int:
    """`parse_count` without `allow_none`, which returns a number or raises: narrowed here for the type checker."""
    number = parse_count(value, option, minimum=minimum)
    if number is None:
        raise AssertionError(f"{option}: parse_count gave None without allow_none")
    return number


# Parsed values by key and raw value (and its type: True == 1, yet only one of them may be valid): each key has
# one parser, and a value set at run time is a new raw value.
_PARSED: dict[tuple[str, type, Any], Any] = {}
_PARSED_MAX = 512


def _checked(key: str, parse: Callable[[Any], _T]) -> _T:
    raw = _get(key)
    try:
        cache_key: tuple[str, type, Any] | None = (key, type(raw), raw)
        hash(cache_key)
    except TypeError:
        cache_key = None  # a mapping or list: parsed each time
    if cache_key is not None and cache_key in _PARSED:
        parsed: _T = _PARSED[cache_key]
        return parsed
    try:
        parsed = parse(raw)
    except LimitError as e:
        raise ConfigError(str(e)) from None
    if cache_key is not None:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[cache_key] = parsed
    return parsed


def idle_timeout() -> float:
    return _checked("faas.cluster.idle-timeout", lambda v: parse_duration(v, "faas.cluster.idle-timeout", minimum=1))


def connect_timeout() -> float:
    return _checked(
        "faas.cluster.connect-timeout", lambda v: parse_duration(v, "faas.cluster.connect-timeout", minimum=0.1)
    )


def maximum_workers() -> int:
    value = _get("faas.cluster.maximum")
    if value is None:
        return os.cpu_count() or 1
    return _checked("faas.cluster.maximum", lambda v: _whole(v, "faas.cluster.maximum", minimum=1))


def slots_per_worker() -> int:
    return _checked("faas.cluster.slots-per-worker", lambda v: _whole(v, "faas.cluster.slots-per-worker", minimum=1))


def worker_memory() -> int:
    return _checked(
        "faas.cluster.worker-memory",
        lambda v: parse_size(v, "faas.cluster.worker-memory", minimum=MIN_MEMORY),
    )


def simulated_zones() -> int:
    return _checked("faas.cluster.zones", lambda v: _whole(v, "faas.cluster.zones", minimum=1))


def start_method() -> str:
    value = _get("faas.cluster.start-method")
    if isinstance(value, str) and value in ("spawn", "forkserver", "fork"):
        return value
    raise ConfigError(f"faas.cluster.start-method: expected one of spawn, forkserver, fork; got {value!r}")


def dashboard_address() -> str | None:
    value = _get("faas.cluster.dashboard-address")
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"faas.cluster.dashboard-address: expected an address like '127.0.0.1:0', got {value!r}")


def cluster_address() -> str | None:
    value = _get("faas.cluster.address")
    if value in (None, ""):
        return None
    if not isinstance(value, str) or ("://" not in value and ":" not in value):
        raise ConfigError(f"faas.cluster.address: expected a scheduler address like tcp://host:8786, got {value!r}")
    return value


@dataclass(frozen=True)
class FactorySpec:
    module: str
    class_name: str
    kwargs: dict[str, Any]


def cluster_factory() -> FactorySpec | None:
    value = _get("faas.cluster.factory")
    if value in (None, "", {}):
        return None
    form = "a mapping {module: ..., class: ..., kwargs: {...}}"
    if not isinstance(value, dict):
        raise ConfigError(f"faas.cluster.factory: expected {form}, got {value!r}")
    unknown = set(value) - {"module", "class", "kwargs"}
    if unknown or not isinstance(value.get("module"), str) or not isinstance(value.get("class"), str):
        raise ConfigError(f"faas.cluster.factory: expected {form}, got {value!r}")
    kwargs = value.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"faas.cluster.factory.kwargs: expected a mapping, got {kwargs!r}")
    return FactorySpec(value["module"], value["class"], dict(kwargs))


def records_per_function() -> int:
    return _checked(
        "faas.records.max-per-function",
        lambda v: _whole(v, "faas.records.max-per-function", minimum=1),
    )


def state_dir() -> Path:
    """Where durable state lives: `faas.state-dir`, or a "faas" folder in the Jupyter data dir."""
    value = _get("faas.state-dir")
    if value in (None, ""):
        from jupyter_core.paths import jupyter_data_dir

        return Path(jupyter_data_dir()) / "faas"
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"faas.state-dir: expected a folder path, got {value!r}")
    return Path(os.path.expanduser(os.fspath(value)))


def wasm_cache_dir() -> Path:
    """Where --runtime wasm keeps its builds: `faas.runtimes.wasm-cache`, or "runtimes/wasm" in the state dir."""
    value = _get("faas.runtimes.wasm-cache")
    if value in (None, ""):
        return state_dir() / "runtimes" / "wasm"
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"faas.runtimes.wasm-cache: expected a folder path, got {value!r}")
    return Path(os.path.expanduser(os.fspath(value)))


# The state dir holds deployed code, invocation inputs and results: only its owner may read it.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` and its missing parents, each new folder mode 0700 whatever the umask; `path` itself."""
    missing = []
    folder = Path(path)
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    Path(path).mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    for created in missing:
        # mkdir's mode is masked by the umask (and parents get the default): set it exactly.
        os.chmod(created, PRIVATE_DIR_MODE)
    return Path(path)


def open_private(path: Path, flags: int) -> int:
    """os.open(path) creating the file mode 0600 whatever the umask; a file of ours found looser is tightened."""
    descriptor = os.open(path, flags | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        if os.fstat(descriptor).st_mode & 0o777 != PRIVATE_FILE_MODE:
            os.fchmod(descriptor, PRIVATE_FILE_MODE)
    except OSError:  # another user's file: reading and writing it is all we need
        pass
    return descriptor


def append_private(path: Path, text: str) -> None:
    """Append `text` to a 0600 file, creating it."""
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "a") as file:
        file.write(text)


def write_private(path: Path, data: bytes) -> None:
    """Replace a 0600 file's contents, creating it."""
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_TRUNC), "wb") as file:
        file.write(data)


def share_server() -> bool:
    value = _get("faas.cluster.share-server")
    if isinstance(value, bool):
        return value
    raise ConfigError(f"faas.cluster.share-server: expected true or false, got {value!r}")


def log_enabled() -> bool:
    value = _get("faas.log.enabled")
    if isinstance(value, bool):
        return value
    raise ConfigError(f"faas.log.enabled: expected true or false, got {value!r}")


def log_max_records() -> int:
    return _checked("faas.log.max-records", lambda v: _whole(v, "faas.log.max-records", minimum=1))


def capture_max_bytes() -> int:
    return _checked("faas.capture.max-bytes", lambda v: parse_size(v, "faas.capture.max-bytes", minimum=1024))


def call_max_bytes() -> int:
    return _checked("faas.call.max-bytes", lambda v: parse_size(v, "faas.call.max-bytes", minimum=1))


def compose_max_depth() -> int:
    return _checked("faas.compose.max-depth", lambda v: _whole(v, "faas.compose.max-depth", minimum=1))


def queue_max_pending() -> int:
    return _checked("faas.queue.max-pending", lambda v: _whole(v, "faas.queue.max-pending", minimum=1))


def queue_max_pending_per_function() -> int:
    key = "faas.queue.max-pending-per-function"
    return _checked(key, lambda v: _whole(v, key, minimum=1))


def deadletters_max_bytes() -> int:
    return _checked("faas.deadletters.max-bytes", lambda v: parse_size(v, "faas.deadletters.max-bytes", minimum=1024))


def http_async_results_max_bytes() -> int:
    return _checked(
        "faas.http.async-results-max-bytes",
        lambda v: parse_size(v, "faas.http.async-results-max-bytes", minimum=0),
    )


def log_max_output() -> int:
    return _checked("faas.log.max-output", lambda v: parse_size(v, "faas.log.max-output", minimum=0))


def http_max_body() -> int:
    return _checked("faas.http.max-body", lambda v: parse_size(v, "faas.http.max-body", minimum=1))


def http_queue_timeout() -> float:
    return _checked("faas.http.queue-timeout", lambda v: parse_duration(v, "faas.http.queue-timeout"))


def http_read_timeout() -> float:
    return _checked("faas.http.read-timeout", lambda v: parse_duration(v, "faas.http.read-timeout"))


def http_max_body_memory() -> int:
    return _checked("faas.http.max-body-memory", lambda v: parse_size(v, "faas.http.max-body-memory", minimum=1))


def http_max_connections() -> int:
    return _checked("faas.http.max-connections", lambda v: _whole(v, "faas.http.max-connections", minimum=1))


def http_idempotency_ttl() -> float:
    return _checked("faas.http.idempotency-ttl", lambda v: parse_duration(v, "faas.http.idempotency-ttl"))


def http_allow_hosts() -> tuple[str, ...]:
    """`faas.http.allow-hosts`: Host names `serve` answers to besides the addresses it listens on."""
    value = _get("faas.http.allow-hosts")
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(host, str) for host in value):
        raise ConfigError(f"faas.http.allow-hosts: expected a list of host names, got {value!r}")
    for host in value:
        if not host or any(c.isspace() or c in "/@?#\\" or ord(c) < 32 for c in host):
            raise ConfigError(f"faas.http.allow-hosts: {host!r} is not a host name (NAME, NAME:PORT or *)")
    return tuple(value)


def http_tracebacks() -> bool:
    value = _get("faas.http.tracebacks")
    if isinstance(value, bool):
        return value
    raise ConfigError(f"faas.http.tracebacks: expected true or false, got {value!r}")


@dataclass(frozen=True)
class Pricing:
    """USD prices: per GB-second of memory, per request, and per hour of the always-on server."""

    gb_second: float
    request: float
    server_hour: float


def _price(key: str) -> float:
    value = _get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{key}: expected a price in USD like 0.0000166667, got {value!r}")
    try:
        price = float(value)
    except (ValueError, OverflowError):
        raise ConfigError(f"{key}: expected a price in USD like 0.0000166667, got {value!r}") from None
    if not price >= 0 or price == float("inf"):
        raise ConfigError(f"{key}: expected a price of zero or more, got {value!r}")
    return price


def pricing() -> Pricing:
    return Pricing(
        gb_second=_price("faas.pricing.gb-second"),
        request=_price("faas.pricing.request"),
        server_hour=_price("faas.pricing.server-hour"),
    )


@dataclass(frozen=True)
class FunctionDefaults:
    """`faas.defaults.*`: the limits a function gets for those it leaves unset (see `Limits.resolve`)."""

    timeout: float
    memory: int
    retries: int
    concurrency: int | None
    isolation: str


def function_defaults() -> FunctionDefaults:
    """`faas.defaults.*`, validated; a bad value names its config key."""
    return FunctionDefaults(
        timeout=_checked("faas.defaults.timeout", lambda v: parse_duration(v, "faas.defaults.timeout")),
        memory=_checked("faas.defaults.memory", lambda v: parse_size(v, "faas.defaults.memory", minimum=MIN_MEMORY)),
        retries=_checked("faas.defaults.retries", lambda v: _whole(v, "faas.defaults.retries", minimum=0)),
        concurrency=_checked(
            "faas.defaults.concurrency",
            lambda v: parse_count(v, "faas.defaults.concurrency", minimum=1, allow_none=True),
        ),
        isolation=_checked("faas.defaults.isolation", lambda v: parse_isolation(v, "faas.defaults.isolation")),
    )


def gateway_port() -> int:
    """`faas.gateway.port`: the port of a kernel's own gateway (no Jupyter server); 0 picks a free one."""
    port = _checked("faas.gateway.port", lambda v: _whole(v, "faas.gateway.port", minimum=0))
    if port > 65535:
        raise ConfigError(f"faas.gateway.port: expected a port from 0 to 65535, got {port}")
    return port


def tracing_otlp_endpoint() -> str | None:
    """`faas.tracing.otlp-endpoint`: the OTLP/HTTP URL each invocation's span is sent to; None sends none."""
    value = _get("faas.tracing.otlp-endpoint")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
        raise ConfigError(
            f"faas.tracing.otlp-endpoint: expected an http:// or https:// URL (an OTLP/HTTP traces endpoint, "
            f"e.g. http://localhost:4318/v1/traces), got {value!r}"
        )
    return value


_VALIDATORS = {
    "faas.cluster.idle-timeout": idle_timeout,
    "faas.cluster.connect-timeout": connect_timeout,
    "faas.cluster.maximum": maximum_workers,
    "faas.cluster.slots-per-worker": slots_per_worker,
    "faas.cluster.worker-memory": worker_memory,
    "faas.cluster.start-method": start_method,
    "faas.cluster.zones": simulated_zones,
    "faas.cluster.dashboard-address": dashboard_address,
    "faas.cluster.address": cluster_address,
    "faas.cluster.factory": cluster_factory,
    "faas.records.max-per-function": records_per_function,
    "faas.state-dir": state_dir,
    "faas.log.enabled": log_enabled,
    "faas.cluster.share-server": share_server,
    "faas.log.max-records": log_max_records,
    "faas.log.max-output": log_max_output,
    "faas.capture.max-bytes": capture_max_bytes,
    "faas.call.max-bytes": call_max_bytes,
    "faas.queue.max-pending": queue_max_pending,
    "faas.queue.max-pending-per-function": queue_max_pending_per_function,
    "faas.deadletters.max-bytes": deadletters_max_bytes,
    "faas.http.max-body": http_max_body,
    "faas.http.async-results-max-bytes": http_async_results_max_bytes,
    "faas.http.queue-timeout": http_queue_timeout,
    "faas.http.read-timeout": http_read_timeout,
    "faas.http.max-body-memory": http_max_body_memory,
    "faas.http.max-connections": http_max_connections,
    "faas.http.allow-hosts": http_allow_hosts,
    "faas.http.tracebacks": http_tracebacks,
    "faas.http.idempotency-ttl": http_idempotency_ttl,
    "faas.pricing.gb-second": pricing,
    "faas.runtimes.wasm-cache": wasm_cache_dir,
    "faas.gateway.port": gateway_port,
    "faas.tracing.otlp-endpoint": tracing_otlp_endpoint,
}


def validate_all() -> None:
    """Read every known key, so that a bad value fails early with its key named."""
    function_defaults()
    for check in _VALIDATORS.values():
        check()


def set_value(key: str, raw: str) -> Any:
    """`%faas config key=value`: set one known key for this process, validated before it takes effect."""
    if not key.startswith("faas."):
        key = f"faas.{key}"
    if key not in KNOWN_KEYS:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(KNOWN_KEYS)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        # ValueError: YAML's own number past what Python reads (an int of over 4300 digits).
        shown = raw if len(raw) <= 80 else raw[:80] + "..."
        raise ConfigError(f"{key}: could not read value {shown!r} ({type(e).__name__})") from None
    with dask.config.set({key: value}):
        validate_all()
    dask.config.set({key: value})
    return value


def current() -> dict[str, Any]:
    return {key: _get(key) for key in KNOWN_KEYS}
