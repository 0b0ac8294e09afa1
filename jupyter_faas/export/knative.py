"""The Knative target: per function a `func` project (func.yaml, function/func.py with new()), served by func-python."""

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

# Knative's Python middleware, as the func CLI's python template builds with it.
FUNC_PYTHON = "func-python>=0.8.1,<0.9"
FUNC_SPEC_VERSION = "0.36.0"

COMMANDS = """
cd NAME            # one folder per function
func deploy --registry ghcr.io/YOU     # builds with the func CLI and deploys a Knative Service
kubectl apply -f pingsource.yaml       # only where the function has a schedule
kubectl apply -f trigger.yaml          # only where it has retries (needs a Broker named default)
kubectl patch ksvc NAME --type merge --patch-file service-patch.yaml    # the timeout
# or, without the func CLI: docker build -t ghcr.io/YOU/NAME . && docker push ghcr.io/YOU/NAME
"""

_FUNC_PY = '''"""{name} as a Knative function: func-python serves what new() returns, answering as serve does."""

import asyncio

import sys
import traceback

from . import {contract}
from .{name} import {name}

NAME = {name!r}
{target}
# A generator's items go out as NDJSON lines, as serve streams them.
STREAM = {stream}
# Environment variables the function reads: set from Kubernetes Secrets by func.yaml, never written here.
SECRETS = {secrets!r}


def new():
    return Function()


class Function:
    async def handle(self, scope, receive, send):
        body = bytearray()
        while True:
            message = await receive()
            # Past the limit the rest is read and dropped: the adapter answers 413 from the size alone.
            if len(body) <= {contract}.MAX_BODY_BYTES:
                body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {{key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}}
        content_type = headers.get("content-type", "")
        # The function may be plain, blocking Python (an async one gets its own loop there): run it off the event
        # loop so the probes stay answered.
        answer = await asyncio.to_thread(
            {contract}.answer, TARGET, NAME, scope["method"], content_type, bytes(body), SECRETS, STREAM
        )
        await send(
            {{
                "type": "http.response.start",
                "status": answer.status,
                "headers": [[key.lower().encode(), value.encode()] for key, value in answer.headers.items()],
            }}
        )
        await send({{"type": "http.response.body", "body": answer.body}})

    def start(self, cfg):
        """Called once when an instance starts: a class function's setup() runs here, once per instance."""
        if isinstance(TARGET, {contract}.Warm):
            try:
                TARGET.ready()
            except Exception:
                # As in a sandbox: the failure is logged, and the first call tries setup() again and answers its error.
                traceback.print_exc(file=sys.stderr)

    def stop(self):
        """Called when an instance stops: a class function's teardown() runs here."""
        if isinstance(TARGET, {contract}.Warm):
            TARGET.teardown()

    def alive(self):
        return True, "Alive"

    def ready(self):
        return True, "Ready"
'''

_MAIN_PY = '''"""Starts the function as the func CLI's Python scaffolding does: func-python serves new()."""

from func_python.http import serve

from function import new

if __name__ == "__main__":
    serve(new)
'''

_DOCKERFILE = """FROM python:{python}-slim
WORKDIR /workspace
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY main.py .
COPY function/ function/
# func-python listens where LISTEN_ADDRESS says; Knative sends requests to 8080.
ENV LISTEN_ADDRESS=0.0.0.0:8080
EXPOSE 8080
USER 1000
CMD ["python", "main.py"]
"""


