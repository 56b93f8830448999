"""Exports of a release: the `labeling.release_export` job's time and peak memory, COCO and JSONL.

Two projects of image items (sizes from 640x480 to 4032x3024), every task accepted with one
submitted, review-accepted annotation of 3-7 boxes (about 5, six classes, an `occluded` flag on
cars and people), written in bulk (COPY); each is released by the release job itself
(`release_create`, then the job run to the end as a worker runs it), so the release's frozen rows
are what production makes. Every export is then asked for as the API asks (`export_request`) and
its job run alone in a fresh Python process (Django set up, the converters imported, then
`job_execute` until the job is done): its wall time is the job's, and its peak RSS (the child's
own high-water mark, VmHWM) is the export's alone. Objects go to a local folder
store (`LOUPE_STORAGE=local`, in a temporary folder: TMPDIR decides where).

export_coco_10k_s / _100k_s       the COCO export job of the 10k / 100k release, wall seconds
export_jsonl_10k_s / _100k_s      the same for JSONL (Loupe's native lines)
export_coco_100k_goal_ratio       items/s of the 100k COCO export / 10,000 items/s (100k in 10 s),
                                  rounded down to the hundredth: ≥ 1 meets the goal
export_peak_rss_10k_mib / _100k_mib
                                  peak RSS of the process that ran the COCO export (MiB), Django
                                  and the converters' imports included
export_peak_rss_ratio_100k_10k    100k / 10k peak: memory that grows with the release shows here
export_peak_rss_goal_ratio        1.2 / that ratio, rounded down (≥ 1 meets the goal of ≤ 1.2)
export_jsonl_peak_rss_100k_mib    the JSONL export's peak, and its 100k / 10k ratio (context)
export_child_baseline_rss_mib     the child's peak before the job started: Django, the database
                                  connection and the converters (what every export carries)
export_rss_above_baseline_10k_mib / _100k_mib
                                  the COCO export's peak above that baseline: its own memory
export_coco_100k_mib              the size of the COCO file (context)
export_regions_100k               the boxes in the 100k release, each checked in both files
release_build_10k_s / _100k_s     the release job that froze the labels (context, not a goal)
export_data_create_s              writing the items, tasks and annotations (context)

Every export is checked before its figures count, against the release's frozen rows: the COCO
document has one image per item (name, width, height, in item order) and one annotation per box
(its image, category and bbox), the 10k one also loads in pycocotools; each JSONL line is its
item's id, name and regions. A fast export that writes the wrong thing fails the scenario.

Scales: small = releases of 1k and 5k tasks (figure names say 1k and 5k; about half a minute);
full = 10k and 100k (under 2 minutes on 2 cores, most of it making the data and the releases).
The export figures exclude the child's start (Python, Django, imports: about 1.5 s), as a worker
has started long before an export comes. The object store is a local folder: on S3 the same
stream goes out as a multipart upload, with the network and the server's CPU added.

Runs against DATABASE_URL when set, in a fresh database (`loupe_bench_export`, or the name in
LOUPE_BENCH_DB) dropped at the end, else against embedded PostgreSQL; job messages go nowhere
(the bench runs every job itself), Redis is its own database (14) in case one is sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import Figure
from bench.isolated import run_isolated

BENCH_DB = os.environ.get("LOUPE_BENCH_DB") or "loupe_bench_export"
REDIS_DB = 14
SEED = 11
MIB = 1024 * 1024
# The goals: a 100k-item release in COCO within 10 s, and peak memory that does not grow with the
# release (100k / 10k ≤ 1.2).
COCO_ITEMS_PER_S_GOAL = 10_000.0
RSS_RATIO_GOAL = 1.2

CLASSES = (  # name, share of the boxes, has the `occluded` flag
    ("car", 0.40, True),
    ("person", 0.25, True),
    ("truck", 0.08, False),
    ("bus", 0.05, False),
    ("bicycle", 0.10, False),
    ("traffic_sign", 0.12, False),
)
SPEC = {
    "settings": {"classification": "single", "out_of_bounds": "reject"},
    "classes": [
        {
            "name": name,
            "color": f"#{40 * n:02x}{255 - 40 * n:02x}80",
            "tools": ["bbox"],
            **({"attributes": [{"name": "occluded", "type": "bool"}]} if flagged else {}),
        }
        for n, (name, _, flagged) in enumerate(CLASSES)
    ],
}
IMAGE_SIZES = ((1920, 1080), (1920, 1080), (1280, 720), (1280, 720), (640, 480), (1024, 768), (4032, 3024))
ANNOTATORS = 4


@dataclass(frozen=True)
class Scale:
    small: int  # tasks of the smaller release
    large: int  # tasks of the larger one


SCALES = {"small": Scale(small=1_000, large=5_000), "full": Scale(small=10_000, large=100_000)}


def run(scale: str) -> list[Figure]:
    chosen = SCALES[scale]
    return run_isolated(BENCH_DB, "lbexport", lambda _: measure(chosen), redis_db=REDIS_DB)


def _ratio(value: float, goal: float) -> float:
    """value / goal rounded down to the hundredth printed, so 1.00 shows only when the goal is met."""
    return math.floor(100 * value / goal) / 100 if goal > 0 else 100.0


def _rng(purpose: str) -> random.Random:
    return random.Random(f"{SEED}:{purpose}")  # noqa: S311  (synthetic labels, not secrets)


def size_label(tasks: int) -> str:
    """How figure names say a release's size: 10k, 100k, 1.5k…"""
    return f"{tasks // 1000}k" if tasks % 1000 == 0 else f"{tasks / 1000:g}k"


