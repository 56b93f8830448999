"""Schema migrations: operations that carry existing regions from one schema version to the next.

A project's schema changes by a new version plus a list of operations saying what becomes of the
labels made under the old one. `check_operations` validates the list against both versions and
refuses any change that would leave regions with a class or an attribute the new version does not
know; `apply_operations` then rewrites one annotation's regions. No region is ever lost: deleting
a class moves its regions to the annotation's archive, whole, and restoring the class brings them
back.

Operations name classes as follows: class operations take regions from classes of the old
version (rename, merge, split, delete) or bring them into classes of the new one (rename, merge,
split, restore); attribute operations name classes of the new version. check_operations returns
the class operations first, ordered so that applying them one at a time moves no region twice
(rename b→c before a→b; a circle such as a swap is refused), then the attribute operations in the
order given. apply_operations runs a list strictly in order, so the lists of several versions
joined end to end carry regions across all of them.

- rename, merge and split relabel regions, archived ones included, so archived labels stay
  current; split drops the attribute it splits by.
- delete archives the class's regions, and with them the regions that depend on one (relations
  naming it, transcriptions of it). A dependent carries ``"archived_with": <id>`` in the archive
  so that restoring what it depends on brings it back too; deleting the dependent's own class
  drops that marker, and it then waits for its own class.
- restore brings back the archived regions of a class (and, as above, their dependents). A
  restored region whose id has meanwhile been taken gets a fresh id (``<id>-2``, ``-3``, …) and
  archived references to it follow. Restored regions go to the end of the list.
- attribute operations change the regions of a class, archived ones included, so a region
  restored later already fits its class.
"""

from __future__ import annotations

from typing import Any

from labeling.regions.spec import Schema, ValueProblem, show_value
from labeling.regions.validate import ID_MAX

ARCHIVED_WITH = "archived_with"

OPERATIONS: tuple[str, ...] = (
    "rename_class",
    "merge_classes",
    "split_class",
    "delete_class",
    "restore_class",
    "add_attribute",
    "remove_attribute",
    "rename_attribute",
)
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # op → (required, optional)
    "rename_class": (("from", "to"), ()),
    "merge_classes": (("from", "into"), ()),
    "split_class": (("class", "attribute", "into"), ("otherwise",)),
    "delete_class": (("class",), ()),
    "restore_class": (("class",), ()),
    "add_attribute": (("class", "attribute"), ("default",)),
    "remove_attribute": (("class", "attribute"), ()),
    "rename_attribute": (("class", "from", "to"), ()),
}
_CLASS_OPS = frozenset({"rename_class", "merge_classes", "split_class", "delete_class", "restore_class"})


