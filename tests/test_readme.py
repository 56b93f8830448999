"""The README's two set-up commands are what CI runs: they cannot drift apart silently."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks if block.strip().startswith("python3 -m venv")]


def test_the_readme_has_exactly_two_set_up_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    install_and_start, install_and_test = commands
    assert "\n" not in install_and_start and install_and_start.endswith("loupe up")
    assert "\n" not in install_and_test and install_and_test.endswith("pytest")


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    install_and_test = readme_commands()[1]
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines
