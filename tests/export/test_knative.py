"""The Knative export, served by Knative's own Python middleware (func-python) from a fresh venv, over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.export.conftest import CLEAN_ENV, REQUESTS, SECRET_VALUE, SERVED, Request, fresh_venv, send, start_servers

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def knative(exports: dict[str, tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the export, the python of a fresh venv that installed every function's requirements.txt)."""
    out, _ = exports["knative"]
    files = [out / name / "requirements.txt" for name in SERVED]
    python, seconds = fresh_venv(tmp_path_factory.mktemp("venv") / "knative", files)
    print(f"knative: fresh venv with the requirements in {seconds:.1f} s")
    return out, python


def test_every_function_answers_the_contract_table_as_serve_does(
    knative: tuple[Path, Path], serve_answers: dict[Request, Any], processes: list[subprocess.Popen[bytes]]
) -> None:
    out, python = knative
    environment = {**CLEAN_ENV, "LISTEN_ADDRESS": "127.0.0.1:{PORT}"}
    # main.py is what the Dockerfile runs: func_python.http.serve(new), as the func CLI's scaffolding does.
    commands = {name: ([str(python), "main.py"], out / name, environment) for name in SERVED}
    urls = start_servers(commands, "health/readiness", processes)
    mismatches = []
    for request in REQUESTS:
        got = send(urls[request.function], request)
        if got != serve_answers[request]:
            mismatches.append((request, got, serve_answers[request]))
    assert not mismatches, mismatches
    # The middleware's own probes reach the function object's alive() and ready().
    assert httpx.get(urls["square"] + "health/liveness").text == "Alive"
    assert httpx.get(urls["square"] + "health/readiness").text == "Ready"


def test_func_yaml_maps_the_limits_the_schedule_and_the_secret_by_reference(
    exports: dict[str, tuple[Path, str]],
) -> None:
    out, printed = exports["knative"]
    scaled = yaml.safe_load((out / "scaled" / "func.yaml").read_text())
    assert scaled["name"] == "scaled" and scaled["runtime"] == "python"
    options = scaled["deploy"]["options"]
    assert options["scale"]["min"] == 0 and options["scale"]["max"] >= 1
    assert options["resources"]["limits"] == {"memory": "287Mi", "concurrency": 3}
    patch = yaml.safe_load((out / "scaled" / "service-patch.yaml").read_text())
    assert patch["spec"]["template"]["spec"]["timeoutSeconds"] == 5
    ping = yaml.safe_load((out / "digest" / "pingsource.yaml").read_text())
    assert ping["kind"] == "PingSource" and ping["spec"]["schedule"] == "*/5 * * * *"
    assert ping["spec"]["sink"]["ref"]["name"] == "digest"
    trigger = yaml.safe_load((out / "boom" / "trigger.yaml").read_text())
    assert trigger["spec"]["delivery"]["retry"] == 1
    keyed = yaml.safe_load((out / "keyed" / "func.yaml").read_text())
    assert keyed["run"]["envs"] == [{"name": "API_KEY", "value": "{{ secret:keyed-secrets:API_KEY }}"}]
    # A name Kubernetes cannot take is made one it can.
    assert yaml.safe_load((out / "bad_result" / "func.yaml").read_text())["name"] == "bad-result"
    # What cannot be mapped is warned about when exporting, and listed in the README: never dropped silently.
    assert "--on-file" in printed and "watched" in printed
    readme = (out / "README.md").read_text()
    assert "--on-file" in readme and "func deploy" in readme
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path


def test_the_dockerfile_builds_from_what_the_export_holds(exports: dict[str, tuple[Path, str]]) -> None:
    out, _ = exports["knative"]
    for name in SERVED:
        context = out / name
        parser = DockerfileParser(path=str(context / "Dockerfile"))
        assert parser.baseimage == f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
        copied = [i["value"].split()[0] for i in parser.structure if i["instruction"] in ("COPY", "ADD")]
        assert copied and all((context / source).exists() for source in copied), copied
        assert parser.cmd is not None and "main.py" in parser.cmd
        assert parser.envs["LISTEN_ADDRESS"] == "0.0.0.0:8080"


_START_STOP = """
import json
from function import func, faas_contract
function = func.new()
seen = {"before_start": func.TARGET.instance is None}
function.start({})
instance = func.TARGET.instance
seen["base_after_start"] = instance.base
answer = faas_contract.answer(func.TARGET, "Warm", "POST", "application/json", b"[2]")
seen["answer"] = json.loads(answer.body)
seen["same_instance"] = func.TARGET.instance is instance
function.stop()
seen["after_stop"] = [func.TARGET.instance is None, instance.base]
print(json.dumps(seen))
"""


def test_a_warm_class_is_set_up_in_start_and_torn_down_in_stop(knative: tuple[Path, Path]) -> None:
    out, python = knative
    result = subprocess.run(
        [str(python), "-c", _START_STOP], cwd=out / "Warm", env=CLEAN_ENV, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # Nothing is set up at import; start() sets up the one instance every call then uses; stop() tears it down.
    assert json.loads(result.stdout) == {
        "before_start": True,
        "base_after_start": 30,
        "answer": 32,
        "same_instance": True,
        "after_stop": [True, None],
    }
