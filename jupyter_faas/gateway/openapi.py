"""The OpenAPI 3.1 document of the deployed functions, with request schemas from their signatures."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jupyter_faas.contract import annotation_name
from jupyter_faas.definition.schema import json_schema
from jupyter_faas.definition.signature import takes_bytes

if TYPE_CHECKING:
    from jupyter_faas.record.registry import Deployment

_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "str": {"type": "string"},
    "bool": {"type": "boolean"},
    "list": {"type": "array"},
    "dict": {"type": "object"},
}

_ERRORS = {
    "400": "The body is not valid JSON, or the Idempotency-Key is not 1 to 255 printable characters.",
    "401": "No token was given.",
    "403": "The token is wrong, or the function key was revoked or does not reach this function or route.",
    "404": "No function of that name is deployed.",
    "413": "The body is larger than faas.http.max-body.",
    "431": "The request headers are too large.",
    "409": "The first request with this Idempotency-Key was cut short by a restart; it is not run again.",
    "422": "The arguments do not fit the function's signature (the parameter named), or the Idempotency-Key was "
    "used with another body.",
    "429": "Past the function's rate or daily quota for this caller (Retry-After says when to try again), or its "
    "queue is full; the function did not run.",
    "500": "The function raised, ran out of memory, or returned what JSON cannot carry.",
    "503": "No free slot within faas.http.queue-timeout; or the server is still starting (type Starting).",
    "504": "The function ran past its timeout.",
}


def _schema(annotation: Any) -> dict[str, Any]:
    name = annotation_name(annotation)
    if name == "bytes":
        return {"type": "string", "contentEncoding": "base64"}
    return dict(_SCHEMAS.get(name or "", {}))


def _parameter_schema(deployment: Deployment, parameter: inspect.Parameter, found: dict[str, Any]) -> dict[str, Any]:
    """A plain type's schema, or pydantic's for a richer annotation (its named parts added to `found`)."""
    plain = _schema(parameter.annotation)
    if plain or parameter.annotation is inspect.Parameter.empty:
        return plain
    schema, named = json_schema(deployment.definition, parameter.name, f"{deployment.name}.")
    found.update(named)
    return schema


def _request_schemas(deployment: Deployment, found: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as an object, positional ones as an array; bytes when the first parameter asks."""
    signature: inspect.Signature = deployment.definition.signature
    named = [
        parameter
        for parameter in signature.parameters.values()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    keywords: dict[str, Any] = {
        "type": "object",
        "properties": {parameter.name: _parameter_schema(deployment, parameter, found) for parameter in named},
        "required": [parameter.name for parameter in named if parameter.default is parameter.empty],
        "additionalProperties": any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()),
    }
    positional = [
        parameter
        for parameter in signature.parameters.values()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    array: dict[str, Any] = {"type": "array", "minItems": sum(p.default is p.empty for p in positional)}
    if positional:  # JSON Schema wants a non-empty prefixItems, or none
        array["prefixItems"] = [_parameter_schema(deployment, parameter, found) for parameter in positional]
    if not any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values()):
        array["maxItems"] = len(positional)
    content: dict[str, Any] = {"application/json": {"schema": {"oneOf": [keywords, array]}}}
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
    if deployment.definition.streams:
        responses["200"] = _streamed_answer()
    for status, description in _ERRORS.items():
        responses[status] = _error(description)
    return responses


def _streamed_answer() -> dict[str, Any]:
    """A generator's 200: chunked, one part per item as it is yielded; an error after the first item ends it."""
    return {
        "description": "Streamed (chunked) as the function yields: by default NDJSON, one JSON value per line, "
        'ending with a line {"error": {...}} if it fails after its first item; with Accept: text/event-stream, '
        "Server-Sent Events (`data:` per item, `event: error` on failure, bytes items as `event: bytes` in "
        "base64). Bytes items go as raw chunks (application/octet-stream when the first item is bytes).",
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }


def _operation(deployment: Deployment, found: dict[str, Any]) -> dict[str, Any]:
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
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Repeats with this key (per caller, within faas.http.idempotency-ttl) get the first "
                "answer, or the first invocation id, and never run the function again.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        ],
        "requestBody": {"required": False, "content": _request_schemas(deployment, found)},
        "responses": _responses(deployment),
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _api(
    summary: str, status: str, schema: dict[str, Any] | None, *errors: str, secured: bool = True
) -> dict[str, Any]:
    """One operation of the REST API: its answer, and the errors it may give besides."""
    answer: dict[str, Any] = {"description": summary}
    if schema is not None:
        answer["content"] = {"application/json": {"schema": schema}}
    responses = {status: answer, "431": _error(_ERRORS["431"])}
    if secured:
        responses["401"] = _error(_ERRORS["401"])
        responses["403"] = _error(_ERRORS["403"])
    for code in errors:
        responses[code] = _error(_API_ERRORS[code])
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if not secured:
        operation["security"] = []
    return operation


