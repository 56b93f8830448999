"""Matching a record's name to a project item: exact, then unique base name, then unique stem."""

from __future__ import annotations

from labeling.formats.base import ItemIndex, ItemInfo


def _index(*names: str) -> ItemIndex:
    return ItemIndex(ItemInfo(id=n, name=name, modality="image") for n, name in enumerate(names, start=1))


def test_exact_names_win_then_base_names_then_stems() -> None:
    index = _index("a/one.jpg", "b/two.png", r"win\three.jpg")
    assert index.resolve("a/one.jpg").id == 1  # type: ignore[union-attr]
    assert index.resolve("elsewhere/one.jpg").id == 1  # type: ignore[union-attr]
    assert index.resolve("labels/two.txt").id == 2  # type: ignore[union-attr]
    assert index.resolve(r"win\three.jpg").id == 3  # type: ignore[union-attr]  (a name that holds "\")
    assert index.resolve("./a/one.jpg").id == 1  # type: ignore[union-attr]
    assert index.resolve(r"a\one.jpg").id == 1  # type: ignore[union-attr]


def test_an_ambiguous_or_unknown_name_matches_nothing() -> None:
    index = _index("day/frame.jpg", "night/frame.jpg", "x/shot.jpg", "y/shot.png")
    assert index.resolve("frame.jpg") is None
    assert index.resolve("shot.txt") is None
    assert index.resolve("missing.jpg") is None
    assert index.resolve("night/frame.jpg").id == 2  # type: ignore[union-attr]
    assert len(index) == 4
