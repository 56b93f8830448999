"""Streamed writes of unknown length into the object store, and byte ranges of its downloads.

Every behaviour runs on the local folder and on a real S3 server (SeaweedFS).
"""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import json
import os
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from storage.objects import LocalObjectStore, ObjectStore, S3ObjectStore
from storage.views import RangeNotSatisfiable, byte_range

MIB = 1024 * 1024
PART = 5 * MIB  # the smallest part S3 accepts, so a few MiB make a multipart upload
ODD_SIZES = [1, 7 * MIB, 3, 2 * MIB + 5, 64 * 1024 - 1, 11 * MIB, 17, 3 * MIB - 1]


@pytest.fixture(autouse=True)
def small_parts(settings: Any) -> None:
    settings.LOUPE_S3_PART_BYTES = PART


def pieces(data: bytes | memoryview, sizes: list[int]) -> Iterator[memoryview]:
    """``data`` cut into consecutive pieces of the given sizes, cycling through them."""
    view = memoryview(data)
    position, index = 0, 0
    while position < len(view):
        size = sizes[index % len(sizes)]
        yield view[position : position + size]
        position += size
        index += 1


def read_back(store: ObjectStore, key: str) -> bytes:
    with store.open(key) as handle:
        return handle.read()


def leftovers(store: ObjectStore) -> list[str]:
    """What a writer may leave behind: temporary files (local) or open multipart uploads (S3)."""
    if isinstance(store, LocalObjectStore):
        return [path.name for path in store.root.rglob("*") if path.is_file()]
    assert isinstance(store, S3ObjectStore)
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return [upload["Key"] for upload in uploads]


def composite_sha256(data: bytes, part: int) -> str:
    """S3's checksum of a multipart object: SHA-256 over the parts' SHA-256s, then -<parts>."""
    digests = [hashlib.sha256(data[start : start + part]).digest() for start in range(0, len(data), part)]
    return base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode() + f"-{len(digests)}"


def test_a_stream_written_in_odd_pieces_becomes_one_object(store: ObjectStore) -> None:
    data = os.urandom(40 * MIB + 3)
    with store.writer("exports/release-1/coco.json", content_type="application/json") as out:
        for piece in pieces(data, ODD_SIZES):
            assert out.write(piece) == len(piece)
        assert out.tell() == len(data)
        assert not store.exists("exports/release-1/coco.json")  # nothing visible before the end
    assert out.size == len(data)
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    assert read_back(store, "exports/release-1/coco.json") == data
    assert leftovers(store) == (["coco.json"] if isinstance(store, LocalObjectStore) else [])
    if isinstance(store, S3ObjectStore):
        head = store.client.head_object(
            Bucket=store.bucket, Key="exports/release-1/coco.json", ChecksumMode="ENABLED"
        )
        assert head["ETag"].strip('"').endswith("-9")  # eight full 5 MiB parts and a last one
        assert head["ContentType"] == "application/json"
        # The server kept the per-part SHA-256s it verified: exactly the parts the writer cut.
        assert head["ChecksumSHA256"] == composite_sha256(data, PART)


