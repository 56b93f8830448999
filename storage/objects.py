"""The object store Loupe keeps every byte in: a local folder (embedded) or any S3 endpoint.

One interface, two backends. Common operations go through Django's Storage API
(FileSystemStorage, django-storages' S3Storage); boto3 is used directly only for what the Storage
API lacks: presigned browser uploads, listing foreign buckets, and head/verify calls. Only this
app talks to boto3.

Keys are POSIX paths chosen by Loupe (``blobs/ab/cd/<sha256>``, ``staging/<uuid>/…``); a key
never comes from user input unvalidated.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core import signing
from django.core.files.storage import FileSystemStorage, Storage
from django.urls import reverse

SIGNING_SALT = "loupe.objects"
COPY_CHUNK = 1024 * 1024
MULTIPART_THRESHOLD = 16 * 1024 * 1024


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

    def check(self) -> None:
        raise NotImplementedError


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
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
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

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".part-"):
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

    def multipart_abort_stale(self, *, older_than: float) -> int:
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
