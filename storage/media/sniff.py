"""What a file really is, from its first bytes: the name is only a hint.

A .jpg that holds a PNG is a PNG, a .txt full of binary is not text. The file name is used only
where content cannot decide: KITTI point clouds have no header at all (a .bin of float32
records), and text gets its subtype (CSV, JSON…) from the extension.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from storage.media.base import Modality, ProbeError
from storage.media.pointclouds import KITTI_RECORD_BYTES
from storage.media.text import detect_encoding

# Enough for every signature below, a PCD header, a text sample and the first 1024 KITTI points.
HEAD_BYTES = 64 * 1024

# A KITTI-like scan reaches at most a few hundred metres; random bytes read as float32 are
# mostly tiny, huge or NaN. This bound tells the two apart without a header to go by.
_KITTI_MAX_METRES = 10_000.0

_TEXT_TYPES = {
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".srt": "application/x-subrip",
    ".vtt": "text/vtt",
}

_ARCHIVES = (b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"\xfd7zXZ\x00", b"BZh")
# "BM" alone is too weak a signature: the size of the DIB header that follows confirms it.
_BMP_INFO_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AUDIO_MP4_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_PCD_DATA_LINE = re.compile(rb"^DATA[ \t]+(?:ascii|binary|binary_compressed)\s", re.MULTILINE)
_SVG = re.compile(rb"^(?:\s|<\?xml[^>]*>|<!--.*?-->|<!doctype[^>]*>)*<svg[\s>]", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Sniffed:
    modality: Modality
    media_type: str


def sniff(head: bytes, *, filename: str, size: int) -> Sniffed:
    """The modality and media type of a file of `size` bytes that starts with `head`.

    Raises ProbeError("unsupported_type") for what Loupe does not ingest, and ("unsafe") for
    formats whose readers run programs (PostScript) or whose content runs in a browser (SVG).
    """
    if size == 0:
        raise ProbeError("unsupported_type", "The file is empty.")
    extension = PurePath(filename).suffix.lower()
    found = _by_signature(head, extension)
    if found is not None:
        return found
    if _is_pcd_header(head):
        return Sniffed("pointcloud", "application/x-pcd")
    if extension == ".bin" and _looks_like_kitti_scan(head):
        if size % KITTI_RECORD_BYTES:
            raise ProbeError(
                "corrupt",
                f"A KITTI .bin holds 16-byte float32 (x, y, z, reflectance) records; {size:,} bytes "
                "is not a whole number of them.",
            )
        return Sniffed("pointcloud", "application/x-kitti-velodyne")
    if detect_encoding(head, complete=size <= len(head)) is not None:
        if _SVG.match(head[:4096].lstrip(b"\xef\xbb\xbf")):
            raise ProbeError("unsafe", "SVG files can carry scripts; convert the drawing to PNG first.")
        # Never a type a browser would run (HTML, SVG, XML, JavaScript): text items are shown.
        return Sniffed("text", _TEXT_TYPES.get(extension, "text/plain"))
    raise ProbeError("unsupported_type", "The file is not in a format Loupe can read.")


def _by_signature(head: bytes, extension: str) -> Sniffed | None:
    """The formats that announce themselves in their first bytes."""
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "image/png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image", "image/gif")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Sniffed("image", "image/tiff")
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_INFO_HEADER_SIZES:
        return Sniffed("image", "image/bmp")
    if head[:4] == b"RIFF":
        return _riff(head[8:12])
    if head[4:8] == b"ftyp":
        return _iso_media(head[8:12])
    if head[128:132] == b"DICM":
        return Sniffed("dicom", "application/dicom")
    # Readers accept a PDF header anywhere in the first KiB, but text that merely mentions it
    # must stay text: past offset 0, the name has to agree.
    if head.startswith(b"%PDF-") or (extension == ".pdf" and b"%PDF-" in head[:1024]):
        return Sniffed("pdf", "application/pdf")
    if head[:4] == b"LASF":
        # Bits 6-7 of the point format id mark LAZ-compressed points (LAStools' convention).
        compressed = len(head) > 104 and head[104] & 0xC0
        return Sniffed("pointcloud", "application/vnd.laszip" if compressed else "application/vnd.las")
    if head.startswith(b"fLaC"):
        return Sniffed("audio", "audio/flac")
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return Sniffed("audio", "audio/aiff")
    if head.startswith(b"OggS"):
        if b"\x80theora" in head[:4096]:
            return Sniffed("video", "video/ogg")
        return Sniffed("audio", "audio/ogg")
    if head.startswith(b"ID3") or _is_mpeg_audio_frame(head):
        return Sniffed("audio", "audio/mpeg")
    if _is_adts_frame(head):
        return Sniffed("audio", "audio/aac")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", "video/webm" if b"webm" in head[:4096] else "video/x-matroska")
    if head.startswith(b"FLV\x01"):
        return Sniffed("video", "video/x-flv")
    if head.startswith(b"\x00\x00\x01\xba"):
        return Sniffed("video", "video/mpeg")
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return Sniffed("video", "video/mp2t")  # MPEG-TS: a sync byte every 188-byte packet
    if head.startswith(b"0&\xb2u\x8ef\xcf\x11"):
        return Sniffed("video", "video/x-ms-asf")
    _refuse_known_unsupported(head)
    return None


def _riff(kind: bytes) -> Sniffed:
    if kind == b"WAVE":
        return Sniffed("audio", "audio/wav")
    if kind == b"WEBP":
        return Sniffed("image", "image/webp")
    if kind == b"AVI ":
        return Sniffed("video", "video/x-msvideo")
    raise ProbeError("unsupported_type", "The file is a RIFF container of a kind Loupe does not read.")


def _iso_media(brand: bytes) -> Sniffed:
    """ISO base media files (MP4, QuickTime, AVIF, HEIF…) tell their kind by the major brand."""
    if brand in (b"avif", b"avis"):
        return Sniffed("image", "image/avif")
    if brand in _HEIF_BRANDS:
        raise ProbeError("unsupported_type", "HEIF/HEIC images are not supported; convert them to JPEG.")
    if brand in _AUDIO_MP4_BRANDS:
        return Sniffed("audio", "audio/mp4")
    if brand == b"qt  ":
        return Sniffed("video", "video/quicktime")
    if brand.startswith(b"3g"):
        return Sniffed("video", "video/3gpp")
    return Sniffed("video", "video/mp4")


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """An MP3 without an ID3 tag starts with a frame header: 11 sync bits and valid fields."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 0b11, (head[1] >> 1) & 0b11
    bitrate, sample_rate = head[2] >> 4, (head[2] >> 2) & 0b11
    return version != 0b01 and layer != 0b00 and bitrate not in (0b0000, 0b1111) and sample_rate != 0b11


