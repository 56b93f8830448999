"""Pascal VOC detection annotations (http://host.robots.ox.ac.uk/pascal/VOC/) in a zip archive.

Export writes, per item, ``Annotations/<stem>.xml`` (``<stem>`` = the item's name without
extension, folders kept; the full name when two stems clash) and at the end
``ImageSets/Main/default.txt`` listing the stems in order. Each XML document::

    <annotation>
      <folder>JPEGImages</folder>
      <filename>the item's name</filename>
      <size><width/><height/><depth>3</depth></size>      (0 when the item has no size)
      <segmented>0</segmented>
      <object>
        <name/> <pose/> <truncated/> <difficult/> [<occluded/>]
        <bndbox><xmin/><ymin/><xmax/><ymax/></bndbox>
        [<attributes><attribute><name/><value/></attribute>…</attributes>]
      </object>…
    </annotation>

Only ``bbox`` regions are written (every other type is skipped and counted in what `write`
returns). VOC boxes are inclusive 1-based pixel indices: a Loupe box {x, y, width, height} (pixel
edges, 0-based) is written as xmin = x + 1, ymin = y + 1, xmax = x + width, ymax = y + height,
with x, y, x + width and y + height first rounded to whole pixels (half up; a box keeps at least
one pixel); import reads x = xmin - 1, y = ymin - 1, width = xmax - xmin + 1,
height = ymax - ymin + 1 (fractional coordinates are accepted as they are).

Attributes: ``pose`` (text; "Unspecified" when unset), ``truncated``, ``difficult`` and
``occluded`` (0/1, read back as booleans) use VOC's own elements when the class declares an
attribute of that name (``pose`` "Unspecified" is read back as unset; ``truncated`` and
``difficult`` are written 0 otherwise, ``occluded`` only for classes that declare it). The other
attributes go to ``<attributes>`` as CVAT writes them, values as text: booleans true/false,
numbers as Python writes them, lists as JSON. `LabelClass` has no attribute types, so import
reads true/false as booleans, integer and decimal numerals as numbers and JSON arrays as lists:
a text attribute that looks like one of those comes back converted. Characters XML cannot hold
(control characters) are dropped from the text written.

Import reads a zip archive of VOC XML files (every ``*.xml`` member) or a single XML file. XML
goes through defusedxml with DTDs forbidden, so entities and external references (billion laughs,
XXE) are refused as "malformed" for that file. ``filename`` is matched to an item through the
`ItemIndex`, else the XML file's path below ``Annotations/`` without extension. Each ``object``
becomes a ``bbox`` region (``unsupported`` when its class does not allow boxes), its ``name``
matched to a class by name; attributes are kept for names
the class declares.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET  # for its types and ParseError; parsing goes through defusedxml
import zipfile
from collections import Counter
from collections.abc import Iterable
from typing import IO, Any

import defusedxml
import defusedxml.ElementTree as SafeET

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
    Collector,
    Invalid,
    StemIndex,
    UniquePaths,
    find,
    open_archive,
    read_member,
    region,
    require_tool,
    seekable,
    sniff,
    zip_entry,
)

name = "voc"
media_type = "application/zip"
extension = ".zip"
can_import = True
can_export = True

logger = logging.getLogger(__name__)

_FLAGS = ("truncated", "difficult", "occluded")
_UNSPECIFIED = "Unspecified"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_INTEGER = re.compile(r"[-+]?\d+")
_DECIMAL = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")


# ---------------------------------------------------------------------------------------------
# Export


def export(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> None:
    skipped = write(items, classes, out)
    if skipped:
        logger.info("VOC export skipped regions: %s", dict(skipped))


def write(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> Counter[str]:
    """Writes the zip; returns the regions skipped, by type (or "unknown_label")."""
    by_name = dict(class_names(classes))
    skipped: Counter[str] = Counter()
    paths = UniquePaths()
    with (
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        tempfile.TemporaryFile() as listing,
    ):
        for export_item in items:
            path = paths.claim(export_item.item.name)
            archive.writestr(zip_entry(f"Annotations/{path}.xml"), document(export_item, by_name, skipped))
            listing.write(path.encode() + b"\n")
        listing.seek(0)
        with archive.open(zip_entry("ImageSets/Main/default.txt"), "w") as member:
            shutil.copyfileobj(listing, member, 1 << 16)
    return skipped


def _text(value: str) -> str:
    """Text content: characters XML cannot hold dropped, markup escaped, CR kept as a reference
    (a raw one would be read back as LF)."""
    value = _NOT_XML.sub("", value)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _element(lines: list[str], depth: int, tag: str, text: str) -> None:
    lines.append(f"{'  ' * depth}<{tag}>{_text(text)}</{tag}>")


def _pixel(value: float) -> int:
    return math.floor(value + 0.5)


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value) if not isinstance(value, float) else repr(value)
    return json.dumps(value, ensure_ascii=False)


def document(export_item: ExportItem, classes: dict[str, LabelClass], skipped: Counter[str]) -> bytes:
    """One item's VOC XML document (written as text: ElementTree would be most of the export's time)."""
    item = export_item.item
    lines = ["<?xml version='1.0' encoding='utf-8'?>", "<annotation>"]
    _element(lines, 1, "folder", "JPEGImages")
    _element(lines, 1, "filename", item.name)
    lines.append("  <size>")
    _element(lines, 2, "width", str(item.width or 0))
    _element(lines, 2, "height", str(item.height or 0))
    _element(lines, 2, "depth", "3")
    lines.append("  </size>")
    _element(lines, 1, "segmented", "0")
    for source in export_item.regions:
        label_class = classes.get(source.get("label", ""))
        if label_class is None:
            skipped["unknown_label"] += 1
            continue
        if source.get("type") != "bbox":
            skipped[str(source.get("type"))] += 1
            continue
        try:
            geometry = source["geometry"]
            x, y = float(geometry["x"]), float(geometry["y"])
            right, bottom = x + float(geometry["width"]), y + float(geometry["height"])
            xmin, ymin = _pixel(x) + 1, _pixel(y) + 1
            xmax, ymax = max(_pixel(right), xmin), max(_pixel(bottom), ymin)
        except (KeyError, TypeError, ValueError, OverflowError):
            skipped["invalid bbox"] += 1
            continue
        attributes = dict(source.get("attributes") or {})
        declared = set(label_class.attributes)
        lines.append("  <object>")
        _element(lines, 2, "name", label_class.name)
        pose = attributes.pop("pose", None) if "pose" in declared else None
        _element(lines, 2, "pose", pose if isinstance(pose, str) and pose else _UNSPECIFIED)
        for flag in _FLAGS:
            value = attributes.pop(flag, None) if flag in declared else None
            if flag != "occluded" or flag in declared:
                _element(lines, 2, flag, "1" if value else "0")
        lines.append("    <bndbox>")
        for tag, coordinate in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            _element(lines, 3, tag, str(coordinate))
        lines.append("    </bndbox>")
        others = [(key, value) for key, value in attributes.items() if value is not None]
        if others:
            lines.append("    <attributes>")
            for key, value in others:
                lines.append("      <attribute>")
                _element(lines, 4, "name", key)
                _element(lines, 4, "value", _attribute_text(value))
                lines.append("      </attribute>")
            lines.append("    </attributes>")
        lines.append("  </object>")
    lines.append("</annotation>\n")
    return "\n".join(lines).encode()


# ---------------------------------------------------------------------------------------------
# Import


def import_(data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult:
    errors: list[RecordError] = []
    collector = Collector()
    by_name = dict(class_names(classes))
    stream = seekable(data)
    head = sniff(stream)
    if head.startswith(b"<"):
        _read_document("file", "", stream.read(), index, None, by_name, collector, errors)
    elif head.startswith(b"PK"):
        archive = open_archive(stream, errors)
        if archive is not None:
            documents = [
                (m, _below_annotations(m.name)) for m in archive.members if m.name.lower().endswith(".xml")
            ]
            if not documents:
                errors.append(RecordError("archive", "malformed", "the archive has no .xml file"))
            stems = StemIndex(index, (path for _, path in documents))
            for member, path in documents:
                raw = read_member(archive, member, errors)
                if raw is not None:
                    _read_document(member.name, path, raw, index, stems, by_name, collector, errors)
    else:
        errors.append(RecordError("file", "malformed", "neither a VOC XML file nor a zip archive"))
    return ImportResult(records=collector.records(), errors=errors)


def _below_annotations(member: str) -> str:
    """An XML file's path below Annotations/ without extension: the item's stem path."""
    parts = member[: -len(".xml")].split("/")
    return "/".join(parts[parts.index("Annotations") + 1 :] if "Annotations" in parts[:-1] else parts)


def _read_document(
    where: str,
    path: str,
    raw: bytes,
    index: ItemIndex,
    stems: StemIndex | None,
    classes: dict[str, LabelClass],
    collector: Collector,
    errors: list[RecordError],
) -> None:
    try:
        root = SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        errors.append(
            RecordError(where, "malformed", f"refused XML (DTD, entity or external reference): {exc!r}")
        )
        return
    except (ET.ParseError, ValueError) as exc:
        errors.append(RecordError(where, "malformed", f"invalid XML: {exc}"))
        return
    if root.tag != "annotation":
        errors.append(RecordError(where, "malformed", f"the root element is <{root.tag}>, not <annotation>"))
        return
    filename = root.findtext("filename") or ""
    item = find(index, filename) if filename.strip() else None
    if item is None and filename.strip() != filename and filename.strip():
        item = find(index, filename.strip())
    if item is None and stems is not None and path:
        item = stems.resolve(path)
    if item is None:
        errors.append(
            RecordError(where, "unmatched_item", f"no item of the project matches {filename or path!r}")
        )
        return
    regions = collector.item(item, where)
    for i, obj in enumerate(root.findall("object")):
        try:
            regions.append(_object(obj, classes, item))
        except Invalid as exc:
            prefix = f"{where} " if where != "file" else ""
            errors.append(RecordError(f"{prefix}object[{i}]", exc.code, exc.message))


def _coordinate(box: ET.Element, tag: str) -> int | float:
    text = (box.findtext(tag) or "").strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    raise Invalid("malformed", f"bndbox/{tag} is not a number: {text!r}")


def _value(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, list):
            return value
    return text


def _object(obj: ET.Element, classes: dict[str, LabelClass], item: ItemInfo) -> dict[str, Any]:
    class_name = (obj.findtext("name") or "").strip()
    if not class_name:
        raise Invalid("malformed", "the object has no name")
    label_class = classes.get(class_name)
    if label_class is None:
        raise Invalid("unknown_class", f"class {class_name!r} is not a class of the schema")
    require_tool(label_class, "bbox")
    box = obj.find("bndbox")
    if box is None:
        raise Invalid("malformed", "the object has no bndbox")
    xmin, ymin, xmax, ymax = (_coordinate(box, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
    if xmax < xmin or ymax < ymin:
        raise Invalid(
            "invalid_geometry", f"bndbox xmax/ymax ({xmax}, {ymax}) are below xmin/ymin ({xmin}, {ymin})"
        )
    declared = set(label_class.attributes)
    attributes: dict[str, Any] = {}
    pose = (obj.findtext("pose") or "").strip()
    if "pose" in declared and pose and pose != _UNSPECIFIED:
        attributes["pose"] = pose
    for flag in _FLAGS:
        text = obj.findtext(flag)
        if flag in declared and text is not None:
            attributes[flag] = text.strip() in ("1", "true")
    for attribute in obj.findall("attributes/attribute"):
        key = (attribute.findtext("name") or "").strip()
        if key in declared and key not in attributes:
            attributes[key] = _value(attribute.findtext("value") or "")
    geometry = {"x": xmin - 1, "y": ymin - 1, "width": xmax - xmin + 1, "height": ymax - ymin + 1}
    return region("bbox", label_class.name, attributes, geometry, None)