_API_ERRORS = {
    "400": "A query parameter is malformed.",
    "404": "No such function, invocation, dead letter or key.",
    "410": "The async result is no longer kept (past faas.http.async-results-max-bytes); "
    "the error's invocation_status is its status.",
    "422": "The dead letter's input no longer fits the function's signature, or cannot be read back; or a key's "
    'functions are not a list of names or "*".',
    "500": "The registry cannot be read.",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": item}}}


_NUMBER_OR_NULL = {"type": ["number", "null"]}

_KEY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string"},
    "functions": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"const": "*"}]},
    "created": {"type": "number"},
    "note": {"type": "string"},
}

_COMPONENTS: dict[str, Any] = {
    "FunctionKey": {"type": "object", "required": ["id", "functions"], "properties": _KEY_PROPERTIES},
    "NewKey": {
        "type": "object",
        "required": ["id", "key", "functions"],
        "properties": {**_KEY_PROPERTIES, "key": {"type": "string", "pattern": "^fk_"}},
    },
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
    "Function": {
        "type": "object",
        "required": ["name", "version", "signature", "parameters", "limits", "url", "stats"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "deployed_at": {"type": "number"},
            "signature": {"type": "string"},
            "parameters": {"type": "array", "items": {"type": "object"}},
            "limits": {"type": "object"},
            "url": {"type": "string"},
            "stats": {"type": "object"},
            "last_invoked": _NUMBER_OR_NULL,
        },
    },
    "InvocationRecord": {
        "type": "object",
        "required": ["id", "function", "status"],
        "properties": {
            "id": {"type": "string"},
            "function": {"type": "string"},
            "status": {"type": "string"},
            "trigger": {"type": "string"},
            "latency_ms": _NUMBER_OR_NULL,
            "output": {"type": ["string", "null"]},
            "parent": {"type": ["string", "null"], "description": "The invocation that made this call."},
            "root": {"type": ["string", "null"], "description": "The top of its call tree."},
            "init_ms": _NUMBER_OR_NULL,
            "items": {"type": ["integer", "null"]},
            "first_item_ms": _NUMBER_OR_NULL,
        },
    },
    "Invocation": {
        "type": "object",
        "required": ["id", "function", "status"],
        "properties": {
            "id": {"type": "string"},
            "function": {"type": "string"},
            "status": {"enum": ["queued", "running", "ok", "error", "timeout", "memory"]},
            "result": {},
            "error": {"type": "object"},
            "output": {"type": ["string", "null"]},
            "record": {"type": "object"},
            "children": {
                "description": "The calls this invocation made, as records, in the order it made them.",
                "type": "array",
                "items": {"type": "object"},
            },
            "call_tree": {
                "description": "This invocation and every call below it (a waterfall), with their cost together.",
                "type": "object",
                "properties": {
                    "calls": {"type": "array", "items": {"type": "object"}},
                    "tree_cost_usd": {"type": "number"},
                },
            },
        },
    },
    "Platform": {
        "type": "object",
        "required": ["workers", "maximum", "idle_timeout_s", "scale_events", "dashboard_link"],
        "properties": {
            "workers": {"type": "integer"},
            "maximum": {"type": "integer"},
            "idle_timeout_s": {"type": "number"},
            "seconds_to_scale_to_zero": _NUMBER_OR_NULL,
            "scale_events": {"type": "array", "items": {"type": "object"}},
            "dashboard_link": {"type": "string"},
        },
    },
    "DeadLetter": {
        "type": "object",
        "required": ["id", "function", "content_type", "bytes", "error"],
        "properties": {
            "id": {"type": "string"},
            "function": {"type": "string"},
            "version": {"type": "string"},
            "failed_at": {"type": "number"},
            "content_type": {"type": "string"},
            "bytes": {"type": "integer", "description": "Size of the input kept on disk."},
            "error": {"type": "object", "description": "Why the invocation failed."},
            "input": {
                "description": "In the list: the input if it is JSON of at most 4 KiB, else {bytes}. In one "
                "letter's GET: the whole input, JSON decoded, or {base64, bytes}."
            },
            "source": {"type": "object", "description": "A file event's {trigger: file, path}: replay reads it."},
            "input_dropped": {"type": "string", "description": "Why the input was not kept (past the bound)."},
            "damaged": {"type": "string", "description": "Why the input cannot be read back; no replay."},
        },
    },
    "DeadLetterPage": {
        "type": "object",
        "required": ["dead_letters", "next", "total", "skipped", "damaged"],
        "properties": {
            "dead_letters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}},
            "next": {"type": ["string", "null"], "description": "Pass as ?after= for the next page; null at the end."},
            "total": {"type": "integer", "description": "Letters in all."},
            "skipped": {"type": "integer", "description": "Damaged index lines skipped (kept aside on disk)."},
            "damaged": {"type": "array", "items": {"type": "string"}, "description": "Ids on this page flagged."},
        },
    },
}


