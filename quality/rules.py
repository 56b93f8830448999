"""Quality rules: the checks a project runs over every annotation, pure Python with no Django.

A project manager configures a list of rules (required attributes, box sizes, regions outside the
item, near-duplicates, object counts, class co-occurrence, empty annotations, span edges, track
gaps), each `blocking` (the submit is refused, naming the rule and the region) or `warning` (the
annotation is accepted and the finding is shown to reviewers). `parse_rules` checks a
configuration and reports every problem with its path, as label schemas do; `check` runs the rules
over the regions of one annotation and returns findings in a fixed order: rule by rule, and within
a rule region by region as the annotation lists them.

Regions are expected in the normalized form `labeling.regions.validate_regions` returns; a rule
that does not apply to a region's type skips it. See docs/quality.md for each rule's meaning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shapely.geometry import Polygon

from labeling.regions.spec import Problems, Schema, is_number, show_value
from labeling.regions.validate import ItemFacts
from quality.metrics.matching import similar_pairs

SEVERITIES: tuple[str, ...] = ("blocking", "warning")
SIZE_BOUNDS: tuple[str, ...] = (
    "min_width",
    "max_width",
    "min_height",
    "max_height",
    "min_area",
    "max_area",
    "min_aspect",
    "max_aspect",
)
# The parameters each kind accepts besides rule, severity and classes.
KINDS: dict[str, frozenset[str]] = {
    "required_attributes": frozenset({"attributes"}),
    "size": frozenset(SIZE_BOUNDS),
    "inside_item": frozenset({"tolerance"}),
    "near_duplicates": frozenset({"iou"}),
    "count": frozenset({"min", "max", "per_class"}),
    "co_occurrence": frozenset({"forbidden", "required"}),
    "not_empty": frozenset(),
    "token_edges": frozenset(),
    "track_gaps": frozenset({"max_gap_frames"}),
}
# co_occurrence names its classes in its own parameters; a scope on top would only confuse.
_UNSCOPED = frozenset({"co_occurrence"})
_SIZED_TYPES = frozenset({"bbox", "rotated_bbox", "polygon"})
_WORD = re.compile(r"\w")


class RulesInvalid(ValueError):
    """The rule configuration is refused; `errors` lists every problem as {path, code, message}."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(f"The quality rules have {len(errors)} problem(s): {errors[0]['message']}")
        self.errors = errors


@dataclass(frozen=True)
class Rule:
    """One configured rule. `classes` limits it to regions of those classes (None: every class);
    `params` holds the kind's parameters, normalized (numbers as float or int, lists as tuples)."""

    kind: str
    severity: str
    classes: frozenset[str] | None = None
    params: Mapping[str, Any] | None = None

    def param(self, name: str, default: Any = None) -> Any:
        return (self.params or {}).get(name, default)

    def applies_to(self, region: Mapping[str, Any]) -> bool:
        return self.classes is None or region.get("label") in self.classes


@dataclass(frozen=True)
class Finding:
    """What a rule found: about one region (`region_id`) or about the annotation as a whole (None)."""

    rule_index: int
    rule: str
    severity: str
    region_id: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule_index": self.rule_index,
            "rule": self.rule,
            "severity": self.severity,
            "region_id": self.region_id,
            "code": self.code,
            "message": self.message,
        }


def blocking(findings: Sequence[Finding]) -> list[Finding]:
    """The findings that refuse a submit."""
    return [finding for finding in findings if finding.severity == "blocking"]


# ---------------------------------------------------------------------------------------------
# Parsing