class OperationsInvalid(Exception):
    """The operations do not fit the two schema versions.

    `errors` lists every problem as {path, code, message}.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(f"{len(errors)} problem(s) in the schema operations: {errors[0]['message']}")
        self.errors = errors


class _State:
    """Regions of one old class on their way to one new class, and which attributes they may carry.

    `may` holds attributes some of those regions can have, `sure` those every one of them has.
    """

    def __init__(self, source: str, target: str, may: set[str], sure: set[str]) -> None:
        self.source, self.target, self.may, self.sure = source, target, may, sure


class _Checker:
    def __init__(self, old: Schema, new: Schema) -> None:
        self.old, self.new = old, new
        self.errors: list[dict[str, str]] = []
        self.sources: dict[str, str] = {}  # old class → path of the operation that moves it
        self.restored: dict[str, str] = {}  # class → path of its restore
        self.states: list[_State] = []
        # (class, attribute) an add_attribute names, valid or not: its own error says what is wrong.
        self.added: set[tuple[str, str]] = set()

    def add(self, path: str, code: str, message: str) -> None:
        self.errors.append({"path": path, "code": code, "message": message})

    def old_class(self, value: Any, path: str) -> str | None:
        if type(value) is not str:
            self.add(path, "invalid_type", f"Expected a class name, got {show_value(value)}.")
            return None
        if value not in self.old.classes:
            self.add(path, "unknown_class", f"{value!r} is not a class of the current schema.")
            return None
        return value

    def new_class(self, value: Any, path: str) -> str | None:
        if type(value) is not str:
            self.add(path, "invalid_type", f"Expected a class name, got {show_value(value)}.")
            return None
        if value not in self.new.classes:
            self.add(path, "unknown_class", f"{value!r} is not a class of the new schema.")
            return None
        return value

    def source(self, name: str, path: str) -> None:
        """Record that an operation takes the regions of old class `name`; one operation per class."""
        if name in self.sources:
            self.add(path, "conflict", f"The class {name!r} is already changed by {self.sources[name]}.")
        else:
            self.sources[name] = path


def _base_states(old: Schema, name: str) -> tuple[set[str], set[str]]:
    class_def = old.classes[name]
    may = set(class_def.attributes)
    # Validated regions have every required attribute and every optional one that has a default.
    sure = {attribute for attribute, definition in class_def.attributes.items() if definition.required}
    sure |= set(class_def.defaults)
    return may, sure


def check_operations(operations: Any, old: Schema, new: Schema) -> list[dict[str, Any]]:
    """Validate operations taking regions from schema `old` to schema `new`; return them normalized.

    Raises OperationsInvalid with every problem, including classes the new schema drops without an
    operation saying what happens to their regions (code ``class_dropped``) and attributes regions
    would keep or lack against the new schema (``attribute_dropped``, ``required``).
    """
    check = _Checker(old, new)
    if type(operations) is not list:
        check.add("operations", "invalid_type", f"operations must be a list, got {show_value(operations)}.")
        raise OperationsInvalid(check.errors)

    parsed: list[tuple[int, dict[str, Any]] | None] = []
    for index, operation in enumerate(operations):
        parsed.append(_parse_operation(operation, index, check))

    # Class operations first: together they map old class names to new ones, whatever their place in
    # the list, and are then put in an order that applies that mapping one operation at a time.
    class_operations: list[dict[str, Any]] = []
    for entry in parsed:
        if entry is not None and entry[1]["op"] in _CLASS_OPS:
            normal = _check_class_operation(entry[1], f"operations[{entry[0]}]", check)
            if normal is not None:
                class_operations.append(normal)
    _check_kept_classes(check)
    normalized = _in_applicable_order(class_operations, check)
    for entry in parsed:
        if entry is not None and entry[1]["op"] not in _CLASS_OPS:
            normal = _check_attribute_operation(entry[1], f"operations[{entry[0]}]", check)
            if normal is not None:
                normalized.append(normal)
    _check_attributes_fit(check)
    if check.errors:
        raise OperationsInvalid(check.errors)
    return normalized


def _moves(operation: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(classes whose regions the operation takes, classes it brings regions into)."""
    kind = operation["op"]
    if kind == "rename_class":
        return {operation["from"]}, {operation["to"]}
    if kind == "merge_classes":
        return set(operation["from"]), {operation["into"]}
    if kind == "split_class":
        targets = set(operation["into"].values()) | (
            {operation["otherwise"]} if "otherwise" in operation else set()
        )
        return {operation["class"]}, targets
    if kind == "delete_class":
        return {operation["class"]}, set()
    return set(), {operation["class"]}  # restore_class


def _in_applicable_order(operations: list[dict[str, Any]], check: _Checker) -> list[dict[str, Any]]:
    """The class operations ordered so that applying them one by one gives the mapping they describe.

    An operation that takes the regions of a class runs before any that brings regions into that
    class (rename b→c before a→b), so no region is moved twice. Operations that move regions in a
    circle (a→b with b→a) cannot be ordered; such a swap takes two schema versions.
    """
    moves = [_moves(operation) for operation in operations]
    before: list[set[int]] = [set() for _ in operations]  # operations that must run before each one
    for first, (sources, _) in enumerate(moves):
        for second, (_, targets) in enumerate(moves):
            if first != second and sources & targets:
                before[second].add(first)
    ordered: list[dict[str, Any]] = []
    done: set[int] = set()
    while len(done) < len(operations):
        ready = [index for index in range(len(operations)) if index not in done and before[index] <= done]
        if not ready:
            circle = sorted(
                {name for index in range(len(operations)) if index not in done for name in moves[index][0]}
            )
            check.add(
                "operations",
                "conflict",
                f"The operations move regions in a circle between {', '.join(map(repr, circle))}: "
                "swap names over two schema versions (through a temporary name).",
            )
            return ordered
        for index in ready:
            ordered.append(operations[index])
            done.add(index)
    return ordered


