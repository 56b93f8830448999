"""Label Studio JSON: the task list Label Studio exports ("JSON") and imports, Loupe's migration path.

The file is one JSON array of tasks (https://labelstud.io/guide/export#Label-Studio-JSON-format-of-
annotated-tasks, https://labelstud.io/guide/task_format)::

    [{"id": 1, "data": {"image": "https://…/a.jpg"},
      "annotations": [{"id": 10, "result": [<result>, …], "ground_truth": false, "lead_time": 4.2}],
      "predictions": [{"result": [<result>, …], "score": 0.9, "model_version": "m1"}]}, …]

and a result is `{"id", "from_name", "to_name", "type", "original_width", "original_height",
"image_rotation", "value": {…}}`. Image coordinates are percentages (0-100) of the image size.

Mapping (Label Studio result type → Loupe region):

=====================  =========================================================================
`rectanglelabels`      `bbox`; with a non-zero `value.rotation` a `rotated_bbox`. Label Studio
                       rotates clockwise around the box's top-left corner `(x, y)`; Loupe keeps
                       the centre: `cx = x + w/2·cos θ - h/2·sin θ`, `cy = y + w/2·sin θ + h/2·cos θ`
                       (pixels, y down), `angle` = θ brought into (-180, 180].
`polygonlabels`        `polygon` (`holes` empty; Label Studio has none).
`keypointlabels`       `keypoints` with one visible point, only for a class whose skeleton has
                       exactly one keypoint (a Label Studio keypoint is a single point); else
                       `unsupported`.
`labels` (text item)   `span` `{start, end, text}` (character offsets). HyperText/Paragraphs
                       offsets (XPath strings) are `unsupported`.
`labels` (audio/video) `time_segment` `{start, end}` seconds.
`timelinelabels`       `time_segment`s: each range of 1-based, inclusive frames becomes seconds
                       with the item's frame rate (frames / duration) — `unsupported` when the
                       item lacks either.
`videorectangle`       `video_track`: each `sequence` entry a keyframe, frame made 0-based,
                       percentages made pixels, `enabled: false` → `outside: true`.
`choices`              one `classification` per choice (the choice is the class name).
`textarea`             `transcription` `{text}` (several texts joined by newlines); sharing its id
                       with a region, `transcription.region` is that region; `start`/`end` in the
                       value are kept. Its class: the class named like `from_name`, else the
                       region's class if it allows transcription, else the first class that does.
`relation`             `relation` `{from, to}`; label `labels[0]` (top level, as Label Studio
                       writes it, or `value.labels`), else `"related"` — it must be a class.
`brushlabels`          `unsupported`: Label Studio's own brush RLE is not decoded (export masks
                       from Label Studio as COCO instead).
anything else          `unsupported`.
=====================  =========================================================================

Per-region attributes: Label Studio stores them as further `choices` / `textarea` / `number` /
`rating` / `datetime` results carrying the region's id. One whose `from_name` is an attribute of
the region's class becomes `attributes[from_name]` (choices: one value → that string, `"true"` /
`"false"` → bool, several → a list; textarea: the text; number, rating, datetime: the value);
type coercion to the schema (an int option written as a string, a one-value multi_enum) is the
caller's. Otherwise a `choices` result is a classification and a `textarea` a transcription.

Import: each task's item is `data.loupe_item` when present, else the first value of `data`
(image, video, audio, url, … then the task's `file_upload`) that names a file: a URL's path (or
the `?d=` of Label Studio local-files URLs), percent-decoded, matched by `ItemIndex`, then without
the 8-hex-digit prefix Label Studio gives uploaded files. Every annotation (legacy `completions`
too) is one `ImportedRecord` (`where` `tasks[i].annotations[j]`) without scores; every prediction
another (`tasks[i].predictions[j]`) whose regions carry `score` (the result's, else the
prediction's). Cancelled (skipped) annotations are not imported. Label Studio result ids are kept
as region ids (a duplicate or missing one gets a `region_ids()` id no other region uses; so do
relations, which have none).
Image percentages are converted with the item's probed size when known, else with the result's
`original_width`/`original_height`; a non-zero `image_rotation` is `unsupported`. Each bad result
is a `RecordError` at `tasks[i].annotations[j].result[k]`; the rest of the annotation is kept.
The array is parsed task by task, so a large export is not loaded whole.

Export: one task per item, `data` = `{<image|text|audio|video|url>: <item name, or the text of a
text item whose text is known>, "loupe_item": <item name>}`, the regions as one annotation's
result (`id` = the annotation id) — or, when any region has a `score`, as one prediction's result
with per-result `score`. Stable names: from_name `bbox` (rectangles), `polygon`, `keypoint`,
`label` (spans), `segment` (time segments), `track` (video), `choice` (classifications); a
transcription's from_name is its class (a Label Studio textarea has no label, so the class travels
in the control's name: one TextArea per transcription class); an attribute's from_name is its
name; to_name is the data key. Result ids are the region ids, except that a relation has none in
Label Studio and a transcription of a region carries that region's id, so those two get fresh ids
when imported back. Percentages are rounded to 8 decimals and rotations written in [0, 360), so
export → import → export is identical. Not exported (logged as a warning with counts): masks,
polylines, cuboids, polygons with holes, keypoints other than a single labelled point, image
regions of an item without a known size. A video time segment is written as `timelinelabels`
(whole frames) when the item's frames and duration are known, else as `labels` in seconds.
Video keyframes with `interpolate: false` carry that key in their sequence entry (a Loupe
addition, not part of Label Studio's format, so the round trip keeps it).
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

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

name = "labelstudio"
media_type = "application/json"
extension = ".json"
can_import = True
can_export = True

log = logging.getLogger(__name__)

DECIMALS = 8  # percentages and rotations are rounded to this many decimals on export
_DATA_KEY = {"image": "image", "dicom": "image", "text": "text", "audio": "audio", "video": "video"}
_TIME_MODALITIES = frozenset({"audio", "video"})
_SHAPES = frozenset(
    {
        "rectanglelabels",
        "rectangle",
        "polygonlabels",
        "polygon",
        "keypointlabels",
        "keypoint",
        "labels",
        "timelinelabels",
        "videorectangle",
        "brushlabels",
        "brush",
        "ellipselabels",
        "ellipse",
        "hypertextlabels",
        "paragraphlabels",
        "timeserieslabels",
    }
)
_ATTRIBUTE_TYPES = frozenset({"choices", "textarea", "number", "rating", "datetime", "taxonomy"})
_UPLOAD_PREFIX = re.compile(r"[0-9a-f]{8}-(.+)")


# --- numbers -----------------------------------------------------------------------------------


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _round(value: float) -> float:
    return round(value, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _pct(px: float, size: int) -> float:
    return _round(px * 100 / size)


def _px(pct: float, size: float) -> float:
    return pct * size / 100


def _cos_sin(degrees: float) -> tuple[float, float]:
    """cos and sin, exact for multiples of 90°."""
    quarter = degrees / 90
    if quarter == int(quarter):
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(quarter) % 4]
    rad = math.radians(degrees)
    return math.cos(rad), math.sin(rad)


def _angle(degrees: float) -> float:
    """Degrees brought into (-180, 180]."""
    a = math.fmod(degrees, 360.0)
    if a > 180:
        a -= 360
    elif a <= -180:
        a += 360
    return a + 0.0


def _rotation(angle: float) -> float:
    """A Loupe angle as Label Studio's rotation in [0, 360), rounded."""
    r = _round(angle % 360)
    return 0.0 if r >= 360 else r


