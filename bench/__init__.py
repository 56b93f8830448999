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
