"""Resumable, verified, parallel downloads: plain HTTP and files, no knowledge of the Loupe API.

- `download_file` fetches one URL into `dest` through a `.part` file: an interrupted transfer goes
  on from where it stopped with `Range: bytes=N-` (or starts over when the server ignores Range),
  the bytes are hashed as they arrive, and only a file whose sha256 matches reaches its real name.
- `download_many` runs many of those in a thread pool. Storage links are short-lived, so when one
  is refused (403/400) the files still missing are fetched again with fresh links from the listing.
- `extract_zip` unpacks an archive after checking every member first: no absolute paths, no `..`,
  no links or devices, no member packed like a zip bomb, and room on the disk for all of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import requests
import urllib3

from loupe_client.errors import ArchiveRefused, ChecksumMismatch, DownloadError, LinkExpired, UnsafePath

logger = logging.getLogger("loupe_client")

CHUNK_BYTES = 1024 * 1024
# (connect, read) seconds; a read timeout is a pause between bytes, not a limit on the whole file.
DEFAULT_TIMEOUT = (10.0, 60.0)
# Consecutive failed attempts (connection cut, timeout) with no new byte before giving up.
DEFAULT_ATTEMPTS = 5
# Fresh links one file may ask for in a row with no byte received between them: more refusals
# than this are not an expiry any more.
MAX_REFRESHES = 3
BACKOFF_S = 0.5
# Refusals in a row, with no success between them, that mean "this listing's links have expired"
# (they were all signed at once); a single refused file is retried in the next round instead.
REFUSALS_MEAN_EXPIRED = 3

Progress = Callable[[int], None]


class Cancelled(DownloadError):
    """Another download of the same pool failed; this one stopped without finishing."""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,  # a body read straight from urllib3 (see `_chunks`)
)


# --- names -------------------------------------------------------------------------------------------


def safe_relative(name: str) -> PurePosixPath:
    """`name` as a relative path that stays inside whatever folder it is joined to.

    Refuses absolute paths, drive letters, `..`, backslashes (a separator on Windows) and NUL;
    `a//b` and `./a` are tidied up.
    """
    if not name or "\x00" in name or "\\" in name:
        raise UnsafePath(f"refusing unsafe path {name!r}")
    path = PurePosixPath(name)
    parts = [part for part in path.parts if part not in ("", ".")]
    if path.is_absolute() or not parts or ".." in parts or re.match(r"^[A-Za-z]:", parts[0]):
        raise UnsafePath(f"refusing unsafe path {name!r}")
    return PurePosixPath(*parts)


def safe_join(root: Path, name: str) -> Path:
    """`root / name`, refusing any name (or symlinked folder already in `root`) that leads outside."""
    target = root / safe_relative(name)
    base = root.resolve()
    if not target.resolve().is_relative_to(base):
        raise UnsafePath(f"refusing {name!r}: it resolves outside {root}")
    return target


# --- one file ----------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(path: Path, *, sha256: str, size: int | None = None) -> bool:
    """Whether `path` already holds exactly these bytes (size first: it is free)."""
    try:
        if not path.is_file() or (size is not None and path.stat().st_size != size):
            return False
    except OSError:
        return False
    return sha256_file(path) == sha256


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives. `read1` hands over every byte received before a connection drops
    (`iter_content` loses the chunk it was filling), so a resume loses nothing."""
    raw = response.raw
    if not hasattr(raw, "read1"):  # urllib3 < 2
        yield from response.iter_content(64 * 1024)
        return
    while chunk := raw.read1(CHUNK_BYTES, decode_content=True):
        yield chunk


def _resume(part: Path, size: int | None) -> tuple[hashlib._Hash, int]:
    """The hash and length of what an earlier attempt left in `part`, or a fresh start."""
    digest = hashlib.sha256()
    if not part.exists():
        return digest, 0
    if size is not None and part.stat().st_size > size:
        part.unlink()  # longer than the file can be: not a prefix of it
        return digest, 0
    offset = 0
    with part.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            offset += len(chunk)
    return digest, offset