def _parse_operation(operation: Any, index: int, check: _Checker) -> tuple[int, dict[str, Any]] | None:
    path = f"operations[{index}]"
    if not isinstance(operation, dict):
        check.add(path, "invalid_type", f"An operation is an object with an op, got {show_value(operation)}.")
        return None
    kind = operation.get("op")
    if kind is None:
        check.add(f"{path}.op", "required", f"The operation needs an op: {', '.join(OPERATIONS)}.")
        return None
    if type(kind) is not str or kind not in _FIELDS:
        check.add(
            f"{path}.op",
            "unknown_option",
            f"{show_value(kind)} is not an operation; they are: {', '.join(OPERATIONS)}.",
        )
        return None
    required, optional = _FIELDS[kind]
    complete = True
    for key in required:
        if key not in operation:
            check.add(f"{path}.{key}", "required", f"{kind} needs {key!r}.")
            complete = False
    for key in operation:
        if key != "op" and key not in required and key not in optional:
            accepted = ", ".join(("op", *required, *optional))
            check.add(
                f"{path}.{key}", "unknown_field", f"{kind} has no field {str(key)!r}; it has: {accepted}."
            )
    return (index, operation) if complete else None


def _check_class_operation(operation: dict[str, Any], path: str, check: _Checker) -> dict[str, Any] | None:
    kind = operation["op"]
    old = check.old
    if kind == "rename_class":
        source = check.old_class(operation["from"], f"{path}.from")
        target = check.new_class(operation["to"], f"{path}.to")
        if source is not None:
            # Even when the rest is wrong, this operation is the one meant for the class.
            check.source(source, f"{path}.from")
        if source is None or target is None:
            return None
        if source == target:
            check.add(f"{path}.to", "invalid_value", f"Renaming {source!r} to itself changes nothing.")
            return None
        check.states.append(_State(source, target, *_base_states(old, source)))
        return {"op": kind, "from": source, "to": target}

    if kind == "merge_classes":
        raw = operation["from"]
        target = check.new_class(operation["into"], f"{path}.into")
        if type(raw) is not list or not raw:
            check.add(
                f"{path}.from",
                "invalid_type",
                f"from is a list of one or more class names, got {show_value(raw)}.",
            )
            return None
        sources: list[str] = []
        for position, name in enumerate(raw):
            source = check.old_class(name, f"{path}.from[{position}]")
            if source is None:
                continue
            if source in sources:
                check.add(f"{path}.from[{position}]", "duplicate", f"The class {source!r} is listed twice.")
                continue
            sources.append(source)
            check.source(source, f"{path}.from[{position}]")
        if target is None or len(sources) != len(raw):
            return None
        for source in sources:
            check.states.append(_State(source, target, *_base_states(old, source)))
        return {"op": kind, "from": sources, "into": target}

    if kind == "split_class":
        return _check_split(operation, path, check)

    if kind == "delete_class":
        source = check.old_class(operation["class"], f"{path}.class")
        if source is None:
            return None
        check.source(source, f"{path}.class")
        if source in check.restored:
            check.add(
                f"{path}.class",
                "conflict",
                f"The class {source!r} is also restored by {check.restored[source]}.",
            )
        return {"op": kind, "class": source}

    # restore_class
    target = check.new_class(operation["class"], f"{path}.class")
    if target is None:
        return None
    if target in check.restored:
        check.add(
            f"{path}.class",
            "conflict",
            f"The class {target!r} is already restored by {check.restored[target]}.",
        )
        return None
    if target in check.sources and check.sources[target].endswith(".class"):
        check.add(
            f"{path}.class",
            "conflict",
            f"The class {target!r} is also deleted or split by {check.sources[target]}.",
        )
        return None
    check.restored[target] = f"{path}.class"
    return {"op": kind, "class": target}


