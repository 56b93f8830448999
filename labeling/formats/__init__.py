"""Annotation interchange formats, one module per format, shared by import and export.

Each module has `name`, `media_type`, `extension`, `can_import`, `can_export`, `export(items,
classes, out)` and `import_(data, classes, index)` as described in `labeling/formats/base.py`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name → module; the names are what the API accepts as `format`.
_MODULES = {
    "coco": "labeling.formats.coco",
    "yolo": "labeling.formats.yolo",
    "voc": "labeling.formats.voc",
    "labelstudio": "labeling.formats.labelstudio",
    "cvat": "labeling.formats.cvat",
    "jsonl": "labeling.formats.jsonl",
    "csv": "labeling.formats.csv",
    "conll": "labeling.formats.conll",
}
FORMAT_NAMES = tuple(_MODULES)


def get_format(name: str) -> ModuleType:
    """The converter module of a format name (KeyError for an unknown name)."""
    return importlib.import_module(_MODULES[name])