class _Collector(Problems):
    def __init__(self, schema: Schema | None) -> None:
        super().__init__()
        self.schema = schema

    def class_name(self, value: Any, path: str) -> str | None:
        if type(value) is not str or not value:
            self.add(
                path, "invalid_type", f"A class is named by a non-empty string, got {show_value(value)}."
            )
            return None
        if self.schema is not None and value not in self.schema.classes:
            self.add(path, "unknown_class", f"{value!r} is not a class of the label schema.")
            return None
        return value

    def class_list(self, value: Any, path: str) -> tuple[str, ...] | None:
        if type(value) is not list:
            self.add(path, "invalid_type", f"Expected a list of class names, got {show_value(value)}.")
            return None
        if not value:
            self.add(path, "too_short", "The list needs at least one class.")
            return None
        names: list[str] = []
        for index, raw in enumerate(value):
            name = self.class_name(raw, f"{path}[{index}]")
            if name is None:
                continue
            if name in names:
                self.add(f"{path}[{index}]", "duplicate", f"The class {name!r} is listed twice.")
            else:
                names.append(name)
        return tuple(names)

    def number(self, raw: dict[str, Any], key: str, path: str, *, positive: bool) -> float | None:
        value = raw.get(key)
        if value is None:
            return None
        if not is_number(value) or value < 0 or (positive and value == 0):
            what = "a positive number" if positive else "a number ≥ 0"
            self.add(f"{path}.{key}", "invalid_value", f"{key}: must be {what}, got {show_value(value)}.")
            return None
        return float(value)

    def integer(self, raw: dict[str, Any], key: str, path: str, *, least: int) -> int | None:
        value = raw.get(key)
        if value is None:
            return None
        if type(value) is not int or value < least:
            self.add(
                f"{path}.{key}",
                "invalid_value",
                f"{key}: must be an integer ≥ {least}, got {show_value(value)}.",
            )
            return None
        return value


def parse_rules(config: Any, *, schema: Schema | None = None) -> list[Rule]:
    """Check a project's rule configuration and return its rules; RulesInvalid lists every problem.

    With `schema`, every class and attribute a rule names must exist in it.
    """
    out = _Collector(schema)
    if type(config) is not list:
        out.add("", "invalid_type", f"The rules must be a list of objects, got {show_value(config)}.")
        raise RulesInvalid(out.errors)
    rules: list[Rule] = []
    for index, raw in enumerate(config):
        rule = _parse_rule(raw, f"[{index}]", out)
        if rule is not None:
            rules.append(rule)
    if out.errors:
        raise RulesInvalid(out.errors)
    return rules


def _parse_rule(raw: Any, path: str, out: _Collector) -> Rule | None:
    if not isinstance(raw, dict):
        out.add(path, "invalid_type", f"A rule must be an object, got {show_value(raw)}.")
        return None
    before = len(out.errors)
    kind = raw.get("rule")
    if kind is None:
        out.add(f"{path}.rule", "required", f"The rule needs its kind: {', '.join(KINDS)}.")
        return None
    if type(kind) is not str or kind not in KINDS:
        out.add(
            f"{path}.rule",
            "unknown_option",
            f"{show_value(kind)} is not a rule; the rules are: {', '.join(KINDS)}.",
        )
        return None
    allowed = KINDS[kind] | {"rule", "severity"} | (set() if kind in _UNSCOPED else {"classes"})
    for key in raw:
        if key not in allowed:
            out.add(
                f"{path}.{key}",
                "unknown_field",
                f"A {kind} rule has no field {str(key)!r}; the fields are: {', '.join(sorted(allowed))}.",
            )
    severity = raw.get("severity")
    if severity is None:
        out.add(f"{path}.severity", "required", "The rule needs a severity: blocking or warning.")
    elif severity not in SEVERITIES or type(severity) is not str:
        out.add(
            f"{path}.severity",
            "unknown_option",
            f"severity must be blocking or warning, got {show_value(severity)}.",
        )
    classes = None
    if "classes" in raw and kind not in _UNSCOPED:
        listed = out.class_list(raw["classes"], f"{path}.classes")
        classes = frozenset(listed) if listed is not None else None
    params = _PARAMS[kind](raw, path, out, classes)
    if len(out.errors) > before:
        return None
    assert isinstance(severity, str)
    return Rule(kind=kind, severity=severity, classes=classes, params=params)


