"""CoNLL BIO: token-aligned spans round-trip; offsets are recovered from the item's text."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeling.formats import conll, get_format
from labeling.formats.base import ExportItem, ItemIndex, ItemInfo, LabelClass

CLASSES = [LabelClass(n, tools=("span",)) for n in ("PER", "ORG", "LOC", "MISC-2")]


def span(rid: str, label: str, start: int, end: int, text: str | None = None) -> dict[str, Any]:
    geometry: dict[str, Any] = {"start": start, "end": end}
    if text is not None:
        geometry["text"] = text
    return {"id": rid, "type": "span", "label": label, "attributes": {}, "geometry": geometry}


def export_text(items: list[ExportItem]) -> str:
    out = io.BytesIO()
    conll.export(iter(items), CLASSES, out)
    return out.getvalue().decode("utf-8")


def run_import(text: str, items: list[ItemInfo]) -> Any:
    return conll.import_(io.BytesIO(text.encode("utf-8")), CLASSES, ItemIndex(items))


# --- round trip --------------------------------------------------------------------------------

words = st.text(alphabet=st.sampled_from(list("abcxyz019.,!?-'éü")), min_size=1, max_size=6)
gaps = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", "\n\n", " \n \n "])


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """A text, aligned spans (that survive), and all spans including unaligned ones."""
    tokens = draw(st.lists(words, max_size=25))
    text = draw(st.sampled_from(["", " ", "\n"]))
    for token in tokens:
        text += token + draw(gaps)
    aligned: list[dict[str, Any]] = []
    taken: set[int] = set()
    for sent in conll.sentences(text):
        for _ in range(draw(st.integers(0, 2))):
            i = draw(st.integers(0, len(sent) - 1))
            j = draw(st.integers(i, len(sent) - 1))
            if taken & {sent[k][0] for k in range(i, j + 1)}:
                continue
            taken |= {sent[k][0] for k in range(i, j + 1)}
            label = draw(st.sampled_from([c.name for c in CLASSES]))
            aligned.append(span(f"s{len(aligned)}", label, sent[i][0], sent[j][1]))
    everything = list(aligned)
    for start, end in conll.sentences(text)[0][:1] if text.strip() else []:
        if end - start > 1:  # half a token: not aligned, skipped on export
            everything.append(span("half", "PER", start, end - 1))
    return text, aligned, everything


@settings(max_examples=150, deadline=None)
@given(st.lists(documents(), max_size=4))
def test_round_trip_token_aligned_spans(
    docs: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]],
) -> None:
    items = [
        ItemInfo(n + 1, f"docs/d{n}.txt", "text", length=len(t), text=t) for n, (t, _, _) in enumerate(docs)
    ]
    export_items = [ExportItem(item, regions) for item, (_, _, regions) in zip(items, docs, strict=True)]
    first = export_text(export_items)
    result = run_import(first, items)
    assert result.errors == []
    assert [r.item for r in result.records] == items
    for record, (text, aligned, _) in zip(result.records, docs, strict=True):
        got = [(g["label"], g["geometry"]["start"], g["geometry"]["end"]) for g in record.regions]
        want = sorted((s["label"], s["geometry"]["start"], s["geometry"]["end"]) for s in aligned)
        assert sorted(got) == want
        assert all(
            g["geometry"]["text"] == text[g["geometry"]["start"] : g["geometry"]["end"]]
            for g in record.regions
        )
    again = [ExportItem(r.item, r.regions) for r in result.records]
    assert export_text(again) == first


# --- export ------------------------------------------------------------------------------------


def test_export_layout_sentences_and_skipped_spans(caplog: pytest.LogCaptureFixture) -> None:
    assert get_format("conll") is conll and conll.extension == ".conll"
    text = "EU rejects German call. Peter Blackburn\n\nwent home!"
    item = ItemInfo(1, "news/1.txt", "text", length=len(text), text=text)
    regions = [
        span("a", "ORG", 0, 2),
        span("b", "PER", 24, 39),
        span("c", "MISC-2", 3, 9),  # "reject" of "rejects": not aligned
        span("d", "LOC", 30, 39),  # "Blackburn": overlaps "Peter Blackburn"
        span("e", "LOC", 30, 45),  # "Blackburn\n\nwent" crosses the blank line
    ]
    no_text = ItemInfo(2, "news/2.txt", "text")
    with caplog.at_level(logging.WARNING, logger="labeling.formats.conll"):
        written = export_text([ExportItem(item, regions), ExportItem(no_text, [span("x", "PER", 0, 1)])])
    assert written == (
        "-DOCSTART- news/1.txt\n\n"
        "EU B-ORG\nrejects O\nGerman O\ncall. O\n\n"
        "Peter B-PER\nBlackburn I-PER\n\n"
        "went O\nhome! O\n\n"
    )
    message = caplog.records[-1].getMessage()
    for why in ("1 not aligned", "1 overlaps", "1 crosses a sentence break", "1 item without text"):
        assert why in message


# --- import ------------------------------------------------------------------------------------


def test_import_conll2003_four_columns_iob1_and_bioes() -> None:
    text = "John lives in New York ,near  the U.N.\nheadquarters."
    item = ItemInfo(1, "c.txt", "text", length=len(text), text=text)
    conll_text = (
        "-DOCSTART- -X- -X- O\n"  # the CoNLL-2003 header names no item: unmatched
        "\n"
        "-DOCSTART- c.txt\n"
        "\n"
        "John NNP B-NP I-PER\n"  # IOB1: I- starts an entity
        "lives VBZ B-VP O\n"
        "in IN B-PP O\n"
        "New NNP B-NP I-LOC\n"
        "York NNP I-NP I-LOC\n"
        ", , O O\n"  # "," is split off ",near" in the text: still aligns
        "near IN B-PP O\n"
        "the DT B-NP O\n"
        "U.N. NNP I-NP S-ORG\n"
        "\n"
        "headquarters\tNN\tI-NP\tB-LOC\n"  # tab separated, entity ended by the next line
        ". . O O\n"
    )
    result = run_import(conll_text, [item])
    assert [(e.where, e.code) for e in result.errors] == [("line 1", "unmatched_item")]
    [record] = result.records
    assert record.where == "line 3"
    assert [(g["label"], g["geometry"]) for g in record.regions] == [
        ("PER", {"start": 0, "end": 4, "text": "John"}),
        ("LOC", {"start": 14, "end": 22, "text": "New York"}),
        ("ORG", {"start": 34, "end": 38, "text": "U.N."}),
        ("LOC", {"start": 39, "end": 51, "text": "headquarters"}),
    ]
    assert [g["id"] for g in record.regions] == ["r1", "r2", "r3", "r4"]


def test_bad_documents_are_reported_with_their_line_and_good_ones_kept() -> None:
    items = [
        ItemInfo(1, "a.txt", "text", text="EU rejects German call ."),
        ItemInfo(2, "b.txt", "text", text="Peter Blackburn went home"),
        ItemInfo(3, "notext.txt", "text"),
        ItemInfo(4, "d.txt", "text", text="Rome is big"),
    ]
    conll_text = (
        "stray O\n"  # 1: before any -DOCSTART-
        "-DOCSTART- a.txt\n"  # 2
        "\n"
        "EU B-ORG\n"  # 4
        "rejects O\n"
        "German B-NATION\n"  # 6: not a class
        "call O\n"
        ". X-FOO\n"  # 8: not a tag, read as O
        "\n"
        "-DOCSTART- missing.txt\n"  # 10
        "foo O\n"
        "-DOCSTART- notext.txt\n"  # 12
        "x O\n"
        "-DOCSTART- b.txt\n"  # 14
        "Peter B-PER\n"
        "Blackburn I-PER\n"
        "wnet O\n"  # 17: not in the text: document dropped
        "home O\n"
        "-DOCSTART- d.txt\n"  # 19
        "Rome\n"  # 20: no tag: document dropped
        "-DOCSTART- a.txt\n"  # 21: the same item again, fine
        "EU B-ORG\n"
    )
    result = run_import(conll_text, items)
    assert [(e.where, e.code) for e in result.errors] == [
        ("line 1", "malformed"),
        ("line 6", "unknown_class"),
        ("line 8", "malformed"),
        ("line 10", "unmatched_item"),
        ("line 12", "unsupported"),
        ("line 17", "malformed"),
        ("line 20", "malformed"),
    ]
    assert [(r.where, r.item.id) for r in result.records] == [("line 2", 1), ("line 21", 1)]
    assert [(g["label"], g["geometry"]["text"]) for g in result.records[0].regions] == [("ORG", "EU")]
