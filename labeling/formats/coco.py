"""COCO object detection / keypoints JSON (https://cocodataset.org/#format-data).

Export writes one JSON document: ``info``, ``licenses``, ``categories``, ``images``,
``annotations`` in that order, one element at a time; annotations are spooled to a temporary file
while images are written, so memory does not grow with the number of items.

- ``categories``: one per class, ``id`` = schema index + 1, ``name``, ``supercategory`` "" (the
  schema's parent is not part of `LabelClass`), and for classes with a skeleton ``keypoints``
  (names) and ``skeleton`` (1-based index pairs, as COCO writes them).
- ``images``: ``id`` 1, 2, … in export order, ``file_name`` = the item's name, ``width``/``height``
  (0 when the item has no size).
- ``annotations``: ``id`` 1, 2, …, ``image_id``, ``category_id``, ``segmentation``, ``area``,
  ``bbox`` [x, y, w, h], ``iscrowd``, for keypoints ``keypoints`` [x, y, v, …] and
  ``num_keypoints``, ``attributes`` (the region's Loupe attributes, as CVAT writes them) and
  ``score`` when the region has one. Written region types:

  * ``bbox`` → ``bbox``, ``segmentation`` [], ``area`` w·h.
  * ``polygon`` without holes → ``segmentation`` [[x1, y1, x2, y2, …]], ``bbox`` its bounds,
    ``area`` its area.
  * ``polygon`` with holes → COCO polygons cannot have holes, so it is rasterized at the item's size
    into a compressed RLE ``segmentation`` with ``iscrowd`` 0 (it is re-imported as a ``mask``);
    skipped when the item has no size.
  * ``mask`` → compressed RLE ``segmentation`` {size, counts}. ``iscrowd`` is 1 only when the region
    has a true ``iscrowd``/``is_crowd`` attribute: COCO's own files pair RLE with crowds, but
    Loupe masks are single instances and training tools ignore crowd annotations, so an RLE with
    ``iscrowd`` 0 (which pycocotools, COCOeval and Detectron2 accept) is the faithful encoding.
  * ``keypoints`` → ``keypoints`` with Loupe's coordinates kept also for v = 0, ``num_keypoints``
    the labelled ones (v > 0), ``bbox``/``area`` the bounds of the labelled points.

  ``classification``, ``rotated_bbox``, ``polyline`` and every non-image type are skipped (counted
  in what `write` returns).

Import reads a bare JSON document or a zip archive of them (every ``*.json`` member; the same
image in several documents, e.g. instances and person_keypoints, makes one record). Categories are
matched to classes by name; images to items by ``file_name`` through the `ItemIndex`. Each
annotation gives: its keypoints (when it has any) as a ``keypoints`` region; its segmentation as a
``polygon`` per ring (``holes`` []) or a ``mask`` (RLE with compressed or uncompressed counts); and
the ``bbox`` only when it has neither (a COCO bbox next to a segmentation or keypoints is derived
from them). A class's ``tools`` (when given) filter this: a shape the class does not allow is left
out and the bbox taken instead when the class allows boxes (COCO person annotations into a
keypoints + bbox class give keypoints and the box); an annotation with nothing the class allows is
refused as ``unsupported``. ``attributes`` are kept for names the class declares; ``iscrowd`` 1
sets a declared ``iscrowd``/``is_crowd`` attribute; ``score`` (results-style annotations) becomes
the region's score. A results file (a bare list of annotations) has no images to match and is
refused as ``unsupported``.

This module also holds what the multi-file formats (yolo, voc) share: zip reading with its limits
(`open_archive`), per-item file paths (`UniquePaths`, `StemIndex`), record merging (`Collector`).
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from pycocotools import mask as mask_utils

from labeling.formats.base import (
    ExportItem,
    ImportedRecord,
    ImportResult,
    ItemIndex,
    ItemInfo,
    LabelClass,
    RecordError,
    class_names,
    region_ids,
)

name = "coco"
media_type = "application/json"
extension = ".json"
can_import = True
can_export = True

logger = logging.getLogger(__name__)

_SEPARATORS = (",", ":")


# ---------------------------------------------------------------------------------------------
# Shared by the formats (yolo and voc import these): streams, zip archives, records, geometry.


MAX_MEMBERS = 100_000
MAX_UNCOMPRESSED = 2 * 1024**3


class BufferedOut:
    """Collects small writes into 64 KiB chunks (the output may be a network stream)."""

    def __init__(self, out: IO[bytes], size: int = 1 << 16) -> None:
        self._out = out
        self._size = size
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._size:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._out.write(bytes(self._buffer))
            self._buffer.clear()


def dumps(value: Any) -> bytes:
    """Compact JSON (NaN and infinities refused with ValueError)."""
    return json.dumps(value, separators=_SEPARATORS, ensure_ascii=False, allow_nan=False).encode()


def seekable(data: IO[bytes]) -> IO[bytes]:
    """The input itself when it can seek, else a temporary copy of it."""
    try:
        if data.seekable():
            return data
    except (AttributeError, ValueError):
        pass
    copy = tempfile.TemporaryFile()  # noqa: SIM115 — returned; closed when it is garbage-collected
    shutil.copyfileobj(data, copy, 1 << 20)
    copy.seek(0)
    return copy


def sniff(data: IO[bytes]) -> bytes:
    """The first non-blank bytes of a seekable input (a UTF-8 BOM skipped); the position is kept."""
    start = data.tell()
    head = data.read(4096)
    data.seek(start)
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:4]


def member_name(raw: str) -> str | None:
    """A zip member's name as a relative POSIX path, or None when it is absolute or climbs out."""
    path = raw.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return None
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


