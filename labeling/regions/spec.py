"""Label schema specs: parsing, validation and the frozen `Schema` every region is checked against.

`parse_schema` reads a spec as described in docs/annotations.md, collects every problem (a
`SpecInvalid` lists them all, each with the dotted path of the offending value) and returns a
`Schema` whose per-class lookups are precomputed, so validating regions costs no spec walking.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TOOLS: tuple[str, ...] = (
    "classification",
    "bbox",
    "rotated_bbox",
    "polygon",
    "polyline",
    "keypoints",
    "mask",
    "span",
    "relation",
    "transcription",
    "time_segment",
    "video_track",
    "cuboid",
)
ATTRIBUTE_TYPES: tuple[str, ...] = ("enum", "multi_enum", "bool", "int", "float", "text")
CLASSIFICATION_SETTINGS = ("single", "multi")
OUT_OF_BOUNDS_SETTINGS = ("reject", "clip")

NAME_MAX = 100
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
# Beyond this an integer cannot become a float; no real coordinate or attribute value is near it.
_INT_LIMIT = 10**308

_CLASS_KEYS = frozenset({"name", "color", "hotkey", "parent", "tools", "attributes", "skeleton"})
_ATTRIBUTE_KEYS = frozenset(
    {"name", "type", "required", "default", "options", "min", "max", "min_length", "max_length"}
)
# Which optional keys make sense for which attribute type: anything else is a mistake worth naming.
_KEYS_BY_TYPE: dict[str, frozenset[str]] = {
    "enum": frozenset({"options"}),
    "multi_enum": frozenset({"options"}),
    "bool": frozenset(),
    "int": frozenset({"min", "max"}),
    "float": frozenset({"min", "max"}),
    "text": frozenset({"min_length", "max_length"}),
}


class SpecInvalid(Exception):
    """The spec breaks the contract; `errors` lists every problem as {path, code, message}."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(f"The label schema has {len(errors)} problem(s): {errors[0]['message']}")
        self.errors = errors


