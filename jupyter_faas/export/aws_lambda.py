"""The AWS Lambda target: an AWS SAM template.yaml, and per function app.py with lambda_handler(event, context)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jupyter_faas.export.mapping import aws_cron, aws_rate, logical_id, mebibytes, whole_seconds
from jupyter_faas.export.plan import (
    CONTRACT_MODULE,
    PYTHON,
    Planned,
    map_kind,
    target_line,
    write_package,
    write_requirements,
)

# Lambda's own bounds.
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 10240
MAX_TIMEOUT_S = 900
MAX_ASYNC_RETRIES = 2

COMMANDS = """
sam build          # reads template.yaml; installs each function's requirements.txt
sam deploy --guided    # asks for the secret parameters (NoEcho) and deploys the stack
# or as a container image: docker build -t NAME NAME/ (PackageType: Image in the template)
"""

_APP_PY = '''"""{name} on AWS Lambda: lambda_handler answers Function URL and API Gateway v2 events as serve does."""

import base64

from function import {contract}
from function.{name} import {name}

# A class function's instance is made and set up at the first request of this execution environment, then kept.
{target}

NAME = {name!r}
# Environment variables the function reads: set by template.yaml from NoEcho parameters, never written here.
SECRETS = {secrets!r}


def lambda_handler(event, context):
    method = event.get("requestContext", {{}}).get("http", {{}}).get("method", "POST")
    headers = {{key.lower(): value for key, value in (event.get("headers") or {{}}).items()}}
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8")
    answer = {contract}.answer(TARGET, NAME, method, headers.get("content-type", ""), raw, SECRETS)
    if answer.headers["Content-Type"] == "application/json":
        return {{
            "statusCode": answer.status,
            "headers": answer.headers,
            "body": answer.body.decode("utf-8"),
            "isBase64Encoded": False,
        }}
    return {{
        "statusCode": answer.status,
        "headers": answer.headers,
        "body": base64.b64encode(answer.body).decode("ascii"),
        "isBase64Encoded": True,
    }}
'''

_DOCKERFILE = """FROM public.ecr.aws/lambda/python:{python}
COPY requirements.txt ${{LAMBDA_TASK_ROOT}}/
RUN pip install --no-cache-dir -r ${{LAMBDA_TASK_ROOT}}/requirements.txt --target ${{LAMBDA_TASK_ROOT}}
COPY app.py ${{LAMBDA_TASK_ROOT}}/
COPY function/ ${{LAMBDA_TASK_ROOT}}/function/
CMD ["app.lambda_handler"]
"""


def parameter_name(variable: str) -> str:
    return "".join(part[:1].upper() + part[1:].lower() for part in variable.split("_") if part) + "Secret"


def _resource(planned: Planned, parameters: dict[str, Any]) -> dict[str, Any]:
    limits = planned.definition.limits
    timeout = whole_seconds(limits.timeout)
    if timeout > MAX_TIMEOUT_S:
        planned.warnings.append(f"{planned.name}: --timeout {timeout}s is over Lambda's {MAX_TIMEOUT_S}s; set to that")
        timeout = MAX_TIMEOUT_S
    planned.mapped.append(("--timeout", f"Timeout: {timeout}"))
    memory = mebibytes(limits.memory)
    if not MIN_MEMORY_MB <= memory <= MAX_MEMORY_MB:
        clamped = min(max(memory, MIN_MEMORY_MB), MAX_MEMORY_MB)
        planned.warnings.append(
            f"{planned.name}: --memory {memory} MB is outside Lambda's {MIN_MEMORY_MB}-{MAX_MEMORY_MB} MB; "
            f"set to {clamped}"
        )
        memory = clamped
    planned.mapped.append(("--memory", f"MemorySize: {memory}"))
    properties: dict[str, Any] = {
        "CodeUri": f"{planned.name}/",
        "Handler": "app.lambda_handler",
        "Runtime": f"python{PYTHON}",
        "Timeout": timeout,
        "MemorySize": memory,
        "FunctionUrlConfig": {"AuthType": "AWS_IAM"},
    }
    planned.mapped.append(("--http", "FunctionUrlConfig (AuthType AWS_IAM: callers sign their requests)"))
    planned.mapped.append(("scale to zero, maximum", "native: Lambda runs instances only for requests"))
    if limits.concurrency is not None:
        properties["ReservedConcurrentExecutions"] = limits.concurrency
        planned.mapped.append(("--concurrency", f"ReservedConcurrentExecutions: {limits.concurrency}"))
    if limits.retries:
        retries = min(limits.retries, MAX_ASYNC_RETRIES)
        if retries < limits.retries:
            planned.warnings.append(
                f"{planned.name}: --retries {limits.retries} is over Lambda's {MAX_ASYNC_RETRIES} for async calls; "
                "set to that"
            )
        properties["EventInvokeConfig"] = {"MaximumRetryAttempts": retries}
        planned.mapped.append(("--retries", f"EventInvokeConfig.MaximumRetryAttempts: {retries} (async calls)"))
    if planned.definition.secrets:
        variables = {}
        for variable in planned.definition.secrets:
            parameter = parameter_name(variable)
            parameters[parameter] = {
                "Type": "String",
                "NoEcho": True,
                "Description": f"The value of {variable} for {planned.name}: given at deploy time, never stored here",
            }
            variables[variable] = {"Ref": parameter}
        properties["Environment"] = {"Variables": variables}
        planned.mapped.append(("--secret", "Environment from NoEcho parameters: " + ", ".join(variables)))
    events: dict[str, Any] = {}
    for spec in planned.schedules()[:1]:
        expression = aws_cron(spec.cron) if spec.cron is not None else aws_rate(spec.every or 0)
        if expression is None:
            what = f"--cron {spec.cron!r}" if spec.cron is not None else f"--every {spec.every:g}s"
            planned.not_mapped(what, "EventBridge schedules take whole minutes, and a day of the month or of the week")
        else:
            events["Schedule"] = {"Type": "ScheduleV2", "Properties": {"ScheduleExpression": expression}}
            planned.mapped.append((f"schedule ({spec.describe()})", f"Schedule event {expression}"))
    if events:
        properties["Events"] = events
    return {"Type": "AWS::Serverless::Function", "Properties": properties}


def write(out: Path, planned: Planned, resources: dict[str, Any], parameters: dict[str, Any]) -> None:
    folder = out / planned.name
    map_kind(
        planned, streams=False, setup_where="module level, at the first request of each execution environment (lazily)"
    )
    write_package(folder / "function", planned)
    (folder / "app.py").write_text(
        _APP_PY.format(
            name=planned.name,
            contract=CONTRACT_MODULE,
            secrets=tuple(planned.definition.secrets),
            target=target_line(planned, CONTRACT_MODULE),
        )
    )
    write_requirements(folder / "requirements.txt", planned)
    (folder / "Dockerfile").write_text(_DOCKERFILE.format(python=PYTHON))
    resources[logical_id(planned.name)] = _resource(planned, parameters)


def write_template(out: Path, resources: dict[str, Any], parameters: dict[str, Any]) -> None:
    template: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": "Functions exported from a jupyter-faas notebook",
    }
    if parameters:
        template["Parameters"] = parameters
    template["Resources"] = resources
    template["Outputs"] = {
        f"{key}Url": {
            "Description": f"The Function URL of {key}",
            "Value": {"Fn::GetAtt": [f"{key}Url", "FunctionUrl"]},
        }
        for key in resources
    }
    (out / "template.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
