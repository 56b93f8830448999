"""`loupe up` end to end: embedded services, migrations, admin token, web + worker + beat, and a
shutdown that leaves no process behind; then a second start on the same data."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from config.cli import free_port, http_get, up_spawn_embedded, up_wait_ready
from projects.credentials import read_credentials

pytestmark = pytest.mark.slow


def _alive(process: psutil.Process) -> bool:
    # A zombie has finished; whether init has reaped it yet is not ours to wait for.
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _postmaster(home: Path) -> psutil.Process:
    pid = int((home / "postgres" / "postmaster.pid").read_text().splitlines()[0])
    return psutil.Process(pid)


def _up_serve_and_stop(home: Path, log: Path, started: list[psutil.Process], token: str | None) -> str:
    """Start `loupe up`, check it serves the admin's token, SIGTERM it, check nothing is left.

    Every process seen is appended to `started` so the caller can kill survivors if this fails.
    """
    port = free_port()
    supervisor = up_spawn_embedded(home=home, port=port, log=log)
    started.append(psutil.Process(supervisor.pid))
    up_wait_ready(supervisor, port, log=log, timeout=180)

    credentials = home / "credentials"
    assert credentials.stat().st_mode & 0o777 == 0o600
    issued = read_credentials(credentials)
    assert issued["LOUPE_URL"] == f"http://127.0.0.1:{port}"
    if token is not None:
        assert issued["LOUPE_TOKEN"] == token, "a second start must keep the first start's token"
    try:
        status, body = http_get(port, "/api/v1/me", token=issued["LOUPE_TOKEN"])
    except OSError as error:
        raise AssertionError(f"{error}; loupe up said:\n{log.read_text()[-4000:]}") from error
    assert status == 200, body
    assert json.loads(body)["username"] == "admin"

    postmaster = _postmaster(home)
    tree = [*started[-1].children(recursive=True), postmaster, *postmaster.children(recursive=True)]
    started.extend(tree)
    commands = " ".join(" ".join(p.cmdline()) for p in tree)
    for expected in ("redis-server", "gunicorn", "celery -A config worker", "celery -A config beat"):
        assert expected in commands

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0, log.read_text()[-4000:]
    deadline = time.monotonic() + 5  # pg_ctl returns when the socket is gone, backends a moment later
    while (survivors := [p for p in tree if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not survivors, [(p.pid, p.cmdline()) for p in survivors]
    return issued["LOUPE_TOKEN"]


def test_loupe_up_serves_then_stops_everything_and_restarts_on_the_same_data(tmp_path: Path) -> None:
    # mkdtemp under /tmp: pytest's tmp_path can be too deep for unix socket paths.
    home = Path(tempfile.mkdtemp(prefix="lp", dir="/tmp"))
    started: list[psutil.Process] = []
    try:
        token = _up_serve_and_stop(home, tmp_path / "first.log", started, token=None)
        _up_serve_and_stop(home, tmp_path / "second.log", started, token=token)
    finally:
        for process in started:
            if _alive(process):
                with contextlib.suppress(psutil.NoSuchProcess):  # it exited since we looked
                    process.kill()
        shutil.rmtree(home)
