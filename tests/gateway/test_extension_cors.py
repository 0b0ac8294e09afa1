"""A Jupyter server configured for CORS by pattern: the faas routes let its origins through, and no other."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest

from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import from_cell
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.record.registry import Registry


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    _platform.current(start=False).shutdown()
    with dask.config.set({"faas.state-dir": str(tmp_path / "faas-state")}):
        yield tmp_path / "faas-state"
        _platform.current(start=False).shutdown()


@pytest.fixture
def jp_server_config(state_dir: Path) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_faas": True},
            "allow_origin_pat": r"https://[a-z]+\.example\.org",
        }
    }


async def test_an_origin_the_servers_pattern_allows_reaches_the_function(
    jp_fetch: Any, jp_serverapp: Any, state_dir: Path
) -> None:
    Registry(state_dir / "registry").deploy(from_cell("x * x", {}, Limits.resolve(), name="square", params=["x:int"]))

    async def post(origin: str) -> Any:
        headers = {"Origin": origin, "Content-Type": "application/json"}
        return await jp_fetch(
            "faas", "functions", "square", method="POST", body=json.dumps({"x": 3}), headers=headers, raise_error=False
        )

    allowed = await post("https://app.example.org")
    assert allowed.code == 200 and json.loads(allowed.body) == 9
    assert allowed.headers.get("Access-Control-Allow-Origin") == "https://app.example.org"
    refused = await post("https://evil.example")
    assert refused.code == 403 and json.loads(refused.body)["error"]["type"] == "OriginNotAllowed"
