"""Ultralytics YOLO label files (https://docs.ultralytics.com/datasets/) in a zip archive.

Export writes:

- ``data.yaml``: ``train``/``val`` = ``images``, ``nc``, ``names`` as a mapping class index → name
  (the schema's order; names double-quoted), and ``kpt_shape: [k, 3]`` when a class has a skeleton
  (Ultralytics has one shape per dataset: the first such class's). It is written by hand, not
  with PyYAML (a development dependency only), in a fixed form that any YAML parser reads.
- ``labels/<stem>.txt`` per item (also empty: a background image), where ``<stem>`` is the item's
  name without extension, folders kept (``a/b.jpg`` → ``labels/a/b.txt``), as Ultralytics finds
  labels for ``images/a/b.jpg``. When two names share a stem the later one uses its full name
  (``labels/a/b.png.txt``). Coordinates are normalized by the item's width/height with 6
  decimals; regions of an item without a size are skipped.
- ``classify.csv``: ``name,class`` rows (``name,class,score`` for a scored region), one per
  ``classification`` region: label files cannot hold image-level classes, and Ultralytics'
  classify layout is folders of images, which an annotation export does not have.

Layouts (`export_layout`; `export` is ``auto``), a line per region:

- ``detect``: ``cls cx cy w h`` from ``bbox`` — and the axis-aligned bounds of ``rotated_bbox``,
  ``polygon`` and ``mask``.
- ``segment``: ``cls x1 y1 x2 y2 …`` from the outer ring of ``polygon`` (holes are dropped) — and
  the corners of ``bbox`` and ``rotated_bbox``.
- ``obb``: ``cls x1 y1 … x4 y4`` from the corners of ``rotated_bbox`` (and ``bbox``), clockwise as
  shown from the corner at (-w/2, -h/2) of the unrotated box.
- ``pose``: ``cls cx cy w h x1 y1 v1 …`` from ``keypoints``; the box is the bounds of the labelled
  points (v > 0; of all points when none is), v written as 0/1/2, coordinates kept for v = 0.
- ``classify``: only ``classify.csv``.
- ``auto``: each region in its own type's layout: ``bbox`` detect, ``polygon`` segment,
  ``rotated_bbox`` obb, ``keypoints`` pose, ``classification`` classify.csv (a label file may mix
  detect and segment lines, which Ultralytics accepts; mixing obb or pose lines with them is
  only readable back by Loupe).

A region with a ``score`` gets a trailing confidence column, as Ultralytics' ``save_conf`` writes.
Skipped (counted in what `export_layout` returns): ``polyline``, ``mask`` outside ``detect``,
types a layout has no line for, and every non-image type.

Import reads a zip archive: label files are the ``*.txt`` members under a ``labels`` folder (else
every ``*.txt`` outside the archive's root, e.g. CVAT's ``obj_train_data/``), matched to items by
their path below ``labels/`` without extension (``labels/train/a.txt`` → ``train/a``, then ``a``
and its stem through the `ItemIndex`). Class ids are looked up in ``data.yaml`` ``names`` (or a
``classes.txt``/``obj.names`` list) and then by name among the classes; without names, ids index
the classes. ``data.yaml`` is read with a small parser of the YAML that dataset files use (block
and flow mappings and sequences, quoted and plain scalars; other keys' values are skipped), since
PyYAML is not a runtime dependency. A line's layout is told by its column count n:

- the class has a skeleton of k points and n = 5 + dk or 6 + dk (d = ``kpt_shape[1]``, else 3):
  pose → a ``keypoints`` region (the box is not imported; visibilities that are confidences,
  not 0/1/2, become 2 when ≥ 0.5 else 0; with d = 2, v is 0 for a point at (0, 0) else 2);
- n = 5 or 6: detect → ``bbox``;
- n = 9 or 10: ``rotated_bbox`` if the class allows rotated boxes and not polygons, a ``polygon`` if
  the reverse, else a ``rotated_bbox`` when the four corners form a rectangle and a ``polygon``
  when not;
- otherwise n odd ≥ 7: segment → ``polygon``; n even ≥ 8: segment with a confidence.

The last column of 6, 10, 6 + dk or even-length segment lines is the confidence → ``score``.
Coordinates outside [0, 1] are refused as ``invalid_geometry`` (as Ultralytics refuses them), except
the corners of oriented boxes and points with v = 0; the schema's bounds check does the rest.
``classify.csv`` rows become ``classification`` regions. A region of a type its class's tools do
not allow is refused as ``unsupported``. YOLO has no attributes: none are written, and imported
regions have none (the schema's defaults fill them). Items without a width/height cannot be
denormalized: their label files are refused with ``unsupported``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import posixpath
import re
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from pycocotools import mask as mask_utils

from labeling.formats.base import (
    ExportItem,
    ImportResult,
    ItemIndex,
    ItemInfo,
    LabelClass,
    RecordError,
    class_names,
)
from labeling.formats.coco import (
    Archive,
    Collector,
    Invalid,
    Member,
    StemIndex,
    UniquePaths,
    check_rle,
    find,
    open_archive,
    read_member,
    region,
    require_tool,
    seekable,
    sniff,
    zip_entry,
)

name = "yolo"
media_type = "application/zip"
extension = ".zip"
can_import = True
can_export = True

LAYOUTS = ("auto", "detect", "segment", "obb", "pose", "classify")

logger = logging.getLogger(__name__)

# The layout each region type is written in by "auto".
_AUTO = {
    "bbox": "detect",
    "polygon": "segment",
    "rotated_bbox": "obb",
    "keypoints": "pose",
    "classification": "classify",
}
# The region types each layout writes (the first is its own type; the others are converted).
_WRITES = {
    "detect": ("bbox", "rotated_bbox", "polygon", "mask"),
    "segment": ("polygon", "bbox", "rotated_bbox"),
    "obb": ("rotated_bbox", "bbox"),
    "pose": ("keypoints",),
    "classify": ("classification",),
}


# ---------------------------------------------------------------------------------------------
# Export


def export(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> None:
    skipped = export_layout(items, classes, out, "auto")
    if skipped:
        logger.info("YOLO export skipped regions: %s", dict(skipped))


def export_layout(
    items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes], layout: str
) -> Counter[str]:
    """Writes the dataset zip in one of LAYOUTS; returns the regions skipped, by type."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown YOLO layout {layout!r}; one of {', '.join(LAYOUTS)}")
    ids = {c.name: i for i, c in enumerate(classes)}
    skipped: Counter[str] = Counter()
    paths = UniquePaths()
    rows = 0
    with (
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        tempfile.TemporaryFile() as spool,
    ):
        archive.writestr(zip_entry("data.yaml"), data_yaml(classes))
        table = io.TextIOWrapper(spool, encoding="utf-8", newline="")
        writer = csv.writer(table, lineterminator="\n")
        for export_item in items:
            item = export_item.item
            lines = []
            for source in export_item.regions:
                kind = str(source.get("type"))
                label = source.get("label")
                target = _AUTO.get(kind) if layout == "auto" else layout
                if label not in ids:
                    skipped["unknown_label"] += 1
                    continue
                if target is None or kind not in _WRITES[target]:
                    skipped[kind] += 1
                    continue
                if target == "classify":
                    score = [_number(source["score"])] if "score" in source else []
                    writer.writerow([item.name, label, *score])
                    rows += 1
                    continue
                try:
                    line = _line(source, target, item, ids[label])
                except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, Invalid):
                    line = None
                if line is None:
                    skipped[kind] += 1
                    continue
                lines.append(line)
            if layout != "classify":
                archive.writestr(zip_entry(f"labels/{paths.claim(item.name)}.txt"), "".join(lines))
        if rows:
            table.flush()
            spool.seek(0)
            with archive.open(zip_entry("classify.csv"), "w") as member:
                shutil.copyfileobj(spool, member, 1 << 16)
        table.detach()
    return skipped


