"""`Client`: the released datasets of a Loupe server, from Python (no Django needed).

from loupe_client import Client
client = Client("https://loupe.example.com", token)      # or LOUPE_URL / LOUPE_TOKEN
release = client.release("Street scenes")                 # the highest ready release
pulled = client.download(release, "coco", "data/street")  # export, download, verify
for item in client.items(release["id"], split="train"):   # streamed line by line
    ...
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from loupe_client.download import (
    DEFAULT_TIMEOUT,
    Remote,
    download_file,
    download_many,
    extract_zip,
    is_complete,
    safe_join,
    safe_relative,
)
from loupe_client.errors import ApiError, LoupeError

FORMATS = ("coco", "yolo", "voc", "labelstudio", "cvat", "jsonl", "csv", "conll")
RELEASE_FILE = "release.json"
STATE_DIR = ".loupe"  # part files and archives being unpacked
# Answers worth asking again after a pause: the server is restarting, overloaded, or throttling us.
RETRY_STATUSES = (429, 502, 503, 504)

ProjectRef = int | str | dict[str, Any]
ReleaseRef = int | dict[str, Any]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("loupe")
    except Exception:  # not installed as a distribution (a checkout on sys.path)
        return "0"


def make_session(*, retries: int = 5, backoff: float = 0.5, pool_size: int = 10) -> requests.Session:
    """A Session that retries connection errors and 429/502/503/504 with exponential backoff.

    Every request the client sends is safe to repeat: reads, and export requests (a release's
    export in a format is made once; asking again returns it).
    """
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        backoff_max=10,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # every method: see above
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"loupe-client/{_version()}"
    return session


def raise_for_error(response: requests.Response) -> None:
    """Turn an error answer into `ApiError` with the server's code and message."""
    if response.status_code < 400:
        return
    code, message = f"http_{response.status_code}", response.reason or "error"
    details: dict[str, Any] = {}
    try:
        error = response.json()["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().splitlines()
        if text:
            message = text[0][:200]
    raise ApiError(response.status_code, code, message, details)


@dataclass
class Pulled:
    """What `Client.download` left in `out_dir`."""

    release: dict[str, Any]
    format: str
    out_dir: Path
    files: list[Path]  # the export: one file (COCO JSON, JSONL…) or what its archive held
    media: list[Path] = field(default_factory=list)  # with media=True: every item's file
    up_to_date: bool = False  # nothing was fetched: release.json says this pull is already here

    @property
    def annotations(self) -> Path:
        """The export file (COCO JSON…), or `out_dir` when the export was an unpacked archive."""
        return self.files[0] if len(self.files) == 1 else self.out_dir


class _Bar:
    """A thread-safe byte counter over tqdm (or nothing when progress is off)."""

    def __init__(self, enabled: bool, **options: Any) -> None:
        self.lock = threading.Lock()
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(file=sys.stderr, dynamic_ncols=True, **options)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(n)

    def set(self, *, n: int | None = None, total: float | None = None) -> None:
        if self.bar is None:
            return
        with self.lock:
            if total is not None:
                self.bar.total = total
            if n is not None:
                self.bar.n = n
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Client:
    """A Loupe server's projects, releases, items and exports, with an API token.

    `url` and `token` default to the environment variables LOUPE_URL and LOUPE_TOKEN.
    Errors from the server raise `ApiError` (its `code`, `message`, `details`).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retries: int = 5,
        poll_interval: float = 1.0,
    ) -> None:
        url = url or os.environ.get("LOUPE_URL")
        token = token or os.environ.get("LOUPE_TOKEN")
        if not url:
            raise LoupeError("no server: pass its URL or set LOUPE_URL")
        base = url.rstrip("/")
        base = base.removesuffix("/api/v1")
        self.url = base
        self.timeout = timeout
        self.retries = retries
        self.poll_interval = poll_interval
        self.session = make_session(retries=retries)
        self.session.headers["Accept"] = "application/json"
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- HTTP ------------------------------------------------------------------------------------------

    def api_url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.url}/api/v1/{path.lstrip('/')}"

    def storage_url(self, url: str) -> str:
        """Media and export links: absolute for S3, server-relative for the local object store."""
        return urljoin(self.url + "/", url)

    def storage_session(self, pool_size: int = 10) -> requests.Session:
        """A Session for storage links: they carry their own signature, so no Authorization header."""
        return make_session(retries=self.retries, pool_size=pool_size)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        response = self.session.request(
            method, self.api_url(path), params=params, json=json_body, stream=stream, timeout=self.timeout
        )
        if response.status_code >= 400:
            try:
                raise_for_error(response)
            finally:
                response.close()
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every result of a cursor-paginated list, following `next`.

        Only the path and query of `next` are used, on the server we were given: behind a proxy
        the server may name itself differently, and the token goes nowhere else.
        """
        page = self.get(path, **params)
        while True:
            yield from page["results"]
            if not page.get("next"):
                return
            link = urlsplit(page["next"])
            page = self.get(urljoin(self.url + "/", f"{link.path}?{link.query}"))

    # --- projects and releases ---------------------------------------------------------------------

    def projects(self, name: str | None = None) -> list[dict[str, Any]]:
        """Projects you can see; `name` filters on a case-insensitive substring."""
        return list(self.paginate("projects", name=name))

    def project(self, project: ProjectRef) -> dict[str, Any]:
        """A project by id, or by its exact name (refused when several projects share it)."""
        if isinstance(project, dict):
            return project
        if isinstance(project, int) or project.isdigit():
            return self.get(f"projects/{int(project)}")  # type: ignore[no-any-return]
        candidates = self.projects(name=project)
        matches = [p for p in candidates if p["name"] == project] or [
            p for p in candidates if p["name"].casefold() == project.casefold()
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(str(p["id"]) for p in matches)
            raise LoupeError(f"{len(matches)} projects are named {project!r} (ids {ids}); use the id")
        hint = ", ".join(repr(p["name"]) for p in candidates[:5])
        raise LoupeError(f"no project named {project!r}" + (f" (did you mean {hint}?)" if hint else ""))

    def releases(self, project: ProjectRef) -> list[dict[str, Any]]:
        """The project's releases, newest first (every state: building, ready, failed)."""
        project_id = self.project(project)["id"] if not isinstance(project, int) else project
        return list(self.paginate(f"projects/{project_id}/releases"))

    def release(self, project: ProjectRef, version: int | str = "latest") -> dict[str, Any]:
        """A ready release by version number, or the highest ready one (`latest`)."""
        found = self.project(project)
        releases = self.releases(found["id"])
        name = found.get("name", found["id"])
        if str(version) == "latest":
            ready = [r for r in releases if r["state"] == "ready"]
            if not ready:
                raise LoupeError(f"project {name!r} has no ready release yet")
            return max(ready, key=lambda r: int(r["version"]))
        try:
            wanted = int(version)
        except ValueError:
            raise LoupeError(f"a release is a version number or 'latest', not {version!r}") from None
        release = next((r for r in releases if int(r["version"]) == wanted), None)
        if release is None:
            versions = ", ".join(str(r["version"]) for r in releases) or "none"
            raise LoupeError(f"project {name!r} has no release {wanted} (releases: {versions})")
        return _ready(release)

    def release_get(self, release_id: int) -> dict[str, Any]:
        return self.get(f"releases/{release_id}")  # type: ignore[no-any-return]

    def items(self, release_id: int, split: str | None = None) -> Iterator[dict[str, Any]]:
        """The release's items (annotations, regions, a short-lived media `url`), read line by line."""
        params = {"split": split} if split else None
        response = self.request("GET", f"releases/{release_id}/items.jsonl", params=params, stream=True)
        with response:
            for line in response.iter_lines(chunk_size=64 * 1024):
                if line.strip():
                    yield json.loads(line)

    # --- exports -------------------------------------------------------------------------------------

    def export_get(self, release_id: int, export_id: int) -> dict[str, Any]:
        return self.get(f"releases/{release_id}/exports/{export_id}")  # type: ignore[no-any-return]

    def export(
        self,
        release_id: int,
        format: str,
        include_media: bool = False,
        wait: bool = True,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Ask for the release's export in `format` (made once per release and format).

        With `wait`, poll until it has succeeded and return it; `on_progress` sees each poll's
        export. A failed or cancelled export raises `LoupeError` with the job's reason.
        """
        export: dict[str, Any] = self.request(
            "POST",
            f"releases/{release_id}/exports",
            json_body={"format": format, "include_media": include_media},
        ).json()
        if not wait:
            return export
        began = time.monotonic()
        pause = min(0.25, self.poll_interval)
        while True:
            if on_progress is not None:
                on_progress(export)
            state = export["state"]
            if state == "succeeded":
                return export
            if state in ("failed", "cancelled"):
                job = export.get("job") or {}
                reason = job.get("failure") or job.get("error") or "no reason given"
                raise LoupeError(f"the {format} export of release {release_id} {state}: {reason}")
            if timeout is not None and time.monotonic() - began > timeout:
                raise LoupeError(f"the {format} export of release {release_id} is still {state}")
            time.sleep(pause)
            pause = min(pause * 2, self.poll_interval)
            export = self.export_get(release_id, export["id"])

    # --- pull --------------------------------------------------------------------------------------

    def download(
        self,
        release: ReleaseRef,
        format: str,
        out_dir: str | Path,
        media: bool = False,
        *,
        split: str | None = None,
        workers: int = 8,
        extract: bool = True,
        force: bool = False,
        progress: bool = True,
    ) -> Pulled:
        """Pull a release in `format` into `out_dir`: export, download (resumable), verify, unpack.

        Zip exports (YOLO, VOC…) are unpacked into `out_dir` unless `extract=False`; single-file
        exports (COCO JSON, JSONL…) are placed there as they are. With `media`, every item's file
        (of `split` only, if given) goes to `out_dir/media/<item name>` (`out_dir/images/` for
        YOLO), `workers` at a time.
        `out_dir/release.json` records the pull: the same pull again fetches nothing unless `force`.
        """
        if format not in FORMATS:
            raise LoupeError(f"unknown format {format!r} (one of {', '.join(FORMATS)})")
        found = _ready(release if isinstance(release, dict) else self.release_get(release))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state_dir = out / STATE_DIR
        previous = _read_record(out)
        same = _same_pull(previous, found, format, media=media, split=split, extract=extract, out=out)
        if same and not force:
            assert previous is not None
            return Pulled(
                release=found,
                format=format,
                out_dir=out,
                files=[out / name for name in previous["files"]],
                media=[],
                up_to_date=True,
            )

        export = self._export_with_bar(found, format, progress)
        link = export.get("download") or self.export_get(found["id"], export["id"]).get("download")
        if not link:
            raise LoupeError(f"the {format} export of release {found['id']} has no download link")
        filename = safe_relative(link.get("filename") or export["filename"]).name
        sha256 = link.get("sha256") or export["sha256"]
        size = link.get("size") if link.get("size") is not None else export.get("size")
        archive = _is_zip(filename, export.get("media_type"))
        target = (state_dir / filename) if archive and extract else safe_join(out, filename)
        if not is_complete(target, sha256=sha256, size=size):
            bar = _Bar(progress, desc=filename, unit="B", unit_scale=True, unit_divisor=1024, total=size)
            try:
                download_file(
                    self.storage_session(),
                    self.storage_url(link["url"]),
                    target,
                    sha256=sha256,
                    size=size,
                    part=state_dir / f"{filename}.part",
                    refresh=lambda: self._fresh_link(found["id"], export["id"]),
                    progress=bar,
                    timeout=self.timeout,
                )
            finally:
                bar.close()
        if archive and extract:
            files = extract_zip(target, out)
            target.unlink()
        else:
            files = [target]

        pulled_media: list[Path] = []
        if media:
            pulled_media = self.download_media(
                found["id"], out / media_folder(format), split=split, workers=workers, progress=progress
            )
        _write_record(
            out,
            {
                "release": found["id"],
                "version": found["version"],
                "project": found["project"],
                "manifest_sha256": (found.get("manifest") or {}).get("sha256"),
                "format": format,
                "export": export["id"],
                "export_sha256": sha256,
                "filename": filename,
                "archive": archive,
                "extracted": bool(archive and extract),
                "files": [str(path.relative_to(out)) for path in files],
                "media": {"split": split, "files": len(pulled_media)} if media else None,
            },
        )
        return Pulled(release=found, format=format, out_dir=out, files=files, media=pulled_media)

    def download_media(
        self,
        release_id: int,
        media_dir: str | Path,
        *,
        split: str | None = None,
        workers: int = 8,
        progress: bool = True,
    ) -> list[Path]:
        """Every item's file into `media_dir/<item name>`; present files with the right sha256 stay.

        Links expire: when storage refuses some, the items still missing are listed again for
        fresh ones (see `download_many`).
        """
        root = Path(media_dir)
        root.mkdir(parents=True, exist_ok=True)
        parts = root.parent / STATE_DIR / "media"
        bar = _Bar(progress, desc="media", unit="B", unit_scale=True, unit_divisor=1024)

        def listing(names: set[str] | None) -> Iterator[Remote]:
            total = 0
            for record in self.items(release_id, split=split):
                if not record.get("url") or (names is not None and record["name"] not in names):
                    continue
                total += int(record.get("size") or 0)
                yield Remote(
                    name=record["name"],
                    url=self.storage_url(record["url"]),
                    sha256=record["sha256"],
                    size=record.get("size"),
                )
            if names is None:
                bar.set(total=total)

        try:
            result = download_many(
                listing,
                root,
                parts=parts,
                session=lambda: self.storage_session(pool_size=1),
                workers=workers,
                progress=bar,
                timeout=self.timeout,
            )
        finally:
            bar.close()
        return sorted(result.downloaded + result.present)

    def _fresh_link(self, release_id: int, export_id: int) -> str:
        link = self.export_get(release_id, export_id).get("download") or {}
        if not link.get("url"):
            raise LoupeError(f"export {export_id} of release {release_id} has no download link any more")
        return self.storage_url(link["url"])

    def _export_with_bar(self, release: dict[str, Any], format: str, progress: bool) -> dict[str, Any]:
        bar = _Bar(progress, desc=f"export {format}", unit="item")

        def show(export: dict[str, Any]) -> None:
            job = export.get("job") or {}
            if job.get("total") is not None:
                bar.set(total=job["total"], n=int(job.get("done") or 0))

        try:
            return self.export(release["id"], format, on_progress=show)
        finally:
            bar.close()


# --- helpers -----------------------------------------------------------------------------------------


def media_folder(format: str) -> str:
    """Where media go in a pull: `images/` beside YOLO's `labels/` (where Ultralytics looks for
    them, and what the server's own media exports use), else `media/`."""
    return "images" if format == "yolo" else "media"


def _ready(release: dict[str, Any]) -> dict[str, Any]:
    state = release.get("state")
    if state == "building":
        raise LoupeError(f"release {release['version']} is still building; pull it when it is ready")
    if state != "ready":
        raise LoupeError(f"release {release['version']} is {state}; it cannot be pulled")
    return release


def _is_zip(filename: str, media_type: str | None) -> bool:
    return media_type in ("application/zip", "application/x-zip-compressed") or filename.endswith(".zip")


def _read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / RELEASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(out: Path, record: dict[str, Any]) -> None:
    temporary = out / STATE_DIR / f"{RELEASE_FILE}.tmp"
    temporary.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, out / RELEASE_FILE)


def _same_pull(
    previous: dict[str, Any] | None,
    release: dict[str, Any],
    format: str,
    *,
    media: bool,
    split: str | None,
    extract: bool,
    out: Path,
) -> bool:
    """Whether `out` already holds this pull: same release and manifest, format, and its files."""
    if previous is None:
        return False
    files = previous.get("files")
    same = (
        previous.get("release") == release["id"]
        and previous.get("manifest_sha256") == (release.get("manifest") or {}).get("sha256")
        and previous.get("format") == format
        # Unpacking matters only for archives: a COCO file is the same pull either way.
        and (not previous.get("archive") or previous.get("extracted") == extract)
        and isinstance(files, list)
        and bool(files)
        and all(isinstance(name, str) and (out / name).is_file() for name in files)
    )
    if not same:
        return False
    if not media:
        return True
    had = previous.get("media")
    # Media of the whole release covers any one split.
    return isinstance(had, dict) and had.get("split") in (None, split)