def test_a_stream_smaller_than_a_part_is_one_put(store: ObjectStore) -> None:
    data = b'{"id": 1}\n' * 1000
    with store.writer("exports/small.jsonl", content_type="application/jsonl") as out:
        for piece in pieces(data, [1, 999, 4096]):
            out.write(piece)
    assert (out.size, out.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_back(store, "exports/small.jsonl") == data
    if isinstance(store, S3ObjectStore):
        head = store.client.head_object(
            Bucket=store.bucket, Key="exports/small.jsonl", ChecksumMode="ENABLED"
        )
        assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()  # noqa: S324  (a plain PUT's ETag)
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_a_stream_of_exactly_one_part_is_one_put_and_an_empty_stream_an_empty_object(
    store: ObjectStore,
) -> None:
    data = os.urandom(PART)
    with store.writer("exports/one-part.bin", content_type="application/octet-stream") as out:
        out.write(data[:100])
        out.write(data[100:])
    assert read_back(store, "exports/one-part.bin") == data
    with store.writer("exports/empty.bin", content_type="application/octet-stream") as empty:
        pass
    assert (empty.size, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert read_back(store, "exports/empty.bin") == b""
    if isinstance(store, S3ObjectStore):
        head = store.client.head_object(Bucket=store.bucket, Key="exports/one-part.bin")
        assert "-" not in head["ETag"]


def test_zipfile_streams_into_a_writer(store: ObjectStore, tmp_path: Path) -> None:
    media = os.urandom(6 * MIB + 1)
    annotations = json.dumps({"images": [{"id": n, "file_name": f"{n}.jpg"} for n in range(5000)]}).encode()
    with (
        store.writer("exports/release-2.zip", content_type="application/zip") as out,
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        archive.writestr("annotations.json", annotations)
        with archive.open("media/video.bin", "w") as member:
            for piece in pieces(media, [MIB - 7, 13, 2 * MIB]):
                member.write(piece)
        archive.writestr("README.txt", "Loupe release 2\n")
    store.download_to("exports/release-2.zip", tmp_path / "back.zip")
    with zipfile.ZipFile(tmp_path / "back.zip") as archive:
        assert archive.testzip() is None
        assert archive.read("annotations.json") == annotations
        assert archive.read("media/video.bin") == media
        assert archive.read("README.txt") == b"Loupe release 2\n"
        # Written in streaming mode: sizes and CRCs follow each member in a data descriptor.
        assert all(info.flag_bits & 0x08 for info in archive.infolist())
    assert out.sha256 == hashlib.sha256((tmp_path / "back.zip").read_bytes()).hexdigest()


def test_json_writes_through_a_text_wrapper(store: ObjectStore) -> None:
    rows = [{"item": n, "label": "car" if n % 2 else "person"} for n in range(1000)]
    with store.writer("exports/rows.jsonl", content_type="application/jsonl") as out:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="\n")
        for row in rows:
            json.dump(row, text)
            text.write("\n")
        text.flush()
        text.detach()  # leave closing (committing) to the writer's context
    lines = read_back(store, "exports/rows.jsonl").decode().splitlines()
    assert [json.loads(line) for line in lines] == rows


@pytest.mark.parametrize("written", [3 * 1024, 12 * MIB], ids=["before-a-part", "after-two-parts"])
def test_an_exception_inside_the_writer_leaves_nothing(store: ObjectStore, written: int) -> None:
    with (
        pytest.raises(RuntimeError, match="formatter failed"),
        store.writer("exports/broken.zip", content_type="application/zip") as out,
    ):
        for piece in pieces(os.urandom(written), ODD_SIZES):
            out.write(piece)
        raise RuntimeError("formatter failed")
    assert not store.exists("exports/broken.zip")
    assert leftovers(store) == []
    with pytest.raises(ValueError, match="closed"):
        out.write(b"more")
    with pytest.raises(ValueError, match="known once"):
        _ = out.sha256


def test_a_part_the_server_refuses_ends_the_writer_and_leaves_nothing(s3_store: ObjectStore) -> None:
    assert isinstance(s3_store, S3ObjectStore)
    out = s3_store.writer("exports/refused.bin", content_type="application/octet-stream")
    out.write(os.urandom(PART + 1))  # the first part is on the server
    (upload,) = s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket)["Uploads"]
    s3_store.client.abort_multipart_upload(  # as the sweep would, had the export stalled
        Bucket=s3_store.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
    )
    with pytest.raises(s3_store.client.exceptions.NoSuchUpload):
        out.write(os.urandom(PART))  # the second part has no upload to go to
    assert out.closed
    with pytest.raises(ValueError, match="closed"):
        out.write(b"more")
    out.close()  # a no-op now: nothing is committed
    assert not s3_store.exists("exports/refused.bin")
    assert leftovers(s3_store) == []


def test_a_writer_dropped_without_closing_leaves_nothing(store: ObjectStore) -> None:
    out = store.writer("exports/abandoned.bin", content_type="application/octet-stream")
    out.write(os.urandom(6 * MIB))
    del out
    gc.collect()
    assert not store.exists("exports/abandoned.bin")
    assert leftovers(store) == []


def test_writing_60_mib_holds_about_one_part_in_memory(store: ObjectStore) -> None:
    block = os.urandom(MIB + 12_345)  # allocated before measuring; written over and over
    sizes = [1, 64 * 1024, MIB + 12_344, 3, 500_000]
    total = 0
    tracemalloc.start()
    try:
        with store.writer("exports/big.bin", content_type="application/octet-stream") as out:
            while total < 60 * MIB:
                for piece in pieces(block, sizes):
                    total += out.write(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.size == total
    info = store.info("exports/big.bin")
    assert info is not None and info.size == total
    # One part buffer, plus what the S3 client needs in flight; a writer that kept the stream
    # (60 MiB) or a list of pieces would be far above.
    assert peak < 1.5 * PART, f"peak {peak / MIB:.1f} MiB"


# --- Byte ranges of download links -----------------------------------------------------------------

DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset recognisable


def served(store: ObjectStore, request: pytest.FixtureRequest, key: str) -> str:
    """An absolute download URL: S3 presigned, or the local store's signed link on a live server."""
    url = store.url(key, expires_s=60, filename="release.bin")
    if isinstance(store, LocalObjectStore):
        url = request.getfixturevalue("live_server").url + url
    return url


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=10-19", 10, 19), ("bytes=-5", 10_235, 10_239), ("bytes=100-", 100, 10_239),
     ("bytes=10000-99999", 10_000, 10_239), ("bytes=0-0", 0, 0), ("bytes=-99999", 0, 10_239)],
)  # fmt: skip
def test_a_download_link_serves_one_byte_range(
    store: ObjectStore, request: pytest.FixtureRequest, header: str, first: int, last: int
) -> None:
    with store.writer("exports/ranged.bin", content_type="application/octet-stream") as out:
        out.write(DATA)
    answer = requests.get(served(store, request, "exports/ranged.bin"), headers={"Range": header}, timeout=10)
    assert answer.status_code == 206
    assert answer.content == DATA[first : last + 1]
    assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert answer.headers["Content-Length"] == str(last - first + 1)
    assert answer.headers["Accept-Ranges"] == "bytes"