def _required_attributes_params(
    raw: dict[str, Any], path: str, out: _Collector, classes: frozenset[str] | None
) -> dict[str, Any]:
    if "attributes" not in raw:
        return {}
    value = raw["attributes"]
    where = f"{path}.attributes"
    if type(value) is not list or not value:
        out.add(
            where, "invalid_type", f"attributes must be a non-empty list of names, got {show_value(value)}."
        )
        return {}
    names: list[str] = []
    schema = out.schema
    for index, name in enumerate(value):
        if type(name) is not str or not name:
            out.add(
                f"{where}[{index}]",
                "invalid_type",
                f"An attribute is named by a string, got {show_value(name)}.",
            )
        elif name in names:
            out.add(f"{where}[{index}]", "duplicate", f"The attribute {name!r} is listed twice.")
        else:
            names.append(name)
            if schema is not None and not any(
                name in class_def.attributes
                for class_name, class_def in schema.classes.items()
                if classes is None or class_name in classes
            ):
                out.add(
                    f"{where}[{index}]",
                    "unknown_attribute",
                    f"No class this rule covers has an attribute {name!r}.",
                )
    return {"attributes": tuple(names)}


def _size_params(
    raw: dict[str, Any], path: str, out: _Collector, classes: frozenset[str] | None
) -> dict[str, Any]:
    params = {key: out.number(raw, key, path, positive=True) for key in SIZE_BOUNDS}
    if all(key not in raw for key in SIZE_BOUNDS):
        out.add(path, "required", f"A size rule needs at least one bound: {', '.join(SIZE_BOUNDS)}.")
    for what in ("width", "height", "area", "aspect"):
        low, high = params[f"min_{what}"], params[f"max_{what}"]
        if low is not None and high is not None and low > high:
            out.add(
                f"{path}.max_{what}",
                "invalid_value",
                f"max_{what} ({high:g}) must not be below min_{what} ({low:g}).",
            )
    return {key: value for key, value in params.items() if value is not None}


def _inside_item_params(
    raw: dict[str, Any], path: str, out: _Collector, classes: frozenset[str] | None
) -> dict[str, Any]:
    tolerance = out.number(raw, "tolerance", path, positive=False)
    return {"tolerance": tolerance or 0.0}


def _near_duplicates_params(
    raw: dict[str, Any], path: str, out: _Collector, classes: frozenset[str] | None
) -> dict[str, Any]:
    iou = raw.get("iou")
    if iou is None:
        out.add(f"{path}.iou", "required", "A near_duplicates rule needs iou, a number in (0, 1].")
        return {}
    if not is_number(iou) or not 0 < iou <= 1:
        out.add(f"{path}.iou", "invalid_value", f"iou: must be a number in (0, 1], got {show_value(iou)}.")
        return {}
    return {"iou": float(iou)}


def _count_params(
    raw: dict[str, Any], path: str, out: _Collector, classes: frozenset[str] | None
) -> dict[str, Any]:
    low = out.integer(raw, "min", path, least=0)
    high = out.integer(raw, "max", path, least=0)
    if "min" not in raw and "max" not in raw:
        out.add(path, "required", "A count rule needs min, max or both.")
    if low is not None and high is not None and low > high:
        out.add(f"{path}.max", "invalid_value", f"max ({high}) must not be below min ({low}).")
    per_class = raw.get("per_class", False)
    if type(per_class) is not bool:
        out.add(
            f"{path}.per_class",
            "invalid_type",
            f"per_class must be true or false, got {show_value(per_class)}.",
        )
    return {"min": low, "max": high, "per_class": per_class is True}


def _co_occurrence_params(
    raw: dict[str, Any], path: str, out: _Collector, classes: frozenset[str] | None
) -> dict[str, Any]:
    if "forbidden" not in raw and "required" not in raw:
        out.add(path, "required", "A co_occurrence rule needs forbidden pairs, required companions or both.")
    forbidden: list[tuple[str, str]] = []
    if "forbidden" in raw:
        value = raw["forbidden"]
        where = f"{path}.forbidden"
        if type(value) is not list or not value:
            out.add(
                where,
                "invalid_type",
                f"forbidden must be a non-empty list of class pairs, got {show_value(value)}.",
            )
            value = []
        for index, pair in enumerate(value):
            if type(pair) is not list or len(pair) != 2:
                out.add(
                    f"{where}[{index}]",
                    "invalid_type",
                    f"A pair is a list of two class names, got {show_value(pair)}.",
                )
                continue
            first = out.class_name(pair[0], f"{where}[{index}][0]")
            second = out.class_name(pair[1], f"{where}[{index}][1]")
            if first is None or second is None:
                continue
            if first == second:
                out.add(
                    f"{where}[{index}]",
                    "invalid_value",
                    f"A pair needs two different classes, got {first!r} twice.",
                )
            elif (first, second) in forbidden or (second, first) in forbidden:
                out.add(f"{where}[{index}]", "duplicate", f"The pair {first!r}, {second!r} is listed twice.")
            else:
                forbidden.append((first, second))
    required: list[tuple[str, tuple[str, ...]]] = []
    if "required" in raw:
        value = raw["required"]
        where = f"{path}.required"
        if not isinstance(value, dict) or not value:
            out.add(
                where,
                "invalid_type",
                f"required must be a non-empty object {{class: [classes]}}, got {show_value(value)}.",
            )
            value = {}
        for name, companions in value.items():
            here = f"{where}.{name}"
            checked = out.class_name(name, here)
            listed = out.class_list(companions, here)
            if checked is None or listed is None:
                continue
            if checked in listed:
                out.add(here, "invalid_value", f"{checked!r} cannot be required to appear with itself.")
                continue
            required.append((checked, listed))
    return {"forbidden": tuple(forbidden), "required": tuple(required)}


