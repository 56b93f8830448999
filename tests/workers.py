"""Real Celery workers for tests: separate processes on the real broker and the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

from config.celery import app as celery_app

REPO = Path(__file__).resolve().parent.parent


def child_database_url() -> str:
    """The DATABASE_URL of the database the test runner created (test_…), for child processes."""
    db = connection.settings_dict
    auth = quote(db["USER"] or "") + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    host = db["HOST"] or ""
    if host.startswith("/"):
        return f"postgresql://{auth}@/{db['NAME']}?host={quote(host)}&port={db['PORT'] or 5432}"
    return f"postgresql://{auth}@{host}:{db['PORT'] or 5432}/{db['NAME']}"


def purge_queues() -> None:
    """Drop messages left on the shared broker by earlier runs (they name jobs of another database)."""
    with celery_app.connection_for_write() as conn:
        for queue in settings.LOUPE_QUEUES:
            conn.default_channel.queue_purge(queue)


class Worker:
    def __init__(self, process: subprocess.Popen[str], log: list[str]) -> None:
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-task without acknowledging or cleaning up anything."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextmanager
def celery_worker(
    *, beat: bool = False, env: dict[str, str] | None = None, ready_timeout: float = 60
) -> Iterator[Worker]:
    """Start `celery worker` (solo pool: one process, so a SIGKILL kills the task with it)."""
    name = f"test-{uuid.uuid4().hex[:8]}@%h"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        "-Q",
        ",".join(settings.LOUPE_QUEUES),
        "-n",
        name,
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        command += ["-B", "-s", str(Path(tempfile.mkdtemp(prefix="loupe-beat-")) / "schedule")]
    child_env = {
        **os.environ,
        "DATABASE_URL": child_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        **(env or {}),
    }
    process = subprocess.Popen(
        command, cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line)
            if " ready." in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    worker = Worker(process, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while not ready.wait(0.1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("celery worker did not become ready:\n" + "".join(log[-40:]))
        yield worker
    finally:
        worker.stop()