# --- export ------------------------------------------------------------------------------------


def _attribute_result(attr: str, value: Any) -> tuple[str, dict[str, Any]] | None:
    if isinstance(value, bool):
        return "choices", {"choices": ["true" if value else "false"]}
    if _is_num(value):
        return "number", {"number": value}
    if isinstance(value, str):
        return "choices", {"choices": [value]}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "choices", {"choices": list(value)}
    return None


def _image_value(region: Mapping[str, Any], width: int, height: int) -> tuple[str, str, dict[str, Any]] | str:
    """(result type, from_name, value) of an image region, or why it is skipped."""
    geometry = region.get("geometry") or {}
    label = region.get("label")
    rtype = region.get("type")
    if rtype == "bbox":
        value = {
            "x": _pct(geometry["x"], width),
            "y": _pct(geometry["y"], height),
            "width": _pct(geometry["width"], width),
            "height": _pct(geometry["height"], height),
            "rotation": 0,
            "rectanglelabels": [label],
        }
        return "rectanglelabels", "bbox", value
    if rtype == "rotated_bbox":
        cx, cy, w, h = geometry["cx"], geometry["cy"], geometry["width"], geometry["height"]
        rotation = _rotation(geometry.get("angle", 0))
        cos, sin = _cos_sin(rotation)
        x = cx - w / 2 * cos + h / 2 * sin
        y = cy - w / 2 * sin - h / 2 * cos
        value = {
            "x": _pct(x, width),
            "y": _pct(y, height),
            "width": _pct(w, width),
            "height": _pct(h, height),
            "rotation": rotation,
            "rectanglelabels": [label],
        }
        return "rectanglelabels", "bbox", value
    if rtype == "polygon":
        if geometry.get("holes"):
            return "polygon with holes"
        points = [[_pct(p[0], width), _pct(p[1], height)] for p in geometry["points"]]
        return "polygonlabels", "polygon", {"points": points, "closed": True, "polygonlabels": [label]}
    # keypoints
    points = geometry.get("points") or []
    if len(points) != 1 or (len(points[0]) > 2 and points[0][2] == 0):
        return "keypoints other than one labelled point"
    x, y = points[0][0], points[0][1]
    return (
        "keypointlabels",
        "keypoint",
        {"x": _pct(x, width), "y": _pct(y, height), "width": 1.0, "keypointlabels": [label]},
    )