def _no_params(
    raw: dict[str, Any], path: str, out: _Collector, classes: frozenset[str] | None
) -> dict[str, Any]:
    return {}


def _track_gaps_params(
    raw: dict[str, Any], path: str, out: _Collector, classes: frozenset[str] | None
) -> dict[str, Any]:
    if "max_gap_frames" not in raw:
        out.add(
            f"{path}.max_gap_frames", "required", "A track_gaps rule needs max_gap_frames, an integer ≥ 0."
        )
        return {}
    return {"max_gap_frames": out.integer(raw, "max_gap_frames", path, least=0)}


_PARAMS = {
    "required_attributes": _required_attributes_params,
    "size": _size_params,
    "inside_item": _inside_item_params,
    "near_duplicates": _near_duplicates_params,
    "count": _count_params,
    "co_occurrence": _co_occurrence_params,
    "not_empty": _no_params,
    "token_edges": _no_params,
    "track_gaps": _track_gaps_params,
}


# ---------------------------------------------------------------------------------------------
# Checking

_Raw = tuple[str | None, str, str]  # region id, code, message


def check(
    rules: Sequence[Rule],
    regions: Sequence[Mapping[str, Any]],
    *,
    schema: Schema,
    facts: ItemFacts,
    text: str | None = None,
) -> list[Finding]:
    """Run the rules over one annotation's regions; findings rule by rule, then in region order.

    `text` is the item's text, for token_edges (default: `facts.text`); a token_edges rule over
    spans with no text to hold them to is a caller's mistake and raises ValueError.
    """
    findings: list[Finding] = []
    for index, rule in enumerate(rules):
        scoped = [region for region in regions if rule.applies_to(region)]
        for region_id, code, message in _CHECKS[rule.kind](rule, scoped, schema, facts, text):
            findings.append(Finding(index, rule.kind, rule.severity, region_id, code, message))
    return findings


def _id(region: Mapping[str, Any]) -> str | None:
    value = region.get("id")
    return None if value is None else str(value)


def _missing(value: Any) -> bool:
    return value is None or value == "" or value == []


