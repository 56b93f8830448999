"""`loupe pull` against a real Loupe server (pytest-django's live_server) with an ML engineer's
token: a release of labeled images exported while the command waits, downloaded, verified,
unpacked, loaded with pycocotools; up to date the second time; resumed after an interruption;
a corrupted partial file caught; expired links refreshed."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from pycocotools.coco import COCO
from requests.adapters import HTTPAdapter

from labeling.models import ReleaseExport
from loupe_client import Client, cli
from projects.models import Job, JobState, Project
from projects.services import api_token_create
from tests.conftest import World
from tests.factories import MembershipFactory, ProjectFactory, ProjectMemberFactory
from tests.labeling.conftest import run
from tests.labeling.releases import Shop, box

pytestmark = pytest.mark.django_db(transaction=True)

ITEMS = 6


def regions_for(name: str) -> list[dict[str, Any]]:
    n = int(name[-8:-4])
    found = [box("b1", "car", 2 + n, 3, 20, 10)]
    if n % 2 == 0:
        found.append(box("b2", "person", 30, 20, 8, 16))
    return found


@pytest.fixture
def objects_dir(settings: Any, tmp_path: Path) -> Path:
    settings.LOUPE_STORAGE = "local"
    settings.LOUPE_OBJECTS_DIR = tmp_path / "objects"
    return Path(settings.LOUPE_OBJECTS_DIR)


@pytest.fixture
def released(world: World, objects_dir: Path) -> dict[str, Any]:
    """A project with 6 labeled images (no review step: submitted work is done) and release 1."""
    shop = Shop(world, ITEMS, review="none")
    assert len(shop.label_all(regions_for)) == ITEMS
    return shop.cut(name="first")


@pytest.fixture
def token(world: World) -> str:
    _, clear = api_token_create(user=world.users["ml_engineer"], name="pull")
    return clear


@pytest.fixture
def server(live_server: Any) -> str:
    return str(live_server.url)


def run_exports_while(work: Callable[[], Any], timeout: float = 60) -> Any:
    """Run `work` in a thread while this one executes the export jobs it starts, as a worker would."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive():
        queued = Job.objects.filter(kind="labeling.release_export", state=JobState.QUEUED)
        for job_id in queued.values_list("id", flat=True):
            run(job_id)
        thread.join(0.05)
        assert time.monotonic() < deadline, "the pull did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def pull(*args: str, server: str, token: str) -> int:
    argv = ["pull", *args, "--server", server, "--token", token, "--quiet"]
    return int(run_exports_while(lambda: cli.main(argv)))


