"""The project as a newcomer meets it: README's commands and links, the docs site, the licence, one version, and CI."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fenced_bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_exactly_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("\n## ", 1)[0]
    commands = _fenced_bash_blocks(first_screen)
    assert len(commands) == 2
    main_job, tests = commands
    assert "pip install -e ." in main_job and "python -m jupyter_faas demo" in main_job
    assert 'pip install -e ".[test]"' in tests and "python -m pytest" in tests


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    test_command = _fenced_bash_blocks(readme.split("\n## ", 1)[0])[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


# -- the front page, the docs site and the one version -------------------------------------------------------

DOCS = ROOT / "docs"


def _relative_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_is_a_short_front_page() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size < 12 * 1024, f"README.md is {size} bytes: the reference belongs in docs/"


def test_readmes_relative_links_all_resolve() -> None:
    links = _relative_links((ROOT / "README.md").read_text())
    assert links
    missing = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not missing, missing


def test_readme_links_every_docs_page() -> None:
    linked = {link.split("#")[0] for link in _relative_links((ROOT / "README.md").read_text())}
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md") if page.name != "index.md"}
    assert pages and pages <= linked, sorted(pages - linked)


def test_every_lesson_is_in_the_docs() -> None:
    lessons = (DOCS / "lessons.md").read_text()
    notebooks = sorted((ROOT / "examples").glob("*.ipynb"))
    assert notebooks
    for notebook in notebooks:
        assert f"\nlessons/{notebook.stem}\n" in lessons, notebook.name
        assert f"(lessons/{notebook.name})" in lessons, notebook.name


def test_ci_and_read_the_docs_build_the_docs_with_warnings_as_errors() -> None:
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert 'pip install -e ".[docs]" && sphinx-build -W --keep-going -b html docs docs/_build/html' in ci_lines
    rtd = (ROOT / ".readthedocs.yaml").read_text()
    assert "configuration: docs/conf.py" in rtd and "fail_on_warning: true" in rtd
    conf = (DOCS / "conf.py").read_text()
    assert 'nb_execution_mode = "off"' in conf
    assert "docs/_build/" in (ROOT / ".gitignore").read_text().split()


def test_license_is_the_bsd_3_clause_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "Copyright (c) 2026, jupyter-faas developers" in text
    assert 'license = "BSD-3-Clause"' in (ROOT / "pyproject.toml").read_text()


def _semver(version: str) -> str:
    """The npm form of a PEP 440 version, as jupyter-releaser writes it: 1.2.0a1 is 1.2.0-alpha.1."""
    match = re.fullmatch(r"(\d+\.\d+\.\d+)(?:(a|b|rc)(\d+))?(?:\.dev(\d+))?", version)
    assert match, f"{version} is not a version npm can carry"
    release, pre, pre_n, dev = match.groups()
    tag = {"a": "alpha", "b": "beta", "rc": "rc"}.get(pre or "")
    return release + (f"-{tag}.{pre_n}" if tag else "") + (f"-dev.{dev}" if dev and not tag else "")


def test_the_version_is_written_once_and_package_json_follows_it() -> None:
    source = (ROOT / "jupyter_faas" / "_version.py").read_text()
    (version,) = re.findall(r'^__version__ = "([^"]+)"$', source, flags=re.M)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and '\npath = "jupyter_faas/_version.py"' in pyproject
    assert not re.search(r"^version = ", pyproject, flags=re.M), "pyproject.toml writes a version of its own"
    assert "__version__ = " not in (ROOT / "jupyter_faas" / "__init__.py").read_text()
    package = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert package["version"] == _semver(version)


def test_semver_form_of_pre_releases() -> None:
    assert _semver("0.1.0") == "0.1.0"
    assert _semver("1.2.0a1") == "1.2.0-alpha.1"
    assert _semver("1.2.0rc2") == "1.2.0-rc.2"
