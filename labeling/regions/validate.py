"""Region validation: every region of an annotation checked against its schema and the item's facts.

`validate_regions` walks the list once, collecting every problem with the region's index and the
dotted path of the field, and returns the regions normalized (attribute defaults filled, numbers
as floats except frame indices, offsets and visibilities, masks as compressed RLE strings, geometry
clipped when the schema says so). Polygons are checked by shapely in one vectorized batch at the
end, so a page of polygons costs one GEOS call per check instead of one per polygon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from labeling.regions.geometry import clamp_points, clip_polygon, clip_polyline, rle_runs, rle_string
from labeling.regions.spec import TOOLS, ClassDef, Schema, ValueProblem, is_number, show_value

ID_MAX = 64
# Floats that should sit on an edge land a hair beyond it after arithmetic in clients.
EPSILON = 1e-6
_LIMIT = 10**308
# COCO RLE counts are 32-bit: no run, and so no mask, can be longer.
_MASK_PIXELS_MAX = 2**32 - 1

_IMAGE_LIKE = frozenset({"image", "dicom"})
# Region type → the modalities it fits; None: any item.
TYPE_MODALITIES: dict[str, frozenset[str] | None] = {
    "classification": None,
    "bbox": _IMAGE_LIKE,
    "rotated_bbox": _IMAGE_LIKE,
    "polygon": _IMAGE_LIKE,
    "polyline": _IMAGE_LIKE,
    "keypoints": _IMAGE_LIKE,
    "mask": _IMAGE_LIKE,
    "span": frozenset({"text"}),
    "relation": None,
    "transcription": None,
    "time_segment": frozenset({"audio", "video"}),
    "video_track": frozenset({"video"}),
    "cuboid": frozenset({"pointcloud", "multisensor"}),
}
_ANYWHERE = frozenset(kind for kind, modalities in TYPE_MODALITIES.items() if modalities is None)
_TYPES_BY_MODALITY: dict[str, frozenset[str]] = {
    modality: frozenset(
        kind for kind, modalities in TYPE_MODALITIES.items() if modalities is None or modality in modalities
    )
    for modality in ("image", "dicom", "text", "audio", "video", "pointcloud", "multisensor", "pdf")
}

_REGION_KEYS = frozenset({"id", "type", "label", "attributes", "geometry"})
_PREDICTION_KEYS = _REGION_KEYS | {"score"}
_BBOX = frozenset({"x", "y", "width", "height"})
_ROTATED = frozenset({"cx", "cy", "width", "height", "angle"})
_POINTS = frozenset({"points"})
_POINTS_HOLES = frozenset({"points", "holes"})
_START_END = frozenset({"start", "end"})
_FROM_TO = frozenset({"from", "to"})
_KEYFRAME_REQUIRED = ("frame", "x", "y", "width", "height")
_KEYFRAME_KEYS = frozenset({*_KEYFRAME_REQUIRED, "outside", "interpolate"})


class RegionsInvalid(Exception):
    """The regions break the schema or the item.

    `errors` lists every problem as {region, field, code, message}.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} problem(s) in the regions: {errors[0]['message']}")
        self.errors = errors


@dataclass(frozen=True)
class ItemFacts:
    """What region validation needs to know about an item: its modality and probed size facts."""

    modality: str
    width: int | None = None
    height: int | None = None
    length: int | None = None
    duration: float | None = None
    frames: int | None = None
    text: str | None = None

    @classmethod
    def from_item(cls, modality: str, meta: dict[str, Any], text: str | None = None) -> ItemFacts:
        """Facts from an item's probed `meta`; a fact missing or estimated is left unchecked (None)."""
        meta = meta if isinstance(meta, dict) else {}
        if modality == "image":
            return cls(modality, width=_count(meta.get("width")), height=_count(meta.get("height")))
        if modality == "dicom":
            return cls(modality, width=_count(meta.get("columns")), height=_count(meta.get("rows")))
        if modality == "video":
            frames = None if meta.get("frames_estimated") else _count(meta.get("frames"))
            return cls(
                modality,
                width=_count(meta.get("width")),
                height=_count(meta.get("height")),
                duration=_seconds(meta.get("duration_s")),
                frames=frames,
            )
        if modality == "audio":
            return cls(modality, duration=_seconds(meta.get("duration_s")))
        if modality == "text":
            length = _count(meta.get("length"), allow_zero=True)
            if length is None and text is not None:
                length = len(text)
            return cls(modality, length=length, text=text)
        return cls(modality)


def _count(value: Any, *, allow_zero: bool = False) -> int | None:
    if type(value) is not int or value < (0 if allow_zero else 1):
        return None
    return value


def _seconds(value: Any) -> float | None:
    return float(value) if is_number(value) and value > 0 else None


