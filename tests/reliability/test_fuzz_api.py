"""Schemathesis against faas/api/openapi.json of a real `jupyter faas serve`: no gateway 5xx, no schema mismatch.

Every operation of the document is fuzzed with data that fits its schema and with data that does not.
CI runs FAAS_FUZZ_EXAMPLES (default 25) examples per operation and mode (50 per operation), derandomized so
that a run is repeatable; FAAS_FUZZ_EXAMPLES=1000 is the full run.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis

# Imported at collection, before any test runs: see tests/test_layout.py's note on CPython 3.11 (_parse).
import schemathesis.specs.openapi.schemas
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from tests.helpers import RELIABILITY_AUTH as AUTH
from tests.helpers import RELIABILITY_CELLS as CELLS
from tests.helpers import StateServed as Served
from tests.helpers import serving

EXAMPLES = int(os.environ.get("FAAS_FUZZ_EXAMPLES", "25"))
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, response_headers_conformance]
DEPLOYED = {source.split()[1] for source in CELLS}
# 5xx a function endpoint may answer because of the function itself, not the gateway: its own exception
# (any other type name), its result, its memory, its worker, its capacity, its timeout.
GATEWAY_ERRORS = {"InternalServerError", "RegistryError"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("fuzz")
    # A short queue timeout: a burst of fuzzed invocations waits at most this long for a slot (then 503).
    env = {"DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "300s", "DASK_FAAS__HTTP__QUEUE_TIMEOUT": "20s"}
    with serving(folder, CELLS, env) as server:
        yield server


def gateway_failure(response: requests.Response, is_function: bool) -> str | None:
    """Why this answer is a 5xx of the gateway itself, or None."""
    if response.status_code < 500:
        return None
    try:
        error = response.json()["error"]
        kind = error["type"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} without a JSON error: {response.text[:200]!r}"
    if not is_function:
        return f"{response.status_code} from an API route: {error}"
    if kind in GATEWAY_ERRORS:
        return f"{response.status_code} from the gateway: {error}"
    return None


@dataclass
class Tally:
    examples: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    gateway_5xx: list[str] = field(default_factory=list)
    nothing_to_negate: list[str] = field(default_factory=list)


def fuzz(operation: Any, mode: GenerationMode, base_url: str, session: requests.Session, tally: Tally) -> None:
    """EXAMPLES derandomized examples of one operation in one mode, each sent and checked."""
    label = f"{operation.method.upper()} {operation.path}"
    is_function = operation.path.startswith("/faas/functions/")

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if case.method == "DELETE" and (case.path_parameters or {}).get("name") in DEPLOYED:
            # Undeploying is covered elsewhere; here it would take functions away from later examples.
            case.path_parameters["name"] = "not_" + case.path_parameters["name"]
        response = case.call(base_url=base_url, session=session, headers=AUTH, timeout=90)
        tally.examples[label] += 1
        tally.statuses[response.status_code] += 1
        failure = gateway_failure(response, is_function)
        if failure is not None:
            tally.gateway_5xx.append(f"{label}: {failure}")
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for each in group.exceptions:
                tally.mismatches.append(f"{label} [{mode.value}] {response.status_code}: {each.title}: {each}")

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        tally.nothing_to_negate.append(label)  # no parameters and no body: no wrong input to make


def test_every_operation_answers_within_its_schema_and_never_with_a_gateway_5xx(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}faas/api/openapi.json", headers=AUTH, timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    tally = Tally()
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(operation, mode, served.url.rstrip("/"), session, tally)
    report = {
        "examples": sum(tally.examples.values()),
        "examples_per_operation_and_mode": EXAMPLES,
        "operations": len(operations),
        "gateway_5xx": len(tally.gateway_5xx),
        "schema_mismatches": len(tally.mismatches),
        "statuses": dict(sorted(tally.statuses.items())),
    }
    print(json.dumps(report))
    if os.environ.get("FAAS_FUZZ_REPORT"):
        detail = {**report, "per_operation": tally.examples}
        Path(os.environ["FAAS_FUZZ_REPORT"]).write_text(json.dumps(detail, indent=1))
    assert served.works()
    assert not tally.gateway_5xx, "\n".join(tally.gateway_5xx[:5]) + "\n" + "".join(served.output)[-4000:]
    assert not tally.mismatches, "\n".join(sorted(set(tally.mismatches))[:30])
    # Every documented operation was fuzzed, the functions' and the API's alike; schemathesis leaves out the
    # one it loaded the document from, faas/api/openapi.json (test_serve.py validates that document).
    document = served.get("faas/api/openapi.json", headers=AUTH).json()
    documented = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert set(tally.examples) == documented - {"GET /faas/api/openapi.json"}
    assert all(count > 0 for count in tally.examples.values())