def test_a_range_past_the_end_is_416_with_the_size(
    store: ObjectStore, request: pytest.FixtureRequest
) -> None:
    store.put_bytes("exports/ranged.bin", DATA, content_type="application/octet-stream")
    url = served(store, request, "exports/ranged.bin")
    for header in ("bytes=10240-", "bytes=99999-100000", "bytes=-0"):
        answer = requests.get(url, headers={"Range": header}, timeout=10)
        assert answer.status_code == 416, header
        assert answer.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_the_local_link_answers_whole_objects_heads_and_stale_resumes(
    local_store: ObjectStore, request: pytest.FixtureRequest
) -> None:
    local_store.put_bytes("exports/ranged.bin", DATA, content_type="application/octet-stream")
    url = served(local_store, request, "exports/ranged.bin")
    whole = requests.get(url, timeout=10)
    assert (whole.status_code, whole.content) == (200, DATA)
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["Content-Length"] == str(len(DATA))
    assert whole.headers["Content-Disposition"] == 'inline; filename="release.bin"'
    # Several ranges, other units and malformed ranges are answered with the whole object.
    for header in (
        "bytes=0-1,5-6",
        "items=0-1",
        "bytes=5-2",
        "bytes=-",
        "bytes=1-2-3",
        "bytes=" + "9" * 30 + "-",
    ):
        answer = requests.get(url, headers={"Range": header}, timeout=10)
        assert (answer.status_code, answer.content) == (200, DATA), header
    head = requests.head(url, timeout=10)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["Content-Length"] == str(len(DATA))
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["ETag"] == whole.headers["ETag"]
    unchanged = requests.get(url, headers={"If-None-Match": whole.headers["ETag"]}, timeout=10)
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    # Resuming with If-Range: the same version gives the range, a replaced object the whole of it.
    resumed = requests.get(
        url, headers={"Range": "bytes=100-", "If-Range": whole.headers["ETag"]}, timeout=10
    )
    assert (resumed.status_code, resumed.content) == (206, DATA[100:])
    by_date = requests.get(
        url, headers={"Range": "bytes=100-", "If-Range": whole.headers["Last-Modified"]}, timeout=10
    )
    assert (by_date.status_code, by_date.content) == (200, DATA)  # a date is too coarse to resume on
    local_store.put_bytes("exports/ranged.bin", DATA[::-1], content_type="application/octet-stream")
    stale = requests.get(url, headers={"Range": "bytes=100-", "If-Range": whole.headers["ETag"]}, timeout=10)
    assert (stale.status_code, stale.content) == (200, DATA[::-1])
    assert stale.headers["ETag"] != whole.headers["ETag"]


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [(None, 10, None), ("", 10, None), ("bytes=0-9", 10, (0, 9)), ("bytes=3-", 10, (3, 9)),
     ("bytes=-3", 10, (7, 9)), ("bytes=-30", 10, (0, 9)), ("bytes=5-500", 10, (5, 9)),
     (" bytes=1-2 ", 10, (1, 2)), ("bytes=2-1", 10, None), ("bytes=-", 10, None),
     ("bytes=0-1,4-5", 10, None), ("bytes=a-b", 10, None), ("Bytes=0-1", 10, (0, 1))],
)  # fmt: skip
def test_byte_range_reads_one_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-1", 0)]
)
def test_byte_range_refuses_a_range_with_no_byte_in_it(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, size)
