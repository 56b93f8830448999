"""`loupe pull` as a subcommand of `loupe`: no Django, no server settings; its argument parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loupe_client.cli import split_reference

REPO = Path(__file__).resolve().parent.parent.parent


def test_loupe_pull_runs_without_django_settings(tmp_path: Path) -> None:
    script = (
        "import sys, config.cli\n"
        "code = config.cli.main(['pull', 'Street scenes', '--format', 'coco', '--out', sys.argv[1]])\n"
        "from django.conf import settings\n"
        "print(code, settings.configured, 'rest_framework' in sys.modules)\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "SECRET_KEY", "LOUPE_URL", "LOUPE_TOKEN")
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert done.stderr.strip().endswith("loupe pull: error: no server: pass --server URL or set LOUPE_URL")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Street scenes", ("Street scenes", "latest")),
        ("12@3", ("12", "3")),
        ("12@latest", ("12", "latest")),
        ("team@site@7", ("team@site", "7")),
        ("team@site", ("team@site", "latest")),
    ],
)
def test_a_target_names_a_project_and_optionally_a_release(text: str, expected: tuple[str, str]) -> None:
    assert split_reference(text) == expected
