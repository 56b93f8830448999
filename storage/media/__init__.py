"""Media probing and thumbnails: what a file really is, the facts an item's meta holds, its picture.

Pure functions on a local file: no Django, no database, no network. The ingest jobs download an
object to a temporary file and call, per file:

    probe = probe_file(path, filename=name)        # ProbeError: record code + message, go on
    thumbnail = make_thumbnail(path, probe)        # WebP bytes, or None (text, audio, points)
    phash = image_phash(path) if probe.modality == "image" else None

Probing reads headers (and one video frame); decoding happens in make_thumbnail and image_phash,
so a file damaged past its header (a truncated JPEG) is refused there, with the same
ProbeError("corrupt").

The readers of each modality are imported when first needed: a web process that only sniffs
uploads never loads FFmpeg, PDFium, pydicom or scipy.
"""

from __future__ import annotations

from pathlib import Path

from storage.media.base import (
    DEFAULT_LIMITS,
    MODALITIES,
    PROBE_ERROR_CODES,
    Modality,
    Probe,
    ProbeError,
    ProbeErrorCode,
    ProbeLimits,
    refuse_if_too_large,
)
from storage.media.images import image_phash, image_thumbnail, phash_distance, probe_image
from storage.media.sniff import HEAD_BYTES, Sniffed, sniff

__all__ = [
    "DEFAULT_LIMITS",
    "MODALITIES",
    "PROBE_ERROR_CODES",
    "Modality",
    "Probe",
    "ProbeError",
    "ProbeErrorCode",
    "ProbeLimits",
    "Sniffed",
    "image_phash",
    "make_thumbnail",
    "phash_distance",
    "probe_file",
    "sniff",
]


def probe_file(path: Path, *, filename: str, limits: ProbeLimits = DEFAULT_LIMITS) -> Probe:
    """The modality, real media type and probed facts of the file at `path`.

    `filename` is the name the file came with: a hint for what content cannot tell (KITTI scans,
    the subtype of text), never trusted over the bytes. Raises ProbeError with a stable code.
    """
    size = path.stat().st_size
    refuse_if_too_large(size, limits.max_bytes, "file")
    with path.open("rb") as file:
        head = file.read(HEAD_BYTES)
    kind = sniff(head, filename=filename, size=size)
    if kind.modality == "image":
        return probe_image(path, media_type=kind.media_type, limits=limits)
    if kind.modality == "text":
        from storage.media.text import probe_text

        return probe_text(path, head=head, size=size, media_type=kind.media_type, limits=limits)
    if kind.modality == "audio":
        from storage.media.audio import probe_audio

        return probe_audio(path, media_type=kind.media_type)
    if kind.modality == "video":
        from storage.media.video import probe_video

        return probe_video(path, media_type=kind.media_type, limits=limits)
    if kind.modality == "pointcloud":
        from storage.media.pointclouds import probe_pointcloud

        return probe_pointcloud(path, head=head, size=size, media_type=kind.media_type, limits=limits)
    if kind.modality == "dicom":
        from storage.media.dicom import probe_dicom

        return probe_dicom(path, size=size, limits=limits)
    assert kind.modality == "pdf", kind
    from storage.media.pdf import probe_pdf

    return probe_pdf(path)


def make_thumbnail(
    path: Path, probe: Probe, *, max_side: int = 256, limits: ProbeLimits = DEFAULT_LIMITS
) -> bytes | None:
    """A WebP picture of the file at most max_side pixels on its longer side, shown upright.

    None for modalities without a picture (text, audio, point clouds) and for DICOM compressed
    in a way no installed decoder reads. `probe` is what probe_file returned for this file.
    """
    if probe.modality == "image":
        return image_thumbnail(path, max_side=max_side, limits=limits)
    if probe.modality == "video":
        from storage.media.video import video_thumbnail

        return video_thumbnail(path, probe, max_side=max_side, limits=limits)
    if probe.modality == "pdf":
        from storage.media.pdf import pdf_thumbnail

        return pdf_thumbnail(path, max_side=max_side, limits=limits)
    if probe.modality == "dicom":
        from storage.media.dicom import dicom_thumbnail

        return dicom_thumbnail(path, max_side=max_side, limits=limits)
    return None
