"""Schema migrations: checking operations against two schema versions, applying them, undoing them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labeling.regions import (
    ARCHIVED_WITH,
    ItemFacts,
    OperationsInvalid,
    Schema,
    apply_operations,
    check_operations,
    inverse_operations,
    parse_schema,
    validate_regions,
)

OCCLUDED = {"name": "occluded", "type": "bool", "required": True}
MAKE = {"name": "make", "type": "enum", "options": ["audi", "bmw", "other"], "default": "other"}
KIND = {"name": "kind", "type": "enum", "options": ["car", "truck", "bus"], "required": True}


def klass(name: str, tools: tuple[str, ...] = ("bbox",), *attributes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "color": "#123456", "tools": list(tools), "attributes": list(attributes)}


def schema(*classes: dict[str, Any]) -> Schema:
    return parse_schema({"classes": list(classes)})


CAR = klass("car", ("bbox", "polygon"), OCCLUDED, MAKE)
TRUCK = klass("truck", ("bbox",), OCCLUDED)
VEHICLE = klass("vehicle", ("bbox",), KIND, {"name": "occluded", "type": "bool"})
PERSON = klass("person")
DRIVES = klass("drives", ("relation",))
NOTE = klass("note", ("transcription",))
OLD = schema(CAR, TRUCK, VEHICLE, PERSON, DRIVES, NOTE)
AUTO = klass("auto", ("bbox", "polygon"), OCCLUDED, MAKE)


def replaced(**changes: dict[str, Any] | None) -> Schema:
    """OLD with some classes replaced (a dict), dropped (None) or added (a new name)."""
    classes = {c["name"]: c for c in (CAR, TRUCK, VEHICLE, PERSON, DRIVES, NOTE)}
    for name, value in changes.items():
        if value is None:
            classes.pop(name)
        else:
            classes[name] = value
    return schema(*classes.values())


def refusal(operations: Any, old: Schema, new: Schema) -> list[tuple[str, str]]:
    with pytest.raises(OperationsInvalid) as caught:
        check_operations(operations, old, new)
    for error in caught.value.errors:
        assert set(error) == {"path", "code", "message"} and error["message"]
    return [(error["path"], error["code"]) for error in caught.value.errors]


def bbox(region_id: str, label: str, **attributes: Any) -> dict[str, Any]:
    return {
        "id": region_id,
        "type": "bbox",
        "label": label,
        "attributes": attributes,
        "geometry": {"x": 1.0, "y": 1.0, "width": 5.0, "height": 5.0},
    }


def relation(region_id: str, start: str, end: str) -> dict[str, Any]:
    return {
        "id": region_id,
        "type": "relation",
        "label": "drives",
        "attributes": {},
        "geometry": {"from": start, "to": end},
    }


def note(region_id: str, target: str) -> dict[str, Any]:
    return {
        "id": region_id,
        "type": "transcription",
        "label": "note",
        "attributes": {},
        "geometry": {"text": "AB-12", "region": target},
    }


# -- checking ------------------------------------------------------------------------------------


def test_no_operations_between_identical_schemas_is_valid() -> None:
    assert check_operations([], OLD, OLD) == []


def test_rename_is_checked_and_normalized() -> None:
    new = replaced(car=None, auto=klass("auto", ("bbox", "polygon"), OCCLUDED, MAKE))
    assert check_operations([{"op": "rename_class", "from": "car", "to": "auto"}], OLD, new) == [
        {"op": "rename_class", "from": "car", "to": "auto"}
    ]


def test_a_chain_of_renames_is_ordered_so_no_region_moves_twice() -> None:
    new = replaced(car=None, truck=AUTO | {"name": "truck"}, lorry=TRUCK | {"name": "lorry"})
    car_to_truck = {"op": "rename_class", "from": "car", "to": "truck"}
    truck_to_lorry = {"op": "rename_class", "from": "truck", "to": "lorry"}

    operations = check_operations([car_to_truck, truck_to_lorry], OLD, new)

    assert operations == [truck_to_lorry, car_to_truck]
    active, _, _ = apply_operations([bbox("a", "car"), bbox("b", "truck")], [], operations)
    assert [r["label"] for r in active] == ["truck", "lorry"]


def test_a_delete_runs_before_a_rename_onto_the_deleted_name() -> None:
    new = replaced(car=None, person=AUTO | {"name": "person"})
    operations = check_operations(
        [{"op": "rename_class", "from": "car", "to": "person"}, {"op": "delete_class", "class": "person"}],
        OLD,
        new,
    )
    assert operations == [
        {"op": "delete_class", "class": "person"},
        {"op": "rename_class", "from": "car", "to": "person"},
    ]
    active, archive, _ = apply_operations([bbox("a", "car"), bbox("b", "person")], [], operations)
    assert active == [bbox("a", "person")] and archive == [bbox("b", "person")]


def test_renames_in_a_circle_are_refused() -> None:
    new = replaced(car=TRUCK | {"name": "car"}, truck=AUTO | {"name": "truck"})
    swap = [
        {"op": "rename_class", "from": "car", "to": "truck"},
        {"op": "rename_class", "from": "truck", "to": "car"},
    ]
    assert refusal(swap, OLD, new) == [("operations", "conflict")]


def test_the_operations_of_several_versions_apply_one_after_the_other() -> None:
    v2 = replaced(car=None, auto=AUTO, person=None)
    v3 = replaced(person=None)
    to_v2 = check_operations(
        [{"op": "rename_class", "from": "car", "to": "auto"}, {"op": "delete_class", "class": "person"}],
        OLD,
        v2,
    )
    to_v3 = check_operations([{"op": "rename_class", "from": "auto", "to": "car"}], v2, v3)
    regions = [bbox("a", "car"), bbox("b", "person"), relation("c", "b", "a")]

    active, archive, changed = apply_operations(regions, [], to_v2 + to_v3)

    assert changed
    assert active == [bbox("a", "car")]
    assert archive == [bbox("b", "person"), {**relation("c", "b", "a"), ARCHIVED_WITH: "b"}]
    step_by_step = apply_operations(*apply_operations(regions, [], to_v2)[:2], to_v3)
    assert (active, archive) == step_by_step[:2]


def test_a_schema_that_drops_a_class_needs_an_operation_for_it() -> None:
    new = replaced(person=None)
    assert refusal([], OLD, new) == [("operations", "class_dropped")]
    with pytest.raises(OperationsInvalid) as caught:
        check_operations([], OLD, new)
    assert "'person'" in caught.value.errors[0]["message"]
    assert check_operations([{"op": "delete_class", "class": "person"}], OLD, new) == [
        {"op": "delete_class", "class": "person"}
    ]


def test_class_operations_come_first_in_the_normalized_list() -> None:
    new = replaced(
        car=klass("car", ("bbox", "polygon"), OCCLUDED, MAKE, {"name": "seen", "type": "bool"}), person=None
    )
    operations = [
        {"op": "add_attribute", "class": "car", "attribute": "seen", "default": True},
        {"op": "delete_class", "class": "person"},
    ]
    assert check_operations(operations, OLD, new) == [operations[1], operations[0]]


def test_merge_and_split_are_normalized() -> None:
    new = replaced(car=None, truck=None, vehicle=None, auto=klass("auto", ("bbox",), OCCLUDED, MAKE))
    merge = {"op": "merge_classes", "from": ["car", "truck"], "into": "auto"}
    split = {
        "op": "split_class",
        "class": "vehicle",
        "attribute": "kind",
        "into": {"car": "auto"},
        "otherwise": "auto",
    }
    # Split regions lose the attribute they were split by; vehicles may lack occluded, auto requires it.
    add = {"op": "add_attribute", "class": "auto", "attribute": "occluded", "default": False}
    assert check_operations([merge, split, add], OLD, new) == [merge, split, add]
    assert refusal([merge, split], OLD, new) == [("operations", "required")]


def test_an_added_attribute_takes_the_declared_default_when_none_is_given() -> None:
    new = replaced(person=klass("person", ("bbox",), {**MAKE, "required": True}))
    assert check_operations([{"op": "add_attribute", "class": "person", "attribute": "make"}], OLD, new) == [
        {"op": "add_attribute", "class": "person", "attribute": "make", "default": "other"}
    ]


# (name, operations, new schema, every expected (path, code))
CHECK_INVALID: list[tuple[str, Any, Schema, list[tuple[str, str]]]] = [
    ("not a list", {"op": "delete_class"}, OLD, [("operations", "invalid_type")]),
    ("operation not an object", ["delete person"], OLD, [("operations[0]", "invalid_type")]),
    ("op missing", [{"class": "person"}], OLD, [("operations[0].op", "required")]),
    ("unknown op", [{"op": "drop_class", "class": "person"}], OLD, [("operations[0].op", "unknown_option")]),
    ("field missing", [{"op": "rename_class", "from": "car"}], OLD, [("operations[0].to", "required")]),
    (
        "unknown field",
        [{"op": "delete_class", "class": "person", "why": "x"}],
        replaced(person=None),
        [("operations[0].why", "unknown_field")],
    ),
    (
        "rename from unknown",
        [{"op": "rename_class", "from": "boat", "to": "auto"}],
        replaced(auto=AUTO),
        [("operations[0].from", "unknown_class")],
    ),
    (
        "rename to unknown",
        [{"op": "rename_class", "from": "car", "to": "auto"}],
        replaced(car=None),
        [("operations[0].to", "unknown_class")],
    ),
    (
        "rename from not a string",
        [{"op": "rename_class", "from": ["car"], "to": "auto"}],
        replaced(car=None, auto=AUTO),
        [("operations[0].from", "invalid_type"), ("operations", "class_dropped")],
    ),
    (
        "rename to itself",
        [{"op": "rename_class", "from": "car", "to": "car"}],
        OLD,
        [("operations[0].to", "invalid_value")],
    ),
    (
        "rename onto a class that stays",
        [{"op": "rename_class", "from": "truck", "to": "car"}],
        replaced(truck=None),
        [("operations[0].to", "conflict")],
    ),
    (
        "class renamed twice",
        [
            {"op": "rename_class", "from": "car", "to": "auto"},
            {"op": "rename_class", "from": "car", "to": "sedan"},
        ],
        replaced(car=None, auto=AUTO, sedan=klass("sedan", ("bbox",), OCCLUDED, MAKE)),
        [("operations[1].from", "conflict")],
    ),
    (
        "merge from not a list",
        [{"op": "merge_classes", "from": "car", "into": "truck"}],
        replaced(car=None),
        [("operations[0].from", "invalid_type"), ("operations", "class_dropped")],
    ),
    (
        "merge from unknown",
        [{"op": "merge_classes", "from": ["car", "boat"], "into": "truck"}],
        replaced(car=None),
        [("operations[0].from[1]", "unknown_class")],
    ),
    (
        "merge from twice",
        [{"op": "merge_classes", "from": ["car", "car"], "into": "truck"}],
        replaced(car=None),
        [("operations[0].from[1]", "duplicate")],
    ),
    (
        "merge into unknown",
        [{"op": "merge_classes", "from": ["car", "truck"], "into": "auto"}],
        replaced(car=None, truck=None),
        [("operations[0].into", "unknown_class")],
    ),
    (
        "split by an unknown attribute",
        [{"op": "split_class", "class": "vehicle", "attribute": "wheels", "into": {"car": "car"}}],
        OLD,
        [("operations[0].attribute", "unknown_field")],
    ),
    (
        "split by a non-enum attribute",
        [{"op": "split_class", "class": "vehicle", "attribute": "occluded", "into": {"true": "car"}}],
        OLD,
        [("operations[0].attribute", "invalid_value")],
    ),
    (
        "split into not an object",
        [{"op": "split_class", "class": "vehicle", "attribute": "kind", "into": ["car"]}],
        OLD,
        [("operations[0].into", "invalid_type")],
    ),
    (
        "split by an unknown option",
        [{"op": "split_class", "class": "vehicle", "attribute": "kind", "into": {"van": "car"}}],
        OLD,
        [("operations[0].into.van", "unknown_option")],
    ),
    (
        "split into an unknown class",
        [{"op": "split_class", "class": "vehicle", "attribute": "kind", "into": {"bus": "bus"}}],
        OLD,
        [("operations[0].into.bus", "unknown_class")],
    ),
    (
        "split leaving regions in a dropped class",
        [
            {
                "op": "split_class",
                "class": "vehicle",
                "attribute": "kind",
                "into": {"car": "car", "truck": "truck"},
            }
        ],
        replaced(vehicle=None),
        [("operations[0].otherwise", "class_dropped")],
    ),
    (
        "split otherwise unknown",
        [
            {
                "op": "split_class",
                "class": "vehicle",
                "attribute": "kind",
                "into": {"car": "car"},
                "otherwise": "bus",
            }
        ],
        replaced(vehicle=None),
        [("operations[0].otherwise", "unknown_class"), ("operations", "class_dropped")],
    ),
    (
        "delete unknown",
        [{"op": "delete_class", "class": "boat"}],
        OLD,
        [("operations[0].class", "unknown_class")],
    ),
    (
        "delete twice",
        [{"op": "delete_class", "class": "person"}, {"op": "delete_class", "class": "person"}],
        replaced(person=None),
        [("operations[1].class", "conflict")],
    ),
    (
        "delete and restore",
        [{"op": "delete_class", "class": "person"}, {"op": "restore_class", "class": "person"}],
        OLD,
        [("operations[1].class", "conflict")],
    ),
    (
        "restore and delete",
        [{"op": "restore_class", "class": "person"}, {"op": "delete_class", "class": "person"}],
        OLD,
        [("operations[1].class", "conflict")],
    ),
    (
        "restore unknown",
        [{"op": "restore_class", "class": "boat"}],
        OLD,
        [("operations[0].class", "unknown_class")],
    ),
    (
        "restore twice",
        [{"op": "restore_class", "class": "person"}, {"op": "restore_class", "class": "person"}],
        OLD,
        [("operations[1].class", "conflict")],
    ),
    (
        "add to an unknown class",
        [{"op": "add_attribute", "class": "boat", "attribute": "x", "default": 1}],
        OLD,
        [("operations[0].class", "unknown_class")],
    ),
    (
        "add an attribute the new class lacks",
        [{"op": "add_attribute", "class": "person", "attribute": "x", "default": 1}],
        OLD,
        [("operations[0].attribute", "unknown_field")],
    ),
    (
        "add without any default",
        [{"op": "add_attribute", "class": "person", "attribute": "occluded"}],
        replaced(person=klass("person", ("bbox",), OCCLUDED)),
        [("operations[0].default", "required")],
    ),
    (
        "add a default that does not fit",
        [{"op": "add_attribute", "class": "person", "attribute": "make", "default": "vw"}],
        replaced(person=klass("person", ("bbox",), MAKE)),
        [("operations[0].default", "unknown_option")],
    ),
    (
        "remove what no region carries",
        [{"op": "remove_attribute", "class": "person", "attribute": "make"}],
        OLD,
        [("operations[0].attribute", "unknown_field")],
    ),
    (
        "rename from what no region carries",
        [{"op": "rename_attribute", "class": "car", "from": "colour", "to": "make"}],
        OLD,
        [("operations[0].from", "unknown_field")],
    ),
    (
        "rename to what the new class lacks",
        [{"op": "rename_attribute", "class": "car", "from": "make", "to": "brand"}],
        OLD,
        [("operations[0].to", "unknown_field")],
    ),
    (
        "rename onto a carried attribute",
        [{"op": "rename_attribute", "class": "car", "from": "make", "to": "occluded"}],
        OLD,
        [("operations[0].to", "conflict")],
    ),
    (
        "rename an attribute to itself",
        [{"op": "rename_attribute", "class": "car", "from": "make", "to": "make"}],
        OLD,
        [("operations[0].to", "invalid_value")],
    ),
    (
        "attribute left behind",
        [],
        replaced(car=klass("car", ("bbox", "polygon"), OCCLUDED)),
        [("operations", "attribute_dropped")],
    ),
    (
        "merged attribute left behind",
        [{"op": "merge_classes", "from": ["car", "truck"], "into": "truck"}],
        replaced(car=None),
        [("operations", "attribute_dropped")],
    ),
    (
        "new required attribute without a value",
        [],
        replaced(person=klass("person", ("bbox",), OCCLUDED)),
        [("operations", "required")],
    ),
    (
        "split leaves a required attribute unset",
        [
            {
                "op": "split_class",
                "class": "vehicle",
                "attribute": "kind",
                "into": {"car": "car", "truck": "truck", "bus": "truck"},
            }
        ],
        replaced(vehicle=None),
        [("operations", "required"), ("operations", "required")],
    ),
]


@pytest.mark.parametrize(
    ("operations", "new", "expected"),
    [case[1:] for case in CHECK_INVALID],
    ids=[case[0] for case in CHECK_INVALID],
)
def test_each_invalid_operation_is_reported_at_its_path(
    operations: Any, new: Schema, expected: list[tuple[str, str]]
) -> None:
    assert refusal(operations, OLD, new) == expected


def test_dropped_and_required_attributes_are_fixed_by_attribute_operations() -> None:
    new = replaced(
        car=klass(
            "car",
            ("bbox", "polygon"),
            OCCLUDED,
            {"name": "brand", "type": "enum", "options": ["audi", "bmw", "other"]},
        ),
        person=klass("person", ("bbox",), OCCLUDED),
    )
    with pytest.raises(OperationsInvalid):
        check_operations([], OLD, new)
    operations = [
        {"op": "rename_attribute", "class": "car", "from": "make", "to": "brand"},
        {"op": "add_attribute", "class": "person", "attribute": "occluded", "default": False},
    ]
    assert check_operations(operations, OLD, new) == operations


def test_an_attribute_removed_then_added_again_changes_its_type() -> None:
    new = replaced(
        car=klass("car", ("bbox", "polygon"), OCCLUDED, {"name": "make", "type": "text", "required": True})
    )
    operations = [
        {"op": "remove_attribute", "class": "car", "attribute": "make"},
        {"op": "add_attribute", "class": "car", "attribute": "make", "default": "unknown"},
    ]
    assert check_operations(operations, OLD, new) == operations


def test_every_problem_of_an_operation_list_is_reported() -> None:
    operations = [
        {"op": "rename_class", "from": "boat", "to": "ship"},
        {"op": "delete_class"},
        {"op": "restore_class", "class": "car", "extra": 1},
    ]
    assert refusal(operations, OLD, replaced(person=None)) == [
        ("operations[1].class", "required"),
        ("operations[2].extra", "unknown_field"),
        ("operations[0].from", "unknown_class"),
        ("operations[0].to", "unknown_class"),
        ("operations", "class_dropped"),
    ]


# -- applying ------------------------------------------------------------------------------------


def apply(regions: list[dict[str, Any]], operations: list[dict[str, Any]], archived: Any = ()) -> Any:
    return apply_operations(regions, list(archived), operations)


def test_rename_relabels_regions_and_archived_regions() -> None:
    regions = [bbox("a", "car", occluded=True), bbox("b", "person")]
    archived = [bbox("z", "car", occluded=False)]
    active, archive, changed = apply(regions, [{"op": "rename_class", "from": "car", "to": "auto"}], archived)
    assert [r["label"] for r in active] == ["auto", "person"]
    assert [r["label"] for r in archive] == ["auto"]
    assert active[0] == {**regions[0], "label": "auto"} and changed


def test_merge_relabels_every_source() -> None:
    operations = [{"op": "merge_classes", "from": ["car", "truck"], "into": "vehicle"}]
    active, _, changed = apply([bbox("a", "car"), bbox("b", "truck"), bbox("c", "person")], operations)
    assert [r["label"] for r in active] == ["vehicle", "vehicle", "person"] and changed


def test_split_moves_regions_by_their_attribute_and_drops_it() -> None:
    regions = [
        bbox("a", "vehicle", kind="car", occluded=True),
        bbox("b", "vehicle", kind="truck"),
        bbox("c", "vehicle", kind="bus"),
        bbox("d", "vehicle"),
    ]
    split = {
        "op": "split_class",
        "class": "vehicle",
        "attribute": "kind",
        "into": {"car": "car", "truck": "truck"},
    }
    active, archive, _ = apply(regions, [split])
    assert [(r["label"], r["attributes"]) for r in active] == [
        ("car", {"occluded": True}),
        ("truck", {}),
        ("vehicle", {"kind": "bus"}),  # nothing says where a bus goes: it stays as it was
        ("vehicle", {}),
    ]
    assert archive == []
    active, _, _ = apply(regions, [{**split, "otherwise": "truck"}])
    assert [r["label"] for r in active] == ["car", "truck", "truck", "truck"]
    assert all("kind" not in r["attributes"] for r in active)


def test_delete_archives_regions_whole_with_the_relations_and_transcriptions_that_need_them() -> None:
    regions = [
        bbox("a", "car", occluded=True),
        bbox("b", "person"),
        relation("c", "b", "a"),
        note("d", "a"),
        note("e", "b"),
    ]
    active, archive, changed = apply(regions, [{"op": "delete_class", "class": "car"}])
    assert active == [regions[1], regions[4]]
    assert archive == [regions[0], {**regions[2], ARCHIVED_WITH: "a"}, {**regions[3], ARCHIVED_WITH: "a"}]
    assert changed

    back, archive_after, changed = apply(active, [{"op": "restore_class", "class": "car"}], archive)
    assert sorted(back, key=lambda r: r["id"]) == regions
    assert archive_after == [] and changed


def test_a_relation_whose_own_class_is_deleted_waits_for_that_class() -> None:
    regions = [bbox("a", "car"), bbox("b", "person"), relation("c", "b", "a")]
    _, archive, _ = apply(regions, [{"op": "delete_class", "class": "car"}])
    active, archive, _ = apply([regions[1]], [{"op": "delete_class", "class": "drives"}], archive)
    assert archive[1] == relation("c", "b", "a")  # archived for its own class now, no marker

    active, archive, _ = apply(active, [{"op": "restore_class", "class": "car"}], archive)
    assert [r["id"] for r in active] == ["b", "a"] and archive == [relation("c", "b", "a")]
    active, archive, _ = apply(active, [{"op": "restore_class", "class": "drives"}], archive)
    assert [r["id"] for r in active] == ["b", "a", "c"] and archive == []


def test_a_restored_relation_waits_for_an_end_that_is_still_archived() -> None:
    regions = [bbox("a", "car"), bbox("b", "person"), relation("c", "b", "a")]
    _, archive, _ = apply(regions, [{"op": "delete_class", "class": "drives"}])
    active, archive, _ = apply(regions[1:2] + regions[:1], [{"op": "delete_class", "class": "car"}], archive)
    assert archive == [relation("c", "b", "a"), bbox("a", "car")]

    active, archive, changed = apply(active, [{"op": "restore_class", "class": "drives"}], archive)
    assert active == [bbox("b", "person")]
    assert archive == [{**relation("c", "b", "a"), ARCHIVED_WITH: "a"}, bbox("a", "car")] and changed
    _, _, changed = apply(active, [{"op": "restore_class", "class": "drives"}], archive)
    assert not changed
    active, archive, _ = apply(active, [{"op": "restore_class", "class": "car"}], archive)
    assert active == [bbox("b", "person"), bbox("a", "car"), relation("c", "b", "a")] and archive == []


def test_a_restored_region_whose_id_was_taken_gets_a_fresh_id_its_relations_follow() -> None:
    archived = [bbox("a", "car", occluded=False), {**relation("r", "b", "a"), ARCHIVED_WITH: "a"}]
    regions = [bbox("a", "person"), bbox("a-2", "person"), bbox("b", "person")]

    active, archive, _ = apply(regions, [{"op": "restore_class", "class": "car"}], archived)

    assert archive == []
    assert active[3] == {**bbox("a", "car", occluded=False), "id": "a-3"}
    assert active[4] == relation("r", "b", "a-3")
    assert len({r["id"] for r in active}) == 5


def test_relations_archived_for_their_own_class_follow_a_fresh_id_too() -> None:
    archived = [bbox("a", "car"), relation("r", "b", "a"), note("n", "a")]
    regions = [bbox("a", "person"), bbox("b", "person")]
    operations = [
        {"op": "restore_class", "class": "car"},
        {"op": "restore_class", "class": "drives"},
        {"op": "restore_class", "class": "note"},
    ]

    active, archive, _ = apply(regions, operations, archived)

    assert archive == []
    assert [r["id"] for r in active] == ["a", "b", "a-2", "r", "n"]
    assert active[3]["geometry"] == {"from": "b", "to": "a-2"}
    assert active[4]["geometry"]["region"] == "a-2"
    valid = schema(CAR | {"attributes": []}, PERSON, DRIVES, NOTE)
    validate_regions(active, valid, ItemFacts("image", width=100, height=100))


def test_attribute_operations_change_regions_of_their_class_archived_ones_too() -> None:
    regions = [bbox("a", "car", make="bmw"), bbox("b", "car"), bbox("c", "truck")]
    archived = [bbox("d", "car")]

    active, archive, _ = apply(
        regions, [{"op": "add_attribute", "class": "car", "attribute": "make", "default": "other"}], archived
    )
    assert [r["attributes"] for r in active] == [{"make": "bmw"}, {"make": "other"}, {}]
    assert archive[0]["attributes"] == {"make": "other"}

    active, _, _ = apply(regions, [{"op": "rename_attribute", "class": "car", "from": "make", "to": "brand"}])
    assert [r["attributes"] for r in active] == [{"brand": "bmw"}, {}, {}]

    active, _, _ = apply(regions, [{"op": "remove_attribute", "class": "car", "attribute": "make"}])
    assert [r["attributes"] for r in active] == [{}, {}, {}]


def test_attribute_operations_name_classes_of_the_new_schema() -> None:
    operations: list[dict[str, Any]] = [
        {"op": "rename_class", "from": "car", "to": "auto"},
        {"op": "add_attribute", "class": "auto", "attribute": "seen", "default": True},
    ]
    active, _, _ = apply([bbox("a", "car"), bbox("b", "truck")], operations)
    assert [r["attributes"] for r in active] == [{"seen": True}, {}]


def test_nothing_to_change_reports_unchanged_and_shares_regions() -> None:
    regions = [bbox("a", "car")]
    active, archive, changed = apply(regions, [{"op": "rename_class", "from": "person", "to": "human"}])
    assert active == regions and active[0] is regions[0] and archive == [] and not changed
    _, _, changed = apply(regions, [{"op": "restore_class", "class": "person"}], [bbox("z", "car")])
    assert not changed


def test_applying_does_not_modify_the_given_lists_or_regions() -> None:
    regions = [bbox("a", "car", make="bmw"), bbox("b", "person"), relation("c", "b", "a")]
    archived = [bbox("z", "car")]
    before = copy.deepcopy((regions, archived))
    operations: list[dict[str, Any]] = [
        {"op": "delete_class", "class": "car"},
        {"op": "rename_class", "from": "person", "to": "human"},
        {"op": "add_attribute", "class": "human", "attribute": "x", "default": [1]},
    ]
    apply_operations(regions, archived, operations)
    assert (regions, archived) == before


def test_checked_operations_leave_regions_the_new_schema_accepts() -> None:
    new = replaced(
        car=None,
        truck=None,
        vehicle=None,
        person=klass(
            "person", ("bbox",), {"name": "pose", "type": "enum", "options": ["up", "down"], "required": True}
        ),
        auto=klass("auto", ("bbox", "polygon"), OCCLUDED, MAKE),
        lorry=klass("lorry", ("bbox",), OCCLUDED),
    )
    old_regions = validate_regions(
        [
            bbox("a", "car", occluded=True, make="bmw"),
            bbox("b", "truck", occluded=False),
            bbox("c", "vehicle", kind="car", occluded=False),
            bbox("d", "vehicle", kind="bus", occluded=True),
            bbox("e", "person"),
            relation("f", "e", "a"),
        ],
        OLD,
        ItemFacts("image", width=100, height=100),
    )
    operations = check_operations(
        [
            {"op": "rename_class", "from": "car", "to": "auto"},
            {
                "op": "split_class",
                "class": "vehicle",
                "attribute": "kind",
                "into": {"car": "auto"},
                "otherwise": "lorry",
            },
            {"op": "merge_classes", "from": ["truck"], "into": "lorry"},
            {"op": "add_attribute", "class": "person", "attribute": "pose", "default": "up"},
            # Vehicles could lack occluded, which the new classes require.
            {"op": "add_attribute", "class": "auto", "attribute": "occluded", "default": False},
            {"op": "add_attribute", "class": "lorry", "attribute": "occluded", "default": False},
        ],
        OLD,
        new,
    )
    active, archive, changed = apply_operations(old_regions, [], operations)
    assert changed and archive == []
    accepted = validate_regions(active, new, ItemFacts("image", width=100, height=100))
    assert [r["label"] for r in accepted] == ["auto", "lorry", "auto", "lorry", "person", "drives"]
    assert accepted[2]["attributes"] == {"occluded": False, "make": "other"}
    assert accepted[3]["attributes"] == {"occluded": True}
    assert accepted[4]["attributes"] == {"pose": "up"}


# -- undoing -------------------------------------------------------------------------------------


def test_inverse_operations_undo_renames_deletes_restores_and_attribute_changes() -> None:
    operations: list[dict[str, Any]] = [
        {"op": "rename_class", "from": "car", "to": "auto"},
        {"op": "delete_class", "class": "person"},
        {"op": "restore_class", "class": "tree"},
        {"op": "add_attribute", "class": "auto", "attribute": "seen", "default": True},
        {"op": "rename_attribute", "class": "auto", "from": "make", "to": "brand"},
    ]
    assert inverse_operations(operations) == [
        {"op": "delete_class", "class": "tree"},
        {"op": "restore_class", "class": "person"},
        {"op": "rename_class", "from": "auto", "to": "car"},
        {"op": "rename_attribute", "class": "car", "from": "brand", "to": "make"},
        {"op": "remove_attribute", "class": "car", "attribute": "seen"},
    ]


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "merge_classes", "from": ["car", "truck"], "into": "vehicle"},
        {"op": "split_class", "class": "vehicle", "attribute": "kind", "into": {"car": "car"}},
        {"op": "remove_attribute", "class": "car", "attribute": "make"},
    ],
)
def test_operations_that_lose_distinctions_have_no_inverse(operation: dict[str, Any]) -> None:
    assert inverse_operations([{"op": "rename_class", "from": "a", "to": "b"}, operation]) is None


def test_undoing_round_trips_regions_through_two_schema_versions() -> None:
    new = replaced(
        car=klass(
            "auto", ("bbox", "polygon"), OCCLUDED, {**MAKE, "name": "brand"}, {"name": "seen", "type": "bool"}
        ),
        person=None,
    )
    operations = check_operations(
        [
            {"op": "rename_class", "from": "car", "to": "auto"},
            {"op": "delete_class", "class": "person"},
            {"op": "rename_attribute", "class": "auto", "from": "make", "to": "brand"},
            {"op": "add_attribute", "class": "auto", "attribute": "seen", "default": False},
        ],
        OLD,
        new,
    )
    inverse = inverse_operations(operations)
    assert inverse is not None
    assert check_operations(inverse, new, OLD) == inverse
    regions = [bbox("a", "car", occluded=True, make="bmw"), bbox("b", "person"), relation("c", "b", "a")]
    active, archive, _ = apply_operations(regions, [], operations)
    assert active == [
        {**regions[0], "label": "auto", "attributes": {"occluded": True, "brand": "bmw", "seen": False}}
    ]
    back, archive, _ = apply_operations(active, archive, inverse)
    assert sorted(back, key=lambda r: r["id"]) == regions and archive == []


# -- properties ----------------------------------------------------------------------------------

P_OLD = schema(
    klass("a", ("bbox",), {"name": "kind", "type": "enum", "options": ["p", "q"]}),
    klass("b"),
    klass("c"),
    klass("drives", ("relation",)),
    klass("note", ("transcription",)),
)


@st.composite
def annotation_regions(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Boxes of classes a, b, c with relations and transcriptions between them, in any order."""
    count = draw(st.integers(min_value=0, max_value=8))
    regions: list[dict[str, Any]] = []
    for number in range(count):
        label = draw(st.sampled_from(["a", "b", "c"]))
        attributes = (
            {"kind": draw(st.sampled_from(["p", "q"]))} if label == "a" and draw(st.booleans()) else {}
        )
        regions.append(bbox(f"r{number}", label, **attributes))
    ids = [r["id"] for r in regions]
    if len(ids) >= 2:
        for number in range(draw(st.integers(min_value=0, max_value=4))):
            start, end = draw(st.lists(st.sampled_from(ids), min_size=2, max_size=2, unique=True))
            regions.append(relation(f"rel{number}", start, end))
    if ids:
        for number in range(draw(st.integers(min_value=0, max_value=3))):
            regions.append(note(f"note{number}", draw(st.sampled_from(ids))))
    return draw(st.permutations(regions))