def _is_num(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return bool(value - value == 0.0)
    return kind is int and -_LIMIT < value < _LIMIT


def validate_regions(
    regions: Any, schema: Schema, item: ItemFacts, *, prediction: bool = False
) -> list[dict[str, Any]]:
    """Check regions against the schema and the item; return them normalized or raise RegionsInvalid.

    With `prediction`, a region may carry a `score` in [0, 1]; otherwise `score` is refused.
    """
    result, errors = validate_many([(regions, item)], schema, prediction=prediction)[0]
    if errors or result is None:
        raise RegionsInvalid(errors)
    return result


def validate_many(
    batch: list[tuple[Any, ItemFacts]], schema: Schema, *, prediction: bool = False
) -> list[tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]]:
    """validate_regions for many region lists at once (bulk predictions, imports).

    Returns, per list, (normalized regions, []) or (None, its errors). The polygons of every list
    are checked by shapely in one call: its per-call cost dominates when each list holds few.
    """
    runs: list[_Run | None] = []
    results: list[list[dict[str, Any]] | None] = []
    outcome: list[tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]] = []
    for regions, item in batch:
        if type(regions) is not list:
            runs.append(None)
            results.append(None)
            continue
        fresh = _Run(schema, item)
        results.append(fresh.walk(regions, prediction))
        runs.append(fresh)
    _check_polygons_of([run for run in runs if run is not None and run.polygons])
    for (regions, _), run, result in zip(batch, runs, results, strict=True):
        if run is None:
            error = {
                "region": None,
                "field": "",
                "code": "invalid_type",
                "message": f"The regions must be a list of region objects, got {show_value(regions)}.",
            }
            outcome.append((None, [error]))
        elif run.errors:
            run.errors.sort(key=lambda error: -1 if error["region"] is None else error["region"])
            outcome.append((None, run.errors))
        else:
            outcome.append((result, []))
    return outcome


def _check_polygons_of(runs: list[_Run]) -> None:
    """One shapely pass over the polygons of several runs; each run records its own verdicts."""
    coordinates: list[list[float]] = []
    ring_of_point: list[int] = []
    polygon_of_ring: list[int] = []
    ring = polygon = 0
    for run in runs:
        for _, normal in run.polygons:
            for points in (normal["points"], *normal["holes"]):
                coordinates.extend(points)
                ring_of_point.extend([ring] * len(points))
                polygon_of_ring.append(polygon)
                ring += 1
            polygon += 1
    if not polygon:
        return
    rings = shapely.linearrings(np.array(coordinates, dtype=float), indices=ring_of_point)
    shapes = shapely.polygons(rings, indices=polygon_of_ring)
    valid, areas, bounds = shapely.is_valid(shapes), shapely.area(shapes), shapely.bounds(shapes)
    offset = 0
    for run in runs:
        run._judge_polygons(offset, shapes, valid, areas, bounds)
        offset += len(run.polygons)


