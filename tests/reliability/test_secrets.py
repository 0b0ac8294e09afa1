"""Secrets reach a function's calls from the platform's environment, and their values are written nowhere."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import RemoteError, function
from jupyter_faas.errors import MissingSecret
from jupyter_faas.record.registry import Registry
from tests.helpers import AUTH, Served, run_ok, start_serve, stop_process_group, wait_for_outcome, write_notebook

PLANTED = "planted-secret-7f3a9c51e2"
LEAKY = (
    "%%faas leak x:int --secret FAAS_PLANTED --secret FAAS_OTHER\n"
    "import os\n"
    "key = os.environ['FAAS_PLANTED']\n"
    "print('the key is', key)\n"
    "if x == 1:\n"
    "    raise ValueError('bad key ' + key)\n"
    "if x == 2:\n"
    "    return lambda: key  # a result that cannot travel, whose error would show the key\n"
    "len(key) + len(os.environ['FAAS_OTHER'])"
)
# Tokens of the server and of Jupyter, in serve's environment before any worker exists.
PLANTED_TOKENS = {
    "JUPYTER_FAAS_TOKEN": "faas-token-planted-4b1d0c9e",
    "JUPYTER_TOKEN": "jupyter-token-planted-91ce3a",
    "JPY_API_TOKEN": "jpy-token-planted-5e27f0",
    "DASK_DISTRIBUTED__PLANTED_TOKEN": "dask-token-planted-c0ffee",
}
# A function that declares no secret and looks everywhere it can for one, printing what it finds.
PEEK = (
    "%%faas peek\n"
    "import os\n"
    "with open('/proc/self/environ', 'rb') as f:\n"
    "    raw = f.read().decode('utf-8', 'replace')\n"
    "print(dict(os.environ))\n"
    "print(raw)\n"
    "{'environ': dict(os.environ), 'proc': raw}"
)
# What a sandbox may start with (besides LC_*): never a token, never a setting of the platform or Dask.
# (JUPYTER_FAAS_SYS_PATH is the sandbox's start-up message, taken out of the environment before any call.)
ALLOWED = {
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "TEMP", "TMP",
    "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS",
    "PYTHONFAULTHANDLER", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    # Set by the sandbox itself (no value of anyone's): a sandbox never starts a platform (worker/children.py).
    "JUPYTER_FAAS_SANDBOX",
}  # fmt: skip


@pytest.fixture(scope="module")
def served_with_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    folder = tmp_path_factory.mktemp("secret")
    notebook = write_notebook(folder / "secret.ipynb", [LEAKY, PEEK])
    env = {
        "FAAS_PLANTED": PLANTED,
        "FAAS_OTHER": "other-value",
        "DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "300s",
        **PLANTED_TOKENS,
    }
    server = start_serve(notebook, folder / "state", env=env)
    try:
        yield server, folder
    finally:
        stop_process_group(server.process)


def test_a_function_without_secrets_sees_no_secret_nor_token(served_with_secret: tuple[Served, Path]) -> None:
    served, _ = served_with_secret
    # Twice: the sandbox that ran a call of `leak` in between must not keep its secrets either.
    for _ in range(2):
        seen = served.post("peek", json={}, headers=AUTH)
        assert seen.status_code == 200, seen.text
        environ, raw = seen.json()["environ"], seen.json()["proc"]
        assert {name for name in environ if not name.startswith("LC_")} <= ALLOWED, sorted(environ)
        for value in [PLANTED, "other-value", *PLANTED_TOKENS.values()]:
            assert value not in seen.text
            assert value not in raw
        assert served.post("leak", json={"x": 0}, headers=AUTH).status_code == 200


def test_a_secret_reaches_the_call_and_is_written_nowhere(served_with_secret: tuple[Served, Path]) -> None:
    served, folder = served_with_secret
    answers: list[httpx.Response] = [served.post("peek", json={}, headers=AUTH)]
    ok = served.post("leak", json={"x": 0}, headers=AUTH)
    answers.append(ok)
    assert ok.status_code == 200 and ok.json() == len(PLANTED) + len("other-value")
    failed = served.post("leak", json={"x": 1}, headers=AUTH)
    answers.append(failed)
    assert failed.status_code == 500 and "bad key [secret FAAS_PLANTED]" in failed.json()["error"]["message"]
    unsendable = served.post("leak", json={"x": 2}, headers=AUTH)
    answers.append(unsendable)
    assert unsendable.status_code == 500
    # An asynchronous failure becomes a dead letter, with its error message.
    queued = served.post("leak", params={"async": "true"}, json={"x": 1}, headers=AUTH).json()
    state = wait_for_outcome(served, queued["id"])
    assert state["status"] == "error" and "[secret FAAS_PLANTED]" in state["output"]
    for path in ("faas/api/dead-letters", "faas/api/functions/leak/invocations", "faas/api/functions"):
        answers.append(served.get(path, headers=AUTH))
    answers.append(served.get(f"faas/api/invocations/{queued['id']}", headers=AUTH))
    answers.append(served.get("faas/metrics", headers=AUTH))
    outputs = [r["output"] for r in answers[-4].json()["invocations"]]
    assert outputs and all(out == "the key is [secret FAAS_PLANTED]\n" for out in outputs)
    # Everything the platform wrote or answered: the notebook, the state dir (registry, durable log, dead
    # letters), every HTTP answer, and serve's own log.
    stop_process_group(served.process)
    written = [path for path in folder.rglob("*") if path.is_file()]
    assert any(path.name == "invocations.sqlite" for path in written)
    assert any(path.name == "dead-letters.jsonl" for path in written)
    for value in [PLANTED, *PLANTED_TOKENS.values()]:
        for path in written:
            assert value.encode() not in path.read_bytes(), f"{value} is in {path}"
        for answer in answers:
            assert value not in answer.text, answer.request.url
        assert value not in "".join(served.output)


def test_a_secret_missing_from_the_platforms_environment_is_a_clear_error(
    platform: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAAS_NOT_SET", raising=False)

    @function(secrets=["FAAS_NOT_SET"])
    def needs(x: int = 0) -> int:
        return 1

    with pytest.raises(MissingSecret, match="needs the secret FAAS_NOT_SET, which is not set in the environment"):
        needs()
    with pytest.raises(MissingSecret):
        needs.map(range(3))
    monkeypatch.setenv("FAAS_NOT_SET", "now-it-is-set")
    assert needs() == 1


def test_in_a_kernel_output_and_errors_are_redacted_and_the_registry_keeps_names_only(
    shell: InteractiveShell, platform: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAAS_PLANTED", PLANTED)
    monkeypatch.setenv("FAAS_OTHER", "other-value")
    run_ok(shell, LEAKY)
    leak = shell.user_ns["leak"]
    assert leak(0) == len(PLANTED) + len("other-value")
    assert leak.invocations[-1].output == "the key is [secret FAAS_PLANTED]\n"
    with pytest.raises(RemoteError) as raised:
        leak(1)
    assert "bad key [secret FAAS_PLANTED]" in str(raised.value) and PLANTED not in str(raised.value)
    assert PLANTED not in (leak.invocations[-1].message or "")
    assert leak._definition.secrets == ("FAAS_PLANTED", "FAAS_OTHER")  # names only, never values
    # The registry a Jupyter server deploys to keeps the definition: names, never the value.
    registry = Registry(tmp_path / "registry")
    registry.deploy(leak._definition)
    assert registry.get("leak").definition.secrets == ("FAAS_PLANTED", "FAAS_OTHER")
    stored = [path for path in (tmp_path / "registry").rglob("*") if path.is_file()]
    assert any(path.suffix == ".pickle" for path in stored)
    for path in stored:
        assert PLANTED.encode() not in path.read_bytes(), f"the secret is in {path}"


@pytest.mark.parametrize("line", ["%%faas f --secret 1BAD", "%%faas f --secret 'A B'", "%%faas f --secret"])
def test_a_bad_secret_name_is_a_usage_error(shell: InteractiveShell, line: str) -> None:
    with pytest.raises(UsageError):
        shell.run_cell_magic("faas", line.removeprefix("%%faas "), "1")


def test_the_secret_is_not_left_in_the_sandbox_after_the_call(
    platform: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    @function(secrets=["FAAS_RESTORED"], name="uses_secret")
    def uses(_: int) -> str | None:
        import os

        return os.environ.get("FAAS_RESTORED")

    @function(name="looks_for_secret")
    def looks(_: int) -> str | None:
        import os

        return os.environ.get("FAAS_RESTORED")

    # Workers (and the process that forks them) exist before the value is set here, so they cannot inherit it.
    before = looks(0)
    value = f"restored-{uuid.uuid4().hex}"
    monkeypatch.setenv("FAAS_RESTORED", value)
    # Both run in the same sandboxes, in turn: the one without the secret never sees its value.
    for _ in range(4):
        assert uses.map(range(4)) == [value] * 4
        assert looks.map(range(4)) == [before] * 4
    assert before != value


def test_embedded_workers_started_with_tokens_do_not_pass_them_to_functions(
    own_platform: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set before the platform, its cluster and its workers start: they all inherit these.
    planted = {**PLANTED_TOKENS, "FAAS_PLANTED_EMBEDDED": PLANTED}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    # spawn: a forkserver started earlier in this session would not have them to pass on.
    own_platform({"faas.cluster.maximum": 1, "faas.cluster.start-method": "spawn"})

    @function(name="peek_embedded")
    def peek() -> dict[str, str]:
        import os

        with open("/proc/self/environ", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
        return {"environ": repr(dict(os.environ)), "proc": raw}

    seen = peek()
    for value in planted.values():
        assert value not in seen["environ"]
        assert value not in seen["proc"]
