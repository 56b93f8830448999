"""The object store Loupe keeps every byte in: a local folder (embedded) or any S3 endpoint.

One interface, two backends. Common operations go through Django's Storage API
(FileSystemStorage, django-storages' S3Storage); boto3 is used directly only for what the Storage
API lacks: presigned browser uploads, streamed multipart writes, listing foreign buckets, and
head/verify calls. Only this app talks to boto3.

Keys are POSIX paths chosen by Loupe (``blobs/ab/cd/<sha256>``, ``staging/<uuid>/…``); a key
never comes from user input unvalidated.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Self

from django.conf import settings
from django.core import signing
from django.core.files.storage import FileSystemStorage, Storage
from django.urls import reverse

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

SIGNING_SALT = "loupe.objects"
COPY_CHUNK = 1024 * 1024
PARTIAL_PREFIX = ".part-"  # a local object being written, renamed into place when complete
MULTIPART_THRESHOLD = 16 * 1024 * 1024
S3_MAX_PARTS = 10_000


class ObjectMissing(Exception):
    """The store has no object under this key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch
    etag: str = ""


@dataclass(frozen=True)
class UploadTarget:
    """Where and how a browser uploads one file directly to the store."""

    url: str
    fields: dict[str, str]
    method: str  # "POST" (multipart form, S3 POST policy) or "PUT" (raw body, local store)
    expires_at: float


def safe_key(key: str) -> str:
    """Refuse keys that could escape the store's root or confuse listings."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size) of a local file, streamed."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ObjectWriter(io.BufferedIOBase, BinaryIO):
    """A write-only binary stream that becomes one object, for output of unknown length.

    Use it as a context manager: on a normal exit the object appears at once and whole; on an
    exception nothing appears. ``close()`` also commits, ``abort()`` discards; a write that fails
    (the store refused a part) discards too, and a writer dropped without either is discarded,
    never half-committed. Not seekable, but ``tell()`` works, so
    ``zipfile`` writes into it in streaming mode (data descriptors after each member) and
    ``json``/formatters write into it as into any binary file. Memory does not grow with the
    stream. ``size`` and ``sha256`` (hex, of the whole stream, computed while writing) are known
    once the writer is closed.
    """

    def __init__(self, key: str, content_type: str) -> None:
        super().__init__()
        self.key = safe_key(key)
        self.content_type = content_type
        self._digest = hashlib.sha256()
        self._written = 0
        self._committed = False
        self._finished = False  # committed or aborted: nothing more to do on close

    # --- what backends implement ---------------------------------------------------------------

    def _write(self, data: memoryview) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError

    # --- the file interface -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.key

    @property
    def mode(self) -> str:
        return "wb"

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        if self.closed:
            raise ValueError("write to a closed object writer")
        view = memoryview(data).cast("B")
        if not view:
            return 0
        try:
            self._write(view)
        except BaseException:
            # The part in flight may or may not be stored: the stream can no longer be trusted.
            # Discard it (best effort; the original error is what the producer must see).
            with contextlib.suppress(Exception):
                self.abort()
            raise
        self._digest.update(view)
        self._written += len(view)
        return len(view)

    def tell(self) -> int:
        return self._written

    def close(self) -> None:
        """Commit: the object becomes visible under its key (if not aborted before)."""
        if self.closed:
            return
        try:
            if not self._finished:
                self._finished = True
                try:
                    self._commit()
                except BaseException:
                    self._discard()
                    raise
                self._committed = True
        finally:
            super().close()

    def abort(self) -> None:
        """Discard everything written; no object appears. Safe to call more than once."""
        if self.closed:
            return
        try:
            if not self._finished:
                self._finished = True
                self._discard()
        finally:
            super().close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # io's finalizer would call close() and commit a stream its producer abandoned. Best
        # effort: a multipart upload not aborted here is aborted by the store sweep later.
        with contextlib.suppress(Exception):
            self.abort()

    # --- results --------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes in the committed object."""
        self._require_committed()
        return self._written

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the committed object's bytes."""
        self._require_committed()
        return self._digest.hexdigest()

    def _require_committed(self) -> None:
        if not self._committed:
            raise ValueError("size and sha256 are known once the writer is closed without error")