@dataclass(frozen=True)
class Member:
    name: str
    info: zipfile.ZipInfo


@dataclass
class Archive:
    """The file members of a zip archive that passed the checks, in archive order."""

    zip: zipfile.ZipFile
    members: list[Member]

    def read(self, member: Member) -> bytes:
        """The member's content; zipfile stops at the declared size and checks the CRC."""
        return self.zip.read(member.info)


def open_archive(data: IO[bytes], errors: list[RecordError]) -> Archive | None:
    """Opens a zip archive, refusing it (None, one "malformed" error) when it is not a zip, has more
    than MAX_MEMBERS entries or more than MAX_UNCOMPRESSED bytes in all; each member with an absolute
    or climbing path is refused on its own. Directories and macOS resource forks are left out."""
    try:
        archive = zipfile.ZipFile(seekable(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        errors.append(RecordError("archive", "malformed", f"not a readable zip archive: {exc}"))
        return None
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        errors.append(
            RecordError("archive", "malformed", f"{len(infos)} members; at most {MAX_MEMBERS} are read")
        )
        return None
    total = sum(info.file_size for info in infos)
    if total > MAX_UNCOMPRESSED:
        errors.append(
            RecordError(
                "archive", "malformed", f"{total} bytes uncompressed; at most {MAX_UNCOMPRESSED} are read"
            )
        )
        return None
    members = []
    for info in infos:
        if info.is_dir():
            continue
        path = member_name(info.filename)
        if path is None:
            errors.append(RecordError(info.filename, "malformed", "an absolute or '..' path is refused"))
            continue
        if path.startswith("__MACOSX/"):
            continue
        members.append(Member(path, info))
    return Archive(archive, members)


def zip_entry(path: str) -> zipfile.ZipInfo:
    """A member header with a fixed date, so the same export is the same bytes."""
    info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def read_member(archive: Archive, member: Member, errors: list[RecordError]) -> bytes | None:
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError, ValueError) as exc:
        # RuntimeError: encrypted; NotImplementedError: an unsupported compression method
        errors.append(RecordError(member.name, "malformed", f"cannot read the member: {exc}"))
        return None


def path_name(item_name: str) -> str:
    """An item's name as a relative path: "./a\\b.jpg" → "a/b.jpg" (no empty, "." or ".." parts)."""
    return "/".join(part for part in item_name.replace("\\", "/").split("/") if part not in ("", ".", ".."))


def path_stem(item_name: str) -> str:
    """An item's name as a relative path without extension: "a/b/img.jpg" → "a/b/img"."""
    head, _, base = path_name(item_name).rpartition("/")
    stem = posixpath.splitext(base)[0]
    if not stem:
        return "item"
    return f"{head}/{stem}" if head else stem


class UniquePaths:
    """Per-item file paths in an export: the name's stem, or its full name when two stems clash
    (the later item of "a.jpg" and "a.png" is written as "a.png"; `StemIndex` reads that back)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def claim(self, item_name: str) -> str:
        path = path_stem(item_name)
        if path in self._taken:
            path = base = path_name(item_name) or "item"
            n = 1
            while path in self._taken:
                n += 1
                path = f"{base}~{n}"
        self._taken.add(path)
        return path


def find(index: ItemIndex, item_name: str) -> ItemInfo | None:
    """The item of a name: exactly as written first (ItemIndex.resolve turns backslashes into
    slashes before its exact lookup, so it misses names that contain one), then as resolve finds it."""
    found = index.by_name.get(item_name)
    return found if found is not None else index.resolve(item_name)


class StemIndex:
    """Finds the item of a file named after its stem ("train/a" for labels/train/a.txt).

    `present` are the paths (without extension) of all such files in the archive: when two items
    share a stem, those whose full name is also present took that file (`UniquePaths`), which
    leaves the stem's file to the other."""

    def __init__(self, index: ItemIndex, present: Iterable[str] = ()) -> None:
        self._index = index
        self._present = set(present)
        self._stems: dict[str, list[ItemInfo]] = {}
        for item in index.by_name.values():
            self._stems.setdefault(path_stem(item.name), []).append(item)

    def resolve(self, path: str) -> ItemInfo | None:
        found = self._index.by_name.get(path)
        if found is not None:
            return found
        candidates = self._stems.get(path, [])
        if len(candidates) > 1:
            candidates = [c for c in candidates if path_name(c.name) not in self._present]
        if len(candidates) == 1:
            return candidates[0]
        return None if candidates else self._index.resolve(path)


class Collector:
    """Regions read per item, merged into one record per item (ids r1, r2, … assigned at the end)."""

    def __init__(self) -> None:
        self._records: dict[int, tuple[ItemInfo, list[dict[str, Any]], str]] = {}

    def item(self, item: ItemInfo, where: str) -> list[dict[str, Any]]:
        """The region list of an item, created (empty) on first sight."""
        if item.id not in self._records:
            self._records[item.id] = (item, [], where)
        return self._records[item.id][1]

    def records(self) -> list[ImportedRecord]:
        records = []
        for item, regions, where in self._records.values():
            ids = region_ids()
            records.append(
                ImportedRecord(item=item, regions=[{"id": next(ids), **r} for r in regions], where=where)
            )
        return records


class Invalid(Exception):
    """A record that cannot be imported: the RecordError code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def number(value: Any, what: str) -> int | float:
    """A finite JSON number (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid("malformed", f"{what} is not a number: {value!r}")
    return value


def score_of(value: Any) -> float:
    score = number(value, "score")
    if not 0 <= score <= 1:
        raise Invalid("malformed", f"score {score} is not in [0, 1]")
    return float(score)


def require_tool(label_class: LabelClass, kind: str) -> None:
    """Refuses a region type the class's tools do not allow (when the class lists its tools)."""
    if label_class.tools and kind not in label_class.tools:
        raise Invalid("unsupported", f"class {label_class.name!r} does not allow {kind} regions")


def keep_attributes(attributes: dict[str, Any], label_class: LabelClass) -> dict[str, Any]:
    """The attributes the class declares (other names would fail schema validation)."""
    return {key: value for key, value in attributes.items() if key in label_class.attributes}


def region(
    kind: str, label: str, attributes: dict[str, Any], geometry: dict[str, Any], score: float | None
) -> dict[str, Any]:
    made: dict[str, Any] = {
        "type": kind,
        "label": label,
        "attributes": dict(attributes),
        "geometry": geometry,
    }
    if score is not None:
        made["score"] = score
    return made


def rle_counts(counts: str) -> list[int]:
    """Decodes COCO's compressed RLE string (maskApi.c rleFrString) in Python, so a damaged string
    is refused before pycocotools trusts its counts (its decoder writes without bounds checks)."""
    result: list[int] = []
    p = 0
    while p < len(counts):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(counts):
                raise Invalid("malformed", "the RLE counts string ends inside a number")
            if k == 13:  # 65 bits: more than any count (and an endless one would take quadratic time)
                raise Invalid("malformed", "the RLE counts string has a number that is too long")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise Invalid("malformed", f"the RLE counts string has an invalid character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(result) > 2:
            x += result[-2]
        result.append(x)
    return result


def decode_rle(counts: str, height: int, width: int) -> Any:
    """A compressed RLE as a boolean array (height, width); pycocotools' decode warns under NumPy 2."""
    runs = rle_counts(counts)
    if sum(runs) != height * width or any(v < 0 for v in runs):
        raise Invalid("invalid_geometry", f"RLE counts do not cover {height}x{width} pixels")
    values = (np.arange(len(runs)) % 2).astype(bool)
    return np.repeat(values, runs).reshape((width, height)).T


def check_rle(size: Any, counts: Any) -> tuple[int, int, list[int]]:
    """Validates an RLE's size and counts (compressed string or uncompressed list) → (h, w, counts)."""
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise Invalid("malformed", f"RLE size must be [height, width] of positive integers, not {size!r}")
    height, width = size
    if isinstance(counts, str):
        runs = rle_counts(counts)
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        runs = counts
    else:
        raise Invalid("malformed", "RLE counts must be a string or a list of integers")
    if any(v < 0 or v >= 2**32 for v in runs):
        raise Invalid("invalid_geometry", "RLE counts must be non-negative")
    if sum(runs) != height * width:
        raise Invalid("invalid_geometry", f"RLE counts cover {sum(runs)} pixels, not {height}x{width}")
    if sum(runs[1::2]) == 0:
        raise Invalid("invalid_geometry", "the mask is empty")
    return height, width, runs


# ---------------------------------------------------------------------------------------------
# Export


def export(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> None:
    skipped = write(items, classes, out)
    if skipped:
        logger.info("COCO export skipped regions: %s", dict(skipped))


def write(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> Counter[str]:
    """Writes the COCO document; returns the regions skipped, by type (or "unknown_label")."""
    skipped: Counter[str] = Counter()
    categories = {c.name: (index + 1, c) for index, c in enumerate(classes)}
    writer = BufferedOut(out)
    writer.write(b'{"info":{"description":"Loupe export","version":"1.0"},"licenses":[],"categories":[')
    for index, label_class in enumerate(classes):
        category: dict[str, Any] = {"id": index + 1, "name": label_class.name, "supercategory": ""}
        if label_class.keypoints:
            category["keypoints"] = list(label_class.keypoints)
            category["skeleton"] = [[a + 1, b + 1] for a, b in label_class.edges]
        writer.write((b"," if index else b"") + dumps(category))
    writer.write(b'],"images":[')
    with tempfile.TemporaryFile() as spool:
        annotations = BufferedOut(spool)
        annotation_id = 0
        image_id = 0
        for export_item in items:
            item = export_item.item
            image_id += 1
            image = {
                "id": image_id,
                "file_name": item.name,
                "width": item.width or 0,
                "height": item.height or 0,
            }
            writer.write((b"," if image_id > 1 else b"") + dumps(image))
            for source in export_item.regions:
                found = categories.get(source.get("label", ""))
                if found is None:
                    skipped["unknown_label"] += 1
                    continue
                try:
                    body = _annotation(source, item)
                    if body is None:
                        skipped[str(source.get("type"))] += 1
                        continue
                    annotation: dict[str, Any] = {
                        "id": annotation_id + 1,
                        "image_id": image_id,
                        "category_id": found[0],
                        **body,
                    }
                    attributes = source.get("attributes") or {}
                    annotation["attributes"] = attributes
                    if "score" in source:
                        annotation["score"] = source["score"]
                    encoded = dumps(annotation)
                except (KeyError, TypeError, ValueError, IndexError, Invalid):
                    skipped[f"invalid {source.get('type')}"] += 1
                    continue
                annotation_id += 1
                annotations.write((b"," if annotation_id > 1 else b"") + encoded)
        annotations.flush()
        writer.write(b'],"annotations":[')
        writer.flush()
        spool.seek(0)
        shutil.copyfileobj(spool, out, 1 << 16)
    writer.write(b"]}")
    writer.flush()
    return skipped


def _crowd(source: dict[str, Any]) -> int:
    attributes = source.get("attributes") or {}
    return 1 if attributes.get("iscrowd") is True or attributes.get("is_crowd") is True else 0


def _bounds(points: list[list[Any]]) -> list[Any]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _ring_area(points: list[list[Any]]) -> float:
    twice = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True):
        twice += x1 * y2 - x2 * y1
    return abs(twice) / 2


def _rle_body(rle: dict[str, Any], crowd: int) -> dict[str, Any]:
    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return {
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"]},
        "area": int(mask_utils.area(coded)),
        "bbox": [float(v) for v in mask_utils.toBbox(coded)],
        "iscrowd": crowd,
    }


def _annotation(source: dict[str, Any], item: ItemInfo) -> dict[str, Any] | None:
    """The geometry fields of a region's annotation; None for a type COCO cannot hold."""
    kind = source.get("type")
    geometry = source.get("geometry") or {}
    if kind == "bbox":
        x, y, w, h = geometry["x"], geometry["y"], geometry["width"], geometry["height"]
        return {"segmentation": [], "area": w * h, "bbox": [x, y, w, h], "iscrowd": _crowd(source)}
    if kind == "polygon":
        points = [[p[0], p[1]] for p in geometry["points"]]
        holes = geometry.get("holes") or []
        if not holes:
            return {
                "segmentation": [[v for p in points for v in p]],
                "area": _ring_area(points),
                "bbox": _bounds(points),
                "iscrowd": _crowd(source),
            }
        if not item.width or not item.height:
            return None
        return _rle_body(_rasterize(points, holes, item.height, item.width), _crowd(source))
    if kind == "mask":
        rle = geometry["rle"]
        check_rle(rle["size"], rle["counts"])
        return _rle_body(rle, _crowd(source))
    if kind == "keypoints":
        points = geometry["points"]
        labelled = [p for p in points if p[2] > 0]
        box = _bounds(labelled) if labelled else [0, 0, 0, 0]
        return {
            "segmentation": [],
            "area": box[2] * box[3],
            "bbox": box,
            "iscrowd": 0,
            "keypoints": [v for p in points for v in (p[0], p[1], p[2])],
            "num_keypoints": len(labelled),
        }
    return None


def _rasterize(points: list[list[Any]], holes: list[Any], height: int, width: int) -> dict[str, Any]:
    """A polygon with holes as a compressed RLE of the item's size."""

    def ring_mask(ring: list[Any]) -> Any:
        flat = [float(v) for p in ring for v in (p[0], p[1])]
        rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
        return decode_rle(rle["counts"].decode("ascii"), height, width)

    pixels = ring_mask(points)
    for hole in holes:
        pixels &= ~ring_mask(hole)
    if not pixels.any():
        raise Invalid("invalid_geometry", "the polygon covers no pixel")
    rle = mask_utils.encode(np.asfortranarray(pixels.astype(np.uint8)))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


# ---------------------------------------------------------------------------------------------
# Import


@dataclass
class _Category:
    name: str
    label_class: LabelClass | None


@dataclass
class _Reader:
    classes: dict[str, LabelClass]
    index: ItemIndex
    collector: Collector = field(default_factory=Collector)
    errors: list[RecordError] = field(default_factory=list)

    def error(self, where: str, code: str, message: str) -> None:
        self.errors.append(RecordError(where, code, message))


def import_(data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult:
    reader = _Reader(dict(class_names(classes)), index)
    stream = seekable(data)
    head = sniff(stream)
    if head.startswith((b"{", b"[")):
        _read_document(reader, "", stream.read())
    elif head.startswith(b"PK"):
        archive = open_archive(stream, reader.errors)
        if archive is not None:
            documents = [m for m in archive.members if m.name.lower().endswith(".json")]
            if not documents:
                reader.error("archive", "malformed", "the archive has no .json file")
            for member in documents:
                raw = read_member(archive, member, reader.errors)
                if raw is not None:
                    _read_document(reader, f"{member.name} ", raw)
    else:
        reader.error("file", "malformed", "neither a COCO JSON document nor a zip archive")
    return ImportResult(records=reader.collector.records(), errors=reader.errors)


def _read_document(reader: _Reader, prefix: str, raw: bytes) -> None:
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        reader.error(f"{prefix}line {exc.lineno} column {exc.colno}", "malformed", f"invalid JSON: {exc.msg}")
        return
    except (UnicodeDecodeError, RecursionError) as exc:
        reader.error(f"{prefix or 'file'}".strip(), "malformed", f"invalid JSON: {exc}")
        return
    if isinstance(document, list):
        reader.error(
            f"{prefix or 'file'}".strip(),
            "unsupported",
            "a COCO results list has no images to match to items; import a document with "
            "images, categories and annotations",
        )
        return
    if not isinstance(document, dict):
        reader.error(f"{prefix or 'file'}".strip(), "malformed", "a COCO document is a JSON object")
        return
    sections = {}
    for key in ("images", "categories", "annotations"):
        value = document.get(key, [])
        if not isinstance(value, list):
            reader.error(f"{prefix}{key}", "malformed", f"{key} must be an array")
            value = []
        sections[key] = value
    if "images" not in document:
        reader.error(f"{prefix}images", "malformed", "the document has no images array")

    categories: dict[Any, _Category] = {}
    for i, category in enumerate(sections["categories"]):
        where = f"{prefix}categories[{i}]"
        if (
            not isinstance(category, dict)
            or not _is_id(category.get("id"))
            or not isinstance(category.get("name"), str)
        ):
            reader.error(where, "malformed", "a category needs an id and a name")
            continue
        if category["id"] in categories:
            reader.error(where, "malformed", f"category id {category['id']} is repeated")
            continue
        categories[category["id"]] = _Category(category["name"], reader.classes.get(category["name"]))

    images: dict[Any, ItemInfo | None] = {}
    for i, image in enumerate(sections["images"]):
        where = f"{prefix}images[{i}]"
        if (
            not isinstance(image, dict)
            or not _is_id(image.get("id"))
            or not isinstance(image.get("file_name"), str)
        ):
            reader.error(where, "malformed", "an image needs an id and a file_name")
            continue
        if image["id"] in images:
            reader.error(where, "malformed", f"image id {image['id']} is repeated")
            continue
        item = find(reader.index, image["file_name"])
        images[image["id"]] = item
        if item is None:
            reader.error(where, "unmatched_item", f"no item of the project is named {image['file_name']!r}")
            continue
        reader.collector.item(item, where)

    for i, annotation in enumerate(sections["annotations"]):
        where = f"{prefix}annotations[{i}]"
        try:
            found = _annotation_regions(annotation, categories, images)
        except Invalid as exc:
            reader.error(where, exc.code, exc.message)
            continue
        if found is not None:
            item, regions = found
            reader.collector.item(item, where).extend(regions)


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _annotation_regions(
    annotation: Any, categories: dict[Any, _Category], images: dict[Any, ItemInfo | None]
) -> tuple[ItemInfo, list[dict[str, Any]]] | None:
    """The item and regions of one annotation; None when its image was unmatched (reported there)."""
    if not isinstance(annotation, dict):
        raise Invalid("malformed", "an annotation is a JSON object")
    image_id = annotation.get("image_id")
    if not _is_id(image_id) or image_id not in images:
        raise Invalid("malformed", f"image_id {image_id!r} is not among the images")
    item = images[image_id]
    if item is None:
        return None
    category_id = annotation.get("category_id")
    category = categories.get(category_id) if _is_id(category_id) else None
    if category is None:
        raise Invalid("unknown_class", f"category_id {category_id!r} is not among the categories")
    label_class = category.label_class
    if label_class is None:
        raise Invalid("unknown_class", f"category {category.name!r} is not a class of the schema")
    raw_attributes = annotation.get("attributes", {})
    if not isinstance(raw_attributes, dict):
        raise Invalid("malformed", "attributes must be an object")
    attributes = keep_attributes(raw_attributes, label_class)
    crowd = annotation.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, bool):
        raise Invalid("malformed", f"iscrowd must be 0 or 1, not {crowd!r}")
    if crowd == 1:
        for key in ("iscrowd", "is_crowd"):
            if key in label_class.attributes:
                attributes.setdefault(key, True)
    score = score_of(annotation["score"]) if annotation.get("score") is not None else None

    def make(kind: str, geometry: dict[str, Any]) -> dict[str, Any]:
        return region(kind, label_class.name, attributes, geometry, score)

    def allows(kind: str) -> bool:
        return not label_class.tools or kind in label_class.tools

    regions = []
    dropped = []  # what the annotation has but the class's tools do not allow
    keypoints = annotation.get("keypoints")
    if keypoints not in (None, []):
        if allows("keypoints"):
            regions.append(make("keypoints", {"points": _keypoints(keypoints, label_class)}))
        else:
            dropped.append("keypoints")
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        if allows("polygon"):
            for ring_index, ring in enumerate(segmentation):
                regions.append(make("polygon", {"points": _ring(ring, ring_index), "holes": []}))
        else:
            dropped.append("polygon")
    elif isinstance(segmentation, dict):
        if allows("mask"):
            regions.append(make("mask", {"rle": _rle(segmentation, item)}))
        else:
            dropped.append("mask")
    elif segmentation not in (None, []):
        raise Invalid("malformed", "segmentation must be a list of polygons or an RLE object")
    if not regions or dropped:  # the box stands in for a shape the class cannot hold
        if "bbox" in annotation and allows("bbox"):
            regions.append(make("bbox", _bbox(annotation["bbox"])))
        elif "bbox" in annotation:
            dropped.append("bbox")
    if not regions:
        if not dropped:
            raise Invalid("malformed", "the annotation has no bbox, segmentation or keypoints")
        raise Invalid(
            "unsupported",
            f"class {label_class.name!r} allows none of what the annotation has ({', '.join(dropped)})",
        )
    return item, regions


def _bbox(value: Any) -> dict[str, Any]:
    if not isinstance(value, list) or len(value) != 4:
        raise Invalid("malformed", "bbox must be [x, y, width, height]")
    x, y, w, h = (number(v, "bbox") for v in value)
    if w <= 0 or h <= 0:
        raise Invalid("invalid_geometry", f"bbox width and height must be > 0, not {w} x {h}")
    return {"x": x, "y": y, "width": w, "height": h}


def _ring(value: Any, ring_index: int) -> list[list[int | float]]:
    if not isinstance(value, list):
        raise Invalid("malformed", f"segmentation[{ring_index}] is not a list of coordinates")
    coordinates = [number(v, f"segmentation[{ring_index}]") for v in value]
    if len(coordinates) % 2 or len(coordinates) < 6:
        raise Invalid(
            "invalid_geometry",
            f"segmentation[{ring_index}] must have ≥ 3 points (an even count ≥ 6 of numbers), "
            f"not {len(coordinates)} numbers",
        )
    return [[coordinates[i], coordinates[i + 1]] for i in range(0, len(coordinates), 2)]


def _rle(value: dict[str, Any], item: ItemInfo) -> dict[str, Any]:
    height, width, runs = check_rle(value.get("size"), value.get("counts"))
    if item.width and item.height and (height, width) != (item.height, item.width):
        raise Invalid(
            "invalid_geometry",
            f"the mask is {height}x{width} (hxw) but the item is {item.height}x{item.width}",
        )
    counts = value["counts"]
    if isinstance(counts, list):
        compressed = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        counts = compressed["counts"].decode("ascii")
    return {"size": [height, width], "counts": counts}


def _keypoints(value: Any, label_class: LabelClass) -> list[list[int | float]]:
    if not isinstance(value, list) or len(value) % 3:
        raise Invalid("malformed", "keypoints must be a list of x, y, v triples")
    expected = len(label_class.keypoints)
    if len(value) // 3 != expected:
        raise Invalid(
            "invalid_geometry",
            f"{len(value) // 3} keypoints, but class {label_class.name!r} has a skeleton of {expected}",
        )
    points: list[list[int | float]] = []
    for i in range(0, len(value), 3):
        x, y, v = (number(c, "keypoints") for c in value[i : i + 3])
        if v not in (0, 1, 2):
            raise Invalid("invalid_geometry", f"keypoint visibility must be 0, 1 or 2, not {v}")
        points.append([x, y, int(v)])
    return points
