"""Token-level named entities as CoNLL-2003 style BIO tags.

Export writes, for every text item whose `ItemInfo.text` is set (other items are skipped)::

    -DOCSTART- <item name>
    <blank line>
    EU B-ORG
    rejects O
    German B-MISC
    call O
    . O
    <blank line>
    ...

Tokens are the whitespace-separated runs of the text (`\\S+`), one `token TAG` line each.
Sentences end at a blank line of the text or after a token ending in `.`, `!` or `?`; a blank
line separates them. Tags are `O`, `B-<label>` on a span's first token and `I-<label>` on the
rest, from the `span` regions. A span is written only when it starts at a token's start and ends
at a token's end, stays inside one sentence, overlaps no span written before it (spans are
taken by start, then end) and its label has no whitespace; any other span is skipped, never
stretched to token boundaries, and the export logs how many it skipped and why (logger
`labeling.formats.conll`, level WARNING).

Import accepts that layout and the 4-column CoNLL-2003 one (`token POS chunk NER`): the first
column is the token, the last the tag (columns split on tabs when the line has one, else on
whitespace). Tags may be IOB2 (`B-`/`I-`), IOB1 (an `I-X` after `O` or another label starts an
entity) or BIOES (`S-`, `E-` too); a blank line ends an entity. For each `-DOCSTART- <name>` the
item is matched by that name; its text (`ItemInfo.text`, which the caller must provide, else the
document is `unsupported`) is walked token by token, skipping whitespace, to recover character
offsets, so tokenisations that split punctuation off words still align. Entities become `span`
regions `{start, end, text}`.

Errors: `line N` of the `-DOCSTART-` for `unmatched_item` / `unsupported`; `line N` of a token that
is not next in the text (`malformed`; the rest of that document is dropped, as its offsets are
lost), of a tag that is neither `O` nor `B|I|E|S-<label>` (`malformed`, read as `O`), of an
entity's first token for a label that is no class (`unknown_class`, the entity is dropped).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

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

name = "conll"
media_type = "text/plain"
extension = ".conll"
can_import = True
can_export = True

log = logging.getLogger(__name__)

DOCSTART = "-DOCSTART-"
_TOKEN = re.compile(r"\S+")
_TAG = re.compile(r"([BIES])-(.+)")
_SENTENCE_END = frozenset(".!?")


def sentences(text: str) -> list[list[tuple[int, int]]]:
    """The text's tokens as (start, end) offsets, grouped into sentences."""
    result: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    prev_end = 0
    for match in _TOKEN.finditer(text):
        if current and text.count("\n", prev_end, match.start()) >= 2:
            result.append(current)
            current = []
        current.append((match.start(), match.end()))
        if match.group()[-1] in _SENTENCE_END:
            result.append(current)
            current = []
        prev_end = match.end()
    if current:
        result.append(current)
    return result


def _tags(
    sents: list[list[tuple[int, int]]], regions: list[dict[str, Any]], skipped: Counter[str]
) -> dict[int, str]:
    """Token start offset → tag, for the spans that align to tokens."""
    sentence_of: dict[int, int] = {}
    end_to_start: dict[int, int] = {}
    ordered: list[int] = []
    for s, sent in enumerate(sents):
        for start, end in sent:
            sentence_of[start] = s
            end_to_start[end] = start
            ordered.append(start)
    position = {start: k for k, start in enumerate(ordered)}
    spans = sorted(
        (r for r in regions if r.get("type") == "span"),
        key=lambda r: (r["geometry"]["start"], r["geometry"]["end"]),
    )
    tags: dict[int, str] = {}
    for region in spans:
        start, end, label = region["geometry"]["start"], region["geometry"]["end"], region["label"]
        last = end_to_start.get(end)
        if start not in position or last is None or position[last] < position[start]:
            skipped["not aligned to token boundaries"] += 1
            continue
        if sentence_of[start] != sentence_of[last]:
            skipped["crosses a sentence break"] += 1
            continue
        if not label or any(ch.isspace() for ch in label):
            skipped["label contains whitespace"] += 1
            continue
        covered = ordered[position[start] : position[last] + 1]
        if any(t in tags for t in covered):
            skipped["overlaps another span"] += 1
            continue
        tags[covered[0]] = f"B-{label}"
        for t in covered[1:]:
            tags[t] = f"I-{label}"
    return tags


