"""A real notebook run by nbclient in a real kernel: the card, a result, the dashboard and map progress as widgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import outputs, run_cells

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.mark.timeout(300)
def test_a_notebook_shows_the_card_the_result_the_dashboard_and_progress(tmp_path: Path) -> None:
    config = {"faas.cluster.idle-timeout": "3s", "faas.state-dir": str(tmp_path / "state")}
    sources = [
        f"import dask\n_ = dask.config.set({config!r})",
        "%load_ext jupyter_faas",
        "%%faas square x\nx * x",
        "square(7)",
        # The card in the %%faas cell's output is kept current by the updater thread, in the kernel too.
        "import time\n"
        "deadline = time.monotonic() + 30\n"
        "while square.card.summary['invocations'] < 1 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "square.card.summary['invocations'], '<svg' in square.card.histogram.value",
        "%faas",
        "from jupyter_faas.client import function as _function\n_function.PROGRESS_AFTER = 0.2",
        "%%faas nap x --concurrency 2\nimport time\ntime.sleep(0.25)\nx",
        "nap.map(range(6))",
    ]
    notebook = run_cells(sources, tmp_path)
    cells = notebook.cells

    for cell in cells:
        assert not outputs(cell, "error"), cell.source
        assert not [o for o in outputs(cell, "stream") if o.name == "stderr"], cell.source

    # %%faas shows the function's card, not the terminal's line.
    card = outputs(cells[2], "display_data")
    assert len(card) == 1 and WIDGET_VIEW in card[0].data
    assert "square(x) · version" in card[0].data["text/plain"]
    assert not outputs(cells[2], "stream")

    assert outputs(cells[3], "execute_result")[0].data["text/plain"] == "49"
    assert outputs(cells[4], "execute_result")[0].data["text/plain"] == "(1, True)"

    board = outputs(cells[5], "display_data")
    assert len(board) == 1 and WIDGET_VIEW in board[0].data
    text = board[0].data["text/plain"]
    assert text.startswith("<jupyter_faas platform: embedded cluster") and "\n  square " in text

    # A map that outlasts the threshold shows a progress bar, which ends full and in the success style.
    assert outputs(cells[8], "execute_result")[0].data["text/plain"] == "[0, 1, 2, 3, 4, 5]"
    shown = [o.data[WIDGET_VIEW]["model_id"] for o in outputs(cells[8], "display_data") if WIDGET_VIEW in o.data]
    assert len(shown) == 1
    state = notebook.metadata["widgets"][WIDGET_STATE]["state"]
    progress = state[shown[0]]
    assert progress["model_name"] == "HBoxModel"
    bar, label = (state[ref.removeprefix("IPY_MODEL_")]["state"] for ref in progress["state"]["children"])
    assert (bar["value"], bar["max"], bar["bar_style"]) == (6, 6, "success")
    assert label["value"].startswith("6/6 done · 0 errors · ")