def _number(value: float) -> str:
    text = f"{value:.6f}"
    return "0.000000" if text == "-0.000000" else text


def _corners(geometry: dict[str, Any]) -> list[tuple[float, float]]:
    """A rotated box's corners, clockwise as shown from the one at (-w/2, -h/2)."""
    cx, cy, w, h = geometry["cx"], geometry["cy"], geometry["width"], geometry["height"]
    angle = math.radians(geometry["angle"])
    cos, sin = math.cos(angle), math.sin(angle)
    local = ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in local]


def _box_corners(geometry: dict[str, Any]) -> list[tuple[float, float]]:
    x, y, w, h = geometry["x"], geometry["y"], geometry["width"], geometry["height"]
    return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def _bounds(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def _line(source: dict[str, Any], layout: str, item: ItemInfo, class_id: int) -> str | None:
    """One label line (with its newline) for a region in a layout; None when it cannot be written."""
    width, height = item.width, item.height
    if not width or not height:
        return None
    kind = source["type"]
    geometry = source.get("geometry") or {}

    def point(x: float, y: float) -> list[str]:
        return [_number(x / width), _number(y / height)]

    def box(x: float, y: float, w: float, h: float) -> list[str]:
        return [*point(x + w / 2, y + h / 2), _number(w / width), _number(h / height)]

    if kind == "bbox":
        outline = _box_corners(geometry)
    elif kind == "rotated_bbox":
        outline = _corners(geometry)
    elif kind == "polygon":
        outline = [(p[0], p[1]) for p in geometry["points"]]
    elif kind == "mask":
        rle = geometry["rle"]
        check_rle(rle["size"], rle["counts"])
        x, y, w, h = (
            float(v) for v in mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})
        )
        outline = _box_corners({"x": x, "y": y, "width": w, "height": h})
    else:
        outline = []

    if layout == "detect":
        values = box(*_bounds(outline))
    elif layout in ("segment", "obb"):
        values = [v for x, y in outline for v in point(x, y)]
    else:  # pose
        points = geometry["points"]
        labelled = [(p[0], p[1]) for p in points if p[2] > 0] or [(p[0], p[1]) for p in points]
        values = box(*_bounds(labelled))
        for x, y, v in points:
            values += [*point(x, y), str(int(v))]
    if "score" in source:
        values.append(_number(source["score"]))
    return " ".join([str(class_id), *values]) + "\n"