def download_file(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None = None,
    part: Path | None = None,
    refresh: Callable[[], str] | None = None,
    progress: Progress | None = None,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    attempts: int = DEFAULT_ATTEMPTS,
    cancel: threading.Event | None = None,
) -> Path:
    """Download `url` to `dest`, resuming `part` (default `dest` + ".part"), and verify its sha256.

    `refresh` returns a new URL when storage refuses the current one (an expired link); without
    it a refusal raises `LinkExpired`. `progress` receives byte increments (negative when a
    transfer starts over). On a checksum mismatch the part file is deleted and `ChecksumMismatch`
    names `dest`; `dest` itself is only ever written by an atomic rename of verified bytes.
    """
    part = part if part is not None else dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    counted = 0

    def report(n: int) -> None:
        nonlocal counted
        counted += n
        if progress is not None:
            progress(n)

    digest, offset = _resume(part, size)
    report(offset)
    try:
        return _download(
            session, url, dest, sha256=sha256, size=size, part=part, refresh=refresh, report=report,
            timeout=timeout, attempts=attempts, cancel=cancel, digest=digest, offset=offset,
        )  # fmt: skip
    except BaseException:
        # Withdraw what this call counted: a later attempt (a fresh link) counts the part again.
        if progress is not None and counted:
            progress(-counted)
        raise


def _download(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None,
    part: Path,
    refresh: Callable[[], str] | None,
    report: Progress,
    timeout: tuple[float, float],
    attempts: int,
    cancel: threading.Event | None,
    digest: hashlib._Hash,
    offset: int,
) -> Path:
    failures = refreshes = restarts = 0
    refreshed_at = offset  # refreshes count only while no byte arrives in between

    def restart() -> None:
        nonlocal digest, offset, restarts
        restarts += 1
        if restarts > attempts:
            raise DownloadError(f"{dest.name}: could not resume; started over {attempts} times")
        report(-offset)
        part.unlink(missing_ok=True)
        digest, offset = hashlib.sha256(), 0

    while size is None or offset < size:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"{dest.name}: cancelled")
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        started_at = offset
        if offset > refreshed_at:
            refreshes = 0
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
                status = response.status_code
                if status in (400, 403):
                    if refresh is None or refreshes >= MAX_REFRESHES:
                        raise LinkExpired(
                            f"{dest.name}: storage refused the link (HTTP {status}); it may have expired"
                        )
                    refreshes, refreshed_at = refreshes + 1, offset
                    url = refresh()
                    continue
                if status == 416:  # we asked past the end: complete already, or not a prefix
                    if offset and digest.hexdigest() == sha256:
                        break
                    restart()
                    continue
                if status == 206:
                    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                    if match is None or int(match.group(1)) != offset:
                        restart()
                        continue
                elif status == 200:
                    if offset:  # the server ignored Range: take the whole body from the start
                        restart()
                else:
                    raise DownloadError(f"{dest.name}: HTTP {status} from storage")
                with part.open("ab" if offset else "wb") as out:
                    for chunk in _chunks(response):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled(f"{dest.name}: cancelled")
                        out.write(chunk)
                        digest.update(chunk)
                        offset += len(chunk)
                        report(len(chunk))
                        if size is not None and offset > size:
                            break
        except _NETWORK_ERRORS as error:
            failures = 0 if offset > started_at else failures + 1
            if failures >= attempts:
                message = f"{dest.name}: {type(error).__name__} after {attempts} attempts"
                raise DownloadError(message) from error
            logger.info("%s: %s at byte %d; resuming", dest.name, type(error).__name__, offset)
            if failures:  # no new byte since the last failure: give the server a moment
                time.sleep(BACKOFF_S * 2 ** (failures - 1))
            continue
        if size is None:
            break  # the body ended normally (requests raises when it is shorter than announced)
        if offset > size:
            break
        if offset < size:  # ended early without an error: resume like after a cut
            failures = 0 if offset > started_at else failures + 1
            if failures >= attempts:
                raise DownloadError(f"{dest.name}: the body stops at byte {offset} of {size}")

    actual = digest.hexdigest()
    if actual != sha256 or (size is not None and offset != size):
        part.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)  # whatever was there is not what the server announced
        raise ChecksumMismatch(str(dest), sha256, actual)
    part.touch()  # an empty file has no body to write
    os.replace(part, dest)
    return dest