def valid_in(regions: list[dict[str, Any]], target: Schema) -> None:
    validate_regions(regions, target, ItemFacts("image", width=100, height=100))


@given(annotation_regions(), st.sampled_from(["a", "b", "c", "drives", "note"]))
def test_property_rename_then_its_inverse_gives_back_the_regions(
    regions: list[dict[str, Any]], name: str
) -> None:
    valid_in(regions, P_OLD)
    renamed_spec = copy.deepcopy(P_OLD.spec)
    for class_spec in renamed_spec["classes"]:
        if class_spec["name"] == name:
            class_spec["name"] = "renamed"
    new = parse_schema(renamed_spec)
    operations = check_operations([{"op": "rename_class", "from": name, "to": "renamed"}], P_OLD, new)

    active, archive, _ = apply_operations(regions, [], operations)
    valid_in(active, new)
    inverse = inverse_operations(operations)
    assert inverse is not None
    back, archive, _ = apply_operations(active, archive, check_operations(inverse, new, P_OLD))
    assert back == regions and archive == []


@given(annotation_regions(), st.sets(st.sampled_from(["a", "b", "c", "drives", "note"]), min_size=1))
def test_property_delete_then_restore_gives_back_the_regions(
    regions: list[dict[str, Any]], names: set[str]
) -> None:
    operations = [{"op": "delete_class", "class": name} for name in sorted(names)]
    active, archive, _ = apply_operations(regions, [], operations)
    assert not any(r["label"] in names for r in active)
    valid_in(active, P_OLD)  # nothing left refers to an archived region

    inverse = inverse_operations(operations)
    assert inverse is not None
    back, archive, _ = apply_operations(active, archive, inverse)
    assert archive == []
    assert sorted(back, key=lambda r: r["id"]) == sorted(regions, key=lambda r: r["id"])