def _yaml_string(text: str) -> str:
    """A double-quoted YAML scalar that PyYAML and the parser below read back as `text`."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code <= 0x7E or (
            code >= 0xA0
            and code not in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF)
            and not 0xD800 <= code < 0xE000
        ):
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def data_yaml(classes: list[LabelClass]) -> str:
    lines = [
        "# Ultralytics YOLO dataset exported by Loupe: put the images under images/ with the same",
        "# relative paths as their label files under labels/.",
        "train: images",
        "val: images",
        f"nc: {len(classes)}",
        "names:",
    ]
    lines += [f"  {i}: {_yaml_string(c.name)}" for i, c in enumerate(classes)]
    skeletons = [c for c in classes if c.keypoints]
    if skeletons:
        lines.append(f"kpt_shape: [{len(skeletons[0].keypoints)}, 3]")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# data.yaml: the YAML subset dataset files use


_INT = re.compile(r"[-+]?\d+")
_KEYS = ("names", "kpt_shape", "nc")  # the keys whose values are parsed; others are skipped


def _strip_comment(line: str) -> str:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'" and (i == 0 or line[i - 1] in " \t[{,:"):
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}


class _Flow:
    """A recursive-descent reader of YAML flow values and quoted scalars."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def peek(self) -> str:
        while self.i < len(self.text) and self.text[self.i] in " \t\r\n":
            self.i += 1
        return self.text[self.i] if self.i < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"expected {char!r} at column {self.i + 1}")
        self.i += 1

    def value(self, stops: str) -> Any:
        char = self.peek()
        if char == "[":
            self.i += 1
            items = []
            while self.peek() != "]":
                items.append(self.value(",]"))
                if self.peek() == ",":
                    self.i += 1
                elif self.peek() != "]":
                    raise ValueError(f"expected ',' or ']' at column {self.i + 1}")
            self.i += 1
            return items
        if char == "{":
            self.i += 1
            mapping = {}
            while self.peek() != "}":
                key = self.value(":,}")
                self.expect(":")
                mapping[key] = self.value(",}")
                if self.peek() == ",":
                    self.i += 1
                elif self.peek() != "}":
                    raise ValueError(f"expected ',' or '}}' at column {self.i + 1}")
            self.i += 1
            return mapping
        if char == '"':
            return self.double_quoted()
        if char == "'":
            return self.single_quoted()
        start = self.i
        while self.i < len(self.text):
            here = self.text[self.i]
            if here in stops and (here != ":" or self.text[self.i + 1 : self.i + 2] in ("", " ", "\t")):
                break
            self.i += 1
        return plain(self.text[start : self.i])

    def double_quoted(self) -> str:
        self.i += 1
        out: list[str] = []
        while True:
            if self.i >= len(self.text):
                raise ValueError("unterminated double-quoted string")
            char = self.text[self.i]
            self.i += 1
            if char == '"':
                return "".join(out)
            if char != "\\":
                out.append(char)
                continue
            escape = self.text[self.i : self.i + 1]
            self.i += 1
            if escape in _ESCAPES:
                out.append(_ESCAPES[escape])
            elif escape in ("x", "u", "U"):
                digits = {"x": 2, "u": 4, "U": 8}[escape]
                code = self.text[self.i : self.i + digits]
                if len(code) != digits or not all(c in "0123456789abcdefABCDEF" for c in code):
                    raise ValueError(f"invalid escape \\{escape}{code}")
                out.append(chr(int(code, 16)))
                self.i += digits
            else:
                raise ValueError(f"invalid escape \\{escape}")

    def single_quoted(self) -> str:
        self.i += 1
        out = []
        while True:
            end = self.text.find("'", self.i)
            if end < 0:
                raise ValueError("unterminated single-quoted string")
            out.append(self.text[self.i : end])
            if self.text[end + 1 : end + 2] == "'":
                out.append("'")
                self.i = end + 2
                continue
            self.i = end + 1
            return "".join(out)


