"""The OpenAPI 3.1 document of the deployed functions, with request schemas from their signatures."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jupyter_faas._registry import Deployment

_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "str": {"type": "string"},
    "bool": {"type": "boolean"},
    "list": {"type": "array"},
    "dict": {"type": "object"},
}

_ERRORS = {
    "400": "The body is not valid JSON.",
    "401": "No token was given.",
    "403": "The token is wrong.",
    "404": "No function of that name is deployed.",
    "413": "The body is larger than faas.http.max-body.",
    "422": "The arguments do not fit the function's signature.",
    "500": "The function raised, ran out of memory, or returned what JSON cannot carry.",
    "503": "No free slot within faas.http.queue-timeout.",
    "504": "The function ran past its timeout.",
}


def _schema(annotation: Any) -> dict[str, Any]:
    from jupyter_faas._endpoints import annotation_name

    name = annotation_name(annotation)
    if name == "bytes":
        return {"type": "string", "contentEncoding": "base64"}
    return dict(_SCHEMAS.get(name or "", {}))


def _request_schemas(deployment: Deployment) -> dict[str, Any]:
    """Keyword arguments as an object, positional ones as an array; bytes when the first parameter asks."""
    signature: inspect.Signature = deployment.definition.signature
    named = [
        parameter
        for parameter in signature.parameters.values()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    keywords: dict[str, Any] = {
        "type": "object",
        "properties": {parameter.name: _schema(parameter.annotation) for parameter in named},
        "required": [parameter.name for parameter in named if parameter.default is parameter.empty],
        "additionalProperties": any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()),
    }
    positional = [
        parameter
        for parameter in signature.parameters.values()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    array: dict[str, Any] = {
        "type": "array",
        "prefixItems": [_schema(parameter.annotation) for parameter in positional],
        "minItems": sum(parameter.default is parameter.empty for parameter in positional),
    }
    if not any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values()):
        array["maxItems"] = len(positional)
    content: dict[str, Any] = {"application/json": {"schema": {"oneOf": [keywords, array]}}}
    from jupyter_faas._endpoints import takes_bytes

    if takes_bytes(deployment.definition):
        content["application/octet-stream"] = {
            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
        }
    return content


def _responses(deployment: Deployment) -> dict[str, Any]:
    returns = deployment.definition.signature.return_annotation
    result = _schema(returns) if returns is not inspect.Signature.empty else {}
    responses: dict[str, Any] = {
        "200": {
            "description": "The function's return value, as JSON; bytes come as application/octet-stream.",
            "content": {
                "application/json": {"schema": result},
                "application/octet-stream": {"schema": {"type": "string"}},
            },
        },
        "202": {
            "description": "With ?async=true: queued; poll faas/api/invocations/{id}.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Queued"}}},
        },
    }
    for status, description in _ERRORS.items():
        responses[status] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def _operation(deployment: Deployment) -> dict[str, Any]:
    definition = deployment.definition
    doc = inspect.cleandoc(definition.load().__doc__ or "") if definition.payload else ""
    return {
        "operationId": f"invoke_{deployment.name}",
        "summary": f"{definition.describe_signature()} (version {definition.short_version})",
        "description": doc or f"Invoke {deployment.name}.",
        "parameters": [
            {
                "name": "async",
                "in": "query",
                "required": False,
                "description": "true: answer 202 with an invocation id at once, instead of waiting for the result.",
                "schema": {"type": "boolean"},
            }
        ],
        "requestBody": {"required": False, "content": _request_schemas(deployment)},
        "responses": _responses(deployment),
    }


def _get(summary: str, schema: dict[str, Any], secured: bool = True) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}},
    }
    if not secured:
        operation["security"] = []
    return operation


def document(deployments: Sequence[Deployment], base_url: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for deployment in deployments:
        paths[f"{base_url}faas/functions/{deployment.name}"] = {"post": _operation(deployment)}
    api = f"{base_url}faas/api"
    any_object = {"type": "object"}
    paths[f"{api}/functions"] = {"get": _get("Deployed functions.", {"type": "array", "items": any_object})}
    paths[f"{api}/functions/{{name}}"] = {
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": _get("One deployed function.", any_object),
        "delete": {"summary": "Undeploy a function.", "responses": {"204": {"description": "Undeployed."}}},
    }
    paths[f"{api}/functions/{{name}}/invocations"] = {
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "default": 20}},
        ],
        "get": _get("A function's newest invocation records, newest first.", any_object),
    }
    paths[f"{api}/platform"] = {"get": _get("Workers, maximum, keep-alive and scale events.", any_object)}
    paths[f"{api}/invocations/{{id}}"] = {
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": _get("An invocation's status, its result or error, and its output.", any_object),
    }
    paths[f"{api}/dead-letters"] = {"get": _get("Invocations that failed after their retries.", any_object)}
    paths[f"{api}/health"] = {"get": _get("Liveness; needs no token.", any_object, secured=False)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "jupyter-faas functions", "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "header", "name": "Authorization"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["type", "message"],
                            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Queued": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": {"type": "string"}, "status": {"type": "string"}},
                },
            },
        },
        "security": [{"bearer": []}, {"token": []}],
    }
