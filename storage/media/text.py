"""Text: which encoding, how many characters and lines, and refusing binary that poses as text.

Encodings are decided by rule, not guessed: a BOM names UTF-8/16/32; otherwise UTF-8 if the
bytes are valid UTF-8; otherwise Windows-1252, or Latin-1 when even that fails (every byte
sequence is Latin-1). A statistical detector (charset-normalizer) would only help to tell apart
legacy 8-bit code pages, and for those the character and line counts, which text spans are
measured in, come out the same whichever single-byte code page is chosen.

UTF-16 and UTF-32 without a BOM are read as binary: their NUL bytes cannot be told from binary
data reliably.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path

from storage.media.base import Probe, ProbeError, ProbeLimits, refuse_if_too_large

_BOMS = (
    # UTF-32 first: its little-endian BOM starts with the UTF-16 one.
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_EIGHT_BIT_FALLBACKS = ("cp1252", "latin-1")

# Control characters that do not occur in text. Tab, line feed, vertical tab, form feed, carriage
# return, SUB (DOS end of file) and ESC (terminal colours in logs) do, so they are allowed.
_CONTROL = re.compile("[\x00-\x08\x0e-\x19\x1c-\x1f\x7f]")
_MAX_CONTROL_RATIO = 0.001
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class TextEncoding:
    name: str  # a Python codec name that browsers' TextDecoder accepts too
    bom_bytes: int  # how many bytes the byte order mark takes: they are not part of the text


def detect_encoding(head: bytes, *, complete: bool) -> TextEncoding | None:
    """How to decode a file that starts with `head`, or None if it is binary.

    `complete` says `head` is the whole file; if not, a multi-byte character cut at its end is
    not an error.
    """
    for bom, name in _BOMS:
        if head.startswith(bom):
            candidates: tuple[str, ...] = (name,)
            bom_bytes = len(bom)
            break
    else:
        candidates, bom_bytes = ("utf-8", *_EIGHT_BIT_FALLBACKS), 0
    for name in candidates:
        try:
            sample = codecs.getincrementaldecoder(name)().decode(head[bom_bytes:], final=complete)
        except UnicodeDecodeError:
            continue
        return TextEncoding(name, bom_bytes) if _looks_like_text(sample) else None
    return None


def probe_text(path: Path, *, head: bytes, size: int, media_type: str, limits: ProbeLimits) -> Probe:
    refuse_if_too_large(size, limits.max_text_bytes, "text file")
    encoding = detect_encoding(head, complete=size <= len(head))
    if encoding is None:
        raise ProbeError("unsupported_type", "The file holds binary data, not text.")
    # The sample decided the encoding; a later byte may still not fit it (a UTF-8 start and a
    # Windows-1252 accent further down). Then the next 8-bit reading is tried, to the end.
    names = (encoding.name, *_EIGHT_BIT_FALLBACKS) if encoding.name == "utf-8" else (encoding.name,)
    for name in names:
        try:
            characters, lines = _count(path, TextEncoding(name, encoding.bom_bytes))
        except UnicodeDecodeError:
            continue
        meta = {"encoding": name, "bom": encoding.bom_bytes > 0, "length": characters, "lines": lines}
        return Probe("text", media_type, meta)
    raise ProbeError("corrupt", f"The text is not valid {encoding.name}.")


def _looks_like_text(sample: str) -> bool:
    if "\x00" in sample:
        return False
    return len(_CONTROL.findall(sample)) <= len(sample) * _MAX_CONTROL_RATIO


def _count(path: Path, encoding: TextEncoding) -> tuple[int, int]:
    """Characters (Unicode code points, the unit of text-span offsets) and lines, read in chunks.

    A line break is \\n, \\r\\n or a lone \\r; a last line without a break still counts.
    """
    decoder = codecs.getincrementaldecoder(encoding.name)()
    characters = breaks = 0
    previous = ""  # the last character decoded, to join a \r\n split between two chunks
    with path.open("rb") as file:
        file.seek(encoding.bom_bytes)
        while True:
            chunk = file.read(_CHUNK_BYTES)
            text = decoder.decode(chunk, final=not chunk)
            if not _looks_like_text(text):
                raise ProbeError("unsupported_type", "The file holds binary data, not text.")
            if text:
                characters += len(text)
                breaks += text.count("\n") + text.count("\r") - text.count("\r\n")
                if previous == "\r" and text[0] == "\n":
                    breaks -= 1
                previous = text[-1]
            if not chunk:
                break
    last_line_open = characters > 0 and previous not in ("\n", "\r")
    return characters, breaks + last_line_open