def plain(text: str) -> Any:
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    return text


def _scalar(text: str) -> Any:
    flow = _Flow(text)
    value = flow.value("")
    if flow.peek():
        raise ValueError(f"unexpected text after a value: {text!r}")
    return value


def _balanced(text: str) -> bool:
    depth = 0
    quote = ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\" and quote == '"':
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        i += 1
    return depth <= 0 and not quote


def _key(line: str) -> tuple[Any, str]:
    """Splits "key: rest" (a plain or quoted key)."""
    flow = _Flow(line)
    key = flow.value(":")
    if flow.peek() != ":":
        raise ValueError(f"expected 'key: value', not {line.strip()!r}")
    return key, line[flow.i + 1 :]


def parse_data_yaml(text: str) -> dict[str, Any]:
    """The top-level keys of a dataset YAML file; values only of `_KEYS` (others are None)."""
    lines = text.splitlines()
    result: dict[str, Any] = {}
    i = 0
    while i < len(lines):
        line = _strip_comment(lines[i]).rstrip()
        i += 1
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        if line[0] in " \t":
            raise ValueError(f"line {i}: unexpected indentation")
        key, rest = _key(line)
        rest = rest.strip()
        wanted = key in _KEYS
        if rest.startswith(("|", ">")) or not rest:
            block = []
            while i < len(lines):
                raw = _strip_comment(lines[i]).rstrip()
                if raw.strip() and raw[0] not in " \t" and not (not rest and raw.startswith("- ")):
                    break
                if raw.strip():
                    block.append(raw.strip())
                i += 1
            result[key] = _block(block) if wanted and not rest else None
            continue
        if rest.startswith(("[", "{")):
            while not _balanced(rest) and i < len(lines):
                rest += " " + _strip_comment(lines[i]).strip()
                i += 1
        result[key] = _scalar(rest) if wanted else None
    return result


def _block(lines: list[str]) -> Any:
    if not lines:
        return None
    if all(line == "-" or line.startswith("- ") for line in lines):
        return [_scalar(line[1:].strip()) for line in lines]
    mapping = {}
    for line in lines:
        key, rest = _key(line)
        if not rest.strip():
            raise ValueError(f"nested value under {key!r} is not supported")
        mapping[key] = _scalar(rest.strip())
    return mapping


