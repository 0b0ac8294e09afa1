"""The JupyterLab extension: built into the package and enabled, its Jest unit tests, and Galata in Chromium."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_faas

ROOT = Path(__file__).resolve().parents[1]
LABEXTENSION = ROOT / "labextension"
BUILT = ROOT / "jupyter_faas" / "labextension" / "package.json"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
BIN = Path(sys.executable).parent


def _run(command: list[str], cwd: Path, timeout: float, **extra: str) -> subprocess.CompletedProcess:
    # jlpm and jupyter come from this environment, whatever PATH the test runner was started with.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "CI": "1", **extra}
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"  # Playwright's own download is refused here; chromium is Debian's
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _needs_build() -> None:
    if not BUILT.is_file():
        pytest.skip("the labextension was not built (installed with HATCH_BUILD_NO_HOOKS=true, for Python-only work)")


def test_the_labextension_version_follows_the_python_package() -> None:
    package = json.loads((LABEXTENSION / "package.json").read_text())
    assert package["version"] == importlib.metadata.version("jupyter-faas") == jupyter_faas.__version__


def test_the_lockfiles_are_committed() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "labextension/yarn.lock" in tracked.split()
    assert "labextension/ui-tests/yarn.lock" in tracked.split()


def test_the_built_labextension_is_installed_and_enabled() -> None:
    _needs_build()
    built = json.loads(BUILT.read_text())
    assert built["version"] == jupyter_faas.__version__
    assert built["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")
    listed = _run([str(BIN / "jupyter"), "labextension", "list"], ROOT, timeout=120)
    line = next(line for line in (listed.stdout + listed.stderr).splitlines() if "jupyter-faas" in line)
    assert "enabled" in line and "OK" in line, line


@pytest.mark.timeout(600)
def test_jest_unit_tests_pass() -> None:
    _needs_build()
    result = _run([str(BIN / "jlpm"), "test", "--ci"], LABEXTENSION, timeout=540)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Tests:" in result.stderr and "failed" not in result.stderr.split("Tests:")[1].splitlines()[0]


@pytest.mark.timeout(900)
def test_galata_ui_tests_pass_in_debian_chromium() -> None:
    _needs_build()
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("the UI tests need Debian's chromium: apt-get install chromium (or set CHROMIUM_PATH)")
    ui_tests = LABEXTENSION / "ui-tests"
    install = _run([str(BIN / "jlpm"), "install"], ui_tests, timeout=600)
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # A port of the run's own: a JupyterLab already on Galata's 8888 must not stop the tests.
    result = _run([str(BIN / "jlpm"), "playwright", "test"], ui_tests, timeout=780, FAAS_UI_PORT=str(port))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " 5 passed" in result.stdout
    assert (ui_tests / "screenshots" / "sidebar.png").is_file()
