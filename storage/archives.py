"""Reading uploaded zip and tar archives without trusting them.

An archive is a list of names and sizes written by whoever made it. Nothing here extracts to disk:
each regular file comes out as a stream, so no path on our disk is ever derived from a name in
the archive, and ``../`` or a symlink cannot place a file anywhere. Names still become item names,
so they are checked anyway, together with everything else an archive can do to hurt the reader:

- path tricks (absolute paths, ``..``, drive letters, backslash separators): ``path_traversal``;
- symbolic and hard links, wherever they point: ``link``; devices, fifos: ``special_file``;
- too many entries, too many bytes, bombs (a member or the whole archive expanding more than
  ``max_ratio`` times its compressed size): ``too_many_entries``, ``too_large``,
  ``compression_ratio``;
- encrypted zip members, which we could not read: ``encrypted``;
- anything else a parser chokes on: ``not_an_archive`` (not a zip or tar at all) or ``corrupt``.

All of these are judged from the headers before the first member is yielded: for zip from the
central directory, for tar from a first pass over the headers (for a compressed tar this pass
decompresses the archive once, stopping at the first header over a limit). Then, while the
members are read, no member may deliver more bytes than its header declared: the declared sizes
passed every check, so capping the actual bytes at them keeps every limit true of what is read.

Where a Python tarfile extraction filter (``data_filter``) would refuse a member, so do we: we
refuse every link and every special file, which is stricter. Duplicate names: the first member of
a name is kept, later ones are skipped unread (yielding one of two same-named members keeps every
consumer seeing the same bytes; note that ``tar -x`` would keep the last).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Literal

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

ArchiveRefusedCode = Literal[
    "path_traversal",
    "link",
    "special_file",
    "too_many_entries",
    "too_large",
    "compression_ratio",
    "not_an_archive",
    "corrupt",
    "encrypted",
]

MiB = 1024**2
GiB = 1024**3
_CHUNK = 64 * 1024
# tar pads the end of an archive with zeros to a whole record (10 KiB by default); anything much
# longer after the end marker is not padding, and inside a compressed tar it could be a bomb.
_MAX_TAR_TRAILER = 1 * MiB
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_ZIP_ENCRYPTED_FLAG = 0x1
_ZIP_LOCAL_HEADER_SIZE = 30  # without the name and extra field: the least a local header takes
_DECOMPRESSORS: dict[bytes, Callable[[Path], io.BufferedIOBase]] = {
    b"\x1f\x8b": gzip.GzipFile,
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ\x00": lzma.LZMAFile,
}
_DRIVE = re.compile(r"[A-Za-z]:")
# What the decompressors and parsers raise on damaged data; bz2 and gzip use plain OSError.
_DAMAGE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


class ArchiveRefused(Exception):
    """The archive is refused; ``code`` is stable and machine-readable."""

    def __init__(self, code: ArchiveRefusedCode, message: str) -> None:
        super().__init__(message)
        self.code: ArchiveRefusedCode = code
        self.message = message


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 100_000
    max_total_bytes: int = 20 * GiB
    max_member_bytes: int = 5 * GiB
    # Uncompressed bytes per compressed byte, for each zip member and for the whole archive.
    max_ratio: float = 200
    # Smaller members and archives are not held to max_ratio: a few kilobytes of zeros compress
    # a thousandfold and harm nobody.
    ratio_min_bytes: int = 1 * MiB


@dataclass(frozen=True)
class ArchiveMember:
    """A regular file in the archive.

    ``open()`` must be called, and the stream read, before the iterator moves to the next member:
    a compressed tar is read in one pass and cannot go back.
    """

    name: str  # relative POSIX path, e.g. "images/cat.jpg"
    size: int  # as declared by the archive; the stream refuses to deliver more
    opener: Callable[[], BinaryIO] = field(repr=False, compare=False)

    def open(self) -> BinaryIO:
        return self.opener()


def iter_archive(path: Path, *, limits: ArchiveLimits) -> Iterator[ArchiveMember]:
    """Each regular file in the zip or tar (plain, gz, bz2, xz) archive at ``path``, in order.

    Directories are skipped. Raises ArchiveRefused, before yielding the first member when the
    headers show the problem, or from a member's stream when its data does.
    """
    if _is_zip(path):
        yield from _iter_zip(path, limits)
    else:
        yield from _iter_tar(path, limits)


def member_name(raw: str) -> str:
    """``raw`` as a relative POSIX path without empty or ``.`` parts, or ArchiveRefused.

    Backslashes count as separators, as they do for the Windows tools that write them, so
    ``..\\evil`` is caught as ``..``. Hostile names are refused rather than repaired: quietly
    turning ``/etc/passwd`` into ``etc/passwd`` would hide that the archive tried something.
    """
    if "\x00" in raw:
        raise ArchiveRefused("path_traversal", f"{raw!r} contains a NUL character")
    path = raw.replace("\\", "/")
    if path.startswith("/") or _DRIVE.match(path):
        raise ArchiveRefused("path_traversal", f"{raw!r} is an absolute path")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefused("path_traversal", f"{raw!r} climbs out of the archive with '..'")
    return "/".join(parts)


def _is_zip(path: Path) -> bool:
    with path.open("rb") as file:
        head = file.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return True
    if head.startswith(tuple(_DECOMPRESSORS)) or head[257:262] == b"ustar":
        return False
    # Zips with something in front (self-extracting archives) are found from the end.
    return zipfile.is_zipfile(path)


class _Tally:
    """What the headers have declared so far, held to the limits one header at a time."""

    def __init__(self, archive_size: int, limits: ArchiveLimits) -> None:
        self._archive_size = archive_size
        self._limits = limits
        self._entries = 0
        self._total = 0
        self._names: set[str] = set()

    def entry(self) -> None:
        self._entries += 1
        if self._entries > self._limits.max_entries:
            raise ArchiveRefused(
                "too_many_entries", f"the archive has more than {self._limits.max_entries} entries"
            )

    def file(self, name: str, size: int, compressed_size: int | None) -> bool:
        """Count a regular file; False when an earlier member had the same name (skip this one)."""
        limits = self._limits
        if size > limits.max_member_bytes:
            raise ArchiveRefused(
                "too_large", f"{name} declares {size} bytes; the limit is {limits.max_member_bytes}"
            )
        if compressed_size is not None:
            _check_ratio(f"{name}", size, compressed_size, limits)
        self._total += size
        if self._total > limits.max_total_bytes:
            raise ArchiveRefused(
                "too_large", f"the archive declares more than {limits.max_total_bytes} bytes in total"
            )
        _check_ratio("the archive", self._total, self._archive_size, limits)
        if name in self._names:
            return False
        self._names.add(name)
        return True


def _check_ratio(what: str, size: int, compressed_size: int, limits: ArchiveLimits) -> None:
    if size > limits.ratio_min_bytes and size > limits.max_ratio * max(compressed_size, 1):
        raise ArchiveRefused(
            "compression_ratio",
            f"{what} expands {size} bytes from {compressed_size}, more than {limits.max_ratio} times",
        )


class _Cursor:
    """Which member the iterator is at: a member can be opened once, and read, only while current."""

    def __init__(self) -> None:
        self.position = -1
        self._opened = -1

    def claim(self, position: int, name: str) -> None:
        self.check(position, name)
        if self._opened == position:
            raise RuntimeError(f"{name} was opened twice")
        self._opened = position

    def check(self, position: int, name: str) -> None:
        if position != self.position:
            raise RuntimeError(f"{name} was opened or read after the archive iterator moved past it")


class _MemberStream(io.RawIOBase):
    """A member's bytes, refused as ``too_large`` past the size its header declared."""

    def __init__(self, raw: IO[bytes], name: str, declared: int, cursor: _Cursor, position: int) -> None:
        self._raw = raw
        self._name = name
        self._declared = declared
        self._cursor = cursor
        self._position = position
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._cursor.check(self._position, self._name)
        view = memoryview(buffer).cast("B")
        try:
            data = self._raw.read(len(view))
        except _DAMAGE as exc:
            raise ArchiveRefused("corrupt", f"{self._name} cannot be read: {exc}") from exc
        self._read += len(data)
        if self._read > self._declared:
            raise ArchiveRefused(
                "too_large", f"{self._name} delivers more than the {self._declared} bytes it declares"
            )
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_member(
    read: Callable[[], IO[bytes] | None], name: str, declared: int, cursor: _Cursor, position: int
) -> BinaryIO:
    cursor.claim(position, name)
    try:
        raw = read()
    except _DAMAGE as exc:
        raise ArchiveRefused("corrupt", f"{name} cannot be read: {exc}") from exc
    if raw is None:  # tarfile's answer for links and special files, refused long before
        raise ArchiveRefused("corrupt", f"{name} has no data")
    return io.BufferedReader(_MemberStream(raw, name, declared, cursor, position))


