"""Models trained in Loupe on a release (labeling.training), run as predictors by the pre-label job.

A trained version's files live in object storage under `models/…` and are listed on the version
(`ModelVersion.artifacts`: name → key, size, SHA-256). Nothing in them is ever executed:

- `model.json` — what the model is: recipe, feature kind, labels (the class of each output
  index), and for spaCy the precision of each label on the validation items;
- `model.npz` — a linear classifier as plain arrays (standardization mean and scale,
  coefficients, intercepts), read with `allow_pickle=False`;
- `pipeline.tar.gz` — a spaCy pipeline directory (config, weights as msgpack, vocabulary),
  unpacked member by member (regular files and directories only, no absolute paths, no `..`) into
  a temporary directory that spaCy loads and that is deleted right after.

Every file is checked against the SHA-256 recorded when it was written before it is read, so a
file changed in the store (by accident or on purpose) stops the load instead of running it.

Plain code with no Django: the caller passes the artifacts and a function reading a key's bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from labeling.inference.base import ModelInput, ModelOutput, ModelUnavailable, Predictor, region_id
from labeling.inference.features import FEATURE_KINDS, image_vector, text_features
from storage.media.base import ProbeError

ARTIFACT_FORMAT = 1
# The pyproject extra a recipe's model needs at prediction time (None: the core install).
RECIPE_EXTRAS: dict[str, str | None] = {
    "text-logreg": "embeddings",
    "image-logreg": None,
    "spacy-ner": "text",
}
_MAX_PIPELINE_FILES = 1000
_MAX_PIPELINE_BYTES = 1024**3

Read = Callable[[str], bytes]


def missing_extra(recipe: str) -> str | None:
    """The extra a model of `recipe` needs and this installation lacks (None: it can run here)."""
    from labeling.inference import builtin

    extra = RECIPE_EXTRAS.get(recipe)
    if extra is None:
        return None
    modules = builtin.EXTRA_MODULES.get(extra, ())
    return None if all(importlib.util.find_spec(module) is not None for module in modules) else extra


def file_entry(key: str, data: bytes) -> dict[str, Any]:
    """How an artifact is listed on its version: where it is and what its bytes must hash to."""
    return {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def verified_read(read: Read, artifacts: Mapping[str, Any], name: str) -> bytes:
    """The bytes of artifact `name`, once they match their recorded SHA-256; else ModelUnavailable."""
    entry = artifacts.get(name)
    if not isinstance(entry, Mapping) or not entry.get("key") or not entry.get("sha256"):
        raise ModelUnavailable(f"the trained model lists no {name} among its files")
    try:
        data = read(str(entry["key"]))
    except (OSError, KeyError) as exc:
        raise ModelUnavailable(f"the trained model's {name} cannot be read from the store: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ModelUnavailable(
            f"the trained model's {name} in the store is not the file training wrote (its SHA-256 "
            "differs): it will not be loaded; train the model again"
        )
    return data


# --- Linear classifiers (text-logreg, image-logreg) ----------------------------------------------


@dataclass(frozen=True)
class LinearModel:
    """A multinomial logistic regression on standardized features, as plain arrays.

    `coef` has one row per label, or one row for two labels (scikit-learn's binary form: the
    probability of the second label is the logistic of the one score).
    """

    labels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """One row per example: the probability of each label, in `labels` order."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        scores = x @ self.coef.T + self.intercept
        if scores.shape[1] == 1:
            scores = np.hstack([np.zeros_like(scores), scores])
        scores = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))

    def to_npz(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept)
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes, labels: Sequence[str]) -> LinearModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            model = cls(
                labels=tuple(labels),
                mean=np.asarray(arrays["mean"], dtype=np.float64),
                scale=np.asarray(arrays["scale"], dtype=np.float64),
                coef=np.asarray(arrays["coef"], dtype=np.float64),
                intercept=np.asarray(arrays["intercept"], dtype=np.float64),
            )
        rows = model.coef.shape[0]
        if rows != len(model.labels) and not (rows == 1 and len(model.labels) == 2):
            raise ModelUnavailable(f"the model has {rows} rows of weights for {len(model.labels)} labels")
        return model


class LinearClassifier:
    """One `classification` region per item: the most probable label, scored by its probability,
    which is also the prediction's score (so the uncertainty-first queue serves the items the
    model is least sure of first)."""

    def __init__(self, model: LinearModel, features: str, *, batch_size: int = 32) -> None:
        if features not in FEATURE_KINDS:
            raise ModelUnavailable(f"the model reads features of an unknown kind {features!r}")
        self.model = model
        self.features = features
        self.modality = FEATURE_KINDS[features]
        self.batch_size = batch_size

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        outputs: list[ModelOutput] = [ModelOutput() for _ in batch]
        rows: list[int] = []
        vectors: list[np.ndarray] = []
        texts: list[str] = []
        for position, item in enumerate(batch):
            if item.modality != self.modality:
                outputs[position] = ModelOutput(
                    error=f"This model reads {self.modality} items, not {item.modality} items."
                )
                continue
            try:
                if self.modality == "text":
                    texts.append(item.text())
                else:
                    vectors.append(image_vector(item.read(), self.features))
            except ProbeError as exc:  # not an image, or a decompression bomb
                outputs[position] = ModelOutput(error=exc.message)
                continue
            rows.append(position)
        if not rows:
            return outputs
        features = (
            text_features(texts, batch_size=self.batch_size) if self.modality == "text" else np.stack(vectors)
        )
        for position, probabilities in zip(rows, self.model.probabilities(features), strict=True):
            outputs[position] = classified(self.model.labels, probabilities)
        return outputs


