"""The OpenFaaS target: stack.yml with `lang: python3-http`, per function a folder with handle(event, context)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jupyter_faas.export.mapping import cron_for_every, dns_name, kubernetes_memory, whole_seconds
from jupyter_faas.export.plan import (
    CONTRACT_MODULE,
    PYTHON,
    Planned,
    map_kind,
    target_line,
    write_package,
    write_requirements,
)

# What the python3-http template installs beside the function's own requirements.
TEMPLATE_PACKAGES = ("flask", "waitress")
WATCHDOG_IMAGE = "ghcr.io/openfaas/of-watchdog:0.10.7"

COMMANDS = """
faas-cli template store pull python3-http
faas-cli secret create NAME --from-literal VALUE    # for each secret listed below
faas-cli up -f stack.yml       # builds, pushes and deploys every function
# or build one without faas-cli: docker build -t NAME NAME/
"""

_HANDLER_PY = '''"""{name} as an OpenFaaS python3-http function: handle(event, context) answers as serve does."""

import os
from pathlib import Path

from . import {contract}
from .{name} import {name}

NAME = {name!r}
# A class function's instance is made and set up at the first request of this container, then kept.
{target}
# Environment variable -> OpenFaaS secret: the platform mounts each secret as a file, never written here.
SECRETS = {secrets!r}
SECRETS_DIRECTORY = Path(os.environ.get("OPENFAAS_SECRETS_DIRECTORY", "/var/openfaas/secrets"))

for _variable, _secret in SECRETS.items():
    if _variable not in os.environ and (SECRETS_DIRECTORY / _secret).is_file():
        os.environ[_variable] = (SECRETS_DIRECTORY / _secret).read_text().rstrip("\\n")


def handle(event, context):
    answer = {contract}.answer(
        TARGET, NAME, event.method, event.headers.get("Content-Type", ""), event.body, tuple(SECRETS)
    )
    if answer.headers["Content-Type"] == "application/json":
        return {{"statusCode": answer.status, "body": answer.body.decode("utf-8"), "headers": answer.headers}}
    # The template turns a dict's body into str(), which would spell bytes as "b'...'"; anything but a dict it
    # hands to Flask as it is, and Flask sends a (bytes, status, headers) tuple byte for byte.
    return (answer.body, answer.status, answer.headers)
'''

_INDEX_PY = '''"""Serves handler.handle as the python3-http template does (Flask on waitress), for docker build."""

import os

from flask import Flask, jsonify, request
from waitress import serve

from function import handler

app = Flask(__name__)


class Event:
    def __init__(self):
        self.body = request.get_data()
        self.headers = request.headers
        self.method = request.method
        self.query = request.args
        self.path = request.path


class Context:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


def format_response(response):
    if response is None:
        return ("", 200)
    if isinstance(response, dict):
        body = response.get("body", "")
        body = jsonify(body) if isinstance(body, dict) else str(body)
        headers = response.get("headers", [])
        headers = list(headers.items()) if isinstance(headers, dict) else headers
        return (body, response.get("statusCode", 200), headers)
    return response


@app.route("/", defaults={"path": ""}, methods=["GET", "PUT", "POST", "PATCH", "DELETE"])
@app.route("/<path:path>", methods=["GET", "PUT", "POST", "PATCH", "DELETE"])
def call_handler(path):
    return format_response(handler.handle(Event(), Context()))


if __name__ == "__main__":
    serve(app, host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "5000")))
'''

_DOCKERFILE = """FROM {watchdog} AS watchdog
FROM python:{python}-slim
COPY --from=watchdog /fwatchdog /usr/bin/fwatchdog
RUN chmod +x /usr/bin/fwatchdog
WORKDIR /home/app
RUN pip install --no-cache-dir {packages}
COPY requirements.txt function/requirements.txt
RUN pip install --no-cache-dir -r function/requirements.txt
COPY index.py .
COPY . function/
USER 1000
# of-watchdog in http mode starts index.py and forwards each request to it.
ENV fprocess="python index.py" mode="http" upstream_url="http://127.0.0.1:5000" PORT=5000
EXPOSE 8080
CMD ["fwatchdog"]
"""


def secret_name(variable: str) -> str:
    return variable.lower().replace("_", "-")


def _function(planned: Planned, maximum: int) -> dict[str, Any]:
    name = dns_name(planned.name)
    limits = planned.definition.limits
    timeout = f"{whole_seconds(limits.timeout)}s"
    environment: dict[str, Any] = {"exec_timeout": timeout, "write_timeout": timeout, "read_timeout": timeout}
    planned.mapped.append(("--timeout", f"exec_timeout/write_timeout/read_timeout env: {timeout}"))
    if limits.concurrency is not None:
        environment["max_inflight"] = str(limits.concurrency)
        planned.mapped.append(("--concurrency", f"max_inflight env: {limits.concurrency}"))
    memory = kubernetes_memory(limits.memory)
    planned.mapped.append(("--memory", f"limits.memory: {memory}"))
    labels = {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": str(maximum), "com.openfaas.scale.zero": "true"}
    planned.mapped.append(
        ("scale to zero, maximum", f"labels com.openfaas.scale.zero: true, com.openfaas.scale.max: {maximum}")
    )
    function: dict[str, Any] = {
        "lang": "python3-http",
        "handler": f"./{planned.name}",
        "image": f"{name}:latest",
        "environment": environment,
        "limits": {"memory": memory},
        "labels": labels,
    }
    annotations: dict[str, str] = {}
    for spec in planned.schedules()[:1]:
        line = spec.cron if spec.cron is not None else cron_for_every(spec.every or 0)
        if line is None:
            planned.not_mapped(f"--every {spec.every:g}s", "the cron-connector fires on cron lines, whole minutes")
        else:
            annotations.update({"topic": "cron-function", "schedule": line})
            planned.mapped.append((f"schedule ({spec.describe()})", f"cron-connector annotations schedule {line!r}"))
    if limits.retries:
        annotations["com.openfaas.retry.attempts"] = str(limits.retries)
        planned.mapped.append(
            ("--retries", f"queue-worker retries: com.openfaas.retry.attempts {limits.retries} (async calls)")
        )
    if annotations:
        function["annotations"] = annotations
    if planned.definition.secrets:
        function["secrets"] = [secret_name(variable) for variable in planned.definition.secrets]
        planned.mapped.append(("--secret", f"secrets: {', '.join(function['secrets'])} (read from their files)"))
    planned.mapped.append(("--http", f"the gateway route /function/{name}"))
    return function


def write(out: Path, planned: Planned, maximum: int) -> dict[str, Any]:
    """Writes the handler folder; the function's entry for stack.yml."""
    folder = out / planned.name
    map_kind(planned, streams=False, setup_where="module level, at the first request of each container (lazily)")
    write_package(folder, planned)
    secrets = {variable: secret_name(variable) for variable in planned.definition.secrets}
    (folder / "handler.py").write_text(
        _HANDLER_PY.format(
            name=planned.name, contract=CONTRACT_MODULE, secrets=secrets, target=target_line(planned, CONTRACT_MODULE)
        )
    )
    (folder / "index.py").write_text(_INDEX_PY)
    write_requirements(folder / "requirements.txt", planned)
    (folder / "Dockerfile").write_text(
        _DOCKERFILE.format(watchdog=WATCHDOG_IMAGE, python=PYTHON, packages=" ".join(TEMPLATE_PACKAGES))
    )
    return _function(planned, maximum)


def write_stack(out: Path, functions: dict[str, dict[str, Any]]) -> None:
    stack = {
        "version": 1.0,
        "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
        "functions": functions,
    }
    (out / "stack.yml").write_text(yaml.safe_dump(stack, sort_keys=False))
