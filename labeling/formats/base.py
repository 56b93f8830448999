"""What every format converter shares: the records going out and coming in, name matching, errors.

Converters are pure: no Django, no database, no network. An export reads an iterator of
`ExportItem` once, in order, and writes to a binary stream, holding no more than one item (plus
what the format forces, spooled to a temporary file rather than kept in memory). An import reads
a file (a single document, or a zip archive for multi-file layouts) and returns `ImportedRecord`s
matched to the project's items through an `ItemIndex`, plus one `RecordError` per record it could
not bring in; it never stops at the first bad record.

Regions are in Loupe's one region format (docs/annotations.md), geometry in absolute units of the
item. Classes are given in schema order: COCO category ids are index + 1, YOLO class ids index.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol


@dataclass(frozen=True)
class LabelClass:
    """A class of the schema as formats need it."""

    name: str
    tools: tuple[str, ...] = ()
    keypoints: tuple[str, ...] = ()  # skeleton keypoint names, in order
    edges: tuple[tuple[int, int], ...] = ()  # skeleton edges as keypoint index pairs
    attributes: tuple[str, ...] = ()  # attribute names


@dataclass(frozen=True)
class ItemInfo:
    """An item of the project as converters see it: its name and probed facts."""

    id: int
    name: str  # the item's name in its dataset (file name or bucket key)
    modality: str
    width: int | None = None
    height: int | None = None
    length: int | None = None  # text items: characters
    duration: float | None = None  # seconds
    frames: int | None = None
    text: str | None = None  # text items, when the converter needs the content (CoNLL, spans)


@dataclass
class ExportItem:
    """One item with the regions of its chosen annotation, as an export writes it."""

    item: ItemInfo
    regions: list[dict[str, Any]]
    annotation_id: int | None = None


@dataclass
class ImportedRecord:
    """One item's regions read from a file, matched to a project item."""

    item: ItemInfo
    regions: list[dict[str, Any]]
    where: str  # where the record was in the input, for messages ("images[3]", "labels/a.txt")


@dataclass(frozen=True)
class RecordError:
    where: str  # e.g. "annotations[12]", "line 5", "labels/img_1.txt:3"
    code: str  # stable: malformed, unknown_class, unmatched_item, unsupported, …
    message: str


@dataclass
class ImportResult:
    records: list[ImportedRecord] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)


class ItemIndex:
    """Finds the project item a record names: exact name, else unique base name, else unique stem.

    Exports write base names or full names; tools that re-export them strip folders or change
    extensions (YOLO label files share the image's stem), so matching falls back step by step and
    refuses an ambiguous name rather than guess.
    """

    def __init__(self, items: Iterable[ItemInfo]) -> None:
        self.by_name: dict[str, ItemInfo] = {}
        self._by_base: dict[str, list[ItemInfo]] = {}
        self._by_stem: dict[str, list[ItemInfo]] = {}
        for item in items:
            self.by_name[item.name] = item
            base = posixpath.basename(item.name)
            self._by_base.setdefault(base, []).append(item)
            self._by_stem.setdefault(posixpath.splitext(base)[0], []).append(item)

    def resolve(self, name: str) -> ItemInfo | None:
        found = self.by_name.get(name)
        if found is not None:
            return found
        name = name.replace("\\", "/")  # paths written on Windows
        if name.startswith("./"):
            name = name[2:]
        found = self.by_name.get(name)
        if found is not None:
            return found
        base = posixpath.basename(name)
        candidates = self._by_base.get(base, [])
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            return None
        stem = self._by_stem.get(posixpath.splitext(base)[0], [])
        return stem[0] if len(stem) == 1 else None

    def __len__(self) -> int:
        return len(self.by_name)


class Format(Protocol):
    """A converter module exposes these (import is optional where the issue asks export only)."""

    name: str
    media_type: str  # of what export writes: application/json, application/zip, …
    extension: str  # of the export file: .json, .zip, .jsonl, .csv, .conll, .xml

    def export(self, items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> None: ...

    def import_(self, data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult: ...


def class_names(classes: list[LabelClass]) -> Mapping[str, LabelClass]:
    return {c.name: c for c in classes}


def region_ids() -> Iterator[str]:
    """Ids for regions an import creates: r1, r2, … (unique within one annotation)."""
    n = 0
    while True:
        n += 1
        yield f"r{n}"
