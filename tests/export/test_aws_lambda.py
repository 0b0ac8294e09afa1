"""The Lambda export: lambda_handler given Function URL and API Gateway v2 events in AWS's documented shape, in a
fresh venv; template.yaml checked by cfn-lint, AWS's own linter."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import lint_all
from dockerfile_parse import DockerfileParser

from tests.export.conftest import (
    CLEAN_ENV,
    REQUESTS,
    SECRET_VALUE,
    SERVED,
    Request,
    collected,
    fresh_venv,
    headers_for,
    normalized,
)

pytestmark = pytest.mark.timeout(300)

# Loads each function's app.py in turn (each is its own package `function`), and hands it the events it is given.
DRIVER = """
import importlib, json, sys
cases = json.load(sys.stdin)
answers = []
for case in cases:
    for module in [m for m in sys.modules if m == "app" or m == "function" or m.startswith("function.")]:
        del sys.modules[module]
    sys.path.insert(0, case["folder"])
    app = importlib.import_module("app")
    answers.append(app.lambda_handler(case["event"], None))
    sys.path.remove(case["folder"])
print(json.dumps({"answers": answers, "jupyter_faas_loaded": "jupyter_faas" in sys.modules}))
"""

# Content types API Gateway and Function URLs pass as text; any other body arrives base64-encoded.
_TEXT = ("text/", "application/json", "application/xml", "application/javascript")


def event(request: Request, kind: str) -> dict[str, Any]:
    """A payload format 2.0 event as AWS documents it, for a Function URL or an API Gateway HTTP API."""
    now = time.time()
    headers = {"host": "example", "user-agent": "test", **{k.lower(): v for k, v in headers_for(request).items()}}
    binary = not (request.content_type or "").startswith(_TEXT) and request.content_type is not None
    if kind == "url":
        domain, api, route = "abcdefg.lambda-url.us-east-1.on.aws", "abcdefg", "$default"
    else:
        domain, api, route = "r3pmxmplak.execute-api.us-east-1.amazonaws.com", "r3pmxmplak", f"POST /{request.function}"
    document: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route,
        "rawPath": f"/{request.function}" if kind == "api" else "/",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": api,
            "domainName": domain,
            "domainPrefix": api,
            "http": {
                "method": request.method,
                "path": f"/{request.function}" if kind == "api" else "/",
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "test",
            },
            "requestId": "id",
            "routeKey": route,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": binary,
    }
    if request.body:
        document["body"] = base64.b64encode(request.body).decode() if binary else request.body.decode()
    return document


def answer_of(response: dict[str, Any]) -> tuple[int, str, Any]:
    body = response["body"]
    raw = base64.b64decode(body) if response["isBase64Encoded"] else body.encode()
    return normalized(response["statusCode"], response["headers"]["Content-Type"], raw)


@pytest.fixture(scope="module")
def lambda_export(exports: dict[str, tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out, _ = exports["lambda"]
    files = [out / name / "requirements.txt" for name in SERVED]
    python, seconds = fresh_venv(tmp_path_factory.mktemp("venv") / "lambda", files)
    print(f"lambda: fresh venv with the requirements in {seconds:.1f} s")
    return out, python


def drive(python: Path, cases: list[dict[str, Any]], env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), "-c", DRIVER], input=json.dumps(cases), capture_output=True, text=True, timeout=120,
        env={**CLEAN_ENV, **env}, cwd=python.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.splitlines()[-1]))


def test_function_url_and_api_gateway_events_get_serves_answers(
    lambda_export: tuple[Path, Path], serve_answers: dict[Request, Any]
) -> None:
    out, python = lambda_export
    cases = [
        {"folder": str(out / request.function), "event": event(request, kind)}
        for kind in ("url", "api")
        for request in REQUESTS
    ]
    driven = drive(python, cases, {})
    assert driven["jupyter_faas_loaded"] is False
    expected = [collected(serve_answers[request]) for _ in ("url", "api") for request in REQUESTS]
    mismatches = [
        (case["event"]["routeKey"], request, answer_of(got), want)
        for case, request, got, want in zip(cases, REQUESTS * 2, driven["answers"], expected, strict=True)
        if answer_of(got) != want
    ]
    assert not mismatches, mismatches


def test_a_secret_comes_from_the_environment_the_template_sets(lambda_export: tuple[Path, Path]) -> None:
    out, python = lambda_export
    request = Request("keyed", b"{}")
    driven = drive(python, [{"folder": str(out / "keyed"), "event": event(request, "url")}], {"API_KEY": SECRET_VALUE})
    assert answer_of(driven["answers"][0]) == (200, "application/json", len(SECRET_VALUE))


def test_template_yaml_passes_cfn_lint_and_maps_the_settings(exports: dict[str, tuple[Path, str]]) -> None:
    out, printed = exports["lambda"]
    text = (out / "template.yaml").read_text()
    # Errors and warnings, as the cfn-lint command fails on; informational suggestions are not failures.
    problems = [str(m) for m in lint_all(text) if m.rule.id[0] in "EW"]
    assert not problems, problems
    # The linter does look: the same template with more memory than Lambda gives is an error.
    broken = text.replace("MemorySize: 287", "MemorySize: 99999", 1)
    assert any(m.rule.id.startswith("E") for m in lint_all(broken))
    template = yaml.safe_load(text)
    resources = template["Resources"]
    scaled = resources["ScaledFunction"]["Properties"]
    assert scaled["Timeout"] == 5 and scaled["MemorySize"] == 287 and scaled["ReservedConcurrentExecutions"] == 3
    assert scaled["Handler"] == "app.lambda_handler" and scaled["CodeUri"] == "scaled/"
    assert scaled["FunctionUrlConfig"] == {"AuthType": "AWS_IAM"}
    assert resources["BoomFunction"]["Properties"]["EventInvokeConfig"] == {"MaximumRetryAttempts": 1}
    schedule = resources["DigestFunction"]["Properties"]["Events"]["Schedule"]
    assert schedule["Properties"]["ScheduleExpression"] == "rate(5 minutes)"
    keyed = resources["KeyedFunction"]["Properties"]["Environment"]["Variables"]
    assert keyed == {"API_KEY": {"Ref": "ApiKeySecret"}}
    assert template["Parameters"]["ApiKeySecret"]["NoEcho"] is True
    assert "Default" not in template["Parameters"]["ApiKeySecret"]
    assert "--on-file" in printed and "--on-file" in (out / "README.md").read_text()
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path


def test_the_dockerfile_is_a_lambda_image_of_what_the_export_holds(exports: dict[str, tuple[Path, str]]) -> None:
    out, _ = exports["lambda"]
    for name in SERVED:
        context = out / name
        parser = DockerfileParser(path=str(context / "Dockerfile"))
        assert parser.baseimage == f"public.ecr.aws/lambda/python:{sys.version_info.major}.{sys.version_info.minor}"
        copied = [i["value"].split()[0] for i in parser.structure if i["instruction"] == "COPY"]
        assert copied and all((context / source).exists() for source in copied), copied
        assert json.loads(parser.cmd) == ["app.lambda_handler"]
