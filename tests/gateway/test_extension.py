"""The server extension in a real Jupyter server (pytest-jupyter), driven from a real kernel that server started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dask
import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError

from jupyter_faas.client.function import function
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.dispatch.sharing import _ENV_KEYS
from jupyter_faas.record.registry import Registry
from tests.helpers import stop_process_group, wait_for


@pytest.fixture
def jp_server_config(state_dir: Path) -> dict[str, Any]:
    # Through state_dir, the test's own state dir is set before the server and its platform start.
    return {"ServerApp": {"jpserver_extensions": {"jupyter_faas": True}}}


@pytest.fixture
def server_idle_timeout() -> str:
    return "60s"


@pytest.fixture
def state_dir(tmp_path: Path, server_idle_timeout: str) -> Iterator[Path]:
    """A state dir of the test's own, set before the server (and its platform) starts."""
    _platform.current(start=False).shutdown()
    state = tmp_path / "faas-state"
    with dask.config.set({"faas.state-dir": str(state), "faas.cluster.idle-timeout": server_idle_timeout}):
        yield state
    _platform.current(start=False).shutdown()


class Kernel:
    """A kernel started by the server's own kernel manager, and a client to run cells in it."""

    def __init__(self, manager: Any, kernel_id: str) -> None:
        self.manager = manager
        self.kernel_id = kernel_id
        self.client = manager.get_kernel(kernel_id).client()

    async def run(self, code: str, timeout: float = 120) -> str:
        """Run a cell; what it printed to stdout. A cell that raises fails the test with the kernel's traceback.

        stderr is kept apart: a busy machine makes distributed log warnings there ("event loop was
        unresponsive"), which are no part of what the cell printed.
        """
        texts: list[str] = []
        others: list[str] = []

        def hook(message: dict[str, Any]) -> None:
            content = message["content"]
            if message["msg_type"] == "stream":
                (texts if content["name"] == "stdout" else others).append(content["text"])
            elif message["msg_type"] in ("execute_result", "display_data"):
                texts.append(content["data"].get("text/plain", ""))
            elif message["msg_type"] == "error":
                others.append("\n".join(content["traceback"]))

        reply = await self.client.execute_interactive(code, output_hook=hook, timeout=timeout)
        output = "".join(texts)
        assert reply["content"]["status"] == "ok", output + "".join(others)
        return output


@contextlib.asynccontextmanager
async def started_kernel(serverapp: Any) -> AsyncIterator[Kernel]:
    manager = serverapp.kernel_manager
    kernel_id = await manager.start_kernel(kernel_name="python3")
    kernel = Kernel(manager, kernel_id)
    kernel.client.start_channels()
    try:
        await kernel.client.wait_for_ready(timeout=60)
        await kernel.run("%load_ext jupyter_faas")
        yield kernel
    finally:
        kernel.client.stop_channels()
        await manager.shutdown_kernel(kernel_id, now=True)


async def post_json(jp_fetch: Any, name: str, data: Any) -> Any:
    """POST JSON to a deployed function; its decoded answer."""
    headers = {"Content-Type": "application/json"}
    response = await jp_fetch("faas", "functions", name, method="POST", body=json.dumps(data), headers=headers)
    return _body(response)


def _body(response: Any) -> Any:
    return json.loads(response.body.decode())


async def test_the_extension_is_enabled_and_health_needs_no_auth(
    jp_serverapp: Any, jp_fetch: Any, state_dir: Path
) -> None:
    assert "jupyter_faas" in jp_serverapp.extension_manager.extension_apps
    health = await jp_fetch("faas", "api", "health", headers={"Authorization": ""})
    assert _body(health) == {"status": "ok"}


async def test_the_api_is_under_the_server_auth(jp_fetch: Any, state_dir: Path) -> None:
    with pytest.raises(HTTPClientError) as raised:
        await jp_fetch("faas", "api", "functions", headers={"Authorization": ""})
    assert raised.value.code == 403
    assert json.loads(raised.value.response.body)["error"]["type"] == "Forbidden"
    with pytest.raises(HTTPClientError) as raised:
        await jp_fetch("faas", "functions", "square", method="POST", body="{}", headers={"Authorization": ""})
    assert raised.value.code == 403


