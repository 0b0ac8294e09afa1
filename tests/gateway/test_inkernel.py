"""A kernel no Jupyter server owns serves its own functions: a plain IPython shell in a process of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from jupyter_faas.dispatch.sharing import _ENV_KEYS
from tests.helpers import stop_process_group, wait_for

SHELL = """
import sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
for cell in sys.argv[1:]:
    result = shell.run_cell(cell)
    if not result.success:
        sys.exit(f"cell failed: {cell!r}")
print("cells ran", flush=True)
sys.stdin.readline()  # the test says when the kernel ends
"""


@dataclass
class PlainKernel:
    process: subprocess.Popen
    lines: list[str]
    url: str
    token: str
    key: str
    state: Path

    def post(self, name: str, **kwargs: object) -> httpx.Response:
        return httpx.post(f"{self.url}faas/functions/{name}", timeout=60, **kwargs)  # type: ignore[arg-type]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def plain_kernel(tmp_path: Path) -> Iterator[PlainKernel]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cells = [
        "%load_ext jupyter_faas",
        "%%faas square x:int --http\nx * x",
        f"%%faas shout path --on-file {str(inbox)!r}\nopen(path).read().upper()",
        # The owner asks for the admin token; it is never printed unasked.
        "from jupyter_faas.gateway import inkernel\nprint('admin token =', inkernel.current().token)",
    ]
    env = {key: value for key, value in os.environ.items() if key not in _ENV_KEYS}
    state = tmp_path / "state"
    env.update(DASK_FAAS__STATE_DIR=str(state), DASK_FAAS__CLUSTER__IDLE_TIMEOUT="300s")
    process = subprocess.Popen(
        [sys.executable, "-c", SHELL, *cells], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("cells ran"):
                break
        text = "".join(lines)
        served = re.search(r"serves its functions itself, at (http://127\.0\.0\.1:\d+/)", text)
        token = re.search(r"^admin token = (\S+)$", text, re.MULTILINE)
        key = re.search(r"curl -X POST \S+/square -H 'Authorization: Bearer (\S+)'", text)
        assert served and token and key, text
        yield PlainKernel(process, lines, served.group(1), token.group(1), key.group(1), state)
    finally:
        stop_process_group(process)


def test_a_plain_ipython_shell_serves_its_functions_over_http_and_fires_its_file_trigger(
    plain_kernel: PlainKernel, tmp_path: Path
) -> None:
    kernel = plain_kernel
    printed = "".join(kernel.lines[:-2])  # all but the owner's own print of the admin token
    assert "square is deployed at " + kernel.url + "faas/functions/square" in printed
    assert kernel.post("square", json={"x": 7}, headers=kernel.auth).json() == 49
    # The printed curl line works with a key for square alone: not the admin token, which is printed nowhere.
    assert kernel.key.startswith("fk_") and kernel.token not in printed
    as_key = {"Authorization": f"Bearer {kernel.key}"}
    assert kernel.post("square", json={"x": 8}, headers=as_key).json() == 64
    assert kernel.post("shout", json={"path": "/etc/hostname"}, headers=as_key).status_code == 403
    assert httpx.get(f"{kernel.url}faas/api/functions", headers=as_key, timeout=60).status_code == 403
    assert httpx.get(f"{kernel.url}faas/api/keys", headers=as_key, timeout=60).status_code == 403
    # The same contract as serve: a token, a known Host, the API and OpenAPI beside the endpoints.
    assert kernel.post("square", json={"x": 7}).status_code == 401
    assert kernel.post("square", json={"x": 7}, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert kernel.post("square", json={"x": 7}, headers={**kernel.auth, "Host": "evil.example"}).status_code == 403
    openapi = httpx.get(f"{kernel.url}faas/api/openapi.json", headers=kernel.auth, timeout=60).json()
    assert "/faas/functions/square" in openapi["paths"]
    assert httpx.get(f"{kernel.url}faas/api/health", timeout=60).json() == {"status": "ok"}
    # The file trigger fires in the kernel too.
    (tmp_path / "inbox" / "hello.txt").write_text("hello")

    def shouted() -> list[dict]:
        answer = httpx.get(f"{kernel.url}faas/api/functions/shout/invocations", headers=kernel.auth, timeout=60)
        return [r for r in answer.json()["invocations"] if r["status"] == "ok"]

    wait_for(shouted, 60, "the file trigger")
    # The gateway lives as long as the kernel: once it ends, nothing answers, and its state folder is gone.
    assert kernel.process.stdin is not None
    kernel.process.stdin.write("\n")
    kernel.process.stdin.flush()
    assert kernel.process.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{kernel.url}faas/api/health", timeout=10)
    assert not (kernel.state / "kernels").exists() or not any((kernel.state / "kernels").iterdir())
