"""Fixtures of the built-in model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def one_opencv_thread() -> Iterator[None]:
    """OpenCV on one thread for a module's tests: its results do not depend on the thread count,
    and the suite's other processes keep the machine's cores."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(threads)