def _region_results(region: Mapping[str, Any], item: ItemInfo, skipped: Counter[str]) -> list[dict[str, Any]]:
    rtype = region.get("type")
    geometry = region.get("geometry") or {}
    label = region.get("label")
    to_name = _DATA_KEY.get(item.modality, "url")
    rid = region.get("id")
    result: dict[str, Any]

    if rtype in ("bbox", "rotated_bbox", "polygon", "keypoints"):
        if not item.width or not item.height:
            skipped["image regions of an item without a known size"] += 1
            return []
        converted = _image_value(region, item.width, item.height)
        if isinstance(converted, str):
            skipped[converted] += 1
            return []
        ls_type, from_name, value = converted
        result = {"id": rid, "type": ls_type, "from_name": from_name, "to_name": to_name}
        result.update({"original_width": item.width, "original_height": item.height, "image_rotation": 0})
        result["value"] = value
    elif rtype == "span":
        start, end = geometry["start"], geometry["end"]
        value = {"start": start, "end": end}
        text = item.text[start:end] if item.text is not None else geometry.get("text")
        if isinstance(text, str):
            value["text"] = text
        value["labels"] = [label]
        result = {"id": rid, "type": "labels", "from_name": "label", "to_name": to_name, "value": value}
    elif rtype == "time_segment":
        start, end = geometry["start"], geometry["end"]
        if item.modality == "video" and item.frames and item.duration:
            fps = item.frames / item.duration
            first = round(start * fps) + 1
            last = max(first, round(end * fps))
            value = {"ranges": [{"start": first, "end": last}], "timelinelabels": [label]}
            result = {"id": rid, "type": "timelinelabels", "from_name": "segment", "to_name": to_name}
        else:
            value = {"start": start, "end": end, "labels": [label]}
            result = {"id": rid, "type": "labels", "from_name": "segment", "to_name": to_name}
        result["value"] = value
    elif rtype == "video_track":
        if not item.width or not item.height:
            skipped["video tracks of an item without a known size"] += 1
            return []
        track_fps = item.frames / item.duration if item.frames and item.duration else None
        sequence = []
        for kf in geometry["keyframes"]:
            entry: dict[str, Any] = {
                "frame": kf["frame"] + 1,
                "x": _pct(kf["x"], item.width),
                "y": _pct(kf["y"], item.height),
                "width": _pct(kf["width"], item.width),
                "height": _pct(kf["height"], item.height),
                "rotation": 0,
                "enabled": not kf.get("outside", False),
            }
            if track_fps:
                entry["time"] = _round((kf["frame"] + 1) / track_fps)
            if kf.get("interpolate", True) is False:
                entry["interpolate"] = False  # not Label Studio's; kept for the round trip
            sequence.append(entry)
        value = {}
        if item.frames:
            value["framesCount"] = item.frames
        if item.duration:
            value["duration"] = item.duration
        value.update({"sequence": sequence, "labels": [label]})
        result = {
            "id": rid,
            "type": "videorectangle",
            "from_name": "track",
            "to_name": to_name,
            "value": value,
        }
    elif rtype == "classification":
        value = {"choices": [label]}
        result = {"id": rid, "type": "choices", "from_name": "choice", "to_name": to_name, "value": value}
    elif rtype == "transcription":
        tied = geometry.get("region")
        value = {}
        for key in ("start", "end"):
            if key in geometry:
                value[key] = geometry[key]
        value["text"] = [geometry.get("text", "")]
        result = {
            "id": tied if isinstance(tied, str) else rid,
            "type": "textarea",
            "from_name": label,  # the class: Label Studio's textarea has no label of its own
            "to_name": to_name,
            "value": value,
        }
    elif rtype == "relation":
        result = {
            "from_id": geometry.get("from"),
            "to_id": geometry.get("to"),
            "type": "relation",
            "direction": "right",
            "labels": [label],
        }
    else:
        skipped[f"{rtype} regions (no Label Studio equivalent)"] += 1
        return []

    if "score" in region:
        result["score"] = region["score"]
    results = [result]
    if rtype not in ("relation", "transcription"):
        for attr, attr_value in (region.get("attributes") or {}).items():
            converted_attr = _attribute_result(attr, attr_value)
            if converted_attr is None:
                if attr_value is not None:
                    skipped["attribute values of another type"] += 1
                continue
            ls_type, value = converted_attr
            results.append(
                {"id": rid, "type": ls_type, "from_name": attr, "to_name": to_name, "value": value}
            )
    return results