# --- many files --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """One file to fetch: where it goes (a relative name), from where, and what it must hash to."""

    name: str
    url: str
    sha256: str
    size: int | None = None


@dataclass
class ManyResult:
    downloaded: list[Path]
    present: list[Path]  # already there with the right sha256: not fetched again
    rounds: int  # listings read: 1, plus one per wave of expired links


class _Round:
    """One listing's files through the pool. Links of one listing expire together: after a few
    refusals in a row the files not started yet are only recorded as `expired`, not tried."""

    def __init__(
        self,
        *,
        root: Path,
        parts: Path,
        session: Callable[[], requests.Session],
        progress: Progress | None,
        timeout: tuple[float, float],
        attempts: int,
        result: ManyResult,
        finished: dict[str, str],
    ) -> None:
        self.root, self.parts, self.session = root, parts, session
        self.progress, self.timeout, self.attempts = progress, timeout, attempts
        self.result, self.finished = result, finished
        self.expired: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()  # a real failure, or Ctrl-C: the others stop at their next chunk
        self.link_refused = threading.Event()
        self.refusals = 0  # in a row

    def run(self, batch: Iterable[Remote], workers: int) -> None:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="loupe-pull") as pool:
            try:
                futures = [pool.submit(self.fetch, remote) for remote in batch]
                for future in futures:
                    future.exception()  # wait here, where Ctrl-C can reach us
            except BaseException:
                self.stop.set()  # running downloads stop at their next chunk, their parts kept
                raise
        errors = [error for future in futures if (error := future.exception()) is not None]
        if errors:
            # The first real failure, not the downloads it cancelled.
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])

    def done(self, remote: Remote, dest: Path, into: list[Path]) -> None:
        with self.lock:
            into.append(dest)
            self.finished[remote.name] = remote.sha256
            if into is self.result.downloaded:
                self.refusals = 0  # a link of this listing still works

    def fetch(self, remote: Remote) -> None:
        if self.stop.is_set():
            return
        dest = safe_join(self.root, remote.name)
        if is_complete(dest, sha256=remote.sha256, size=remote.size):
            if self.progress is not None and remote.size:
                self.progress(remote.size)
            self.done(remote, dest, self.result.present)
            return
        if not self.link_refused.is_set():
            try:
                download_file(
                    self.session(),
                    remote.url,
                    dest,
                    sha256=remote.sha256,
                    size=remote.size,
                    part=self.parts / f"{safe_relative(remote.name)}.part",
                    progress=self.progress,
                    timeout=self.timeout,
                    attempts=self.attempts,
                    cancel=self.stop,
                )
            except LinkExpired:
                with self.lock:
                    self.refusals += 1
                    if self.refusals >= REFUSALS_MEAN_EXPIRED:
                        self.link_refused.set()
            except BaseException:
                self.stop.set()
                raise
            else:
                self.done(remote, dest, self.result.downloaded)
                return
        with self.lock:
            self.expired.add(remote.name)


