"""Sphinx configuration for the jupyter-faas docs (MyST pages, lessons rendered by myst-nb without running them)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "jupyter-faas"
author = "jupyter-faas developers"
copyright = "2026, jupyter-faas developers"
# Read, not imported: the docs build needs no working install of the package.
release = re.search(r'__version__ = "([^"]+)"', (ROOT / "jupyter_faas" / "_version.py").read_text()).group(1)
version = release

extensions = ["myst_nb"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# The lessons live in examples/, where JupyterLab and Binder open them; Sphinx reads only its own folder, so each
# build copies them into docs/lessons/ (ignored by git).
LESSONS = DOCS / "lessons"
LESSONS.mkdir(exist_ok=True)
for stale in LESSONS.glob("*.ipynb"):
    if not (ROOT / "examples" / stale.name).exists():
        stale.unlink()
for notebook in sorted((ROOT / "examples").glob("*.ipynb")):
    target = LESSONS / notebook.name
    if not target.exists() or target.read_bytes() != notebook.read_bytes():
        shutil.copyfile(notebook, target)

# The notebooks are stored without outputs and need a cluster and a Jupyter server: show them, never run them.
nb_execution_mode = "off"

myst_enable_extensions = ["colon_fence", "deflist"]
# Pages link to each other's sections as page.md#section, as they do on GitHub.
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = "jupyter-faas"
html_theme_options = {
    "github_url": "https://github.com/jupyter-faas/jupyter-faas",
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
# Most pages stand alone in the top bar; only the lessons have pages under them to list at the side.
html_sidebars = {"*": [], "lessons": ["sidebar-nav-bs"]}