def measure(scale: Scale) -> list[Figure]:
    owner, org, annotators = _world()
    started = time.perf_counter()
    small_project = _labelled_project(owner, org, annotators, "Export small", scale.small)
    large_project = _labelled_project(owner, org, annotators, "Export large", scale.large)
    created = time.perf_counter() - started
    small_release, small_build = _release(owner, small_project)
    large_release, large_build = _release(owner, large_project)
    small, large = size_label(scale.small), size_label(scale.large)
    print(
        f"# object store: local folder; data {created:.1f} s; releases built in {small_build:.1f} s "
        f"({small}) and {large_build:.1f} s ({large})",
        file=sys.stderr,
    )

    coco_small = _export(owner, small_release, "coco")
    coco_large = _export(owner, large_release, "coco")
    jsonl_small = _export(owner, small_release, "jsonl")
    jsonl_large = _export(owner, large_release, "jsonl")
    for run_ in (coco_small, coco_large, jsonl_small, jsonl_large):
        print(
            f"# {run_.format} {run_.items} items, {run_.regions} regions: {run_.seconds:.2f} s, "
            f"peak {run_.peak_rss / MIB:.1f} MiB (baseline {run_.baseline_rss / MIB:.1f}), "
            f"{run_.size / MIB:.1f} MiB, sha256 {run_.sha256}",
            file=sys.stderr,
        )
    rss_ratio = coco_large.peak_rss / coco_small.peak_rss
    return [
        Figure(f"export_coco_{small}_s", coco_small.seconds, "s"),
        Figure(f"export_coco_{large}_s", coco_large.seconds, "s"),
        Figure(
            f"export_coco_{large}_goal_ratio",
            _ratio(scale.large / coco_large.seconds, COCO_ITEMS_PER_S_GOAL),
            "x",
        ),
        Figure(f"export_jsonl_{small}_s", jsonl_small.seconds, "s"),
        Figure(f"export_jsonl_{large}_s", jsonl_large.seconds, "s"),
        Figure(f"export_peak_rss_{small}_mib", coco_small.peak_rss / MIB, "MiB"),
        Figure(f"export_peak_rss_{large}_mib", coco_large.peak_rss / MIB, "MiB"),
        Figure(f"export_peak_rss_ratio_{large}_{small}", rss_ratio, "x"),
        Figure("export_peak_rss_goal_ratio", _ratio(RSS_RATIO_GOAL, rss_ratio), "x"),
        Figure(f"export_jsonl_peak_rss_{large}_mib", jsonl_large.peak_rss / MIB, "MiB"),
        Figure(
            f"export_jsonl_peak_rss_ratio_{large}_{small}", jsonl_large.peak_rss / jsonl_small.peak_rss, "x"
        ),
        Figure("export_child_baseline_rss_mib", coco_large.baseline_rss / MIB, "MiB"),
        Figure(f"export_rss_above_baseline_{small}_mib", coco_small.growth / MIB, "MiB"),
        Figure(f"export_rss_above_baseline_{large}_mib", coco_large.growth / MIB, "MiB"),
        Figure(f"export_coco_{large}_mib", coco_large.size / MIB, "MiB"),
        Figure(f"export_regions_{large}", coco_large.regions, "count"),
        Figure(f"release_build_{small}_s", small_build, "s"),
        Figure(f"release_build_{large}_s", large_build, "s"),
        Figure("export_data_create_s", created, "s"),
    ]