def test_pull_coco_loads_with_pycocotools_and_a_second_pull_is_a_no_op(
    world: World, released: dict[str, Any], server: str, token: str, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "coco"

    code = pull(f"{world.project.id}@1", "--format", "coco", "--out", str(out), server=server, token=token)

    assert code == 0, capsys.readouterr().err
    export = ReleaseExport.objects.get(release_id=released["id"], format="coco")
    annotations = out / export.filename
    assert annotations.read_bytes() and hashlib.sha256(annotations.read_bytes()).hexdigest() == export.sha256
    coco = COCO(str(annotations))
    assert len(coco.getImgIds()) == released["counts"]["items"] == ITEMS
    assert len(coco.getAnnIds()) == released["counts"]["regions"] == ITEMS + ITEMS // 2
    image = next(i for i in coco.loadImgs(coco.getImgIds()) if i["file_name"] == "frames/0003.png")
    car = coco.getCatIds(catNms=["car"])
    (only,) = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]], catIds=car))
    assert only["bbox"] == [5, 3, 20, 10] and (image["width"], image["height"]) == (64, 48)

    record = json.loads((out / "release.json").read_text())
    assert record["release"] == released["id"] and record["version"] == 1 and record["format"] == "coco"
    assert record["manifest_sha256"] == released["manifest"]["sha256"]
    assert record["export_sha256"] == export.sha256
    assert f"pulled release 1 of 'Street scenes' (coco): {annotations}" in capsys.readouterr().out
    assert not list((out / ".loupe").glob("*.part"))

    # Again: nothing is asked for, nothing is written.
    before = annotations.stat().st_mtime_ns
    assert cli.main(["pull", str(world.project.id), "-f", "coco", "-o", str(out), "--server", server,
                     "--token", token, "--quiet"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("up to date: release 1 of 'Street scenes' (coco)")
    assert annotations.stat().st_mtime_ns == before
    assert ReleaseExport.objects.filter(release_id=released["id"]).count() == 1


def test_pull_yolo_by_project_name_unpacks_the_label_files(
    world: World, released: dict[str, Any], server: str, token: str, tmp_path: Path, monkeypatch: Any
) -> None:
    out = tmp_path / "yolo"
    monkeypatch.setenv("LOUPE_URL", server)
    monkeypatch.setenv("LOUPE_TOKEN", token)

    code = run_exports_while(
        lambda: cli.main(["pull", "Street scenes", "--format", "yolo", "--out", str(out), "-q"])
    )

    assert code == 0
    names = (out / "data.yaml").read_text()
    assert '"car"' in names and '"person"' in names
    labels = sorted(p.relative_to(out / "labels").as_posix() for p in (out / "labels").rglob("*.txt"))
    assert labels == [f"frames/{n:04d}.txt" for n in range(ITEMS)]
    lines = (out / "labels/frames/0003.txt").read_text().split()
    # One car box at (5, 3) 20x10 in a 64x48 image: centre and size normalized.
    assert lines == ["0", f"{15 / 64:.6f}", f"{8 / 48:.6f}", f"{20 / 64:.6f}", f"{10 / 48:.6f}"]
    assert len((out / "labels/frames/0002.txt").read_text().splitlines()) == 2
    assert not list(out.glob("*.zip")) and not list((out / ".loupe").iterdir())
    assert json.loads((out / "release.json").read_text())["files"][0] == "data.yaml"


def test_pull_with_media_fetches_every_image_of_a_split(
    world: World, released: dict[str, Any], server: str, token: str, tmp_path: Path
) -> None:
    out = tmp_path / "media-pull"
    split, count = max(released["counts"]["by_split"].items(), key=lambda pair: pair[1])

    code = pull(
        str(world.project.id), "-f", "jsonl", "-o", str(out), "--media", "--split", split, "--workers", "3",
        server=server, token=token,
    )  # fmt: skip

    assert code == 0
    items = list(Client(server, token).items(released["id"], split=split))
    assert len(items) == count
    for item in items:
        data = (out / "media" / item["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"] and len(data) == item["size"]
    assert sum(1 for p in (out / "media").rglob("*") if p.is_file()) == count


def test_an_interrupted_pull_resumes_and_a_corrupted_part_is_caught(
    world: World, released: dict[str, Any], server: str, token: str, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "resume"
    argv = (f"{world.project.id}@latest", "-f", "coco", "-o", str(out))
    assert pull(*argv, server=server, token=token) == 0
    export = ReleaseExport.objects.get(release_id=released["id"], format="coco")
    whole = (out / export.filename).read_bytes()
    part = out / ".loupe" / f"{export.filename}.part"
    capsys.readouterr()

    # Interrupted halfway: the file is not there yet, its first half is in the part file.
    (out / export.filename).unlink()
    part.write_bytes(whole[: len(whole) // 2])
    statuses: list[tuple[int, str | None]] = []

    class Watched(Client):
        def storage_session(self, pool_size: int = 10) -> requests.Session:
            session = super().storage_session(pool_size)
            session.hooks["response"].append(
                lambda r, *a, **k: statuses.append((r.status_code, r.request.headers.get("Range")))
            )
            return session

    pulled = Watched(server, token).download(released["id"], "coco", out, force=True, progress=False)
    assert pulled.files == [out / export.filename] and (out / export.filename).read_bytes() == whole
    assert statuses == [(206, f"bytes={len(whole) // 2}-")]

    # A corrupted part: the download completes but the bytes do not match; nothing stays behind.
    (out / export.filename).unlink()
    damaged = bytearray(whole[:100])
    damaged[10] ^= 0x01
    part.write_bytes(bytes(damaged))
    assert pull(*argv, "--force", server=server, token=token) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("loupe pull: error: ") and export.filename in error and "sha256 mismatch" in error
    assert "\n" not in error
    assert not part.exists() and not (out / export.filename).exists()
    assert pull(*argv, server=server, token=token) == 0
    assert (out / export.filename).read_bytes() == whole


class Stalling(HTTPAdapter):
    """Holds back the next request for each of `delays` (shared by every session), as a slow
    network would, so that the links in hand expire first."""

    def __init__(self, delays: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delays = delays

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if self.delays:
            time.sleep(self.delays.pop())
        return super().send(request, **kwargs)


def test_expired_links_are_asked_for_again(
    world: World, released: dict[str, Any], server: str, token: str, tmp_path: Path, settings: Any
) -> None:
    settings.LOUPE_URL_EXPIRES_S = 1
    listings: list[str] = []
    delays = [2.2]  # the export's first download request: its link expires

    class Slow(Client):
        def storage_session(self, pool_size: int = 10) -> requests.Session:
            session = super().storage_session(pool_size)
            session.mount("http://", Stalling(delays))
            return session

    def stall_media_once(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if "items.jsonl" in response.url and len([u for u in listings if "items.jsonl" in u]) == 1:
            delays.append(2.2)  # the first media download after the first listing: they all expire

    client = Slow(server, token)
    client.session.hooks["response"].append(
        lambda r, *a, **k: listings.append(r.url) if "items.jsonl" in r.url or "/exports/" in r.url else None
    )
    client.session.hooks["response"].append(stall_media_once)

    pulled = run_exports_while(
        lambda: client.download(released["id"], "coco", tmp_path, media=True, workers=1, progress=False)
    )

    export = ReleaseExport.objects.get(release_id=released["id"], format="coco")
    assert hashlib.sha256(pulled.files[0].read_bytes()).hexdigest() == export.sha256
    assert len(pulled.media) == ITEMS
    for item in Client(server, token).items(released["id"]):
        assert hashlib.sha256((tmp_path / "media" / item["name"]).read_bytes()).hexdigest() == item["sha256"]
    # The export's link was fetched again after it expired, and items.jsonl was read again.
    assert sum("items.jsonl" in url for url in listings) >= 2
    assert any(url.rstrip("/").endswith(f"/exports/{export.id}") for url in listings)


def test_errors_are_one_line_with_the_servers_code_and_usage_errors_exit_2(
    world: World, released: dict[str, Any], server: str, token: str, tmp_path: Path, capsys: Any
) -> None:
    out = str(tmp_path / "x")
    base = ["--server", server, "--token", token, "-q", "-f", "coco", "-o", out]

    assert cli.main(["pull", "999999", *base]) == 1
    assert capsys.readouterr().err == "loupe pull: error: not_found: Project not found.\n"
    stranger = ["pull", str(world.project.id), "--server", server, "--token", "nope", "-f", "coco", "-o", out]
    assert cli.main(stranger) == 1
    assert capsys.readouterr().err.startswith("loupe pull: error: authentication_failed: ")
    assert cli.main(["pull", f"{world.project.id}@7", *base]) == 1
    assert "has no release 7 (releases: 1)" in capsys.readouterr().err

    # The same name in another organization the ML engineer also works for.
    MembershipFactory(organization=world.other_org, user=world.users["ml_engineer"])
    twin = cast(Project, ProjectFactory(organization=world.other_org, name="Street scenes"))
    ProjectMemberFactory(project=twin, user=world.users["ml_engineer"], role="ml_engineer")
    assert cli.main(["pull", "Street scenes", *base]) == 1
    assert "2 projects are named 'Street scenes'" in capsys.readouterr().err
    # (Found through every page of the list.)
    pages = list(Client(server, token).paginate("projects", page_size=1, name="Street"))
    assert sorted(p["id"] for p in pages) == sorted([world.project.id, twin.id])
    assert cli.main(["pull", "Street", *base]) == 1
    assert "no project named 'Street'" in capsys.readouterr().err

    assert cli.main(["pull", str(world.project.id), "--server", server, "--token", token]) == 2
    assert "--format and --out are required" in capsys.readouterr().err
    assert cli.main(["pull", str(world.project.id), *base, "--format", "pdf"]) == 2
    assert not Path(out).exists()

    # --list shows the releases without downloading anything.
    assert cli.main(["pull", str(world.project.id), "--list", "--server", server, "--token", token]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:2] == ["version", "state"]
    assert listed[1].split()[:3] == ["1", "ready", str(ITEMS)]


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.name.startswith("loupe-pull")]
    assert not leftover
