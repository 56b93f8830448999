"""The recipes a release can be trained with: their parameters, and the fitting itself.

| recipe | items | learns from | model |
|---|---|---|---|
| `text-logreg` | text | one `classification` label per item | MiniLM embeddings + logistic regression |
| `image-logreg` | image | one `classification` label per item | pixel/HOG features + logistic regression |
| `spacy-ner` | text | `span` regions | en_core_web_sm's entity recognizer, fine-tuned |

Plain code with no Django: features and documents in, a model's files and its metrics out. The
job (labeling.training.jobs) reads the release, stores what comes out and registers the version.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labeling.inference.features import IMAGE_FEATURES, dimensions
from labeling.inference.trained import ARTIFACT_FORMAT, RECIPE_EXTRAS, LinearModel, pack_directory


class ParamError(ValueError):
    """A recipe's parameter is not valid: `name` says which."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class TrainingFailed(Exception):
    """The data cannot train this recipe (one class only, no usable item…): the message says why."""


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    modality: str  # what the items must be
    region_type: str  # what the model learns from and predicts
    task_type: str  # as model versions say it
    extra: str | None  # the pyproject extra it needs (None: the core install)
    defaults: dict[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def _number(params: dict[str, Any], name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = params[name]
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if type(value) not in kinds or not (math.isfinite(value) and low <= value <= high):
        what = "a whole number" if integer else "a number"
        raise ParamError(name, f"{name} must be {what} from {low:g} to {high:g}.")
    return value if integer else float(value)


def _check_linear(params: dict[str, Any]) -> dict[str, Any]:
    clean = {
        "C": _number(params, "C", 1e-6, 1e6),
        "max_iter": _number(params, "max_iter", 10, 100_000, integer=True),
        "folds": _number(params, "folds", 0, 20, integer=True),
        "class_weight": params["class_weight"],
        "features": params["features"],
    }
    if clean["folds"] == 1:
        raise ParamError("folds", "folds is 0 (no cross-validation) or from 2 to 20.")
    if clean["class_weight"] not in (None, "balanced"):
        raise ParamError("class_weight", 'class_weight is null or "balanced".')
    return clean


def _check_image_linear(params: dict[str, Any]) -> dict[str, Any]:
    if params["features"] not in IMAGE_FEATURES:
        raise ParamError("features", f"features is one of {', '.join(IMAGE_FEATURES)}.")
    return _check_linear(params)


def _check_text_linear(params: dict[str, Any]) -> dict[str, Any]:
    if params["features"] != "minilm":
        raise ParamError("features", 'Text items have one kind of features: "minilm".')
    return _check_linear(params)


def _check_spacy(params: dict[str, Any]) -> dict[str, Any]:
    clean = {
        "base": params["base"],
        "epochs": _number(params, "epochs", 1, 200, integer=True),
        "patience": _number(params, "patience", 0, 200, integer=True),
        "batch_size": _number(params, "batch_size", 1, 1024, integer=True),
        "dropout": _number(params, "dropout", 0.0, 0.9),
        "validation_fraction": _number(params, "validation_fraction", 0.0, 0.5),
        "seed": _number(params, "seed", 0, 2**31 - 1, integer=True),
    }
    if clean["base"] not in ("en_core_web_sm", "blank"):
        raise ParamError("base", 'base is "en_core_web_sm" (fine-tune its entity recognizer) or "blank".')
    return clean


_LINEAR = {"C": 1.0, "max_iter": 2000, "folds": 5, "class_weight": None}

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="text-logreg",
            title="Text classification: MiniLM sentence embeddings + logistic regression",
            modality="text",
            region_type="classification",
            task_type="classification",
            extra=RECIPE_EXTRAS["text-logreg"],
            defaults={**_LINEAR, "features": "minilm"},
            check=_check_text_linear,
        ),
        Recipe(
            name="image-logreg",
            title="Image classification: pixel and HOG features + logistic regression",
            modality="image",
            region_type="classification",
            task_type="classification",
            extra=RECIPE_EXTRAS["image-logreg"],
            defaults={**_LINEAR, "C": 0.1, "features": "pixels+hog"},
            check=_check_image_linear,
        ),
        Recipe(
            name="spacy-ner",
            title="Entity spans: spaCy's entity recognizer fine-tuned on the release's spans",
            modality="text",
            region_type="span",
            task_type="ner",
            extra=RECIPE_EXTRAS["spacy-ner"],
            defaults={
                "base": "en_core_web_sm",
                "epochs": 30,
                "patience": 5,
                "batch_size": 16,
                "dropout": 0.2,
                "validation_fraction": 0.2,
                "seed": 0,
            },
            check=_check_spacy,
        ),
    )
}


