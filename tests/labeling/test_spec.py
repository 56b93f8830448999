"""Label schema specs: what parse_schema accepts, how it normalizes, and every way a spec is refused."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labeling.regions import TOOLS, AttributeDef, Schema, SpecInvalid, parse_schema

# The spec of docs/annotations.md, plus the parent class its example refers to.
DOC_SPEC: dict[str, Any] = {
    "settings": {"classification": "single", "out_of_bounds": "reject"},
    "classes": [
        {
            "name": "car",
            "color": "#ff0000",
            "hotkey": "c",
            "parent": "vehicle",
            "tools": ["bbox", "polygon", "mask", "video_track", "cuboid"],
            "attributes": [
                {"name": "occluded", "type": "bool", "required": True},
                {"name": "make", "type": "enum", "options": ["audi", "bmw", "other"], "default": "other"},
                {"name": "tags", "type": "multi_enum", "options": ["parked", "moving"]},
                {"name": "doors", "type": "int", "min": 2, "max": 5},
                {"name": "speed", "type": "float", "min": 0},
                {"name": "plate", "type": "text", "min_length": 1, "max_length": 12},
            ],
        },
        {
            "name": "person",
            "color": "#00ff00",
            "tools": ["keypoints", "bbox"],
            "skeleton": {"keypoints": ["head", "left_hand", "right_hand"], "edges": [[0, 1], [0, 2]]},
        },
        {"name": "drives", "color": "#0000ff", "tools": ["relation"]},
        {"name": "vehicle", "color": "#888888", "tools": ["bbox"]},
    ],
}


def doc_spec() -> dict[str, Any]:
    return copy.deepcopy(DOC_SPEC)


def refusal(spec: Any) -> list[tuple[str, str]]:
    """(path, code) of every problem parse_schema reports for the spec."""
    with pytest.raises(SpecInvalid) as caught:
        parse_schema(spec)
    for error in caught.value.errors:
        assert set(error) == {"path", "code", "message"}
        assert error["message"]
    return [(error["path"], error["code"]) for error in caught.value.errors]


def test_the_documented_spec_parses_into_class_definitions_in_spec_order() -> None:
    schema = parse_schema(doc_spec())

    assert list(schema.classes) == ["car", "person", "drives", "vehicle"]
    assert schema.classification == "single"
    assert schema.out_of_bounds == "reject"
    car = schema.classes["car"]
    assert car.color == "#ff0000"
    assert car.hotkey == "c"
    assert car.parent == "vehicle"
    assert car.tools == frozenset({"bbox", "polygon", "mask", "video_track", "cuboid"})
    assert list(car.attributes) == ["occluded", "make", "tags", "doors", "speed", "plate"]
    assert car.attributes["occluded"] == AttributeDef(name="occluded", type="bool", required=True)
    assert car.attributes["make"].default == "other"
    assert car.attributes["make"].options == ("audi", "bmw", "other")
    assert car.attributes["doors"].min == 2 and car.attributes["doors"].max == 5
    assert car.attributes["speed"].min == 0.0 and car.attributes["speed"].max is None
    assert car.attributes["plate"].min_length == 1 and car.attributes["plate"].max_length == 12
    assert car.keypoints == () and car.edges == ()
    person = schema.classes["person"]
    assert person.keypoints == ("head", "left_hand", "right_hand")
    assert person.edges == ((0, 1), (0, 2))
    assert person.attributes == {} and person.hotkey is None and person.parent is None


def test_precomputed_lookups_separate_required_attributes_from_defaults() -> None:
    car = parse_schema(doc_spec()).classes["car"]

    assert car.required == ("occluded",)
    assert car.defaults == {"make": "other"}


def test_a_required_attribute_with_a_default_is_not_filled_in() -> None:
    spec = doc_spec()
    spec["classes"][0]["attributes"][1]["required"] = True

    car = parse_schema(spec).classes["car"]

    assert car.defaults == {}
    assert car.required == ("occluded", "make")


def test_the_normalized_spec_fills_settings_and_defaults_and_lowers_colors() -> None:
    spec = {
        "classes": [
            {
                "name": "Cat",
                "color": "#AbCdEf",
                "tools": ["bbox"],
                "attributes": [{"name": "a", "type": "bool"}],
            },
            {"name": "pose", "color": "#000000", "tools": ["keypoints"], "skeleton": {"keypoints": ["nose"]}},
        ]
    }

    schema = parse_schema(spec)

    assert schema.spec == {
        "settings": {"classification": "single", "out_of_bounds": "reject"},
        "classes": [
            {
                "name": "Cat",
                "color": "#abcdef",
                "tools": ["bbox"],
                "attributes": [{"name": "a", "type": "bool", "required": False}],
            },
            {
                "name": "pose",
                "color": "#000000",
                "tools": ["keypoints"],
                "attributes": [],
                "skeleton": {"keypoints": ["nose"], "edges": []},
            },
        ],
    }
    # The normalized spec is itself a valid spec that normalizes to itself.
    assert parse_schema(schema.spec).spec == schema.spec


def test_the_normalized_spec_keeps_what_was_given() -> None:
    schema = parse_schema(doc_spec())

    car = schema.spec["classes"][0]
    assert car["hotkey"] == "c" and car["parent"] == "vehicle"
    assert car["attributes"][1] == {
        "name": "make",
        "type": "enum",
        "required": False,
        "options": ["audi", "bmw", "other"],
        "default": "other",
    }
    assert car["attributes"][3] == {"name": "doors", "type": "int", "required": False, "min": 2, "max": 5}
    assert schema.spec["classes"][1]["skeleton"] == {
        "keypoints": ["head", "left_hand", "right_hand"],
        "edges": [[0, 1], [0, 2]],
    }


def test_parsing_does_not_modify_the_given_spec() -> None:
    spec = doc_spec()
    parse_schema(spec)
    assert spec == DOC_SPEC


def test_schema_and_class_definitions_are_frozen() -> None:
    schema = parse_schema(doc_spec())
    with pytest.raises(dataclasses.FrozenInstanceError):
        schema.classification = "multi"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        schema.classes["car"].color = "#000000"  # type: ignore[misc]


def test_settings_take_the_documented_values() -> None:
    spec = doc_spec()
    spec["settings"] = {"classification": "multi", "out_of_bounds": "clip"}
    schema = parse_schema(spec)
    assert (schema.classification, schema.out_of_bounds) == ("multi", "clip")


def test_tools_are_the_thirteen_region_types() -> None:
    assert len(TOOLS) == 13 and len(set(TOOLS)) == 13
    spec = {
        "classes": [{"name": "all", "color": "#123456", "tools": [*TOOLS], "skeleton": {"keypoints": ["a"]}}]
    }
    assert parse_schema(spec).classes["all"].tools == frozenset(TOOLS)


def test_integral_floats_are_accepted_as_int_bounds() -> None:
    spec = {
        "classes": [
            {
                "name": "c",
                "color": "#000000",
                "tools": ["bbox"],
                "attributes": [{"name": "n", "type": "int", "min": 1.0, "max": 3, "default": 2.0}],
            }
        ]
    }
    attribute = parse_schema(spec).classes["c"].attributes["n"]
    assert (attribute.min, attribute.max, attribute.default) == (1, 3, 2)
    assert type(attribute.min) is int and type(attribute.default) is int


Mutation = Callable[[dict[str, Any]], Any]


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        target: Any = spec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        target: Any = spec
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


CAR = ("classes", 0)
ATTRS = (*CAR, "attributes")
PERSON = ("classes", 1)

# (mutation of the documented spec, the one problem it must cause)
INVALID_VARIANTS: list[tuple[str, Mutation, str, str]] = [
    ("unknown top-level field", _set(("version",), 2), "version", "unknown_field"),
    ("settings not an object", _set(("settings",), "single"), "settings", "invalid_type"),
    ("unknown setting", _set(("settings", "mode"), "x"), "settings.mode", "unknown_field"),
    (
        "bad classification",
        _set(("settings", "classification"), "many"),
        "settings.classification",
        "unknown_option",
    ),
    (
        "bad out_of_bounds",
        _set(("settings", "out_of_bounds"), "wrap"),
        "settings.out_of_bounds",
        "unknown_option",
    ),
    ("classes missing", _delete(("classes",)), "classes", "required"),
    ("classes not a list", _set(("classes",), {"car": {}}), "classes", "invalid_type"),
    ("no classes", _set(("classes",), []), "classes", "too_short"),
    ("class not an object", _set(("classes", 2), "drives"), "classes[2]", "invalid_type"),
    ("unknown class field", _set((*CAR, "shape"), "round"), "classes[0].shape", "unknown_field"),
    ("name missing", _delete((*CAR, "name")), "classes[0].name", "required"),
    ("name not a string", _set((*CAR, "name"), 7), "classes[0].name", "invalid_type"),
    ("name empty", _set((*CAR, "name"), ""), "classes[0].name", "too_short"),
    ("name blank", _set((*CAR, "name"), "   "), "classes[0].name", "too_short"),
    ("name too long", _set((*CAR, "name"), "x" * 101), "classes[0].name", "too_long"),
    ("name with blanks around", _set((*CAR, "name"), " car"), "classes[0].name", "invalid_value"),
    ("duplicate name", _set(("classes", 2, "name"), "person"), "classes[2].name", "duplicate"),
    ("color missing", _delete((*CAR, "color")), "classes[0].color", "required"),
    ("color not hex", _set((*CAR, "color"), "red"), "classes[0].color", "invalid_value"),
    ("color short form", _set((*CAR, "color"), "#f00"), "classes[0].color", "invalid_value"),
    ("color not a string", _set((*CAR, "color"), 0xFF0000), "classes[0].color", "invalid_value"),
    ("hotkey two characters", _set((*CAR, "hotkey"), "ca"), "classes[0].hotkey", "invalid_value"),
    ("hotkey blank", _set((*CAR, "hotkey"), " "), "classes[0].hotkey", "invalid_value"),
    ("hotkey not a string", _set((*CAR, "hotkey"), 1), "classes[0].hotkey", "invalid_value"),
    ("duplicate hotkey", _set((*PERSON, "hotkey"), "c"), "classes[1].hotkey", "duplicate"),
    ("unknown parent", _set((*CAR, "parent"), "thing"), "classes[0].parent", "unknown_class"),
    ("parent not a string", _set((*CAR, "parent"), ["vehicle"]), "classes[0].parent", "invalid_type"),
    ("own parent", _set((*CAR, "parent"), "car"), "classes[0].parent", "invalid_value"),
    ("tools missing", _delete((*CAR, "tools")), "classes[0].tools", "required"),
    ("tools not a list", _set((*CAR, "tools"), "bbox"), "classes[0].tools", "invalid_type"),
    ("no tools", _set((*CAR, "tools"), []), "classes[0].tools", "too_short"),
    ("unknown tool", _set((*CAR, "tools", 1), "brush"), "classes[0].tools[1]", "unknown_option"),
    ("duplicate tool", _set((*CAR, "tools", 1), "bbox"), "classes[0].tools[1]", "duplicate"),
    ("attributes not a list", _set((*CAR, "attributes"), {}), "classes[0].attributes", "invalid_type"),
    ("attribute not an object", _set((*ATTRS, 0), "occluded"), "classes[0].attributes[0]", "invalid_type"),
    (
        "attribute unknown field",
        _set((*ATTRS, 0, "unit"), "m"),
        "classes[0].attributes[0].unit",
        "unknown_field",
    ),
    ("attribute name missing", _delete((*ATTRS, 0, "name")), "classes[0].attributes[0].name", "required"),
    (
        "attribute name too long",
        _set((*ATTRS, 0, "name"), "a" * 101),
        "classes[0].attributes[0].name",
        "too_long",
    ),
    (
        "duplicate attribute",
        _set((*ATTRS, 1, "name"), "occluded"),
        "classes[0].attributes[1].name",
        "duplicate",
    ),
    ("attribute type missing", _delete((*ATTRS, 0, "type")), "classes[0].attributes[0].type", "required"),
    (
        "unknown attribute type",
        _set((*ATTRS, 0, "type"), "date"),
        "classes[0].attributes[0].type",
        "unknown_option",
    ),
    (
        "required not a bool",
        _set((*ATTRS, 0, "required"), "yes"),
        "classes[0].attributes[0].required",
        "invalid_type",
    ),
    (
        "options on a bool",
        _set((*ATTRS, 0, "options"), ["a"]),
        "classes[0].attributes[0].options",
        "unknown_field",
    ),
    ("min on a text", _set((*ATTRS, 5, "min"), 1), "classes[0].attributes[5].min", "unknown_field"),
    (
        "max_length on an int",
        _set((*ATTRS, 3, "max_length"), 1),
        "classes[0].attributes[3].max_length",
        "unknown_field",
    ),
    ("enum without options", _delete((*ATTRS, 1, "options")), "classes[0].attributes[1].options", "required"),
    (
        "options not a list",
        _set((*ATTRS, 1, "options"), "audi"),
        "classes[0].attributes[1].options",
        "invalid_type",
    ),
    ("no options", _set((*ATTRS, 2, "options"), []), "classes[0].attributes[2].options", "too_short"),
    (
        "empty option",
        _set((*ATTRS, 2, "options", 1), ""),
        "classes[0].attributes[2].options[1]",
        "invalid_value",
    ),
    (
        "non-string option",
        _set((*ATTRS, 2, "options", 1), 3),
        "classes[0].attributes[2].options[1]",
        "invalid_value",
    ),
    (
        "duplicate option",
        _set((*ATTRS, 2, "options", 1), "parked"),
        "classes[0].attributes[2].options[1]",
        "duplicate",
    ),
    ("non-integer int bound", _set((*ATTRS, 3, "min"), 2.5), "classes[0].attributes[3].min", "invalid_type"),
    ("bool bound", _set((*ATTRS, 4, "min"), False), "classes[0].attributes[4].min", "invalid_type"),
    (
        "infinite bound",
        _set((*ATTRS, 4, "min"), float("inf")),
        "classes[0].attributes[4].min",
        "invalid_type",
    ),
    ("min above max", _set((*ATTRS, 3, "min"), 6), "classes[0].attributes[3].max", "invalid_value"),
    (
        "negative length",
        _set((*ATTRS, 5, "min_length"), -1),
        "classes[0].attributes[5].min_length",
        "invalid_value",
    ),
    (
        "float length",
        _set((*ATTRS, 5, "max_length"), 3.5),
        "classes[0].attributes[5].max_length",
        "invalid_value",
    ),
    (
        "min_length above max",
        _set((*ATTRS, 5, "min_length"), 13),
        "classes[0].attributes[5].max_length",
        "invalid_value",
    ),
    (
        "default not an option",
        _set((*ATTRS, 1, "default"), "vw"),
        "classes[0].attributes[1].default",
        "unknown_option",
    ),
    (
        "default of wrong type",
        _set((*ATTRS, 0, "default"), "no"),
        "classes[0].attributes[0].default",
        "invalid_type",
    ),
    (
        "default out of range",
        _set((*ATTRS, 3, "default"), 9),
        "classes[0].attributes[3].default",
        "out_of_range",
    ),
    (
        "default too long",
        _set((*ATTRS, 5, "default"), "x" * 13),
        "classes[0].attributes[5].default",
        "too_long",
    ),
    ("default too short", _set((*ATTRS, 5, "default"), ""), "classes[0].attributes[5].default", "too_short"),
    (
        "multi default twice",
        _set((*ATTRS, 2, "default"), ["parked"] * 2),
        "classes[0].attributes[2].default",
        "invalid_value",
    ),
    (
        "skeleton without keypoints tool",
        _set((*CAR, "skeleton"), {"keypoints": ["a"]}),
        "classes[0].skeleton",
        "unknown_field",
    ),
    ("keypoints tool without skeleton", _delete((*PERSON, "skeleton")), "classes[1].skeleton", "required"),
    ("skeleton not an object", _set((*PERSON, "skeleton"), ["head"]), "classes[1].skeleton", "invalid_type"),
    (
        "skeleton unknown field",
        _set((*PERSON, "skeleton", "bones"), []),
        "classes[1].skeleton.bones",
        "unknown_field",
    ),
    (
        "skeleton without names",
        _delete((*PERSON, "skeleton", "keypoints")),
        "classes[1].skeleton.keypoints",
        "required",
    ),
    (
        "skeleton names not a list",
        _set((*PERSON, "skeleton", "keypoints"), "head"),
        "classes[1].skeleton.keypoints",
        "invalid_type",
    ),
    (
        "duplicate keypoint",
        _set((*PERSON, "skeleton", "keypoints", 2), "head"),
        "classes[1].skeleton.keypoints[2]",
        "duplicate",
    ),
    (
        "keypoint name not a string",
        _set((*PERSON, "skeleton", "keypoints", 1), 1),
        "classes[1].skeleton.keypoints[1]",
        "invalid_type",
    ),
    (
        "edges not a list",
        _set((*PERSON, "skeleton", "edges"), "0-1"),
        "classes[1].skeleton.edges",
        "invalid_type",
    ),
    (
        "edge not a pair",
        _set((*PERSON, "skeleton", "edges", 0), [0, 1, 2]),
        "classes[1].skeleton.edges[0]",
        "invalid_type",
    ),
    (
        "edge of strings",
        _set((*PERSON, "skeleton", "edges", 0), ["head", "left_hand"]),
        "classes[1].skeleton.edges[0]",
        "invalid_type",
    ),
    (
        "edge beyond keypoints",
        _set((*PERSON, "skeleton", "edges", 1), [0, 3]),
        "classes[1].skeleton.edges[1]",
        "out_of_range",
    ),
    (
        "negative edge index",
        _set((*PERSON, "skeleton", "edges", 1), [-1, 0]),
        "classes[1].skeleton.edges[1]",
        "out_of_range",
    ),
    (
        "edge to itself",
        _set((*PERSON, "skeleton", "edges", 1), [2, 2]),
        "classes[1].skeleton.edges[1]",
        "invalid_value",
    ),
    (
        "edge twice (reversed)",
        _set((*PERSON, "skeleton", "edges", 1), [1, 0]),
        "classes[1].skeleton.edges[1]",
        "duplicate",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "path", "code"),
    [variant[1:] for variant in INVALID_VARIANTS],
    ids=[variant[0] for variant in INVALID_VARIANTS],
)
def test_each_invalid_variant_is_reported_at_its_path(mutation: Mutation, path: str, code: str) -> None:
    spec = doc_spec()
    mutation(spec)
    assert refusal(spec) == [(path, code)]


@pytest.mark.parametrize("spec", [None, [], "classes", 3])
def test_a_spec_that_is_not_an_object_is_refused_at_the_root(spec: Any) -> None:
    assert refusal(spec) == [("", "invalid_type")]


def test_every_problem_of_a_spec_is_reported_at_once() -> None:
    spec = doc_spec()
    spec["settings"]["classification"] = "both"
    spec["classes"][0]["color"] = "blue"
    spec["classes"][0]["attributes"][3]["max"] = 1
    spec["classes"][1]["tools"].append("lasso")
    spec["classes"][2]["name"] = "car"

    assert refusal(spec) == [
        ("settings.classification", "unknown_option"),
        ("classes[0].color", "invalid_value"),
        ("classes[0].attributes[3].max", "invalid_value"),
        ("classes[1].tools[2]", "unknown_option"),
        ("classes[2].name", "duplicate"),
    ]


def test_a_parent_cycle_is_reported_once() -> None:
    spec = {
        "classes": [
            {"name": "a", "color": "#000000", "tools": ["bbox"], "parent": "c"},
            {"name": "b", "color": "#000000", "tools": ["bbox"], "parent": "a"},
            {"name": "c", "color": "#000000", "tools": ["bbox"], "parent": "b"},
            {"name": "d", "color": "#000000", "tools": ["bbox"], "parent": "a"},
        ]
    }
    with pytest.raises(SpecInvalid) as caught:
        parse_schema(spec)
    assert [(error["path"], error["code"]) for error in caught.value.errors] == [
        ("classes[0].parent", "invalid_value")
    ]
    assert "a → c → b → a" in caught.value.errors[0]["message"]


def test_a_parent_chain_without_a_cycle_is_accepted() -> None:
    spec = {
        "classes": [
            {"name": "sedan", "color": "#000000", "tools": ["bbox"], "parent": "car"},
            {"name": "car", "color": "#000000", "tools": ["bbox"], "parent": "vehicle"},
            {"name": "vehicle", "color": "#000000", "tools": ["bbox"]},
        ]
    }
    schema = parse_schema(spec)
    assert schema.classes["sedan"].parent == "car" and schema.classes["vehicle"].parent is None


def test_the_error_message_names_what_is_accepted() -> None:
    spec = doc_spec()
    spec["classes"][0]["tools"][0] = "brush"
    with pytest.raises(SpecInvalid) as caught:
        parse_schema(spec)
    message = caught.value.errors[0]["message"]
    assert "'brush'" in message and "rotated_bbox" in message and "video_track" in message


def test_hotkeys_differing_in_case_are_different_keys() -> None:
    spec = doc_spec()
    spec["classes"][1]["hotkey"] = "C"
    assert parse_schema(spec).classes["person"].hotkey == "C"


@given(
    low=st.integers(min_value=-(10**6), max_value=10**6),
    high=st.integers(min_value=-(10**6), max_value=10**6),
    kind=st.sampled_from(["int", "float"]),
)
def test_number_bounds_are_accepted_exactly_when_min_is_not_above_max(low: int, high: int, kind: str) -> None:
    spec = {
        "classes": [
            {
                "name": "c",
                "color": "#000000",
                "tools": ["bbox"],
                "attributes": [{"name": "n", "type": kind, "min": low, "max": high}],
            }
        ]
    }
    if low <= high:
        attribute = parse_schema(spec).classes["c"].attributes["n"]
        assert (attribute.min, attribute.max) == (low, high)
    else:
        assert refusal(spec) == [("classes[0].attributes[0].max", "invalid_value")]


@given(
    options=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6),
    default=st.text(min_size=1, max_size=8),
)
def test_an_enum_default_is_accepted_exactly_when_it_is_an_option(options: list[str], default: str) -> None:
    spec = {
        "classes": [
            {
                "name": "c",
                "color": "#000000",
                "tools": ["bbox"],
                "attributes": [{"name": "e", "type": "enum", "options": options, "default": default}],
            }
        ]
    }
    if len(set(options)) != len(options):
        assert ("classes[0].attributes[0].options", "duplicate") in [
            (path.rsplit("[", 1)[0], code) for path, code in refusal(spec)
        ]
    elif default in options:
        assert isinstance(parse_schema(spec), Schema)
    else:
        assert refusal(spec) == [("classes[0].attributes[0].default", "unknown_option")]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
CLASS_KEYS = st.sampled_from(["name", "color", "hotkey", "parent", "tools", "attributes", "skeleton"])


@given(
    st.fixed_dictionaries(
        {"classes": st.lists(st.dictionaries(CLASS_KEYS, JSON, max_size=7) | JSON, max_size=3)},
        optional={"settings": JSON},
    )
    | JSON
)
def test_property_any_json_is_either_a_schema_or_refused_with_errors(spec: Any) -> None:
    try:
        schema = parse_schema(spec)
    except SpecInvalid as refused:
        assert refused.errors and all(error["message"] for error in refused.errors)
    else:
        assert parse_schema(schema.spec).spec == schema.spec
