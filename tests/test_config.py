"""The faas namespace of Dask's config: defaults, YAML files, environment variables and %faas config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask
import pytest

from jupyter_faas import config as _config


def test_defaults_are_registered_under_faas() -> None:
    assert dask.config.get("faas.cluster.idle-timeout") == "60s"
    assert dask.config.get("faas.defaults.memory") == "256MB"
    assert _config.idle_timeout() == 60.0
    assert _config.maximum_workers() == (os.cpu_count() or 1)
    assert _config.cluster_address() is None
    assert _config.cluster_factory() is None


def _read_in_fresh_process(expression: str, env: dict[str, str]) -> str:
    code = f"import jupyter_faas.config as c; print({expression})"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_environment_variables_set_keys() -> None:
    env = {"DASK_FAAS__CLUSTER__MAXIMUM": "3", "DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "5s"}
    assert _read_in_fresh_process("(c.maximum_workers(), c.idle_timeout())", env) == "(3, 5.0)"


def test_a_yaml_file_in_the_dask_config_folder_sets_keys(tmp_path: Path) -> None:
    (tmp_path / "faas.yaml").write_text("faas:\n  defaults:\n    timeout: 7s\n  cluster:\n    maximum: 5\n")
    env = {"DASK_CONFIG": str(tmp_path)}
    assert _read_in_fresh_process("(c.function_defaults().timeout, c.maximum_workers())", env) == "(7.0, 5)"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("faas.cluster.idle-timeout", "100ms", "faas.cluster.idle-timeout: .*at least 1s"),
        ("faas.cluster.maximum", 0, "faas.cluster.maximum: expected a whole number of at least 1"),
        ("faas.cluster.start-method", "teleport", "faas.cluster.start-method: expected one of"),
        ("faas.cluster.factory", "LocalCluster", "faas.cluster.factory: expected a mapping"),
        ("faas.cluster.address", 8786, "faas.cluster.address: expected a scheduler address"),
        ("faas.cluster.connect-timeout", "0s", "faas.cluster.connect-timeout: .*at least 0.1s"),
        ("faas.defaults.retries", -1, "faas.defaults.retries"),
        ("faas.defaults.isolation", "cold", "faas.defaults.isolation: expected one of warm, fresh"),
        ("faas.cluster.zones", 0, "faas.cluster.zones: expected a whole number of at least 1"),
        ("faas.http.max-body", "abc", "faas.http.max-body: expected a size"),
        ("faas.deadletters.max-bytes", "lots", "faas.deadletters.max-bytes: expected a size"),
        ("faas.call.max-bytes", "huge", "faas.call.max-bytes: expected a size"),
        ("faas.queue.max-pending", 0, "faas.queue.max-pending: expected a whole number of at least 1"),
        ("faas.queue.max-pending-per-function", "many", "faas.queue.max-pending-per-function"),
        ("faas.http.async-results-max-bytes", -5, "faas.http.async-results-max-bytes"),
        ("faas.http.max-body-memory", "lots", "faas.http.max-body-memory: expected a size"),
        ("faas.http.max-connections", 0, "faas.http.max-connections: expected a whole number of at least 1"),
        ("faas.http.allow-hosts", "evil.example", "faas.http.allow-hosts: expected a list of host names"),
        ("faas.http.allow-hosts", ["a b"], "faas.http.allow-hosts: 'a b' is not a host name"),
        ("faas.http.queue-timeout", "soon", "faas.http.queue-timeout: expected a duration"),
        ("faas.http.tracebacks", "maybe", "faas.http.tracebacks: expected true or false"),
        ("faas.runtimes.wasm-cache", 42, "faas.runtimes.wasm-cache: expected a folder path"),
        ("faas.gateway.port", -1, "faas.gateway.port: expected a whole number of at least 0"),
        ("faas.gateway.port", 70000, "faas.gateway.port: expected a port from 0 to 65535"),
        ("faas.gateway.port", "http", "faas.gateway.port"),
        ("faas.http.idempotency-ttl", "forever", "faas.http.idempotency-ttl: expected a duration"),
        ("faas.tracing.otlp-endpoint", "localhost:4318", "faas.tracing.otlp-endpoint: expected an http://"),
        ("faas.tracing.otlp-endpoint", 4318, "faas.tracing.otlp-endpoint: expected an http://"),
        ("faas.tracing.otlp-endpoint", "http://a b/v1/traces", "faas.tracing.otlp-endpoint"),
    ],
)
def test_a_bad_value_fails_validation_naming_its_key(key: str, value: object, message: str) -> None:
    with dask.config.set({key: value}), pytest.raises(_config.ConfigError, match=message):
        _config.validate_all()


def test_set_value_validates_before_it_takes_effect() -> None:
    before = dask.config.get("faas.cluster.idle-timeout")
    with pytest.raises(_config.ConfigError, match="idle-timeout"):
        _config.set_value("cluster.idle-timeout", "0.1s")
    assert dask.config.get("faas.cluster.idle-timeout") == before
    with pytest.raises(_config.ConfigError, match="unknown config key 'faas.cluster.speed'"):
        _config.set_value("cluster.speed", "fast")
    try:
        assert _config.set_value("faas.cluster.idle-timeout", "2s") == "2s"
        assert _config.idle_timeout() == 2.0
        assert _config.set_value("defaults.retries", "2") == 2
    finally:
        dask.config.set({"faas.cluster.idle-timeout": before, "faas.defaults.retries": 0})


def test_factory_spec_is_read() -> None:
    spec = {"module": "distributed", "class": "LocalCluster", "kwargs": {"n_workers": 0}}
    with dask.config.set({"faas.cluster.factory": spec}):
        factory = _config.cluster_factory()
    assert factory == _config.FactorySpec("distributed", "LocalCluster", {"n_workers": 0})


def test_share_server_is_a_boolean() -> None:
    assert _config.share_server() is True
    with (
        dask.config.set({"faas.cluster.share-server": "no"}),
        pytest.raises(_config.ConfigError, match="faas.cluster.share-server: expected true or false, got 'no'"),
    ):
        _config.share_server()