def recipe_params(recipe: Recipe, params: dict[str, Any]) -> dict[str, Any]:
    """The recipe's own parameters with its defaults filled in; ParamError names a bad one."""
    unknown = sorted(set(params) - set(recipe.defaults))
    if unknown:
        raise ParamError(unknown[0], f"{recipe.name} has no parameter {', '.join(unknown)}.")
    merged = {**recipe.defaults, **params}
    return recipe.check(merged) if recipe.check is not None else merged


# --- Metrics -------------------------------------------------------------------------------------


def classification_metrics(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1 and each class's precision, recall, F1 and support."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = sorted(set(truth) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    return {
        "items": len(truth),
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(
            float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)), 4
        ),
        "per_class": {
            label: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
    }


Span = tuple[int, int, str]


def span_metrics(truth: Sequence[set[Span]], predicted: Sequence[set[Span]]) -> dict[str, Any]:
    """Exact-match span precision, recall and F1 (start, end and label all equal), over every
    span of every document and per label."""
    counts: dict[str, Counter[str]] = {}
    for gold, found in zip(truth, predicted, strict=True):
        for span in found:
            counts.setdefault(span[2], Counter())["tp" if span in gold else "fp"] += 1
        for span in gold - found:
            counts.setdefault(span[2], Counter())["fn"] += 1

    def scores(c: Counter[str]) -> dict[str, Any]:
        p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return {
            "precision": round(p, 4),
            "recall": round(r, 4),
            "f1": round(f, 4),
            "support": c["tp"] + c["fn"],
        }

    total: Counter[str] = sum(counts.values(), Counter())
    return {
        "items": len(truth),
        **scores(total),
        "per_label": {label: scores(c) for label, c in sorted(counts.items())},
    }


# --- Linear classifiers --------------------------------------------------------------------------


@dataclass
class Fitted:
    """What a fit leaves: the model's files (name → bytes), its labels and its metrics."""

    files: dict[str, bytes]
    labels: list[str]
    metrics: dict[str, Any]
    seconds: float


