"""How long `loupe up` takes to be ready, and how much memory one web worker needs.

startup_cold_s    fresh LOUPE_HOME, everything embedded: initdb, migrations, admin account, web,
                  worker and beat, until /readyz answers 200
startup_warm_s    a later start on the same home (median of 3 with --scale full)
web_peak_rss_mib  the largest RSS one gunicorn worker reaches while serving 200 GET /api/v1/me
                  and 200 GET /readyz (sampled after every request)
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from bench import Figure
from config.cli import free_port, http_get, read_token, up_spawn_embedded, up_wait_ready

BURST_REQUESTS = 200
MIB = 1024 * 1024


class _Up:
    """One `loupe up` child, timed from spawn to ready."""

    def __init__(self, home: Path, log: Path) -> None:
        self.port = free_port()
        began = time.monotonic()
        self.process = up_spawn_embedded(home=home, port=self.port, log=log)
        try:
            up_wait_ready(self.process, self.port, log=log)
        except BaseException:
            self.stop()
            raise
        self.seconds = time.monotonic() - began

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Its children get SIGTERM from the kernel when it dies (PR_SET_PDEATHSIG).
            self.process.kill()
            self.process.wait()
            raise
        if code != 0:
            raise RuntimeError(f"loupe up exited with code {code} on SIGTERM")

    def web_workers(self) -> list[psutil.Process]:
        masters = [
            p for p in psutil.Process(self.process.pid).children() if "gunicorn" in " ".join(p.cmdline())
        ]
        return [worker for master in masters for worker in master.children()]


def _peak_worker_rss_mib(up: _Up, home: Path) -> float:
    token = read_token(home / "credentials")
    workers = up.web_workers()
    if not workers:
        raise RuntimeError("found no gunicorn worker under loupe up")
    peak = 0
    for index in range(2 * BURST_REQUESTS):
        path, auth = ("/api/v1/me", token) if index % 2 == 0 else ("/readyz", None)
        status, body = http_get(up.port, path, token=auth)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        peak = max(peak, *(worker.memory_info().rss for worker in workers))
    return peak / MIB


def run(scale: str) -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="lpb", dir="/tmp"))  # short: unix socket paths are limited
    home = work / "home"
    try:
        cold = _Up(home, work / "cold.log")
        cold.stop()
        warm_seconds: list[float] = []
        rss_mib = 0.0
        for attempt in range(3 if scale == "full" else 1):
            warm = _Up(home, work / f"warm{attempt}.log")
            try:
                warm_seconds.append(warm.seconds)
                rss_mib = max(rss_mib, _peak_worker_rss_mib(warm, home))
            finally:
                warm.stop()
    finally:
        shutil.rmtree(work)
    return [
        Figure("startup_cold_s", cold.seconds, "s"),
        Figure("startup_warm_s", statistics.median(warm_seconds), "s"),
        Figure("web_peak_rss_mib", rss_mib, "MiB"),
    ]