class ObjectStore:
    """Operations every backend supports. Keys are validated by ``safe_key``."""

    storage: Storage

    def put_file(self, key: str, path: Path, *, content_type: str) -> None:
        with path.open("rb") as handle:
            self._save(safe_key(key), handle, content_type)

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        with tempfile.TemporaryFile() as handle:
            handle.write(data)
            handle.seek(0)
            self._save(safe_key(key), handle, content_type)

    def _save(self, key: str, handle: IO[bytes], content_type: str) -> None:
        raise NotImplementedError

    def writer(self, key: str, *, content_type: str) -> ObjectWriter:
        """A stream to write one object of unknown length into; see ``ObjectWriter``."""
        raise NotImplementedError

    def open(self, key: str) -> IO[bytes]:
        try:
            return self.storage.open(safe_key(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def download_to(self, key: str, dest: Path) -> None:
        with self.open(key) as source, dest.open("wb") as target:
            shutil.copyfileobj(source, target, COPY_CHUNK)

    def exists(self, key: str) -> bool:
        return self.storage.exists(safe_key(key))

    def delete(self, key: str) -> None:
        self.storage.delete(safe_key(key))

    def info(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    def url(self, key: str, *, expires_s: int, filename: str | None = None) -> str:
        """A short-lived URL a client can GET the object from without other credentials."""
        raise NotImplementedError

    def upload_target(self, key: str, *, max_bytes: int, content_type: str, expires_s: int) -> UploadTarget:
        """A presigned upload the client sends the file to directly, size- and type-limited."""
        raise NotImplementedError

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def abandoned_writes_remove(self, *, older_than: float) -> int:
        """Remove what writers killed mid-way left behind (unfinished multipart uploads, partial
        files) untouched since ``older_than``; returns how many. A live writer is never taken:
        its upload or file is younger than the sweep's grace period."""
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError


class LocalObjectWriter(ObjectWriter):
    """Writes a temporary file beside the target and renames it into place on commit."""

    def __init__(self, target: Path, key: str, content_type: str) -> None:
        super().__init__(key, content_type)
        self._target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def _write(self, data: memoryview) -> None:
        self._file.write(data)

    def flush(self) -> None:
        super().flush()  # refuses a closed writer
        if not self._finished:
            self._file.flush()

    def _commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o640)
        os.replace(self._tmp, self._target)

    def _discard(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalObjectStore(ObjectStore):
    """A folder. URLs are signed, expiring links served by Loupe itself (storage.views)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = FileSystemStorage(location=str(root), file_permissions_mode=0o640)

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def _save(self, key: str, handle: IO[bytes], content_type: str) -> None:
        # Write beside the target and rename: readers never see a half-written object, and
        # saving the same content-addressed key twice is harmless.
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(handle, out, COPY_CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o640)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def writer(self, key: str, *, content_type: str) -> ObjectWriter:
        return LocalObjectWriter(self._path(key), key, content_type)

    def info(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            stat = path.stat()
            return ObjectInfo(key=key, size=stat.st_size, modified=stat.st_mtime)
        except FileNotFoundError:
            return None

    def url(self, key: str, *, expires_s: int, filename: str | None = None) -> str:
        token = signing.dumps({"k": safe_key(key), "e": int(time.time()) + expires_s, "f": filename or ""},
                              salt=SIGNING_SALT, compress=True)  # fmt: skip
        return reverse("object-download", kwargs={"token": token})

    def upload_target(self, key: str, *, max_bytes: int, content_type: str, expires_s: int) -> UploadTarget:
        expires_at = int(time.time()) + expires_s
        token = signing.dumps(
            {"k": safe_key(key), "e": expires_at, "m": max_bytes, "t": content_type},
            salt=SIGNING_SALT + ".upload", compress=True,
        )  # fmt: skip
        url = reverse("object-upload", kwargs={"token": token})
        return UploadTarget(
            url=url, fields={"Content-Type": content_type}, method="PUT", expires_at=expires_at
        )

    def abandoned_writes_remove(self, *, older_than: float) -> int:
        """Partial files (`.part-…`, written beside their target and renamed into place when
        done) whose writer died: each write touches the file, so an old one is abandoned."""
        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                if not name.startswith(PARTIAL_PREFIX):
                    continue
                path = Path(folder) / name
                try:
                    if path.stat().st_mtime < older_than:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:  # finished and renamed meanwhile
                    continue
        return removed

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(PARTIAL_PREFIX):
                stat = path.stat()
                yield ObjectInfo(
                    key=path.relative_to(self.root).as_posix(), size=stat.st_size, modified=stat.st_mtime
                )

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".ready-", delete=True) as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())


def signed_token_payload(token: str, *, upload: bool = False) -> dict[str, Any]:
    """Verify a local-store URL token; raises signing.BadSignature if forged or expired."""
    payload: dict[str, Any] = signing.loads(token, salt=SIGNING_SALT + (".upload" if upload else ""))
    if int(payload["e"]) < time.time():
        raise signing.SignatureExpired("link expired")
    return payload


def s3_client(*, endpoint_url: str | None = None, region: str | None = None, addressing: str | None = None,
              access_key: str | None = None, secret_key: str | None = None) -> Any:  # fmt: skip
    """A boto3 S3 client; defaults come from settings and the standard AWS credential chain."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url if endpoint_url is not None else settings.LOUPE_S3_ENDPOINT_URL,
        region_name=region or settings.LOUPE_S3_REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            s3={"addressing_style": addressing or settings.LOUPE_S3_ADDRESSING},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 4, "mode": "standard"},
        ),
    )


