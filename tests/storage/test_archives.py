"""Reading hostile archives: every archive here is built by the test, in tmp_path."""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from storage.archives import ArchiveLimits, ArchiveMember, ArchiveRefused, iter_archive, member_name

LIMITS = ArchiveLimits()
FILES = {"a.txt": b"alpha", "images/cats/1.jpg": b"\xff\xd8" + os.urandom(3000), "images/2.png": b"png" * 100}
TAR_MODES = ["w", "w:gz", "w:bz2", "w:xz"]


def read_all(path: Path, limits: ArchiveLimits = LIMITS) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    for member in iter_archive(path, limits=limits):
        with member.open() as stream:
            contents[member.name] = stream.read()
        assert member.size == len(contents[member.name])
    return contents


def refusal(path: Path, limits: ArchiveLimits = LIMITS) -> tuple[ArchiveRefused, list[str]]:
    """The refusal, and the names yielded before it."""
    yielded: list[str] = []
    with pytest.raises(ArchiveRefused) as caught:
        for member in iter_archive(path, limits=limits):
            yielded.append(member.name)
            with member.open() as stream:
                stream.read()
    return caught.value, yielded


def make_zip(path: Path, files: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:  # type: ignore[call-overload]  # typeshed knows literal modes only
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return path


def tar_entry(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def zip_entry_with_mode(path: Path, name: str, mode: int, data: bytes = b"") -> Path:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the high bits of external_attr are a Unix mode
    info.external_attr = mode << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("first.txt", b"harmless")
        archive.writestr(info, data)
    return path


def patch_zip_headers(path: Path, signature: bytes, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field in every local (PK\\3\\4) or central (PK\\1\\2) header of the zip."""
    data = bytearray(path.read_bytes())
    start = data.find(signature)
    while start != -1:
        struct.pack_into(fmt, data, start + offset, value)
        start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


# --- What comes out -------------------------------------------------------------------------------


def test_a_zip_yields_its_files_with_relative_names_sizes_and_bytes(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "ok.zip", {"images/": b"", "images/cats/": b"", **FILES})

    assert read_all(path) == FILES


@pytest.mark.parametrize("mode", TAR_MODES)
def test_a_tar_yields_its_files_whatever_the_compression(mode: str, tmp_path: Path) -> None:
    folder = tar_entry("images", tarfile.DIRTYPE)
    path = make_tar(tmp_path / "ok.tar", [folder, *FILES.items()], mode)

    assert read_all(path) == FILES


def test_a_tar_is_recognized_by_its_content_not_its_name(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "upload.zip", list(FILES.items()), "w:xz")

    assert read_all(path) == FILES


def test_names_are_normalized_to_relative_posix_paths(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "win.zip", {"folder\\sub\\a.txt": b"1", "./b//c.txt": b"2"})

    assert read_all(path) == {"folder/sub/a.txt": b"1", "b/c.txt": b"2"}


def test_the_first_of_two_members_with_the_same_name_wins(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "dup.zip", {"a.txt": b"first", "./a.txt": b"same name once normalized"})
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr("a.txt", b"same name")
    tar_path = make_tar(tmp_path / "dup.tar", [("a.txt", b"first"), ("a.txt", b"second")])

    assert read_all(zip_path) == {"a.txt": b"first"}
    assert read_all(tar_path) == {"a.txt": b"first"}


def test_a_member_can_be_opened_only_once_and_only_before_the_iterator_moves_on(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "two.tar.gz", [("a", b"1"), ("b", b"2")])
    members = iter_archive(path, limits=LIMITS)
    first: ArchiveMember = next(members)
    first.open().close()

    with pytest.raises(RuntimeError, match="opened twice"):
        first.open()
    next(members)
    with pytest.raises(RuntimeError, match="moved past"):
        first.open()


def test_nothing_is_ever_written_outside_the_test_folder(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    good = make_zip(folder / "good.zip", FILES)
    evil_zip = make_zip(folder / "evil.zip", {"../../evil.txt": b"pwned"})
    evil_tar = make_tar(
        folder / "evil.tar", [tar_entry("link", tarfile.SYMTYPE, "/etc"), ("link/x", b"pwned")]
    )
    before = (sorted(os.listdir(tmp_path.parent)), sorted(os.listdir(tmp_path)), sorted(os.listdir(folder)))

    read_all(good)
    for evil in (evil_zip, evil_tar):
        refusal(evil)

    assert (
        sorted(os.listdir(tmp_path.parent)),
        sorted(os.listdir(tmp_path)),
        sorted(os.listdir(folder)),
    ) == before


# --- Names and kinds that are refused -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "a/../../evil.txt",
        "/abs.txt",
        "..\\evil.txt",
        "ok\\..\\..\\evil",
        "C:\\evil.txt",
        "c:x.txt",
    ],
)
def test_a_zip_with_a_path_trick_is_refused_before_anything_is_yielded(name: str, tmp_path: Path) -> None:
    path = make_zip(tmp_path / "evil.zip", {"first.txt": b"ok", name: b"pwned"})

    refused, yielded = refusal(path)

    assert refused.code == "path_traversal"
    assert yielded == []


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/cron.d/evil", "a/../../evil"])
def test_a_tar_with_a_path_trick_is_refused_before_anything_is_yielded(name: str, tmp_path: Path) -> None:
    path = make_tar(tmp_path / "evil.tar.gz", [("first.txt", b"ok"), (name, b"pwned")])

    refused, yielded = refusal(path)

    assert refused.code == "path_traversal"
    assert yielded == []


@pytest.mark.parametrize(
    "member, code",
    [
        (tar_entry("escape", tarfile.SYMTYPE, "../../../etc/passwd"), "link"),
        (tar_entry("inside", tarfile.SYMTYPE, "first.txt"), "link"),
        (tar_entry("hard", tarfile.LNKTYPE, "first.txt"), "link"),
        (tar_entry("pipe", tarfile.FIFOTYPE), "special_file"),
        (tar_entry("dev/sda", tarfile.BLKTYPE), "special_file"),
        (tar_entry("dev/null", tarfile.CHRTYPE), "special_file"),
    ],
)
def test_a_tar_with_a_link_or_special_file_is_refused_before_anything_is_yielded(
    member: tarfile.TarInfo, code: str, tmp_path: Path
) -> None:
    path = make_tar(tmp_path / "evil.tar", [("first.txt", b"ok"), member], "w")

    refused, yielded = refusal(path)

    assert refused.code == code
    assert yielded == []
    if code == "link":
        assert "whether they point inside the archive or not" in refused.message


@pytest.mark.parametrize(
    "mode, code", [(stat.S_IFLNK | 0o777, "link"), (stat.S_IFIFO | 0o644, "special_file")]
)
def test_a_zip_with_a_link_or_special_file_is_refused(mode: int, code: str, tmp_path: Path) -> None:
    path = zip_entry_with_mode(tmp_path / "evil.zip", "entry", mode, b"/etc/passwd")

    refused, yielded = refusal(path)

    assert refused.code == code
    assert yielded == []


def test_an_encrypted_zip_member_is_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "secret.zip", {"a.txt": b"plain", "b.txt": b"secret"})
    patch_zip_headers(path, b"PK\x01\x02", 8, "<H", 0x1)
    patch_zip_headers(path, b"PK\x03\x04", 6, "<H", 0x1)

    refused, yielded = refusal(path)

    assert refused.code == "encrypted"
    assert yielded == []


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("a/b.txt", "a/b.txt"),
        ("./a//b/./c", "a/b/c"),
        ("a\\b", "a/b"),
        ("dir/", "dir"),
        ("a..b/c..", "a..b/c.."),
    ],
)
def test_member_name_keeps_harmless_names(raw: str, expected: str) -> None:
    assert member_name(raw) == expected


@pytest.mark.parametrize("raw", ["..", "../a", "a/..", "/a", "\\a", "C:/a", "d:a", "a\x00b"])
def test_member_name_refuses_names_that_leave_the_archive(raw: str) -> None:
    with pytest.raises(ArchiveRefused) as caught:
        member_name(raw)

    assert caught.value.code == "path_traversal"


# --- Limits ---------------------------------------------------------------------------------------


def test_a_zip_bomb_is_refused_by_its_compression_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("first.txt", b"ok")
        with archive.open("zeros.bin", "w") as member:
            for _ in range(10):
                member.write(bytes(1024 * 1024))

    refused, yielded = refusal(path)

    assert refused.code == "compression_ratio"
    assert "zeros.bin" in refused.message
    assert yielded == []
    assert path.stat().st_size < 100_000


def test_a_tar_gz_bomb_is_refused_by_its_compression_ratio(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "bomb.tar.gz", [("first.txt", b"ok"), ("zeros.bin", bytes(10 * 1024 * 1024))])

    refused, yielded = refusal(path)

    assert refused.code == "compression_ratio"
    assert yielded == []


def test_small_highly_compressible_files_are_not_bombs(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "blank.zip", {"blank.json": b" " * 100_000})

    assert read_all(path) == {"blank.json": b" " * 100_000}


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize(
    "limits, code",
    [
        (ArchiveLimits(max_entries=4), "too_many_entries"),
        (ArchiveLimits(max_member_bytes=4096), "too_large"),
        (ArchiveLimits(max_total_bytes=10_000), "too_large"),
    ],
    ids=["entries", "member bytes", "total bytes"],
)
def test_an_archive_over_a_limit_is_refused_before_anything_is_yielded(
    kind: str, limits: ArchiveLimits, code: str, tmp_path: Path
) -> None:
    files = {
        "small.txt": b"x",
        **{f"f{i}.bin": os.urandom(3000) for i in range(3)},
        "big.bin": os.urandom(5000),
    }
    if kind == "zip":
        path = make_zip(tmp_path / "limits.zip", files)
    else:  # bzip2: the tar whose first pass costs the most
        path = make_tar(tmp_path / "limits.tar.bz2", [*files.items()], "w:bz2")

    refused, yielded = refusal(path, limits)

    assert refused.code == code
    assert yielded == []


def test_a_zip_member_that_declares_less_than_it_holds_never_delivers_more(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "liar.zip", {"liar.bin": b"A" * 100_000}, method=zipfile.ZIP_STORED)
    patch_zip_headers(path, b"PK\x01\x02", 24, "<I", 10)  # uncompressed size in the central directory
    patch_zip_headers(path, b"PK\x03\x04", 22, "<I", 10)  # and in the local header

    delivered = b""
    with pytest.raises(ArchiveRefused) as caught:
        for member in iter_archive(path, limits=LIMITS):
            with member.open() as stream:
                while chunk := stream.read(1):
                    delivered += chunk

    assert caught.value.code == "corrupt"  # zipfile stops at the declared size; the CRC then fails
    assert len(delivered) <= 10


def test_a_decompressor_delivering_more_than_declared_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile itself never delivers more than declared; a reader with that bug is simulated.
    path = make_zip(tmp_path / "liar.zip", {"liar.bin": b"B" * 100})

    def lying_open(self: zipfile.ZipFile, info: zipfile.ZipInfo, *args: object) -> io.BytesIO:
        return io.BytesIO(b"B" * 1_000_000)

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)

    refused, yielded = refusal(path)

    assert refused.code == "too_large"
    assert "100 bytes" in refused.message
    assert yielded == ["liar.bin"]


# --- Not archives, broken archives ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"just some text\n" * 100, bytes(range(256)) * 16, gzip.compress(b"a gzipped text\n" * 100)],
    ids=["empty", "text", "binary", "gzipped text"],
)
def test_something_that_is_no_archive_is_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(content)

    refused, _ = refusal(path)

    assert refused.code == "not_an_archive"


def test_a_truncated_zip_is_corrupt(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "cut.zip", FILES)
    path.write_bytes(path.read_bytes()[:2000])

    assert refusal(path)[0].code == "corrupt"


@pytest.mark.parametrize("mode", TAR_MODES)
def test_a_truncated_tar_is_corrupt(mode: str, tmp_path: Path) -> None:
    path = make_tar(
        tmp_path / "cut.tar", [("a.bin", os.urandom(50_000)), ("b.bin", os.urandom(50_000))], mode
    )
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert refusal(path)[0].code == "corrupt"


def test_damage_inside_a_tar_gz_is_caught_by_the_gzip_checksum(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "damaged.tar.gz", [("a.bin", os.urandom(50_000))])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    refused, yielded = refusal(path)

    assert refused.code == "corrupt"
    assert yielded == []


def test_overlapping_zip_entries_are_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "overlap.zip", {"a.bin": os.urandom(1000), "b.bin": os.urandom(1000)})
    data = bytearray(path.read_bytes())
    second_central = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    struct.pack_into("<I", data, second_central + 42, 0)  # b.bin's data now starts where a.bin's does
    path.write_bytes(bytes(data))

    refused, yielded = refusal(path)

    assert refused.code == "corrupt"
    assert "overlaps" in refused.message
    assert yielded == []
