"""The OpenFaaS export, its handler served as the python3-http template serves it (Flask on waitress), over HTTP."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.export.conftest import (
    CLEAN_ENV,
    REQUESTS,
    SECRET_VALUE,
    SERVED,
    Request,
    collected,
    fresh_venv,
    send,
    start_servers,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def openfaas(exports: dict[str, tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the export, the python of a fresh venv with every requirements.txt and the template's Flask and waitress)."""
    out, _ = exports["openfaas"]
    files = [out / name / "requirements.txt" for name in SERVED]
    python, seconds = fresh_venv(tmp_path_factory.mktemp("venv") / "openfaas", files, "flask", "waitress")
    print(f"openfaas: fresh venv with the requirements in {seconds:.1f} s")
    return out, python


def _image_layout(out: Path, name: str, root: Path) -> Path:
    """The folders as the template's image has them: index.py beside the handler folder copied to function/."""
    home = root / name
    shutil.copytree(out / name, home / "function")
    shutil.copy(out / name / "index.py", home / "index.py")
    return home


def test_every_function_answers_the_contract_table_as_serve_does(
    openfaas: tuple[Path, Path],
    serve_answers: dict[Request, Any],
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    out, python = openfaas
    environment = {**CLEAN_ENV, "HOST": "127.0.0.1", "PORT": "{PORT}", "OPENFAAS_SECRETS_DIRECTORY": str(tmp_path)}
    commands = {name: ([str(python), "index.py"], _image_layout(out, name, tmp_path), environment) for name in SERVED}
    urls = start_servers(commands, "", processes)
    mismatches = []
    for request in REQUESTS:
        # The gateway routes /function/NAME to the function's own root; the template answers on any path.
        got = send(urls[request.function] + "function/" + request.function, request)
        if got != collected(serve_answers[request]):
            mismatches.append((request, got, serve_answers[request]))
    assert not mismatches, mismatches


def test_a_secret_is_read_from_the_file_openfaas_mounts(
    openfaas: tuple[Path, Path], processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    out, python = openfaas
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api-key").write_text(SECRET_VALUE + "\n")
    environment = {**CLEAN_ENV, "HOST": "127.0.0.1", "PORT": "{PORT}", "OPENFAAS_SECRETS_DIRECTORY": str(secrets)}
    home = _image_layout(out, "keyed", tmp_path)
    urls = start_servers({"keyed": ([str(python), "index.py"], home, environment)}, "", processes)
    response = httpx.post(urls["keyed"], json={})
    assert response.status_code == 200 and response.json() == len(SECRET_VALUE)


def test_stack_yml_maps_the_limits_the_schedule_and_the_secret(exports: dict[str, tuple[Path, str]]) -> None:
    out, _ = exports["openfaas"]
    stack = yaml.safe_load((out / "stack.yml").read_text())
    assert stack["provider"]["name"] == "openfaas"
    functions = stack["functions"]
    assert set(functions) >= {"square", "scaled", "digest", "keyed", "bad-result"}
    scaled = functions["scaled"]
    assert scaled["lang"] == "python3-http" and scaled["handler"] == "./scaled"
    assert (out / "scaled" / "handler.py").is_file()
    assert scaled["environment"]["exec_timeout"] == "5s" and scaled["environment"]["write_timeout"] == "5s"
    assert scaled["environment"]["max_inflight"] == "3"
    assert scaled["limits"]["memory"] == "287Mi"
    assert scaled["labels"]["com.openfaas.scale.zero"] == "true"
    assert functions["digest"]["annotations"] == {"topic": "cron-function", "schedule": "*/5 * * * *"}
    assert functions["boom"]["annotations"]["com.openfaas.retry.attempts"] == "1"
    assert functions["keyed"]["secrets"] == ["api-key"]
    assert "watched" in (out / "README.md").read_text() and "faas-cli up" in (out / "README.md").read_text()
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path


def test_the_dockerfile_builds_from_what_the_export_holds(exports: dict[str, tuple[Path, str]]) -> None:
    out, _ = exports["openfaas"]
    for name in SERVED:
        context = out / name
        parser = DockerfileParser(path=str(context / "Dockerfile"))
        assert parser.baseimage == f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
        copies = [i["value"].split() for i in parser.structure if i["instruction"] == "COPY"]
        local = [words[0] for words in copies if not words[0].startswith("--from")]
        assert local and all((context / source).exists() for source in local), local
        assert parser.envs["mode"] == "http" and parser.envs["fprocess"] == "python index.py"
        assert parser.cmd == '["fwatchdog"]'