def _check_required_attributes(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    explicit: tuple[str, ...] | None = rule.param("attributes")
    for region in regions:
        class_def = schema.classes.get(str(region.get("label")))
        if class_def is None:
            continue  # a class the schema no longer has: validation, not this rule, speaks to it
        names = class_def.required if explicit is None else [n for n in explicit if n in class_def.attributes]
        attributes = region.get("attributes") or {}
        for name in names:
            if _missing(attributes.get(name)):
                yield _id(region), "attribute_missing", f"The {class_def.name} has no value for {name!r}."


def _extent(region: Mapping[str, Any]) -> tuple[float, float, float]:
    """Width, height and area of a sized region: a box as drawn, a polygon by its bounding box."""
    g = region.get("geometry") or {}
    kind = region.get("type")
    if kind in ("bbox", "rotated_bbox"):
        return float(g["width"]), float(g["height"]), float(g["width"]) * float(g["height"])
    shape = Polygon(g["points"], g.get("holes") or [])
    minx, miny, maxx, maxy = shape.bounds
    return maxx - minx, maxy - miny, float(shape.area)


def _check_size(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    limits = [(*bound.split("_"), limit) for bound in SIZE_BOUNDS if (limit := rule.param(bound)) is not None]
    units = {"width": " px", "height": " px", "area": " px²", "aspect": ""}
    for region in regions:
        if region.get("type") not in _SIZED_TYPES:
            continue
        width, height, area = _extent(region)
        aspect = width / height if height > 0 else math.inf
        measured = {"width": width, "height": height, "area": area, "aspect": aspect}
        for side, what, limit in limits:
            value = measured[what]
            if (side == "min" and value < limit) or (side == "max" and value > limit):
                word = "at least" if side == "min" else "at most"
                yield (
                    _id(region),
                    f"{what}_{'below_min' if side == 'min' else 'above_max'}",
                    f"The region's {what} is {value:g}{units[what]}; "
                    f"it must be {word} {limit:g}{units[what]}.",
                )


def _bounds(region: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """The extent of a region drawn on the item (min x, min y, max x, max y), None for other types."""
    g = region.get("geometry") or {}
    kind = region.get("type")
    if kind == "bbox":
        return g["x"], g["y"], g["x"] + g["width"], g["y"] + g["height"]
    if kind == "rotated_bbox":
        angle = math.radians(g["angle"])
        cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
        half_w = (g["width"] * cos + g["height"] * sin) / 2
        half_h = (g["width"] * sin + g["height"] * cos) / 2
        return g["cx"] - half_w, g["cy"] - half_h, g["cx"] + half_w, g["cy"] + half_h
    if kind in ("polygon", "polyline", "keypoints"):
        points = [p for p in g.get("points") or [] if kind != "keypoints" or p[2] > 0]
        if not points:
            return None
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return min(xs), min(ys), max(xs), max(ys)
    return None


def _check_inside_item(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    if facts.width is None or facts.height is None:
        return  # a size the item does not have (not probed) cannot be held to
    width, height = facts.width, facts.height
    tolerance: float = rule.param("tolerance", 0.0)

    def outside(extent: tuple[float, float, float, float]) -> bool:
        minx, miny, maxx, maxy = extent
        return minx < -tolerance or miny < -tolerance or maxx > width + tolerance or maxy > height + tolerance

    for region in regions:
        if region.get("type") == "video_track":
            for keyframe in (region.get("geometry") or {}).get("keyframes") or []:
                box = (keyframe["x"], keyframe["y"], keyframe["x"] + keyframe["width"],
                       keyframe["y"] + keyframe["height"])  # fmt: skip
                if not keyframe.get("outside") and outside(box):
                    yield (
                        _id(region),
                        "outside_item",
                        f"At frame {keyframe['frame']} the box reaches outside the video ({width}x{height}).",
                    )
                    break
            continue
        extent = _bounds(region)
        if extent is not None and outside(extent):
            minx, miny, maxx, maxy = extent
            yield (
                _id(region),
                "outside_item",
                f"The region reaches from ({minx:g}, {miny:g}) to ({maxx:g}, {maxy:g}), "
                f"outside the item ({width}x{height}).",
            )


def _check_near_duplicates(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    threshold: float = rule.param("iou")
    groups: dict[tuple[str, str], list[int]] = {}
    for position, region in enumerate(regions):
        groups.setdefault((str(region.get("type")), str(region.get("label"))), []).append(position)
    pairs: list[tuple[int, int, float]] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        # The matcher's similarities (pairs whose extents do not meet are skipped, not computed).
        found = similar_pairs([regions[m] for m in members], threshold)
        pairs.extend((members[j], members[i], score) for i, j, score in found)
    # The later region of a pair is the one flagged: the earlier one was there first.
    for later, earlier, score in sorted(pairs):
        yield (
            _id(regions[later]),
            "near_duplicate",
            f"This {regions[later].get('label')} overlaps region {_id(regions[earlier])!r} "
            f"(similarity {score:.2f} ≥ {threshold:g}): it looks drawn twice.",
        )


def _check_count(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    low, high = rule.param("min"), rule.param("max")
    counted: list[tuple[str, int]]
    if rule.param("per_class"):
        names = sorted(rule.classes) if rule.classes is not None else list(schema.classes)
        labels = [region.get("label") for region in regions]
        counted = [(f"{name} regions", labels.count(name)) for name in names]
    else:
        counted = [("regions" if rule.classes is None else f"regions of {', '.join(sorted(rule.classes))}",
                    len(regions))]  # fmt: skip
    for what, number in counted:
        if low is not None and number < low:
            yield None, "too_few", f"The annotation has {number} {what}; at least {low} are needed."
        if high is not None and number > high:
            yield None, "too_many", f"The annotation has {number} {what}; at most {high} are allowed."


def _check_co_occurrence(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    first_of: dict[str, Mapping[str, Any]] = {}
    for region in regions:
        first_of.setdefault(str(region.get("label")), region)
    for first, second in rule.param("forbidden", ()):
        if first in first_of and second in first_of:
            yield (
                _id(first_of[second]),
                "forbidden_together",
                f"{first!r} and {second!r} may not both appear in one annotation "
                f"(here: regions {_id(first_of[first])!r} and {_id(first_of[second])!r}).",
            )
    for name, companions in rule.param("required", ()):
        if name not in first_of:
            continue
        lacking = [companion for companion in companions if companion not in first_of]
        if lacking:
            yield (
                _id(first_of[name]),
                "companion_missing",
                f"An annotation with {name!r} also needs {', '.join(map(repr, lacking))}.",
            )


def _check_not_empty(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    if not regions:
        what = "regions" if rule.classes is None else f"regions of {', '.join(sorted(rule.classes))}"
        yield None, "empty", f"The annotation has no {what}; at least one is needed."


def _is_edge(text: str, position: int) -> bool:
    if position <= 0 or position >= len(text):
        return True
    return bool(_WORD.match(text[position - 1])) != bool(_WORD.match(text[position]))


def _check_token_edges(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    spans = [region for region in regions if region.get("type") == "span"]
    if not spans:
        return
    source = text if text is not None else facts.text
    if source is None:
        raise ValueError("A token_edges rule needs the item's text to check spans against.")
    for region in spans:
        g = region.get("geometry") or {}
        start, end = g["start"], g["end"]
        if not 0 <= start < end <= len(source):
            continue  # off the text altogether: validation refuses that, not this rule
        for key, position in (("start", start), ("end", end)):
            if not _is_edge(source, position):
                token = _token_at(source, position)
                yield (
                    _id(region),
                    f"{key}_inside_token",
                    f"The span's {key} ({position}) cuts {token!r}; "
                    "spans begin and end where a word meets a space, punctuation or the text's edge.",
                )


def _token_at(text: str, position: int) -> str:
    """The run around a position whose characters are all word or all non-word, like it."""
    word = bool(_WORD.match(text[position]))
    left = position
    while left > 0 and bool(_WORD.match(text[left - 1])) == word:
        left -= 1
    right = position
    while right < len(text) and bool(_WORD.match(text[right])) == word:
        right += 1
    return text[left:right][:40]


def _check_track_gaps(
    rule: Rule, regions: list[Mapping[str, Any]], schema: Schema, facts: ItemFacts, text: str | None
) -> Iterator[_Raw]:
    limit: int = rule.param("max_gap_frames")
    for region in regions:
        if region.get("type") != "video_track":
            continue
        keyframes = sorted((region.get("geometry") or {}).get("keyframes") or [], key=lambda k: k["frame"])
        gone_at: int | None = None  # the frame the object left, while it is gone
        seen = False
        for keyframe in keyframes:
            if keyframe.get("outside"):
                if seen and gone_at is None:
                    gone_at = keyframe["frame"]
                continue
            if gone_at is not None:
                gap = keyframe["frame"] - gone_at
                if gap > limit:
                    yield (
                        _id(region),
                        "track_gap",
                        f"The track is missing from frame {gone_at} to {keyframe['frame'] - 1} "
                        f"({gap} frames); at most {limit} are allowed.",
                    )
                gone_at = None
            seen = True


_CHECKS = {
    "required_attributes": _check_required_attributes,
    "size": _check_size,
    "inside_item": _check_inside_item,
    "near_duplicates": _check_near_duplicates,
    "count": _check_count,
    "co_occurrence": _check_co_occurrence,
    "not_empty": _check_not_empty,
    "token_edges": _check_token_edges,
    "track_gaps": _check_track_gaps,
}
