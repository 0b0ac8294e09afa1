"""Screenshots of the function card and the dashboard, taken in a real JupyterLab with Debian's chromium.

    python docs/make_screenshots.py        # needs jupyterlab and playwright installed; writes docs/*.png

It starts JupyterLab on 127.0.0.1 in a temporary folder, runs a small notebook there, and captures the
card's and the dashboard's outputs. Chromium comes from the system (`apt-get install chromium`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "screenshots"

CELLS = [
    "import dask\n"
    "dask.config.set({'faas.cluster.idle-timeout': '20s', 'faas.cluster.maximum': 2})\n"
    "%load_ext jupyter_faas",
    "%%faas word_count text min_len=1 --memory 128MB\n"
    "words = [w for w in text.split() if len(w) >= min_len]\n"
    "len(words)",
    "import random\n"
    "word_count.map([' '.join('x' * random.randint(1, 9) for _ in range(n)) for n in range(400)])\n"
    "try:\n    word_count(None)\nexcept AttributeError:\n    pass\n"
    "word_count",
    "%faas",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _notebook(path: Path) -> None:
    cells = [
        {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src}
        for i, src in enumerate(CELLS)
    ]
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))


def _wait_for_server(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"JupyterLab did not answer at {url}")


def main() -> int:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="faas-shots-"))
    _notebook(folder / "tour.ipynb")
    port = _free_port()
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={folder}", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1"},
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={TOKEN}", time.monotonic() + 90)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                page.goto(f"{base}/lab/tree/tour.ipynb?token={TOKEN}")
                page.wait_for_selector(".jp-Notebook", timeout=90_000)
                # JupyterLab may ask which kernel to start; the default is this environment's python3.
                with contextlib.suppress(PlaywrightTimeout):
                    page.locator(".jp-Dialog .jp-mod-accept").click(timeout=5_000)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                outputs = page.locator(".jp-OutputArea-output > .faas-view")
                deadline = time.monotonic() + 180
                # Three widget outputs: the card after %%faas, the card again, and the dashboard.
                while outputs.count() < 3 and time.monotonic() < deadline:
                    page.wait_for_timeout(500)
                if outputs.count() < 3:
                    page.screenshot(path=str(folder.parent / "faas-screenshot-failure.png"), full_page=True)
                    raise RuntimeError(
                        f"expected 3 widget outputs, found {outputs.count()}; the page is in "
                        f"{folder.parent / 'faas-screenshot-failure.png'}"
                    )
                # JupyterLab's news toast is not part of the picture.
                page.add_style_tag(content=".Toastify, .jp-toast-container { display: none !important; }")
                # Let the updater bring the figures up to date before the picture.
                page.wait_for_timeout(3000)
                outputs.nth(1).screenshot(path=str(DOCS / "function-card.png"))
                outputs.nth(2).screenshot(path=str(DOCS / "dashboard.png"))
            finally:
                browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lab.kill()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {DOCS / 'function-card.png'} and {DOCS / 'dashboard.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
