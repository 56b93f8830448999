"""PDF with pypdfium2 (Chrome's PDFium): page count and size, encryption, a first-page thumbnail.

PDFium reads pages on demand, so a 2,000-page document costs its cross-reference table. It runs
no JavaScript unless a form environment is set up, which this module never does. PDFium is not
thread-safe: one lock serialises its calls within a process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from storage.media.base import Probe, ProbeError, ProbeLimits, encode_webp, refuse_if_too_many_pixels

if TYPE_CHECKING:
    import pypdfium2

_PDFIUM = threading.Lock()


def probe_pdf(path: Path) -> Probe:
    import pypdfium2.raw as pdfium_c

    with _open(path) as document:
        pages = len(document)
        if pages == 0:
            raise ProbeError("corrupt", "The PDF has no pages.")
        width, height = document[0].get_size()  # in points, after the page's /Rotate
        version = document.get_version()
        meta = {
            "pages": pages,
            "width_pt": round(width, 2),
            "height_pt": round(height, 2),
            # Opened without a password, so at most an owner password (print/copy permissions).
            "encrypted": pdfium_c.FPDF_GetSecurityHandlerRevision(document.raw) != -1,
            "version": f"{version // 10}.{version % 10}" if version else None,
        }
    return Probe("pdf", "application/pdf", meta)


def pdf_thumbnail(path: Path, *, max_side: int, limits: ProbeLimits) -> bytes:
    with _open(path) as document:
        page = document[0]
        scale = max_side / max(*page.get_size(), 1.0)
        width, height = (round(side * scale) for side in page.get_size())
        refuse_if_too_many_pixels(width, height, limits)
        image = page.render(scale=scale, may_draw_forms=False).to_pil()
    return encode_webp(image)


@contextmanager
def _open(path: Path) -> Iterator[pypdfium2.PdfDocument]:
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    with _PDFIUM:
        try:
            document = pypdfium2.PdfDocument(path)
        except pypdfium2.PdfiumError as exc:
            if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
                raise ProbeError(
                    "unsupported_type", "The PDF needs a password to open; upload it without one."
                ) from exc
            raise ProbeError("corrupt", "The PDF is damaged and cannot be opened.") from exc
        try:
            yield document
        except pypdfium2.PdfiumError as exc:
            raise ProbeError("corrupt", "The PDF is damaged and cannot be read.") from exc
        finally:
            document.close()
