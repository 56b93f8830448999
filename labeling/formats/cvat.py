"""CVAT for images XML 1.1, import only (https://docs.cvat.ai/docs/manual/advanced/xml_format/).

::

    <annotations>
      <version>1.1</version>
      <meta>…</meta>
      <image id="0" name="a.jpg" width="1600" height="1200">
        <box label="car" xtl="…" ytl="…" xbr="…" ybr="…" occluded="0" rotation="30.00" z_order="0">
          <attribute name="color">red</attribute>
        </box>
        <polygon label="…" points="x0,y0;x1,y1;…"/>  <polyline …/>  <points …/>  <tag label="…"/>
        <mask label="…" rle="3, 5, 7" left="10" top="20" width="5" height="3"/>
        <skeleton label="…"><points label="<keypoint>" points="x,y" outside="0" occluded="0"/>…</skeleton>
      </image>
    </annotations>

Mapping (CVAT element → Loupe region, pixel coordinates kept):

- `box` → `bbox` `{x: xtl, y: ytl, width: xbr - xtl, height: ybr - ytl}`; with a non-zero
  `rotation` (CVAT: degrees clockwise around the box centre) → `rotated_bbox` with that centre,
  size and angle (brought into (-180, 180]).
- `polygon` → `polygon` (`holes` empty), `polyline` → `polyline`.
- `points` → `keypoints` (every point visible, `v` = 2) when the class's skeleton has as many
  keypoints as the element has points, else `unsupported`.
- `skeleton` → `keypoints`: each child `points` element is the keypoint its `label` names in the
  class's skeleton; `outside="1"` or a keypoint missing → `[0, 0, 0]`, `occluded="1"` → `v` = 1,
  else `v` = 2.
- `tag` → `classification`.
- `mask` → `mask`: CVAT's RLE (comma-separated run lengths alternating 0s and 1s, starting with
  0s, over the `width` x `height` box at `left`, `top`, row-major) is painted into an array of the
  item's size and encoded as COCO compressed RLE (pycocotools, Fortran order).
- `ellipse`, `cuboid`, tracks (`<track>`, CVAT for video) → `unsupported`.

Attributes: `<attribute name>` children whose name is an attribute of the class (others are
dropped); values are XML text, converted only as far as the text says: `true`/`false` → bool,
integer and decimal numerals → int / float (not with leading zeros: `0042` stays a string),
anything else stays a string. Matching them to the
schema's types (an enum whose options are numerals, say) is the caller's. `occluded="1|0"`
becomes the attribute `occluded` (bool) when the class has one.

The item is matched by the image `name` through `ItemIndex`; the image size is the item's probed
size, else the `width`/`height` of the `image` element. One `ImportedRecord` per `image` with at
least one shape (CVAT lists every image, annotated or not; an empty one imports nothing), regions
numbered by `region_ids()`. Errors point at `image[name=a.jpg] box[2]` (the index counts that
element type within the image). The file is parsed as a stream (defusedxml `iterparse`, each
image cleared after use) with DTDs, entities and external references refused (`malformed`);
a syntax error is `malformed` at its line and ends the import, the images before it kept.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import IO, Any
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse
from pycocotools import mask as mask_util

from labeling.formats.base import (
    ImportedRecord,
    ImportResult,
    ItemIndex,
    ItemInfo,
    LabelClass,
    RecordError,
    class_names,
    region_ids,
)

name = "cvat"
media_type = "application/xml"
extension = ".xml"
can_import = True
can_export = False

_INT = re.compile(r"[+-]?\d+")
# Numerals as a number is written: no leading zeros ("0042" is a code, not 42).
_NUMERAL_INT = re.compile(r"[+-]?(0|[1-9]\d*)")
_NUMERAL_FLOAT = re.compile(r"[+-]?(0|[1-9]\d*)(\.\d+([eE][+-]?\d+)?|[eE][+-]?\d+)")
_UNSUPPORTED = {"ellipse": "ellipses", "cuboid": "cuboids"}


class _Bad(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def typed(text: str) -> bool | int | float | str:
    """An attribute's XML text as the value it spells: bool, int, float, else the string."""
    stripped = text.strip()
    if stripped in ("true", "false"):
        return stripped == "true"
    if _NUMERAL_INT.fullmatch(stripped):
        return int(stripped)
    if _NUMERAL_FLOAT.fullmatch(stripped):
        value = float(stripped)
        if math.isfinite(value):
            return value
    return text


def _float(elem: Element, attr: str) -> float:
    raw = elem.get(attr)
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _Bad("malformed", f"{attr}={raw!r} is not a number")
    return value