def _check_split(operation: dict[str, Any], path: str, check: _Checker) -> dict[str, Any] | None:
    source = check.old_class(operation["class"], f"{path}.class")
    raw_into = operation["into"]
    otherwise = operation.get("otherwise")
    if otherwise is not None:
        otherwise = check.new_class(otherwise, f"{path}.otherwise")
        if otherwise is None:
            return None
    if source is None:
        return None
    attribute_name = operation["attribute"]
    definition = (
        check.old.classes[source].attributes.get(attribute_name) if type(attribute_name) is str else None
    )
    if definition is None:
        check.add(
            f"{path}.attribute",
            "unknown_field",
            f"The class {source!r} has no attribute {show_value(attribute_name)} to split by.",
        )
        return None
    if definition.type != "enum":
        check.add(
            f"{path}.attribute",
            "invalid_value",
            f"A class is split by an enum attribute; {attribute_name!r} is {definition.type}.",
        )
        return None
    if not isinstance(raw_into, dict) or not raw_into:
        check.add(
            f"{path}.into", "invalid_type", f"into maps options to new classes, got {show_value(raw_into)}."
        )
        return None
    into: dict[str, str] = {}
    for option, target in raw_into.items():
        if option not in definition.option_set:
            check.add(
                f"{path}.into.{option}",
                "unknown_option",
                f"{option!r} is not an option of {attribute_name!r}; "
                f"the options are: {', '.join(definition.options)}.",
            )
            continue
        checked = check.new_class(target, f"{path}.into.{option}")
        if checked is not None:
            into[option] = checked
    if len(into) != len(raw_into):
        return None
    every_region_moves = otherwise is not None or (
        definition.required and set(into) == set(definition.options)
    )
    if not every_region_moves and source not in check.new.classes:
        check.add(
            f"{path}.otherwise",
            "class_dropped",
            f"Regions of {source!r} whose {attribute_name!r} is not mapped would keep the class "
            f"{source!r}, which the new schema lacks: map every option or give otherwise.",
        )
        check.source(source, f"{path}.class")  # reported here, not again as a class no operation covers
        return None
    check.source(source, f"{path}.class")
    may, sure = _base_states(check.old, source)
    for target in dict.fromkeys([*into.values(), *([otherwise] if otherwise else [])]):
        check.states.append(_State(source, target, may - {attribute_name}, sure - {attribute_name}))
    if not every_region_moves:
        check.states.append(_State(source, source, set(may), set(sure)))
    normal: dict[str, Any] = {"op": "split_class", "class": source, "attribute": attribute_name, "into": into}
    if otherwise is not None:
        normal["otherwise"] = otherwise
    return normal


def _check_kept_classes(check: _Checker) -> None:
    """Every old class no operation moves must exist in the new schema, and keeps its name there."""
    for name in check.old.classes:
        if name in check.sources:
            continue
        if name in check.new.classes:
            check.states.append(_State(name, name, *_base_states(check.old, name)))
        else:
            check.add(
                "operations",
                "class_dropped",
                f"The new schema drops the class {name!r} but no operation says what becomes of its regions: "
                "rename, merge, split or delete it.",
            )
    # A rename onto a name the old schema uses for a class that stays would merge two classes.
    for state in check.states:
        target = state.target
        if target != state.source and target in check.old.classes and target not in check.sources:
            path = check.sources.get(state.source, "operations")
            if path.endswith(".from"):
                check.add(
                    path.replace(".from", ".to"),
                    "conflict",
                    f"{target!r} is a class of the current schema that stays; renaming "
                    f"{state.source!r} onto it would merge the two (use merge_classes for that).",
                )