def export(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> None:
    skipped: Counter[str] = Counter()
    for export_item in items:
        item = export_item.item
        text = item.text
        if text is None:
            skipped["item without text"] += 1
            continue
        sents = sentences(text)
        tags = _tags(sents, export_item.regions, skipped)
        lines = [f"{DOCSTART} {item.name}", ""]
        for sent in sents:
            lines.extend(f"{text[start:end]} {tags.get(start, 'O')}" for start, end in sent)
            lines.append("")
        out.write(("\n".join(lines) + "\n").encode("utf-8"))
    if skipped:
        log.warning("CoNLL export skipped: %s", ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))


@dataclass
class _Doc:
    where: str
    item: ItemInfo | None  # None: the document is skipped (its error already reported)
    text: str = ""
    pos: int = 0
    regions: list[dict[str, Any]] = field(default_factory=list)
    # The open entity: label, start, end, line of its first token.
    entity: tuple[str, int, int, int] | None = None


def _close(doc: _Doc, known: dict[str, LabelClass], ids: Any, result: ImportResult) -> None:
    if doc.entity is None:
        return
    label, start, end, line = doc.entity
    doc.entity = None
    if label not in known:
        result.errors.append(
            RecordError(f"line {line}", "unknown_class", f"{label!r} is not a class of the schema")
        )
        return
    doc.regions.append(
        {
            "id": next(ids),
            "type": "span",
            "label": label,
            "attributes": {},
            "geometry": {"start": start, "end": end, "text": doc.text[start:end]},
        }
    )


def import_(data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult:
    result = ImportResult()
    known = dict(class_names(classes))
    doc: _Doc | None = None
    ids = region_ids()

    def finish() -> None:
        if doc is not None and doc.item is not None:
            _close(doc, known, ids, result)
            result.records.append(ImportedRecord(item=doc.item, regions=doc.regions, where=doc.where))

    for lineno, raw in enumerate(data, start=1):
        where = f"line {lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            result.errors.append(RecordError(where, "malformed", f"not UTF-8: {exc.reason}"))
            if doc is not None and doc.item is not None:
                doc.item = None  # a token lost: the offsets after it cannot be trusted
            continue
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        line = line.rstrip("\r\n")
        if not line.strip():
            if doc is not None and doc.item is not None:
                _close(doc, known, ids, result)
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if cols[0].strip() == DOCSTART:
            finish()
            ids = region_ids()
            doc_name = line.strip()[len(DOCSTART) :].strip()
            doc = _Doc(where=where, item=None)
            item = index.resolve(doc_name) if doc_name else None
            if item is None:
                result.errors.append(
                    RecordError(where, "unmatched_item", f"no item of the project matches {doc_name!r}")
                )
            elif item.text is None:
                result.errors.append(
                    RecordError(
                        where, "unsupported", f"the text of {item.name!r} is needed to recover offsets"
                    )
                )
            else:
                doc.item, doc.text = item, item.text
            continue
        if doc is None:
            result.errors.append(RecordError(where, "malformed", f"a token before the first {DOCSTART} line"))
            doc = _Doc(where=where, item=None)
            continue
        if doc.item is None:
            continue
        if len(cols) < 2:
            result.errors.append(RecordError(where, "malformed", "a token line needs a token and a tag"))
            doc.item = None
            continue
        token, tag = cols[0], cols[-1].strip()
        pos = doc.pos
        while pos < len(doc.text) and doc.text[pos].isspace():
            pos += 1
        if not token or not doc.text.startswith(token, pos):
            result.errors.append(
                RecordError(
                    where, "malformed", f"token {token!r} is not next in the item's text (offset {pos})"
                )
            )
            doc.item = None
            continue
        start, end = pos, pos + len(token)
        doc.pos = end

        match = _TAG.fullmatch(tag)
        if match is None:
            if tag != "O":
                result.errors.append(
                    RecordError(where, "malformed", f"tag {tag!r} is not O or B|I|E|S-<label>")
                )
            _close(doc, known, ids, result)
            continue
        kind, label = match.groups()
        continues = doc.entity is not None and doc.entity[0] == label
        if kind in "IE" and continues:
            assert doc.entity is not None
            doc.entity = (label, doc.entity[1], end, doc.entity[3])
        else:
            _close(doc, known, ids, result)
            doc.entity = (label, start, end, lineno)
        if kind in "ES":
            _close(doc, known, ids, result)
    finish()
    return result
