"""Function keys in a real Jupyter server: a key reaches its functions, and never the server itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest

from jupyter_faas.dispatch import platform as _platform
from tests.gateway.test_extension import started_kernel


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    _platform.current(start=False).shutdown()
    state = tmp_path / "faas-state"
    with dask.config.set({"faas.state-dir": str(state), "faas.cluster.idle-timeout": "60s"}):
        yield state
    _platform.current(start=False).shutdown()


@pytest.fixture
def jp_server_config(state_dir: Path) -> dict[str, Any]:
    # The strictest setting: no route of the server answers a request it cannot authenticate, unless marked so.
    # The terminals extension is on, so that its 403 for a key is a refusal, not a missing route.
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_faas": True, "jupyter_server_terminals": True},
            "allow_unauthenticated_access": False,
        }
    }


def _with_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


async def test_a_function_key_calls_its_function_and_reaches_nothing_else_of_the_server(
    jp_serverapp: Any, jp_fetch: Any, state_dir: Path
) -> None:
    async def fetch(*parts: str, **kwargs: Any) -> Any:
        return await jp_fetch(*parts, raise_error=False, **kwargs)

    async with started_kernel(jp_serverapp) as kernel:
        output = await kernel.run("%%faas square x:int --http\nx * x")
        printed = next(word for word in output.split() if word.startswith("fk_"))
        printed = printed.rstrip("'")
        await kernel.run("%%faas cube x:int --http\nx ** 3")
        secret = (await kernel.run("key = square.create_key()\nprint(key, key.id)")).split()
        key, key_id = secret[0], secret[1]
        assert key.startswith("fk_") and key != printed

        for token in (key, printed):
            answer = await fetch(
                "faas", "functions", "square", method="POST", body='{"x": 6}', headers=_with_key(token)
            )
            assert answer.code == 200 and json.loads(answer.body) == 36
        other = await fetch("faas", "functions", "cube", method="POST", body='{"x": 2}', headers=_with_key(key))
        assert other.code == 403 and json.loads(other.body)["error"]["type"] == "Forbidden"

        # No route of the server itself takes it: the key is no login at all.
        for parts in (("api", "contents"), ("api", "kernels"), ("api", "terminals"), ("api", "sessions")):
            refused = await fetch(*parts, headers=_with_key(key))
            assert refused.code == 403, (parts, refused.code)
            # The same routes answer the server's own token: the 403 above is the key's.
            assert (await fetch(*parts)).code == 200, parts
        started = await fetch("api", "kernels", method="POST", body="{}", headers=_with_key(key))
        assert started.code == 403
        opened = await fetch("api", "terminals", method="POST", body="{}", headers=_with_key(key))
        assert opened.code == 403
        assert jp_serverapp.kernel_manager.list_kernel_ids() == [kernel.kernel_id]
        for parts in (("faas", "api", "functions"), ("faas", "api", "keys"), ("faas", "metrics")):
            assert (await fetch(*parts, headers=_with_key(key))).code == 403, parts
        made = await fetch("faas", "api", "keys", method="POST", body='{"functions": "*"}', headers=_with_key(key))
        assert made.code == 403

        # The owner lists keys over REST, without secrets; revoking in the kernel refuses the key at once.
        listed = json.loads((await fetch("faas", "api", "keys")).body)["keys"]
        assert key_id in [entry["id"] for entry in listed] and key not in json.dumps(listed)
        assert "True" in await kernel.run(f"print(square.revoke_key({key_id!r}))")
        gone = await fetch("faas", "functions", "square", method="POST", body='{"x": 6}', headers=_with_key(key))
        assert gone.code == 403

        # Made over REST by the owner: the answer has the key once, and it works at once.
        made = await fetch("faas", "api", "keys", method="POST", body='{"functions": ["cube"]}')
        assert made.code == 201
        body = json.loads(made.body)
        assert set(body) >= {"id", "key", "functions"} and body["functions"] == ["cube"]
        answer = await fetch(
            "faas", "functions", "cube", method="POST", body='{"x": 3}', headers=_with_key(body["key"])
        )
        assert answer.code == 200 and json.loads(answer.body) == 27
        deleted = await fetch("faas", "api", "keys", body["id"], method="DELETE")
        assert deleted.code == 204
        answer = await fetch(
            "faas", "functions", "cube", method="POST", body='{"x": 3}', headers=_with_key(body["key"])
        )
        assert answer.code == 403
        # A wrong or made-up key is refused like a revoked one, and a key in ?token= is no login either.
        fake = await fetch("faas", "functions", "cube", method="POST", body="{}", headers=_with_key("fk_" + "a" * 43))
        assert fake.code == 403
        as_query = await fetch("api", "contents", params={"token": printed}, headers={"Authorization": ""})
        assert as_query.code == 403