class ValueProblem(Exception):
    """Why a value does not fit an attribute (raised by `AttributeDef.coerce`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_number(value: Any) -> bool:
    """A finite JSON number: int or float, never bool, NaN or infinity."""
    kind = type(value)
    if kind is float:
        return bool(value - value == 0.0)
    return kind is int and -_INT_LIMIT < value < _INT_LIMIT


def show_value(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class AttributeDef:
    """One attribute of a class; `coerce` checks a value and returns its normalized form."""

    name: str
    type: str
    required: bool = False
    default: Any = None
    options: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    option_set: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "option_set", frozenset(self.options))

    def coerce(self, value: Any) -> Any:
        """The value in normalized form (ints for int, floats for float); ValueProblem if it does not fit."""
        kind = self.type
        if kind == "enum":
            if type(value) is not str:
                raise ValueProblem(
                    "invalid_type", f"Expected one of the options as a string, got {show_value(value)}."
                )
            if value not in self.option_set:
                raise ValueProblem(
                    "unknown_option", f"{show_value(value)} is not an option; {self._options_text()}."
                )
            return value
        if kind == "bool":
            if type(value) is not bool:
                raise ValueProblem("invalid_type", f"Expected true or false, got {show_value(value)}.")
            return value
        if kind == "int":
            if type(value) is float and value.is_integer():
                value = int(value)  # 3.0 from a client that only has floats is still the integer 3
            if type(value) is not int or not -_INT_LIMIT < value < _INT_LIMIT:
                raise ValueProblem("invalid_type", f"Expected an integer, got {show_value(value)}.")
            self._check_range(value)
            return value
        if kind == "float":
            if not is_number(value):
                raise ValueProblem("invalid_type", f"Expected a finite number, got {show_value(value)}.")
            value = float(value)
            self._check_range(value)
            return value
        if kind == "text":
            if type(value) is not str:
                raise ValueProblem("invalid_type", f"Expected a string, got {show_value(value)}.")
            if self.min_length is not None and len(value) < self.min_length:
                raise ValueProblem(
                    "too_short",
                    f"The text has {len(value)} characters; at least {self.min_length} are needed.",
                )
            if self.max_length is not None and len(value) > self.max_length:
                raise ValueProblem(
                    "too_long",
                    f"The text has {len(value)} characters; at most {self.max_length} are allowed.",
                )
            return value
        # multi_enum
        if type(value) is not list:
            raise ValueProblem("invalid_type", f"Expected a list of options, got {show_value(value)}.")
        seen: set[str] = set()
        for choice in value:
            if type(choice) is not str:
                raise ValueProblem(
                    "invalid_type", f"Every choice must be a string option, got {show_value(choice)}."
                )
            if choice not in self.option_set:
                raise ValueProblem(
                    "unknown_option", f"{show_value(choice)} is not an option; {self._options_text()}."
                )
            if choice in seen:
                raise ValueProblem("invalid_value", f"{show_value(choice)} is chosen more than once.")
            seen.add(choice)
        return list(value)

    def _check_range(self, value: float) -> None:
        if self.min is not None and value < self.min:
            raise ValueProblem("out_of_range", f"{value} is below the minimum {self.min}.")
        if self.max is not None and value > self.max:
            raise ValueProblem("out_of_range", f"{value} is above the maximum {self.max}.")

    def _options_text(self) -> str:
        shown = ", ".join(self.options[:20]) + (", ..." if len(self.options) > 20 else "")
        return f"the options are: {shown}"


@dataclass(frozen=True)
class ClassDef:
    """A class of the schema, with what region validation needs precomputed."""

    name: str
    color: str
    hotkey: str | None = None
    parent: str | None = None
    tools: frozenset[str] = frozenset()
    attributes: dict[str, AttributeDef] = field(default_factory=dict)
    keypoints: tuple[str, ...] = ()
    edges: tuple[tuple[int, int], ...] = ()
    # Precomputed in __post_init__: optional attributes with a default (filled when missing) and
    # the names of required attributes.
    defaults: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    required: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        defaults = {
            name: attribute.default
            for name, attribute in self.attributes.items()
            if not attribute.required and attribute.default is not None
        }
        object.__setattr__(self, "defaults", defaults)
        object.__setattr__(
            self, "required", tuple(name for name, attribute in self.attributes.items() if attribute.required)
        )


@dataclass(frozen=True)
class Schema:
    """A parsed, valid label schema. `spec` is the normalized spec, ready to store as JSON."""

    classes: dict[str, ClassDef]
    classification: str = "single"
    out_of_bounds: str = "reject"
    spec: dict[str, Any] = field(default_factory=dict)


class Problems:
    """Every problem of a document being checked, each located by its path: {path, code, message}."""

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []

    def add(self, path: str, code: str, message: str) -> None:
        self.errors.append({"path": path, "code": code, "message": message})

    def name(self, value: Any, path: str, what: str) -> str | None:
        """A 1-100 character name without surrounding blanks, or None after recording why not."""
        if value is None:
            self.add(path, "required", f"The {what} needs a name.")
            return None
        if type(value) is not str:
            self.add(path, "invalid_type", f"The {what} name must be a string, got {show_value(value)}.")
            return None
        if not value.strip():
            self.add(path, "too_short", f"The {what} name must have at least one visible character.")
            return None
        if len(value) > NAME_MAX:
            self.add(path, "too_long", f"The {what} name has {len(value)} characters; at most {NAME_MAX}.")
            return None
        if value != value.strip():
            self.add(path, "invalid_value", f"The {what} name {value!r} starts or ends with blanks.")
            return None
        return value

    def unknown_keys(self, value: Mapping[str, Any], allowed: frozenset[str], path: str, what: str) -> None:
        for key in value:
            if key not in allowed:
                self.add(
                    _join(path, str(key)),
                    "unknown_field",
                    f"{what} has no field {str(key)!r}; the fields are: {', '.join(sorted(allowed))}.",
                )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_schema(spec: Any) -> Schema:
    """Validate a whole spec and return its `Schema`; SpecInvalid lists every problem found."""
    out = Problems()
    if not isinstance(spec, dict):
        out.add(
            "",
            "invalid_type",
            f"The spec must be an object with settings and classes, got {show_value(spec)}.",
        )
        raise SpecInvalid(out.errors)
    out.unknown_keys(spec, frozenset({"settings", "classes"}), "", "The spec")

    classification, out_of_bounds = _parse_settings(spec.get("settings"), out)

    raw_classes = spec.get("classes")
    parsed: list[tuple[ClassDef, dict[str, Any]]] = []
    if raw_classes is None:
        out.add("classes", "required", "The spec needs a list of classes.")
    elif type(raw_classes) is not list:
        out.add("classes", "invalid_type", f"classes must be a list, got {show_value(raw_classes)}.")
    elif not raw_classes:
        out.add("classes", "too_short", "The schema needs at least one class.")
    else:
        for index, raw in enumerate(raw_classes):
            result = _parse_class(raw, f"classes[{index}]", out)
            if result is not None:
                parsed.append(result)
        _check_across_classes(raw_classes, out)

    if out.errors:
        raise SpecInvalid(out.errors)
    classes = {class_def.name: class_def for class_def, _ in parsed}
    normalized = {
        "settings": {"classification": classification, "out_of_bounds": out_of_bounds},
        "classes": [normal for _, normal in parsed],
    }
    return Schema(
        classes=classes, classification=classification, out_of_bounds=out_of_bounds, spec=normalized
    )


def _parse_settings(settings: Any, out: Problems) -> tuple[str, str]:
    classification, out_of_bounds = "single", "reject"
    if settings is None:
        return classification, out_of_bounds
    if not isinstance(settings, dict):
        out.add("settings", "invalid_type", f"settings must be an object, got {show_value(settings)}.")
        return classification, out_of_bounds
    out.unknown_keys(settings, frozenset({"classification", "out_of_bounds"}), "settings", "settings")
    for key, choices in (
        ("classification", CLASSIFICATION_SETTINGS),
        ("out_of_bounds", OUT_OF_BOUNDS_SETTINGS),
    ):
        value = settings.get(key)
        if value is None:
            continue
        if value not in choices or type(value) is not str:
            out.add(
                f"settings.{key}",
                "unknown_option",
                f"settings.{key} must be {' or '.join(choices)}, got {show_value(value)}.",
            )
        elif key == "classification":
            classification = value
        else:
            out_of_bounds = value
    return classification, out_of_bounds


def _parse_class(raw: Any, path: str, out: Problems) -> tuple[ClassDef, dict[str, Any]] | None:
    if not isinstance(raw, dict):
        out.add(path, "invalid_type", f"A class must be an object, got {show_value(raw)}.")
        return None
    before = len(out.errors)
    out.unknown_keys(raw, _CLASS_KEYS, path, "A class")
    name = out.name(raw.get("name"), f"{path}.name", "class")

    color = raw.get("color")
    if color is None:
        out.add(f"{path}.color", "required", "The class needs a color as #rrggbb.")
    elif type(color) is not str or not _COLOR.fullmatch(color):
        out.add(
            f"{path}.color",
            "invalid_value",
            f"The color must be #rrggbb (hex digits), got {show_value(color)}.",
        )

    hotkey = raw.get("hotkey")
    if hotkey is not None and (type(hotkey) is not str or len(hotkey) != 1 or hotkey.isspace()):
        out.add(
            f"{path}.hotkey", "invalid_value", f"A hotkey is one visible character, got {show_value(hotkey)}."
        )

    parent = raw.get("parent")
    if parent is not None and type(parent) is not str:
        out.add(f"{path}.parent", "invalid_type", f"parent must be a class name, got {show_value(parent)}.")

    tools = _parse_tools(raw.get("tools"), f"{path}.tools", out)
    attributes = _parse_attributes(raw.get("attributes"), f"{path}.attributes", out)
    keypoints, edges = _parse_skeleton(raw, tools, path, out)

    if len(out.errors) > before or name is None:
        return None
    assert isinstance(color, str)
    normal: dict[str, Any] = {"name": name, "color": color.lower()}
    if hotkey is not None:
        normal["hotkey"] = hotkey
    if parent is not None:
        normal["parent"] = parent
    normal["tools"] = list(tools)
    normal["attributes"] = [normal_attribute for _, normal_attribute in attributes]
    if "keypoints" in tools:
        normal["skeleton"] = {"keypoints": list(keypoints), "edges": [list(edge) for edge in edges]}
    class_def = ClassDef(
        name=name,
        color=color.lower(),
        hotkey=hotkey,
        parent=parent,
        tools=frozenset(tools),
        attributes={attribute.name: attribute for attribute, _ in attributes},
        keypoints=keypoints,
        edges=edges,
    )
    return class_def, normal


def _parse_tools(tools: Any, path: str, out: Problems) -> list[str]:
    if tools is None:
        out.add(path, "required", f"The class needs its tools, one or more of: {', '.join(TOOLS)}.")
        return []
    if type(tools) is not list:
        out.add(path, "invalid_type", f"tools must be a list of region types, got {show_value(tools)}.")
        return []
    if not tools:
        out.add(path, "too_short", f"The class needs at least one tool: {', '.join(TOOLS)}.")
        return []
    result: list[str] = []
    for index, tool in enumerate(tools):
        if type(tool) is not str or tool not in TOOLS:
            out.add(
                f"{path}[{index}]",
                "unknown_option",
                f"{show_value(tool)} is not a tool; the tools are: {', '.join(TOOLS)}.",
            )
        elif tool in result:
            out.add(f"{path}[{index}]", "duplicate", f"The tool {tool!r} is listed twice.")
        else:
            result.append(tool)
    return result


def _parse_attributes(raw: Any, path: str, out: Problems) -> list[tuple[AttributeDef, dict[str, Any]]]:
    if raw is None:
        return []
    if type(raw) is not list:
        out.add(path, "invalid_type", f"attributes must be a list, got {show_value(raw)}.")
        return []
    result: list[tuple[AttributeDef, dict[str, Any]]] = []
    names: set[str] = set()
    for index, attribute in enumerate(raw):
        where = f"{path}[{index}]"
        parsed = _parse_attribute(attribute, where, out)
        if parsed is None:
            continue
        if parsed[0].name in names:
            out.add(f"{where}.name", "duplicate", f"The class already has an attribute {parsed[0].name!r}.")
            continue
        names.add(parsed[0].name)
        result.append(parsed)
    return result


def _parse_attribute(raw: Any, path: str, out: Problems) -> tuple[AttributeDef, dict[str, Any]] | None:
    if not isinstance(raw, dict):
        out.add(path, "invalid_type", f"An attribute must be an object, got {show_value(raw)}.")
        return None
    before = len(out.errors)
    out.unknown_keys(raw, _ATTRIBUTE_KEYS, path, "An attribute")
    name = out.name(raw.get("name"), f"{path}.name", "attribute")
    kind = raw.get("type")
    if kind is None:
        out.add(f"{path}.type", "required", f"The attribute needs a type: {', '.join(ATTRIBUTE_TYPES)}.")
        return None
    if type(kind) is not str or kind not in ATTRIBUTE_TYPES:
        out.add(
            f"{path}.type",
            "unknown_option",
            f"{show_value(kind)} is not an attribute type; the types are: {', '.join(ATTRIBUTE_TYPES)}.",
        )
        return None
    applicable = _KEYS_BY_TYPE[kind]
    for key in ("options", "min", "max", "min_length", "max_length"):
        if key in raw and key not in applicable:
            out.add(f"{path}.{key}", "unknown_field", f"{key} does not apply to a {kind} attribute.")

    required = raw.get("required", False)
    if type(required) is not bool:
        out.add(
            f"{path}.required", "invalid_type", f"required must be true or false, got {show_value(required)}."
        )

    options: tuple[str, ...] = ()
    if kind in ("enum", "multi_enum"):
        options = _parse_options(raw.get("options"), f"{path}.options", out)
    low = high = None
    if kind in ("int", "float"):
        low = _parse_bound(raw.get("min"), kind, f"{path}.min", out)
        high = _parse_bound(raw.get("max"), kind, f"{path}.max", out)
        if low is not None and high is not None and low > high:
            out.add(f"{path}.max", "invalid_value", f"max ({high}) must not be below min ({low}).")
    min_length = max_length = None
    if kind == "text":
        min_length = _parse_length(raw.get("min_length"), f"{path}.min_length", out)
        max_length = _parse_length(raw.get("max_length"), f"{path}.max_length", out)
        if min_length is not None and max_length is not None and min_length > max_length:
            out.add(
                f"{path}.max_length",
                "invalid_value",
                f"max_length ({max_length}) must not be below min_length ({min_length}).",
            )
    if len(out.errors) > before or name is None:
        return None

    attribute = AttributeDef(
        name=name,
        type=kind,
        required=required,
        options=options,
        min=low,
        max=high,
        min_length=min_length,
        max_length=max_length,
    )
    default = raw.get("default")
    if default is not None:
        try:
            default = attribute.coerce(default)
        except ValueProblem as problem:
            out.add(
                f"{path}.default", problem.code, f"The default does not fit the attribute: {problem.message}"
            )
            return None
        attribute = AttributeDef(
            name=name,
            type=kind,
            required=required,
            default=default,
            options=options,
            min=low,
            max=high,
            min_length=min_length,
            max_length=max_length,
        )
    normal: dict[str, Any] = {"name": name, "type": kind, "required": required}
    for key, value in (
        ("options", list(options) if options else None),
        ("min", low),
        ("max", high),
        ("min_length", min_length),
        ("max_length", max_length),
        ("default", default),
    ):
        if value is not None:
            normal[key] = value
    return attribute, normal


def _parse_options(raw: Any, path: str, out: Problems) -> tuple[str, ...]:
    if raw is None:
        out.add(path, "required", "An enum attribute needs its options (one or more strings).")
        return ()
    if type(raw) is not list:
        out.add(path, "invalid_type", f"options must be a list of strings, got {show_value(raw)}.")
        return ()
    if not raw:
        out.add(path, "too_short", "An enum attribute needs at least one option.")
        return ()
    seen: list[str] = []
    for index, option in enumerate(raw):
        if type(option) is not str or not option or len(option) > NAME_MAX:
            out.add(
                f"{path}[{index}]",
                "invalid_value",
                f"An option is a string of 1-{NAME_MAX} characters, got {show_value(option)}.",
            )
        elif option in seen:
            out.add(f"{path}[{index}]", "duplicate", f"The option {option!r} is listed twice.")
        else:
            seen.append(option)
    return tuple(seen)


def _parse_bound(raw: Any, kind: str, path: str, out: Problems) -> float | None:
    if raw is None:
        return None
    if kind == "int":
        if type(raw) is float and raw.is_integer():
            raw = int(raw)
        if type(raw) is not int or not -_INT_LIMIT < raw < _INT_LIMIT:
            out.add(
                path,
                "invalid_type",
                f"The bound of an int attribute must be an integer, got {show_value(raw)}.",
            )
            return None
        return raw
    if not is_number(raw):
        out.add(path, "invalid_type", f"The bound must be a finite number, got {show_value(raw)}.")
        return None
    return float(raw)


def _parse_length(raw: Any, path: str, out: Problems) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or raw < 0:
        out.add(path, "invalid_value", f"A length is an integer ≥ 0, got {show_value(raw)}.")
        return None
    return raw


def _parse_skeleton(
    raw: dict[str, Any], tools: list[str], path: str, out: Problems
) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    skeleton = raw.get("skeleton")
    where = f"{path}.skeleton"
    if "keypoints" not in tools:
        if skeleton is not None:
            out.add(where, "unknown_field", "A skeleton is only for classes with the keypoints tool.")
        return (), ()
    if skeleton is None:
        out.add(where, "required", "A class with the keypoints tool needs a skeleton {keypoints, edges}.")
        return (), ()
    if not isinstance(skeleton, dict):
        out.add(
            where,
            "invalid_type",
            f"skeleton must be an object {{keypoints, edges}}, got {show_value(skeleton)}.",
        )
        return (), ()
    out.unknown_keys(skeleton, frozenset({"keypoints", "edges"}), where, "A skeleton")

    names: list[str] = []
    raw_names = skeleton.get("keypoints")
    if raw_names is None:
        out.add(f"{where}.keypoints", "required", "The skeleton needs its keypoint names.")
    elif type(raw_names) is not list:
        out.add(
            f"{where}.keypoints",
            "invalid_type",
            f"keypoints must be a list of names, got {show_value(raw_names)}.",
        )
    elif not raw_names:
        out.add(f"{where}.keypoints", "too_short", "The skeleton needs at least one keypoint.")
    else:
        for index, name in enumerate(raw_names):
            checked = out.name(name, f"{where}.keypoints[{index}]", "keypoint")
            if checked is None:
                continue
            if checked in names:
                out.add(
                    f"{where}.keypoints[{index}]", "duplicate", f"The keypoint {checked!r} is listed twice."
                )
            else:
                names.append(checked)

    edges: list[tuple[int, int]] = []
    raw_edges = skeleton.get("edges", [])
    if type(raw_edges) is not list:
        out.add(
            f"{where}.edges",
            "invalid_type",
            f"edges must be a list of index pairs, got {show_value(raw_edges)}.",
        )
        raw_edges = []
    # Without a list of names there is nothing to hold the indices to; the names' error says why.
    count = len(raw_names) if type(raw_names) is list and raw_names else None
    for index, edge in enumerate(raw_edges):
        edge_path = f"{where}.edges[{index}]"
        if type(edge) is not list or len(edge) != 2 or any(type(end) is not int for end in edge):
            out.add(
                edge_path, "invalid_type", f"An edge is a pair of keypoint indices, got {show_value(edge)}."
            )
            continue
        first, second = edge
        if count is None:
            continue
        if not (0 <= first < count and 0 <= second < count):
            out.add(
                edge_path,
                "out_of_range",
                f"Edge {edge} refers to a keypoint that does not exist; indices go from 0 to {count - 1}.",
            )
        elif first == second:
            out.add(edge_path, "invalid_value", f"Edge {edge} joins a keypoint to itself.")
        elif (first, second) in edges or (second, first) in edges:
            out.add(edge_path, "duplicate", f"Edge {edge} is listed twice.")
        else:
            edges.append((first, second))
    return tuple(names), tuple(edges)


def _check_across_classes(raw_classes: list[Any], out: Problems) -> None:
    """Unique names and hotkeys, parents that exist, no parent cycles."""
    names: dict[str, int] = {}
    hotkeys: dict[str, int] = {}
    parents: dict[str, str] = {}
    for index, raw in enumerate(raw_classes):
        if not isinstance(raw, dict):
            continue
        name = raw.get("name")
        if type(name) is str:
            if name in names:
                out.add(
                    f"classes[{index}].name",
                    "duplicate",
                    f"The class name {name!r} is already used by classes[{names[name]}].",
                )
            else:
                names[name] = index
        hotkey = raw.get("hotkey")
        if type(hotkey) is str and len(hotkey) == 1:
            if hotkey in hotkeys:
                out.add(
                    f"classes[{index}].hotkey",
                    "duplicate",
                    f"The hotkey {hotkey!r} is already used by classes[{hotkeys[hotkey]}].",
                )
            else:
                hotkeys[hotkey] = index
    for index, raw in enumerate(raw_classes):
        if (
            not isinstance(raw, dict)
            or type(raw.get("parent")) is not str
            or type(raw.get("name")) is not str
        ):
            continue
        parent = raw["parent"]
        if parent not in names:
            out.add(
                f"classes[{index}].parent",
                "unknown_class",
                f"The parent {parent!r} is not a class of the schema.",
            )
        elif names.get(raw["name"]) == index:
            parents[raw["name"]] = parent
    reported: set[str] = set()
    for start in parents:
        chain = [start]
        current = parents.get(start)
        while current is not None and current not in chain:
            chain.append(current)
            current = parents.get(current)
        if current is not None and current == start and not reported & set(chain):
            reported.update(chain)
            cycle = " → ".join([*chain, start])
            out.add(f"classes[{names[start]}].parent", "invalid_value", f"The parents form a cycle: {cycle}.")