def classified(labels: Sequence[str], probabilities: np.ndarray) -> ModelOutput:
    best = int(np.argmax(probabilities))
    score = round(float(probabilities[best]), 4)
    region = {
        "id": region_id(0),
        "type": "classification",
        "label": labels[best],
        "attributes": {},
        "geometry": {},
        "score": score,
    }
    return ModelOutput(regions=[region], score=score)


# --- spaCy pipelines (spacy-ner) -----------------------------------------------------------------


def pack_directory(directory: Path) -> bytes:
    """A directory as a gzipped tar of its regular files, with sorted relative names."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.is_symlink():
                archive.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return buffer.getvalue()


def unpack_directory(data: bytes, target: Path) -> None:
    """Unpack a tar made by `pack_directory` into `target`, refusing anything but regular files
    and directories inside it (links, devices, absolute names, `..`), too many files or bytes."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = archive.getmembers()
        if len(members) > _MAX_PIPELINE_FILES:
            raise ModelUnavailable("the spaCy pipeline archive has too many files")
        total = 0
        for member in members:
            name = PurePosixPath(member.name)
            if not (member.isfile() or member.isdir()) or name.is_absolute() or ".." in name.parts:
                raise ModelUnavailable(f"the spaCy pipeline archive holds a refused entry {member.name!r}")
            total += member.size
        if total > _MAX_PIPELINE_BYTES:
            raise ModelUnavailable("the spaCy pipeline archive is too large")
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: the standard library checks again
            archive.extractall(target, filter="data")
        else:  # pragma: no cover
            archive.extractall(target)  # noqa: S202  (every member was checked above)


class SpacyTagger:
    """`span` regions from a spaCy pipeline fine-tuned on the release's spans.

    spaCy's greedy NER gives no probability per entity, so each span's score is the precision its
    label reached on the validation items (how often a span of that label was right); the
    prediction's score is the lowest of its spans'. A text with no span has no score.
    """

    def __init__(self, pipeline: bytes, meta: Mapping[str, Any], *, batch_size: int = 64) -> None:
        try:
            import spacy
        except ImportError as exc:
            from labeling.inference.builtin.text import INSTALL_HINT

            raise ModelUnavailable(f"spaCy is not installed: {INSTALL_HINT}.") from exc
        with tempfile.TemporaryDirectory(prefix="loupe-model-") as scratch:
            unpack_directory(pipeline, Path(scratch))
            try:
                self._nlp = spacy.load(Path(scratch))
            except (OSError, ValueError) as exc:
                raise ModelUnavailable(f"spaCy could not load the trained pipeline: {exc}") from exc
        self.labels = frozenset(str(label) for label in meta.get("labels", ()))
        precision = meta.get("label_precision") or {}
        self.precision = {str(k): float(v) for k, v in precision.items()}
        self.batch_size = batch_size
        self.max_chunk_chars = 100_000

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        from labeling.inference.builtin.text import split_text

        outputs: list[ModelOutput] = []
        pieces: list[tuple[str, tuple[int, int]]] = []
        for index, item in enumerate(batch):
            if item.modality != "text":
                outputs.append(ModelOutput(error=f"This model reads text items, not {item.modality} items."))
                continue
            outputs.append(ModelOutput())
            text = item.text()
            if text:
                pieces.extend(
                    (piece, (index, offset)) for offset, piece in split_text(text, self.max_chunk_chars)
                )
        for doc, (index, offset) in self._nlp.pipe(pieces, as_tuples=True, batch_size=self.batch_size):
            regions = outputs[index].regions
            for entity in doc.ents:
                if entity.label_ not in self.labels:
                    continue  # a label of the pipeline it was fine-tuned from
                regions.append(
                    {
                        "id": region_id(len(regions)),
                        "type": "span",
                        "label": entity.label_,
                        "attributes": {},
                        "geometry": {
                            "start": offset + entity.start_char,
                            "end": offset + entity.end_char,
                            "text": entity.text,
                        },
                        "score": round(self.precision.get(entity.label_, self.precision.get("", 0.5)), 4),
                    }
                )
        for output in outputs:
            if output.regions:
                output.score = min(float(r["score"]) for r in output.regions)
        return outputs


# --- Loading -------------------------------------------------------------------------------------


def read_meta(artifacts: Mapping[str, Any], read: Read) -> dict[str, Any]:
    try:
        meta = json.loads(verified_read(read, artifacts, "model.json"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelUnavailable(f"the trained model's model.json is not JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise ModelUnavailable("the trained model's files are of a format this Loupe does not read")
    return meta


def load(artifacts: Mapping[str, Any], read: Read, *, batch_size: int = 32) -> Predictor:
    """A ready predictor for a trained version's files (ModelUnavailable when it cannot run here)."""
    meta = read_meta(artifacts, read)
    recipe = str(meta.get("recipe", ""))
    extra = missing_extra(recipe)
    if extra is not None:
        raise ModelUnavailable(
            f"a model trained with {recipe} needs the {extra!r} extra: install 'loupe[{extra}]'"
        )
    if meta.get("kind") == "linear":
        model = LinearModel.from_npz(verified_read(read, artifacts, "model.npz"), meta["labels"])
        return LinearClassifier(model, str(meta.get("features")), batch_size=batch_size)
    if meta.get("kind") == "spacy":
        return SpacyTagger(verified_read(read, artifacts, "pipeline.tar.gz"), meta, batch_size=batch_size)
    raise ModelUnavailable(f"models of the kind {meta.get('kind')!r} cannot run here")