def _int(elem: Element, attr: str) -> int:
    raw = elem.get(attr)
    if raw is None or not _INT.fullmatch(raw.strip()):
        raise _Bad("malformed", f"{attr}={raw!r} is not an integer")
    return int(raw)


def _points(elem: Element) -> list[list[float]]:
    raw = elem.get("points")
    if raw is None:
        raise _Bad("malformed", "points is missing")
    points = []
    for pair in raw.split(";"):
        xy = pair.split(",")
        try:
            x, y = (float(v) for v in xy) if len(xy) == 2 else (math.nan, math.nan)
        except ValueError:
            x = y = math.nan
        if not (math.isfinite(x) and math.isfinite(y)):
            raise _Bad("malformed", f"points={raw!r} is not x0,y0;x1,y1;…")
        points.append([x, y])
    return points


def _angle(degrees: float) -> float:
    a = math.fmod(degrees, 360.0)
    if a > 180:
        a -= 360
    elif a <= -180:
        a += 360
    return a + 0.0


def _box(elem: Element) -> tuple[str, dict[str, Any]]:
    xtl, ytl, xbr, ybr = (_float(elem, a) for a in ("xtl", "ytl", "xbr", "ybr"))
    width, height = xbr - xtl, ybr - ytl
    if width <= 0 or height <= 0:
        raise _Bad("invalid_geometry", f"a box needs xbr > xtl and ybr > ytl, got {xtl},{ytl} {xbr},{ybr}")
    angle = _angle(_float(elem, "rotation")) if elem.get("rotation") is not None else 0.0
    if angle == 0:
        return "bbox", {"x": xtl, "y": ytl, "width": width, "height": height}
    geometry = {
        "cx": (xtl + xbr) / 2,
        "cy": (ytl + ybr) / 2,
        "width": width,
        "height": height,
        "angle": angle,
    }
    return "rotated_bbox", geometry


def _mask(elem: Element, size: tuple[int, int] | None) -> dict[str, Any]:
    if size is None:
        raise _Bad("invalid_geometry", "the image size is unknown")
    img_w, img_h = size
    left, top, width, height = (_int(elem, a) for a in ("left", "top", "width", "height"))
    raw = elem.get("rle") or ""
    try:
        runs = [int(v) for v in raw.split(",")]
    except ValueError:
        raise _Bad("malformed", "rle must be comma-separated run lengths") from None
    if any(r < 0 for r in runs) or width <= 0 or height <= 0:
        raise _Bad("malformed", "negative run length or empty mask box")
    if sum(runs) != width * height:
        raise _Bad(
            "invalid_geometry",
            f"the RLE covers {sum(runs)} pixels, the {width}x{height} box {width * height}",
        )
    if left < 0 or top < 0 or left + width > img_w or top + height > img_h:
        raise _Bad(
            "invalid_geometry",
            f"the mask box {left},{top} {width}x{height} is outside the {img_w}x{img_h} image",
        )
    flat = np.zeros(width * height, dtype=np.uint8)
    pos = 0
    for k, run in enumerate(runs):
        if k % 2:
            flat[pos : pos + run] = 1
        pos += run
    if not flat.any():
        raise _Bad("invalid_geometry", "the mask is empty")
    full = np.zeros((img_h, img_w), dtype=np.uint8, order="F")
    full[top : top + height, left : left + width] = flat.reshape(height, width)
    rle = mask_util.encode(full)
    counts = rle["counts"]
    return {
        "rle": {
            "size": [img_h, img_w],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
        }
    }


def _skeleton(elem: Element, cls: LabelClass) -> dict[str, Any]:
    if not cls.keypoints:
        raise _Bad("unsupported", f"class {cls.name!r} has no skeleton")
    points: list[list[float]] = [[0, 0, 0] for _ in cls.keypoints]
    for child in elem.findall("points"):
        label = child.get("label")
        if label not in cls.keypoints:
            raise _Bad("unsupported", f"{label!r} is not a keypoint of {cls.name!r}'s skeleton")
        xy = _points(child)
        if len(xy) != 1:
            raise _Bad("invalid_geometry", f"keypoint {label!r} has {len(xy)} points")
        if child.get("outside") == "1":
            continue
        v = 1 if child.get("occluded") == "1" else 2
        points[cls.keypoints.index(label)] = [xy[0][0], xy[0][1], v]
    return {"points": points}


