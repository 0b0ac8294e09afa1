"""`jupyter faas serve` as a real subprocess, answering real HTTP on 127.0.0.1: every row of the contract."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from jupyter_faas.gateway.serve import code_cells
from tests.helpers import (
    AUTH,
    EARLY_ANNOUNCEMENT,
    TOKEN,
    Served,
    invocations_of,
    start_serve,
    stop_process_group,
    wait_for,
    wait_for_outcome,
    write_notebook,
)

JSON = {**AUTH, "Content-Type": "application/json"}

CELLS = [
    "%%faas square x:int\nx * x",
    "%%faas add a b=10\na + b",
    "%%faas --timeout 1s\nimport time\ndef slow(seconds: float):\n    time.sleep(seconds)\n    return seconds",
    "%%faas boom --retries 1\nraise ValueError('boom on purpose')",
    "%%faas size data:bytes\nlen(data)",
    "%%faas shout text:str\ntext.upper().encode()",
    "%%faas hold seconds:float --concurrency 1\nimport time\ntime.sleep(seconds)\nseconds",
    "%%faas odd\n{1, 2}",
    "%%faas chatty n:int\nimport sys\nprint('hello', n)\nprint('careful', file=sys.stderr)\nn",
    # Neither of these runs: one is tagged faas-skip, the other says so on its first line.
    "# faas: skip\nraise RuntimeError('this cell must not run')",
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve")
    notebook = write_notebook(folder / "functions.ipynb", CELLS, skip_tagged="raise RuntimeError('tagged')")
    # A short queue timeout, so that the 503 row takes seconds; the warm-up below starts a worker first.
    env = {"DASK_FAAS__HTTP__QUEUE_TIMEOUT": "1.5s", "DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "300s"}
    server = start_serve(notebook, folder / "state", env=env)
    try:
        assert server.post("square", json={"x": 2}, headers=AUTH).json() == 4
        yield server
    finally:
        stop_process_group(server.process)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert "Traceback" not in response.text  # never the gateway's stack
    return body["error"]


# -- success -------------------------------------------------------------------------------------------


def test_a_json_object_is_keyword_arguments_and_the_answer_is_the_json_result(served: Served) -> None:
    response = served.post("square", json={"x": 7}, headers=AUTH)
    assert response.status_code == 200
    assert response.text == "49"
    assert response.headers["content-type"].startswith("application/json")


def test_a_json_array_is_positional_arguments(served: Served) -> None:
    assert served.post("add", json=[1, 2], headers=AUTH).json() == 3
    assert served.post("add", json=[1], headers=AUTH).json() == 11


def test_a_token_serve_makes_can_be_passed_back_as_its_token_option(tmp_path: Path) -> None:
    # A made token that began with "-" would read as an option in `serve --token TOKEN`: serve makes hex ones.
    notebook = write_notebook(tmp_path / "made.ipynb", ["%%faas double x:int\nx * 2"])
    served = start_serve(notebook, tmp_path / "state", token=None)
    try:
        line = wait_for(lambda: [line for line in served.output if "token: " in line], 30, "the token line")[0]
        made = line.split("token: ")[1].split()[0]
        assert re.fullmatch(r"[0-9a-f]{48}", made), line
        assert served.post("double", json={"x": 4}, headers={"Authorization": f"Bearer {made}"}).json() == 8
    finally:
        stop_process_group(served.process)
    again = start_serve(notebook, tmp_path / "state", "--token", made, token=None)
    try:
        assert again.post("double", json={"x": 5}, headers={"Authorization": f"Bearer {made}"}).json() == 10
    finally:
        stop_process_group(again.process)


def test_both_token_forms_are_accepted(served: Served) -> None:
    headers = {"Authorization": f"token {TOKEN}"}
    assert served.post("square", json={"x": 3}, headers=headers).json() == 9


def test_another_content_type_passes_the_raw_body_as_bytes(served: Served) -> None:
    image = bytes(range(256)) * 40
    response = served.post("size", content=image, headers={**AUTH, "Content-Type": "image/png"})
    assert response.status_code == 200
    assert response.json() == len(image)


def test_a_bytes_result_is_sent_as_octet_stream(served: Served) -> None:
    response = served.post("shout", json={"text": "hi"}, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"HI"


def test_skipped_cells_did_not_run(served: Served) -> None:
    # Both skipped cells raise: had either run, serve would have exited instead of starting.
    listed = served.get("faas/api/functions", headers=AUTH).json()["functions"]
    names = sorted(f["name"] for f in listed)
    assert names == ["add", "boom", "chatty", "hold", "odd", "shout", "size", "slow", "square"]


# -- every row of the error table ----------------------------------------------------------------------


def test_400_for_a_body_that_is_not_json(served: Served) -> None:
    response = served.post("square", content=b'{"x": ', headers=JSON)
    assert response.status_code == 400
    assert error_of(response)["type"] == "InvalidJSON"


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer wrong"}, 403)])
def test_401_and_403_for_a_missing_or_wrong_token_and_the_function_does_not_run(
    served: Served, headers: dict[str, str], status: int
) -> None:
    before = served.get("faas/api/functions/square", headers=AUTH).json()["stats"]["invocations"]
    response = served.post("square", json={"x": 5}, headers=headers)
    assert response.status_code == status
    error_of(response)
    after = served.get("faas/api/functions/square", headers=AUTH).json()["stats"]["invocations"]
    assert after == before


def test_404_for_an_unknown_function(served: Served) -> None:
    response = served.post("nothing_here", json={}, headers=AUTH)
    assert response.status_code == 404
    assert "nothing_here" in error_of(response)["message"]


def test_405_for_a_wrong_method(served: Served) -> None:
    response = served.get("faas/functions/square", headers=AUTH)
    assert response.status_code == 405
    error_of(response)


def test_413_for_a_body_over_the_limit(served: Served) -> None:
    response = served.post("size", content=b"x" * (6 * 2**20 + 1), headers={**AUTH, "Content-Type": "image/png"})
    assert response.status_code == 413
    assert error_of(response)["type"] == "PayloadTooLarge"


def test_422_names_the_parameter_that_does_not_fit(served: Served) -> None:
    missing = served.post("square", json={}, headers=AUTH)
    assert missing.status_code == 422
    assert error_of(missing)["parameter"] == "x"
    wrong_type = served.post("square", json={"x": "seven"}, headers=AUTH)
    assert wrong_type.status_code == 422
    assert "'x' expects int" in error_of(wrong_type)["message"]
    unknown = served.post("square", json={"x": 1, "y": 2}, headers=AUTH)
    assert unknown.status_code == 422
    assert "'y'" in error_of(unknown)["message"]


def test_422_hints_at_the_content_type_when_json_was_sent_as_a_form(served: Served) -> None:
    # What a bare `curl -d '{"x": 7}'` sends.
    form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    response = served.post("square", content=b'{"x": 7}', headers=form)
    assert response.status_code == 422
    assert "Content-Type: application/json" in error_of(response)["message"]


def test_500_when_the_function_raises_without_a_traceback_by_default(served: Served) -> None:
    response = served.post("boom", headers=AUTH)
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "ValueError"
    assert "boom on purpose" in error["message"]
    assert "traceback" not in error


def test_500_for_a_result_json_cannot_carry(served: Served) -> None:
    response = served.post("odd", headers=AUTH)
    assert response.status_code == 500
    assert error_of(response)["type"] == "ResultNotJSON"


def test_503_when_no_slot_frees_within_the_queue_timeout(served: Served) -> None:
    # An asynchronous invocation takes the one slot of concurrency 1 before its 202 is sent.
    taken = served.post("hold", params={"async": "true"}, json={"seconds": 4}, headers=AUTH)
    assert taken.status_code == 202
    began = time.monotonic()
    response = served.post("hold", json={"seconds": 0}, headers=AUTH)
    assert response.status_code == 503
    assert error_of(response)["type"] == "NoCapacity"
    # It waited for the queue timeout (1.5 s here), and was answered while the slot was still taken.
    assert time.monotonic() - began >= 1.4
    pending = served.get(f"faas/api/invocations/{taken.json()['id']}", headers=AUTH).json()
    assert pending["status"] in ("queued", "running")
    assert wait_for_outcome(served, taken.json()["id"])["status"] == "ok"


def test_504_when_the_function_times_out(served: Served) -> None:
    began = time.monotonic()
    response = served.post("slow", json={"seconds": 30}, headers=AUTH)
    assert response.status_code == 504
    assert error_of(response)["type"] == "Timeout"
    assert time.monotonic() - began < 10
    assert served.post("slow", json={"seconds": 0}, headers=AUTH).json() == 0


# -- asynchronous invocations and dead letters ---------------------------------------------------------


def test_async_answers_202_with_an_id_then_the_result(served: Served) -> None:
    response = served.post("square", params={"async": "true"}, json={"x": 12}, headers=AUTH)
    assert response.status_code == 202
    invocation_id = response.json()["id"]
    state = wait_for_outcome(served, invocation_id)
    record = state.pop("record")
    # It made no calls: no children, and a call tree of itself alone.
    assert state.pop("children") == [] and [row["id"] for row in state.pop("call_tree")["calls"]] == [invocation_id]
    assert state == {"id": invocation_id, "function": "square", "status": "ok", "result": 144, "output": ""}
    assert record["id"] == invocation_id and record["trigger"] == "http"


def test_async_status_is_queued_or_running_while_pending(served: Served) -> None:
    response = served.post("hold", params={"async": "true"}, json={"seconds": 1.0}, headers=AUTH)
    invocation_id = response.json()["id"]
    pending = served.get(f"faas/api/invocations/{invocation_id}", headers=AUTH).json()
    assert pending["status"] in ("queued", "running")
    assert wait_for_outcome(served, invocation_id)["status"] == "ok"


def test_a_failure_after_retries_is_a_dead_letter_that_can_be_replayed(served: Served) -> None:
    response = served.post("boom", params={"async": "true"}, json={}, headers=AUTH)
    invocation_id = response.json()["id"]
    state = wait_for_outcome(served, invocation_id)
    assert state["status"] == "error"
    assert state["error"]["type"] == "ValueError"
    letters = served.get("faas/api/dead-letters", headers=AUTH).json()["dead_letters"]
    letter = next(letter for letter in letters if letter["id"] == invocation_id)
    assert letter["function"] == "boom"
    assert letter["input"] == {}
    records = [r for r in served.get("faas/api/functions/boom", headers=AUTH).json()["stats"].items()]
    assert records  # the function's stats are readable while it fails

    replayed = httpx.post(f"{served.url}faas/api/dead-letters/{invocation_id}/replay", headers=AUTH, timeout=30)
    assert replayed.status_code == 202
    new_id = replayed.json()["id"]
    assert new_id != invocation_id
    assert wait_for_outcome(served, new_id)["status"] == "error"
    letters = served.get("faas/api/dead-letters", headers=AUTH).json()["dead_letters"]
    ids = {letter["id"] for letter in letters}
    assert invocation_id not in ids and new_id in ids
    assert httpx.delete(f"{served.url}faas/api/dead-letters/{new_id}", headers=AUTH).status_code == 204
    assert httpx.delete(f"{served.url}faas/api/dead-letters/{new_id}", headers=AUTH).status_code == 404


def test_an_unknown_invocation_id_is_404(served: Served) -> None:
    response = served.get("faas/api/invocations/no-such-id", headers=AUTH)
    assert response.status_code == 404
    error_of(response)


# -- the REST API and the generated documents ----------------------------------------------------------


def test_the_api_lists_and_describes_functions(served: Served) -> None:
    square = served.get("faas/api/functions/square", headers=AUTH).json()
    assert square["signature"] == "square(x: int)"
    assert square["url"] == f"{served.url}faas/functions/square"
    assert square["limits"]["timeout_s"] == 60
    assert square["parameters"] == [
        {"name": "x", "kind": "positional_or_keyword", "annotation": "int", "required": True}
    ]
    assert square["stats"]["invocations"] >= 1
    assert len(square["version"]) == 64


def test_the_api_needs_the_token_but_health_does_not(served: Served) -> None:
    assert served.get("faas/api/functions").status_code == 401
    health = served.get("faas/api/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}


def test_the_platform_api(served: Served) -> None:
    state = served.get("faas/api/platform", headers=AUTH).json()
    assert state["workers"] >= 1
    assert state["maximum"] >= 1
    assert state["idle_timeout_s"] == 300
    assert state["scale_events"][0]["workers"] == 0
    assert state["dashboard_link"].startswith("http://127.0.0.1:")


def test_openapi_is_a_valid_document_with_schemas_from_the_signatures(served: Served) -> None:
    document = served.get("faas/api/openapi.json", headers=AUTH).json()
    validate(document)
    square = document["paths"]["/faas/functions/square"]["post"]
    schemas = square["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert schemas[0]["properties"] == {"x": {"type": "integer"}}
    assert schemas[0]["required"] == ["x"]
    add = document["paths"]["/faas/functions/add"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert add["oneOf"][0]["required"] == ["a"]
    size = document["paths"]["/faas/functions/size"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in size
    assert set(square["responses"]) >= {"200", "400", "401", "404", "413", "422", "500", "503", "504"}


def test_metrics_are_prometheus_text_with_counts_errors_latency_and_workers(served: Served) -> None:
    for x in range(3):
        served.post("square", json={"x": x}, headers=AUTH)
    served.post("boom", headers=AUTH)
    text = served.get("faas/metrics", headers=AUTH).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("faas_invocations_total", (("function", "square"), ("status", "ok")))] >= 3
    assert samples[("faas_invocation_errors_total", (("function", "boom"),))] >= 1
    assert samples[("faas_invocation_latency_seconds_count", (("function", "square"),))] >= 3
    assert samples[("faas_invocation_latency_seconds_bucket", (("function", "square"), ("le", "+Inf")))] >= 3
    assert samples[("faas_workers", ())] >= 1


# -- starting up, public mode and scale from zero ------------------------------------------------------


def triggers_of(server: Served) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in server.get("faas/api/triggers", headers=AUTH).json()["triggers"]}


def test_schedules_and_file_drops_fire_in_serve_and_survive_a_restart(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "early.txt").write_text("early")
    cells = [
        "%%faas ticker --every 1s\n'tick'",
        f"%%faas shout path --on-file {inbox} --pattern '*.txt'\nopen(path).read().upper()",
    ]
    notebook = write_notebook(tmp_path / "events.ipynb", cells)
    server = start_serve(notebook, tmp_path / "state")
    try:
        wait_for(lambda: len(triggers_of(server)) == 2, 10, "the triggers")
        listed = triggers_of(server)
        assert listed["ticker.schedule"]["every"] == 1.0
        assert listed["shout.file"]["pattern"] == "*.txt"
        wait_for(lambda: len(invocations_of(server, "ticker")) >= 2, 30, "two ticks")
        assert {i["trigger"] for i in invocations_of(server, "ticker")} == {"schedule"}
        (inbox / "new.txt").write_text("new")
        (inbox / "skip.csv").write_text("no")
        wait_for(lambda: len(invocations_of(server, "shout")) == 2, 30, "both text files")
        assert {i["trigger"] for i in invocations_of(server, "shout")} == {"file"}
    finally:
        stop_process_group(server.process)
    # Down: a file lands. Up again: it is handled, and early.txt and new.txt are not handled again.
    (inbox / "while-down.txt").write_text("down")
    again = start_serve(notebook, tmp_path / "state")
    try:
        wait_for(lambda: len(invocations_of(again, "shout")) >= 1, 30, "the file dropped while down")
        wait_for(lambda: len(invocations_of(again, "ticker")) >= 1, 30, "the schedule, again")
        wait_for(lambda: triggers_of(again)["shout.file"]["files_done"] == 3, 30, "three files done in all")
        assert len(invocations_of(again, "shout")) == 1
    finally:
        stop_process_group(again.process)


def test_a_failing_cell_exits_non_zero_naming_the_cell_and_the_error(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "bad.ipynb", ["x = 1", "1 / 0", "y = 2"])
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_faas.cli", "serve", str(notebook), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DASK_FAAS__STATE_DIR": str(tmp_path / "state")},
    )
    assert result.returncode == 1
    # Cell 3 of the file: a markdown cell sits at position 2.
    assert "cell 3 ('1 / 0') failed: ZeroDivisionError: division by zero" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give exactly one notebook"),
        (["missing.ipynb"], "no notebook at"),
        (["here.ipynb", "--allow-host", "a:b:c"], "--allow-host: 'a:b:c' is not NAME or NAME:PORT"),
    ],
)
def test_bad_command_lines_exit_2_with_a_message(tmp_path: Path, arguments: list[str], message: str) -> None:
    write_notebook(tmp_path / "here.ipynb", ["1"])
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_faas.cli", "serve", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_code_cells_skips_tagged_cells_and_skip_lines() -> None:
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("a = 1"),
            nbformat.v4.new_code_cell("b = 2", metadata={"tags": ["faas-skip"]}),
            nbformat.v4.new_code_cell("\n#  faas:  skip\nc = 3"),
            nbformat.v4.new_markdown_cell("text"),
            nbformat.v4.new_code_cell("d = 4"),
        ]
    )
    assert code_cells(notebook) == [(1, "a = 1"), (5, "d = 4")]


def test_public_opens_only_the_function_endpoints_and_warns(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "public.ipynb", ["%%faas square x:int\nx * x"])
    server = start_serve(notebook, tmp_path / "state", "--public")
    try:
        deadline = time.monotonic() + 30
        while not any("WARNING: --public" in line for line in server.output):
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)
        # Public: the function answers without a token; the API still asks for one.
        assert server.post("square", json={"x": 4}).json() == 16
        assert server.get("faas/api/functions").status_code == 401
    finally:
        stop_process_group(server.process)
    server.reader.join(timeout=30)  # the last lines, read to the end of the pipe
    assert server.process.returncode == 0
    assert "stopping" in "".join(server.output)


def test_json_reply_bodies_are_single_json_documents(served: Served) -> None:
    # Guards the contract's shape: a client can always json.loads the body of any answer.
    for response in (
        served.post("square", json={"x": 1}, headers=AUTH),
        served.post("square", json={}, headers=AUTH),
        served.get("faas/api/platform", headers=AUTH),
    ):
        json.loads(response.text)


def test_a_functions_recent_invocations_newest_first(served: Served) -> None:
    for x in (21, 22, 23):
        served.post("square", json={"x": x}, headers=AUTH)
    listed = served.get("faas/api/functions/square/invocations", params={"limit": 2}, headers=AUTH).json()
    records = listed["invocations"]
    assert len(records) == 2
    assert records[0]["submitted"] >= records[1]["submitted"]
    assert {"id", "status", "latency_ms", "cold_start", "worker"} <= set(records[0])
    assert served.get("faas/api/functions/square", headers=AUTH).json()["last_invoked"] == records[0]["submitted"]
    bad = served.get("faas/api/functions/square/invocations", params={"limit": "x"}, headers=AUTH)
    assert bad.status_code == 400
    assert served.get("faas/api/functions/nope/invocations", headers=AUTH).status_code == 404


def test_a_functions_output_is_kept_with_its_record_and_served_by_id(served: Served) -> None:
    assert served.post("chatty", json={"n": 4}, headers=AUTH).json() == 4
    (newest,) = served.get("faas/api/functions/chatty/invocations", params={"limit": 1}, headers=AUTH).json()[
        "invocations"
    ]
    assert newest["output"] == "hello 4\ncareful\n"
    record = served.get(f"faas/api/invocations/{newest['id']}", headers=AUTH).json()
    assert record["id"] == newest["id"] and record["function"] == "chatty" and record["status"] == "ok"
    assert record["output"] == "hello 4\ncareful\n"
    queued = served.post("chatty", params={"async": "true"}, json={"n": 5}, headers=AUTH).json()
    state = wait_for_outcome(served, queued["id"])
    assert state["result"] == 5 and state["output"] == "hello 5\ncareful\n"


# -- readiness: health says "starting" until the notebook has run and its triggers are armed --------------------


def test_health_says_starting_until_the_notebook_has_run_and_its_triggers_are_armed(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    cells = [
        "%%faas square x:int --http\nx * x",
        "%%faas tick --every 1h\n'tick'",
        # The notebook goes on running until the test opens the gate: everything above is deployed by then.
        f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)",
        f"%%faas shout path --on-file {str(tmp_path / 'inbox')!r}\nopen(path).read().upper()",
    ]
    (tmp_path / "inbox").mkdir()
    notebook = write_notebook(tmp_path / "gated.ipynb", cells)
    server = start_serve(notebook, tmp_path / "state", announcement=EARLY_ANNOUNCEMENT)
    try:
        health = server.get("faas/api/health")
        assert (health.status_code, health.json()) == (503, {"status": "starting"})
        assert health.headers["Retry-After"] == "1"
        # A function its notebook already deployed is not served before the rest is set: a readiness probe's
        # 503 and the function's agree.
        refused = server.post("square", json={"x": 3}, headers=AUTH)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "Starting"
        assert refused.headers["Retry-After"] == "1"
        gate.touch()
        wait_for(lambda: server.get("faas/api/health").status_code == 200, 60, "health to say ok")
        # The moment health says ok, both triggers are armed: the schedule has its next tick, the folder a watch.
        armed = {t["function"]: t for t in server.get("faas/api/triggers", headers=AUTH).json()["triggers"]}
        assert set(armed) == {"tick", "shout"}
        assert armed["tick"]["next_due"] is not None
        assert server.get("faas/api/health").json() == {"status": "ok"}
        assert server.post("square", json={"x": 3}, headers=AUTH).json() == 9
    finally:
        stop_process_group(server.process)
