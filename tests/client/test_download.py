"""The client's download engine against real HTTP servers: a local one that cuts connections,
ignores Range or lets links expire on cue, and SeaweedFS's presigned S3 URLs."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loupe_client import download
from loupe_client.download import (
    ManyResult,
    Remote,
    download_file,
    download_many,
    extract_zip,
    safe_join,
)
from loupe_client.errors import ArchiveRefused, ChecksumMismatch, DownloadError, LinkExpired, UnsafePath
from tests.client.storage_server import Storage, sha, storage_server
from tests.s3 import S3Endpoint


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def storage() -> Iterator[Storage]:
    with storage_server() as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as opened:
        yield opened


def pull_many(storage: Storage, root: Path, workers: int = 4) -> ManyResult:
    return download_many(
        storage.links,
        root / "media",
        parts=root / ".loupe" / "media",
        session=requests.Session,
        workers=workers,
    )


# --- one file ------------------------------------------------------------------------------------


def test_it_downloads_a_file_and_verifies_it(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    data = payload(300_000)
    remote = storage.add("export.json", data)
    counted: list[int] = []

    dest = download_file(
        session,
        remote.url,
        tmp_path / "export.json",
        sha256=remote.sha256,
        size=remote.size,
        progress=counted.append,
    )

    assert dest.read_bytes() == data
    assert sum(counted) == len(data)
    assert not (tmp_path / "export.json.part").exists()


def test_a_cut_connection_resumes_with_range_from_the_byte_it_reached(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    data = payload(2_000_000, seed=1)
    remote = storage.add("coco.json", data)
    storage.cuts["coco.json"] = [700_000, 300_000]  # two cuts, then the rest

    dest = download_file(session, remote.url, tmp_path / "coco.json", sha256=remote.sha256, size=remote.size)

    assert dest.read_bytes() == data
    ranges = [asked for _, asked, _ in storage.requests]
    assert ranges[0] is None and len(ranges) == 3
    first, second = (int(asked.removeprefix("bytes=").rstrip("-")) for asked in ranges[1:] if asked)
    # Each attempt starts where the previous one stopped (at least what was cut, never from 0).
    assert 0 < first <= 700_000 < second <= 1_000_000
    assert [status for *_, status in storage.requests] == [200, 206, 206]


def test_a_part_file_left_by_an_earlier_run_is_resumed(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    data = payload(500_000, seed=2)
    remote = storage.add("labels.zip", data)
    part = tmp_path / ".loupe" / "labels.zip.part"
    part.parent.mkdir()
    part.write_bytes(data[:123_456])  # what an interrupted pull left behind

    dest = download_file(
        session, remote.url, tmp_path / "labels.zip", sha256=remote.sha256, size=remote.size, part=part
    )

    assert dest.read_bytes() == data and not part.exists()
    assert storage.requests == [("labels.zip", "bytes=123456-", 206)]


def test_a_server_that_ignores_range_gets_the_file_from_the_start(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    data = payload(200_000, seed=3)
    remote = storage.add("a.jsonl", data)
    storage.ignore_range = True
    part = tmp_path / "a.jsonl.part"
    part.write_bytes(data[:50_000])

    dest = download_file(session, remote.url, tmp_path / "a.jsonl", sha256=remote.sha256, size=remote.size)

    assert dest.read_bytes() == data  # not the first 50 kB twice
    assert storage.requests == [("a.jsonl", "bytes=50000-", 200)]


def test_a_complete_part_is_verified_without_downloading(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    data = payload(10_000, seed=4)
    remote = storage.add("b.json", data)
    (tmp_path / "b.json.part").write_bytes(data)

    download_file(session, remote.url, tmp_path / "b.json", sha256=remote.sha256, size=remote.size)

    assert (tmp_path / "b.json").read_bytes() == data and storage.requests == []


def test_a_corrupted_part_file_is_detected_and_not_left_in_place(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    data = payload(400_000, seed=5)
    remote = storage.add("coco.json", data)
    part = tmp_path / "coco.json.part"
    corrupted = bytearray(data[:200_000])
    corrupted[1000] ^= 0xFF  # one flipped bit in what the earlier run wrote
    part.write_bytes(bytes(corrupted))
    dest = tmp_path / "coco.json"

    with pytest.raises(ChecksumMismatch) as raised:
        download_file(session, remote.url, dest, sha256=remote.sha256, size=remote.size)

    assert raised.value.path == str(dest) and "coco.json" in str(raised.value)
    assert raised.value.expected == remote.sha256 != raised.value.actual
    assert not dest.exists() and not part.exists()
    # The next attempt starts clean and succeeds.
    download_file(session, remote.url, dest, sha256=remote.sha256, size=remote.size)
    assert dest.read_bytes() == data


def test_bytes_that_do_not_match_the_announced_sha256_are_refused(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    remote = storage.add("x.json", b'{"images": []}')
    dest = tmp_path / "x.json"
    dest.write_bytes(b"an older file")

    with pytest.raises(ChecksumMismatch, match=re.escape("x.json")):
        download_file(session, remote.url, dest, sha256=sha(b"something else"), size=remote.size)

    assert not dest.exists() and not (tmp_path / "x.json.part").exists()


def test_an_expired_link_is_refreshed_and_the_download_resumes(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    data = payload(600_000, seed=6)
    remote = storage.add("yolo.zip", data)
    storage.cuts["yolo.zip"] = [250_000]
    storage.expire_after = 1  # the link dies after its first use, like a short-lived presigned URL
    fresh: list[str] = []

    def refresh() -> str:
        fresh.append(storage.link("yolo.zip", generation=len(fresh) + 10))
        return fresh[-1]

    dest = download_file(
        session, remote.url, tmp_path / "yolo.zip", sha256=remote.sha256, size=remote.size, refresh=refresh
    )

    assert dest.read_bytes() == data and len(fresh) == 1
    assert [status for *_, status in storage.requests] == [200, 403, 206]
    assert storage.requests[-1][1] is not None and storage.requests[-1][1].startswith("bytes=")


def test_a_refused_link_without_a_way_to_refresh_it_is_an_error(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    remote = storage.add("c.json", b"{}")
    storage.always_refused.add("c.json")

    with pytest.raises(LinkExpired, match=re.escape("c.json")):
        download_file(session, remote.url, tmp_path / "c.json", sha256=remote.sha256, size=2)


def test_fresh_links_that_are_refused_too_end_in_an_error(
    storage: Storage, session: requests.Session, tmp_path: Path
) -> None:
    remote = storage.add("e.json", b"{}")
    storage.always_refused.add("e.json")
    refreshed: list[str] = []

    def refresh() -> str:
        refreshed.append(remote.url)
        return remote.url

    with pytest.raises(LinkExpired, match=re.escape("e.json")):
        download_file(session, remote.url, tmp_path / "e.json", sha256=remote.sha256, size=2, refresh=refresh)

    assert len(refreshed) == 3 and len(storage.requests) == 4  # then it stops asking


def test_a_connection_that_keeps_dropping_without_progress_gives_up(
    storage: Storage, session: requests.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("loupe_client.download.BACKOFF_S", 0.01)
    data = payload(100_000, seed=7)
    remote = storage.add("d.json", data)
    storage.cuts["d.json"] = [10_000] + [0] * 10

    with pytest.raises(DownloadError, match=re.escape("d.json")):
        download_file(
            session, remote.url, tmp_path / "d.json", sha256=remote.sha256, size=len(data), attempts=3
        )

    assert len(storage.requests) == 4  # the first cut made progress; then three attempts with none
    assert (tmp_path / "d.json.part").stat().st_size == 10_000  # kept for the next run


# --- many files ------------------------------------------------------------------------------------


def test_media_files_download_in_parallel_into_their_relative_names(storage: Storage, tmp_path: Path) -> None:
    files = {f"cams/{i // 10}/frame-{i:03d}.jpg": payload(20_000 + i, seed=i) for i in range(40)}
    for name, data in files.items():
        storage.add(name, data)
    storage.delay_s = 0.05

    result = pull_many(storage, tmp_path, workers=8)

    assert {str(path.relative_to(tmp_path / "media")) for path in result.downloaded} == set(files)
    for name, data in files.items():
        assert (tmp_path / "media" / name).read_bytes() == data
    assert storage.max_active >= 4  # really in parallel
    assert result.rounds == 1 and not list((tmp_path / ".loupe").rglob("*.part"))


def test_present_files_are_skipped_and_partial_ones_resumed(storage: Storage, tmp_path: Path) -> None:
    files = {f"img/{i}.png": payload(50_000, seed=100 + i) for i in range(6)}
    for name, data in files.items():
        storage.add(name, data)
    media, parts = tmp_path / "media", tmp_path / ".loupe" / "media"
    (media / "img").mkdir(parents=True)
    (parts / "img").mkdir(parents=True)
    (media / "img/0.png").write_bytes(files["img/0.png"])  # done by an earlier pull
    (media / "img/1.png").write_bytes(b"stale bytes")  # wrong: fetched again
    (parts / "img/2.png.part").write_bytes(files["img/2.png"][:20_000])  # interrupted

    result = pull_many(storage, tmp_path)

    assert [p.name for p in result.present] == ["0.png"]
    assert sorted(p.name for p in result.downloaded) == [f"{i}.png" for i in range(1, 6)]
    for name, data in files.items():
        assert (media / name).read_bytes() == data
    asked = {name: rng for name, rng, _ in storage.requests}
    assert "img/0.png" not in asked and asked["img/2.png"] == "bytes=20000-" and asked["img/1.png"] is None


def test_expired_links_are_listed_again_for_what_remains(storage: Storage, tmp_path: Path) -> None:
    files = {f"f{i:02d}.bin": payload(30_000, seed=200 + i) for i in range(30)}
    for name, data in files.items():
        storage.add(name, data)
    storage.expire_after = 7  # each listing's links serve 7 requests, then are refused
    storage.cuts["f03.bin"] = [10_000]  # and one transfer is cut halfway

    result = pull_many(storage, tmp_path, workers=4)

    for name, data in files.items():
        assert (tmp_path / "media" / name).read_bytes() == data
    assert result.rounds >= 4 and len(result.downloaded) == 30
    first, *again = storage.listings
    assert first is None
    # Each later listing asks only for what was still missing, and less each time.
    sizes = [len(names) for names in again if names is not None]
    assert len(sizes) == len(again) and sizes == sorted(sizes, reverse=True) and sizes[0] < 30
    # No file was downloaded in full twice.
    full = [name for name, asked, status in storage.requests if status == 200]
    assert len(full) == len(set(full))


def test_a_link_refused_every_time_fails_naming_the_file(storage: Storage, tmp_path: Path) -> None:
    for i in range(12):
        storage.add(f"ok-{i}.jpg", payload(5_000, seed=300 + i))
    storage.add("broken.jpg", b"never served")
    storage.always_refused.add("broken.jpg")

    with pytest.raises(LinkExpired, match=re.escape("broken.jpg")):
        pull_many(storage, tmp_path, workers=3)

    assert len(list((tmp_path / "media").glob("ok-*.jpg"))) == 12  # the rest is there
    assert not (tmp_path / "media" / "broken.jpg").exists()
    assert len(storage.listings) <= 5  # a few listings, not one per file


def test_a_media_file_with_wrong_bytes_is_an_error_naming_it(storage: Storage, tmp_path: Path) -> None:
    for i in range(8):
        storage.add(f"good-{i}.jpg", payload(8_000, seed=400 + i))
    storage.add("bad.jpg", payload(8_000, seed=499))
    real = storage.links

    def lying_listing(names: set[str] | None) -> Iterator[Remote]:
        for remote in real(names):
            yield Remote(
                remote.name,
                remote.url,
                sha(b"other") if remote.name == "bad.jpg" else remote.sha256,
                remote.size,
            )

    with pytest.raises(ChecksumMismatch, match=re.escape("bad.jpg")):
        download_many(lying_listing, tmp_path / "media", parts=tmp_path / "parts", session=requests.Session)

    assert not (tmp_path / "media" / "bad.jpg").exists()
    assert not (tmp_path / "parts" / "bad.jpg.part").exists()


@pytest.mark.parametrize(
    "name", ["../escape.jpg", "/etc/passwd", "a/../../b.jpg", "C:/x.jpg", "a\\..\\b", ""]
)
def test_media_names_that_leave_the_folder_are_refused_before_any_download(
    storage: Storage, tmp_path: Path, name: str
) -> None:
    storage.add("fine.jpg", b"fine")
    storage.add(name, b"evil")

    with pytest.raises(UnsafePath):
        pull_many(storage, tmp_path)

    assert storage.requests == []
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "media" / "fine.jpg").exists()


def test_a_symlinked_folder_inside_the_output_cannot_lead_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "media").mkdir()
    os.symlink(outside, tmp_path / "media" / "cams")

    with pytest.raises(UnsafePath):
        safe_join(tmp_path / "media", "cams/x.jpg")
    assert safe_join(tmp_path / "media", "./cams2//x.jpg") == tmp_path / "media" / "cams2" / "x.jpg"


# --- archives ------------------------------------------------------------------------------------


def zip_of(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0
            bundle.writestr(info, target)
    return buffer.getvalue()


def test_a_zip_export_is_extracted_with_its_folders(tmp_path: Path) -> None:
    archive = tmp_path / "yolo.zip"
    archive.write_bytes(
        zip_of({"data.yaml": b"names: [car]\n", "labels/train/a.txt": b"0 0.5 0.5 0.1 0.1\n", "images/": b""})
    )

    written = extract_zip(archive, tmp_path / "out")

    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
        "data.yaml",
        "labels/train/a.txt",
    ]
    assert (tmp_path / "out/labels/train/a.txt").read_bytes() == b"0 0.5 0.5 0.1 0.1\n"
    assert (tmp_path / "out/images").is_dir()


@pytest.mark.parametrize(
    ("members", "links"),
    [
        ({"ok.txt": b"1", "../../evil.txt": b"x"}, None),
        ({"ok.txt": b"1", "/srv/evil.txt": b"x"}, None),
        ({"ok.txt": b"1"}, {"labels": "/etc"}),
    ],
    ids=["traversal", "absolute", "symlink"],
)
def test_a_hostile_zip_is_refused_before_anything_is_written(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None
) -> None:
    archive = tmp_path / "export.zip"
    archive.write_bytes(zip_of(members, links))
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)

    with pytest.raises(UnsafePath):
        extract_zip(archive, out)

    assert list(out.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    archive.write_bytes(zip_of({"data.yaml": b"names: [car]\n", "labels.json": bytes(16 << 20)}))
    assert archive.stat().st_size < 100_000  # 16 MiB of zeros packs about 1,000 to 1
    out = tmp_path / "out"

    with pytest.raises(ArchiveRefused, match=r"labels\.json"):
        extract_zip(archive, out)

    assert not out.exists()


def test_an_export_as_compressible_as_real_ones_is_unpacked(tmp_path: Path) -> None:
    rows = b"".join(
        b'{"id": %d, "image_id": %d, "category_id": 1, "iscrowd": 0},' % (n, n) for n in range(40_000)
    )
    archive = tmp_path / "export.zip"
    archive.write_bytes(zip_of({"annotations.json": rows}))

    written = extract_zip(archive, tmp_path / "out")

    assert [p.read_bytes() for p in written] == [rows]


def test_an_archive_larger_than_the_free_disk_space_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    archive = tmp_path / "export.zip"
    archive.write_bytes(zip_of({"images/a.jpg": os.urandom(200_000)}))
    real = shutil.disk_usage(tmp_path)
    # The disk as it would be with 100 kB to spare beyond the margin kept free.
    tight = real._replace(free=download.SPACE_MARGIN_BYTES + 100_000)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: tight)

    with pytest.raises(ArchiveRefused, match="200,000 bytes"):
        extract_zip(archive, tmp_path / "out" / "deeper")

    assert not (tmp_path / "out").exists()


# --- S3 presigned URLs (SeaweedFS) -----------------------------------------------------------------


@pytest.fixture
def bucket(seaweedfs: S3Endpoint) -> tuple[object, str]:
    client = seaweedfs.client()
    name = f"pull-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return client, name


def test_a_presigned_s3_download_resumes_with_range_and_survives_expiry(
    bucket: tuple[object, str], session: requests.Session, tmp_path: Path
) -> None:
    client, name = bucket
    data = payload(3_000_000, seed=8)
    client.put_object(Bucket=name, Key="exports/coco.json", Body=data)  # type: ignore[attr-defined]

    def presign(expires: int) -> str:
        return client.generate_presigned_url(  # type: ignore[attr-defined, no-any-return]
            "get_object", Params={"Bucket": name, "Key": "exports/coco.json"}, ExpiresIn=expires
        )

    seen: list[tuple[int, str | None]] = []
    session.hooks["response"].append(
        lambda r, *a, **k: seen.append((r.status_code, r.request.headers.get("Range")))
    )
    part = tmp_path / "coco.json.part"
    part.write_bytes(data[:1_000_000])  # an interrupted pull
    expired = presign(1)
    time.sleep(2.1)

    dest = download_file(
        session,
        expired,
        tmp_path / "coco.json",
        sha256=sha(data),
        size=len(data),
        refresh=lambda: presign(60),
    )

    assert dest.read_bytes() == data
    assert seen == [(403, "bytes=1000000-"), (206, "bytes=1000000-")]