class _Run:
    """One validation pass: the item's facts at hand, errors and deferred checks collected."""

    def __init__(self, schema: Schema, item: ItemFacts) -> None:
        self.schema = schema
        self.item = item
        self.width: float | None = item.width
        self.height: float | None = item.height
        self.clip = schema.out_of_bounds == "clip"
        self.errors: list[dict[str, Any]] = []
        self.polygons: list[tuple[int, dict[str, Any]]] = []
        self.references: list[tuple[int, str, str]] = []  # (region, field, id it names)
        self.relations: list[int] = []
        self.classifications: list[int] = []
        self.checkers = {
            "classification": self.classification,
            "bbox": self.bbox,
            "rotated_bbox": self.rotated_bbox,
            "polygon": self.polygon,
            "polyline": self.polyline,
            "keypoints": self.keypoints,
            "mask": self.mask,
            "span": self.span,
            "relation": self.relation,
            "transcription": self.transcription,
            "time_segment": self.time_segment,
            "video_track": self.video_track,
            "cuboid": self.cuboid,
        }

    def fail(self, region: int | None, field: str, code: str, message: str) -> None:
        self.errors.append({"region": region, "field": field, "code": code, "message": message})

    # -- the walk --------------------------------------------------------------------------------

    def walk(self, regions: list[Any], prediction: bool) -> list[dict[str, Any]]:
        """Check every region; polygons are only collected (validate_many checks them in one batch)."""
        fail = self.fail
        classes = self.schema.classes
        checkers = self.checkers
        allowed_keys = _PREDICTION_KEYS if prediction else _REGION_KEYS
        fitting = _TYPES_BY_MODALITY.get(self.item.modality, _ANYWHERE)
        ids: dict[str, int] = {}
        types: list[Any] = []
        result: list[dict[str, Any]] = []
        for index, region in enumerate(regions):
            if type(region) is not dict:
                fail(index, "", "invalid_type", f"A region must be an object, got {show_value(region)}.")
                types.append(None)
                continue
            if not region.keys() <= allowed_keys:
                self._unknown_region_keys(region, index, allowed_keys)

            region_id = region.get("id")
            if type(region_id) is str and 0 < len(region_id) <= ID_MAX:
                if region_id in ids:
                    fail(
                        index,
                        "id",
                        "duplicate_id",
                        f"The id {region_id!r} is already used by region {ids[region_id]}; ids are unique.",
                    )
                else:
                    ids[region_id] = index
            else:
                self._bad_id(region_id, index)

            kind = region.get("type")
            checker = checkers.get(kind) if type(kind) is str else None
            if checker is None:
                if kind is None:
                    fail(index, "type", "required", f"The region needs a type: {', '.join(TOOLS)}.")
                else:
                    fail(
                        index,
                        "type",
                        "invalid_value",
                        f"{show_value(kind)} is not a region type; the types are: {', '.join(TOOLS)}.",
                    )
            elif kind not in fitting:
                modalities = TYPE_MODALITIES[str(kind)]
                fail(
                    index,
                    "type",
                    "modality_mismatch",
                    f"A {kind} region does not fit a {self.item.modality} item; it is for "
                    f"{', '.join(sorted(modalities or ()))} items.",
                )
            types.append(kind if checker is not None else None)

            label = region.get("label")
            class_def = classes.get(label) if type(label) is str else None
            if class_def is None:
                self._bad_label(label, index)
            elif checker is not None and kind not in class_def.tools:
                fail(
                    index,
                    "type",
                    "tool_not_allowed",
                    f"The class {label!r} does not allow {kind} regions; it allows: "
                    f"{', '.join(sorted(class_def.tools))}.",
                )

            attributes = self._attributes(region.get("attributes"), class_def, index)
            geometry = checker(region.get("geometry"), index, class_def) if checker is not None else None

            normal = {
                "id": region_id,
                "type": kind,
                "label": label,
                "attributes": attributes,
                "geometry": geometry,
            }
            if prediction and "score" in region:
                normal["score"] = self._score(region["score"], index)
            result.append(normal)

        self._check_references(ids, types)
        if self.schema.classification == "single" and len(self.classifications) > 1:
            first = self.classifications[0]
            for index in self.classifications[1:]:
                fail(
                    index,
                    "type",
                    "too_many",
                    f"The schema allows one classification per annotation and region {first} is already one; "
                    "choose one class (or make the schema's classification setting multi).",
                )
        return result

    def _unknown_region_keys(self, region: dict[str, Any], index: int, allowed: frozenset[str]) -> None:
        for key in region:
            if key in allowed:
                continue
            if key == "score":
                self.fail(index, "score", "unknown_field", "Only predictions carry a score; remove it.")
            else:
                self.fail(
                    index,
                    str(key),
                    "unknown_field",
                    f"A region has no field {str(key)!r}; the fields are: {', '.join(sorted(allowed))}.",
                )

    def _bad_id(self, region_id: Any, index: int) -> None:
        if region_id is None:
            self.fail(index, "id", "required", "The region needs an id (a string of 1-64 characters).")
        elif type(region_id) is not str:
            self.fail(index, "id", "invalid_type", f"The id must be a string, got {show_value(region_id)}.")
        elif not region_id:
            self.fail(index, "id", "too_short", "The id must not be empty.")
        else:
            self.fail(index, "id", "too_long", f"The id has {len(region_id)} characters; at most {ID_MAX}.")

    def _bad_label(self, label: Any, index: int) -> None:
        if label is None:
            self.fail(index, "label", "required", "The region needs a label: a class of the schema.")
        elif type(label) is not str:
            self.fail(
                index, "label", "invalid_type", f"The label must be a class name, got {show_value(label)}."
            )
        else:
            names = list(self.schema.classes)
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            self.fail(
                index,
                "label",
                "unknown_class",
                f"{label!r} is not a class of the schema; the classes are: {shown}.",
            )

    def _attributes(self, attributes: Any, class_def: ClassDef | None, index: int) -> dict[str, Any]:
        if attributes is None:
            attributes = {}
        elif type(attributes) is not dict:
            self.fail(
                index,
                "attributes",
                "invalid_type",
                f"attributes must be an object, got {show_value(attributes)}.",
            )
            attributes = {}
        if class_def is None:
            return dict(attributes)  # nothing to check them against; the label error says why
        definitions = class_def.attributes
        result: dict[str, Any] = {}
        for name, value in attributes.items():
            definition = definitions.get(name)
            if definition is None:
                known = ", ".join(definitions) or "none"
                self.fail(
                    index,
                    f"attributes.{name}",
                    "unknown_field",
                    f"The class {class_def.name!r} has no attribute {name!r}; its attributes: {known}.",
                )
            elif value is not None:  # null means "not set", like a missing key
                try:
                    result[name] = definition.coerce(value)
                except ValueProblem as problem:
                    self.fail(index, f"attributes.{name}", problem.code, problem.message)
        for name in class_def.required:
            if name not in result and (name not in attributes or attributes[name] is None):
                self.fail(
                    index,
                    f"attributes.{name}",
                    "required",
                    f"The class {class_def.name!r} requires the attribute {name!r}.",
                )
        for name, default in class_def.defaults.items():
            if name not in result:
                result[name] = list(default) if type(default) is list else default
        return result

    def _score(self, score: Any, index: int) -> Any:
        if not _is_num(score):
            self.fail(
                index,
                "score",
                "invalid_type",
                f"The score must be a number in [0, 1], got {show_value(score)}.",
            )
            return score
        if not 0 <= score <= 1:
            self.fail(index, "score", "out_of_range", f"The score {score} is outside [0, 1].")
        return float(score)

    # -- shared geometry helpers -----------------------------------------------------------------

    def _fields(
        self,
        geometry: Any,
        index: int,
        required: tuple[str, ...],
        optional: tuple[str, ...] = (),
        path: str = "geometry",
    ) -> bool:
        """Report a non-object, missing and unknown fields; True when every required field is present."""
        if type(geometry) is not dict:
            if geometry is None and path == "geometry":
                self.fail(index, path, "required", f"The region needs a geometry with {', '.join(required)}.")
            else:
                self.fail(
                    index,
                    path,
                    "invalid_type",
                    f"{path} must be an object with {', '.join(required)}, got {show_value(geometry)}.",
                )
            return False
        complete = True
        for key in required:
            if key not in geometry:
                self.fail(index, f"{path}.{key}", "required", f"{path} needs {key!r}.")
                complete = False
        for key in geometry:
            if key not in required and key not in optional:
                accepted = ", ".join((*required, *optional))
                self.fail(
                    index,
                    f"{path}.{key}",
                    "unknown_field",
                    f"{path} has no field {str(key)!r}; it has: {accepted}.",
                )
        return complete

    def _numbers(
        self, geometry: dict[str, Any], keys: tuple[str, ...], index: int, path: str = "geometry"
    ) -> bool:
        """Report every field that is not a finite number; True when all are."""
        fine = True
        for key in keys:
            if not _is_num(geometry[key]):
                self.fail(
                    index,
                    f"{path}.{key}",
                    "invalid_type",
                    f"Expected a finite number, got {show_value(geometry[key])}.",
                )
                fine = False
        return fine

    def _points(
        self, points: Any, index: int, path: str, minimum: int, size: int = 2
    ) -> list[list[Any]] | None:
        """A list of [x, y] (or [x, y, v]) with finite numbers, at least `minimum` long, copied as floats."""
        if type(points) is not list:
            self.fail(
                index, path, "invalid_type", f"Expected a list of points [x, y], got {show_value(points)}."
            )
            return None
        result: list[list[Any]] = []
        append = result.append
        fine = True
        for position, point in enumerate(points):
            if type(point) is list and len(point) == size:
                x, y = point[0], point[1]
                kind_x, kind_y = type(x), type(y)
                if ((kind_x is float and x - x == 0.0) or (kind_x is int and -_LIMIT < x < _LIMIT)) and (
                    (kind_y is float and y - y == 0.0) or (kind_y is int and -_LIMIT < y < _LIMIT)
                ):
                    append([float(x), float(y)] if size == 2 else [float(x), float(y), point[2]])
                    continue
            fine = False
            self._bad_point(point, index, f"{path}[{position}]", size)
        if not fine:
            return None
        closed = len(result) > 1 and result[0][:2] == result[-1][:2]
        if len(result) - (1 if closed and minimum > 2 else 0) < minimum:
            self.fail(
                index,
                path,
                "invalid_geometry",
                f"Expected at least {minimum} points, got {len(result)}"
                + (" (the last repeats the first)" if closed and minimum > 2 else "")
                + ".",
            )
            return None
        return result

    def _bad_point(self, point: Any, index: int, path: str, size: int) -> None:
        shape = "[x, y]" if size == 2 else "[x, y, v]"
        if type(point) is not list or len(point) != size:
            self.fail(index, path, "invalid_type", f"A point is {shape}, got {show_value(point)}.")
            return
        for position, value in enumerate(point[:2]):
            if not _is_num(value):
                self.fail(
                    index,
                    f"{path}[{position}]",
                    "invalid_type",
                    f"Expected a finite number, got {show_value(value)}.",
                )

    def _outside_point(self, points: list[list[float]], index: int, path: str, what: str) -> bool:
        """Report the first point outside the image; True if there was one."""
        width, height = self.width, self.height
        for position, point in enumerate(points):
            x, y = point[0], point[1]
            if (width is not None and not -EPSILON <= x <= width + EPSILON) or (
                height is not None and not -EPSILON <= y <= height + EPSILON
            ):
                self.fail(
                    index,
                    f"{path}[{position}]",
                    "out_of_bounds",
                    f"Point ({x:g}, {y:g}) of the {what} is outside the image "
                    f"(0 ≤ x ≤ {width}, 0 ≤ y ≤ {height}).",
                )
                return True
        return False

    def _seconds_range(self, geometry: dict[str, Any], index: int, what: str) -> dict[str, Any] | None:
        """{start, end} seconds with 0 ≤ start < end ≤ duration (when the duration is known)."""
        if not self._numbers(geometry, ("start", "end"), index):
            return None
        start, end = float(geometry["start"]), float(geometry["end"])
        fine = True
        if start < 0:
            self.fail(
                index, "geometry.start", "out_of_bounds", f"The {what} starts at {start:g} s, before 0."
            )
            fine = False
        if end <= start:
            self.fail(
                index,
                "geometry.end",
                "invalid_geometry",
                f"The {what} must end after it starts ({start:g} s).",
            )
            fine = False
        duration = self.item.duration
        if duration is not None and end > duration + EPSILON:
            self.fail(
                index,
                "geometry.end",
                "out_of_bounds",
                f"The {what} ends at {end:g} s, after the end of the item ({duration:g} s).",
            )
            fine = False
        return {"start": start, "end": end} if fine else None

    # -- one checker per region type ------------------------------------------------------------
    # Each returns the normalized geometry (None when it is wrong), reporting every problem.

    def classification(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        self.classifications.append(index)
        if geometry is None or geometry == {}:
            return {}
        if type(geometry) is not dict:
            self.fail(
                index, "geometry", "invalid_type", "A classification has an empty geometry {} (or none)."
            )
            return None
        for key in geometry:
            self.fail(index, f"geometry.{key}", "unknown_field", "A classification has no geometry fields.")
        return None

    def bbox(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if (type(geometry) is not dict or geometry.keys() != _BBOX) and not self._fields(
            geometry, index, ("x", "y", "width", "height")
        ):
            return None
        x, y, width, height = geometry["x"], geometry["y"], geometry["width"], geometry["height"]
        if not (_is_num(x) and _is_num(y) and _is_num(width) and _is_num(height)):
            self._numbers(geometry, ("x", "y", "width", "height"), index)
            return None
        x, y, width, height = float(x), float(y), float(width), float(height)
        if width <= 0 or height <= 0:
            for key, value in (("width", width), ("height", height)):
                if value <= 0:
                    self.fail(
                        index,
                        f"geometry.{key}",
                        "invalid_geometry",
                        f"The box {key} must be > 0, got {value:g}.",
                    )
            return None
        image_width, image_height = self.width, self.height
        if self.clip:
            if image_width is not None and (x < 0 or x + width > image_width):
                left, right = max(x, 0.0), min(x + width, float(image_width))
                x, width = left, right - left
            if image_height is not None and (y < 0 or y + height > image_height):
                top, bottom = max(y, 0.0), min(y + height, float(image_height))
                y, height = top, bottom - top
            if width <= 0 or height <= 0:
                self.fail(
                    index,
                    "geometry",
                    "out_of_bounds",
                    f"The box lies outside the image ({image_width}x{image_height}); "
                    "nothing is left after clipping.",
                )
                return None
            return {"x": x, "y": y, "width": width, "height": height}
        fine = True
        if image_width is not None:
            if x < -EPSILON:
                self.fail(
                    index, "geometry.x", "out_of_bounds", f"The box starts at x = {x:g}, left of the image."
                )
                fine = False
            if x + width > image_width + EPSILON:
                self.fail(
                    index,
                    "geometry.width",
                    "out_of_bounds",
                    f"The box ends at x = {x + width:g}, beyond the image width {image_width}.",
                )
                fine = False
        if image_height is not None:
            if y < -EPSILON:
                self.fail(
                    index, "geometry.y", "out_of_bounds", f"The box starts at y = {y:g}, above the image."
                )
                fine = False
            if y + height > image_height + EPSILON:
                self.fail(
                    index,
                    "geometry.height",
                    "out_of_bounds",
                    f"The box ends at y = {y + height:g}, below the image height {image_height}.",
                )
                fine = False
        return {"x": x, "y": y, "width": width, "height": height} if fine else None

    def rotated_bbox(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        keys = ("cx", "cy", "width", "height", "angle")
        if (type(geometry) is not dict or geometry.keys() != _ROTATED) and not self._fields(
            geometry, index, keys
        ):
            return None
        if not self._numbers(geometry, keys, index):
            return None
        cx, cy, width, height, angle = (float(geometry[key]) for key in keys)
        fine = True
        for key, value in (("width", width), ("height", height)):
            if value <= 0:
                self.fail(
                    index, f"geometry.{key}", "invalid_geometry", f"The box {key} must be > 0, got {value:g}."
                )
                fine = False
        if not -180 < angle <= 180:
            self.fail(
                index,
                "geometry.angle",
                "out_of_range",
                f"The angle is in degrees in (-180, 180], got {angle:g}.",
            )
            fine = False
        if not fine:
            return None
        image_width, image_height = self.width, self.height
        if self.clip:
            # A turned box cannot be cut and stay a turned box: it stays as drawn while its centre is
            # on the image.
            if (image_width is not None and not 0 <= cx <= image_width) or (
                image_height is not None and not 0 <= cy <= image_height
            ):
                self.fail(
                    index,
                    "geometry",
                    "out_of_bounds",
                    f"The centre ({cx:g}, {cy:g}) of the box is outside the image "
                    f"({image_width}x{image_height}).",
                )
                return None
        elif image_width is not None or image_height is not None:
            radians = np.deg2rad(angle)
            cos, sin = abs(float(np.cos(radians))), abs(float(np.sin(radians)))
            half_x = (width * cos + height * sin) / 2
            half_y = (width * sin + height * cos) / 2
            if (
                image_width is not None and (cx - half_x < -EPSILON or cx + half_x > image_width + EPSILON)
            ) or (
                image_height is not None and (cy - half_y < -EPSILON or cy + half_y > image_height + EPSILON)
            ):
                self.fail(
                    index,
                    "geometry",
                    "out_of_bounds",
                    f"The turned box reaches outside the image ({image_width}x{image_height}): "
                    f"its corners span x {cx - half_x:g}…{cx + half_x:g}, y {cy - half_y:g}…{cy + half_y:g}.",
                )
                return None
        return {"cx": cx, "cy": cy, "width": width, "height": height, "angle": angle}

    def polygon(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if (
            type(geometry) is not dict or not (geometry.keys() == _POINTS or geometry.keys() == _POINTS_HOLES)
        ) and not self._fields(geometry, index, ("points",), ("holes",)):
            return None
        shell = self._points(geometry["points"], index, "geometry.points", 3)
        raw_holes = geometry.get("holes")
        holes: list[list[list[Any]]] = []
        fine = shell is not None
        if raw_holes is not None:
            if type(raw_holes) is not list:
                self.fail(
                    index,
                    "geometry.holes",
                    "invalid_type",
                    f"holes must be a list of rings, got {show_value(raw_holes)}.",
                )
                fine = False
            else:
                for position, raw_hole in enumerate(raw_holes):
                    hole = self._points(raw_hole, index, f"geometry.holes[{position}]", 3)
                    if hole is None:
                        fine = False
                    else:
                        holes.append(hole)
        if not fine:
            return None
        normal = {"points": shell, "holes": holes}
        self.polygons.append((index, normal))  # shapely checks them all at once: _check_polygons_of
        return normal

    def _judge_polygons(self, offset: int, shapes: Any, valid: Any, areas: Any, bounds: Any) -> None:
        """Verdicts on this run's polygons, from shapely's results for a batch (from `offset` on)."""
        width, height = self.width, self.height
        for position, (index, normal) in enumerate(self.polygons):
            number = offset + position
            if not valid[number]:
                reason = shapely.is_valid_reason(shapes[number])
                field = "geometry.holes" if reason.startswith("Hole") else "geometry.points"
                self.fail(
                    index,
                    field,
                    "invalid_geometry",
                    f"The polygon is not valid ({reason}): it must be simple (edges that do not cross) with "
                    "its holes inside it.",
                )
                continue
            if not areas[number] > 0:
                self.fail(index, "geometry.points", "invalid_geometry", "The polygon has no area.")
                continue
            min_x, min_y, max_x, max_y = bounds[number]
            inside = (width is None or (min_x >= -EPSILON and max_x <= width + EPSILON)) and (
                height is None or (min_y >= -EPSILON and max_y <= height + EPSILON)
            )
            if inside:
                strictly = (width is None or (min_x >= 0 and max_x <= width)) and (
                    height is None or (min_y >= 0 and max_y <= height)
                )
                if self.clip and not strictly:  # within the tolerance: stored inside the image
                    w, h = (
                        float(width if width is not None else max_x),
                        float(height if height is not None else max_y),
                    )
                    normal["points"] = clamp_points(normal["points"], w, h)
                    normal["holes"] = [clamp_points(hole, w, h) for hole in normal["holes"]]
                continue
            if not self.clip:
                if not self._outside_point(normal["points"], index, "geometry.points", "polygon"):
                    self.fail(
                        index, "geometry.points", "out_of_bounds", "The polygon reaches outside the image."
                    )
                continue
            clipped = clip_polygon(
                normal["points"],
                normal["holes"],
                float(width if width is not None else max_x),
                float(height if height is not None else max_y),
            )
            if isinstance(clipped, str):
                self.fail(index, "geometry.points", "out_of_bounds", clipped)
            else:
                normal["points"], normal["holes"] = clipped

    def polyline(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if (type(geometry) is not dict or geometry.keys() != _POINTS) and not self._fields(
            geometry, index, ("points",)
        ):
            return None
        points = self._points(geometry["points"], index, "geometry.points", 2)
        if points is None:
            return None
        first = points[0]
        if all(point == first for point in points):
            self.fail(
                index,
                "geometry.points",
                "invalid_geometry",
                "The polyline has no length: all its points are equal.",
            )
            return None
        width, height = self.width, self.height
        if width is None and height is None:
            return {"points": points}
        xs = [point[0] for point in points]
        ys = [point[1] for point in points]
        inside = (width is None or (min(xs) >= -EPSILON and max(xs) <= width + EPSILON)) and (
            height is None or (min(ys) >= -EPSILON and max(ys) <= height + EPSILON)
        )
        if inside:
            return {"points": points}
        if not self.clip:
            self._outside_point(points, index, "geometry.points", "polyline")
            return None
        clipped = clip_polyline(
            points,
            float(width if width is not None else max(xs)),
            float(height if height is not None else max(ys)),
        )
        if isinstance(clipped, str):
            self.fail(index, "geometry.points", "out_of_bounds", clipped)
            return None
        return {"points": clipped}

    def keypoints(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if (type(geometry) is not dict or geometry.keys() != _POINTS) and not self._fields(
            geometry, index, ("points",)
        ):
            return None
        raw = geometry["points"]
        if type(raw) is not list:
            self.fail(
                index,
                "geometry.points",
                "invalid_type",
                f"Expected a list of [x, y, v], got {show_value(raw)}.",
            )
            return None
        fine = True
        if class_def is not None and class_def.keypoints and len(raw) != len(class_def.keypoints):
            self.fail(
                index,
                "geometry.points",
                "count_mismatch",
                f"The class {class_def.name!r} has {len(class_def.keypoints)} keypoints "
                f"({', '.join(class_def.keypoints)}), got {len(raw)} points.",
            )
            fine = False
        points = self._points(raw, index, "geometry.points", 0, size=3)
        if points is None:
            return None
        width, height = self.width, self.height
        for position, point in enumerate(points):
            visibility = point[2]
            if type(visibility) is not int or visibility not in (0, 1, 2):
                self.fail(
                    index,
                    f"geometry.points[{position}][2]",
                    "invalid_value",
                    "The visibility is 0 (not labelled), 1 (hidden) or 2 (visible), "
                    f"got {show_value(visibility)}.",
                )
                fine = False
                continue
            # An unlabelled keypoint has no place: its coordinates are not looked at.
            if visibility and (
                (width is not None and not -EPSILON <= point[0] <= width + EPSILON)
                or (height is not None and not -EPSILON <= point[1] <= height + EPSILON)
            ):
                self.fail(
                    index,
                    f"geometry.points[{position}]",
                    "out_of_bounds",
                    f"Keypoint {position} at ({point[0]:g}, {point[1]:g}) is outside the image "
                    f"({width}x{height}).",
                )
                fine = False
        return {"points": points} if fine else None

    def mask(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if not self._fields(geometry, index, ("rle",)):
            return None
        rle = geometry["rle"]
        if not self._fields(rle, index, ("size", "counts"), path="geometry.rle"):
            return None
        size = rle["size"]
        if (
            type(size) is not list
            or len(size) != 2
            or not all(type(side) is int and side > 0 for side in size)
        ):
            self.fail(
                index,
                "geometry.rle.size",
                "invalid_type",
                f"size is [height, width] in pixels (> 0), got {show_value(size)}.",
            )
            return None
        height, width = size
        if height * width > _MASK_PIXELS_MAX:
            self.fail(
                index,
                "geometry.rle.size",
                "invalid_geometry",
                f"A {height}x{width} mask is larger than COCO RLE can hold ({_MASK_PIXELS_MAX} pixels).",
            )
            return None
        fine = True
        if (self.height is not None and height != self.height) or (
            self.width is not None and width != self.width
        ):
            self.fail(
                index,
                "geometry.rle.size",
                "invalid_geometry",
                f"The mask is {height}x{width} (height x width) but the image is {self.height}x{self.width}; "
                "a mask covers the whole image.",
            )
            fine = False
        counts = rle["counts"]
        if type(counts) is str:
            runs = rle_runs(counts)
            if runs is None:
                self.fail(
                    index,
                    "geometry.rle.counts",
                    "invalid_geometry",
                    "counts is not a COCO compressed RLE string.",
                )
                return None
        elif type(counts) is list and all(type(run) is int and run >= 0 for run in counts):
            runs = counts
        else:
            self.fail(
                index,
                "geometry.rle.counts",
                "invalid_type",
                "counts is a COCO compressed RLE string or a list of run lengths (integers ≥ 0).",
            )
            return None
        total = sum(runs)
        if total != height * width:
            self.fail(
                index,
                "geometry.rle.counts",
                "invalid_geometry",
                f"The runs cover {total} pixels but a {height}x{width} mask has {height * width}.",
            )
            return None
        if not sum(runs[1::2]):
            self.fail(
                index, "geometry.rle.counts", "invalid_geometry", "The mask is empty: it covers no pixel."
            )
            return None
        if not fine:
            return None
        if type(counts) is not str:
            counts = rle_string(runs, height, width)
        return {"rle": {"size": [height, width], "counts": counts}}

    def span(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if not self._fields(geometry, index, ("start", "end"), ("text",)):
            return None
        start, end = geometry["start"], geometry["end"]
        fine = True
        for key, value in (("start", start), ("end", end)):
            if type(value) is not int:
                self.fail(
                    index,
                    f"geometry.{key}",
                    "invalid_type",
                    f"A character offset is an integer, got {show_value(value)}.",
                )
                fine = False
        if not fine:
            return None
        if start < 0:
            self.fail(
                index, "geometry.start", "out_of_bounds", f"The span starts at {start}, before the text."
            )
            fine = False
        if end <= start:
            self.fail(
                index, "geometry.end", "invalid_geometry", f"The span must end after it starts ({start})."
            )
            fine = False
        length = self.item.length
        if length is not None and end > length:
            self.fail(
                index,
                "geometry.end",
                "out_of_bounds",
                f"The span ends at {end}, after the text's {length} characters.",
            )
            fine = False
        normal: dict[str, Any] = {"start": start, "end": end}
        if "text" in geometry and geometry["text"] is not None:
            quoted = geometry["text"]
            if type(quoted) is not str:
                self.fail(
                    index,
                    "geometry.text",
                    "invalid_type",
                    f"text must be a string, got {show_value(quoted)}.",
                )
                fine = False
            elif fine and self.item.text is not None and self.item.text[start:end] != quoted:
                self.fail(
                    index,
                    "geometry.text",
                    "invalid_value",
                    f"The span covers {show_value(self.item.text[start:end])}, not {show_value(quoted)}.",
                )
                fine = False
            normal["text"] = quoted
        return normal if fine else None

    def relation(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        self.relations.append(index)
        if (type(geometry) is not dict or geometry.keys() != _FROM_TO) and not self._fields(
            geometry, index, ("from", "to")
        ):
            return None
        fine = True
        for key in ("from", "to"):
            target = geometry[key]
            if type(target) is not str:
                self.fail(
                    index,
                    f"geometry.{key}",
                    "invalid_type",
                    f"Expected a region id, got {show_value(target)}.",
                )
                fine = False
            else:
                self.references.append((index, f"geometry.{key}", target))
        if fine and geometry["from"] == geometry["to"]:
            self.fail(index, "geometry.to", "invalid_value", "A relation joins two different regions.")
            fine = False
        return {"from": geometry["from"], "to": geometry["to"]} if fine else None

    def transcription(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if not self._fields(geometry, index, ("text",), ("region", "start", "end")):
            return None
        fine = True
        text = geometry["text"]
        if type(text) is not str:
            self.fail(
                index, "geometry.text", "invalid_type", f"text must be a string, got {show_value(text)}."
            )
            fine = False
        normal: dict[str, Any] = {"text": text}
        target = geometry.get("region")
        timed = "start" in geometry or "end" in geometry
        if target is not None:
            if timed:
                self.fail(
                    index,
                    "geometry.region",
                    "invalid_value",
                    "A transcription refers to a region or to a time range (start/end), not both.",
                )
                fine = False
            elif type(target) is not str:
                self.fail(
                    index,
                    "geometry.region",
                    "invalid_type",
                    f"Expected a region id, got {show_value(target)}.",
                )
                fine = False
            else:
                self.references.append((index, "geometry.region", target))
                normal["region"] = target
        elif timed:
            for key in ("start", "end"):
                if key not in geometry:
                    self.fail(
                        index,
                        f"geometry.{key}",
                        "required",
                        "A timed transcription needs both start and end.",
                    )
                    fine = False
            if fine:
                seconds = self._seconds_range(geometry, index, "transcription")
                if seconds is None:
                    fine = False
                else:
                    normal.update(seconds)
        return normal if fine else None

    def time_segment(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if (type(geometry) is not dict or geometry.keys() != _START_END) and not self._fields(
            geometry, index, ("start", "end")
        ):
            return None
        return self._seconds_range(geometry, index, "segment")

    def video_track(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if not self._fields(geometry, index, ("keyframes",)):
            return None
        keyframes = geometry["keyframes"]
        if type(keyframes) is not list:
            self.fail(
                index,
                "geometry.keyframes",
                "invalid_type",
                f"keyframes must be a list, got {show_value(keyframes)}.",
            )
            return None
        if not keyframes:
            self.fail(index, "geometry.keyframes", "too_short", "A track needs at least one keyframe.")
            return None
        result: list[dict[str, Any]] = []
        fine = True
        previous = -1
        for position, keyframe in enumerate(keyframes):
            normal = self._keyframe(keyframe, index, f"geometry.keyframes[{position}]", previous)
            if normal is None:
                fine = False
                if type(keyframe) is dict and type(keyframe.get("frame")) is int:
                    previous = max(previous, keyframe["frame"])
                continue
            previous = normal["frame"]
            result.append(normal)
        return {"keyframes": result} if fine else None

    def _keyframe(self, keyframe: Any, index: int, path: str, previous: int) -> dict[str, Any] | None:
        if not self._fields(keyframe, index, _KEYFRAME_REQUIRED, ("outside", "interpolate"), path=path):
            return None
        fine = True
        frame = keyframe["frame"]
        if type(frame) is not int:
            self.fail(
                index,
                f"{path}.frame",
                "invalid_type",
                f"A frame is an integer index, got {show_value(frame)}.",
            )
            fine = False
        elif frame < 0 or (self.item.frames is not None and frame >= self.item.frames):
            self.fail(
                index,
                f"{path}.frame",
                "out_of_bounds",
                f"Frame {frame} is outside the video (0 ≤ frame < {self.item.frames}).",
            )
            fine = False
        elif frame <= previous:
            self.fail(
                index,
                f"{path}.frame",
                "invalid_geometry",
                "Keyframes go in ascending order, each frame once: "
                f"frame {frame} comes after frame {previous}.",
            )
            fine = False
        flags: dict[str, bool] = {}
        for key, default in (("outside", False), ("interpolate", True)):
            value = keyframe.get(key)
            if value is None:
                flags[key] = default
            elif type(value) is not bool:
                self.fail(
                    index,
                    f"{path}.{key}",
                    "invalid_type",
                    f"{key} is true or false, got {show_value(value)}.",
                )
                fine = False
            else:
                flags[key] = value
        if not self._numbers(keyframe, ("x", "y", "width", "height"), index, path):
            return None
        x, y = float(keyframe["x"]), float(keyframe["y"])
        width, height = float(keyframe["width"]), float(keyframe["height"])
        for key, value in (("width", width), ("height", height)):
            if value <= 0:
                self.fail(
                    index, f"{path}.{key}", "invalid_geometry", f"The box {key} must be > 0, got {value:g}."
                )
                fine = False
        if not fine:
            return None
        image_width, image_height = self.width, self.height
        # Where the object is outside the frame its box says nothing: it is not held to the frame.
        if not flags["outside"]:
            if self.clip:
                right, bottom = x + width, y + height
                if image_width is not None and (x < 0 or right > image_width):
                    x, right = max(x, 0.0), min(right, float(image_width))
                    width = right - x
                if image_height is not None and (y < 0 or bottom > image_height):
                    y, bottom = max(y, 0.0), min(bottom, float(image_height))
                    height = bottom - y
                if width <= 0 or height <= 0:
                    self.fail(
                        index,
                        path,
                        "out_of_bounds",
                        f"The box lies outside the video frame ({image_width}x{image_height}); "
                        "nothing is left after clipping (mark the keyframe outside instead).",
                    )
                    return None
            elif (image_width is not None and (x < -EPSILON or x + width > image_width + EPSILON)) or (
                image_height is not None and (y < -EPSILON or y + height > image_height + EPSILON)
            ):
                self.fail(
                    index,
                    path,
                    "out_of_bounds",
                    f"The box ({x:g}, {y:g}, {width:g}x{height:g}) reaches outside the video frame "
                    f"({image_width}x{image_height}); mark the keyframe outside if the object has left.",
                )
                return None
        return {
            "frame": frame,
            "x": x,
            "y": y,
            "width": width,
            "height": height,
            "outside": flags["outside"],
            "interpolate": flags["interpolate"],
        }

    def cuboid(self, geometry: Any, index: int, class_def: ClassDef | None) -> dict[str, Any] | None:
        if not self._fields(geometry, index, ("center", "size", "yaw")):
            return None
        fine = True
        normal: dict[str, Any] = {}
        for key in ("center", "size"):
            vector = geometry[key]
            if type(vector) is not list or len(vector) != 3:
                self.fail(
                    index,
                    f"geometry.{key}",
                    "invalid_type",
                    f"{key} is [x, y, z] in metres, got {show_value(vector)}.",
                )
                fine = False
                continue
            for axis, value in enumerate(vector):
                if not _is_num(value):
                    self.fail(
                        index,
                        f"geometry.{key}[{axis}]",
                        "invalid_type",
                        f"Expected a finite number, got {show_value(value)}.",
                    )
                    fine = False
                elif key == "size" and value <= 0:
                    self.fail(
                        index,
                        f"geometry.size[{axis}]",
                        "invalid_geometry",
                        f"A cuboid size must be > 0, got {value}.",
                    )
                    fine = False
            if fine:
                normal[key] = [float(value) for value in vector]
        if not self._numbers(geometry, ("yaw",), index):
            fine = False
        else:
            normal["yaw"] = float(geometry["yaw"])
        return normal if fine else None

    # -- checks across regions -------------------------------------------------------------------

    def _check_references(self, ids: dict[str, int], types: list[Any]) -> None:
        for index, field, target in self.references:
            position = ids.get(target)
            if position is None:
                self.fail(
                    index, field, "unknown_region", f"No region of this annotation has the id {target!r}."
                )
            elif position == index:
                self.fail(index, field, "invalid_value", "A region cannot refer to itself.")
            elif field != "geometry.region" and types[position] == "relation":
                self.fail(
                    index,
                    field,
                    "invalid_value",
                    f"Region {position} ({target!r}) is a relation; "
                    "relations join regions that are not relations.",
                )
