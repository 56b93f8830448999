"""The credentials file of an embedded instance: ``KEY=VALUE`` lines, mode 0600.

Plain Python with no Django import, so the `loupe` supervisor, the tests and the benchmarks read
it the same way `loupe_bootstrap` writes it.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_credentials(path: Path) -> dict[str, str]:
    """The pairs in the file (LOUPE_URL, LOUPE_TOKEN); empty when the file does not exist."""
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def write_credentials(path: Path, values: dict[str, str]) -> None:
    """Replace the file atomically; it is created 0600 and never readable by others, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"{key}={value}\n" for key, value in values.items())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