def _names(value: Any) -> dict[int, str]:
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise ValueError("names must be a list or a mapping of index to name")
    names = {}
    for key, class_name in value.items():
        index = key if isinstance(key, int) else int(key) if isinstance(key, str) and key.isdigit() else None
        if index is None or class_name is None:
            raise ValueError(f"names: {key!r}: {class_name!r} is not index: name")
        names[index] = str(class_name)
    return names


# ---------------------------------------------------------------------------------------------
# Import


@dataclass
class _Context:
    classes: list[LabelClass]
    by_name: dict[str, LabelClass]
    names: dict[int, str] | None = None
    kpt_shape: tuple[int, int] | None = None
    errors: list[RecordError] = field(default_factory=list)

    def label_class(self, class_id: int) -> LabelClass:
        if self.names is not None:
            class_name = self.names.get(class_id)
            if class_name is None:
                raise Invalid("unknown_class", f"class id {class_id} is not in the dataset's names")
            found = self.by_name.get(class_name)
            if found is None:
                raise Invalid("unknown_class", f"class {class_name!r} is not a class of the schema")
            return found
        if not 0 <= class_id < len(self.classes):
            raise Invalid("unknown_class", f"class id {class_id} is not a class index of the schema")
        return self.classes[class_id]

    def dims(self, label_class: LabelClass) -> int:
        if self.kpt_shape is not None and self.kpt_shape[0] == len(label_class.keypoints):
            return self.kpt_shape[1]
        return 3