def _is_adts_frame(head: bytes) -> bool:
    # ADTS (raw AAC) shares the sync word but has layer 00, which MPEG audio forbids.
    return len(head) >= 7 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0


def _refuse_known_unsupported(head: bytes) -> None:
    """Name what is recognised but refused, so the reason given is better than "unknown"."""
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        raise ProbeError("unsafe", "PostScript is not opened: rendering it runs an interpreter on the file.")
    if head.startswith(_ARCHIVES):
        raise ProbeError("unsupported_type", "The file is an archive; import it with an archive import.")
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        raise ProbeError("unsupported_type", "JPEG 2000 images are not supported; convert them to PNG.")
    if head.startswith(b"ply\n") or head.startswith(b"ply\r\n"):
        raise ProbeError(
            "unsupported_type", "PLY point clouds are not supported; convert them to PCD or LAS."
        )


def _is_pcd_header(head: bytes) -> bool:
    """A PCD file starts with optional # comments, then VERSION (or, loosely, FIELDS), and has DATA."""
    for raw_line in head[:4096].split(b"\n"):
        line = raw_line.strip()
        if not line or line.startswith(b"#"):
            continue
        return line.startswith((b"VERSION", b"FIELDS")) and _PCD_DATA_LINE.search(head) is not None
    return False


def _looks_like_kitti_scan(head: bytes) -> bool:
    usable = len(head) - len(head) % KITTI_RECORD_BYTES
    if not usable:
        return False
    sample = np.frombuffer(head[:usable], dtype="<f4").reshape(-1, 4)
    return bool(np.isfinite(sample).all() and (np.abs(sample[:, :3]) <= _KITTI_MAX_METRES).all())