# --- Set-up ----------------------------------------------------------------------------------------


def _world() -> tuple[Any, Any, list[Any]]:
    from django.contrib.auth.models import User

    from projects import services as project_services
    from projects.access import org_access

    owner = User.objects.create_user(username="bench")
    org = project_services.organization_create(actor=owner, name="Bench", slug="bench")
    annotators = []
    for n in range(ANNOTATORS):
        user = User.objects.create_user(username=f"annotator{n}")
        project_services.membership_add(
            actor=owner, access=org_access(user=owner, organization_id=org.pk), username=user.username,
            role="member",
        )  # fmt: skip
        annotators.append(user)
    return owner, org, annotators


def boxes(rng: random.Random, width: int, height: int) -> list[dict[str, Any]]:
    """3-7 boxes inside a width x height image, in the normalized form a submit stores."""
    names = [name for name, _, _ in CLASSES]
    shares = [share for _, share, _ in CLASSES]
    flagged = {name for name, _, has_flag in CLASSES if has_flag}
    regions: list[dict[str, Any]] = []
    for n in range(rng.randint(3, 7)):
        label = rng.choices(names, shares)[0]
        w = round(width * rng.uniform(0.02, 0.35), 2)
        h = round(height * rng.uniform(0.02, 0.35), 2)
        x = round(rng.uniform(0, width - w), 2)
        y = round(rng.uniform(0, height - h), 2)
        attributes = {"occluded": rng.random() < 0.2} if label in flagged else {}
        regions.append({"id": f"r{n + 1}", "type": "bbox", "label": label, "attributes": attributes,
                        "geometry": {"x": x, "y": y, "width": w, "height": h}})  # fmt: skip
    return regions


def _labelled_project(owner: Any, org: Any, annotators: list[Any], name: str, count: int) -> int:
    """A project of `count` image tasks, each accepted with one submitted annotation a reviewer
    accepted, written in bulk with the states and counters the workflow leaves (not the
    assignments and reviews behind them: a release reads the annotation's review status)."""
    from django.db import connection, transaction
    from django.utils import timezone

    from labeling.models import Annotation, Task
    from labeling.regions import ItemFacts, parse_schema, validate_regions
    from labeling.services import schema_publish, tasks_ensure
    from labeling.workflow import workflow_update
    from projects import services as project_services
    from projects.access import org_access, project_access
    from projects.bulk import copy_insert
    from storage.models import Blob, Dataset, Item

    project = project_services.project_create(
        actor=owner, access=org_access(user=owner, organization_id=org.pk), name=name
    )
    access = project_access(user=owner, project_id=project.pk)
    schema_publish(actor=owner, access=access, spec=SPEC)
    workflow_update(actor=owner, access=access, changes={"overlap": 1, "review": "all"})
    for user in annotators:
        project_services.project_member_add(
            actor=owner, access=access, username=user.username, role="annotator"
        )
    dataset = Dataset.objects.create(organization=org, name=f"{name} frames", created_by=owner)
    dataset.projects.add(project)

    rng = _rng(name)
    sizes = [rng.choice(IMAGE_SIZES) for _ in range(count)]
    now = timezone.now()
    with transaction.atomic():
        digests = [hashlib.sha256(f"{name}:{i}".encode()).hexdigest() for i in range(count)]
        blob_ids = copy_insert(
            Blob, ("sha256", "size", "media_type", "key", "created_at"),
            [(d, 150_000 + i % 50_000, "image/jpeg", f"blobs/{d[:2]}/{d[2:4]}/{d}", now)
             for i, d in enumerate(digests)],
        )  # fmt: skip
        copy_insert(
            Item, ("dataset_id", "name", "modality", "media_type", "size", "meta", "primary_id",
                   "created_at", "updated_at"),
            [(dataset.pk, f"drive-{i // 1000:03d}/frame_{i:06d}.jpg", "image", "image/jpeg",
              150_000 + i % 50_000, {"width": w, "height": h, "format": "JPEG"}, blob, now, now)
             for i, ((w, h), blob) in enumerate(zip(sizes, blob_ids, strict=True))],
        )  # fmt: skip
    tasks_ensure(project.pk, dataset_id=dataset.pk)
    tasks = list(Task.objects.filter(project=project).order_by("item_id").values_list("id", "item__meta"))
    results = [boxes(rng, meta["width"], meta["height"]) for _, meta in tasks]
    schema = parse_schema(SPEC)
    for (_, meta), result in list(zip(tasks, results, strict=True))[:200]:
        facts = ItemFacts.from_item("image", meta)
        if validate_regions(result, schema, facts) != result:
            raise RuntimeError(f"generated regions are not in normalized form: {result}")
    authors = [user.pk for user in annotators]
    with transaction.atomic():
        copy_insert(
            Annotation,
            ("task_id", "author_id", "schema_version", "state", "result", "archived", "version",
             "lead_time_ms", "ground_truth", "review_status", "created_at", "updated_at", "submitted_at"),
            [(t, authors[n % len(authors)], 1, "submitted", result, [], 1, 20_000, False, "accepted",
              now, now, now)
             for n, ((t, _), result) in enumerate(zip(tasks, results, strict=True))],
        )  # fmt: skip
        Task.objects.filter(project=project).update(state="accepted", active=0, submitted=1, open_slots=0)
    if not connection.in_atomic_block:
        with connection.cursor() as cursor:
            for table in ("storage_blob", "storage_item", "labeling_task", "labeling_annotation"):
                cursor.execute(f"VACUUM ANALYZE {table}")  # as autovacuum would after an import this size
    return int(project.pk)