def _b64_sha256(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class S3ObjectWriter(ObjectWriter):
    """Streams into an S3 multipart upload, one part buffer at a time.

    Each part carries a SHA-256 the server verifies (the algorithm is declared when the upload is
    created). A stream that fits in one part is sent as one PUT instead. The buffer is filled to
    ``part_bytes`` and reused, so memory stays at one part whatever the stream's length; a part is
    sent only once more bytes follow it, so the last part is never empty. An upload that is
    neither completed nor aborted (a killed worker) is swept by ``abandoned_writes_remove``.
    """

    def __init__(self, store: S3ObjectStore, key: str, content_type: str, *, part_bytes: int) -> None:
        super().__init__(key, content_type)
        self._store = store
        self._part_bytes = part_bytes
        self._buffer = bytearray()  # grows to one part with the first bytes, then is reused
        self._filled = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _write(self, data: memoryview) -> None:
        while data:
            if self._filled == self._part_bytes:
                self._send_part()
            take = min(self._part_bytes - self._filled, len(data))
            self._buffer[self._filled : self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]

    def _send_part(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        number = len(self._parts) + 1
        if number > S3_MAX_PARTS:
            raise ValueError(
                f"{self.key}: more than {S3_MAX_PARTS} parts of {self._part_bytes} bytes; "
                "raise LOUPE_S3_PART_BYTES for streams this large"
            )
        if self._upload_id is None:
            started = client.create_multipart_upload(
                Bucket=bucket, Key=self.key, ContentType=self.content_type, ChecksumAlgorithm="SHA256"
            )
            self._upload_id = str(started["UploadId"])
        part = self._filled_buffer()
        checksum = _b64_sha256(part)
        sent = client.upload_part(
            Bucket=bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=part,
            ChecksumSHA256=checksum,
        )  # fmt: skip
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": checksum})
        self._filled = 0

    def _filled_buffer(self) -> bytearray:
        # The buffer itself goes to botocore, which hashes (to sign) and sends a bytearray without
        # copying it; a slice or a file-like wrapper would cost another part's worth of memory.
        # Only the last part is short: cutting the buffer to it frees memory, never copies.
        if self._filled < len(self._buffer):
            del self._buffer[self._filled :]
        return self._buffer

    def _commit(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            body = self._filled_buffer()
            client.put_object(
                Bucket=bucket, Key=self.key, Body=body, ContentType=self.content_type,
                ChecksumSHA256=_b64_sha256(body),
            )  # fmt: skip
        else:
            if self._filled:
                self._send_part()
            client.complete_multipart_upload(
                Bucket=bucket, Key=self.key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )  # fmt: skip
        self._release()

    def _discard(self) -> None:
        self._release()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self.key, UploadId=upload_id
            )

    def _release(self) -> None:
        self._buffer = bytearray()
        self._filled = 0


class S3ObjectStore(ObjectStore):
    """Any S3 endpoint: AWS, MinIO, Ceph, R2, SeaweedFS."""

    def __init__(self, bucket: str) -> None:
        from storages.backends.s3 import S3Storage

        self.bucket = bucket
        self.client = s3_client()
        self.storage = S3Storage(
            bucket_name=bucket,
            endpoint_url=settings.LOUPE_S3_ENDPOINT_URL,
            region_name=settings.LOUPE_S3_REGION,
            addressing_style=None if settings.LOUPE_S3_ADDRESSING == "auto" else settings.LOUPE_S3_ADDRESSING,
            signature_version="s3v4",
            file_overwrite=True,  # content-addressed keys: same key, same bytes
            default_acl=None,
            querystring_auth=True,
        )

    def put_file(self, key: str, path: Path, *, content_type: str) -> None:
        size = path.stat().st_size
        if size >= MULTIPART_THRESHOLD:
            with path.open("rb") as handle:
                self._save(safe_key(key), handle, content_type)
            return
        # Small objects: one PUT with a SHA-256 the server verifies. The transfer manager of the
        # large path spins up threads per call, which costs more than the upload itself here.
        data = path.read_bytes()
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        self.client.put_object(
            Bucket=self.bucket,
            Key=safe_key(key),
            Body=data,
            ContentType=content_type,
            ChecksumSHA256=checksum,
        )

    def _save(self, key: str, handle: IO[bytes], content_type: str) -> None:
        # upload_fileobj streams in parts above the threshold; botocore adds checksums the server
        # verifies.
        from boto3.s3.transfer import TransferConfig

        parts = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )
        self.client.upload_fileobj(
            handle, self.bucket, key, ExtraArgs={"ContentType": content_type}, Config=parts
        )

    def writer(self, key: str, *, content_type: str) -> ObjectWriter:
        return S3ObjectWriter(self, key, content_type, part_bytes=settings.LOUPE_S3_PART_BYTES)

    def open(self, key: str) -> IO[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=safe_key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise ObjectMissing(key) from None
        return body  # type: ignore[no-any-return]

    def info(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=safe_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            modified=head["LastModified"].timestamp(),
            etag=str(head.get("ETag", "")).strip('"'),
        )

    def url(self, key: str, *, expires_s: int, filename: str | None = None) -> str:
        params: dict[str, str] = {"Bucket": self.bucket, "Key": safe_key(key)}
        if filename:
            params["ResponseContentDisposition"] = f'inline; filename="{filename}"'
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s))

    def upload_target(self, key: str, *, max_bytes: int, content_type: str, expires_s: int) -> UploadTarget:
        post = self.client.generate_presigned_post(
            self.bucket, safe_key(key),
            Fields={"Content-Type": content_type},
            Conditions=[["content-length-range", 1, max_bytes], {"Content-Type": content_type}],
            ExpiresIn=expires_s,
        )  # fmt: skip
        return UploadTarget(url=post["url"], fields=dict(post["fields"]), method="POST",
                            expires_at=time.time() + expires_s)  # fmt: skip

    def multipart_start(
        self, key: str, *, size: int, part_size: int, content_type: str, expires_s: int
    ) -> tuple[str, list[str]]:
        """A multipart upload for a large file: its id and a presigned PUT URL per part."""
        started = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=safe_key(key), ContentType=content_type
        )
        upload_id = str(started["UploadId"])
        count = max(1, -(-size // part_size))
        urls = [
            str(
                self.client.generate_presigned_url(
                    "upload_part",
                    ExpiresIn=expires_s,
                    Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
                )
            )
            for number in range(1, count + 1)
        ]
        return upload_id, urls

    def multipart_complete(self, key: str, *, upload_id: str, parts: list[dict[str, Any]]) -> None:
        """Join the parts the client uploaded; S3 refuses missing, small or mismatched parts."""
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=safe_key(key), UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p["number"], "ETag": p["etag"]} for p in parts]},
        )  # fmt: skip

    def abandoned_writes_remove(self, *, older_than: float) -> int:
        """Abort multipart uploads started before ``older_than`` (abandoned by their clients)."""
        aborted = 0
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < older_than:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        yield from iter_bucket(self.client, self.bucket, prefix)

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def iter_bucket(client: Any, bucket: str, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
    """Every object under a prefix, in key order, a page (1000 keys) at a time."""
    paginator = client.get_paginator("list_objects_v2")
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        kwargs["StartAfter"] = start_after
    for page in paginator.paginate(**kwargs):
        for entry in page.get("Contents", []):
            yield ObjectInfo(
                key=entry["Key"],
                size=int(entry["Size"]),
                etag=str(entry.get("ETag", "")).strip('"'),
                modified=entry["LastModified"].timestamp(),
            )


@functools.cache
def _store(kind: str, location: str) -> ObjectStore:
    return S3ObjectStore(location) if kind == "s3" else LocalObjectStore(Path(location))


def object_store() -> ObjectStore:
    """The configured store (one instance per configuration and process)."""
    if settings.LOUPE_STORAGE == "s3":
        return _store("s3", settings.LOUPE_S3_BUCKET)
    return _store("local", str(settings.LOUPE_OBJECTS_DIR))


def object_store_check() -> None:
    """Raise if the configured object store cannot be written to (local) or reached (S3)."""
    object_store().check()