def document(deployments: Sequence[Deployment], base_url: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    # The named schemas of the parameters' models, dataclasses and TypedDicts, each under FUNCTION.NAME.
    found: dict[str, Any] = {}
    for deployment in deployments:
        paths[f"{base_url}faas/functions/{deployment.name}"] = {"post": _operation(deployment, found)}
    api = f"{base_url}faas/api"
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    ident = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths[f"{api}/functions"] = {"get": _api("Deployed functions.", "200", _list_of("functions", _ref("Function")))}
    paths[f"{api}/functions/{{name}}"] = {
        "parameters": [name],
        "get": _api("One deployed function.", "200", _ref("Function"), "404", "500"),
        "delete": _api("Undeploy a function.", "204", None, "404", "500"),
    }
    paths[f"{api}/functions/{{name}}/invocations"] = {
        "parameters": [
            name,
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "default": 20}},
        ],
        "get": _api(
            "A function's newest invocation records, newest first.",
            "200",
            _list_of("invocations", _ref("InvocationRecord")),
            "400",
            "404",
            "500",
        ),
    }
    paths[f"{api}/platform"] = {"get": _api("Workers, maximum, keep-alive and scale events.", "200", _ref("Platform"))}
    paths[f"{api}/invocations/{{id}}"] = {
        "parameters": [ident],
        "get": _api(
            "An invocation's status, its result or error, and its output.", "200", _ref("Invocation"), "404", "410"
        ),
    }
    page_query = [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        },
        {
            "name": "after",
            "in": "query",
            "required": False,
            "description": "The `next` of the page before; the list goes on from there, oldest first.",
            "schema": {"type": "string"},
        },
        {
            "name": "function",
            "in": "query",
            "required": False,
            "description": "Only this function's letters.",
            "schema": {"type": "string"},
        },
    ]
    paths[f"{api}/dead-letters"] = {
        "parameters": page_query,
        "get": _api(
            "Invocations that failed after their retries: one page, oldest first, without their inputs.",
            "200",
            _ref("DeadLetterPage"),
            "400",
        ),
    }
    paths[f"{api}/dead-letters/{{id}}"] = {
        "parameters": [ident],
        "get": _api("One dead letter with its whole input.", "200", _ref("DeadLetter"), "404"),
        "delete": _api("Discard it.", "204", None, "404"),
    }
    paths[f"{api}/dead-letters/{{id}}/replay"] = {
        "parameters": [ident],
        "post": _api(
            "Run it again, asynchronously; a file event reads its file again, as its trigger does.",
            "202",
            _ref("Queued"),
            "404",
            "422",
            "500",
        ),
    }
    paths[f"{api}/triggers"] = {
        "get": _api("Every schedule and file trigger.", "200", _list_of("triggers", {"type": "object"}))
    }
    paths[f"{api}/openapi.json"] = {"get": _api("This document.", "200", {"type": "object"})}
    key_body = {
        "type": "object",
        "required": ["functions"],
        "properties": {
            "functions": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"const": "*"}]},
            "note": {"type": "string", "maxLength": 200},
        },
    }
    created = _api("A new function key: its secret `key` is in this answer only.", "201", _ref("NewKey"), "422")
    created["requestBody"] = {"required": True, "content": {"application/json": {"schema": key_body}}}
    created["responses"]["400"] = _error("The body is not valid JSON.")
    created["responses"]["413"] = _error("The body is over 64 KiB.")
    paths[f"{api}/keys"] = {
        "get": _api("Every function key, without its secret.", "200", _list_of("keys", _ref("FunctionKey"))),
        "post": created,
    }
    paths[f"{api}/keys/{{id}}"] = {
        "parameters": [ident],
        "get": _api("One function key, without its secret.", "200", _ref("FunctionKey"), "404"),
        "delete": _api("Revoke it: refused from the next request on.", "204", None, "404"),
    }
    health = _api(
        "Readiness; needs no token.",
        "200",
        {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        secured=False,
    )
    health["responses"]["503"] = {
        "description": "Still starting: serve's notebook is running, or its triggers are being armed.",
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["status"], "properties": {"status": {"const": "starting"}}}
            }
        },
    }
    paths[f"{api}/health"] = {"get": health}
    metrics = _api("Prometheus metrics of the invocations and the workers.", "200", None)
    metrics["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    paths[f"{base_url}faas/metrics"] = {"get": metrics}
    return {
        "openapi": "3.1.0",
        "info": {"title": "jupyter-faas functions", "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "header", "name": "Authorization"},
            },
            "schemas": {**copy.deepcopy(_COMPONENTS), **found},
        },
        "security": [{"bearer": []}, {"token": []}],
    }
