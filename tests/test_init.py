"""The public surface is small, pinned, and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import jupyter_faas


def test_every_public_name_is_there() -> None:
    # The names themselves are pinned in tests/test_exported_members.py.
    for name in jupyter_faas.__all__:
        assert getattr(jupyter_faas, name) is not None
    assert set(jupyter_faas.__all__) <= set(dir(jupyter_faas))


def test_error_hierarchy() -> None:
    assert issubclass(jupyter_faas.FaasTimeout, jupyter_faas.FaasError)
    assert issubclass(jupyter_faas.FaasTimeout, TimeoutError)
    assert issubclass(jupyter_faas.FaasMemoryError, MemoryError)
    assert issubclass(jupyter_faas.WorkerLost, jupyter_faas.FaasError)


def test_unknown_attributes_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        jupyter_faas.nothing  # noqa: B018


def test_importing_the_package_does_not_import_distributed() -> None:
    code = "import sys, jupyter_faas; print('distributed' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_loading_the_extension_does_not_read_notebooks() -> None:
    # nbformat (with jsonschema's format checkers) took more than a second of %load_ext; only serve reads notebooks.
    code = (
        "import sys; from IPython.testing.globalipapp import start_ipython; "
        "start_ipython().run_line_magic('load_ext', 'jupyter_faas'); "
        "print(sorted(m for m in ('nbformat', 'jsonschema', 'jupyter_faas.gateway.notebook') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_the_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    assert jupyter_faas.__version__ == version("jupyter-faas")