def _release(owner: Any, project_id: int) -> tuple[Any, float]:
    """Cut a release of every accepted task and build it as a worker does; returns it and the
    seconds the build job took."""
    from django.db import connection

    from labeling.models import Release
    from labeling.releases.services import release_create
    from projects import jobs
    from projects.access import project_access
    from projects.models import Job

    started = time.perf_counter()
    release = release_create(
        actor=owner, access=project_access(user=owner, project_id=project_id), name="bench"
    )
    if release.job is None:
        raise RuntimeError("the release has no build job")
    while jobs.job_execute(job_id=release.job.pk) == "sliced":
        pass
    seconds = time.perf_counter() - started
    job = Job.objects.get(id=release.job.pk)
    if job.state != "succeeded":
        raise RuntimeError(f"the release job ended {job.state}: {job.failure}")
    if not connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE labeling_releaseitem")
    return Release.objects.get(id=release.pk), seconds


# --- The export, in a child process -----------------------------------------------------------------


@dataclass(frozen=True)
class ExportRun:
    format: str
    items: int
    regions: int
    seconds: float
    peak_rss: int  # bytes
    baseline_rss: int  # bytes: the child's peak before the job started
    size: int
    sha256: str

    @property
    def growth(self) -> int:
        """What the export itself added to the process's peak memory."""
        return max(self.peak_rss - self.baseline_rss, 0)


def _export(owner: Any, release: Any, format: str) -> ExportRun:
    """Ask for the export as the API does, run its job in a fresh process, check what it wrote."""
    from labeling.models import ReleaseExport
    from labeling.releases.services import export_request
    from projects.access import project_access
    from projects.models import Job

    access = project_access(user=owner, project_id=release.project_id)
    export, created = export_request(actor=owner, access=access, release=release, format=format,
                                     include_media=False)  # fmt: skip
    if not created or export.job is None:
        raise RuntimeError(f"the {format} export of release {release.pk} was not started afresh")
    report = _run_child(export.job.pk)
    job = Job.objects.get(id=export.job.pk)
    if job.state != "succeeded":
        raise RuntimeError(f"the {format} export ended {job.state}: {job.failure}")
    export = ReleaseExport.objects.get(id=export.pk)
    items, regions = _check(release, format, export.key)
    if (items, regions) != (job.result["items"], job.result["regions"]):
        raise RuntimeError(f"the {format} job counted {job.result}, the file holds {items} items, {regions}")
    return ExportRun(
        format=format, items=items, regions=regions, seconds=report["seconds"], peak_rss=report["peak_rss"],
        baseline_rss=report["baseline_rss"], size=export.size, sha256=export.sha256,
    )  # fmt: skip


def _run_child(job_id: int) -> dict[str, Any]:
    """Run the job in a fresh Python process; returns its report (`child`)."""
    from config.cli import child_env

    code = "import sys; from bench.export import child; child(int(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(job_id)], env=child_env(), cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the export process for job {job_id} exited with {done.returncode}")
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM). Not `ru_maxrss`: Linux carries that
    over from the parent through fork and exec, so a child started by a big parent would report
    the parent's peak as its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (peak memory is read the Linux way)")