async def test_a_kernel_deploys_a_cell_and_the_server_answers_for_it(
    jp_serverapp: Any, jp_fetch: Any, state_dir: Path
) -> None:
    async with started_kernel(jp_serverapp) as kernel:
        output = await kernel.run("%%faas square x:int --http\nx * x")
        assert f"square is deployed at {jp_serverapp.connection_url}faas/functions/square" in output
        assert "curl -X POST" in output and "Bearer fk_" in output and '{"x": 1}' in output

        response = await jp_fetch(
            "faas", "functions", "square", method="POST", body=json.dumps({"x": 7}),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert response.code == 200
        assert _body(response) == 49

        listed = _body(await jp_fetch("faas", "api", "functions"))["functions"]
        assert [f["name"] for f in listed] == ["square"]
        assert listed[0]["url"] == f"{jp_serverapp.connection_url}faas/functions/square"
        assert listed[0]["stats"]["invocations"] == 1
        one = _body(await jp_fetch("faas", "api", "functions", "square"))
        assert one["signature"] == "square(x: int)"

        platform = _body(await jp_fetch("faas", "api", "platform"))
        assert set(platform) >= {"workers", "maximum", "idle_timeout_s", "scale_events", "dashboard_link"}
        assert platform["workers"] >= 1

        # The kernel uses the server's cluster, found without any set-up, and its calls run there.
        mode = await kernel.run("import jupyter_faas\nprint(jupyter_faas.platform().mode, square(6))")
        assert mode.split() == ["server", "36"]
        address = await kernel.run("print(jupyter_faas.platform().scheduler_address)")
        assert address.strip() == _platform.current(start=False).scheduler_address


async def test_a_kernel_that_does_not_share_the_servers_cluster_embeds_its_own_and_still_deploys(
    jp_serverapp: Any, jp_fetch: Any, state_dir: Path
) -> None:
    async with started_kernel(jp_serverapp) as kernel:
        output = await kernel.run(
            "%load_ext jupyter_faas\n%faas config cluster.share-server=false\n"
            "import jupyter_faas\n@jupyter_faas.function\ndef cube(x: int) -> int:\n    return x ** 3\n"
            "p = jupyter_faas.platform()\nprint(p.mode, cube(3), p.scheduler_address)"
        )
        mode, value, address = output.split()[-3:]
        assert (mode, value) == ("embedded", "27")
        assert address != _platform.current(start=False).scheduler_address
        # Endpoints still belong to the server: a deploy from this kernel lands in its registry.
        await kernel.run("print(cube.deploy())")
        response = await jp_fetch(
            "faas", "functions", "cube", method="POST", body=json.dumps({"x": 4}),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert _body(response) == 64
        await kernel.run("jupyter_faas.platform().shutdown()")


async def test_deploying_again_switches_the_version_and_undeploy_removes_it(
    jp_fetch: Any, jp_serverapp: Any, state_dir: Path
) -> None:
    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run("%%faas greet name:str --http\n'hello ' + name")
        first = _body(await jp_fetch("faas", "api", "functions", "greet"))["version"]
        await kernel.run("%%faas greet name:str\n'hi ' + name")
        await kernel.run("print(greet.deploy())")
        second = _body(await jp_fetch("faas", "api", "functions", "greet"))["version"]
        assert first != second
        assert await post_json(jp_fetch, "greet", {"name": "ada"}) == "hi ada"
        # Both versions stay on disk, as history; the name points at the second.
        assert {p.stem for p in (state_dir / "registry" / "versions").iterdir()} == {first, second}

        assert (await kernel.run("print(greet.undeploy())")).strip() == "True"
        with pytest.raises(HTTPClientError) as raised:
            await jp_fetch("faas", "functions", "greet", method="POST", body="{}")
        assert raised.value.code == 404


async def test_delete_through_the_api_undeploys(jp_fetch: Any, jp_serverapp: Any, state_dir: Path) -> None:
    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run("%%faas one --http\n1")
        response = await jp_fetch("faas", "api", "functions", "one", method="DELETE")
        assert response.code == 204
        assert _body(await jp_fetch("faas", "api", "functions"))["functions"] == []
        with pytest.raises(HTTPClientError) as raised:
            await jp_fetch("faas", "api", "functions", "one", method="DELETE")
        assert raised.value.code == 404


async def test_requests_in_flight_finish_on_the_old_version(jp_fetch: Any, jp_serverapp: Any, state_dir: Path) -> None:
    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run("%%faas version_of seconds:float --http\nimport time\ntime.sleep(seconds)\n'old'")
        in_flight = asyncio.ensure_future(post_json(jp_fetch, "version_of", {"seconds": 3}))
        # Once the server's platform has it in flight, the request has already resolved the name to a version.
        deadline = time.monotonic() + 30
        while _platform.current(start=False)._in_flight == 0:
            assert time.monotonic() < deadline and not in_flight.done()
            await asyncio.sleep(0.02)
        await kernel.run("%%faas version_of seconds:float --http\n'new'")
        assert await post_json(jp_fetch, "version_of", {"seconds": 0}) == "new"
        assert await in_flight == "old"


@pytest.mark.parametrize("server_idle_timeout", ["1s"])
async def test_the_server_never_retires_workers_under_a_kernels_invocations(
    jp_fetch: Any, jp_serverapp: Any, state_dir: Path
) -> None:
    server = _platform.current(start=False)

    async def scaled_to_zero() -> None:
        # Zero workers, and the retirement finished (it counts itself only once the workers are gone).
        deadline = time.monotonic() + 30
        while _body(await jp_fetch("faas", "api", "platform"))["workers"] != 0 or server._retiring:
            assert time.monotonic() < deadline, "the server's cluster never scaled to zero"
            await asyncio.sleep(0.1)

    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run("%%faas nap seconds:float\nimport time\ntime.sleep(seconds)\nseconds")
        # Three times the server's keep-alive, with nothing of the server's own in flight.
        assert (await kernel.run("print(nap(3.0))")).strip() == "3.0"
        assert (await kernel.run("print(nap.invocations[-1].attempts)")).strip() == "1"
        # Idle, the server retires the workers; the kernel's next call brings one back and succeeds.
        await scaled_to_zero()
        retired = server._retirements
        assert (await kernel.run("print(nap(0.1))")).strip() == "0.1"
        await scaled_to_zero()
        assert server._retirements > retired
        assert (await kernel.run("print([nap(0) for _ in range(3)])")).strip() == "[0, 0, 0]"


@pytest.fixture
def fast_pruning(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_faas.dispatch import sharing as _shared

    monkeypatch.setattr(_shared, "PRUNE_INTERVAL", 0.2)
    monkeypatch.setattr(_shared, "PRUNE_GRACE", 0.5)


async def test_a_killed_kernels_sandboxes_are_taken_back(
    fast_pruning: None, jp_serverapp: Any, state_dir: Path
) -> None:
    scheduler = _platform.current(start=False)._cluster.cluster.scheduler  # type: ignore[union-attr]
    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run("%%faas one\n1")
        owner = await kernel.run("import jupyter_faas\nprint(one(), jupyter_faas.platform()._cluster.plugin_name)")
        plugin = owner.split()[1]
        assert plugin in scheduler.worker_plugins
        # SIGKILL: no atexit, so the kernel cannot unregister its plugin itself.
        kernel.client.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        deadline = time.monotonic() + 30
        while plugin in scheduler.worker_plugins:
            assert time.monotonic() < deadline, "the dead kernel's plugin was never unregistered"
            await asyncio.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_after_a_restart_deployed_endpoints_answer_without_running_any_notebook(
    jp_fetch: Any, jp_serverapp: Any, state_dir: Path, tmp_path: Path
) -> None:
    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run("%%faas cube x:int --http\nx ** 3")
        assert await post_json(jp_fetch, "cube", {"x": 3}) == 27
        # A file trigger set from the kernel runs in the server, while the kernel does nothing.
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        await kernel.run(f"%%faas measure path --on-file {inbox}\nlen(open(path).read())")
        (inbox / "one.txt").write_text("1")
        deadline = time.monotonic() + 30
        while not _body(await jp_fetch("faas", "api", "functions", "measure", "invocations"))["invocations"]:
            assert time.monotonic() < deadline, "the server never handled the dropped file"
            await asyncio.sleep(0.1)
        invocation = _body(await jp_fetch("faas", "api", "functions", "measure", "invocations"))["invocations"][0]
        assert (invocation["trigger"], invocation["status"]) == ("file", "ok")

        # A new server process on the same state dir: only what is on disk can make it answer.
        port, token = _free_port(), "restart-token"
        env = {key: value for key, value in os.environ.items() if key not in _ENV_KEYS}
        env["DASK_FAAS__STATE_DIR"] = str(state_dir)
        server = subprocess.Popen(
            [
                sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser",
                f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={tmp_path}",
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/faas/functions/cube"
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/faas/api/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                assert time.monotonic() < deadline, "the restarted server never answered"
                time.sleep(0.2)
            response = httpx.post(url, json={"x": 4}, headers={"Authorization": f"token {token}"}, timeout=60)
            assert response.status_code == 200, response.text
            assert response.json() == 64
            headers = {"Authorization": f"Bearer {token}"}
            api = f"http://127.0.0.1:{port}/faas/api"
            listed = httpx.get(f"{api}/functions", headers=headers, timeout=30).json()
            assert [f["name"] for f in listed["functions"]] == ["cube", "measure"]
            # The trigger came back with the server: a file dropped now is handled, one.txt is not again.
            (inbox / "two.txt").write_text("22")

            def files_done() -> int:
                triggers = httpx.get(f"{api}/triggers", headers=headers, timeout=30).json()["triggers"]
                assert [t["id"] for t in triggers] == ["measure.file"]
                return triggers[0]["files_done"]

            wait_for(lambda: files_done() == 2, 30, "two.txt, handled by the restarted server")
            handled = httpx.get(f"{api}/functions/measure/invocations", headers=headers, timeout=30).json()
            assert [i["trigger"] for i in handled["invocations"]] == ["file"]
        finally:
            stop_process_group(server)


async def test_deploy_outside_a_server_and_without_the_extension_is_a_clear_error(state_dir: Path) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_faas.client import deploy as _deploy
    from jupyter_faas.gateway import inkernel

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_faas")
    saved = {key: os.environ.pop(key) for key in _ENV_KEYS if key in os.environ}
    # As in a process that never loaded the extension: no gateway of its own to fall back on.
    _deploy.use_fallback(None)
    try:
        with pytest.raises(UsageError, match="%load_ext jupyter_faas.*jupyter faas serve NOTEBOOK.ipynb"):
            shell.run_cell_magic("faas", "lonely --http", "1")
    finally:
        _deploy.use_fallback(inkernel.gateway)
        os.environ.update(saved)
        shell.user_ns.pop("lonely", None)


# -- the server's own /metrics --------------------------------------------------------------------------------


@function
def metered(x: int) -> int:
    return x + 1


async def test_the_servers_own_metrics_carry_the_faas_series_under_its_own_auth(
    jp_fetch: Any, jp_serverapp: Any, state_dir: Path
) -> None:
    # Deployed as a kernel of this server would: into the server's registry folder.
    Registry(state_dir / "registry").deploy(metered._definition)
    for x in range(3):
        assert await post_json(jp_fetch, "metered", {"x": x}) == x + 1
    text = (await jp_fetch("metrics")).body.decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    counted = {(s.labels.get("function"), s.labels.get("status")): s.value for s in families["faas_invocations"].samples
               if s.name == "faas_invocations_total"}  # fmt: skip
    assert counted == {("metered", "ok"): 3.0}
    assert "faas_invocation_latency_seconds" in families and "faas_workers" in families
    # The server's own series are still there beside them.
    assert any(name.startswith("http_request_duration_seconds") for name in families)
    # Under the server's authenticate_prometheus (on by default): no token, no metrics.
    with pytest.raises(HTTPClientError) as raised:
        await jp_fetch("metrics", headers={"Authorization": ""})
    assert raised.value.code == 403
    # One platform's series at a time: the servers the tests before started in this process left none behind.
    mirrors = [c for c in list(prometheus_client.REGISTRY._collector_to_names) if type(c).__name__ == "_Mirror"]
    assert len(mirrors) == 1


# -- the notebook sees its endpoint's traffic on the server ------------------------------------------------------

WAIT_IN_KERNEL = """
import time
def wait_until(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
"""


async def test_the_notebook_sees_its_endpoints_traffic_on_the_server(
    jp_fetch: Any, jp_serverapp: Any, state_dir: Path
) -> None:
    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run(WAIT_IN_KERNEL)
        await kernel.run("%%faas square x:int --http\nprint('squaring', x)\nx * x")
        await kernel.run("assert square(2) == 4")  # the kernel's own call
        for x in range(5):
            assert await post_json(jp_fetch, "square", {"x": x}) == x * x
        headers = {"Content-Type": "application/json"}
        queued = await jp_fetch("faas", "functions", "square", method="POST", body='{"x": 9}', headers=headers,
                                params={"async": "true"})  # fmt: skip
        assert queued.code == 202
        # Live: without running anything again, the kernel's figures reach the server's count and its own call.
        await kernel.run("wait_until(lambda: square.stats()['invocations'] == 7, 'the server traffic')")
        assert _body(await jp_fetch("faas", "api", "functions", "square"))["stats"]["invocations"] == 6
        triggers = await kernel.run("print(sorted(r.trigger for r in square.invocations))")
        assert triggers.strip() == str(["call", *["http"] * 6])
        assert "squaring 9" in await kernel.run("print(square.logs(10))")
        await kernel.run("wait_until(lambda: '<td>7</td>' in square.card.figures.value, 'the card')")
        # Never counted twice: the kernel's own call, once it is in the shared log too, is not taken for traffic.
        await kernel.run(
            "import jupyter_faas\nfrom jupyter_faas.client import traffic\n"
            "jupyter_faas.platform().flush_log()\ntraffic._traffic.poll()\nassert square.stats()['invocations'] == 7"
        )
        # A schedule the server fires shows up the same way; so does a function defined again in a new kernel.
        await kernel.run("%%faas ping --every 1s\n'pong'")
        await kernel.run("wait_until(lambda: ping.stats()['invocations'] >= 1, 'the schedule')")
        assert (await kernel.run("print({r.trigger for r in ping.invocations})")).strip() == "{'schedule'}"
        await kernel.run("ping.unschedule()")
    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run(WAIT_IN_KERNEL)
        await kernel.run("%%faas square x:int\nprint('squaring', x)\nx * x")
        await kernel.run("wait_until(lambda: square.stats()['invocations'] == 6, 'the history')")


async def test_a_deployed_function_that_calls_another_runs_it_on_the_servers_platform(
    jp_serverapp: Any, jp_fetch: Any, state_dir: Path
) -> None:
    async with started_kernel(jp_serverapp) as kernel:
        await kernel.run("%%faas square x:int --http\nx * x")
        await kernel.run("%%faas twice x:int --http\nsquare(x) * 2")
        assert await post_json(jp_fetch, "twice", {"x": 6}) == 72
        caller = _body(await jp_fetch("faas", "api", "functions", "twice", "invocations"))["invocations"][0]
        answer = _body(await jp_fetch("faas", "api", "invocations", caller["id"]))
        assert [(child["function"], child["parent"], child["root"]) for child in answer["children"]] == [
            ("square", caller["id"], caller["id"])
        ]
        rows = answer["call_tree"]["calls"]
        assert [(row["function"], row["depth"]) for row in rows] == [("twice", 0), ("square", 1)]
