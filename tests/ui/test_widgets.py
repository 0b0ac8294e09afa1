"""The function card, the dashboard, and their text in a terminal, on the real platform."""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import ipywidgets
import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_faas
from jupyter_faas import function
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.ui import widgets as _widgets
from tests.helpers import run_ok, wait_for


def figures(card: _widgets.FunctionCard) -> dict[str, str]:
    """The card's figures as the front end receives them: label -> value, read from the HTML widget's value."""
    return dict(re.findall(r"<th>(.*?)</th><td[^>]*>(.*?)</td>", card.figures.value))


def table_rows(board: _widgets.Dashboard) -> dict[str, list[str]]:
    """The dashboard's function table as sent to the front end: function name -> its cells."""
    body = board.table.value.split("<tbody>", 1)[1]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]
    return {re.sub(r"</?b>", "", row[0]): row[1:] for row in rows}


@function(name="card_flaky")
def flaky(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative {x}")
    return x


def test_the_card_shows_a_functions_figures_after_its_invocations(platform: _platform.Platform) -> None:
    card = flaky.card
    assert isinstance(card, ipywidgets.Widget) and flaky.card is card  # made once per function object
    assert card.summary["invocations"] == 0 and "no invocations yet" in card.histogram.value
    assert [flaky(x) for x in range(5)] == [0, 1, 2, 3, 4]
    for x in (-1, -2):
        with pytest.raises(ValueError, match=f"negative {x}"):
            flaky(x)

    # Nothing refreshes the card here: the updater thread sees the platform's revision change.
    wait_for(lambda: figures(card).get("invocations") == "7", timeout=10, message="the updater to refresh the card")
    stats = flaky.stats()
    shown = figures(card)
    assert shown["errors"] == "2" and shown["cold starts"] == str(stats["cold_starts"])
    assert shown["cost"].startswith("$0.0") and shown["cost"] != "$0" and float(shown["GB-seconds"]) > 0
    assert shown["p50"].endswith("ms") or shown["p50"].endswith(" s")
    assert shown["peak memory"].endswith("max")
    assert "<b>last error</b> ValueError: negative -2" in card.error.value
    assert "card_flaky(x: &#x27;int&#x27;) -&gt; &#x27;int&#x27;" in card.header.value
    assert f"version {flaky.version[:8]}" in card.header.value and "timeout 60s, memory 256MB" in card.header.value
    assert card.histogram.value.startswith("<svg") and card.histogram.value.count("<rect") >= 1
    assert card.histogram.value.count("stroke-dasharray") == 3  # the p50, p95 and p99 marks

    summary = card.summary
    assert (summary["invocations"], summary["errors"]) == (7, 2)
    assert summary["last_error"]["type"] == "ValueError" and summary["last_error"]["message"] == "negative -2"
    assert summary["cost_usd"] > 0 and summary["gb_seconds"] > 0 and summary["peak_memory_max"] > 0
    assert sum(summary["histogram"]) == 7
    assert {k: summary[k] for k in stats} == stats


def test_the_card_shows_the_newest_invocations_output(platform: _platform.Platform) -> None:
    @function(name="card_printer")
    def printer(lines: int) -> int:
        for i in range(lines):
            print("printed", i)
        return lines

    card = printer.card
    assert card.output.value == ""
    printer(3)
    wait_for(lambda: "printed 2" in card.output.value, timeout=10, message="the card to show the output")
    assert "last output · " + printer.invocations[-1].id in card.output.value
    printer(12)
    wait_for(lambda: "printed 11" in card.output.value, timeout=10, message="the card to show the new output")
    assert "printed 3" not in card.output.value and "4 lines above: card_printer.logs()" in card.output.value
    assert "last output (" in card.text() and "    printed 11" in card.text()


@function(name="card_part")
def part(x: int) -> int:
    time.sleep(0.05)
    if x < 0:
        raise ValueError("negative")
    return x


@function(name="card_whole")
def whole(n: int) -> int:
    done = part(n)
    with contextlib.suppress(ValueError):
        part(-1)
    return done + sum(part.map(range(2)))


def test_the_card_shows_the_newest_call_tree_as_a_waterfall_with_its_cost(platform: _platform.Platform) -> None:
    card = whole.card
    assert card.calls.value == ""
    assert whole(5) == 6
    top = whole.invocations[-1]
    wait_for(lambda: top.id in card.calls.value, timeout=10, message="the card to show the call tree")
    html = card.calls.value
    # The caller and its four calls, each a bar: three ok (green), one failed (red), indented under it.
    assert html.count("<tr>") == 5 and "4 below it" in html
    assert html.count("background:#2e7d32") == 4 and html.count("background:#c62828") == 1
    assert html.count('padding-left:12px">card_part') == 4
    rows = card.summary["call_tree"]["calls"]  # type: ignore[index]
    assert [row["function"] for row in rows] == ["card_whole"] + ["card_part"] * 4
    assert [row["status"] for row in rows] == ["ok", "ok", "error", "ok", "ok"]
    # The whole tree's cost: the caller's and its calls', at the platform's prices.
    tree_cost = card.summary["call_tree"]["tree_cost_usd"]  # type: ignore[index]
    assert tree_cost == pytest.approx(sum(row["cost_usd"] for row in rows)) and tree_cost > rows[0]["cost_usd"]
    assert f"calls of {top.id} (4 below it, whole tree" in card.text()
    assert "      card_part  +" in card.text()


def test_a_function_with_a_card_still_travels_by_value(platform: _platform.Platform) -> None:
    assert flaky.card is not None
    copy = cloudpickle.loads(cloudpickle.dumps(flaky))
    assert copy._card is None and copy.version == flaky.version and copy(4) == 4
    assert flaky.card is flaky.card


def test_the_updater_batches_refreshes_under_load(platform: _platform.Platform) -> None:
    @function(name="card_burst")
    def burst(x: int) -> int:
        return x

    card = burst.card
    changes: list[Any] = []
    card.figures.observe(changes.append, names="value")
    began = time.monotonic()
    # 200 invocations from a thread, from futures and from this thread: every path goes through the platform.
    worker = threading.Thread(target=lambda: [burst(x) for x in range(100)])
    worker.start()
    futures = [burst.submit(x) for x in range(50)]
    assert [burst(x) for x in range(50)] == list(range(50))
    assert [f.result(timeout=60) for f in futures] == list(range(50))
    worker.join(timeout=60)
    wait_for(lambda: figures(card).get("invocations") == "200", timeout=10, message="the card to show 200")
    elapsed = time.monotonic() - began
    # At most one refresh a tick, and far fewer than one an invocation.
    assert 1 <= len(changes) <= math.ceil(elapsed / _widgets.REFRESH_INTERVAL) + 2
    assert len(changes) < 50
    updaters = [t for t in threading.enumerate() if t.name == "faas-widgets"]
    assert len(updaters) == 1 and updaters[0].daemon


def test_the_dashboard_shows_workers_functions_and_cost(platform: _platform.Platform) -> None:
    @function(name="dash_echo")
    def echo(x: int) -> int:
        return x

    assert echo.map(range(10)) == list(range(10))
    board = jupyter_faas.dashboard()
    assert isinstance(board, ipywidgets.Widget) and jupyter_faas.dashboard() is board
    wait_for(lambda: table_rows(board).get("dash_echo", [""])[0] == "10", timeout=10, message="the echo row")

    s = board.summary
    assert s["started"] and 1 <= s["workers"] <= s["maximum"] == platform.maximum
    assert f"workers <b>{s['workers']} / {s['maximum']}</b>" in board.header.value
    assert f'<a href="{platform.dashboard_link}" target="_blank">Dask dashboard</a>' in board.header.value
    assert f"idle-timeout {platform.idle_timeout:.0f} s" in board.header.value

    rows = table_rows(board)
    assert set(rows) == set(platform.function_names()) == {f["name"] for f in s["functions"]}
    assert rows["dash_echo"][:2] == ["10", "0"]

    cost = s["cost"]
    assert cost["invocations"] >= 10 and cost["serverless_usd"] > 0 and cost["always_on_usd"] > 0
    assert 0 <= cost["idle_fraction"] <= 1 and cost["break_even_per_hour"] > 0
    assert re.search(
        r"pay-per-use \$[\d.,]+ vs always-on \$[\d.,]+ over .* · idle [\d.]+% · break-even at [\d.,]+ invocations/hour",
        board.cost.value,
    )
    assert board.chart.value.startswith("<svg") and '<path d="M' in board.chart.value


def test_the_dashboard_follows_scale_up_the_countdown_and_scale_to_zero(
    own_platform: Callable[..., _platform.Platform],
) -> None:
    p = own_platform({"faas.cluster.idle-timeout": "2s"})
    board = jupyter_faas.dashboard()

    @function(name="dash_once")
    def once() -> int:
        return 1

    assert once() == 1
    wait_for(lambda: "scales to zero in" in board.header.value, timeout=10, message="the countdown")
    wait_for(lambda: "<circle" in board.chart.value, timeout=60, message="the scale-to-zero mark")
    assert "l4,7h-8z" in board.chart.value  # the scale-up mark
    assert [n for _, n in board.summary["scale_events"]][-1] == 0 == p.workers
    wait_for(lambda: "at zero workers" in board.header.value, timeout=10, message="zero workers in the header")
    assert table_rows(board)["dash_once"][0] == "1"


def test_the_updater_survives_a_platform_shutdown(own_platform: Callable[..., _platform.Platform]) -> None:
    @function(name="card_survivor")
    def survivor(x: int) -> int:
        return x

    first = own_platform({})
    card = survivor.card
    assert survivor(1) == 1
    wait_for(lambda: figures(card).get("invocations") == "1", timeout=10, message="the first call on the card")
    first.shutdown()
    # A new platform has no records: the card follows it rather than showing the old one's.
    wait_for(lambda: figures(card).get("invocations") == "0", timeout=10, message="the card to follow the new one")
    own_platform({})
    assert survivor(2) == 2
    assert survivor(3) == 3
    wait_for(lambda: figures(card).get("invocations") == "2", timeout=10, message="the card after the restart")
    assert all(t.is_alive() for t in threading.enumerate() if t.name == "faas-widgets")


def test_a_terminal_shows_the_card_and_the_dashboard_as_text(
    shell: InteractiveShell, platform: _platform.Platform, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not _widgets.in_kernel() and not _widgets.use_widgets()  # a terminal shell is not a kernel
    run_ok(shell, "%%faas text_square x\nx * x")
    assert "text_square(x) is a serverless function" in capsys.readouterr().out
    assert run_ok(shell, "[text_square(i) for i in range(3)]") == [0, 1, 4]
    run_ok(shell, "text_square.map([3])")
    capsys.readouterr()

    run_ok(shell, "text_square")
    shown = capsys.readouterr().out
    fn = shell.user_ns["text_square"]
    assert f"text_square(x) · version {fn.version[:8]} · timeout 60s, memory 256MB" in shown
    assert "invocations 4 · errors 0 · cold starts" in shown
    assert re.search(r"latency p50 [\d.]+ m?s · p95 [\d.]+ m?s · p99 [\d.]+ m?s .*\|.+\|", shown)
    assert re.search(r"GB-seconds [\d.]+ · cost \$0\.0[\d]+ · peak memory [\d.]+ \w+ p50, [\d.]+ \w+ max", shown)
    assert "no errors" in shown
    assert fn._card is None  # no widget was made for the terminal
    assert repr(fn).startswith("<faas function text_square(x) version ")

    run_ok(shell, "%faas")
    shown = capsys.readouterr().out
    assert shown.startswith(repr(platform))
    assert f"workers {platform.workers} / {platform.maximum} · idle-timeout" in shown
    assert f"Dask dashboard {platform.dashboard_link}" in shown
    assert re.search(r"cost: pay-per-use \$[\d.]+ vs always-on \$[\d.]+ over .* · idle [\d.]+%", shown)
    assert re.search(r"\n  function +invocations +errors", shown)
    assert re.search(r"\n  text_square +4 +0 ", shown)


def test_the_text_forms_match_the_widgets_figures(platform: _platform.Platform) -> None:
    assert flaky(1) == 1
    card = flaky.card
    text = _widgets.function_text(flaky)
    assert text == card.text()
    assert f"invocations {card.summary['invocations']:,} · errors {card.summary['errors']:,}" in text
    assert flaky._repr_mimebundle_() == {"text/plain": text}
    board = jupyter_faas.dashboard()
    bundle = board._repr_mimebundle_()
    assert set(bundle) == {"text/plain"} and bundle["text/plain"].startswith(repr(platform))  # no widget view here

    def flaky_row(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("  card_flaky "))

    assert flaky_row(board.text()) == flaky_row(_widgets.dashboard_text())