def _func_yaml(planned: Planned, maximum: int) -> dict[str, Any]:
    limits = planned.definition.limits
    resource_limits: dict[str, Any] = {"memory": kubernetes_memory(limits.memory)}
    planned.mapped.append(("--memory", f"deploy.options.resources.limits.memory: {resource_limits['memory']}"))
    if limits.concurrency is not None:
        resource_limits["concurrency"] = limits.concurrency
        planned.mapped.append(("--concurrency", f"containerConcurrency (limits.concurrency): {limits.concurrency}"))
    planned.mapped.append(("scale to zero, maximum", f"deploy.options.scale.min: 0, max: {maximum}"))
    document: dict[str, Any] = {
        "specVersion": FUNC_SPEC_VERSION,
        "name": dns_name(planned.name),
        "runtime": "python",
        "deploy": {"options": {"scale": {"min": 0, "max": maximum}, "resources": {"limits": resource_limits}}},
    }
    if planned.definition.secrets:
        secret = f"{dns_name(planned.name)}-secrets"
        document["run"] = {
            "envs": [{"name": key, "value": f"{{{{ secret:{secret}:{key} }}}}"} for key in planned.definition.secrets]
        }
        planned.mapped.append(
            ("--secret", f"run.envs from the Kubernetes Secret {secret} (keys {', '.join(planned.definition.secrets)})")
        )
    return document


def _service(planned: Planned) -> dict[str, str]:
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": dns_name(planned.name)}


def _pingsource(planned: Planned) -> dict[str, Any] | None:
    schedules = planned.schedules()
    if not schedules:
        return None
    spec = schedules[0]
    line = spec.cron if spec.cron is not None else cron_for_every(spec.every or 0)
    if line is None:
        planned.not_mapped(
            f"--every {spec.every:g}s", "a PingSource fires on cron lines: minutes dividing an hour or a day"
        )
        return None
    planned.mapped.append((f"schedule ({spec.describe()})", f"PingSource schedule {line!r} (pingsource.yaml)"))
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {"name": f"{dns_name(planned.name)}-schedule"},
        "spec": {
            "schedule": line,
            "contentType": "application/json",
            "data": "{}",
            "sink": {"ref": _service(planned)},
        },
    }


def _trigger(planned: Planned) -> dict[str, Any] | None:
    retries = planned.definition.limits.retries
    if not retries:
        return None
    planned.mapped.append(("--retries", f"a Trigger's delivery.retry: {retries} (trigger.yaml)"))
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": f"{dns_name(planned.name)}-events"},
        "spec": {
            "broker": "default",
            "filter": {"attributes": {"type": f"jupyter-faas.{planned.name}"}},
            "subscriber": {"ref": _service(planned)},
            "delivery": {"retry": retries, "backoffPolicy": "exponential", "backoffDelay": "PT1S"},
        },
    }


def write(out: Path, planned: Planned, maximum: int) -> None:
    root = out / planned.name
    function = root / "function"
    map_kind(planned, streams=True, setup_where="func's start(), once per instance; teardown() in stop()")
    write_package(function, planned, f'"""{planned.name}, as a Knative function."""\n\nfrom .func import new as new\n')
    secrets = tuple(planned.definition.secrets)
    (function / "func.py").write_text(
        _FUNC_PY.format(
            name=planned.name,
            contract=CONTRACT_MODULE,
            secrets=secrets,
            target=target_line(planned, CONTRACT_MODULE),
            stream=planned.definition.streams,
        )
    )
    (root / "main.py").write_text(_MAIN_PY)
    write_requirements(root / "requirements.txt", planned, (FUNC_PYTHON,))
    (root / "Dockerfile").write_text(_DOCKERFILE.format(python=PYTHON))
    dependencies = "".join(f'  "{line}",\n' for line in planned.requirements)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "function"\nversion = "0.1.0"\nrequires-python = ">={PYTHON}"\n'
        f"dependencies = [\n{dependencies}]\n\n"
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
    )
    (root / "func.yaml").write_text(yaml.safe_dump(_func_yaml(planned, maximum), sort_keys=False))
    timeout = whole_seconds(planned.definition.limits.timeout)
    (root / "service-patch.yaml").write_text(
        yaml.safe_dump({"spec": {"template": {"spec": {"timeoutSeconds": timeout}}}}, sort_keys=False)
    )
    planned.mapped.append(("--timeout", f"revision timeoutSeconds: {timeout} (service-patch.yaml)"))
    planned.mapped.append(("--http", "the Knative Service's URL (func describe shows it)"))
    for filename, document in (("pingsource.yaml", _pingsource(planned)), ("trigger.yaml", _trigger(planned))):
        if document is not None:
            (root / filename).write_text(yaml.safe_dump(document, sort_keys=False))