def child(job_id: int) -> None:
    """In the child: run the job to its end as a worker does; print the seconds it took and the
    process's peak memory before it started and at its end, as one JSON line."""
    import django

    django.setup()
    from django.db import connection

    from labeling.formats import FORMAT_NAMES, get_format
    from projects import jobs

    for name in FORMAT_NAMES:  # a worker has imported its converters long before an export comes
        get_format(name)
    connection.ensure_connection()
    baseline = peak_rss()
    started = time.perf_counter()
    while jobs.job_execute(job_id=job_id) == "sliced":
        pass
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "baseline_rss": baseline, "peak_rss": peak_rss()}), flush=True)


# --- Checking what was written ----------------------------------------------------------------------


def _frozen(release: Any) -> Iterator[tuple[int, str, dict[str, Any], list[dict[str, Any]]]]:
    from labeling.models import ReleaseItem

    rows = (
        ReleaseItem.objects.filter(release_id=release.pk)
        .order_by("item_id")
        .values_list("item_id", "name", "meta", "regions")
    )
    yield from rows.iterator(chunk_size=5000)


def _check(release: Any, format: str, key: str) -> tuple[int, int]:
    """Compare the exported file with the release's frozen rows; returns (items, regions) found."""
    from storage.objects import object_store

    with tempfile.NamedTemporaryFile(suffix=f".{format}") as copy:
        object_store().download_to(key, Path(copy.name))
        if format == "coco":
            return _check_coco(release, Path(copy.name))
        return _check_jsonl(release, Path(copy.name))


def _wrong(what: str) -> RuntimeError:
    return RuntimeError(f"the export is wrong: {what}")


def _check_coco(release: Any, path: Path) -> tuple[int, int]:
    with path.open("rb") as source:
        document = json.load(source)
    categories = {c["id"]: c["name"] for c in document["categories"]}
    if sorted(categories.values()) != sorted(name for name, _, _ in CLASSES):
        raise _wrong(f"categories {categories}")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    images = document["images"]
    regions = 0
    expected_ids = 0
    for n, (item_id, name, meta, frozen) in enumerate(_frozen(release)):
        if n >= len(images):
            raise _wrong(f"{len(images)} images for more items (item {item_id} is missing)")
        image = images[n]
        if (image["file_name"], image["width"], image["height"]) != (name, meta["width"], meta["height"]):
            raise _wrong(f"image {image} is not item {item_id} {name} {meta}")
        written = by_image.pop(image["id"], [])
        wanted = [(r["label"], [r["geometry"][k] for k in ("x", "y", "width", "height")]) for r in frozen]
        if [(categories[a["category_id"]], a["bbox"]) for a in written] != wanted:
            raise _wrong(f"the annotations of {name}: {written} for {frozen}")
        regions += len(written)
        expected_ids += 1
    if len(images) != expected_ids or by_image:
        raise _wrong(f"{len(images)} images for {expected_ids} items, annotations of unknown images")
    ids = [a["id"] for a in document["annotations"]]
    if ids != list(range(1, len(ids) + 1)):
        raise _wrong("annotation ids are not 1, 2, …")
    if len(images) <= 20_000:  # and the smaller one as training code reads it
        _check_pycocotools(path, len(images), regions, release.counts["by_class"])
    return len(images), regions


def _check_pycocotools(path: Path, images: int, regions: int, by_class: dict[str, int]) -> None:
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        coco = COCO(str(path))
    if len(coco.getImgIds()) != images or len(coco.getAnnIds()) != regions:
        raise _wrong(f"pycocotools reads {len(coco.getImgIds())} images, {len(coco.getAnnIds())} boxes")
    counted = Counter(coco.cats[a["category_id"]]["name"] for a in coco.anns.values())
    if dict(counted) != by_class:
        raise _wrong(f"boxes per class {dict(counted)}, the release counted {by_class}")


def _check_jsonl(release: Any, path: Path) -> tuple[int, int]:
    items = regions = 0
    with path.open("rb") as source:
        lines = iter(source)
        for item_id, name, _, frozen in _frozen(release):
            line = json.loads(next(lines, b"null"))
            if line is None or (line["item_id"], line["item"], line["regions"]) != (item_id, name, frozen):
                raise _wrong(f"line {items + 1} is {line}, not item {item_id} {name}")
            items += 1
            regions += len(frozen)
        if next(lines, None) is not None:
            raise _wrong(f"more lines than the {items} items")
    return items, regions