# --- zip ------------------------------------------------------------------------------------------


def _iter_zip(path: Path, limits: ArchiveLimits) -> Iterator[ArchiveMember]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        # It starts like a zip (or has a zip's end record), so the damage is in the rest.
        raise ArchiveRefused("corrupt", f"the zip archive cannot be read: {exc}") from exc
    with archive:
        members = _checked_zip_members(archive, path.stat().st_size, limits)
        cursor = _Cursor()
        for position, (info, name) in enumerate(members):
            cursor.position = position
            opener = partial(
                _open_member, partial(archive.open, info), name, info.file_size, cursor, position
            )
            yield ArchiveMember(name=name, size=info.file_size, opener=opener)
        cursor.position = -1


def _checked_zip_members(
    archive: zipfile.ZipFile, archive_size: int, limits: ArchiveLimits
) -> list[tuple[zipfile.ZipInfo, str]]:
    """The regular files to yield, with their names, after checking every entry."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise ArchiveRefused("too_many_entries", f"the archive has more than {limits.max_entries} entries")
    _check_zip_layout(infos, archive.start_dir)
    tally = _Tally(archive_size, limits)
    members: list[tuple[zipfile.ZipInfo, str]] = []
    for info in infos:
        tally.entry()
        name = member_name(info.filename)
        if info.flag_bits & _ZIP_ENCRYPTED_FLAG:
            raise ArchiveRefused("encrypted", f"{info.filename} is encrypted")
        if not _zip_entry_is_file(info, name):
            continue
        if info.compress_type not in _ZIP_METHODS:
            raise ArchiveRefused(
                "corrupt", f"{name} uses compression method {info.compress_type}, which is not supported"
            )
        if tally.file(name, info.file_size, info.compress_size):
            members.append((info, name))
    return members


def _check_zip_layout(infos: list[zipfile.ZipInfo], central_directory_start: int) -> None:
    """Refuse entries whose data overlap: valid zips never do, "non-recursive" zip bombs must.

    Python checks this itself only from 3.11.8 / 3.12.2 (CVE-2024-0450).
    """
    ordered = sorted(infos, key=lambda info: info.header_offset)
    ends = [info.header_offset for info in ordered[1:]] + [central_directory_start]
    for info, end in zip(ordered, ends, strict=True):
        if info.header_offset + _ZIP_LOCAL_HEADER_SIZE + info.compress_size > end:
            raise ArchiveRefused("corrupt", f"{info.filename} overlaps the next entry in the archive")


def _zip_entry_is_file(info: zipfile.ZipInfo, name: str) -> bool:
    """True for a regular file, False for a directory; links and special files are refused."""
    # The high 16 bits carry a Unix mode when the zip was made on Unix; zero means "no idea".
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise ArchiveRefused(
            "link", f"{name} is a symbolic link: links are refused, whether they point inside or not"
        )
    if info.is_dir() or kind == stat.S_IFDIR:
        return False
    if kind not in (0, stat.S_IFREG):
        raise ArchiveRefused("special_file", f"{name} is not a regular file (mode {kind:o})")
    if not name:
        raise ArchiveRefused("path_traversal", f"{info.filename!r} names no file")
    return True


# --- tar ------------------------------------------------------------------------------------------

_TAR_KINDS = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}


def _iter_tar(path: Path, limits: ArchiveLimits) -> Iterator[ArchiveMember]:
    archive_size = path.stat().st_size
    _check_tar_headers(path, archive_size, limits)
    # The reading pass streams ("r|"), so a compressed tar is decompressed once more, front to
    # back, and never rewound. It checks every header again rather than trust the first pass.
    with _open_tar(path, "r|*") as archive:
        tally = _Tally(archive_size, limits)
        cursor = _Cursor()
        for position, info in enumerate(_tar_headers(archive)):
            cursor.position = position
            name = _tar_file_name(info, tally)
            if name is not None:
                opener = partial(
                    _open_member, partial(archive.extractfile, info), name, info.size, cursor, position
                )
                yield ArchiveMember(name=name, size=info.size, opener=opener)
        cursor.position = -1


def _check_tar_headers(path: Path, archive_size: int, limits: ArchiveLimits) -> None:
    """The first pass: every header checked, stopping at the first one over a limit."""
    with _open_tar(path, "r:*") as archive:
        tally = _Tally(archive_size, limits)
        for info in _tar_headers(archive):
            _tar_file_name(info, tally)
        _check_tar_trailer(archive)


def _open_tar(path: Path, mode: Literal["r:*", "r|*"]) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode)
    except _DAMAGE as exc:
        if mode == "r:*" and not _is_broken_compressed_stream(path):
            raise ArchiveRefused("not_an_archive", "the file is neither a zip nor a tar archive") from exc
        raise ArchiveRefused("corrupt", f"the tar archive cannot be read: {exc}") from exc


def _is_broken_compressed_stream(path: Path) -> bool:
    """Whether ``path`` starts like gzip, bzip2 or xz but its stream breaks off or is damaged.

    tarfile says only "could not be opened" for both a cut-off .tar.bz2 and a .gz of some text;
    the first is a corrupt archive, the second no archive at all.
    """
    with path.open("rb") as file:
        head = file.read(6)
    for magic, decompress in _DECOMPRESSORS.items():
        if head.startswith(magic):
            try:
                with decompress(path) as stream:
                    stream.read(tarfile.BLOCKSIZE)
            except _DAMAGE:
                return True
    return False


def _check_tar_trailer(archive: tarfile.TarFile) -> None:
    """Read what follows the end of the archive: padding, and the checksum of gzip and xz.

    tarfile stops at the end-of-archive block and never reaches the compressed stream's
    checksum, so damage inside a .tar.gz would go unnoticed; reading to the end checks it.
    """
    assert archive.fileobj is not None  # set for every archive opened from a path
    trailer = 0
    try:
        while chunk := archive.fileobj.read(_CHUNK):
            trailer += len(chunk)
            if trailer > _MAX_TAR_TRAILER:
                raise ArchiveRefused(
                    "corrupt", f"more than {_MAX_TAR_TRAILER} bytes follow the end of the tar archive"
                )
    except _DAMAGE as exc:
        raise ArchiveRefused("corrupt", f"the tar archive cannot be read: {exc}") from exc


def _tar_headers(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            info = archive.next()
        except _DAMAGE as exc:
            raise ArchiveRefused("corrupt", f"the tar archive cannot be read: {exc}") from exc
        if info is None:
            return
        yield info


def _tar_file_name(info: tarfile.TarInfo, tally: _Tally) -> str | None:
    """The name to yield a regular file under; None for directories and repeated names."""
    tally.entry()
    name = member_name(info.name)
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        raise ArchiveRefused(
            "link",
            f"{name} is a {kind} link to {info.linkname!r}: links are refused, "
            "whether they point inside the archive or not",
        )
    if info.isdir():
        return None
    if not info.isreg():
        kind = _TAR_KINDS.get(info.type, f"member of type {info.type!r}")
        raise ArchiveRefused("special_file", f"{name} is a {kind}, not a regular file")
    if not name:
        raise ArchiveRefused("path_traversal", f"{info.name!r} names no file")
    return name if tally.file(name, info.size, None) else None