def fit_linear(
    features: np.ndarray, labels: Sequence[str], params: dict[str, Any], *, recipe: str, feature_kind: str
) -> Fitted:
    """Standardized features, multinomial logistic regression (scikit-learn, lbfgs).

    Validation: `folds`-fold stratified cross-validation over the same items (each item predicted
    by a model that did not see it); the model kept is then fitted on every item."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    sizes = Counter(labels)
    if len(sizes) < 2:
        raise TrainingFailed(
            f"A classifier needs items of at least two classes; the training items have {len(sizes)}."
        )
    y = np.asarray(labels)
    x = np.asarray(features, dtype=np.float64)

    def fit(x_fit: np.ndarray, y_fit: np.ndarray) -> tuple[StandardScaler, LogisticRegression]:
        scaler = StandardScaler().fit(x_fit)
        classifier = LogisticRegression(
            C=params["C"], max_iter=params["max_iter"], class_weight=params["class_weight"], random_state=0
        )
        return scaler, classifier.fit(scaler.transform(x_fit), y_fit)

    folds = min(params["folds"], min(sizes.values()))
    validation: dict[str, Any]
    if folds >= 2:
        out_of_fold = np.empty(len(y), dtype=y.dtype)
        for train, held in StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(x, y):
            scaler, classifier = fit(x[train], y[train])
            out_of_fold[held] = classifier.predict(scaler.transform(x[held]))
        validation = {
            "method": f"{folds}-fold stratified cross-validation",
            **classification_metrics(y.tolist(), out_of_fold.tolist()),
        }
    else:
        validation = {
            "method": None,
            "reason": "cross-validation needs two items of each class"
            if params["folds"]
            else "cross-validation was not asked for (folds = 0)",
        }
    scaler, classifier = fit(x, y)
    model = LinearModel(
        labels=tuple(str(c) for c in classifier.classes_),
        mean=np.asarray(scaler.mean_, dtype=np.float64),
        scale=np.asarray(scaler.scale_, dtype=np.float64),
        coef=np.asarray(classifier.coef_, dtype=np.float64),
        intercept=np.asarray(classifier.intercept_, dtype=np.float64),
    )
    training = classification_metrics(y.tolist(), classifier.predict(scaler.transform(x)).tolist())
    meta = {
        "format": ARTIFACT_FORMAT,
        "recipe": recipe,
        "kind": "linear",
        "features": feature_kind,
        "dimensions": dimensions(feature_kind),
        "labels": list(model.labels),
        "params": params,
    }
    return Fitted(
        files={"model.json": _json_bytes(meta), "model.npz": model.to_npz()},
        labels=list(model.labels),
        metrics={
            "training": training,
            "validation": validation,
            "iterations": int(np.max(classifier.n_iter_)),
        },
        seconds=time.perf_counter() - started,
    )


# --- spaCy entity recognizer ---------------------------------------------------------------------


@dataclass(frozen=True)
class SpanDoc:
    item: int
    text: str
    spans: list[Span]


def held_out(text: str, fraction: float) -> bool:
    """Whether a document is among the validation documents: a stable hash of its text (as release
    splits hash an item's content), so a retraining validates on the same documents whatever
    their ids, in this release or a later one, and two copies of a text are never split between
    training and validation."""
    digest = hashlib.sha256(f"loupe-validation:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def fit_spacy(
    docs: Sequence[SpanDoc], params: dict[str, Any], *, recipe: str, max_seconds: float | None = None
) -> Fitted:
    """Fine-tune a spaCy entity recognizer on the documents' spans.

    `base` en_core_web_sm: the small English pipeline's recognizer (its embeddings and weights
    already know English names, places and organisations) learns the release's labels; blank: a
    new recognizer from nothing. Spans are snapped to token boundaries (`expand`) and overlapping
    ones dropped (a recognizer tags each token once), both counted. A `validation_fraction` of the
    documents is held back: after each epoch the spans found on them are scored, the best epoch's
    weights are kept and training stops after `patience` epochs without progress, or before an
    epoch that would end past `max_seconds` (the time the caller can give the fit).
    """
    started = time.perf_counter()
    try:
        import spacy
        from spacy.training import Example
        from spacy.util import minibatch
    except ImportError as exc:
        from labeling.inference.builtin.text import INSTALL_HINT

        raise TrainingFailed(f"spaCy is not installed: {INSTALL_HINT}.") from exc
    labels = sorted({label for doc in docs for _, _, label in doc.spans})
    if not labels:
        raise TrainingFailed("The training items have no span to learn from.")
    if params["base"] == "en_core_web_sm":
        from labeling.inference.builtin.text import _SPACY_UNUSED, spacy_model_directory, verified_spacy_model

        nlp = spacy.load(verified_spacy_model(spacy_model_directory()), exclude=list(_SPACY_UNUSED))
    else:
        nlp = spacy.blank("en")
        nlp.add_pipe("ner")
    ner: Any = nlp.get_pipe("ner")
    for label in labels:
        ner.add_label(label)
    # thinc draws dropout masks from numpy's (and random's) global generators: fixed, a training
    # of the same release with the same parameters gives the same model.
    spacy.util.fix_random_seed(params["seed"])
    fixed = Counter[str]()

    def example(doc: SpanDoc) -> Any:
        made = nlp.make_doc(doc.text)
        taken: list[Any] = []
        for start, end, label in sorted(doc.spans, key=lambda s: (s[0], -(s[1] - s[0]))):
            span = made.char_span(start, end, label=label, alignment_mode="expand")
            if span is None or not span.text.strip():
                fixed["spans_unaligned"] += 1
                continue
            if (span.start_char, span.end_char) != (start, end):
                fixed["spans_realigned"] += 1
            if taken and span.start < taken[-1].end:
                fixed["spans_overlapping"] += 1
                continue
            taken.append(span)
        return Example.from_dict(made, {"entities": [(s.start_char, s.end_char, s.label_) for s in taken]})

    validation_docs = [d for d in docs if held_out(d.text, params["validation_fraction"])]
    training_docs = [d for d in docs if not held_out(d.text, params["validation_fraction"])]
    if not training_docs:
        raise TrainingFailed("Every item was held back for validation: lower validation_fraction.")
    examples = [example(d) for d in training_docs]
    if params["base"] == "en_core_web_sm":
        optimizer = nlp.resume_training()
    else:
        optimizer = nlp.initialize(lambda: examples)

    def found(pool: Sequence[SpanDoc]) -> list[set[Span]]:
        return [
            {(e.start_char, e.end_char, e.label_) for e in doc.ents if e.label_ in labels}
            for doc in nlp.pipe([d.text for d in pool], batch_size=64)
        ]

    # Scored against the spans as annotated (not as snapped to tokens): what users will see.
    def truth(pool: Sequence[SpanDoc]) -> list[set[Span]]:
        return [set(d.spans) for d in pool]

    shuffler = random.Random(params["seed"])  # noqa: S311  (an order of examples, not a secret)
    best_f1, best_epoch, best_weights, epochs_run = -1.0, 0, b"", 0
    losses_by_epoch: list[float] = []
    stopped = "epochs"
    for epoch in range(1, params["epochs"] + 1):
        elapsed = time.perf_counter() - started
        if max_seconds is not None and epochs_run and elapsed + elapsed / epochs_run > max_seconds:
            stopped = "time"
            break
        shuffler.shuffle(examples)
        losses: dict[str, float] = {}
        for batch in minibatch(examples, size=params["batch_size"]):
            nlp.update(batch, drop=params["dropout"], sgd=optimizer, losses=losses)
        epochs_run = epoch
        losses_by_epoch.append(round(float(losses.get("ner", 0.0)), 4))
        if not validation_docs:
            continue
        f1 = span_metrics(truth(validation_docs), found(validation_docs))["f1"]
        if f1 >= best_f1:  # a tie: the later epoch, which has seen the data more often
            best_f1, best_epoch, best_weights = f1, epoch, ner.to_bytes()
        elif params["patience"] and epoch - best_epoch >= params["patience"]:
            stopped = "patience"
            break
    if best_weights:
        ner.from_bytes(best_weights)
    training = span_metrics(truth(training_docs), found(training_docs))
    validation: dict[str, Any]
    if validation_docs:
        validation = {
            "method": f"{len(validation_docs)} items held back ({params['validation_fraction']:g})",
            "best_epoch": best_epoch,
            **span_metrics(truth(validation_docs), found(validation_docs)),
        }
        source = validation
    else:
        validation = {
            "method": None,
            "reason": "no item was held back (validation_fraction = 0 or few items)",
        }
        source = training
    # A span's score at prediction time: how often spans of its label were right here.
    precision = {label: scores["precision"] for label, scores in source["per_label"].items()}
    precision[""] = source["precision"]
    nlp.meta.update(
        {"name": "loupe_trained", "version": "1.0.0", "description": f"Trained by Loupe ({recipe})"}
    )
    nlp.meta.pop("performance", None)
    with tempfile.TemporaryDirectory(prefix="loupe-train-") as scratch:
        nlp.to_disk(Path(scratch) / "pipeline")
        pipeline = pack_directory(Path(scratch) / "pipeline")
    meta = {
        "format": ARTIFACT_FORMAT,
        "recipe": recipe,
        "kind": "spacy",
        "features": f"spaCy {spacy.__version__} {params['base']}",
        "labels": labels,
        "label_precision": precision,
        "params": params,
    }
    return Fitted(
        files={"model.json": _json_bytes(meta), "pipeline.tar.gz": pipeline},
        labels=labels,
        metrics={
            "training": training,
            "validation": validation,
            "epochs": epochs_run,
            "stopped_by": stopped,
            "losses": losses_by_epoch,
            "spans": dict(fixed),
        },
        seconds=time.perf_counter() - started,
    )


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False).encode()