def _check_attribute_operation(
    operation: dict[str, Any], path: str, check: _Checker
) -> dict[str, Any] | None:
    kind = operation["op"]
    class_name = check.new_class(operation["class"], f"{path}.class")
    if class_name is None:
        return None
    definitions = check.new.classes[class_name].attributes
    states = [state for state in check.states if state.target == class_name]
    # Archived regions coming back may carry anything their class once had.
    unknown_content = class_name in check.restored

    if kind == "add_attribute":
        name = operation["attribute"]
        definition = definitions.get(name) if type(name) is str else None
        if definition is None:
            check.add(
                f"{path}.attribute",
                "unknown_field",
                f"The new class {class_name!r} has no attribute {show_value(name)} to add.",
            )
            return None
        check.added.add((class_name, name))
        default = operation.get("default")
        if default is None:
            default = definition.default
        if default is None:
            check.add(f"{path}.default", "required", f"Give the value {name!r} takes on existing regions.")
            return None
        try:
            default = definition.coerce(default)
        except ValueProblem as problem:
            check.add(
                f"{path}.default", problem.code, f"The default does not fit {name!r}: {problem.message}"
            )
            return None
        for state in states:
            state.may.add(name)
            state.sure.add(name)
        return {"op": kind, "class": class_name, "attribute": name, "default": default}

    if kind == "remove_attribute":
        name = operation["attribute"]
        if type(name) is not str or not (unknown_content or any(name in state.may for state in states)):
            check.add(
                f"{path}.attribute",
                "unknown_field",
                f"No region of the class {class_name!r} can carry the attribute {show_value(name)}.",
            )
            return None
        for state in states:
            state.may.discard(name)
            state.sure.discard(name)
        return {"op": kind, "class": class_name, "attribute": name}

    # rename_attribute
    source, target = operation["from"], operation["to"]
    fine = True
    if type(source) is not str or not (unknown_content or any(source in state.may for state in states)):
        check.add(
            f"{path}.from",
            "unknown_field",
            f"No region of the class {class_name!r} can carry the attribute {show_value(source)}.",
        )
        fine = False
    if type(target) is not str or target not in definitions:
        check.add(
            f"{path}.to",
            "unknown_field",
            f"The new class {class_name!r} has no attribute {show_value(target)}.",
        )
        fine = False
    if not fine:
        return None
    if source == target:
        check.add(f"{path}.to", "invalid_value", f"Renaming {source!r} to itself changes nothing.")
        return None
    if any(target in state.may for state in states):
        check.add(
            f"{path}.to",
            "conflict",
            f"Regions of {class_name!r} may already carry {target!r}; remove it first or rename it away.",
        )
        return None
    for state in states:
        if source in state.may:
            state.may.discard(source)
            state.may.add(target)
        if source in state.sure:
            state.sure.discard(source)
            state.sure.add(target)
    return {"op": kind, "class": class_name, "from": source, "to": target}


def _check_attributes_fit(check: _Checker) -> None:
    """After the operations, regions carry no attribute their new class lacks and every one it requires."""
    reported: set[tuple[str, str, str]] = set()
    for state in check.states:
        class_def = check.new.classes[state.target]
        for name in sorted(state.may - set(class_def.attributes)):
            if (state.target, name, "dropped") in reported:
                continue
            reported.add((state.target, name, "dropped"))
            check.add(
                "operations",
                "attribute_dropped",
                f"Regions of {state.source!r} carry the attribute {name!r}, which the new class "
                f"{state.target!r} lacks: remove it (remove_attribute) or rename it (rename_attribute).",
            )
        for name in class_def.required:
            if (
                name in state.sure
                or (state.target, name) in check.added
                or (state.target, name, "required") in reported
            ):
                continue
            reported.add((state.target, name, "required"))
            check.add(
                "operations",
                "required",
                f"The new class {state.target!r} requires the attribute {name!r}, which regions of "
                f"{state.source!r} may lack: give it a value with add_attribute.",
            )


# -- applying ------------------------------------------------------------------------------------


def _targets(region: dict[str, Any]) -> tuple[str, ...]:
    """Ids of the regions this one depends on (a relation's ends, the region a transcription reads)."""
    geometry = region.get("geometry")
    if not isinstance(geometry, dict):
        return ()
    kind = region.get("type")
    if kind == "relation":
        return tuple(value for value in (geometry.get("from"), geometry.get("to")) if type(value) is str)
    if kind == "transcription" and type(geometry.get("region")) is str:
        return (geometry["region"],)
    return ()


def _without_marker(region: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in region.items() if key != ARCHIVED_WITH}