def download_many(
    listing: Callable[[set[str] | None], Iterable[Remote]],
    root: Path,
    *,
    parts: Path,
    session: Callable[[], requests.Session],
    workers: int = 8,
    progress: Progress | None = None,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    attempts: int = DEFAULT_ATTEMPTS,
    max_idle_rounds: int = 3,
) -> ManyResult:
    """Fetch every file of `listing(None)` into `root/<name>`, `workers` at a time.

    Files already in place with the right sha256 are skipped; partial ones resume from
    `parts/<name>.part`. When storage refuses a link (they expire), the files still missing are
    listed again with `listing(names)` — fresh links — and fetched in another round; after
    `max_idle_rounds` rounds in a row that finish nothing, `LinkExpired` is raised. Any other
    failure stops the pool and is raised (the first one). Every name is checked (`safe_join`)
    before anything is fetched. `session` is called once per thread (Sessions are not shared
    between threads).
    """
    local = threading.local()

    def thread_session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = session()
        return local.session  # type: ignore[no-any-return]

    result = ManyResult(downloaded=[], present=[], rounds=0)
    finished: dict[str, str] = {}  # name → sha256
    wanted: set[str] | None = None
    idle = 0
    while True:
        result.rounds += 1
        batch: dict[str, Remote] = {}
        for remote in listing(wanted):
            if wanted is not None and remote.name not in wanted:
                continue
            known = batch[remote.name].sha256 if remote.name in batch else finished.get(remote.name)
            if known is not None and known != remote.sha256:
                raise DownloadError(f"{remote.name}: two files with this name have different content")
            if remote.name not in finished:
                safe_join(root, remote.name)
                batch[remote.name] = remote
        if wanted is not None and (missing := wanted - set(batch)):
            raise DownloadError(f"{sorted(missing)[0]}: no longer listed by the server")
        if not batch:
            return result
        round_ = _Round(
            root=root,
            parts=parts,
            session=thread_session,
            progress=progress,
            timeout=timeout,
            attempts=attempts,
            result=result,
            finished=finished,
        )
        round_.run(batch.values(), workers)
        if not round_.expired:
            return result
        idle = idle + 1 if len(round_.expired) == len(batch) else 0
        if idle >= max_idle_rounds:
            raise LinkExpired(
                f"{sorted(round_.expired)[0]}: storage refused fresh links {idle} times in a row "
                f"({len(round_.expired)} files left)"
            )
        logger.info("%d links expired; listing them again for fresh ones", len(round_.expired))
        wanted = round_.expired


# --- archives ----------------------------------------------------------------------------------------


def _member_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if stat.S_IFMT(mode) == 0 or stat.S_ISREG(mode):  # no file type recorded: a regular file
        return "file"
    return "link" if stat.S_ISLNK(mode) else "special"


# Exports compress JSON and text 5 to 30 times and media not at all; deflate's limit is about
# 1,000. A member of at least RATIO_FLOOR_BYTES packed tighter than MAX_RATIO is a zip bomb.
MAX_RATIO = 200
RATIO_FLOOR_BYTES = 1 << 20
SPACE_MARGIN_BYTES = 64 << 20  # left free on the disk after unpacking


def _check_expansion(archive: Path, root: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse (ArchiveRefused) an archive that would expand beyond reason. zipfile never yields
    more than a member's declared size, so the declared sizes bound what would be written."""
    for info in members:
        if info.file_size >= RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveRefused(
                f"refusing {archive.name}: {info.filename!r} would expand {info.file_size:,} bytes from "
                f"{info.compress_size:,} (more than {MAX_RATIO} times; no export packs that tight)"
            )
    total = sum(info.file_size for info in members)
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if total + SPACE_MARGIN_BYTES > free:
        raise ArchiveRefused(
            f"refusing {archive.name}: it unpacks to {total:,} bytes and {existing} has {free:,} free"
        )


def extract_zip(archive: Path, root: Path) -> list[Path]:
    """Unpack `archive` into `root`; every member is checked before anything is written.

    Refused (UnsafePath): absolute names, `..`, backslashes, symbolic links and special files.
    Refused (ArchiveRefused): a member packed like a zip bomb, or more than the disk has free.
    Returns the files written, in archive order.
    """
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        _check_expansion(archive, root, members)
        plan: list[tuple[zipfile.ZipInfo, Path | None]] = []
        for info in members:
            kind = _member_kind(info)
            if kind in ("link", "special"):
                raise UnsafePath(f"refusing {info.filename!r} in {archive.name}: it is a {kind}")
            target = safe_join(root, info.filename.rstrip("/")) if info.filename.rstrip("/") else None
            if target is None and kind != "dir":
                raise UnsafePath(f"refusing an unnamed member of {archive.name}")
            plan.append((info, target))
        written: list[Path] = []
        for info, target in plan:
            if target is None:
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.resolve().is_relative_to(root.resolve()):  # a link planted meanwhile
                raise UnsafePath(f"refusing {info.filename!r}: it resolves outside {root}")
            temporary = target.with_name(f".{target.name}.loupe-tmp")
            with bundle.open(info) as source, temporary.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)
            os.replace(temporary, target)
            written.append(target)
    return written