def _shape(elem: Element, cls: LabelClass, size: tuple[int, int] | None) -> tuple[str, dict[str, Any]]:
    tag = elem.tag
    if tag == "box":
        return _box(elem)
    if tag == "polygon":
        points = _points(elem)
        if len(points) < 3:
            raise _Bad("invalid_geometry", f"a polygon needs at least 3 points, got {len(points)}")
        return "polygon", {"points": points, "holes": []}
    if tag == "polyline":
        points = _points(elem)
        if len(points) < 2:
            raise _Bad("invalid_geometry", f"a polyline needs at least 2 points, got {len(points)}")
        return "polyline", {"points": points}
    if tag == "points":
        points = _points(elem)
        if len(points) != len(cls.keypoints):
            raise _Bad(
                "unsupported",
                f"{len(points)} points, but class {cls.name!r} has {len(cls.keypoints)} skeleton keypoints",
            )
        return "keypoints", {"points": [[x, y, 2] for x, y in points]}
    if tag == "skeleton":
        return "keypoints", _skeleton(elem, cls)
    if tag == "tag":
        return "classification", {}
    if tag == "mask":
        return "mask", _mask(elem, size)
    raise _Bad("unsupported", f"{_UNSUPPORTED.get(tag, repr(tag) + ' elements')} are not supported")


def _size(elem: Element, item: ItemInfo) -> tuple[int, int] | None:
    if item.width and item.height:
        return item.width, item.height
    try:
        width, height = int(elem.get("width", "")), int(elem.get("height", ""))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def _image(
    elem: Element, n: int, classes: Mapping[str, LabelClass], index: ItemIndex, result: ImportResult
) -> None:
    image_name = elem.get("name")
    where = f"image[name={image_name}]" if image_name else f"image[{n}]"
    shapes = [child for child in elem if child.tag != "attribute"]
    if not shapes:
        return
    if not image_name:
        result.errors.append(RecordError(where, "malformed", "an image needs a name"))
        return
    item = index.resolve(image_name)
    if item is None:
        result.errors.append(
            RecordError(where, "unmatched_item", f"no item of the project matches {image_name!r}")
        )
        return
    size = _size(elem, item)
    seen: Counter[str] = Counter()
    ids = region_ids()
    regions: list[dict[str, Any]] = []
    for child in shapes:
        shape_where = f"{where} {child.tag}[{seen[child.tag]}]"
        seen[child.tag] += 1
        label = child.get("label")
        cls = classes.get(label) if label is not None else None
        if cls is None:
            result.errors.append(
                RecordError(shape_where, "unknown_class", f"{label!r} is not a class of the schema")
            )
            continue
        try:
            rtype, geometry = _shape(child, cls, size)
        except _Bad as bad:
            result.errors.append(RecordError(shape_where, bad.code, bad.message))
            continue
        attributes: dict[str, Any] = {}
        if "occluded" in cls.attributes and child.get("occluded") in ("0", "1"):
            attributes["occluded"] = child.get("occluded") == "1"
        for attr in child.findall("attribute"):
            attr_name = attr.get("name")
            if attr_name in cls.attributes:
                attributes[attr_name] = typed(attr.text or "")
        regions.append(
            {"id": next(ids), "type": rtype, "label": label, "attributes": attributes, "geometry": geometry}
        )
    if regions:
        result.records.append(ImportedRecord(item=item, regions=regions, where=where))


def import_(data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult:
    result = ImportResult()
    known = class_names(classes)
    depth = 0
    root: Element | None = None
    images = 0
    try:
        for event, elem in iterparse(data, events=("start", "end"), forbid_dtd=True):
            if event == "start":
                if root is None:
                    root = elem
                    if elem.tag != "annotations":
                        result.errors.append(
                            RecordError(
                                "line 1", "malformed", f"the root element is <{elem.tag}>, not <annotations>"
                            )
                        )
                        return result
                depth += 1
                continue
            depth -= 1
            if depth != 1:
                continue
            if elem.tag == "image":
                _image(elem, images, known, index, result)
                images += 1
            elif elem.tag == "track":
                result.errors.append(
                    RecordError(
                        f"track[id={elem.get('id')}]",
                        "unsupported",
                        "tracks (CVAT for video) are not supported; export the task as CVAT for images",
                    )
                )
            assert root is not None
            root.clear()  # the image (and anything before it) is done: keep memory flat
    except ParseError as exc:
        line = exc.position[0] if exc.position else 0
        result.errors.append(RecordError(f"line {line}", "malformed", f"not well-formed XML: {exc}"))
    except DefusedXmlException as exc:
        result.errors.append(
            RecordError(
                "document", "malformed", f"refused: {type(exc).__name__} (DTDs and entities are not allowed)"
            )
        )
    return result
