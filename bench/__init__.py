"""Benchmarks: `python -m bench SCENARIO [--scale small|full]` prints one `name value unit` line
per figure, so results diff and graph as plain text."""

from __future__ import annotations

from typing import NamedTuple


class Figure(NamedTuple):
    name: str
    value: float
    unit: str

    def line(self) -> str:
        return f"{self.name} {self.value:.2f} {self.unit}"


def machine_speed_ms() -> float:
    """Milliseconds a fixed pure-Python loop takes here, best of three: shared machines change
    speed from hour to hour, and this says how fast this one was when the figures were taken."""
    import time

    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best * 1000