OPERATIONS_ON_P = [
    {"op": "rename_class", "from": "a", "to": "z"},
    {"op": "merge_classes", "from": ["b", "c"], "into": "c"},
    {"op": "split_class", "class": "a", "attribute": "kind", "into": {"p": "b"}},
    {"op": "split_class", "class": "a", "attribute": "kind", "into": {"p": "b"}, "otherwise": "c"},
    {"op": "delete_class", "class": "a"},
    {"op": "delete_class", "class": "b"},
    {"op": "delete_class", "class": "drives"},
    {"op": "restore_class", "class": "a"},
    {"op": "restore_class", "class": "b"},
    {"op": "restore_class", "class": "drives"},
    {"op": "add_attribute", "class": "c", "attribute": "kind", "default": "p"},
    {"op": "remove_attribute", "class": "a", "attribute": "kind"},
    {"op": "rename_attribute", "class": "a", "from": "kind", "to": "sort"},
]


@given(annotation_regions(), st.lists(st.sampled_from(OPERATIONS_ON_P), min_size=1, max_size=6))
def test_property_no_operation_loses_or_invents_a_region(
    regions: list[dict[str, Any]], operations: list[dict[str, Any]]
) -> None:
    active: list[dict[str, Any]] = regions
    archive: list[dict[str, Any]] = []
    every_id = sorted(r["id"] for r in regions)
    for operation in operations:
        active, archive, _ = apply_operations(active, archive, [operation])
        assert len(active) + len(archive) == len(regions)
        assert sorted(r["id"] for r in [*active, *archive]) == every_id
        assert len({r["id"] for r in active}) == len(active)
        present = {r["id"] for r in active}
        for r in active:
            for key in ("from", "to", "region"):
                if key in r["geometry"]:
                    assert r["geometry"][key] in present, "an active region depends on one that is archived"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=5)
    | st.sampled_from(["car", "truck", "kind"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "op": st.sampled_from(
                    [
                        "rename_class",
                        "merge_classes",
                        "split_class",
                        "delete_class",
                        "restore_class",
                        "add_attribute",
                        "remove_attribute",
                        "rename_attribute",
                    ]
                )
            },
            optional={
                key: JSON for key in ("from", "to", "into", "class", "attribute", "default", "otherwise")
            },
        )
        | JSON,
        max_size=4,
    ),
    st.sampled_from([OLD, replaced(person=None), replaced(car=None, auto=AUTO)]),
)
def test_property_any_operations_are_either_checked_or_refused_with_errors(
    operations: Any, new: Schema
) -> None:
    try:
        checked = check_operations(operations, OLD, new)
    except OperationsInvalid as refused:
        assert refused.errors and all(error["message"] for error in refused.errors)
    else:
        assert check_operations(checked, OLD, new) == checked