def import_(data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult:
    context = _Context(classes, dict(class_names(classes)))
    stream = seekable(data)
    if not sniff(stream).startswith(b"PK"):
        context.errors.append(RecordError("file", "malformed", "a YOLO dataset is imported as a zip archive"))
        return ImportResult(errors=context.errors)
    archive = open_archive(stream, context.errors)
    if archive is None:
        return ImportResult(errors=context.errors)
    _read_names(archive, context)
    collector = Collector()
    label_files = _label_files(archive.members)
    items = StemIndex(index, (path for _, path in label_files))
    csv_files = sorted(
        (m for m in archive.members if posixpath.basename(m.name) == "classify.csv"), key=_depth
    )
    if not label_files and not csv_files:
        context.errors.append(RecordError("archive", "malformed", "the archive has no label files"))
    for member, path in label_files:
        raw = read_member(archive, member, context.errors)
        if raw is not None:
            _read_labels(member.name, path, raw, items, context, collector)
    for member in csv_files[:1]:
        raw = read_member(archive, member, context.errors)
        if raw is not None:
            _read_classify(member.name, raw, index, context, collector)
    return ImportResult(records=collector.records(), errors=context.errors)


def _depth(member: Member) -> tuple[int, str]:
    return member.name.count("/"), member.name


def _read_names(archive: Archive, context: _Context) -> None:
    yamls = sorted(
        (m for m in archive.members if m.name.lower().endswith((".yaml", ".yml"))),
        key=lambda m: (posixpath.basename(m.name) != "data.yaml", *_depth(m)),
    )
    if yamls:
        member = yamls[0]
        raw = read_member(archive, member, context.errors)
        if raw is None:
            return
        try:
            parsed = parse_data_yaml(raw.decode("utf-8-sig"))
            if parsed.get("names") is not None:
                context.names = _names(parsed["names"])
            shape = parsed.get("kpt_shape")
            if shape is not None:
                if (
                    not isinstance(shape, list)
                    or len(shape) != 2
                    or not all(isinstance(v, int) for v in shape)
                    or shape[1] not in (2, 3)
                ):
                    raise ValueError(f"kpt_shape must be [keypoints, 2 or 3], not {shape!r}")
                context.kpt_shape = (shape[0], shape[1])
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            context.errors.append(
                RecordError(member.name, "malformed", f"cannot read the dataset YAML: {exc}")
            )
        return
    lists = sorted(
        (m for m in archive.members if posixpath.basename(m.name) in ("classes.txt", "obj.names")), key=_depth
    )
    if lists:
        raw = read_member(archive, lists[0], context.errors)
        if raw is None:
            return
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            context.errors.append(RecordError(lists[0].name, "malformed", f"not UTF-8 text: {exc}"))
            return
        context.names = dict(enumerate(line.strip() for line in text.splitlines() if line.strip()))


_NOT_LABELS = ("classes.txt", "obj.names", "train.txt", "val.txt", "test.txt", "readme.txt")


def _label_files(members: list[Member]) -> list[tuple[Member, str]]:
    """The label files and each one's item path (below labels/, without .txt)."""
    found = []
    for member in members:
        parts = member.name.split("/")
        if member.name.lower().endswith(".txt") and "labels" in parts[:-1]:
            below = parts[parts.index("labels") + 1 :]
            found.append((member, "/".join(below)[: -len(".txt")]))
    if found:
        return found
    return [
        (member, member.name[: -len(".txt")])
        for member in members
        if member.name.lower().endswith(".txt")
        and "/" in member.name
        and posixpath.basename(member.name).lower() not in _NOT_LABELS
    ]


def _read_labels(
    where: str, path: str, raw: bytes, items: StemIndex, context: _Context, collector: Collector
) -> None:
    item = items.resolve(path)
    if item is None:
        context.errors.append(
            RecordError(where, "unmatched_item", f"no item of the project matches {path!r}")
        )
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        context.errors.append(RecordError(where, "malformed", f"not UTF-8 text: {exc}"))
        return
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if lines and (not item.width or not item.height):
        context.errors.append(
            RecordError(where, "unsupported", f"item {item.name!r} has no width/height to denormalize by")
        )
        return
    regions = collector.item(item, where)
    for number, tokens in lines:
        try:
            regions.append(_region(tokens, item, context))
        except Invalid as exc:
            context.errors.append(RecordError(f"{where}:{number}", exc.code, exc.message))


def _values(tokens: list[str]) -> list[float]:
    values = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise Invalid("malformed", f"{token!r} is not a number") from None
        if not math.isfinite(value):
            raise Invalid("malformed", f"{token!r} is not a finite number")
        values.append(value)
    return values


def _pixels(value: float) -> float:
    return round(value, 9) + 0.0


def _normalized(values: list[float]) -> None:
    if any(not -1e-6 <= v <= 1 + 1e-6 for v in values):
        raise Invalid("invalid_geometry", "coordinates must be normalized to [0, 1] by the image size")


def _score(value: float) -> float:
    if not 0 <= value <= 1:
        raise Invalid("malformed", f"confidence {value} is not in [0, 1]")
    return value


def _region(tokens: list[str], item: ItemInfo, context: _Context) -> dict[str, Any]:
    if not _INT.fullmatch(tokens[0]):
        raise Invalid("malformed", f"the class id {tokens[0]!r} is not an integer")
    label_class = context.label_class(int(tokens[0]))
    values = _values(tokens[1:])
    n = len(tokens)
    width, height = float(item.width or 0), float(item.height or 0)
    k = len(label_class.keypoints)
    dims = context.dims(label_class)
    score: float | None = None

    def make(kind: str, geometry: dict[str, Any]) -> dict[str, Any]:
        require_tool(label_class, kind)
        return region(kind, label_class.name, {}, geometry, score)

    def points(flat: list[float]) -> list[tuple[float, float]]:
        return [(flat[i] * width, flat[i + 1] * height) for i in range(0, len(flat), 2)]

    if k and n in (5 + dims * k, 6 + dims * k):
        if n == 6 + dims * k:
            score = _score(values.pop())
        box, flat = values[:4], values[4:]
        _normalized(box)
        keypoints = []
        for i in range(0, len(flat), dims):
            x, y = flat[i], flat[i + 1]
            v = _visibility(flat[i + 2]) if dims == 3 else (0 if x == 0 and y == 0 else 2)
            if v:
                _normalized([x, y])
            keypoints.append([_pixels(x * width), _pixels(y * height), v])
        return make("keypoints", {"points": keypoints})
    if n in (5, 6):
        if n == 6:
            score = _score(values.pop())
        _normalized(values)
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            raise Invalid("invalid_geometry", f"box width and height must be > 0, not {w} x {h}")
        return make(
            "bbox",
            {
                "x": _pixels((cx - w / 2) * width),
                "y": _pixels((cy - h / 2) * height),
                "width": _pixels(w * width),
                "height": _pixels(h * height),
            },
        )
    if n < 7:
        raise Invalid("malformed", f"{n} columns: not a detect, segment, OBB or pose line")
    if n % 2 == 0:
        score = _score(values.pop())
    if n in (9, 10):
        corners = points(values)
        if _is_obb(label_class, corners):
            return make("rotated_bbox", _rotated(corners))
    _normalized(values)
    return make("polygon", {"points": [[_pixels(x), _pixels(y)] for x, y in points(values)], "holes": []})


def _visibility(value: float) -> int:
    if value in (0, 1, 2):
        return int(value)
    if 0 < value < 1:  # a keypoint confidence (Ultralytics predictions)
        return 2 if value >= 0.5 else 0
    raise Invalid("invalid_geometry", f"keypoint visibility {value} is not 0, 1, 2 or a confidence")


def _is_obb(label_class: LabelClass, corners: list[tuple[float, float]]) -> bool:
    tools = set(label_class.tools)
    if "rotated_bbox" in tools and "polygon" not in tools:
        return True
    if "polygon" in tools and "rotated_bbox" not in tools:
        return False
    (x1, y1), (x2, y2), (x3, y3), (x4, y4) = corners
    a = (x2 - x1, y2 - y1)
    b = (x3 - x2, y3 - y2)
    c = (x4 - x3, y4 - y3)
    d = (x1 - x4, y1 - y4)
    la, lb = math.hypot(*a), math.hypot(*b)
    if la == 0 or lb == 0:
        return False
    tolerance = 1e-3 * (la + lb) + 1e-5
    parallelogram = (
        math.hypot(a[0] + c[0], a[1] + c[1]) <= tolerance
        and math.hypot(b[0] + d[0], b[1] + d[1]) <= tolerance
    )
    return parallelogram and abs(a[0] * b[0] + a[1] * b[1]) <= 1e-3 * la * lb


def _rotated(corners: list[tuple[float, float]]) -> dict[str, Any]:
    (x1, y1), (x2, y2), (x3, y3), (x4, y4) = corners
    width = (math.hypot(x2 - x1, y2 - y1) + math.hypot(x3 - x4, y3 - y4)) / 2
    height = (math.hypot(x3 - x2, y3 - y2) + math.hypot(x4 - x1, y4 - y1)) / 2
    if width <= 0 or height <= 0:
        raise Invalid("invalid_geometry", "the oriented box has no area")
    # the direction of the width sides, plus the height sides turned by -90°: long sides weigh most
    angle = math.degrees(
        math.atan2(
            (y2 - y1) + (y3 - y4) - (x3 - x2) - (x4 - x1), (x2 - x1) + (x3 - x4) + (y3 - y2) + (y4 - y1)
        )
    )
    if angle <= -180:
        angle += 360
    return {
        "cx": _pixels((x1 + x2 + x3 + x4) / 4),
        "cy": _pixels((y1 + y2 + y3 + y4) / 4),
        "width": _pixels(width),
        "height": _pixels(height),
        "angle": _pixels(angle),
    }


def _read_classify(where: str, raw: bytes, index: ItemIndex, context: _Context, collector: Collector) -> None:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        context.errors.append(RecordError(where, "malformed", f"not UTF-8 text: {exc}"))
        return
    for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        at = f"{where}:{number}"
        if not row or (number == 1 and [c.strip().lower() for c in row[:2]] == ["name", "class"]):
            continue
        try:
            if len(row) not in (2, 3):
                raise Invalid("malformed", f"expected name,class[,score], not {len(row)} columns")
            label_class = context.by_name.get(row[1])
            if label_class is None:
                raise Invalid("unknown_class", f"class {row[1]!r} is not a class of the schema")
            require_tool(label_class, "classification")
            score = _score(_values([row[2]])[0]) if len(row) == 3 else None
        except Invalid as exc:
            context.errors.append(RecordError(at, exc.code, exc.message))
            continue
        item = find(index, row[0])
        if item is None:
            context.errors.append(
                RecordError(at, "unmatched_item", f"no item of the project is named {row[0]!r}")
            )
            continue
        collector.item(item, at).append(region("classification", label_class.name, {}, {}, score))