def _task(export_item: ExportItem, skipped: Counter[str]) -> dict[str, Any]:
    item = export_item.item
    key = _DATA_KEY.get(item.modality, "url")
    shown = item.text if key == "text" and item.text is not None else item.name
    results: list[dict[str, Any]] = []
    for region in export_item.regions:
        results.extend(_region_results(region, item, skipped))
    task: dict[str, Any] = {"id": item.id, "data": {key: shown, "loupe_item": item.name}}
    if any("score" in region for region in export_item.regions):
        task["annotations"] = []
        task["predictions"] = [{"result": results}]
    else:
        annotation: dict[str, Any] = {}
        if export_item.annotation_id is not None:
            annotation["id"] = export_item.annotation_id
        annotation["result"] = results
        task["annotations"] = [annotation]
        task["predictions"] = []
    return task


def export(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> None:
    """Writes `[`, each task as it comes, `]`: one task in memory at a time."""
    skipped: Counter[str] = Counter()
    out.write(b"[")
    separator = b"\n"
    for export_item in items:
        task = _task(export_item, skipped)
        out.write(separator + json.dumps(task, ensure_ascii=False, allow_nan=False).encode("utf-8"))
        separator = b",\n"
    out.write(b"\n]\n")
    if skipped:
        log.warning(
            "Label Studio export skipped: %s", ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        )


# --- streaming JSON array ----------------------------------------------------------------------


class _JsonSyntaxError(Exception):
    pass


class _ArrayReader:
    """The elements of a top-level JSON array (or a lone object), decoded one at a time."""

    _WS = re.compile(r"[ \t\n\r]*")

    def __init__(self, data: IO[bytes]) -> None:
        self._data = data
        self._decoder = json.JSONDecoder()
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._started = False  # a BOM is dropped from the first text
        self._bad: str | None = None  # the input stops being UTF-8 after what was decoded
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._chunk = 1 << 16
        self.count = 0  # elements decoded so far
        self.in_array = False

    def _more(self) -> bool:
        """Reads and decodes the next chunk; False at the end of the input."""
        if self._bad is not None:
            raise _JsonSyntaxError(self._bad)
        if self._eof:
            return False
        raw = self._data.read(self._chunk)
        try:
            text = self._text.decode(raw or b"", final=not raw)
        except UnicodeDecodeError as exc:
            # Keep what decodes; the error is raised once the parse needs what follows.
            text = exc.object[: exc.start].decode("utf-8")
            self._bad = f"not UTF-8: {exc.reason}"
            raw = b""
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        if not raw:
            self._eof = True
        return True

    def _peek(self) -> str | None:
        while True:
            match = self._WS.match(self._buf, self._pos)
            assert match is not None
            self._pos = match.end()
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return None

    def _value(self) -> Any:
        while True:
            try:
                obj, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if self._bad is not None:
                    raise _JsonSyntaxError(self._bad) from None
                if self._eof:
                    raise _JsonSyntaxError(
                        f"{exc.msg} at character {exc.pos - self._pos} of the element"
                    ) from None
                self._chunk = min(self._chunk * 2, 1 << 26)  # a large element: read more per try
                self._more()
                continue
            if end == len(self._buf) and not self._eof:
                self._more()  # a number or literal may go on in the next chunk
                continue
            self._chunk = 1 << 16
            self._pos = end
            return obj

    def __iter__(self) -> Iterator[Any]:
        first = self._peek()
        if first is None:
            raise _JsonSyntaxError("the file is empty")
        if first == "{":
            value = self._value()
            self.count = 1
            yield value
            if self._peek() is not None:
                raise _JsonSyntaxError("text after the task")
            return
        if first != "[":
            raise _JsonSyntaxError("expected a JSON array of tasks")
        self._pos += 1
        self.in_array = True
        if self._peek() == "]":
            self._pos += 1
            if self._peek() is not None:
                raise _JsonSyntaxError("text after the array")
            return
        while True:
            self._peek()
            value = self._value()
            self.count += 1
            yield value
            nxt = self._peek()
            if nxt == ",":
                self._pos += 1
                continue
            if nxt == "]":
                self._pos += 1
                if self._peek() is not None:
                    raise _JsonSyntaxError("text after the array")
                return
            raise _JsonSyntaxError("expected `,` or `]` after a task")


# --- import ------------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _candidates(task: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    explicit = data.get("loupe_item")
    if isinstance(explicit, str) and explicit:
        return [explicit]
    values: list[str] = []
    keys = [
        "image",
        "video",
        "audio",
        "url",
        *(k for k in data if k not in ("image", "video", "audio", "url")),
    ]
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value and len(value) <= 4096 and "\n" not in value:
            if key == "text" and any(ch.isspace() for ch in value):
                continue  # the text itself, not a file name
            values.append(value)
    upload = task.get("file_upload")
    if isinstance(upload, str) and upload:
        values.append(upload)
    names: list[str] = []
    for value in values:
        parts = urlsplit(value)
        path = unquote(parts.path)
        local = parse_qs(parts.query).get("d") if parts.query else None
        if local:
            path = local[0]
        path = path.lstrip("/")
        if not path:
            continue
        names.append(path)
        stripped = _UPLOAD_PREFIX.fullmatch(posixpath.basename(path))
        if stripped:
            names.append(stripped.group(1))
    return names


def _resolve(
    task: Mapping[str, Any], data: Mapping[str, Any], index: ItemIndex
) -> tuple[ItemInfo | None, str]:
    names = _candidates(task, data)
    for candidate in names:
        item = index.resolve(candidate)
        if item is not None:
            return item, candidate
    return None, names[0] if names else ""


def _number(value: Mapping[str, Any], key: str) -> float:
    v = value.get(key)
    if not _is_num(v):
        raise _Bad("malformed", f"{key} must be a number")
    assert isinstance(v, int | float)
    return v


def _ls_id(result: Mapping[str, Any]) -> str | None:
    rid = result.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    return rid if isinstance(rid, str) and rid and len(rid) <= 64 else None


class _Annotation:
    """Converts one annotation's (or prediction's) result list into regions."""

    def __init__(
        self,
        results: list[Any],
        item: ItemInfo,
        classes: Mapping[str, LabelClass],
        where: str,
        prediction: bool,
        score: float | None,
        errors: list[RecordError],
    ) -> None:
        self.results = results
        self.prediction = prediction
        self.item = item
        self.classes = classes
        self.where = where
        self.score = score
        self.errors = errors
        self.used = {rid for r in results if isinstance(r, dict) and (rid := _ls_id(r)) is not None}
        self.taken: set[str] = set()
        self._fresh = region_ids()
        self.by_ls: dict[str, list[dict[str, Any]]] = {}
        self.dropped: set[str] = set()

    def _new_id(self, ls_id: str | None) -> str:
        if ls_id is not None and ls_id not in self.taken:
            self.taken.add(ls_id)
            return ls_id
        for candidate in self._fresh:
            if candidate not in self.used and candidate not in self.taken:
                self.taken.add(candidate)
                return candidate
        raise AssertionError("unreachable")

    def _region(
        self, result: Mapping[str, Any], ls_id: str | None, rtype: str, label: str, geometry: dict[str, Any]
    ) -> dict[str, Any]:
        region: dict[str, Any] = {
            "id": self._new_id(ls_id),
            "type": rtype,
            "label": label,
            "attributes": {},
            "geometry": geometry,
        }
        score = result.get("score")
        if self.prediction and (_is_num(score) or self.score is not None):
            region["score"] = score if _is_num(score) else self.score
        return region

    def _error(self, k: int, code: str, message: str) -> None:
        self.errors.append(RecordError(f"{self.where}.result[{k}]", code, message))

    # Shapes ------------------------------------------------------------------------------------

    def _size(self, result: Mapping[str, Any]) -> tuple[float, float]:
        rotation = result.get("image_rotation")
        if rotation not in (None, 0):
            raise _Bad("unsupported", f"image_rotation {rotation!r}: only upright images are supported")
        width: Any = self.item.width
        height: Any = self.item.height
        if not width or not height:
            width, height = result.get("original_width"), result.get("original_height")
        if not (_is_num(width) and _is_num(height) and width > 0 and height > 0):
            raise _Bad(
                "invalid_geometry", "the image size is unknown (no item size, no original_width/height)"
            )
        return width, height

    def _shape(
        self, ls_type: str, result: Mapping[str, Any], value: Mapping[str, Any]
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """(label, Loupe type, geometry) for each label of a region result."""
        if ls_type in ("brushlabels", "brush"):
            raise _Bad("unsupported", "brush masks (Label Studio RLE) are not converted; export them as COCO")
        if ls_type in ("ellipselabels", "ellipse", "hypertextlabels", "paragraphlabels", "timeserieslabels"):
            raise _Bad("unsupported", f"{ls_type} results have no Loupe region type")

        labels = value.get("labels") if "sequence" in value else value.get(ls_type, value.get("labels"))
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise _Bad("malformed", "the result has no label")

        if "sequence" in value or ls_type == "videorectangle":
            return [(label, "video_track", self._track(result, value)) for label in labels]
        if ls_type in ("rectanglelabels", "rectangle"):
            rtype, geometry = self._rectangle(result, value)
        elif ls_type in ("polygonlabels", "polygon"):
            rtype, geometry = "polygon", self._polygon(result, value)
        elif ls_type in ("keypointlabels", "keypoint"):
            for label in labels:
                cls = self.classes.get(label)
                if cls is not None and len(cls.keypoints) != 1:
                    raise _Bad(
                        "unsupported",
                        f"a Label Studio keypoint is one point; class {label!r} has "
                        f"{len(cls.keypoints)} keypoints in its skeleton",
                    )
            width, height = self._size(result)
            x, y = _number(value, "x"), _number(value, "y")
            rtype, geometry = "keypoints", {"points": [[_px(x, width), _px(y, height), 2]]}
        elif ls_type == "timelinelabels":
            return [(label, "time_segment", g) for g in self._timeline(value) for label in labels]
        else:  # labels
            rtype, geometry = self._labels(value)
        return [(label, rtype, geometry) for label in labels]

    def _rectangle(self, result: Mapping[str, Any], value: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        width, height = self._size(result)
        x, y = _px(_number(value, "x"), width), _px(_number(value, "y"), height)
        w, h = _px(_number(value, "width"), width), _px(_number(value, "height"), height)
        if w <= 0 or h <= 0:
            raise _Bad("invalid_geometry", "width and height must be > 0")
        rotation = value.get("rotation") or 0
        if not _is_num(rotation):
            raise _Bad("malformed", "value.rotation must be a number")
        angle = _angle(rotation)
        if angle == 0:
            return "bbox", {"x": x, "y": y, "width": w, "height": h}
        cos, sin = _cos_sin(rotation)
        cx = x + w / 2 * cos - h / 2 * sin
        cy = y + w / 2 * sin + h / 2 * cos
        return "rotated_bbox", {"cx": cx, "cy": cy, "width": w, "height": h, "angle": angle}

    def _polygon(self, result: Mapping[str, Any], value: Mapping[str, Any]) -> dict[str, Any]:
        width, height = self._size(result)
        points = value.get("points")
        if not isinstance(points, list) or not all(
            isinstance(p, list) and len(p) == 2 and _is_num(p[0]) and _is_num(p[1]) for p in points
        ):
            raise _Bad("malformed", "value.points must be a list of [x, y] numbers")
        if len(points) < 3:
            raise _Bad("invalid_geometry", f"a polygon needs at least 3 points, got {len(points)}")
        return {"points": [[_px(p[0], width), _px(p[1], height)] for p in points], "holes": []}

    def _labels(self, value: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        start, end = value.get("start"), value.get("end")
        if self.item.modality in _TIME_MODALITIES:
            s, e = _number(value, "start"), _number(value, "end")
            if not 0 <= s < e:
                raise _Bad("invalid_geometry", f"a time segment needs 0 <= start < end, got {s}..{e}")
            return "time_segment", {"start": s, "end": e}
        if isinstance(start, str) or isinstance(end, str) or "startOffset" in value:
            raise _Bad("unsupported", "HyperText/Paragraphs offsets (XPath) are not converted")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise _Bad("malformed", "value.start and value.end must be character offsets")
        assert isinstance(start, int) and isinstance(end, int)
        if not 0 <= start < end:
            raise _Bad("invalid_geometry", f"a span needs 0 <= start < end, got {start}..{end}")
        geometry: dict[str, Any] = {"start": start, "end": end}
        if isinstance(value.get("text"), str):
            geometry["text"] = value["text"]
        return "span", geometry

    def _timeline(self, value: Mapping[str, Any]) -> list[dict[str, Any]]:
        frames, duration = self.item.frames, self.item.duration
        if not frames or not duration:
            raise _Bad(
                "unsupported", "timelinelabels need the item's frame count and duration to become seconds"
            )
        fps = frames / duration
        ranges = value.get("ranges")
        if not isinstance(ranges, list) or not ranges:
            raise _Bad("malformed", "value.ranges must be a non-empty list")
        segments = []
        for r in ranges:
            if not isinstance(r, dict):
                raise _Bad("malformed", "each range must be an object {start, end}")
            first, last = r.get("start"), r.get("end")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (first, last)):
                raise _Bad("malformed", "range start and end must be frame numbers")
            assert isinstance(first, int) and isinstance(last, int)
            if not 1 <= first <= last:
                raise _Bad("invalid_geometry", f"a frame range needs 1 <= start <= end, got {first}..{last}")
            segments.append({"start": (first - 1) / fps, "end": last / fps})
        return segments

    def _track(self, result: Mapping[str, Any], value: Mapping[str, Any]) -> dict[str, Any]:
        width: Any = self.item.width
        height: Any = self.item.height
        if not width or not height:
            width, height = result.get("original_width"), result.get("original_height")
        if not (_is_num(width) and _is_num(height) and width > 0 and height > 0):
            raise _Bad("invalid_geometry", "the video's frame size is unknown")
        sequence = value.get("sequence")
        if not isinstance(sequence, list) or not sequence:
            raise _Bad("malformed", "value.sequence must be a non-empty list")
        keyframes: dict[int, dict[str, Any]] = {}
        for entry in sequence:
            if not isinstance(entry, dict):
                raise _Bad("malformed", "each sequence entry must be an object")
            frame = entry.get("frame")
            if not isinstance(frame, int) or isinstance(frame, bool) or frame < 1:
                raise _Bad("invalid_geometry", f"frame must be a 1-based frame number, got {frame!r}")
            if entry.get("rotation") not in (None, 0):
                raise _Bad("unsupported", "rotated video boxes are not supported")
            if frame - 1 in keyframes:
                raise _Bad("invalid_geometry", f"frame {frame} appears twice in the sequence")
            interpolate = entry.get("interpolate", True)
            keyframes[frame - 1] = {
                "frame": frame - 1,
                "x": _px(_number(entry, "x"), width),
                "y": _px(_number(entry, "y"), height),
                "width": _px(_number(entry, "width"), width),
                "height": _px(_number(entry, "height"), height),
                "outside": entry.get("enabled", True) is False,
                "interpolate": interpolate if isinstance(interpolate, bool) else True,
            }
        return {"keyframes": [keyframes[f] for f in sorted(keyframes)]}

    # Per-region results ------------------------------------------------------------------------

    @staticmethod
    def _attribute_value(ls_type: str, value: Mapping[str, Any]) -> Any:
        if ls_type == "choices":
            choices = value.get("choices")
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise _Bad("malformed", "value.choices must be a list of strings")
            if len(choices) == 1:
                return {"true": True, "false": False}.get(choices[0], choices[0])
            return list(choices)
        if ls_type == "textarea":
            return _text(value)
        if ls_type not in value:
            raise _Bad("malformed", f"value.{ls_type} is missing")
        return value[ls_type]

    def _transcription_label(self, from_name: Any, targets: list[dict[str, Any]]) -> str:
        if isinstance(from_name, str) and from_name in self.classes:
            return from_name
        for target in targets:
            if "transcription" in self.classes[target["label"]].tools:
                return str(target["label"])
        for cls in self.classes.values():
            if "transcription" in cls.tools:
                return cls.name
        raise _Bad("unknown_class", "no class of the schema allows transcription")

    # Driver ------------------------------------------------------------------------------------

    def convert(self) -> list[dict[str, Any]]:
        slots: list[list[dict[str, Any]]] = [[] for _ in self.results]
        # Pass 1: results that are regions (their ids are what the others refer to).
        for k, result in enumerate(self.results):
            if not isinstance(result, dict):
                self._error(k, "malformed", "a result must be an object")
                continue
            ls_type, value = result.get("type"), result.get("value")
            if not (ls_type in _SHAPES or (isinstance(value, dict) and "sequence" in value)):
                continue
            ls_id = _ls_id(result)
            try:
                if not isinstance(value, dict):
                    raise _Bad("malformed", "value must be an object")
                made = self._shape(str(ls_type), result, value)
            except _Bad as bad:
                self._error(k, bad.code, bad.message)
                if ls_id is not None:
                    self.dropped.add(ls_id)
                continue
            for label, rtype, geometry in made:
                if label not in self.classes:
                    self._error(k, "unknown_class", f"{label!r} is not a class of the schema")
                    continue
                slots[k].append(self._region(result, ls_id, rtype, label, dict(geometry)))
            if ls_id is not None:
                if slots[k]:
                    self.by_ls.setdefault(ls_id, slots[k])
                else:
                    self.dropped.add(ls_id)

        # Pass 2: attributes, classifications, transcriptions, in order.
        relations: list[int] = []
        for k, result in enumerate(self.results):
            if not isinstance(result, dict):
                continue
            ls_type, value = result.get("type"), result.get("value")
            if ls_type in _SHAPES or (isinstance(value, dict) and "sequence" in value):
                continue
            if ls_type == "relation":
                relations.append(k)
                continue
            ls_id = _ls_id(result)
            if ls_id is not None and ls_id in self.dropped:
                continue  # belongs to a region already reported
            try:
                if not isinstance(value, dict):
                    raise _Bad("malformed", "value must be an object")
                slots[k] = self._per_region(str(ls_type), result, value, ls_id)
            except _Bad as bad:
                self._error(k, bad.code, bad.message)

        # Pass 3: relations, now that every region has its Loupe id.
        for k in relations:
            try:
                slots[k] = [self._relation(self.results[k])]
            except _Bad as bad:
                self._error(k, bad.code, bad.message)
        return [region for slot in slots for region in slot]

    def _per_region(
        self, ls_type: str, result: Mapping[str, Any], value: Mapping[str, Any], ls_id: str | None
    ) -> list[dict[str, Any]]:
        targets = self.by_ls.get(ls_id, []) if ls_id is not None else []
        from_name = result.get("from_name")
        with_attribute = [t for t in targets if from_name in self.classes[t["label"]].attributes]
        if with_attribute and ls_type in _ATTRIBUTE_TYPES:
            attr_value = self._attribute_value(ls_type, value)
            for target in with_attribute:
                target["attributes"][from_name] = attr_value
            return []
        if ls_type == "textarea":
            geometry: dict[str, Any] = {"text": _text(value)}
            if targets:
                geometry["region"] = targets[0]["id"]
            for key in ("start", "end"):
                if _is_num(value.get(key)):
                    geometry[key] = value[key]
            label = self._transcription_label(from_name, targets)
            region = self._region(result, None if targets else ls_id, "transcription", label, geometry)
            if not targets and ls_id is not None:
                self.by_ls[ls_id] = [region]
            return [region]
        if ls_type == "choices":
            choices = value.get("choices")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
                raise _Bad("malformed", "value.choices must be a non-empty list of strings")
            unknown = [c for c in choices if c not in self.classes]
            if unknown:
                raise _Bad("unknown_class", f"{unknown[0]!r} is not a class of the schema")
            made = []
            for n, choice in enumerate(choices):
                wanted = ls_id if n == 0 and not targets else None
                made.append(self._region(result, wanted, "classification", choice, {}))
            if not targets and ls_id is not None:
                self.by_ls[ls_id] = made
            return made
        if ls_type in _ATTRIBUTE_TYPES:
            raise _Bad("unsupported", f"a {ls_type} result that is no attribute of its region's class")
        raise _Bad("unsupported", f"result type {ls_type!r} has no Loupe region type")

    def _relation(self, result: Mapping[str, Any]) -> dict[str, Any]:
        ends = []
        for key in ("from_id", "to_id"):
            ref = result.get(key)
            ref = str(ref) if isinstance(ref, int) and not isinstance(ref, bool) else ref
            if not isinstance(ref, str) or ref not in self.by_ls:
                raise _Bad("invalid_geometry", f"{key} {ref!r} is not a region of this annotation")
            ends.append(self.by_ls[ref][0]["id"])
        labels = result.get("labels")
        value = result.get("value")
        if not labels and isinstance(value, dict):
            labels = value.get("labels")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise _Bad("malformed", "labels must be a list of strings")
        label = labels[0] if labels else "related"
        if label not in self.classes:
            raise _Bad("unknown_class", f"relation label {label!r} is not a class of the schema")
        return self._region(result, None, "relation", label, {"from": ends[0], "to": ends[1]})


def _text(value: Mapping[str, Any]) -> str:
    text = value.get("text")
    if isinstance(text, str):
        return text
    if isinstance(text, list) and all(isinstance(t, str) for t in text):
        return "\n".join(text)
    raise _Bad("malformed", "value.text must be a string or a list of strings")


def _import_task(
    i: int, task: Any, classes: Mapping[str, LabelClass], index: ItemIndex, result: ImportResult
) -> None:
    where = f"tasks[{i}]"
    if not isinstance(task, dict):
        result.errors.append(RecordError(where, "malformed", "a task must be an object"))
        return
    data = task.get("data")
    if not isinstance(data, dict):
        result.errors.append(RecordError(f"{where}.data", "malformed", "`data` must be an object"))
        return
    item, tried = _resolve(task, data, index)
    if item is None:
        message = f"no item of the project matches {tried!r}" if tried else "`data` names no file"
        result.errors.append(RecordError(where, "unmatched_item", message))
        return
    for key in ("annotations", "completions", "predictions"):
        entries = task.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            result.errors.append(RecordError(f"{where}.{key}", "malformed", f"`{key}` must be a list"))
            continue
        for j, entry in enumerate(entries):
            ewhere = f"{where}.{key}[{j}]"
            if not isinstance(entry, dict):
                result.errors.append(RecordError(ewhere, "malformed", "an annotation must be an object"))
                continue
            if key != "predictions" and entry.get("was_cancelled") is True:
                continue
            results = entry.get("result")
            if not isinstance(results, list):
                result.errors.append(RecordError(f"{ewhere}.result", "malformed", "`result` must be a list"))
                continue
            score: float | None = None
            if key == "predictions":
                score = entry.get("score") if _is_num(entry.get("score")) else None
            regions, problems = results_to_regions(
                results, item, classes, prediction=key == "predictions", score=score, where=ewhere
            )
            result.errors.extend(problems)
            if regions or not results:
                result.records.append(ImportedRecord(item=item, regions=regions, where=ewhere))


def import_(data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult:
    result = ImportResult()
    known = class_names(classes)
    reader = _ArrayReader(data)
    try:
        for task in reader:
            _import_task(reader.count - 1, task, known, index, result)
    except _JsonSyntaxError as exc:
        where = f"tasks[{reader.count}]" if reader.in_array else "tasks"
        result.errors.append(RecordError(where, "malformed", f"not a Label Studio JSON export: {exc}"))
    return result


def results_to_regions(
    results: list[Any],
    item: ItemInfo,
    classes: Mapping[str, LabelClass],
    *,
    prediction: bool,
    score: float | None = None,
    where: str = "",
) -> tuple[list[dict[str, Any]], list[RecordError]]:
    """One Label Studio result list (an annotation's or a prediction's) as Loupe regions, with
    what could not be converted. The import uses it per record; model servers speaking the Label
    Studio ML-backend protocol (labeling/inference/remote.py) per answer."""
    errors: list[RecordError] = []
    regions = _Annotation(results, item, classes, where, prediction, score, errors).convert()
    return regions, errors