def apply_operations(
    regions: list[dict[str, Any]], archived: list[dict[str, Any]], operations: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Carry one annotation's regions and archive through checked operations: (regions, archived, changed).

    Operations run one after the other, in list order, so the lists check_operations returns for
    several schema versions can be joined and applied at once. Pure: the given lists and regions are
    not modified (unchanged regions are shared, not copied). The number of regions plus archived
    regions never changes.
    """
    active, archive = list(regions), list(archived)
    changed = False
    for operation in operations:
        kind = operation["op"]
        if kind in ("rename_class", "merge_classes", "split_class"):
            if kind == "split_class":
                mapping: dict[str, str] = {}
                split: dict[str, Any] | None = operation
            else:
                sources = [operation["from"]] if kind == "rename_class" else operation["from"]
                target = operation["to"] if kind == "rename_class" else operation["into"]
                mapping, split = dict.fromkeys(sources, target), None
            for group in (active, archive):
                for position, region in enumerate(group):
                    moved = _relabel(region, mapping, split)
                    if moved is not region:
                        group[position] = moved
                        changed = True
        elif kind == "delete_class":
            active, archive, deleted = _delete(active, archive, operation["class"])
            changed = changed or deleted
        elif kind == "restore_class":
            active, archive, brought = _restore(active, archive, [operation["class"]])
            changed = changed or brought
        else:
            for group in (active, archive):
                for position, region in enumerate(group):
                    updated = _apply_attribute_operation(region, operation)
                    if updated is not region:
                        group[position] = updated
                        changed = True
    return active, archive, changed


def _delete(
    active: list[dict[str, Any]], archive: list[dict[str, Any]], name: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    changed = False
    kept: list[dict[str, Any]] = []
    for position, region in enumerate(archive):
        if region.get("label") == name and ARCHIVED_WITH in region:
            archive[position] = _without_marker(region)  # its own class is gone now: it waits for that class
            changed = True
    for region in active:
        if region.get("label") == name:
            archive.append(region)
            changed = True
        else:
            kept.append(region)
    if not changed:
        return active, archive, False
    kept, archive, _ = _archive_dependents(kept, archive)
    return kept, archive, True


def _relabel(region: dict[str, Any], renames: dict[str, str], split: dict[str, Any] | None) -> dict[str, Any]:
    label = region.get("label")
    if type(label) is not str:
        return region
    if label in renames:
        return region if renames[label] == label else {**region, "label": renames[label]}
    if split is None or label != split["class"]:
        return region
    attributes = region.get("attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    name = split["attribute"]
    value = attributes.get(name)
    target = split["into"].get(value) if type(value) is str else None
    if target is None:
        target = split.get("otherwise")
    if target is None:
        return region  # nothing says where it goes: it keeps its class rather than being lost
    return {
        **region,
        "label": target,
        "attributes": {key: item for key, item in attributes.items() if key != name},
    }


def _archive_dependents(
    active: list[dict[str, Any]], archive: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    changed = False
    while True:
        present = {region.get("id") for region in active}
        kept: list[dict[str, Any]] = []
        for region in active:
            missing = next((target for target in _targets(region) if target not in present), None)
            if missing is None:
                kept.append(region)
            else:
                archive.append({**region, ARCHIVED_WITH: missing})
        if len(kept) == len(active):
            return active, archive, changed
        active, changed = kept, True


def _restore(
    active: list[dict[str, Any]], archive: list[dict[str, Any]], classes: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    wanted = set(classes)
    if not any(region.get("label") in wanted for region in archive):
        return active, archive, False
    count = len(active)
    taken = {region.get("id") for region in active}
    every_id = taken | {region.get("id") for region in archive}
    independent: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for region in archive:
        if region.get("label") not in wanted:
            rest.append(region)
        elif _targets(region):
            rest.append(_without_marker(region))  # decided below, once what it needs may be back
        else:
            independent.append(_without_marker(region))
    for region in independent:
        region, rest = _take_id(region, taken, every_id, rest)
        active.append(region)
    # Dependents come back once everything they depend on is back; repeat for chains.
    progress = True
    while progress:
        progress = False
        position = 0
        while position < len(rest):
            region = rest[position]
            targets = _targets(region)
            if targets and (ARCHIVED_WITH in region or region.get("label") in wanted):
                missing = next((target for target in targets if target not in taken), None)
                if missing is None:
                    del rest[position]
                    region, rest = _take_id(_without_marker(region), taken, every_id, rest)
                    active.append(region)
                    progress = True
                    continue
                if region.get("label") in wanted and region.get(ARCHIVED_WITH) != missing:
                    rest[position] = {**region, ARCHIVED_WITH: missing}  # waits for the region it needs
            position += 1
    return active, rest, len(active) > count or rest != archive


def _take_id(
    region: dict[str, Any], taken: set[Any], every_id: set[Any], archive: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The region with an id no active region has (now taken); archived references follow a change."""
    old_id = region.get("id")
    if old_id in taken and type(old_id) is str:
        number = 2
        while True:
            suffix = f"-{number}"
            candidate = old_id[: ID_MAX - len(suffix)] + suffix
            if candidate not in every_id:
                break
            number += 1
        every_id.add(candidate)
        region = {**region, "id": candidate}
        archive = [_retarget(item, old_id, candidate) for item in archive]
    taken.add(region.get("id"))
    return region, archive


def _retarget(region: dict[str, Any], old_id: str, new_id: str) -> dict[str, Any]:
    if old_id not in _targets(region):
        return region
    geometry = dict(region["geometry"])
    for key in ("from", "to", "region"):
        if geometry.get(key) == old_id:
            geometry[key] = new_id
    updated = {**region, "geometry": geometry}
    if updated.get(ARCHIVED_WITH) == old_id:
        updated[ARCHIVED_WITH] = new_id
    return updated


def _apply_attribute_operation(region: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    if region.get("label") != operation["class"]:
        return region
    attributes = region.get("attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    kind = operation["op"]
    if kind == "add_attribute":
        name = operation["attribute"]
        if attributes.get(name) is not None:
            return region
        default = operation["default"]
        return {
            **region,
            "attributes": {**attributes, name: list(default) if type(default) is list else default},
        }
    if kind == "remove_attribute":
        name = operation["attribute"]
        if name not in attributes:
            return region
        return {**region, "attributes": {key: value for key, value in attributes.items() if key != name}}
    # rename_attribute
    source, target = operation["from"], operation["to"]
    if source not in attributes:
        return region
    renamed = {target if key == source else key: value for key, value in attributes.items()}
    return {**region, "attributes": renamed}


def inverse_operations(operations: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Operations undoing `operations` (as checked), or None when they cannot be undone.

    Renames are renamed back, a delete becomes a restore and a restore a delete, an added attribute
    is removed and a renamed one renamed back. Merges, splits and removed attributes lose what
    told the regions apart, so a list holding one has no inverse.
    """
    back_to_old: dict[str, str] = {}
    classes: list[dict[str, Any]] = []
    attributes: list[dict[str, Any]] = []
    for operation in operations:
        kind = operation["op"]
        if kind in ("merge_classes", "split_class", "remove_attribute"):
            return None
        if kind == "rename_class":
            back_to_old[operation["to"]] = operation["from"]
            classes.append({"op": "rename_class", "from": operation["to"], "to": operation["from"]})
        elif kind == "delete_class":
            classes.append({"op": "restore_class", "class": operation["class"]})
        elif kind == "restore_class":
            classes.append({"op": "delete_class", "class": operation["class"]})
        else:
            attributes.append(operation)
    # Class operations are undone last first; they run before the attribute operations, which
    # therefore name the classes as they were.
    classes.reverse()
    undone: list[dict[str, Any]] = []
    for operation in reversed(attributes):
        class_name = back_to_old.get(operation["class"], operation["class"])
        if operation["op"] == "add_attribute":
            undone.append(
                {"op": "remove_attribute", "class": class_name, "attribute": operation["attribute"]}
            )
        else:
            undone.append(
                {
                    "op": "rename_attribute",
                    "class": class_name,
                    "from": operation["to"],
                    "to": operation["from"],
                }
            )
    return classes + undone
