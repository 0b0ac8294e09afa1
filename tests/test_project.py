"""The project as a newcomer meets it: README's commands, and CI running exactly the test command."""

from __future__ import annotations

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
